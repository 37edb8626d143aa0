//! End-to-end tests against the real `qemu-system-x86_64` on this machine.

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Qemu, LONG};
use serde_json::json;
use vmrig_qmp::{
    Client, ClientOptions, Cont, DeviceAdd, DeviceDel, Error, HumanMonitorCommand, ImageFormat,
    InputEvent, InputSendEvent, KeyValue, Migrate, MigrateIncoming, MigrationStatus, QueryMigrate,
    QueryStatus, QueryVersion, Quit, RunState, Screendump, SendKey, SetLink, Stop, SystemPowerdown,
    SystemReset,
};

fn is_event(name: &'static str) -> impl FnMut(&vmrig_qmp::Event) -> bool {
    move |e| e.event == name
}

#[tokio::test]
async fn negotiates_and_runs_typed_commands() {
    let qemu = Qemu::none();
    let qmp = qemu.connect().await;
    let greeting = qmp.greeting().clone();
    assert!(greeting.version.qemu.major >= 7, "{greeting:?}");
    let version = qmp.execute(QueryVersion).await.unwrap();
    assert_eq!(version, greeting.version);

    qmp.execute(Stop).await.unwrap();
    let stop = qmp.wait_for_event(is_event("STOP"), LONG).await.unwrap();
    assert!(stop.timestamp.seconds > 1_600_000_000, "{stop:?}");
    let status = qmp.execute(QueryStatus).await.unwrap();
    assert_eq!(status.status, RunState::Paused);
    assert!(!status.running);

    qmp.execute(Cont).await.unwrap();
    qmp.wait_for_event(is_event("RESUME"), LONG).await.unwrap();
    let status = qmp.execute(QueryStatus).await.unwrap();
    assert_eq!(status.status, RunState::Running);
    assert!(status.running);

    let out = qmp
        .execute(HumanMonitorCommand::new("info status"))
        .await
        .unwrap();
    assert!(out.contains("VM status: running"), "{out:?}");
    let raw = qmp.execute_raw("query-status", json!(null)).await.unwrap();
    assert_eq!(raw["status"], "running");
}

