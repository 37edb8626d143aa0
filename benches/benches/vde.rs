//! The VDE switch benchmark: frames/s and latency through vmrig's switch and vde2's
//! `vde_switch`, on the same synthetic load in the same run, with the ratio.
//!
//! Load: N ports (2, 8, 32), each a libvdeplug client (`VdePlug`, the protocol QEMU
//! speaks) driven by its own thread of a separate load process (this binary run with
//! `--load`), so that neither switch shares a process with its clients and both face
//! the very same program. Ports pair up (0<->1, 2<->3, ...); every port first
//! announces its MAC so both switches learn it, then:
//! - **saturation**: every even port sends `FRAMES / (N/2)` 60-byte unicast frames to its
//!   partner as fast as blocking `send` allows; frames/s = frames received / time from
//!   the first send to the last receive; loss = sent - received;
//! - **paced**: the same at a fixed aggregate rate (below both switches' saturation);
//!   loss must be 0;
//! - **latency**: ping-pong between ports 0 and 1 (the others connected and idle);
//!   one-way latency = round trip / 2; p50 and p99 over `PINGS` round trips.
//!
//! Each round measures both switches, alternating which goes first; the summary gives
//! each switch's median over the rounds (other work on the host slows both alike).
//!
//! Run with `cargo bench -p vmrig-benches --bench vde [-- --rounds R --ports 2,8
//! --only vmrig|vde_switch]`. This is a bench binary (`harness = false`) printing a
//! table, not a criterion group: the comparison with an external process is the point.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use vmrig_vde_net::{Switch, SwitchOptions, VdePlug};

const FRAMES: u64 = 200_000;
const PACED_FPS: u64 = 20_000;
const PACED_SECS: f64 = 1.0;
const PINGS: usize = 2_000;

fn mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, (i >> 8) as u8, i as u8]
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(60, 0);
    f
}

fn connect_all(dir: &Path, n: usize) -> Vec<VdePlug> {
    let plugs: Vec<VdePlug> = (0..n)
        .map(|i| VdePlug::connect(dir, &format!("bench port {i}")).expect("connect"))
        .collect();
    for p in &plugs {
        p.socket()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    // Announce every MAC, then drain the floods.
    for (i, p) in plugs.iter().enumerate() {
        p.send(&frame([0xff; 6], mac(i))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    drain(&plugs);
    plugs
}

fn drain(plugs: &[VdePlug]) {
    let mut buf = [0u8; 2048];
    for p in plugs {
        p.socket().set_nonblocking(true).unwrap();
        while p.recv(&mut buf).is_ok() {}
        p.socket().set_nonblocking(false).unwrap();
    }
}

struct Load {
    fps: f64,
    lost: u64,
}

/// Even ports send to odd partners; `rate` = aggregate frames/s, or None for flat out.
fn run_load(plugs: &[VdePlug], total: u64, rate: Option<u64>) -> Load {
    let pairs = plugs.len() / 2;
    let per_sender = total / pairs as u64;
    let barrier = Barrier::new(plugs.len() + 1);
    let done = AtomicBool::new(false);
    let (mut sent, mut got) = (0u64, 0u64);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    std::thread::scope(|s| {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for pair in 0..pairs {
            let (tx, rx) = (&plugs[2 * pair], &plugs[2 * pair + 1]);
            let f = frame(mac(2 * pair + 1), mac(2 * pair));
            let barrier = &barrier;
            senders.push(s.spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let mut n = 0u64;
                while n < per_sender {
                    if let Some(rate) = rate {
                        // Pace in bursts of 10 to keep sleeps coarse.
                        let due =
                            start + Duration::from_secs_f64(n as f64 * pairs as f64 / rate as f64);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        for _ in 0..10.min(per_sender - n) {
                            tx.send(&f).unwrap();
                            n += 1;
                        }
                    } else {
                        tx.send(&f).unwrap();
                        n += 1;
                    }
                }
                (start, n)
            }));
            let done = &done;
            receivers.push(s.spawn(move || {
                barrier.wait();
                let mut buf = [0u8; 2048];
                let mut n = 0u64;
                let mut last = None;
                while n < per_sender {
                    match rx.recv(&mut buf) {
                        Ok(_) => {
                            n += 1;
                            last = Some(Instant::now());
                        }
                        // 500 ms without a frame after the senders finished: lost.
                        Err(_) if done.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                (n, last)
            }));
        }
        barrier.wait();
        for h in senders {
            let (start, n) = h.join().unwrap();
            sent += n;
            first = Some(first.map_or(start, |f: Instant| f.min(start)));
        }
        done.store(true, Ordering::Relaxed);
        for h in receivers {
            let (n, l) = h.join().unwrap();
            got += n;
            if let Some(l) = l {
                last = Some(last.map_or(l, |x: Instant| x.max(l)));
            }
        }
    });
    let secs = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => f64::INFINITY,
    };
    Load {
        fps: got as f64 / secs,
        lost: sent - got,
    }
}

/// One-way latency percentiles (p50, p99) in microseconds, from ping-pong.
fn latency(plugs: &[VdePlug]) -> (f64, f64) {
    let (a, b) = (&plugs[0], &plugs[1]);
    let ping = frame(mac(1), mac(0));
    let pong = frame(mac(0), mac(1));
    let mut rtts = Vec::with_capacity(PINGS);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 2048];
            for _ in 0..PINGS {
                if b.recv(&mut buf).is_err() {
                    return;
                }
                b.send(&pong).unwrap();
            }
        });
        let mut buf = [0u8; 2048];
        for _ in 0..PINGS {
            let t = Instant::now();
            a.send(&ping).unwrap();
            if a.recv(&mut buf).is_err() {
                break;
            }
            rtts.push(t.elapsed().as_secs_f64() * 1e6 / 2.0);
        }
    });
    rtts.sort_by(|x, y| x.total_cmp(y));
    let pick = |q: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pick(0.50), pick(0.99))
}

