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

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const FRAMES: u64 = 200_000;
const QUEUE: u16 = 256;
const BURST: usize = 32;
const HDR: usize = 12;
const BUF: u64 = 2048;
const MEM: usize = 2 << 20;

// Layout of a port's memory: RX ring, TX ring, RX buffers, TX buffers.
const RX_DESC: u64 = 0x0;
const RX_AVAIL: u64 = 0x1000;
const RX_USED: u64 = 0x2000;
const TX_DESC: u64 = 0x3000;
const TX_AVAIL: u64 = 0x4000;
const TX_USED: u64 = 0x5000;
const RX_BUFS: u64 = 0x10000;
const TX_BUFS: u64 = 0x100000;

// virtq_desc flags (virtio 1.2, 2.7.5).
const WRITE: u16 = 2;

fn mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0x7e, (i >> 8) as u8, i as u8]
}

fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; HDR];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(HDR + 60, 0);
    f
}

/// The driver's side of one split virtqueue.
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    avail_idx: u16,
    last_used: u16,
    free: Vec<u16>,
}

impl Ring {
    fn new(desc: u64, avail: u64, used: u64, bufs: u64) -> Ring {
        Ring {
            desc,
            avail,
            used,
            bufs,
            avail_idx: 0,
            last_used: 0,
            free: (0..QUEUE).rev().collect(),
        }
    }

    fn offer(&mut self, mem: &GuestMemoryMmap, id: u16, len: u32, flags: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&(self.bufs + u64::from(id) * BUF).to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(id)))
            .unwrap();
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE);
        mem.write_slice(&id.to_le_bytes(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn publish(&self, mem: &GuestMemoryMmap) {
        mem.store(
            self.avail_idx,
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Ids of the chains the device returned since the last call.
    fn used(&mut self, mem: &GuestMemoryMmap, out: &mut Vec<u16>) {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap();
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % QUEUE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            out.push(id as u16);
            self.last_used = self.last_used.wrapping_add(1);
        }
    }
}

/// One synthetic QEMU NIC on a vhost-user port.
struct Port {
    _frontend: Frontend,
    mem: GuestMemoryMmap,
    rx: Ring,
    tx: Ring,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    /// One epoll per call eventfd: vmm-sys-util's safe way to wait with a timeout.
    epoll: [Epoll; 2],
    scratch: Vec<u16>,
}

impl Port {
    fn connect(sock: &Path) -> Port {
        let fd = rustix::fs::memfd_create("vhost-bench", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd");
        rustix::fs::ftruncate(&fd, MEM as u64).unwrap();
        let file = File::from(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            MEM,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let mut f = Frontend::connect(sock, 2).expect("connect to the vhost-user port");
        f.set_owner().unwrap();
        let offered = f.get_features().unwrap();
        let want = (1u64 << 32) | (1 << 15) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        f.set_features(offered & want).unwrap();
        if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let pf = f.get_protocol_features().unwrap();
            f.set_protocol_features(pf & VhostUserProtocolFeatures::MQ)
                .unwrap();
        }
        f.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: raw,
        }])
        .unwrap();
        let kick = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let call = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        for (q, (desc, avail, used)) in [(RX_DESC, RX_AVAIL, RX_USED), (TX_DESC, TX_AVAIL, TX_USED)]
            .into_iter()
            .enumerate()
        {
            f.set_vring_num(q, QUEUE).unwrap();
            f.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QUEUE,
                    queue_size: QUEUE,
                    flags: 0,
                    desc_table_addr: host + desc,
                    used_ring_addr: host + used,
                    avail_ring_addr: host + avail,
                    log_addr: None,
                },
            )
            .unwrap();
            f.set_vring_base(q, 0).unwrap();
            f.set_vring_call(q, &call[q]).unwrap();
            f.set_vring_kick(q, &kick[q]).unwrap();
            f.set_vring_enable(q, true).unwrap();
        }
        let mut port = Port {
            _frontend: f,
            mem,
            rx: Ring::new(RX_DESC, RX_AVAIL, RX_USED, RX_BUFS),
            tx: Ring::new(TX_DESC, TX_AVAIL, TX_USED, TX_BUFS),
            kick,
            epoll: [0, 1].map(|q| {
                let e = Epoll::new().unwrap();
                e.ctl(
                    ControlOperation::Add,
                    std::os::fd::AsRawFd::as_raw_fd(&call[q]),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .unwrap();
                e
            }),
            call,
            scratch: Vec::new(),
        };
        // Every RX buffer offered up front.
        while let Some(id) = port.rx.free.pop() {
            port.rx.offer(&port.mem, id, BUF as u32, WRITE);
        }
        port.rx.publish(&port.mem);
        port.kick[0].write(1).unwrap();
        port
    }

    /// Sends up to `n` copies of `f` (header included); returns how many went.
    fn send(&mut self, f: &[u8], n: usize) -> usize {
        self.scratch.clear();
        self.tx.used(&self.mem, &mut self.scratch);
        self.tx.free.extend_from_slice(&self.scratch);
        let n = n.min(self.tx.free.len());
        for _ in 0..n {
            let id = self.tx.free.pop().unwrap();
            self.mem
                .write_slice(f, GuestAddress(TX_BUFS + u64::from(id) * BUF))
                .unwrap();
            self.tx.offer(&self.mem, id, f.len() as u32, 0);
        }
        if n > 0 {
            self.tx.publish(&self.mem);
            self.kick[1].write(1).unwrap();
        }
        n
    }

    /// Waits (at most `timeout`) for the switch to signal queue `q`, as a guest waits
    /// for its interrupt.
    fn wait(&self, q: usize, timeout: Duration) {
        let mut events = [EpollEvent::default()];
        if self.epoll[q]
            .wait(timeout.as_millis() as i32, &mut events)
            .unwrap_or(0)
            > 0
        {
            let _ = self.call[q].read();
        }
    }

    /// Takes the frames received and gives their buffers back; returns how many.
    fn receive(&mut self) -> usize {
        self.scratch.clear();
        self.rx.used(&self.mem, &mut self.scratch);
        let n = self.scratch.len();
        for i in 0..n {
            let id = self.scratch[i];
            self.rx.offer(&self.mem, id, BUF as u32, WRITE);
        }
        if n > 0 {
            self.rx.publish(&self.mem);
            self.kick[0].write(1).unwrap();
        }
        n
    }
}

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
