//! The systemd Machine methods against a real systemd: one debian guest
//! (tests/data/systemd.toml) with a running, a failing, an idle and a gated
//! service, and a lingering user with a user unit. Checks NixOS's results and error
//! messages, including for failed, inactive and unknown units.
//!
//! The guest image comes from the guest kit's cache (`VMRIG_CACHE_DIR` or the
//! default cache directory); on first use the kit builds it (root, network).

use std::path::Path;
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt;
use vmrig_driver::log::TerminalLayer;
use vmrig_driver::{Driver, DriverOptions, Error, Machine};
use vmrig_guest::{build, BuildOptions};

/// Bound on every wait: far above what any step needs under TCG.
const WAIT: Duration = Duration::from_secs(180);

/// The assertion message of an error, without the machine and console tail.
fn assertion(e: Error) -> String {
    match e {
        Error::Assertion { message, .. } => message,
        other => panic!("expected an assertion failure, got: {other}"),
    }
}

/// A system unit's property (get_unit_property without `user`).
fn property(m: &Machine, unit: &str, name: &str) -> String {
    m.get_unit_property(unit, name, None).unwrap()
}

/// Runs wait_for_unit, which must fail within `within` (well before its own
/// 900 s timeout); returns the assertion message.
fn wait_fails(m: &Machine, unit: &str, user: Option<&str>, within: Duration) -> String {
    let t = Instant::now();
    let e = m
        .wait_for_unit(unit, user, Duration::from_secs(900))
        .unwrap_err();
    assert!(t.elapsed() < within, "{unit}: {:?}", t.elapsed());
    assertion(e)
}

#[test]
#[ignore = "slow: boots a debian guest (and builds its image on first use); ./test.sh runs it"]
fn systemd_methods_on_a_debian_guest() {
    let def = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/systemd.toml");
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let built = build(&def, &dir.path().join("result"), &BuildOptions::default()).unwrap();
    let build_time = started.elapsed();
    let mut opts = DriverOptions::new(built.nodes.iter().map(|n| n.start_script.clone()).collect());
    opts.out_dir = dir.path().join("out");
    opts.global_timeout = Duration::from_secs(900);
    let driver = Driver::new(opts).unwrap();
    let m = driver.machine("machine").unwrap();
    let booting = Instant::now();
    m.connect().unwrap();
    let boot_time = booting.elapsed();

    // This thread's log sections, in a file read at the end.
    let log_path = dir.path().join("log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let _log =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(TerminalLayer::new(
            log_file,
            false,
            tracing::Level::INFO,
        )));
    let methods = Instant::now();
    system_units(&m);
    failed_inactive_and_unknown_units(&m);
    pending_jobs(&m);
    start_and_stop_jobs(&m);
    user_units(&m);
    let methods = methods.elapsed();
    second_boot(&m);

    // The log sections NixOS's driver writes for these methods.
    let log = std::fs::read_to_string(&log_path).unwrap();
    for line in [
        "machine: waiting for unit ticker.service",
        "(finished: machine: waiting for unit ticker.service, in ",
        "machine: waiting for unit default.target with user alice",
        "machine: checking if unit 'ticker.service' has reached state 'active'",
    ] {
        assert!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    eprintln!(
        "systemd test: build {:.1} s, boot to backdoor {:.1} s, methods {:.1} s",
        build_time.as_secs_f64(),
        boot_time.as_secs_f64(),
        methods.as_secs_f64()
    );
}