#[derive(Debug, Clone, Copy)]
struct Row {
    fps: f64,
    sat_lost: u64,
    paced_lost: u64,
    p50: f64,
    p99: f64,
}

fn measure(dir: &Path, n: usize, frames: u64) -> Row {
    let plugs = connect_all(dir, n);
    let sat = run_load(&plugs, frames, None);
    drain(&plugs);
    let paced = run_load(
        &plugs,
        (PACED_FPS as f64 * PACED_SECS) as u64,
        Some(PACED_FPS),
    );
    drain(&plugs);
    let (p50, p99) = latency(&plugs);
    Row {
        fps: sat.fps,
        sat_lost: sat.lost,
        paced_lost: paced.lost,
        p50,
        p99,
    }
}

struct VdeSwitchProcess {
    child: Child,
    dir: PathBuf,
}

impl VdeSwitchProcess {
    fn start(dir: PathBuf) -> Self {
        let child = Command::new("vde_switch")
            .arg("--sock")
            .arg(&dir)
            .args(["--dirmode", "0700", "--numports", "64"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vde_switch (vde2) is installed");
        let ctl = dir.join("ctl");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&ctl).is_err() {
            assert!(Instant::now() < deadline, "vde_switch did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        VdeSwitchProcess { child, dir }
    }
}

impl Drop for VdeSwitchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Row {
    fn to_line(self) -> String {
        format!(
            "{} {} {} {} {}",
            self.fps, self.sat_lost, self.paced_lost, self.p50, self.p99
        )
    }

    fn parse(line: &str) -> Option<Row> {
        let mut it = line.split_whitespace();
        Some(Row {
            fps: it.next()?.parse().ok()?,
            sat_lost: it.next()?.parse().ok()?,
            paced_lost: it.next()?.parse().ok()?,
            p50: it.next()?.parse().ok()?,
            p99: it.next()?.parse().ok()?,
        })
    }
}

/// Runs the load against the switch in `dir` in a child process (this binary with
/// `--load`) and returns its figures.
fn measure_in_child(dir: &Path, n: usize, frames: u64) -> Row {
    let out = Command::new(std::env::current_exe().expect("bench binary path"))
        .arg("--load")
        .arg(dir)
        .arg(n.to_string())
        .arg(frames.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the load process");
    assert!(out.status.success(), "load process failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    Row::parse(&text).unwrap_or_else(|| panic!("bad load output {text:?}"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Which {
    Vmrig,
    VdeSwitch,
}

fn measure_switch(
    which: Which,
    runtime: &tokio::runtime::Runtime,
    dir: PathBuf,
    n: usize,
    frames: u64,
) -> Row {
    match which {
        Which::Vmrig => {
            let switch = runtime
                .block_on(Switch::start(SwitchOptions::new(dir)))
                .unwrap();
            let row = measure_in_child(switch.dir(), n, frames);
            let _guard = runtime.enter();
            drop(switch);
            row
        }
        Which::VdeSwitch => {
            let vde = VdeSwitchProcess::start(dir);
            measure_in_child(&vde.dir, n, frames)
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn fmt_row(r: Option<&Row>) -> (String, String) {
    match r {
        Some(r) => (
            format!("{:>10.0} ({:>5}/{:>5})", r.fps, r.sat_lost, r.paced_lost),
            format!("{:>8.1} / {:>8.1}", r.p50, r.p99),
        ),
        None => (format!("{:>24}", "-"), format!("{:>19}", "-")),
    }
}

fn print_header() {
    println!(
        "{:>5} | {:>24} | {:>24} | {:>6} | {:>19} | {:>19}",
        "ports",
        "vmrig frames/s (lost)",
        "vde_switch f/s (lost)",
        "ratio",
        "vmrig p50/p99 us",
        "vde_sw p50/p99 us"
    );
}

fn print_row(label: &str, ours: Option<&Row>, theirs: Option<&Row>) {
    let (o, ol) = fmt_row(ours);
    let (t, tl) = fmt_row(theirs);
    let ratio = match (ours, theirs) {
        (Some(o), Some(t)) => format!("{:>5.2}x", o.fps / t.fps),
        _ => format!("{:>6}", "-"),
    };
    println!("{label:>5} | {o} | {t} | {ratio} | {ol} | {tl}");
    let _ = std::io::stdout().flush();
}

/// The value following `flag` on the command line.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        let dir = PathBuf::from(&args[2]);
        let n: usize = args[3].parse().expect("port count");
        let frames: u64 = args[4].parse().expect("frame count");
        println!("{}", measure(&dir, n, frames).to_line());
        return;
    }
    // `cargo test --benches` runs bench binaries without `--bench`: a quick smoke run.
    let quick = !args.iter().any(|a| a == "--bench");
    let ports: Vec<usize> = match flag_value(&args, "--ports") {
        Some(list) => list
            .split(',')
            .map(|p| p.parse().expect("--ports 2,8,32"))
            .collect(),
        None if quick => vec![2],
        None => vec![2, 8, 32],
    };
    let rounds: usize = flag_value(&args, "--rounds")
        .map(|r| r.parse().expect("--rounds N"))
        .unwrap_or(if quick { 1 } else { 3 });
    let which: Vec<Which> = match flag_value(&args, "--only").as_deref() {
        Some("vmrig") => vec![Which::Vmrig],
        Some("vde_switch") => vec![Which::VdeSwitch],
        Some(other) => panic!("--only vmrig|vde_switch, not {other}"),
        None => vec![Which::Vmrig, Which::VdeSwitch],
    };
    let frames = if quick { 10_000 } else { FRAMES };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "vde switch benchmark: {frames} x 60-byte unicast frames at saturation, \
         {PACED_FPS} frames/s paced for {PACED_SECS} s, {PINGS} ping-pongs, {rounds} round(s)"
    );
    print_header();
    let mut results: Vec<(usize, Which, Row)> = Vec::new();
    for round in 0..rounds {
        for &n in &ports {
            let mut order = which.clone();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut got = Vec::new();
            for w in order {
                let name = format!(
                    "{}{n}-{round}",
                    if w == Which::Vmrig { "ours" } else { "vde" }
                );
                let row = measure_switch(w, &runtime, tmp.path().join(name), n, frames);
                got.push((w, row));
                results.push((n, w, row));
            }
            let find = |w| got.iter().find(|(x, _)| *x == w).map(|(_, r)| r);
            print_row(&n.to_string(), find(Which::Vmrig), find(Which::VdeSwitch));
        }
    }
    if rounds > 1 {
        println!("median of {rounds} rounds (lost: the worst round):");
        print_header();
        for &n in &ports {
            let summary = |w: Which| {
                let rows: Vec<Row> = results
                    .iter()
                    .filter(|(m, x, _)| *m == n && *x == w)
                    .map(|(_, _, r)| *r)
                    .collect();
                (!rows.is_empty()).then(|| Row {
                    fps: median(rows.iter().map(|r| r.fps).collect()),
                    sat_lost: rows.iter().map(|r| r.sat_lost).max().unwrap_or(0),
                    paced_lost: rows.iter().map(|r| r.paced_lost).max().unwrap_or(0),
                    p50: median(rows.iter().map(|r| r.p50).collect()),
                    p99: median(rows.iter().map(|r| r.p99).collect()),
                })
            };
            print_row(
                &n.to_string(),
                summary(Which::Vmrig).as_ref(),
                summary(Which::VdeSwitch).as_ref(),
            );
        }
    }
    println!("(lost) = frames lost at saturation / frames lost when paced");
}
