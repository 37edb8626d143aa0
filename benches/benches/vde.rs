//! The VDE switch benchmark: frames/s and latency through vmrig's switch and vde2's
//! `vde_switch`, on the same synthetic load in the same run, with the ratio.
//!
//! Load: N ports (2, 8, 32), each a libvdeplug client (`VdePlug`, the protocol QEMU
//! speaks) driven by its own thread. Ports pair up (0<->1, 2<->3, ...); every port first
//! announces its MAC so both switches learn it, then:
//! - **saturation**: every even port sends `FRAMES / (N/2)` 60-byte unicast frames to its
//!   partner as fast as blocking `send` allows; frames/s = frames received / time from
//!   the first send to the last receive; loss = sent - received;
//! - **paced**: the same at a fixed aggregate rate (below both switches' saturation);
//!   loss must be 0;
//! - **latency**: ping-pong between ports 0 and 1 (the others connected and idle);
//!   one-way latency = round trip / 2; p50 and p99 over `PINGS` round trips.
//!
//! Run with `cargo bench -p vmrig-benches --bench vde`. This is a bench binary
//! (`harness = false`) printing a table, not a criterion group: the comparison with
//! an external process is the point.

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

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`: a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (ports, frames): (&[usize], u64) = if quick {
        (&[2], 10_000)
    } else {
        (&[2, 8, 32], FRAMES)
    };
    println!(
        "vde switch benchmark: {frames} x 60-byte unicast frames at saturation, \
         {PACED_FPS} frames/s paced for {PACED_SECS} s, {PINGS} ping-pongs"
    );
    println!(
        "{:>5} | {:>24} | {:>24} | {:>6} | {:>19} | {:>19}",
        "ports",
        "vmrig frames/s (lost)",
        "vde_switch f/s (lost)",
        "ratio",
        "vmrig p50/p99 us",
        "vde_sw p50/p99 us"
    );
    for &n in ports {
        let ours = {
            let switch = runtime
                .block_on(Switch::start(SwitchOptions::new(
                    tmp.path().join(format!("ours{n}")),
                )))
                .unwrap();
            let dir = switch.dir().to_owned();
            let row = measure(&dir, n, frames);
            let _guard = runtime.enter();
            drop(switch);
            row
        };
        let theirs = {
            let vde = VdeSwitchProcess::start(tmp.path().join(format!("vde{n}")));
            measure(&vde.dir, n, frames)
        };
        println!(
            "{:>5} | {:>10.0} ({:>5}/{:>5}) | {:>10.0} ({:>5}/{:>5}) | {:>5.2}x | {:>8.1} / {:>8.1} | {:>8.1} / {:>8.1}",
            n,
            ours.fps,
            ours.sat_lost,
            ours.paced_lost,
            theirs.fps,
            theirs.sat_lost,
            theirs.paced_lost,
            ours.fps / theirs.fps,
            ours.p50,
            ours.p99,
            theirs.p50,
            theirs.p99,
        );
        let _ = std::io::stdout().flush();
    }
    println!("(lost) = frames lost at saturation / frames lost when paced");
}
