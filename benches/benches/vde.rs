//! The VDE switch benchmark: frames/s and latency through vmrig's switch (its VDE ports
//! and its vhost-user ports) and vde2's `vde_switch`, on the same synthetic load in the
//! same run, with the ratio.
//!
//! Load: N ports (2, 8, 32) driven by the threads of a separate load process (this
//! binary run with `--load`), so that no switch shares a process with its clients and
//! all face the very same program. A VDE port is a libvdeplug client (`VdePlug`, the
//! protocol QEMU speaks); a vhost-user port is a synthetic QEMU (the `vhost` crate's
//! frontend, "guest memory" in a memfd shared with the switch, RX and TX rings of 256
//! entries, the tests' `vhost_frontend`, negotiating EVENT_IDX as Linux does): its sender
//! fills the TX ring and kicks, waiting for the switch's used-ring signal when the ring
//! is full; its receiver refills its RX ring when signalled, as a guest driver does on
//! its interrupt. Ports pair up (0<->1, 2<->3, ...); every port first
//! announces its MAC so both switches learn it, then:
//! - **saturation**: every even port sends `FRAMES / (N/2)` 60-byte unicast frames to its
//!   partner as fast as blocking sends allow; frames/s = frames received / time from
//!   the first send to the last receive; loss = sent - received. The switch's own CPU
//!   time over this phase (its thread's or process's `schedstat`) divided by the frames
//!   sent into it gives its cost per frame, a figure other load on the host hardly
//!   moves (for vhost-user ports, whose frames move on each port's ring thread, the
//!   whole switch process's threads); the time it waited for a CPU in the same file, as a share of the phase,
//!   shows how much of the host the load took from it;
//! - **paced**: the same at a fixed aggregate rate (below both switches' saturation);
//!   loss must be 0;
//! - **latency**: ping-pong between ports 0 and 1 (the others connected and idle);
//!   one-way latency = round trip / 2; p50 and p99 over `PINGS` round trips.
//!
//! The clients should not be what is measured: for VDE ports, by default (`--client batch`) senders
//! hand the kernel `SEND_BURST` frames per `sendmmsg` and receivers take every queued
//! frame per `recvmmsg`, so on a small host they leave the CPU to the switch under test.
//! `--client single` makes one system call per frame, as QEMU does; `--client loop`
//! drives each pair at saturation from one thread with non-blocking batches (half the
//! load's threads, no wake-ups between a pair's sender and receiver).
//!
//! Each round measures both switches, alternating which goes first; the summary gives
//! each switch's median over the rounds (other work on the host slows both alike).
//!
//! By default the switch and the load share the host's CPUs as the scheduler sees fit,
//! as a switch shares them with QEMU in a test; `--pin` gives the switch (vde_switch's
//! process, vmrig's frame thread) CPU 0 and the load process CPU 1, which measures
//! what each switch does with one CPU of its own.
//!
//! Run with `cargo bench -p vmrig-benches --bench vde [-- --rounds R --ports 2,8
//! --only vmrig,vhost,vde_switch --client batch|single|loop --busy-poll-us N --pin]`
//! (`--client` is for VDE ports; vhost-user ports always move frames in bursts of
//! `SEND_BURST` per kick). This is a bench binary
//! (`harness = false`) printing a table, not a criterion group: the comparison with an
//! external process is the point.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use vmrig_vde_net::{RecvBatch, Switch, SwitchOptions, VdePlug};

// The synthetic vhost-user frontend the vhost-user tests use: one copy for both.
#[path = "../../crates/vde-net/tests/vhost_frontend/mod.rs"]
mod vhost_frontend;

const FRAMES: u64 = 200_000;
const PACED_FPS: u64 = 20_000;
const PACED_SECS: f64 = 1.0;
const PINGS: usize = 2_000;
/// Frames per `sendmmsg` of a batching sender at saturation.
const SEND_BURST: usize = 32;
/// Frames a paced sender sends together, to keep its sleeps coarse.
const PACED_BURST: usize = 10;

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

