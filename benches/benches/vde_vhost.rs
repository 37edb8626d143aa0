//! vmrig's switch with vhost-user ports under a synthetic load: frames/s, the switch's
//! CPU time per frame and loss, at 2, 8 and 32 ports.
//!
//! The load is a separate process (this binary run with `--load`) that plays QEMU: for
//! each port a vhost-user frontend (the `vhost` crate's `Frontend`) with its "guest
//! memory" in a memfd shared with the switch, one RX and one TX ring of 256 entries,
//! driven by hand from the driver's side. Ports pair up (0<->1, 2<->3, ...); every port
//! first announces its MAC, then every even port sends `FRAMES / (N/2)` 60-byte unicast
//! frames to its partner as fast as its TX ring allows (32 per kick, waiting for the
//! switch's used-ring signal when the ring is full) while the partner refills its RX
//! ring whenever the switch signals it, as a guest driver does on its interrupt. frames/s = frames received / time from the first
//! send to the last receive; loss = sent - received (frames a full RX ring made the
//! switch drop). CPU per frame = the switch process's CPU time (user + system) over
//! the phase / frames sent into it.
//!
//! This is the vhost-user counterpart of `--bench vde` (VDE ports and vde2's
//! `vde_switch`); run both in the same session to compare. Run with `cargo bench -p
//! vmrig-benches --bench vde_vhost [-- --ports 2,8 --frames N]`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FRAMES: u64 = 200_000;
const BURST: usize = 32;

// The synthetic frontend the vhost-user tests use: one copy for both.
#[path = "../../crates/vde-net/tests/vhost_frontend/mod.rs"]
mod vhost_frontend;
use vhost_frontend::{frame, mac, Port};

/// The load process: connects `n` ports, announces, waits for "go" on stdin, runs the
/// saturation phase, prints `sent received seconds`.
fn load(dir: &Path, n: usize, frames: u64) {
    let mut ports: Vec<Port> = (0..n)
        .map(|i| Port::connect(&dir.join(format!("p{i}.sock"))))
        .collect();
    for (i, p) in ports.iter_mut().enumerate() {
        p.send(&frame([0xff; 6], mac(i)), 1);
    }
    std::thread::sleep(Duration::from_millis(200));
    for p in &mut ports {
        p.receive();
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let per_pair = frames / (n as u64 / 2);
    let start = Instant::now();
    let mut it = ports.into_iter();
    let mut threads = Vec::new();
    let mut i = 0;
    while let (Some(mut tx), Some(mut rx)) = (it.next(), it.next()) {
        let f = frame(mac(i + 1), mac(i));
        i += 2;
        threads.push(std::thread::spawn(move || {
            let mut sent = 0u64;
            while sent < per_pair {
                let want = BURST.min((per_pair - sent) as usize);
                let got = tx.send(&f, want);
                sent += got as u64;
                if got == 0 {
                    // TX ring full: wait for the switch to return chains.
                    tx.wait(1, Duration::from_millis(10));
                }
            }
            (sent, tx)
        }));
        threads.push(std::thread::spawn(move || {
            let mut received = 0u64;
            let mut idle_since = Instant::now();
            while received < per_pair && idle_since.elapsed() < Duration::from_millis(500) {
                let got = rx.receive();
                if got == 0 {
                    rx.wait(0, Duration::from_millis(100));
                } else {
                    received += got as u64;
                    idle_since = Instant::now();
                }
            }
            // The last frame's time, not the idle wait after a loss.
            (received, rx)
        }));
    }
    let mut sent = 0;
    let mut received = 0;
    for (k, t) in threads.into_iter().enumerate() {
        let (count, _port) = t.join().unwrap();
        if k % 2 == 0 {
            sent += count;
        } else {
            received += count;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!("{sent} {received} {secs}");
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

struct Row {
    ports: usize,
    fps: f64,
    cpu_per_frame_us: f64,
    loss: u64,
    sent: u64,
}

fn measure(n: usize, frames: u64) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let switch = rt
        .block_on(vmrig_vde_net::Switch::start(
            vmrig_vde_net::SwitchOptions::new(work.path().join("sw")),
        ))
        .unwrap();
    for i in 0..n {
        switch
            .add_vhost_user_port(work.path().join(format!("p{i}.sock")))
            .unwrap();
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--load".into(), work.path().as_os_str().to_owned()])
        .arg(n.to_string())
        .arg(frames.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "load process failed to connect");
    let cpu0 = cpu_time();
    writeln!(child.stdin.take().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let cpu = cpu_time() - cpu0;
    child.wait().unwrap();
    let v: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (sent, received, secs) = (v[0] as u64, v[1] as u64, v[2]);
    Row {
        ports: n,
        fps: received as f64 / secs,
        cpu_per_frame_us: cpu.as_secs_f64() * 1e6 / sent as f64,
        loss: sent - received,
        sent,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        let dir = PathBuf::from(&args[2]);
        load(&dir, args[3].parse().unwrap(), args[4].parse().unwrap());
        return;
    }
    let mut ports = vec![2usize, 8, 32];
    let mut frames = FRAMES;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--ports" => {
                i += 1;
                ports = args[i].split(',').map(|p| p.parse().unwrap()).collect();
            }
            "--frames" => {
                i += 1;
                frames = args[i].parse().unwrap();
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    println!("vmrig switch, vhost-user ports, synthetic frontends in a load process");
    println!(
        "{:>5} {:>12} {:>16} {:>10} {:>10}",
        "ports", "frames/s", "CPU/frame (us)", "sent", "lost"
    );
    for n in ports {
        let r = measure(n, frames);
        println!(
            "{:>5} {:>12.0} {:>16.2} {:>10} {:>10}",
            r.ports, r.fps, r.cpu_per_frame_us, r.sent, r.loss
        );
    }
}