/// wait_for_unit, get_unit_info, get_unit_property, require_unit_state and
/// systemctl on units that are up.
fn system_units(m: &Machine) {
    m.wait_for_unit("multi-user.target", None, WAIT).unwrap();
    m.wait_for_unit("ticker.service", None, WAIT).unwrap();
    // systemctl completes a bare name to a service, as on NixOS.
    m.wait_for_unit("ticker", None, WAIT).unwrap();

    let info = m.get_unit_info("ticker.service", None).unwrap();
    assert_eq!(info["Id"], "ticker.service");
    assert_eq!(info["Description"], "vmrig service ticker");
    assert_eq!(
        (info["LoadState"].as_str(), info["ActiveState"].as_str()),
        ("loaded", "active")
    );
    assert_eq!(info["SubState"], "running");
    assert_ne!(info["MainPID"], "0");
    // Values keep their own `=` signs.
    assert!(
        info["ExecStart"].contains("path=/etc/vmrig/services/ticker"),
        "{}",
        info["ExecStart"]
    );
    assert!(info.len() > 100, "every property: {info:?}");

    assert_eq!(property(m, "ticker.service", "SubState"), "running");
    assert_eq!(property(m, "ticker.service", "MainPID"), info["MainPID"]);
    // A property systemd does not know: systemctl prints nothing.
    let e = m
        .get_unit_property("ticker.service", "NoSuchProperty", None)
        .unwrap_err();
    assert!(
        assertion(e).contains("produced invalid output"),
        "an unknown property is invalid output"
    );

    m.require_unit_state("ticker.service", "active").unwrap();
    assert_eq!(
        assertion(
            m.require_unit_state("ticker.service", "inactive")
                .unwrap_err()
        ),
        "Expected unit 'ticker.service' to to be in state 'inactive' but it is in state 'active'"
    );

    assert_eq!(
        m.systemctl("is-active ticker.service", None).unwrap(),
        (0, "active\n".into())
    );
    assert_eq!(
        m.systemctl("is-active idle.service", None).unwrap(),
        (3, "inactive\n".into())
    );
    // Quotes reach systemctl as the shell gives them.
    assert_eq!(
        m.systemctl("show -P Description 'ticker.service'", None)
            .unwrap(),
        (0, "vmrig service ticker\n".into())
    );
}

/// NixOS's errors: a failed unit ends wait_for_unit at once; an inactive
/// unit with no jobs pending, and an unknown unit (which systemd reports as
/// inactive), end it as soon as the job queue is empty.
fn failed_inactive_and_unknown_units(m: &Machine) {
    assert_eq!(
        wait_fails(m, "broken.service", None, Duration::from_secs(30)),
        "unit \"broken.service\" reached state \"failed\""
    );
    assert_eq!(property(m, "broken.service", "Result"), "exit-code");
    assert_eq!(property(m, "broken.service", "ExecMainStatus"), "3");
    m.require_unit_state("broken.service", "failed").unwrap();

    // The boot's last jobs may still be queued: 60 s for them to end.
    assert_eq!(
        wait_fails(m, "idle.service", None, Duration::from_secs(60)),
        "unit \"idle.service\" is inactive and there are no pending jobs"
    );
    assert_eq!(
        wait_fails(m, "no-such-unit.service", None, Duration::from_secs(30)),
        "unit \"no-such-unit.service\" is inactive and there are no pending jobs"
    );
    let info = m.get_unit_info("no-such-unit.service", None).unwrap();
    assert_eq!(
        (info["LoadState"].as_str(), info["ActiveState"].as_str()),
        ("not-found", "inactive")
    );
    assert_eq!(
        property(m, "no-such-unit.service", "ActiveState"),
        "inactive"
    );
    assert_eq!(
        assertion(
            m.require_unit_state("no-such-unit.service", "active")
                .unwrap_err()
        ),
        "Expected unit 'no-such-unit.service' to to be in state 'active' but it is in state 'inactive'"
    );
}

/// An inactive unit whose start job is still queued (behind `gate`, which
/// runs until the test opens it) is waited for, not failed; a wait that runs out of time fails with NixOS's retry message.
fn pending_jobs(m: &Machine) {
    assert_eq!(
        m.systemctl("start --no-block gate.service waiter.service", None)
            .unwrap()
            .0,
        0
    );
    assert_eq!(property(m, "waiter.service", "ActiveState"), "inactive");
    let (_, jobs) = m.systemctl("list-jobs --full 2>&1", None).unwrap();
    assert!(jobs.contains("waiter.service"), "{jobs}");

    let e = m
        .wait_for_unit("waiter.service", None, Duration::from_secs(1))
        .unwrap_err();
    let message = assertion(e);
    assert!(
        message.starts_with("action timed out after ") && message.ends_with(" seconds (timeout=1)"),
        "{message}"
    );

    // Still queued behind gate: the wait goes on until the gate opens.
    assert_eq!(property(m, "gate.service", "ActiveState"), "activating");
    m.succeed(&["touch /run/gate-open"], None).unwrap();
    m.wait_for_unit("waiter.service", None, WAIT).unwrap();
    // gate ran to its end first (a oneshot is inactive again once it exits).
    assert_eq!(property(m, "gate.service", "Result"), "success");
    assert_ne!(
        property(m, "gate.service", "ExecMainExitTimestampMonotonic"),
        "0"
    );
    assert_eq!(m.stop_job("waiter.service", None).unwrap().0, 0);
}