/// One synthetic port of the load process, whatever it plugs into.
trait Endpoint: Send {
    /// Sends `k` copies of the 60-byte frame `f`, waiting for room as needed.
    fn send(&mut self, f: &[u8], k: usize);
    /// Receives what is queued: at least one frame, or an error after 500 ms without.
    fn recv(&mut self) -> std::io::Result<u64>;
    /// Takes whatever is queued, without waiting.
    fn drain(&mut self);
    /// The saturation phase, when these ports run one of their own.
    fn own_saturation(_ends: &[Self], _total: u64) -> Option<Load>
    where
        Self: Sized,
    {
        None
    }
}

/// A VDE port: a libvdeplug client used as `client` says.
struct VdeEnd {
    plug: VdePlug,
    client: Client,
    batch: RecvBatch,
    buf: Vec<u8>,
}

impl Endpoint for VdeEnd {
    fn send(&mut self, f: &[u8], k: usize) {
        match self.client {
            Client::Batch | Client::Loop => {
                let burst: Vec<&[u8]> = std::iter::repeat_n(f, k).collect();
                self.plug.send_batch(&burst).unwrap()
            }
            Client::Single => {
                for _ in 0..k {
                    self.plug.send(f).unwrap();
                }
            }
        }
    }

    fn recv(&mut self) -> std::io::Result<u64> {
        match self.client {
            Client::Batch | Client::Loop => self.plug.recv_batch(&mut self.batch).map(|n| n as u64),
            Client::Single => self.plug.recv(&mut self.buf).map(|_| 1),
        }
    }

    fn drain(&mut self) {
        let p = &self.plug;
        p.socket().set_nonblocking(true).unwrap();
        while p.recv(&mut self.buf).is_ok() {}
        p.socket().set_nonblocking(false).unwrap();
    }

    fn own_saturation(ends: &[Self], total: u64) -> Option<Load> {
        let loop_ = ends.first().is_some_and(|e| e.client == Client::Loop);
        loop_.then(|| run_loop(ends, total))
    }
}

fn connect_vde(dir: &Path, n: usize, client: Client) -> Vec<VdeEnd> {
    (0..n)
        .map(|i| {
            let plug = VdePlug::connect(dir, &format!("bench port {i}")).expect("connect");
            plug.socket()
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            VdeEnd {
                plug,
                client,
                batch: RecvBatch::new(64),
                buf: vec![0; 2048],
            }
        })
        .collect()
}

/// A vhost-user port: a synthetic QEMU whose guest sends and receives through its rings.
struct VhostEnd {
    port: vhost_frontend::Port,
    /// The frame being sent, behind its virtio-net header.
    with_hdr: Vec<u8>,
}

impl Endpoint for VhostEnd {
    fn send(&mut self, f: &[u8], k: usize) {
        if self.with_hdr.get(vhost_frontend::HDR..) != Some(f) {
            self.with_hdr.clear();
            self.with_hdr.resize(vhost_frontend::HDR, 0);
            self.with_hdr.extend_from_slice(f);
        }
        let mut left = k;
        while left > 0 {
            let went = self.port.send(&self.with_hdr, left);
            left -= went;
            if left > 0 {
                // TX ring full: wait for the switch to return chains.
                self.port.wait(1, Duration::from_millis(10));
            }
        }
    }

    fn recv(&mut self) -> std::io::Result<u64> {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            let got = self.port.receive();
            if got > 0 {
                return Ok(got as u64);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.port.wait(0, deadline - now);
        }
    }

    fn drain(&mut self) {
        while self.port.receive() > 0 {}
    }
}

fn connect_vhost(dir: &Path, n: usize) -> Vec<VhostEnd> {
    (0..n)
        .map(|i| VhostEnd {
            port: vhost_frontend::Port::connect_event_idx(&dir.join(vhost_socket(i))),
            with_hdr: Vec::new(),
        })
        .collect()
}

/// The socket of vhost-user port `i` in the switch's directory.
fn vhost_socket(i: usize) -> String {
    format!("vhost-{i}.sock")
}