#[tokio::test]
async fn errors_carry_qemus_class_and_description() {
    let qemu = Qemu::none();
    let qmp = qemu.connect().await;
    let err = qmp
        .execute_raw("no-such-command", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.qmp_class(), Some("CommandNotFound"), "{err}");
    assert!(err.to_string().contains("no-such-command"), "{err}");

    let err = qmp
        .execute(SetLink {
            name: "nosuchnic".into(),
            up: true,
        })
        .await
        .unwrap_err();
    let Error::Command {
        command,
        class,
        desc,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(command, "set_link");
    assert_eq!(class, "DeviceNotFound");
    assert!(desc.contains("nosuchnic"), "{desc}");

    // A return value of the wrong type is a typed error, and the client goes on.
    #[derive(serde::Serialize)]
    struct StatusAsVersion;
    impl vmrig_qmp::Command for StatusAsVersion {
        type Output = vmrig_qmp::VersionInfo;
        fn name(&self) -> &str {
            "query-status"
        }
    }
    let err = qmp.execute(StatusAsVersion).await.unwrap_err();
    assert!(matches!(err, Error::DecodeReturn { .. }), "{err}");
    qmp.execute(QueryStatus).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_from_many_tasks_get_their_own_answers() {
    let qemu = Qemu::none();
    let qmp = qemu.connect().await;
    let expected = qmp.execute(QueryVersion).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let qmp = qmp.clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                // Three commands with three different return shapes: a mix-up of ids
                // shows up as a decode error or a wrong value.
                match (t + i) % 3 {
                    0 => assert_eq!(qmp.execute(QueryVersion).await.unwrap(), expected),
                    1 => {
                        qmp.execute(QueryStatus).await.unwrap();
                    }
                    _ => {
                        let out = qmp
                            .execute(HumanMonitorCommand::new("info version"))
                            .await
                            .unwrap();
                        let v = &expected.qemu;
                        let want = format!("{}.{}.{}", v.major, v.minor, v.micro);
                        assert!(out.starts_with(&want), "{out:?} vs {want}");
                    }
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(LONG, task).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn screendump_writes_real_ppm_and_png_files() {
    let qemu = Qemu::pc(true);
    let qmp = qemu.connect().await;
    let ppm = qemu.dir.path().join("screen.ppm");
    let png = qemu.dir.path().join("screen.png");
    qmp.execute(Screendump::new(ppm.to_str().unwrap(), ImageFormat::Ppm))
        .await
        .unwrap();
    qmp.execute(Screendump::new(png.to_str().unwrap(), ImageFormat::Png))
        .await
        .unwrap();

    // PPM: "P6\n<w> <h>\n255\n" then w*h*3 bytes.
    let data = std::fs::read(&ppm).unwrap();
    let header_end = data
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .nth(2)
        .map(|(i, _)| i + 1)
        .unwrap();
    let header = std::str::from_utf8(&data[..header_end]).unwrap();
    let fields: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(fields[0], "P6", "{header:?}");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert!(w >= 320 && h >= 200, "{w}x{h}");
    assert_eq!(fields[3], "255");
    assert_eq!(data.len(), header_end + w * h * 3);

    // PNG: signature, then IHDR with the same size.
    let data = std::fs::read(&png).unwrap();
    assert_eq!(&data[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&data[12..16], b"IHDR");
    let pw = u32::from_be_bytes(data[16..20].try_into().unwrap()) as usize;
    let ph = u32::from_be_bytes(data[20..24].try_into().unwrap()) as usize;
    assert_eq!((pw, ph), (w, h));
    assert_eq!(&data[data.len() - 8..data.len() - 4], b"IEND");
}

#[tokio::test]
async fn send_key_and_input_events_are_accepted_and_validated() {
    let qemu = Qemu::pc(true);
    let qmp = qemu.connect().await;
    let mut combo = SendKey::combo("ctrl-alt-delete");
    combo.hold_time = Some(20);
    qmp.execute(combo).await.unwrap();
    qmp.execute(SendKey {
        keys: vec![KeyValue::Number(0x1e)],
        hold_time: None,
    })
    .await
    .unwrap();
    qmp.execute(InputSendEvent {
        device: None,
        head: None,
        events: vec![
            InputEvent::Key {
                key: KeyValue::qcode("a"),
                down: true,
            },
            InputEvent::Key {
                key: KeyValue::qcode("a"),
                down: false,
            },
        ],
    })
    .await
    .unwrap();
    // QEMU checks the key names, so a typo is QEMU's error, not a silent no-op.
    let err = qmp
        .execute(SendKey::combo("ctrl-notakey"))
        .await
        .unwrap_err();
    assert_eq!(err.qmp_class(), Some("GenericError"), "{err}");
}

#[tokio::test]
async fn set_link_targets_nics_and_netdevs_by_id() {
    // QEMU 7.2 shows link state only to the guest (`info network` omits it), so
    // this checks that the names reach QEMU's lookup: known ids work both ways,
    // an unknown one is QEMU's DeviceNotFound.
    let qemu = Qemu::pc(false);
    let qmp = qemu.connect().await;
    for name in ["nic0", "net0"] {
        for up in [false, true] {
            qmp.execute(SetLink {
                name: name.into(),
                up,
            })
            .await
            .unwrap();
        }
    }
    let err = qmp
        .execute(SetLink {
            name: "nic1".into(),
            up: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.qmp_class(), Some("DeviceNotFound"), "{err}");
}

#[tokio::test]
async fn reset_and_powerdown_emit_their_events() {
    let qemu = Qemu::pc(false);
    let qmp = qemu.connect().await;
    qmp.execute(SystemReset).await.unwrap();
    let reset = qmp.wait_for_event(is_event("RESET"), LONG).await.unwrap();
    assert_eq!(reset.data["reason"], "host-qmp-system-reset");
    qmp.execute(SystemPowerdown).await.unwrap();
    qmp.wait_for_event(is_event("POWERDOWN"), LONG)
        .await
        .unwrap();
}

#[tokio::test]
async fn device_add_and_del() {
    let qemu = Qemu::pc(false);
    let qmp = qemu.connect().await;
    qmp.execute(DeviceAdd::new("e1000", "nic9").property("netdev", "net0"))
        .await
        .unwrap_err(); // net0 is taken by nic0: QEMU says so
    qmp.execute_raw("netdev_add", json!({"type": "user", "id": "net9"}))
        .await
        .unwrap();
    qmp.execute(DeviceAdd::new("e1000", "nic9").property("netdev", "net9"))
        .await
        .unwrap();
    let net = qmp
        .execute(HumanMonitorCommand::new("info network"))
        .await
        .unwrap();
    assert!(net.contains("nic9"), "{net}");
    // Unplugging a PCI device needs the guest's help; QEMU accepts the request.
    qmp.execute(DeviceDel { id: "nic9".into() }).await.unwrap();
    let err = qmp
        .execute(DeviceDel {
            id: "nosuch".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.qmp_class(), Some("DeviceNotFound"), "{err}");
}

#[tokio::test]
async fn migrate_to_a_file_and_back_in() {
    let qemu = Qemu::pc(false);
    let qmp = qemu.connect().await;
    let file = qemu.dir.path().join("state");
    qmp.execute(Migrate::new(format!("exec:cat > '{}'", file.display())))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let info = qmp.execute(QueryMigrate).await.unwrap();
        match info.status {
            Some(MigrationStatus::Completed) => break,
            Some(MigrationStatus::Failed) => panic!("migration failed: {info:?}"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "migration never completed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(std::fs::metadata(&file).unwrap().len() > 1024);

    // Same machine, waiting for an incoming migration.
    let target = Qemu::start(&[common::PC, &["-incoming", "defer"]].concat());
    let qmp2 = target.connect().await;
    assert_eq!(
        qmp2.execute(QueryStatus).await.unwrap().status,
        RunState::Inmigrate
    );
    qmp2.execute(MigrateIncoming {
        uri: format!("exec:cat '{}'", file.display()),
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let status = qmp2.execute(QueryStatus).await.unwrap().status;
        if status != RunState::Inmigrate {
            // The source was paused (-S), so the restored machine is too.
            assert!(
                matches!(status, RunState::Paused | RunState::Prelaunch),
                "{status:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "incoming migration never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        qmp2.execute(QueryMigrate).await.unwrap().status,
        Some(MigrationStatus::Completed)
    );
}

#[tokio::test]
async fn quit_then_every_call_fails_at_once() {
    let mut qemu = Qemu::none();
    let qmp = qemu.connect().await;
    qmp.execute(Quit).await.unwrap();
    // The SHUTDOWN event is still there to be waited for after the socket closed.
    let shutdown = qmp
        .wait_for_event(is_event("SHUTDOWN"), LONG)
        .await
        .unwrap();
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");
    assert!(qemu.wait_exit(LONG), "qemu did not exit after quit");
    let err = tokio::time::timeout(LONG, async {
        loop {
            match qmp.execute(QueryStatus).await {
                Err(e) => break e,
                // The close may not have been seen yet; it will be.
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await
    .unwrap();
    assert!(err.is_disconnected(), "{err}");
    assert!(err.to_string().contains("query-status"), "{err}");
    assert!(qmp.closed_reason().is_some());
    let err = qmp.wait_for_event(|_| true, LONG).await.unwrap_err();
    assert!(err.is_disconnected(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_killed_mid_command_fails_every_pending_call() {
    let qemu = Qemu::none();
    let qmp = qemu.connect().await;
    // A frozen QEMU: commands go out and stay unanswered.
    qemu.signal("STOP");
    let mut pending = Vec::new();
    for _ in 0..8 {
        let qmp = qmp.clone();
        pending.push(tokio::spawn(async move { qmp.execute(QueryStatus).await }));
    }
    let waiter = {
        let qmp = qmp.clone();
        tokio::spawn(async move {
            qmp.wait_for_event(is_event("NEVER"), Duration::from_secs(600))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        pending.iter().all(|t| !t.is_finished()),
        "a frozen QEMU answered"
    );
    qemu.signal("KILL");
    for task in pending {
        let err = tokio::time::timeout(LONG, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap_err();
        assert!(err.is_disconnected(), "{err}");
        assert!(err.to_string().contains("closed"), "{err}");
    }
    let err = tokio::time::timeout(LONG, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    let err = qmp.execute(QueryStatus).await.unwrap_err();
    assert!(err.is_disconnected(), "{err}");
}

#[tokio::test]
async fn command_timeout_bounds_a_frozen_qemu() {
    let qemu = Qemu::none();
    let qmp = qemu
        .connect_with(ClientOptions::default().command_timeout(Some(Duration::from_millis(300))))
        .await;
    qemu.signal("STOP");
    let err = qmp.execute(QueryStatus).await.unwrap_err();
    assert!(matches!(err, Error::CommandTimeout { .. }), "{err}");
    qemu.signal("CONT");
    // The late answer to the timed-out command is dropped; the next one is matched.
    let status = qmp.execute_timeout(QueryStatus, LONG).await.unwrap();
    assert!(status.running || status.status == RunState::Prelaunch);
}

#[tokio::test]
async fn event_queue_is_bounded_and_counts_drops() {
    let qemu = Qemu::none();
    let qmp = qemu
        .connect_with(ClientOptions::default().event_capacity(4))
        .await;
    for _ in 0..5 {
        qmp.execute(Stop).await.unwrap();
        qmp.execute(Cont).await.unwrap();
    }
    // QEMU sends STOP/RESUME before the command's return, so all 10 are in.
    assert_eq!(qmp.dropped_events(), 6);
    let events: Vec<String> = qmp.take_events().into_iter().map(|e| e.event).collect();
    assert_eq!(events, ["STOP", "RESUME", "STOP", "RESUME"]);
    let err = qmp
        .next_event(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::EventTimeout { .. }), "{err}");
}

#[tokio::test]
async fn connect_waits_for_the_socket_and_times_out_when_it_never_comes() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect(dir.path().join("nothing"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConnectTimeout { .. }), "{err}");
    assert!(err.to_string().contains("nothing"), "{err}");

    // Connecting before QEMU has created its socket succeeds once it has.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp");
    let connecting = tokio::spawn({
        let path = path.clone();
        async move { Client::connect(&path, LONG).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-nodefaults", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", path.display()))
        .process_group(0)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let qmp = connecting.await.unwrap().unwrap();
    qmp.execute(QueryStatus).await.unwrap();
}
