//! Helpers shared by the CLI's end-to-end tests: the binary with a clean
//! environment, and the processes a run may leave behind.

#![allow(dead_code)] // each test file uses its own share of these

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The `vmrig` binary with the guest cache of the test target directory and
/// none of the NixOS driver's environment defaults.
pub fn vmrig() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmrig"));
    c.env(
        "VMRIG_CACHE_DIR",
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
    )
    .env("NO_COLOR", "1")
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

/// Live (not zombie) processes whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<u32> {
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

/// Waits (boundedly) until no process names `dir`.
pub fn assert_none_left(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_naming(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes left: {:?}",
            processes_naming(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
