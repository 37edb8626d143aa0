//! vhost-user ports with real QEMU guests, and the port API's errors.
//!
//! Busybox guests from the guest kit boot under TCG. `a` and `b` have no VDE NIC
//! (`vlans = []`): their start scripts get, through `QEMU_OPTS`, shared guest RAM and a
//! virtio-net NIC on a vhost-user port of the switch (MACs 52:54:00:12:01:01/02,
//! addresses 192.168.1.1/2 set over the backdoor). `c` joins the same switch through
//! its unmodified `-netdev vde` (192.168.1.3).

use std::path::Path;
use std::time::{Duration, Instant};

use vmrig_guest::harness::{Guest, StartOptions};
use vmrig_vde_net::{pcap, Error, PortId, Switch, SwitchOptions, VdePlug};

const CMD: Duration = Duration::from_secs(60);
const MEMORY_MB: u32 = 256;

fn mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x01, i]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The QEMU options that put a guest's NIC `i` on the vhost-user socket `sock`.
///
/// `vectors=0` (legacy INTx instead of MSI-X): QEMU 7.2 under TCG dereferences a null
/// pointer in `virtio_pci_set_guest_notifiers` when it starts a vhost device with
/// MSI-X vectors but without KVM irqfds (SIGSEGV in `msix_set_vector_notifiers`).
fn vhost_user_opts(sock: &Path, i: u8) -> String {
    let m = mac(i);
    format!(
        "-object memory-backend-memfd,id=mem,size={MEMORY_MB}M,share=on -machine memory-backend=mem \
         -chardev socket,id=vu0,path={} -netdev vhost-user,id=vu0,chardev=vu0 \
         -device virtio-net-pci,netdev=vu0,romfile=,vectors=0,mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        sock.display(),
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Boots `a` or `b` on a vhost-user socket and gives its NIC 192.168.1.<i>.
fn boot_vhost(out: &Path, name: &str, i: u8, sock: &Path) -> Guest {
    let opts = StartOptions {
        env: vec![("QEMU_OPTS".into(), vhost_user_opts(sock, i))],
        echo_console: std::env::var_os("VMRIG_TEST_ECHO").is_some(),
        ..StartOptions::default()
    };
    let mut g =
        Guest::start(&out.join("bin").join(format!("run-{name}-vm")), &opts).expect("start guest");
    g.wait_for_backdoor(Duration::from_secs(180))
        .expect("backdoor");
    let m = mac(i);
    let mac = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    g.succeed(
        &format!(
            "for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {mac} ] && i=${{d##*/}}; done; \
             ip addr add 192.168.1.{i}/24 dev $i && ip link set $i up"
        ),
        CMD,
    )
    .unwrap();
    g
}

fn boot_vde(out: &Path, name: &str, dir: &Path) -> Guest {
    let opts = StartOptions {
        vde_sockets: vec![(1, dir.to_owned())],
        ..StartOptions::default()
    };
    let mut g =
        Guest::start(&out.join("bin").join(format!("run-{name}-vm")), &opts).expect("start guest");
    g.wait_for_backdoor(Duration::from_secs(180))
        .expect("backdoor");
    g
}

/// `ping` from a guest; returns (status, output).
fn ping(g: &mut Guest, host: &str, count: u32) -> (i32, String) {
    g.run(&format!("ping -c {count} -W 2 {host}"), CMD).unwrap()
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of proc(5), counted from after the command name (state = 3).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Threads of this process that serve one vhost-user connection (the protocol
/// thread, the ring worker and the relay's two), by name.
fn connection_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| {
            ["vhost-user-", "vring_worker", "vhost-relay-"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .count()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vhost_user_guests_talk_fail_and_reconnect() {
    let t0 = Instant::now();
    // VMRIG_TEST_KEEP=1 keeps the guests' build and sockets for a look after a failure.
    let work = tempfile::Builder::new()
        .disable_cleanup(std::env::var_os("VMRIG_TEST_KEEP").is_some())
        .tempdir()
        .unwrap();
    eprintln!("work directory {}", work.path().display());
    let def = work.path().join("vmrig.toml");
    std::fs::write(
        &def,
        format!(
            "[nodes.a]\nvlans = []\nmemory = {MEMORY_MB}\n\
             [nodes.b]\nvlans = []\nmemory = {MEMORY_MB}\n\
             [nodes.c]\nmemory = {MEMORY_MB}\n"
        ),
    )
    .unwrap();
    let out = work.path().join("result");
    vmrig_guest::build(&def, &out, &vmrig_guest::BuildOptions::default()).expect("guest build");

    let rt = runtime();
    let switch = rt
        .block_on(Switch::start(SwitchOptions::new(
            work.path().join("vde1.ctl"),
        )))
        .unwrap();
    let sock_a = work.path().join("a.vhost");
    let sock_b = work.path().join("b.vhost");
    let pa = switch.add_vhost_user_port(&sock_a).unwrap();
    let pb = switch.add_vhost_user_port(&sock_b).unwrap();
    assert!(!switch.vhost_user_connected(pa).unwrap());

    let (mut a, mut b, mut c) = std::thread::scope(|s| {
        let a = s.spawn(|| boot_vhost(&out, "a", 1, &sock_a));
        let b = s.spawn(|| boot_vhost(&out, "b", 2, &sock_b));
        let c = s.spawn(|| boot_vde(&out, "c", switch.dir()));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    eprintln!("booted 3 guests in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(switch.vhost_user_connected(pa).unwrap());
    assert!(switch.vhost_user_connected(pb).unwrap());
    assert_eq!(switch.ports().len(), 3);

    // Two vhost-user guests ping each other; the capture holds a's echo requests,
    // as Ethernet frames (the virtio-net header stripped).
    let pcap_file = work.path().join("vlan1.pcap");
    switch.start_capture(&pcap_file).unwrap();
    let (status, outp) = ping(&mut a, "192.168.1.2", 3);
    assert_eq!(status, 0, "a -> b over vhost-user: {outp}");
    let (status, outp) = ping(&mut b, "192.168.1.1", 2);
    assert_eq!(status, 0, "b -> a over vhost-user: {outp}");
    switch.stop_capture().unwrap();
    let records = pcap::parse(&std::fs::read(&pcap_file).unwrap()).unwrap();
    let echo_requests_a_to_b = records
        .iter()
        .filter(|r| {
            let d = &r.data;
            d.len() >= 42
                && d[0..6] == mac(2)
                && d[6..12] == mac(1)
                && d[12..14] == [0x08, 0x00]
                && d[23] == 1 // ICMP
                && d[34] == 8 // echo request
        })
        .count();
    assert_eq!(echo_requests_a_to_b, 3);
    assert_eq!(switch.port_of(mac(1)), Some(pa));
    assert_eq!(switch.port_of(mac(2)), Some(pb));

    // A VDE guest and a vhost-user guest on the same switch.
    let (status, outp) = ping(&mut c, "192.168.1.1", 2);
    assert_eq!(status, 0, "c (VDE) -> a (vhost-user): {outp}");
    let (status, outp) = ping(&mut a, "192.168.1.3", 2);
    assert_eq!(status, 0, "a (vhost-user) -> c (VDE): {outp}");
    let pc_ = switch.port_of(mac(3)).expect("c learned");

    // Round trips, for the record (TCG guests: their own stacks dominate).
    for (g, to, what) in [
        (&mut a, "192.168.1.2", "vhost-user <-> vhost-user"),
        (&mut c, "192.168.1.1", "VDE <-> vhost-user"),
    ] {
        let (status, outp) = ping(g, to, 5);
        assert_eq!(status, 0, "{outp}");
        let rtt = outp
            .lines()
            .find(|l| l.contains("round-trip"))
            .unwrap_or("no summary");
        eprintln!("ping {what}: {rtt}");
    }

    // A file over TCP between the two vhost-user guests, checked end to end.
    let t = Instant::now();
    b.succeed(
        "nc -d -l 5000 > /tmp/got 2>/tmp/nc.err & echo $! > /tmp/nc.pid",
        CMD,
    )
    .unwrap();
    let sum_a = a
        .succeed(
            "head -c 10485760 /dev/urandom > /tmp/src && md5sum < /tmp/src && \
             for i in $(seq 50); do nc -N 192.168.1.2 5000 < /tmp/src 2>&1 && exit 0; sleep 0.2; done; exit 1",
            Duration::from_secs(240),
        )
        .unwrap();
    let sum_b = b
        .succeed(
            "pid=$(cat /tmp/nc.pid); for i in $(seq 100); do [ -e /proc/$pid ] || break; sleep 0.2; done; \
             wc -c < /tmp/got; md5sum < /tmp/got",
            CMD,
        )
        .unwrap();
    let mut lines = sum_b.lines();
    assert_eq!(lines.next().map(str::trim), Some("10485760"));
    assert_eq!(
        lines.next(),
        sum_a.lines().next(),
        "data corrupted in transit"
    );
    eprintln!(
        "10 MiB over TCP between vhost-user guests in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // Faults apply to vhost-user ports: total loss, link down, partition.
    switch.set_port_loss(pb, 100.0).unwrap();
    assert_ne!(
        ping(&mut a, "192.168.1.2", 2).0,
        0,
        "ping crossed 100% loss"
    );
    switch.set_port_loss(pb, 0.0).unwrap();
    assert_eq!(ping(&mut a, "192.168.1.2", 1).0, 0);
    switch.set_port_link(pa, false).unwrap();
    assert_ne!(
        ping(&mut c, "192.168.1.1", 2).0,
        0,
        "ping crossed a downed link"
    );
    switch.set_port_link(pa, true).unwrap();
    switch
        .set_port_delay(pb, Duration::from_millis(150), Duration::ZERO)
        .unwrap();
    let t = Instant::now();
    let (status, outp) = ping(&mut a, "192.168.1.2", 1);
    assert_eq!(status, 0, "{outp}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "delay not applied: {outp}"
    );
    switch
        .set_port_delay(pb, Duration::ZERO, Duration::ZERO)
        .unwrap();
    switch.partition(&[vec![pa, pc_], vec![pb]]);
    assert_eq!(ping(&mut a, "192.168.1.3", 1).0, 0);
    assert_ne!(
        ping(&mut a, "192.168.1.2", 2).0,
        0,
        "ping crossed a partition"
    );
    switch.heal();
    assert_eq!(ping(&mut a, "192.168.1.2", 1).0, 0);
    let ports = switch.ports();
    let info = |p: PortId| ports.iter().find(|i| i.id == p).unwrap().clone();
    for p in [pa, pb] {
        let c = info(p).counters;
        assert!(
            c.rx_frames > 0 && c.tx_frames > 0 && c.drops > 0,
            "{p}: {c:?}"
        );
    }

    // SIGKILL a's QEMU: the port lets go (no MAC, not connected, no spinning thread,
    // none of its connection's threads left).
    let threads = connection_threads();
    assert_eq!(threads, 8, "two connections of 4 threads each");
    drop(a);
    wait_until("port a disconnects", Duration::from_secs(10), || {
        !switch.vhost_user_connected(pa).unwrap()
    });
    assert_eq!(switch.port_of(mac(1)), None);
    wait_until(
        "a's connection threads exit",
        Duration::from_secs(10),
        || connection_threads() == 4,
    );
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time() - before;
    assert!(
        used < Duration::from_millis(300),
        "idle switch used {used:?} of CPU in 2 s"
    );
    // Frames for the gone guest are dropped, not queued against anyone else.
    let (status, _) = ping(&mut b, "192.168.1.1", 1);
    assert_ne!(status, 0);

    // A new QEMU on the same socket gets the same port.
    let mut a = boot_vhost(&out, "a", 1, &sock_a);
    assert!(switch.vhost_user_connected(pa).unwrap());
    let (status, outp) = ping(&mut a, "192.168.1.2", 2);
    assert_eq!(status, 0, "a again -> b: {outp}");
    assert_eq!(switch.port_of(mac(1)), Some(pa));
    assert_eq!(switch.ports().len(), 3);

    drop((a, b, c));
    switch.remove_vhost_user_port(pa).unwrap();
    assert!(!sock_a.exists());
    drop(switch);
    assert!(!sock_b.exists());
    eprintln!(
        "vhost-user guest test took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn bad_sockets_are_named_in_errors() {
    let rt = runtime();
    let work = tempfile::tempdir().unwrap();
    let switch = rt
        .block_on(Switch::start(SwitchOptions::new(work.path().join("sw"))))
        .unwrap();

    let missing = work.path().join("no/such/dir/sock");
    let e = switch.add_vhost_user_port(&missing).unwrap_err();
    assert!(e.to_string().contains("no/such/dir/sock"), "{e}");

    let file = work.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let e = switch.add_vhost_user_port(&file).unwrap_err();
    assert!(matches!(e, Error::VhostUserSocket { .. }), "{e}");
    assert!(e.to_string().contains("not a socket"), "{e}");

    let long = work.path().join("x".repeat(120));
    let e = switch.add_vhost_user_port(&long).unwrap_err();
    assert!(e.to_string().contains("107"), "{e}");

    let sock = work.path().join("p.sock");
    let p = switch.add_vhost_user_port(&sock).unwrap();
    let e = switch.add_vhost_user_port(&sock).unwrap_err();
    assert!(e.to_string().contains("another process is serving"), "{e}");
    // Failed additions leave no port behind.
    assert_eq!(switch.ports().len(), 1);
    assert_eq!(switch.vhost_user_socket(p).unwrap(), sock);

    assert!(matches!(
        switch.remove_vhost_user_port(PortId(42)),
        Err(Error::NotVhostUserPort(42))
    ));
    switch.remove_vhost_user_port(p).unwrap();
    assert!(!sock.exists());
    assert!(switch.ports().is_empty());

    // A stale socket file (its server gone) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let p = switch.add_vhost_user_port(&sock).unwrap();
    assert!(!switch.vhost_user_connected(p).unwrap());
}

#[test]
fn frames_for_a_vhost_user_port_without_qemu_are_counted_drops() {
    let rt = runtime();
    let work = tempfile::tempdir().unwrap();
    let switch = rt
        .block_on(Switch::start(SwitchOptions::new(work.path().join("sw"))))
        .unwrap();
    let pv = switch
        .add_vhost_user_port(work.path().join("v.sock"))
        .unwrap();
    let dir = switch.dir().to_owned();
    // Blocking, on this thread: the switch runs on the runtime's workers.
    let plug = VdePlug::connect(&dir, "load").unwrap();
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0, 0x12, 9, 9, 0x08, 0x00]);
    frame.resize(60, 0);
    for _ in 0..10 {
        plug.send(&frame).unwrap();
    }
    wait_until("the frames are forwarded", Duration::from_secs(10), || {
        let ports = switch.ports();
        let v = ports.iter().find(|p| p.id == pv).unwrap();
        v.counters.drops == 10
    });
    let ports = switch.ports();
    let v = ports.iter().find(|p| p.id == pv).unwrap();
    assert_eq!(v.counters.tx_frames, 0, "{:?}", v.counters);
    assert!(v.description.contains("v.sock"), "{}", v.description);
}

mod vhost_frontend;

use vm_memory::Bytes as _;

/// A frontend that feeds its TX ring garbage (addresses outside its memory, a loop, a
/// descriptor of 4 GiB, device-writable TX buffers, an impossible avail index) and
/// never refills its RX ring hurts nobody else: two well-behaved frontends on the same
/// switch keep exchanging frames, and the garbage is counted on its own port.
#[test]
fn a_hostile_frontend_only_hurts_itself() {
    use vhost_frontend::{frame, mac, Port, MEM_SIZE, QUEUE, TX_BUFS};
    let rt = runtime();
    let work = tempfile::tempdir().unwrap();
    let switch = rt
        .block_on(Switch::start(SwitchOptions::new(work.path().join("sw"))))
        .unwrap();
    let socks: Vec<_> = (0..3)
        .map(|i| work.path().join(format!("p{i}.sock")))
        .collect();
    let ports: Vec<PortId> = socks
        .iter()
        .map(|s| switch.add_vhost_user_port(s).unwrap())
        .collect();
    // The good pair's drivers negotiate EVENT_IDX as Linux does, the evil one not.
    let mut good_a = Port::connect_event_idx(&socks[0]);
    let mut good_b = Port::connect_event_idx(&socks[1]);
    let mut evil = Port::connect(&socks[2]);
    wait_until("all three connected", Duration::from_secs(10), || {
        ports
            .iter()
            .all(|&p| switch.vhost_user_connected(p).unwrap())
    });
    // Everyone announces itself (the evil port too, so it gets unicast as well).
    for (i, p) in [&mut good_a, &mut good_b, &mut evil]
        .into_iter()
        .enumerate()
    {
        assert_eq!(p.send(&frame([0xff; 6], mac(i)), 1), 1);
    }
    wait_until("all three learned", Duration::from_secs(10), || {
        (0..3).all(|i| switch.port_of(mac(i)).is_some())
    });
    // The announcements reach the good ones (each gets the two others'): take them.
    let mut announced = 0;
    wait_until("the announcements arrive", Duration::from_secs(10), || {
        announced += good_a.receive() + good_b.receive();
        announced == 4
    });

    // The garbage: chains 0..5, then a valid frame in chain 6.
    let mem = evil.mem.clone();
    let out = 1 << 40;
    evil.tx.offer_raw(&mem, 0, (out, 100, 0, 0)); // outside memory
    evil.tx.offer_raw(&mem, 1, (MEM_SIZE - 8, 100, 0, 0)); // runs off the end
    evil.tx.write_desc(&mem, 3, (TX_BUFS, 12, 1, 2)); // 2 -> 3 -> 2 ...
    evil.tx.offer_raw(&mem, 2, (TX_BUFS, 12, 1, 3));
    evil.tx.offer_raw(&mem, 4, (TX_BUFS, u32::MAX, 0, 0)); // 4 GiB
    evil.tx.offer_raw(&mem, 5, (TX_BUFS, 72, 2, 0)); // device-writable
    let good = frame(mac(0), mac(2));
    mem.write_slice(&good, vm_memory::GuestAddress(TX_BUFS + 0x1000))
        .unwrap();
    evil.tx
        .offer_raw(&mem, 6, (TX_BUFS + 0x1000, good.len() as u32, 0, 0));
    let before = switch.ports()[2].counters;
    evil.tx.publish(&mem);
    evil.kick[1].write(1).unwrap();
    wait_until("the garbage is counted", Duration::from_secs(10), || {
        let c = switch.ports()[2].counters;
        c.rx_frames >= before.rx_frames + 6 && c.drops >= before.drops + 5
    });
    // ... and then an avail index no ring can have: ignored.
    mem.store(
        evil.tx.avail_idx.wrapping_add(5 * QUEUE),
        vm_memory::GuestAddress(0x4000 + 2),
        std::sync::atomic::Ordering::Release,
    )
    .unwrap();
    evil.kick[1].write(1).unwrap();

    // The good pair keeps talking while the evil guest never takes a frame: broadcast
    // floods reach its full RX ring and are dropped there.
    // Half broadcasts: 1500 of them, more than its full RX ring (256) and its queue in
    // the switch (512) hold.
    let total = 3000u64;
    let to_b = frame(mac(1), mac(0));
    let bcast = frame([0xff; 6], mac(0));
    let (mut sent, mut got) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < total && Instant::now() < deadline {
        // At most 128 frames in flight: fewer than b's RX ring holds, so any loss would
        // be the switch's doing, not b's being slow (on a 2-CPU host with QEMUs).
        if sent < total && sent - got < 128 {
            let f = if sent % 2 == 0 { &bcast } else { &to_b };
            sent += good_a.send(f, 1) as u64;
        }
        got += good_b.receive() as u64;
        if sent == total || sent - got >= 128 {
            good_b.wait(0, Duration::from_millis(10));
        }
    }
    assert_eq!(
        got, total,
        "the good pair lost frames to a hostile neighbour"
    );
    let evil_counters = switch.ports()[2].counters;
    assert!(evil_counters.drops > 5 + 500, "{evil_counters:?}");
    assert!(switch.vhost_user_connected(ports[0]).unwrap());
    drop((good_a, good_b, evil));
}
