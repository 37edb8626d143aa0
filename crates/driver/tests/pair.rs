//! End-to-end: the driver runs examples/pair (guest kit, TCG) on its own
//! in-process switch, as a NixOS test script would use it.

use std::path::Path;
use std::time::Duration;

use vmrig_driver::{Driver, DriverOptions};
use vmrig_guest::{build, BuildOptions};

#[test]
fn pair_through_the_driver() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let result = tempfile::tempdir().unwrap();
    let build_opts = BuildOptions {
        cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
        ..Default::default()
    };
    let built = build(
        &repo.join("examples/pair/vmrig.toml"),
        result.path(),
        &build_opts,
    )
    .unwrap();
    let mut opts = DriverOptions::new(built.nodes.iter().map(|n| n.start_script.clone()).collect());
    opts.vlans = vec![1];
    opts.out_dir = result.path().join("out");
    opts.global_timeout = Duration::from_secs(600);
    let mut driver = Driver::new(opts).unwrap();
    let run_dir = driver.run_dir().to_owned();
    driver.start_all().unwrap();
    let client = driver.machine("client").unwrap().clone();
    let server = driver.machine("server").unwrap().clone();

    // The execute family, with NixOS's statuses.
    assert_eq!(
        server.execute("echo hi; exit 3", true, true, None).unwrap(),
        (3, "hi\n".into())
    );
    assert_eq!(server.execute("false", false, true, None).unwrap().0, -1);
    assert_eq!(
        server.execute("true", true, false, None).unwrap(),
        (-2, String::new())
    );
    assert_eq!(
        server
            .execute("sleep 5", true, true, Some(Duration::from_secs(1)))
            .unwrap()
            .0,
        124
    );
    assert_eq!(
        server.succeed(&["echo a", "echo b"], None).unwrap(),
        "a\nb\n"
    );
    let e = server.succeed(&["echo oops; false"], None).unwrap_err();
    assert!(
        e.is_assertion() && e.to_string().contains("exit code 1"),
        "{e}"
    );
    assert!(server.fail(&["false"], None).is_ok());
    assert!(server.fail(&["true"], None).unwrap_err().is_assertion());
    assert!(
        server.is_up() && !client.is_up(),
        "client is started, not connected yet"
    );
    client.connect().unwrap();
    assert!(client.is_up());

    // Waits, across the VLAN switch.
    server
        .wait_for_open_port(8080, "localhost", Duration::from_secs(60))
        .unwrap();
    client
        .wait_until_succeeds("ping -c 1 -W 2 server", Duration::from_secs(60))
        .unwrap();
    server
        .wait_for_file("/etc/hostname", Duration::from_secs(10))
        .unwrap();
    let e = server
        .wait_for_file("/nonexistent", Duration::from_secs(2))
        .unwrap_err();
    assert!(
        e.is_assertion() && e.to_string().contains("action timed out after 2."),
        "{e}"
    );

    // block()/unblock(): the first VLAN NIC's cable.
    client.block_network().unwrap();
    client
        .wait_until_fails("ping -c 1 -W 1 server", Duration::from_secs(30))
        .unwrap();
    client.unblock_network().unwrap();
    client
        .wait_until_succeeds("ping -c 1 -W 2 server", Duration::from_secs(60))
        .unwrap();

    // Console, monitor, screenshot, files.
    server
        .succeed(&["echo marker-from-the-guest > /dev/ttyS0"], None)
        .unwrap();
    let found = server
        .wait_for_console_text("marker-from-the-[a-z]+", Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(found, "marker-from-the-guest");
    let e = server
        .wait_for_console_text("marker-from-the-guest", Some(Duration::from_secs(2)))
        .unwrap_err();
    assert!(
        e.is_assertion() && e.to_string().contains("action timed out"),
        "consumed text does not match again: {e}"
    );
    assert!(server.console_log().contains("marker-from-the-guest"));
    assert!(server
        .send_monitor_command("info status")
        .unwrap()
        .contains("running"));
    let png = server.screenshot("screen").unwrap();
    assert_eq!(png, result.path().join("out/screen.png"));
    assert!(std::fs::read(&png)
        .unwrap()
        .starts_with(b"\x89PNG\r\n\x1a\n"));
    let host_file = result.path().join("hello.txt");
    std::fs::write(&host_file, "from the host\n").unwrap();
    server
        .copy_from_host(&host_file, "/root/in/hello.txt")
        .unwrap();
    assert_eq!(
        server.succeed(&["cat /root/in/hello.txt"], None).unwrap(),
        "from the host\n"
    );
    let back = server.copy_from_machine("/etc/hostname", "copied").unwrap();
    assert_eq!(back, result.path().join("out/copied/hostname"));
    assert_eq!(std::fs::read_to_string(back).unwrap(), "server\n");

    // Host port forwarding to the guest's service, over the user-mode NIC.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    server.forward_port(port, 8080).unwrap();
    let mut reply = String::new();
    for _ in 0..50 {
        use std::io::Read;
        reply.clear();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.read_to_string(&mut reply);
            if !reply.is_empty() {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(reply, "server\n");

    // Virtual consoles, unix sockets, QMP events.
    server
        .succeed(&["echo tty-text-check > /dev/tty2"], None)
        .unwrap();
    server
        .wait_until_tty_matches("2", "tty-text-check", Duration::from_secs(30))
        .unwrap();
    assert!(server.get_tty_text("2").unwrap().contains("tty-text-check"));
    server
        .succeed(&["(nc -lkU /tmp/test.sock >/dev/null 2>&1 &)"], None)
        .unwrap();
    server
        .wait_for_open_unix_socket("/tmp/test.sock", false, Duration::from_secs(30))
        .unwrap();
    server.send_monitor_command("stop").unwrap();
    let stop = server
        .wait_for_qmp_event(|e| e.event == "STOP", Duration::from_secs(30))
        .unwrap();
    assert_eq!(stop.event, "STOP");
    server.send_monitor_command("cont").unwrap();

    // Link faults at the switch (what NixOS lacks): this machine's port, then a partition.
    let vlan1 = &driver.vlans()[0];
    assert!(vlan1.switch().is_hub(), "VLANs are hubs, as NixOS's");
    let pcap = vlan1.start_capture(None).unwrap();
    client.set_loss(1, 100.0).unwrap();
    client.fail(&["ping -c 2 -W 1 server"], None).unwrap();
    client.set_loss(1, 0.0).unwrap();
    client.succeed(&["ping -c 1 -W 5 server"], None).unwrap();
    client.set_vlan_link(1, false).unwrap();
    client.fail(&["ping -c 1 -W 1 server"], None).unwrap();
    client.set_vlan_link(1, true).unwrap();
    vlan1.partition(&[vec![&client], vec![&server]]).unwrap();
    client.fail(&["ping -c 1 -W 1 server"], None).unwrap();
    vlan1.heal();
    client.succeed(&["ping -c 1 -W 5 server"], None).unwrap();
    assert_eq!(vlan1.stop_capture().unwrap(), Some(pcap.clone()));
    let bytes = std::fs::read(&pcap).unwrap();
    assert_eq!(&bytes[..4], &0xa1b2c3d4u32.to_le_bytes(), "a pcap file");
    assert!(bytes.len() > 24 + 16 + 42, "frames were captured");
    assert_eq!(pcap, result.path().join("out/vlan1.pcap"));

    // Polling conditions run before actions and fail the test when they stop holding.
    server.succeed(&["touch /tmp/healthy"], None).unwrap();
    {
        let probe = server.clone();
        let guard = driver.polling_condition(vmrig_driver::PollingCondition::new(
            "server is healthy",
            Duration::ZERO,
            Box::new(move || Ok(probe.execute("test -e /tmp/healthy", true, true, None)?.0 == 0)),
        ));
        client.succeed(&["true"], None).unwrap();
        server.succeed(&["rm /tmp/healthy"], None).unwrap();
        let e = client.succeed(&["true"], None).unwrap_err();
        assert!(
            e.to_string()
                .contains("Polling condition failed: server is healthy"),
            "{e}"
        );
        drop(guard);
    }
    client.succeed(&["true"], None).unwrap();

    // Copies through the shell, for guests without the shared directory.
    let big = result.path().join("big.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&big, &data).unwrap();
    server
        .copy_from_host_via_shell(&big, "/root/via-shell/big.bin")
        .unwrap();
    assert_eq!(
        server
            .succeed(&["cat /root/via-shell/big.bin | wc -c"], None)
            .unwrap()
            .trim(),
        "200000"
    );
    assert!(
        driver.create_machine(&built.nodes[0].start_script).is_err(),
        "names are unique"
    );

    // Guest time, closed ports, the serial console's input, the interactive helpers.
    server.sleep(Duration::from_millis(500)).unwrap();
    server
        .succeed(&["(nc -l -p 9099 >/dev/null 2>&1 &)"], None)
        .unwrap();
    server
        .wait_for_open_port(9099, "localhost", Duration::from_secs(30))
        .unwrap();
    server
        .succeed(&["nc -z localhost 9099 || true"], None)
        .unwrap();
    server
        .wait_for_closed_port(9099, "localhost", Duration::from_secs(30))
        .unwrap();
    server
        .succeed(
            &["stty -F /dev/ttyS0 -echo; (head -n 2 /dev/ttyS0 > /tmp/from-console &)"],
            None,
        )
        .unwrap();
    server
        .send_console("typed on the serial console\n")
        .unwrap();
    server
        .console_interact(&mut std::io::Cursor::new("second line\n"))
        .unwrap();
    server
        .wait_until_succeeds(
            "test $(wc -l < /tmp/from-console) = 2",
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(
        server.succeed(&["cat /tmp/from-console"], None).unwrap(),
        "typed on the serial console\nsecond line\n"
    );
    let mut transcript = Vec::new();
    server
        .shell_interact(
            &mut std::io::Cursor::new("echo one\nexit 3\n"),
            &mut transcript,
        )
        .unwrap();
    let transcript = String::from_utf8(transcript).unwrap();
    assert!(transcript.contains("server$ one\n"), "{transcript}");
    assert!(transcript.contains("(exit status 3)"), "{transcript}");
    let vm_copy = server.copy_from_vm("/etc/hosts", "").unwrap();
    assert!(std::fs::read_to_string(vm_copy)
        .unwrap()
        .contains("192.168.1.1 client"));

    // Power: crash(), a start that allows reboots, reboot(), shutdown().
    client.crash().unwrap();
    assert!(!client.is_up());
    client.start(true).unwrap();
    client.succeed(&["touch /tmp/before-reboot"], None).unwrap();
    client.reboot().unwrap();
    assert!(!client.is_connected());
    client.fail(&["test -e /tmp/before-reboot"], None).unwrap();
    assert_eq!(client.succeed(&["hostname"], None).unwrap(), "client\n");
    client.crash().unwrap();
    server.shutdown().unwrap();
    assert!(!server.is_booted());
    server.start(false).unwrap();
    let pid = server.pid().unwrap();
    server.release();
    assert!(!server.is_booted() && server.pid().is_none());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}/cmdline")).exists() {
        assert!(std::time::Instant::now() < deadline, "release() stops QEMU");
        std::thread::sleep(Duration::from_millis(100));
    }
    driver.cleanup();
    assert!(!run_dir.exists(), "the run directory is removed");
}