/// Announces every port's MAC so that the switch learns it, then drains the floods.
fn announce<E: Endpoint>(ends: &mut [E]) {
    for (i, e) in ends.iter_mut().enumerate() {
        e.send(&frame([0xff; 6], mac(i)), 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    for e in ends.iter_mut() {
        e.drain();
    }
}

/// How the synthetic ports use the socket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Client {
    /// `sendmmsg`/`recvmmsg`: many frames per system call.
    Batch,
    /// `send`/`recv`: one frame per system call, like QEMU.
    Single,
    /// At saturation, one thread per pair instead of a sender and a receiver: it
    /// sends and receives batches without waiting and blocks only when it can do
    /// neither (paced, like `Batch`).
    Loop,
}

impl Choice for Client {
    const ALL: &'static [(Self, &'static str)] = &[
        (Client::Batch, "batch"),
        (Client::Single, "single"),
        (Client::Loop, "loop"),
    ];
}

/// A command-line choice: its values and their names.
trait Choice: Copy + PartialEq + 'static {
    const ALL: &'static [(Self, &'static str)];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("?", |(_, n)| n)
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(t, _)| *t)
    }
}

struct Load {
    fps: f64,
    /// Seconds from the first send to the last receive.
    secs: f64,
    sent: u64,
    lost: u64,
}

impl Load {
    /// `sent` frames, `got` of them received, between the first send and the last
    /// receive.
    fn new(sent: u64, got: u64, first: Option<Instant>, last: Option<Instant>) -> Load {
        let secs = match (first, last) {
            (Some(f), Some(l)) => (l - f).as_secs_f64(),
            _ => f64::INFINITY,
        };
        Load {
            fps: got as f64 / secs,
            secs,
            sent,
            lost: sent.saturating_sub(got),
        }
    }
}

