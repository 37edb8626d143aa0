//! Choosing QEMU's accelerator. KVM is only used when a guest really boots
//! under it: on nested or paravirtual hosts `/dev/kvm` can exist and still hang
//! every guest, so `auto` boots a tiny probe guest with a time bound.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cpio::{Archive, Kind};

/// The accelerator a start script uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// QEMU's name for it (`-accel NAME`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// Probe KVM, fall back to TCG.
    Auto,
    /// KVM, unprobed.
    Kvm,
    /// TCG.
    #[default]
    Tcg,
}

impl std::str::FromStr for AccelChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!(
                "unknown accelerator `{other}`: use auto, kvm or tcg"
            )),
        }
    }
}

/// How long the KVM probe may take. A working KVM boots the probe in about a
/// second; TCG needs about three, so the bound leaves room without waiting long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

const PROBE_MARK: &str = "VMRIG-KVM-PROBE-OK";

/// The outcome of a probe, with the reason for a `Tcg` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What to use.
    pub accel: Accel,
    /// Why.
    pub reason: String,
}

/// Boots `kernel` with a one-line init under KVM and reports whether it reached
/// userspace within `timeout`. Never waits longer than `timeout` (plus the kill).
pub fn probe_kvm(
    qemu: &str,
    kvm_device: &Path,
    kernel: &Path,
    busybox: &Path,
    timeout: Duration,
) -> Probe {
    let tcg = |reason: String| Probe {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm_device)
    {
        return tcg(format!("{} cannot be opened: {e}", kvm_device.display()));
    }
    let dir = match tempfile::Builder::new().prefix("vmrig-kvm-probe").tempdir() {
        Ok(d) => d,
        Err(e) => return tcg(format!("no temporary directory for the probe: {e}")),
    };
    let initrd = dir.path().join("probe.cpio");
    let mut a = Archive::new();
    a.insert("/dev/console", Kind::CharDevice(5, 1), 0o600);
    a.insert("/bin/busybox", Kind::HostFile(busybox.to_owned()), 0o755);
    a.file(
        "/init",
        format!("#!/bin/busybox sh\n/bin/busybox echo {PROBE_MARK}\n/bin/busybox poweroff -f\n"),
        0o755,
    );
    let written = std::fs::File::create(&initrd).and_then(|mut f| a.write_to(&mut f));
    if let Err(e) = written {
        return tcg(format!("cannot write the probe initrd: {e}"));
    }
    let mut child = Command::new(qemu);
    child
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "max",
            "-m",
            "128",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // A KVM that hangs its guest must not leave that guest behind if we are killed
    // while we wait (this thread outlives the child: it kills and reaps it).
    crate::process::die_with_parent(&mut child);
    let child = child.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return tcg(format!("cannot run {qemu}: {e}")),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains(PROBE_MARK) {
                return true;
            }
        }
        false
    });
    let start = Instant::now();
    let mut seen = false;
    while start.elapsed() < timeout {
        if reader.is_finished() {
            seen = reader.join().unwrap_or(false);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    crate::process::kill_and_reap(&mut child);
    let status = match child.try_wait() {
        Ok(Some(s)) => s.to_string(),
        Ok(None) => "still running".to_owned(),
        Err(e) => e.to_string(),
    };
    if seen {
        return Probe {
            accel: Accel::Kvm,
            reason: format!(
                "a probe guest booted under KVM in {:.1} s",
                start.elapsed().as_secs_f64()
            ),
        };
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let why = if start.elapsed() >= timeout {
        format!(
            "a probe guest did not boot under KVM within {} s",
            timeout.as_secs()
        )
    } else {
        format!(
            "QEMU could not boot under KVM ({status}): {}",
            stderr.trim()
        )
    };
    tcg(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choice() {
        assert_eq!("auto".parse(), Ok(AccelChoice::Auto));
        assert_eq!("tcg".parse(), Ok(AccelChoice::Tcg));
        assert!("xen"
            .parse::<AccelChoice>()
            .unwrap_err()
            .contains("auto, kvm or tcg"));
    }

    #[test]
    fn no_device_means_tcg_at_once() {
        let start = Instant::now();
        let p = probe_kvm(
            "qemu-system-x86_64",
            Path::new("/nonexistent/kvm"),
            Path::new("/nonexistent/kernel"),
            Path::new("/nonexistent/busybox"),
            PROBE_TIMEOUT,
        );
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.reason.contains("/nonexistent/kvm"), "{}", p.reason);
        assert!(start.elapsed() < PROBE_TIMEOUT);
    }

    #[test]
    fn missing_qemu_means_tcg() {
        // /dev/null opens read-write, so the probe gets as far as running QEMU.
        let p = probe_kvm(
            "/nonexistent/qemu",
            Path::new("/dev/null"),
            Path::new("/nonexistent/kernel"),
            Path::new("/bin/sh"),
            PROBE_TIMEOUT,
        );
        assert_eq!(p.accel, Accel::Tcg);
        assert!(p.reason.contains("/nonexistent/qemu"), "{}", p.reason);
    }
}
