//! End-to-end tests of the switch with real vde2 clients and our own libvdeplug client.

mod common;

use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use vmrig_vde_net::request::{PortWish, Request};
use vmrig_vde_net::{pcap, LinkFaults, RecvBatch, Switch, SwitchOptions, VdePlug};

fn opts(dir: &tempfile::TempDir) -> SwitchOptions {
    SwitchOptions::new(dir.path().join("sw"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vde_plug_clients_pass_traffic_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let dir = switch.dir().to_owned();
    let mut a = VdePlugProcess::start(&dir);
    let mut b = VdePlugProcess::start(&dir);
    eventually("two ports", || switch.ports().len() == 2).await;
    assert!(switch.ports()[0].description.contains("vdeplug"));
    let (got_b, got_a, _a, _b) = tokio::task::spawn_blocking(move || {
        let f1 = frame(BCAST, mac(1), 1);
        a.send(&f1);
        let got_b = b.recv();
        let f2 = frame(mac(1), mac(2), 2);
        b.send(&f2);
        let got_a = a.recv();
        assert_eq!(got_b, f1);
        assert_eq!(got_a, f2);
        (got_b, got_a, a, b)
    })
    .await
    .unwrap();
    assert_eq!(got_b.len(), 60);
    assert_eq!(got_a.len(), 60);
    // The two vde_plug processes race for port numbers: find them by address.
    let pa = switch.port_of(mac(1)).expect("a's address learned");
    let pb = switch.port_of(mac(2)).expect("b's address learned");
    assert_ne!(pa, pb);
    let ports = switch.ports();
    let info = |p| ports.iter().find(|i| i.id == p).unwrap().counters;
    assert_eq!((info(pa).rx_frames, info(pa).tx_frames), (1, 1));
    assert_eq!((info(pb).rx_bytes, info(pb).tx_bytes), (60, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_torn_down_when_the_client_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let a = VdePlugProcess::start(switch.dir());
    eventually("a port", || switch.ports().len() == 1).await;
    drop(a);
    eventually("no port", || switch.ports().is_empty()).await;
    // Only the control socket is left in the directory.
    let names: Vec<_> = std::fs::read_dir(switch.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ctl")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_and_never_floods_known_unicast_or_reflects() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let dir = switch.dir().to_owned();
    tokio::task::spawn_blocking(move || {
        let (a, b, c) = (plug(&dir, "a"), plug(&dir, "b"), plug(&dir, "c"));
        // b and c announce themselves; a sees both.
        b.send(&frame(BCAST, mac(2), 1)).unwrap();
        assert_eq!(recv(&a)[11], 2);
        assert_eq!(recv(&c)[11], 2);
        c.send(&frame(BCAST, mac(3), 1)).unwrap();
        assert_eq!(recv(&a)[11], 3);
        assert_eq!(recv(&b)[11], 3);
        // a -> b is known unicast: c must not see it. The broadcast a sends next is
        // the first thing c receives (frames from one port keep their order).
        a.send(&frame(mac(2), mac(1), 7)).unwrap();
        a.send(&frame(BCAST, mac(1), 8)).unwrap();
        assert_eq!(recv(&b)[20], 7);
        assert_eq!(recv(&b)[20], 8);
        assert_eq!(recv(&c)[20], 8, "c got a unicast frame meant for b");
        // A frame to an address behind the sender's own port goes nowhere, and the
        // sender never gets its own broadcast back.
        a.send(&frame(mac(1), mac(1), 9)).unwrap();
        b.send(&frame(BCAST, mac(2), 10)).unwrap();
        assert_eq!(recv(&a)[20], 10, "a got its own frame back");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_mode_floods_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp).hub(true)).await.unwrap();
    let dir = switch.dir().to_owned();
    tokio::task::spawn_blocking(move || {
        let (a, b, c) = (plug(&dir, "a"), plug(&dir, "b"), plug(&dir, "c"));
        b.send(&frame(BCAST, mac(2), 1)).unwrap();
        recv(&a);
        recv(&c);
        a.send(&frame(mac(2), mac(1), 5)).unwrap();
        assert_eq!(recv(&b)[20], 5);
        assert_eq!(recv(&c)[20], 5);
    })
    .await
    .unwrap();
    assert_eq!(switch.port_of(mac(2)), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_faults_change_at_run_time() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = std::sync::Arc::new(Switch::start(opts(&tmp)).await.unwrap());
    let dir = switch.dir().to_owned();
    let sw = switch.clone();
    tokio::task::spawn_blocking(move || {
        let (a, b, c) = (plug(&dir, "a"), plug(&dir, "b"), plug(&dir, "c"));
        let ports: Vec<_> = sw.ports().iter().map(|p| p.id).collect();
        let (pb, pc) = (ports[1], ports[2]);

        // Port link down: b misses frame 1, c gets it; back up: b gets frame 2 first.
        sw.set_port_link(pb, false).unwrap();
        a.send(&frame(BCAST, mac(1), 1)).unwrap();
        assert_eq!(recv(&c)[20], 1);
        sw.set_port_link(pb, true).unwrap();
        a.send(&frame(BCAST, mac(1), 2)).unwrap();
        assert_eq!(recv(&b)[20], 2);
        assert_eq!(recv(&c)[20], 2);
        assert!(sw.ports()[1].counters.drops >= 1);

        // VLAN down: nobody gets frame 3.
        sw.set_vlan_link(false).unwrap();
        let before = sw.ports()[0].counters.rx_frames;
        a.send(&frame(BCAST, mac(1), 3)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sw.ports()[0].counters.rx_frames == before {
            assert!(Instant::now() < deadline, "switch never saw frame 3");
            std::thread::sleep(Duration::from_millis(5));
        }
        sw.set_vlan_link(true).unwrap();
        a.send(&frame(BCAST, mac(1), 4)).unwrap();
        assert_eq!(recv(&b)[20], 4);
        assert_eq!(recv(&c)[20], 4);

        // 100% loss on c: only b gets frame 5.
        sw.set_port_loss(pc, 100.0).unwrap();
        a.send(&frame(BCAST, mac(1), 5)).unwrap();
        assert_eq!(recv(&b)[20], 5);
        sw.set_port_loss(pc, 0.0).unwrap();

        // Partition {a}, {b, c}: b's frame reaches c only.
        sw.partition(&[vec![ports[0]], vec![pb, pc]]);
        b.send(&frame(BCAST, mac(2), 6)).unwrap();
        assert_eq!(recv(&c)[20], 6);
        sw.heal();
        b.send(&frame(BCAST, mac(2), 7)).unwrap();
        assert_eq!(recv(&a)[20], 7, "a saw a frame across the partition");
        assert_eq!(recv(&c)[20], 7);

        // Delay: a frame to c takes at least the delay (lower bound only).
        sw.set_port_delay(pc, Duration::from_millis(300), Duration::from_millis(50))
            .unwrap();
        let t = Instant::now();
        a.send(&frame(BCAST, mac(1), 8)).unwrap();
        assert_eq!(recv(&c)[20], 8);
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(recv(&b)[20], 8);
        assert_eq!(
            sw.port_faults(pc).unwrap(),
            LinkFaults {
                delay: Duration::from_millis(300),
                jitter: Duration::from_millis(50),
                ..LinkFaults::default()
            }
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcap_capture_holds_every_frame() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let file = tmp.path().join("vlan1.pcap");
    switch.start_capture(&file).unwrap();
    let dir = switch.dir().to_owned();
    let sent = tokio::task::spawn_blocking(move || {
        let (a, b) = (plug(&dir, "a"), plug(&dir, "b"));
        let mut sent = Vec::new();
        for i in 0..5u8 {
            let mut f = frame(BCAST, mac(1), i);
            f.resize(60 + i as usize * 100, i);
            a.send(&f).unwrap();
            assert_eq!(recv(&b), f);
            sent.push(f);
        }
        sent
    })
    .await
    .unwrap();
    assert_eq!(switch.stop_capture().unwrap(), Some(file.clone()));
    let records = pcap::parse(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(records.len(), 5);
    for (r, f) in records.iter().zip(&sent) {
        assert_eq!(&r.data, f);
        assert_eq!(r.orig_len as usize, f.len());
        assert!(r.time.as_secs() > 1_600_000_000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_capture_file_stalls_neither_frames_nor_the_api() {
    // The capture goes to a FIFO whose reader reads nothing until told: the
    // writer thread blocks on the full pipe, and the switch must carry on
    // forwarding and answering meanwhile (no disk I/O under the switch lock).
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let fifo = tmp.path().join("capture.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", fifo.display());
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let mut f = std::fs::File::open(&fifo).unwrap();
            wait.recv().unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            data
        }
    });
    switch.start_capture(&fifo).unwrap();
    let dir = switch.dir().to_owned();
    // 800 frames of 1500 bytes: about 1.2 MB, far more than the pipe and the
    // writer's buffer hold, yet fewer passes than the writer's queue takes.
    let n = 800u32;
    let sw = std::sync::Arc::new(switch);
    let sent = tokio::task::spawn_blocking({
        let sw = sw.clone();
        move || {
            let (a, b) = (plug(&dir, "a"), plug(&dir, "b"));
            let mut sent = Vec::new();
            for seq in 0..n {
                let mut f = numbered(BCAST, mac(1), seq);
                f.resize(1500, seq as u8);
                a.send(&f).unwrap();
                assert_eq!(
                    recv(&b),
                    f,
                    "frame {seq} forwarded while the capture is stuck"
                );
                let t = Instant::now();
                assert_eq!(sw.ports().len(), 2);
                assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "the switch lock was held"
                );
                sent.push(f);
            }
            sent
        }
    })
    .await
    .unwrap();
    go.send(()).unwrap();
    assert_eq!(sw.stop_capture().unwrap(), Some(fifo.clone()));
    let data = reader.join().unwrap();
    let records = pcap::parse(&data).unwrap();
    assert_eq!(records.len(), sent.len(), "every frame is in the capture");
    for (r, f) in records.iter().zip(&sent) {
        assert_eq!(&r.data, f);
    }
}

/// A frame from `src` to `dst` numbered `seq` (big-endian in bytes 14..18).
fn numbered(dst: [u8; 6], src: [u8; 6], seq: u32) -> Vec<u8> {
    let mut f = frame(dst, src, 0);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[14..18].try_into().unwrap())
}

/// Receives exactly `n` frames with `recv_batch`.
fn recv_n(p: &VdePlug, n: usize) -> Vec<Vec<u8>> {
    let mut batch = RecvBatch::new(16);
    let mut got = Vec::new();
    while got.len() < n {
        p.recv_batch(&mut batch).expect("frames within 10 s");
        got.extend(batch.iter().map(<[u8]>::to_vec));
    }
    assert_eq!(got.len(), n, "more frames than sent");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_each_senders_order_unicast_and_flooded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = opts(&tmp);
    // Exercise the polling loop too.
    opts.busy_poll = Duration::from_micros(200);
    let switch = std::sync::Arc::new(Switch::start(opts).await.unwrap());
    let dir = switch.dir().to_owned();
    let sw = switch.clone();
    tokio::task::spawn_blocking(move || {
        let (a, b, c) = (plug(&dir, "a"), plug(&dir, "b"), plug(&dir, "c"));
        for (p, i) in [(&a, 1), (&b, 2), (&c, 3)] {
            p.send(&frame(BCAST, mac(i), 0)).unwrap();
        }
        recv_n(&a, 2);
        recv_n(&b, 2);
        recv_n(&c, 2);
        let mut seq = 0;
        for round in 0..40 {
            // a and b both send a burst to c: each one's frames stay in order.
            let fa: Vec<Vec<u8>> = (0..64).map(|i| numbered(mac(3), mac(1), seq + i)).collect();
            let fb: Vec<Vec<u8>> = (0..64).map(|i| numbered(mac(3), mac(2), seq + i)).collect();
            a.send_batch(&fa.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap();
            b.send_batch(&fb.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap();
            let got = recv_n(&c, 128);
            for src in [1u8, 2] {
                let seqs: Vec<u32> = got
                    .iter()
                    .filter(|f| f[11] == src)
                    .map(|f| seq_of(f))
                    .collect();
                assert_eq!(seqs, (seq..seq + 64).collect::<Vec<_>>(), "round {round}");
            }
            // c floods a burst: a and b get all of it, in order.
            let fc: Vec<Vec<u8>> = (0..50).map(|i| numbered(BCAST, mac(3), seq + i)).collect();
            c.send_batch(&fc.iter().map(Vec::as_slice).collect::<Vec<_>>())
                .unwrap();
            for p in [&a, &b] {
                assert_eq!(recv_n(p, 50), fc);
            }
            seq += 64;
        }
        // Jumbo frames pass whole.
        let mut jumbo = numbered(mac(1), mac(3), 7);
        jumbo.resize(9000, 0xab);
        c.send(&jumbo).unwrap();
        let got = recv_n(&a, 1).remove(0);
        assert!(
            got == jumbo,
            "jumbo frame changed: {} bytes came",
            got.len()
        );
        let ports = sw.ports();
        assert_eq!(ports[2].counters.rx_frames, 1 + 40 * 50 + 1);
        assert_eq!(ports[2].counters.tx_frames, 2 + 40 * 128);
        assert!(ports.iter().all(|p| p.counters.drops == 0));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_send_batch_reports_exactly_what_went() {
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&dir)).await.unwrap();
    let sock = switch.dir().to_owned();
    tokio::task::spawn_blocking(move || {
        let (a, b) = (plug(&sock, "a"), plug(&sock, "b"));
        a.send(&frame(BCAST, mac(1), 0)).unwrap();
        b.send(&frame(BCAST, mac(2), 0)).unwrap();
        recv_n(&a, 1);
        recv_n(&b, 1);
        a.socket().set_nonblocking(true).unwrap();
        // Bursts of 64 on a non-blocking socket, each resumed where the last stopped:
        // a miscount would skip or repeat sequence numbers at b.
        const TOTAL: u32 = 5_000;
        let (mut sent, mut full) = (0u32, 0);
        let receiver = std::thread::spawn(move || recv_n(&b, TOTAL as usize));
        while sent < TOTAL {
            let burst: Vec<Vec<u8>> = (sent..(sent + 64).min(TOTAL))
                .map(|i| numbered(mac(2), mac(1), i))
                .collect();
            match a.try_send_batch(&burst.iter().map(Vec::as_slice).collect::<Vec<_>>()) {
                Ok(n) => {
                    assert!(n > 0 && n <= burst.len(), "{n} of {}", burst.len());
                    sent += n as u32;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    full += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("try_send_batch: {e}"),
            }
        }
        let got: Vec<u32> = receiver.join().unwrap().iter().map(|f| seq_of(f)).collect();
        assert_eq!(
            got,
            (0..TOTAL).collect::<Vec<_>>(),
            "{full} full queues met"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_port_does_not_starve_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let dir = switch.dir().to_owned();
    let worst = tokio::task::spawn_blocking(move || {
        let plugs: Vec<VdePlug> = (1..=4).map(|i| plug(&dir, &format!("p{i}"))).collect();
        for (i, p) in plugs.iter().enumerate() {
            p.send(&frame(BCAST, mac(i as u8 + 1), 0)).unwrap();
        }
        for p in &plugs {
            recv_n(p, 3);
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (a, b, c, d) = (&plugs[0], &plugs[1], &plugs[2], &plugs[3]);
        std::thread::scope(|s| {
            // a sends to b as fast as it can, b takes everything.
            s.spawn(|| {
                let f = frame(mac(2), mac(1), 1);
                let burst = vec![&f[..]; 32];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    a.send_batch(&burst).unwrap();
                }
            });
            s.spawn(|| {
                let mut batch = RecvBatch::new(64);
                b.socket()
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = b.recv_batch(&mut batch);
                }
            });
            // Meanwhile c's frames to d still get through promptly.
            std::thread::sleep(Duration::from_millis(100));
            let mut worst = Duration::ZERO;
            for i in 0..20 {
                let t = Instant::now();
                c.send(&numbered(mac(4), mac(3), i)).unwrap();
                assert_eq!(recv_n(d, 1)[0][14..18], i.to_be_bytes());
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(20));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            worst
        })
    })
    .await
    .unwrap();
    // Without a per-port budget, c waited for a's queue to run dry: seconds.
    assert!(worst < Duration::from_millis(500), "c waited {worst:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delay_queue_is_bounded_and_counts_what_it_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = opts(&tmp);
    // Room for 10 of the 60-byte frames.
    opts.max_delayed_bytes = 600;
    let switch = std::sync::Arc::new(Switch::start(opts).await.unwrap());
    let dir = switch.dir().to_owned();
    let sw = switch.clone();
    tokio::task::spawn_blocking(move || {
        let (a, b) = (plug(&dir, "a"), plug(&dir, "b"));
        let pb = sw.ports()[1].id;
        let delay = Duration::from_millis(300);
        sw.set_port_delay(pb, delay, Duration::ZERO).unwrap();
        let frames: Vec<Vec<u8>> = (0..30).map(|i| numbered(BCAST, mac(1), i)).collect();
        let t = Instant::now();
        a.send_batch(&frames.iter().map(Vec::as_slice).collect::<Vec<_>>())
            .unwrap();
        // The first ten fit; the other twenty are refused, not queued.
        assert_eq!(recv_n(&b, 10), frames[..10].to_vec());
        assert!(t.elapsed() >= delay);
        b.socket()
            .set_read_timeout(Some(Duration::from_millis(600)))
            .unwrap();
        let mut buf = [0u8; 100];
        assert!(b.recv(&mut buf).is_err(), "a refused frame came through");
        let c = sw.ports()[1].counters;
        assert_eq!((c.tx_frames, c.delay_drops, c.drops), (10, 20, 20));
        // Once the queue has drained there is room again.
        a.send(&frames[0]).unwrap();
        b.socket()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(recv(&b), frames[0]);
    })
    .await
    .unwrap();
}

fn request_bytes(sock_path: &[u8]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Request {
        port: PortWish::Any,
        sock_path: sock_path.to_vec(),
        description: "hostile".into(),
    }
    .encode(&mut buf);
    buf.to_vec()
}

/// Sends `bytes` on a fresh control connection; returns whether the switch replied.
fn try_request(dir: &std::path::Path, bytes: &[u8], close_after: bool) -> bool {
    let mut s = UnixStream::connect(dir.join("ctl")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    if close_after {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut reply = [0u8; 110];
    matches!(s.read(&mut reply), Ok(n) if n > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_rejected_and_others_still_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(&tmp);
    o.handshake_timeout = Duration::from_secs(1);
    o.max_pending = 16;
    let switch = Switch::start(o).await.unwrap();
    let dir = switch.dir().to_owned();
    let _plugs = tokio::task::spawn_blocking(move || {
        // Bad magic.
        assert!(!try_request(&dir, b"GET / HTTP/1.1\r\n\r\n", false));
        // Truncated struct.
        let good = request_bytes(dir.join(".x").as_os_str().as_bytes());
        assert!(!try_request(&dir, &good[..60], true));
        // Socket path outside the directory, and one escaping it with "..".
        let outside = tempfile::tempdir().unwrap();
        let out_sock = outside.path().join("s");
        let _keep = std::os::unix::net::UnixDatagram::bind(&out_sock).unwrap();
        assert!(!try_request(
            &dir,
            &request_bytes(out_sock.as_os_str().as_bytes()),
            false
        ));
        let sneaky = format!("{}/../{}", dir.display(), "x");
        assert!(!try_request(&dir, &request_bytes(sneaky.as_bytes()), false));
        // A path in the directory that is not a socket.
        std::fs::write(dir.join("plain"), b"").unwrap();
        assert!(!try_request(
            &dir,
            &request_bytes(dir.join("plain").as_os_str().as_bytes()),
            false
        ));
        std::fs::remove_file(dir.join("plain")).unwrap();
        // A flood of idle connections: the extra ones are closed at once, the rest
        // time out; afterwards a real client connects and passes traffic.
        let flood: Vec<_> = (0..2000)
            .filter_map(|_| UnixStream::connect(dir.join("ctl")).ok())
            .collect();
        assert!(flood.len() > 1000);
        std::thread::sleep(Duration::from_millis(1500));
        drop(flood);
        let a = plug(&dir, "a");
        let b = plug(&dir, "b");
        a.send(&frame(BCAST, mac(1), 1)).unwrap();
        assert_eq!(recv(&b)[20], 1);
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(switch.ports().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_ports_refuse_the_extra_client() {
    let tmp = tempfile::tempdir().unwrap();
    let mut o = opts(&tmp);
    o.config.max_ports = 2;
    let switch = Switch::start(o).await.unwrap();
    let dir = switch.dir().to_owned();
    let _plugs = tokio::task::spawn_blocking(move || {
        let a = plug(&dir, "a");
        let b = plug(&dir, "b");
        assert!(VdePlug::connect(&dir, "c").is_err());
        (a, b)
    })
    .await
    .unwrap();
    assert_eq!(switch.ports().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // A world-writable directory, so only the credential check stands in the way.
    let mut o = opts(&tmp);
    o.dir_mode = 0o777;
    let switch = Switch::start(o).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        switch.dir().join("ctl"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    let me = std::fs::metadata(switch.dir().join("ctl")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        me.uid(),
        0,
        "this test needs root (it runs vde_plug as user nobody); \
         run it as root or leave it out with --skip other_users_are_refused"
    );
    let status = tokio::task::spawn_blocking({
        let dir = switch.dir().to_owned();
        move || {
            std::process::Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "timeout",
                    "10",
                    "vde_plug",
                ])
                .arg(&dir)
                .stdin(std::process::Stdio::piped())
                .status()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(!status.success(), "vde_plug as nobody was let in");
    assert!(switch.ports().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmodified_qemu_connects() {
    let tmp = tempfile::tempdir().unwrap();
    let switch = Switch::start(opts(&tmp)).await.unwrap();
    let mut qemu = tokio::process::Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-machine",
            "q35",
        ])
        .arg("-netdev")
        .arg(format!("vde,id=v1,sock={}", switch.dir().display()))
        .args(["-device", "virtio-net-pci,netdev=v1,mac=52:54:00:12:01:01"])
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64 is installed");
    eventually("qemu's port", || switch.ports().len() == 1).await;
    let desc = switch.ports()[0].description.clone();
    assert!(desc.to_lowercase().contains("qemu"), "{desc}");
    qemu.kill().await.unwrap();
    eventually("qemu's port to go", || switch.ports().is_empty()).await;
}
