//! The KVM probe's QEMU never outlives the process that probes: on a host where
//! KVM hangs its guests, killing `vmrig doctor` (or a `--accel auto` build) during
//! the probe must not leave a hung QEMU behind.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Set in the helper process: the directory holding the stand-in QEMU.
const HELPER: &str = "VMRIG_PROBE_TEST_HELPER";

/// Whether `pid` runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn the_probe_qemu_dies_with_the_prober() {
    if let Some(dir) = std::env::var_os(HELPER) {
        // The helper: probe with a stand-in QEMU that never boots, until killed.
        let qemu = Path::new(&dir).join("qemu");
        vmrig_guest::accel::probe_kvm(
            &qemu.to_string_lossy(),
            Path::new("/dev/null"), // opens read-write, so the probe runs QEMU
            Path::new("/nonexistent/kernel"),
            Path::new("/bin/sh"),
            Duration::from_secs(300),
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let qemu = dir.path().join("qemu");
    std::fs::write(
        &qemu,
        format!(
            "#!/bin/sh\necho $$ > {}.tmp && mv {0}.tmp {0}\nexec sleep 300\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&qemu, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_probe_qemu_dies_with_the_prober"])
        .env(HELPER, dir.path())
        // The killed probe cannot remove its temporary directory: keep it in ours.
        .env("TMPDIR", dir.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        if Instant::now() > deadline {
            let _ = helper.kill();
            panic!("the stand-in QEMU did not start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(alive(pid), "the stand-in QEMU runs while the probe waits");
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the probe's QEMU (pid {pid}) outlived the killed prober");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