/// Flat out, one thread per pair (`Client::Loop`): it sends a batch if the socket
/// takes it, receives what is queued, and when it could do neither waits for a
/// frame (briefly while it still has frames to send: room may come first).
fn run_loop(ends: &[VdeEnd], total: u64) -> Load {
    use std::io::ErrorKind::WouldBlock;
    let pairs = ends.len() / 2;
    let per_pair = total / pairs as u64;
    let barrier = Barrier::new(pairs + 1);
    let ends = std::thread::scope(|s| {
        let threads: Vec<_> = (0..pairs)
            .map(|pair| {
                let (tx, rx) = (&ends[2 * pair].plug, &ends[2 * pair + 1].plug);
                let barrier = &barrier;
                s.spawn(move || {
                    let f = frame(mac(2 * pair + 1), mac(2 * pair));
                    let burst: Vec<&[u8]> = vec![&f[..]; SEND_BURST];
                    let mut batch = RecvBatch::new(256);
                    tx.socket().set_nonblocking(true).unwrap();
                    rx.socket().set_nonblocking(true).unwrap();
                    barrier.wait();
                    let start = Instant::now();
                    let (mut sent, mut got, mut last) = (0u64, 0u64, None);
                    while got < per_pair {
                        let mut moved = false;
                        if sent < per_pair {
                            let k = (SEND_BURST as u64).min(per_pair - sent) as usize;
                            match tx.try_send_batch(&burst[..k]) {
                                Ok(n) => {
                                    sent += n as u64;
                                    moved = true;
                                }
                                Err(e) if e.kind() == WouldBlock => {}
                                Err(e) => panic!("sending: {e}"),
                            }
                        }
                        match rx.recv_batch(&mut batch) {
                            Ok(n) => {
                                got += n as u64;
                                last = Some(Instant::now());
                                moved = true;
                            }
                            Err(e) if e.kind() == WouldBlock => {}
                            Err(e) => panic!("receiving: {e}"),
                        }
                        if moved {
                            continue;
                        }
                        // Nothing to do: wait for a frame.
                        let wait = if sent < per_pair {
                            Duration::from_millis(1)
                        } else {
                            Duration::from_millis(500)
                        };
                        rx.socket().set_nonblocking(false).unwrap();
                        rx.socket().set_read_timeout(Some(wait)).unwrap();
                        let r = rx.recv_batch(&mut batch);
                        rx.socket().set_nonblocking(true).unwrap();
                        match r {
                            Ok(n) => {
                                got += n as u64;
                                last = Some(Instant::now());
                            }
                            // 500 ms without a frame after the last send: lost.
                            Err(_) if sent == per_pair => break,
                            Err(_) => {}
                        }
                    }
                    for p in [tx, rx] {
                        p.socket().set_nonblocking(false).unwrap();
                        p.socket()
                            .set_read_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                    }
                    (start, sent, got, last)
                })
            })
            .collect();
        barrier.wait();
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let first = ends.iter().map(|e| e.0).min();
    let last = ends.iter().filter_map(|e| e.3).max();
    let sent: u64 = ends.iter().map(|e| e.1).sum();
    let got: u64 = ends.iter().map(|e| e.2).sum();
    Load::new(sent, got, first, last)
}

/// Even ports send to odd partners; `rate` = aggregate frames/s, or None for flat out
/// (in bursts of `SEND_BURST`, or one by one for `Client::Single`).
fn run_load<E: Endpoint>(ends: &mut [E], burst: usize, total: u64, rate: Option<u64>) -> Load {
    let pairs = ends.len() / 2;
    let per_sender = total / pairs as u64;
    let barrier = Barrier::new(2 * pairs + 1);
    let done = AtomicBool::new(false);
    let (mut sent, mut got) = (0u64, 0u64);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    std::thread::scope(|s| {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for (pair, ends) in ends.chunks_exact_mut(2).enumerate() {
            let [tx, rx] = ends else {
                unreachable!("chunks of 2")
            };
            let f = frame(mac(2 * pair + 1), mac(2 * pair));
            let barrier = &barrier;
            senders.push(s.spawn(move || {
                barrier.wait();
                let start = Instant::now();
                let mut n = 0u64;
                while n < per_sender {
                    let k = match rate {
                        Some(rate) => {
                            let due = start
                                + Duration::from_secs_f64(n as f64 * pairs as f64 / rate as f64);
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            }
                            PACED_BURST
                        }
                        None => burst,
                    };
                    let k = (k as u64).min(per_sender - n) as usize;
                    tx.send(&f, k);
                    n += k as u64;
                }
                (start, n)
            }));
            let done = &done;
            receivers.push(s.spawn(move || {
                barrier.wait();
                let mut n = 0u64;
                let mut last = None;
                while n < per_sender {
                    match rx.recv() {
                        Ok(k) => {
                            n += k;
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
    Load::new(sent, got, first, last)
}

/// One-way latency percentiles (p50, p99) in microseconds, from ping-pong.
fn latency<E: Endpoint>(ends: &mut [E]) -> (f64, f64) {
    let [a, b, ..] = ends else {
        return (f64::NAN, f64::NAN);
    };
    let ping = frame(mac(1), mac(0));
    let pong = frame(mac(0), mac(1));
    let mut rtts = Vec::with_capacity(PINGS);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..PINGS {
                if b.recv().is_err() {
                    return;
                }
                b.send(&pong, 1);
            }
        });
        for _ in 0..PINGS {
            let t = Instant::now();
            a.send(&ping, 1);
            if a.recv().is_err() {
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

/// Time a thread or process has spent on a CPU and waiting for one (runnable but
/// not running), in ns, from its `schedstat` file, or summed over the threads of a
/// `/proc/PID/task` directory.
fn sched_ns(schedstat: &Path) -> Option<(u64, u64)> {
    if schedstat.is_dir() {
        // A process's `task` directory: the sum over its threads.
        return std::fs::read_dir(schedstat)
            .ok()?
            .try_fold((0, 0), |acc, t| {
                let (cpu, wait) = sched_ns(&t.ok()?.path().join("schedstat"))?;
                Some((acc.0 + cpu, acc.1 + wait))
            });
    }
    let text = std::fs::read_to_string(schedstat).ok()?;
    let mut it = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((it.next()??, it.next()??))
}

#[derive(Debug, Clone, Copy)]
struct Row {
    fps: f64,
    sat_lost: u64,
    paced_lost: u64,
    p50: f64,
    p99: f64,
    /// The switch's CPU time per frame sent into it at saturation, in ns.
    cpu_ns: f64,
    /// The time the switch spent waiting for a CPU at saturation, as a share of the
    /// saturation phase (0-1): CPU the load took from it.
    wait: f64,
}

impl Row {
    fn to_line(self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.fps, self.sat_lost, self.paced_lost, self.p50, self.p99, self.cpu_ns, self.wait
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
            cpu_ns: it.next()?.parse().ok()?,
            wait: it.next()?.parse().ok()?,
        })
    }
}

/// What the load process is told: the switch, the load, and where the switch's CPU
/// time can be read.
struct LoadArgs {
    dir: PathBuf,
    ports: usize,
    frames: u64,
    client: Client,
    /// vhost-user ports (sockets `vhost_socket(i)` in `dir`) rather than VDE ports.
    vhost: bool,
    /// A `schedstat` file, or a `task` directory whose threads' files are summed.
    schedstat: PathBuf,
    /// Run the load process on this CPU only (`--pin`).
    cpu: Option<usize>,
}

fn measure(args: &LoadArgs) -> Row {
    if args.vhost {
        measure_ports(args, &mut connect_vhost(&args.dir, args.ports))
    } else {
        measure_ports(args, &mut connect_vde(&args.dir, args.ports, args.client))
    }
}

/// The three phases on connected ports: saturation, paced, latency.
fn measure_ports<E: Endpoint>(args: &LoadArgs, ends: &mut [E]) -> Row {
    announce(ends);
    let burst = match args.client {
        Client::Single if !args.vhost => 1,
        _ => SEND_BURST,
    };
    let before = sched_ns(&args.schedstat);
    let sat = E::own_saturation(ends, args.frames)
        .unwrap_or_else(|| run_load(ends, burst, args.frames, None));
    let after = sched_ns(&args.schedstat);
    ends.iter_mut().for_each(E::drain);
    let paced = run_load(
        ends,
        burst,
        (PACED_FPS as f64 * PACED_SECS) as u64,
        Some(PACED_FPS),
    );
    ends.iter_mut().for_each(E::drain);
    let (p50, p99) = latency(ends);
    let (cpu_ns, wait) = match (before, after) {
        (Some(b), Some(a)) => (
            a.0.saturating_sub(b.0) as f64 / sat.sent as f64,
            a.1.saturating_sub(b.1) as f64 / 1e9 / sat.secs,
        ),
        _ => (f64::NAN, f64::NAN),
    };
    Row {
        fps: sat.fps,
        sat_lost: sat.lost,
        paced_lost: paced.lost,
        p50,
        p99,
        cpu_ns,
        wait,
    }
}

/// Runs the load against the switch in `dir` in a child process (this binary with
/// `--load`) and returns its figures.
fn measure_in_child(args: &LoadArgs) -> Row {
    let exe = std::env::current_exe().expect("bench binary path");
    let out = pinned(&exe, args.cpu)
        .arg("--load")
        .arg(&args.dir)
        .arg(args.ports.to_string())
        .arg(args.frames.to_string())
        .arg(args.client.name())
        .arg(&args.schedstat)
        .arg(if args.vhost { "vhost" } else { "vde" })
        .stderr(Stdio::inherit())
        .output()
        .expect("run the load process");
    assert!(out.status.success(), "load process failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    Row::parse(&text).unwrap_or_else(|| panic!("bad load output {text:?}"))
}

/// The load process's side of `measure_in_child`.
fn load_main(args: &[String]) {
    let args = LoadArgs {
        dir: PathBuf::from(&args[2]),
        ports: args[3].parse().expect("port count"),
        frames: args[4].parse().expect("frame count"),
        client: Client::parse(&args[5]).expect("client kind"),
        schedstat: PathBuf::from(&args[6]),
        vhost: args[7] == "vhost",
        // Already pinned by whoever started this process.
        cpu: None,
    };
    println!("{}", measure(&args).to_line());
}

struct VdeSwitchProcess {
    child: Child,
    dir: PathBuf,
}

impl VdeSwitchProcess {
    fn start(dir: PathBuf, cpu: Option<usize>) -> Self {
        let child = pinned(Path::new("vde_switch"), cpu)
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

/// The `schedstat` file of this process's thread called `name`.
fn thread_schedstat(name: &str) -> Option<PathBuf> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|t| {
        let t = t.ok()?.path();
        let comm = std::fs::read_to_string(t.join("comm")).ok()?;
        (comm.trim_end() == name).then(|| {
            Path::new("/proc")
                .join(std::process::id().to_string())
                .join("task")
                .join(t.file_name().unwrap_or_default())
                .join("schedstat")
        })
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Which {
    /// vmrig's switch, VDE ports.
    Vmrig,
    /// vmrig's switch, vhost-user ports.
    Vhost,
    /// vde2's `vde_switch`.
    VdeSwitch,
}

impl Choice for Which {
    const ALL: &'static [(Self, &'static str)] = &[
        (Which::Vmrig, "vmrig"),
        (Which::Vhost, "vhost"),
        (Which::VdeSwitch, "vde_switch"),
    ];
}

struct Setup<'a> {
    runtime: &'a tokio::runtime::Runtime,
    tmp: &'a Path,
    frames: u64,
    client: Client,
    /// vmrig's busy-poll setting, when not the default.
    busy_poll: Option<Duration>,
    /// Give the switch one CPU and the load process another.
    pin: bool,
}

/// A command for `program` that runs on `cpu` only, when given (util-linux's taskset).
fn pinned(program: &Path, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// With `--pin`: the switch's CPU and the load's.
const SWITCH_CPU: usize = 0;
const LOAD_CPU: usize = 1;

fn measure_switch(setup: &Setup<'_>, which: Which, n: usize, round: usize) -> Row {
    let load = |dir: &Path, schedstat: PathBuf| {
        measure_in_child(&LoadArgs {
            dir: dir.to_owned(),
            ports: n,
            frames: setup.frames,
            client: setup.client,
            vhost: which == Which::Vhost,
            schedstat,
            cpu: setup.pin.then_some(LOAD_CPU),
        })
    };
    match which {
        Which::Vmrig => {
            let dir = setup.tmp.join(format!("ours{n}-{round}"));
            let mut opts = SwitchOptions::new(dir);
            opts.busy_poll = setup.busy_poll.unwrap_or(opts.busy_poll);
            let switch = setup.runtime.block_on(Switch::start(opts)).unwrap();
            // The frame thread is named after the switch (see vde-net's engine); it
            // names itself once it runs.
            let deadline = Instant::now() + Duration::from_secs(5);
            let schedstat = loop {
                match thread_schedstat("vde-switch") {
                    Some(path) => break path,
                    None if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    None => break PathBuf::new(),
                }
            };
            if setup.pin {
                // The frame thread's id is the name of its /proc/PID/task entry.
                let tid = schedstat.parent().and_then(Path::file_name);
                let ok = tid.is_some_and(|tid| {
                    Command::new("taskset")
                        .args(["-p", "-c", &SWITCH_CPU.to_string()])
                        .arg(tid)
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success())
                });
                assert!(ok, "cannot pin vmrig's frame thread to CPU {SWITCH_CPU}");
            }
            let row = load(switch.dir(), schedstat);
            let _guard = setup.runtime.enter();
            drop(switch);
            row
        }
        Which::Vhost => {
            let dir = setup.tmp.join(format!("vhost{n}-{round}"));
            let switch = setup
                .runtime
                .block_on(Switch::start(SwitchOptions::new(&dir)))
                .unwrap();
            for i in 0..n {
                switch
                    .add_vhost_user_port(dir.join(vhost_socket(i)))
                    .unwrap();
            }
            if setup.pin {
                // Every thread of this process is the switch's (the load runs apart);
                // the ring threads not yet started inherit their parent's CPU.
                let ok = Command::new("taskset")
                    .args(["-a", "-p", "-c", &SWITCH_CPU.to_string()])
                    .arg(std::process::id().to_string())
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "cannot pin the switch's threads to CPU {SWITCH_CPU}");
            }
            // Frames move on each port's ring thread: count the whole process.
            let tasks = PathBuf::from(format!("/proc/{}/task", std::process::id()));
            let row = load(&dir, tasks);
            let _guard = setup.runtime.enter();
            drop(switch);
            row
        }
        Which::VdeSwitch => {
            let vde = VdeSwitchProcess::start(
                setup.tmp.join(format!("vde{n}-{round}")),
                setup.pin.then_some(SWITCH_CPU),
            );
            let schedstat = PathBuf::from(format!("/proc/{}/schedstat", vde.child.id()));
            load(&vde.dir, schedstat)
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

fn print_header() {
    println!(
        "{:>5} | {:>10} | {:>10} | {:>13} | {:>14} | {:>17} | {:>12} | {:>6}",
        "ports",
        "switch",
        "frames/s",
        "lost sat/paced",
        "vs vde_switch",
        "p50/p99 us",
        "CPU ns/frame",
        "wait"
    );
}

/// One line per switch measured at `ports`, frames/s also as a ratio to vde_switch's.
fn print_rows(ports: usize, rows: &[(Which, Row)]) {
    let base = rows
        .iter()
        .find(|(w, _)| *w == Which::VdeSwitch)
        .map(|(_, r)| r.fps);
    for (w, r) in rows {
        let ratio = match base {
            Some(b) if *w != Which::VdeSwitch => format!("{:.2}x", r.fps / b),
            _ => "-".into(),
        };
        println!(
            "{ports:>5} | {:>10} | {:>10.0} | {:>13} | {ratio:>14} | {:>17} | {:>12.0} | {:>5.0}%",
            w.name(),
            r.fps,
            format!("{}/{}", r.sat_lost, r.paced_lost),
            format!("{:.1} / {:.1}", r.p50, r.p99),
            r.cpu_ns,
            r.wait * 100.0
        );
    }
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
        load_main(&args);
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
    let which: Vec<Which> = match flag_value(&args, "--only") {
        Some(list) => list
            .split(',')
            .map(|w| {
                Which::parse(w).unwrap_or_else(|| {
                    panic!("--only takes vmrig, vhost and vde_switch (comma-separated), not {w}")
                })
            })
            .collect(),
        None => vec![Which::Vmrig, Which::Vhost, Which::VdeSwitch],
    };
    let client = flag_value(&args, "--client")
        .map(|c| Client::parse(&c).expect("--client batch|single|loop"))
        .unwrap_or(Client::Batch);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let setup = Setup {
        runtime: &runtime,
        tmp: tmp.path(),
        frames: if quick { 10_000 } else { FRAMES },
        client,
        busy_poll: flag_value(&args, "--busy-poll-us")
            .map(|us| Duration::from_micros(us.parse().expect("--busy-poll-us N"))),
        pin: args.iter().any(|a| a == "--pin"),
    };
    if setup.pin {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(cpus > LOAD_CPU, "--pin needs 2 CPUs, this host has {cpus}");
    }
    println!(
        "vde switch benchmark: {} x 60-byte unicast frames at saturation, \
         {PACED_FPS} frames/s paced for {PACED_SECS} s, {PINGS} ping-pongs, \
         {} clients, {rounds} round(s){}",
        setup.frames,
        client.name(),
        if setup.pin {
            format!(", switch on CPU {SWITCH_CPU} and load on CPU {LOAD_CPU}")
        } else {
            String::new()
        }
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
                let row = measure_switch(&setup, w, n, round);
                got.push((w, row));
                results.push((n, w, row));
            }
            got.sort_by_key(|(w, _)| *w as u8);
            print_rows(n, &got);
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
                let med = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
                (!rows.is_empty()).then(|| {
                    let row = Row {
                        fps: med(|r| r.fps),
                        sat_lost: rows.iter().map(|r| r.sat_lost).max().unwrap_or(0),
                        paced_lost: rows.iter().map(|r| r.paced_lost).max().unwrap_or(0),
                        p50: med(|r| r.p50),
                        p99: med(|r| r.p99),
                        cpu_ns: med(|r| r.cpu_ns),
                        wait: med(|r| r.wait),
                    };
                    (w, row)
                })
            };
            let rows: Vec<_> = [Which::Vmrig, Which::Vhost, Which::VdeSwitch]
                .into_iter()
                .filter_map(summary)
                .collect();
            print_rows(n, &rows);
        }
    }
    println!(
        "switch: vmrig = vmrig's VDE ports, vhost = vmrig's vhost-user ports; \
         lost = frames lost at saturation / when paced (the worst round); \
         CPU ns/frame = the switch's CPU time at saturation per frame sent into it \
         (vhost: every thread of the switch's process); wait = the share of the \
         saturation phase the switch was ready to run but waited for a CPU (the load \
         process had it; vhost: summed over its threads)"
    );
}
