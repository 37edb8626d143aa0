//! Helpers shared by the CLI's end-to-end tests: the binary with a private
//! guest cache, guests built from the examples, and the check that no QEMU
//! outlives a run.
#![allow(dead_code)] // each test file uses its own share

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Pid;
pub use rustix::process::Signal;

pub mod pty;

/// A child process stopped when dropped (a failed test must not leave it and
/// its machines behind): SIGTERM lets vmrig stop its machines; SIGKILL if it
/// does not go within 20 s.
pub struct Stopped(pub std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let child = &mut self.0;
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        signal(child, Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends `sig` to a child process.
pub fn signal(child: &std::process::Child, sig: Signal) {
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Waits for `child` to exit and returns its status; fails the test, saying it
/// was still `doing`, if it runs longer than `within`.
pub fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
    doing: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "still {doing} after {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `vmrig` binary, with the tests' guest cache and no colour.
pub fn vmrig() -> Command {
    vmrig_as(Path::new(env!("CARGO_BIN_EXE_vmrig")))
}

/// `program` (the `vmrig` binary under another name) set up like [`vmrig`].
pub fn vmrig_as(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.env(
        "VMRIG_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
    )
    .env("NO_COLOR", "1")
    // Every test that boots saves a snapshot there: keep the pile small.
    .env("VMRIG_SNAPSHOT_CAP_MB", "2048")
    .env_remove("startScripts")
    .env_remove("vlans")
    .env_remove("testScript")
    .env_remove("logLevel");
    c
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `vmrig` whose run directory goes under `dir`, so its QEMU command lines name `dir`.
pub fn vmrig_in(dir: &Path) -> Command {
    let mut c = vmrig();
    c.env("TMPDIR", dir).env_remove("XDG_RUNTIME_DIR");
    c
}

/// Builds `examples/<example>` into `dir/result`; returns its `bin` directory.
pub fn build(example: &str, dir: &Path) -> PathBuf {
    build_definition(&repo().join("examples").join(example), dir)
}

/// Builds the vmrig.toml in `definition` into `dir/result`; returns its `bin` directory.
pub fn build_definition(definition: &Path, dir: &Path) -> PathBuf {
    let out = vmrig()
        .args(["guest", "build"])
        .arg(definition)
        .arg("--out")
        .arg(dir.join("result"))
        .output()
        .unwrap();
    assert_success(&out);
    dir.join("result/bin")
}

/// Panics with its stderr unless the run succeeded.
pub fn assert_success(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds examples/hello into `dir/result`; returns its start script.
pub fn hello(dir: &Path) -> PathBuf {
    build("hello", dir).join("run-machine-vm")
}

/// Live (not zombie) processes whose command line names `dir` (QEMU, vmrig
/// children, start scripts).
pub fn qemu_of(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z');
        if !zombie && String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits (up to 20 s) until no process names `dir`.
pub fn assert_no_qemu_left(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !qemu_of(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU processes left: {:?}",
            qemu_of(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
