//! Layer 1, the base: mmdebstrap's minbase of the host's Debian release with
//! systemd, from the archive the host's apt uses.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{Error, IoContext, Result};

/// Packages of the base beyond minbase: systemd and what the Machine API runs.
pub const BASE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",
    "dbus-user-session",
    "libpam-systemd",
    "iproute2",
    "procps",
    "kmod",
    "netcat-openbsd",
    "iputils-ping",
    "ca-certificates",
];

/// Bumped whenever how the base is built changes.
pub(super) const BASE_RECIPE: &str = "vmrig-debian-base v1";

/// The host's apt sources (one-line `.list` and deb822 `.sources` files).
pub(super) fn host_sources() -> Result<Vec<(PathBuf, String)>> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut out = Vec::new();
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            let active = text
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            if active {
                out.push((f, text));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::HostMissing {
            what: "an apt source (/etc/apt/sources.list or /etc/apt/sources.list.d/*)".into(),
            hint: "the debian flavour installs packages from the archive the host's apt uses; configure one".into(),
        });
    }
    Ok(out)
}

/// The host's Debian release codename (`bookworm`).
pub(super) fn host_suite() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::HostMissing {
            what: "VERSION_CODENAME in /etc/os-release".into(),
            hint: "the debian flavour builds the host's own Debian release; run it on Debian"
                .into(),
        })
}

pub(super) fn build_base(
    base: &Path,
    suite: &str,
    sources: &[(PathBuf, String)],
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    crate::host::find_program("mmdebstrap").map_err(|_| Error::HostMissing {
        what: "mmdebstrap".into(),
        hint: "apt-get install mmdebstrap (the debian flavour builds its base image with it)"
            .into(),
    })?;
    let dir = base.parent().expect("cache paths have parents");
    std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.tmp.tar", std::process::id()));
    log(&format!(
        "debian: building the base image ({suite}, systemd) with mmdebstrap; first use only"
    ));
    let start = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--mode=root", "--format=tar"])
        .arg(format!("--include={}", BASE_PACKAGES.join(",")))
        // apt's lists stay, so layers install packages without fetching them again.
        .arg("--skip=cleanup/apt/lists")
        .arg(suite)
        .arg(&tmp);
    for (path, _) in sources {
        cmd.arg(path);
    }
    let result = run_logged(&mut cmd, "mmdebstrap");
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, base).context(|| format!("cannot move {} into place", base.display()))?;
    log(&format!(
        "debian: base image built in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Runs a command, keeping its output for the error message.
pub(super) fn run_logged(cmd: &mut Command, what: &str) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            command: shown.clone(),
            message: format!("cannot start {what}: {e}"),
        })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(Error::Command {
            command: shown,
            message: format!("{} ; last lines:\n{}", out.status, tail.join("\n")),
        });
    }
    Ok(())
}
