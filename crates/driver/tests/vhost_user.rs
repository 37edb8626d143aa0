//! End-to-end: nodes with `net = "vhost-user"` (guest kit, TCG) on the driver's
//! VLAN switch: two of them talk to each other and to a VDE node on the same
//! VLAN, one reconnects after a crash and after a shutdown, each followed by a
//! new start, and none is ever snapshotted (the log says why).

use std::path::Path;
use std::time::Duration;

use tracing_subscriber::layer::SubscriberExt;
use vmrig_driver::log::TerminalLayer;
use vmrig_driver::snapshot::Store;
use vmrig_driver::{Driver, DriverOptions};
use vmrig_guest::{build, BuildOptions};

const WAIT: Duration = Duration::from_secs(90);

#[test]
fn vhost_user_and_vde_nodes_on_one_vlan() {
    let dir = tempfile::tempdir().unwrap();
    // The whole log (every thread's), to read the snapshot decisions back.
    let log_path = dir.path().join("log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(TerminalLayer::new(
            log_file,
            false,
            tracing::Level::INFO,
        )),
    )
    .unwrap();

    let def = dir.path().join("vmrig.toml");
    std::fs::write(
        &def,
        "net = \"vhost-user\"\n\
         [nodes.a]\nmemory = 256\n\
         [nodes.b]\nmemory = 256\n\
         [nodes.c]\nmemory = 256\nnet = \"vde\"\n",
    )
    .unwrap();
    let build_opts = BuildOptions {
        cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
        ..Default::default()
    };
    let built = build(&def, &dir.path().join("result"), &build_opts).unwrap();
    let mut opts = DriverOptions::new(built.nodes.iter().map(|n| n.start_script.clone()).collect());
    opts.vlans = vec![1];
    opts.out_dir = dir.path().join("out");
    opts.tmp_dir = Some(dir.path().to_owned());
    opts.global_timeout = Duration::from_secs(600);
    // Snapshots on, as `vmrig run` has them: the vhost-user machines boot cold.
    // (c, on VDE, would be saved; that is the snapshot tests' business.)
    let store = Store::new(dir.path().join("snapshots"), 1 << 30);
    opts.snapshots = Some(store.clone());
    opts.no_snapshot = vec!["c".into()];
    let driver = Driver::new(opts).unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|n| driver.machine(n).unwrap());
    assert_eq!(a.config().vhost_user_ports.len(), 1);
    assert_eq!(b.config().vhost_user_ports.len(), 1);
    assert!(c.config().vhost_user_ports.is_empty(), "c stays on VDE");
    driver.start_all().unwrap();

    // vhost-user to vhost-user, and both ways between the two kinds of port.
    a.wait_until_succeeds("ping -c 1 -W 2 b", WAIT).unwrap();
    c.wait_until_succeeds("ping -c 1 -W 2 a", WAIT).unwrap();
    b.succeed(&["ping -c 2 -W 2 c"], None).unwrap();
    let switch = driver.vlans()[0].switch();
    let vhost_ports = [&a, &b].map(|m| m.config().vhost_user_ports[0].port);
    for (m, port) in [&a, &b].into_iter().zip(vhost_ports) {
        assert!(switch.vhost_user_connected(port).unwrap());
        assert_eq!(m.vlan_port(1).unwrap(), port, "link faults reach it");
    }
    let c_port = c.vlan_port(1).unwrap();
    assert!(!vhost_ports.contains(&c_port));

    // A crash and a new start: the new QEMU reconnects to the same port.
    b.crash().unwrap();
    b.start(false).unwrap();
    b.connect().unwrap();
    a.wait_until_succeeds("ping -c 1 -W 2 b", WAIT).unwrap();
    c.succeed(&["ping -c 1 -W 2 b"], None).unwrap();
    assert_eq!(b.vlan_port(1).unwrap(), vhost_ports[1]);
    assert_eq!(switch.ports().len(), 3, "no port was added by the restart");

    // A clean shutdown: the port reads as free once QEMU is gone, and the
    // next start reconnects to it.
    b.shutdown().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while switch.vhost_user_connected(vhost_ports[1]).unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "b's port still connected 10 s after its QEMU exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    b.start(false).unwrap();
    b.connect().unwrap();
    b.wait_until_succeeds("ping -c 1 -W 2 a", WAIT).unwrap();
    assert!(switch.vhost_user_connected(vhost_ports[1]).unwrap());
    assert_eq!(
        switch.ports().len(),
        3,
        "no port was added by the shutdown and start"
    );

    // Faults on a vhost-user port, as on a VDE one.
    a.set_vlan_link(1, false).unwrap();
    c.fail(&["ping -c 1 -W 1 a"], None).unwrap();
    a.set_vlan_link(1, true).unwrap();
    c.wait_until_succeeds("ping -c 1 -W 2 a", WAIT).unwrap();

    // Never saved: not when ready, not for `vmrig resume`.
    assert!(store.list().is_empty(), "{:?}", store.list());
    let forensic = Store::forensic(dir.path().join("forensic"));
    let why = a.preserve(&forensic, Duration::from_secs(30)).unwrap_err();
    assert!(why.contains("vhost-user NICs cannot be saved"), "{why}");
    assert!(a.is_up(), "a refused save leaves the machine running");
    let log = std::fs::read_to_string(&log_path).unwrap();
    for name in ["a", "b"] {
        assert!(
            log.contains(&format!(
                "machine {name} boots cold: vhost-user NICs cannot be saved"
            )),
            "{log}"
        );
    }
    assert!(!log.contains("machine c boots cold"), "{log}");

    // The reason is QEMU's: it refuses to migrate such a machine at all
    // (once the 9p share, which blocks migration too, is unmounted).
    a.succeed(&["umount /tmp/shared"], None).unwrap();
    let refused = a
        .send_monitor_command("migrate \"exec:cat >/dev/null\"")
        .unwrap();
    assert!(
        refused.contains("Migration disabled") && refused.contains("LOG_SHMFD"),
        "{refused}"
    );
}
