//! Real QEMU guests (from the guest kit) on the switch: ping, 10 MiB over TCP, and every
//! link control observed from inside the guests.
//!
//! Three busybox guests `a`, `b`, `c` (192.168.1.1-3, MACs 52:54:00:12:01:0i) boot in
//! parallel under TCG with their start scripts' unmodified `-netdev vde,sock=...`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmrig_guest::harness::{Guest, StartOptions};
use vmrig_vde_net::{pcap, PortId, Switch, SwitchOptions};

const CMD: Duration = Duration::from_secs(60);

fn boot_all(out: &Path, switch_dir: &Path) -> Vec<Guest> {
    let handles: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let script = out.join("bin").join(format!("run-{name}-vm"));
            let opts = StartOptions {
                vde_sockets: vec![(1, switch_dir.to_owned())],
                ..StartOptions::default()
            };
            std::thread::spawn(move || {
                let mut g = Guest::start(&script, &opts).expect("start guest");
                g.wait_for_backdoor(Duration::from_secs(180))
                    .expect("backdoor");
                g
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn mac(i: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x12, 0x01, i]
}

/// `ping` from a guest; returns (status, output).
fn ping(g: &mut Guest, host: &str, count: u32) -> (i32, String) {
    g.run(&format!("ping -c {count} -W 2 {host}"), CMD).unwrap()
}

/// Frames received, from busybox ping's summary `N packets transmitted, M packets received`.
fn received(out: &str) -> u32 {
    out.lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ping summary in {out:?}"))
}

#[test]
fn guests_talk_through_the_switch_and_feel_its_faults() {
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let def = work.path().join("vmrig.toml");
    std::fs::write(&def, "[nodes.a]\n[nodes.b]\n[nodes.c]\n").unwrap();
    let out = work.path().join("result");
    vmrig_guest::build(&def, &out, &vmrig_guest::BuildOptions::default()).expect("guest build");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let switch = Arc::new(
        runtime
            .block_on(Switch::start(SwitchOptions::new(
                work.path().join("vde1.ctl"),
            )))
            .unwrap(),
    );
    let mut guests = boot_all(&out, switch.dir());
    eprintln!("booted 3 guests in {:.1} s", t0.elapsed().as_secs_f64());
    let [a, b, c] = &mut guests[..] else {
        unreachable!()
    };
    assert_eq!(switch.ports().len(), 3);
    assert!(switch
        .ports()
        .iter()
        .all(|p| p.description.contains("QEMU")));

    // Two guests ping each other; the capture sees the echo requests.
    let pcap_file = work.path().join("vlan1.pcap");
    switch.start_capture(&pcap_file).unwrap();
    let (status, outp) = ping(a, "b", 3);
    assert_eq!(status, 0, "{outp}");
    let (status, outp) = ping(b, "192.168.1.1", 2);
    assert_eq!(status, 0, "{outp}");
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
    let pa = switch.port_of(mac(1)).expect("a learned");
    let pb = switch.port_of(mac(2)).expect("b learned");
    let pc_ = {
        ping(c, "a", 1);
        switch.port_of(mac(3)).expect("c learned")
    };

    // 10 MiB over TCP, checked end to end.
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
    eprintln!("10 MiB over TCP in {:.1} s", t.elapsed().as_secs_f64());

    // Port link down: a cannot reach b, then can again.
    switch.set_port_link(pb, false).unwrap();
    let (status, _) = ping(a, "b", 2);
    assert_ne!(status, 0, "ping crossed a downed link");
    switch.set_port_link(pb, true).unwrap();
    let (status, outp) = ping(a, "b", 1);
    assert_eq!(status, 0, "{outp}");

    // VLAN down: nobody talks.
    switch.set_vlan_link(false).unwrap();
    assert_ne!(ping(c, "a", 2).0, 0);
    switch.set_vlan_link(true).unwrap();
    assert_eq!(ping(c, "a", 1).0, 0);

    // Loss: 30% on b's port each way, so about half the pings fail. Bounds chosen
    // so that a wrong result has odds below one in a million.
    switch.set_port_loss(pb, 30.0).unwrap();
    let (_, outp) = ping(a, "b", 30);
    switch.set_port_loss(pb, 0.0).unwrap();
    let got = received(&outp);
    assert!(
        got > 0 && got < 30,
        "{got}/30 pings answered at 30% loss: {outp}"
    );

    // Delay: 150 ms on b's port each way shows up in the round trip (lower bound only).
    switch
        .set_port_delay(pb, Duration::from_millis(150), Duration::from_millis(20))
        .unwrap();
    let t = Instant::now();
    let (status, outp) = ping(a, "b", 1);
    assert_eq!(status, 0, "{outp}");
    assert!(t.elapsed() >= Duration::from_millis(300), "{outp}");
    switch
        .set_port_delay(pb, Duration::ZERO, Duration::ZERO)
        .unwrap();

    // Partition {a, b} | {c}: a reaches b; c reaches neither; healed, c reaches a.
    switch.partition(&[vec![pa, pb], vec![pc_]]);
    assert_eq!(ping(a, "b", 1).0, 0);
    assert_ne!(ping(c, "a", 2).0, 0);
    assert_ne!(ping(c, "b", 2).0, 0);
    switch.heal();
    assert_eq!(ping(c, "a", 1).0, 0);

    let counters = switch.ports();
    assert!(counters
        .iter()
        .all(|p| p.counters.rx_frames > 0 && p.counters.drops > 0));
    let _: PortId = pa;
    drop(guests);
    eprintln!("guest test took {:.1} s", t0.elapsed().as_secs_f64());
}
