//! No QEMU outlives a run, however it ends; dead or silent guests fail
//! clearly instead of hanging. Signals and panics are tested in a child copy
//! of this test binary (the `child` test, ignored unless asked for).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use vmrig_driver::{Driver, DriverOptions, Error};

fn pid_of(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).expect("a pid fits i32")).expect("not pid 0")
}

/// Builds a one-node guest without VLANs; returns its start script.
fn guest(dir: &Path) -> PathBuf {
    let def = dir.join("vmrig.toml");
    std::fs::write(&def, "[nodes.solo]\nvlans = []\nmemory = 256\n").unwrap();
    let opts = vmrig_guest::BuildOptions {
        cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
        ..Default::default()
    };
    vmrig_guest::build(&def, &dir.join("result"), &opts).unwrap();
    dir.join("result/bin/run-solo-vm")
}

fn options(script: PathBuf, dir: &Path) -> DriverOptions {
    let mut opts = DriverOptions::new(vec![script]);
    opts.out_dir = dir.join("out");
    opts.tmp_dir = Some(dir.to_owned());
    opts
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn assert_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "QEMU (pid {pid}) survived");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs in a child process: starts the machine, prints QEMU's pid, then
/// panics or waits for a signal, as `VMRIG_ROBUSTNESS_CHILD` says.
#[test]
#[ignore = "run by the other tests in a child process"]
fn child() {
    let Ok(mode) = std::env::var("VMRIG_ROBUSTNESS_CHILD") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("VMRIG_ROBUSTNESS_DIR").unwrap());
    let driver = Driver::new(options(guest(&dir), &dir)).unwrap();
    let m = driver.machine("solo").unwrap();
    m.start(false).unwrap();
    println!("QEMU_PID={}", m.pid().unwrap());
    println!("RUN_DIR={}", driver.run_dir().display());
    if mode == "panic" {
        panic!("a test script bug");
    }
    std::thread::sleep(Duration::from_secs(600));
}

/// Starts the child in `mode`; returns it with QEMU's pid and the run directory.
fn spawn_child(mode: &str, dir: &Path) -> (std::process::Child, u32, PathBuf) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VMRIG_ROBUSTNESS_CHILD", mode)
        .env("VMRIG_ROBUSTNESS_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("child.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut pid, mut run_dir) = (None, None);
    while pid.is_none() || run_dir.is_none() {
        let Some(line) = lines.next() else {
            let stderr = std::fs::read_to_string(dir.join("child.stderr")).unwrap_or_default();
            panic!("the child ended before starting QEMU:\n{stderr}");
        };
        let line = line.unwrap();
        // libtest may print `test child ... ` on the same line first.
        if let Some((_, p)) = line.split_once("QEMU_PID=") {
            pid = Some(p.trim().parse().unwrap());
        }
        if let Some((_, d)) = line.split_once("RUN_DIR=") {
            run_dir = Some(PathBuf::from(d.trim()));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, pid.unwrap(), run_dir.unwrap())
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal_test(signal: Signal, code: i32) {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, pid, run_dir) = spawn_child("signal", dir.path());
    assert!(alive(pid));
    kill_process(pid_of(child.id()), signal).unwrap();
    let status = wait_child(&mut child);
    assert_eq!(status.code(), Some(code));
    assert_gone(pid);
    assert!(!run_dir.exists(), "the run directory is removed");
}

#[test]
fn sigint_stops_every_machine() {
    signal_test(Signal::INT, 130);
}

#[test]
fn sigterm_stops_every_machine() {
    signal_test(Signal::TERM, 143);
}

#[test]
fn a_panic_stops_every_machine() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, pid, _) = spawn_child("panic", dir.path());
    let status = wait_child(&mut child);
    assert!(!status.success());
    assert_gone(pid);
}

#[test]
fn a_passing_run_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::new(options(guest(dir.path()), dir.path())).unwrap();
    let m = driver.machine("solo").unwrap();
    assert_eq!(m.succeed(&["echo ok"], None).unwrap(), "ok\n");
    let (pid, run_dir) = (m.pid().unwrap(), driver.run_dir().to_owned());
    drop(driver);
    assert_gone(pid);
    assert!(!run_dir.exists());
}

#[test]
fn the_global_timeout_stops_every_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(guest(dir.path()), dir.path());
    opts.global_timeout = Duration::from_secs(25);
    let driver = Driver::new(opts).unwrap();
    let m = driver.machine("solo").unwrap();
    m.connect().unwrap();
    let pid = m.pid().unwrap();
    let e = driver
        .subtest("runs too long", || m.succeed(&["sleep 600"], None))
        .unwrap_err();
    // The watchdog killed QEMU mid-command: it is gone while the driver lives.
    assert_gone(pid);
    assert!(driver.timed_out());
    assert!(
        e.to_string().contains("global timeout of 25 s reached"),
        "{e}"
    );
    assert!(!m.is_booted());
}

#[test]
fn a_guest_without_backdoor_fails_with_its_console() {
    let dir = tempfile::tempdir().unwrap();
    let script = guest(dir.path());
    // The kernel boots but runs `sleep` as init: no backdoor ever.
    let silent = dir.path().join("run-silent-vm");
    std::fs::write(
        &silent,
        format!(
            "#!/bin/sh\nQEMU_KERNEL_PARAMS='rdinit=/bin/busybox -- sleep 600' exec {} \"$@\"\n",
            script.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&silent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut opts = options(silent, dir.path());
    opts.boot_timeout = Duration::from_secs(20);
    let driver = Driver::new(opts).unwrap();
    let e = driver.machine("silent").unwrap().connect().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("waiting for the backdoor shell")
            && text.contains("--- last console lines ---"),
        "{text}"
    );
}

#[test]
fn a_guest_that_dies_fails_its_command_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let driver = Driver::new(options(guest(dir.path()), dir.path())).unwrap();
    let m = driver.machine("solo").unwrap();
    m.connect().unwrap();
    let pid = m.pid().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        let _ = kill_process(pid_of(pid), Signal::KILL);
    });
    let started = Instant::now();
    let e = m.succeed(&["sleep 300"], None).unwrap_err();
    killer.join().unwrap();
    assert!(matches!(e, Error::Machine { .. }), "{e}");
    // Far less than the command's 300 s: the dead guest is noticed, not waited out.
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
    assert!(e.to_string().contains("sleep 300"), "{e}");
}