/// start_job and stop_job return systemctl's status; the unit follows.
fn start_and_stop_jobs(m: &Machine) {
    assert_eq!(m.start_job("idle.service", None).unwrap().0, 0);
    m.wait_for_unit("idle.service", None, WAIT).unwrap();
    m.require_unit_state("idle.service", "active").unwrap();
    assert_eq!(m.stop_job("idle.service", None).unwrap().0, 0);
    m.require_unit_state("idle.service", "inactive").unwrap();

    // systemctl's "Unit ... not found" goes to stderr (the serial console):
    // the status is what the caller sees, as on NixOS.
    assert_eq!(
        m.start_job("no-such-unit.service", None).unwrap(),
        (5, String::new())
    );
    // Restarting a failed unit fails again.
    let (status, _) = m.start_job("broken.service", None).unwrap();
    assert_ne!(status, 0);
    m.require_unit_state("broken.service", "failed").unwrap();
}

/// The `user=` forms: `systemctl --user` in a login shell of alice.
fn user_units(m: &Machine) {
    // As on NixOS, `su` opens no systemd session (no user manager for root).
    assert_eq!(
        m.succeed(&["su -- root -c 'echo ${XDG_SESSION_ID:-none}'"], None)
            .unwrap(),
        "none\n"
    );
    let (status, _) = m.systemctl("is-active user@0.service", None).unwrap();
    assert_ne!(status, 0, "su started a user manager for root");
    m.wait_for_unit("user@1000.service", None, WAIT).unwrap();
    m.wait_for_unit("default.target", Some("alice"), WAIT)
        .unwrap();

    assert_eq!(
        m.systemctl("is-active hello.service", Some("alice"))
            .unwrap(),
        (3, "inactive\n".into())
    );
    assert_eq!(
        wait_fails(m, "hello.service", Some("alice"), Duration::from_secs(30)),
        "unit \"hello.service\" is inactive and there are no pending jobs"
    );

    assert_eq!(m.start_job("hello.service", Some("alice")).unwrap().0, 0);
    m.wait_for_unit("hello.service", Some("alice"), WAIT)
        .unwrap();
    let info = m.get_unit_info("hello.service", Some("alice")).unwrap();
    assert_eq!(info["ActiveState"], "active");
    // The user manager runs it as alice.
    let pid = &info["MainPID"];
    assert_eq!(
        m.succeed(&[&format!("ps -o user= -p {pid}")], None)
            .unwrap()
            .trim(),
        "alice"
    );
    // A quote in the query survives NixOS's $'...' quoting.
    assert_eq!(
        m.get_unit_property("hello.service", "Description", Some("alice"))
            .unwrap(),
        "alice's hello service"
    );
    assert_eq!(
        m.systemctl("show -P Description 'hello.service'", Some("alice"))
            .unwrap(),
        (0, "alice's hello service\n".into())
    );
    assert_eq!(m.stop_job("hello.service", Some("alice")).unwrap().0, 0);
    assert_eq!(
        m.get_unit_property("hello.service", "ActiveState", Some("alice"))
            .unwrap(),
        "inactive"
    );
    // The system manager does not know alice's unit.
    assert_eq!(property(m, "hello.service", "LoadState"), "not-found");

    // A user that does not exist: su fails, and so does the query.
    let e = m
        .get_unit_property("hello.service", "ActiveState", Some("nobody-here"))
        .unwrap_err();
    assert_eq!(
        assertion(e),
        "retrieving systemctl property \"ActiveState\" for unit \"hello.service\" under user \"nobody-here\" failed with exit code 1"
    );
}

/// The guest boots again from the disk its first boot left (as after
/// NixOS's `shutdown()` then `start()`), with what that boot wrote.
fn second_boot(m: &Machine) {
    m.succeed(&["echo kept > /root/from-the-first-boot"], None)
        .unwrap();
    m.shutdown().unwrap();
    assert!(!m.is_up());
    m.start(false).unwrap();
    m.wait_for_unit("multi-user.target", None, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("second boot: {e}\n{}", m.console_log()));
    assert_eq!(
        m.succeed(&["cat /root/from-the-first-boot"], None).unwrap(),
        "kept\n"
    );
    assert_eq!(property(m, "backdoor.service", "ActiveState"), "active");
}
