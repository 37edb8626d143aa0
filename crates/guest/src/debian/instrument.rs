//! The test instrumentation every debian guest shares: masked units, journald
//! on the serial console, per-user PATHs.

use std::path::Path;

use super::rootfs::symlink;
use crate::error::{IoContext, Result};

/// Bumped whenever what a layer holds changes (the build code, `instrument`).
pub(super) const RECIPE: &str = "vmrig-debian v4";

/// Units masked in every guest: serial gettys would steal the backdoor's console
/// (as NixOS's test instrumentation disables them), timers and the rest only cost
/// time.
pub(super) const MASKED_UNITS: &[&str] = &[
    "serial-getty@hvc0.service",
    "serial-getty@ttyS0.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "dpkg-db-backup.timer",
    "logrotate.timer",
    "systemd-networkd-wait-online.service",
    "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service",
    "dev-hugepages.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "modprobe@dm_mod.service",
    "modprobe@efi_pstore.service",
    "modprobe@loop.service",
    // Each costs a second of the one vCPU under TCG, for what a test guest does not
    // use: early loading of drm (graphics nodes load it in the initrd instead,
    // before logind reads its major number), configfs, fuse and their mounts.
    "modprobe@drm.service",
    "modprobe@configfs.service",
    "modprobe@fuse.service",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    // The journal is volatile (in /run): there is nothing to flush to /var.
    "systemd-journal-flush.service",
    // The initrd mounts the root read-write and fstab is empty: nothing to remount.
    "systemd-remount-fs.service",
    // Packages' postinst scripts created their users when the layer was built.
    "systemd-sysusers.service",
];

/// Debian's `/etc/pam.d/su` with the session stack of non-interactive
/// services (the same as `common-session`, less `pam_systemd`).
fn su_without_session(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim() == "@include common-session" {
                "@include common-session-noninteractive"
            } else {
                l
            }
        })
        .fold(String::new(), |mut out, l| {
            out.push_str(l);
            out.push('\n');
            out
        })
}

/// The test instrumentation every debian guest shares.
pub(super) fn instrument(root: &Path) -> Result<()> {
    let units = root.join("etc/systemd/system");
    for unit in MASKED_UNITS {
        symlink("/dev/null", &units.join(unit))?;
    }
    let write = |rel: &str, text: &str| -> Result<()> {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&path, text).context(|| format!("cannot write {}", path.display()))
    };
    // Service output on the serial console, where the driver shows it (NixOS does the same).
    write(
        "etc/systemd/journald.conf.d/vmrig.conf",
        "[Journal]\nStorage=volatile\nForwardToConsole=yes\nTTYPath=/dev/ttyS0\nMaxLevelConsole=info\n",
    )?;
    // Units by description in messages ("Reached target Current graphical user
    // session", which NixOS's wait_for_x greps the journal for).
    for manager in ["system", "user"] {
        write(
            &format!("etc/systemd/{manager}.conf.d/vmrig.conf"),
            "[Manager]\nStatusUnitFormat=description\n",
        )?;
    }
    // Per-user packages on PATH, also for `su USER -c CMD` (pam_env runs for su).
    let pam_env = root.join("etc/security/pam_env.conf");
    let mut text = std::fs::read_to_string(&pam_env).unwrap_or_default();
    text.push_str(
        "\n# vmrig: each user's packages (NixOS's /etc/profiles/per-user)\n\
         PATH DEFAULT=/etc/profiles/per-user/@{PAM_USER}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    );
    write("etc/security/pam_env.conf", &text)?;
    // `su` opens no systemd session, as on NixOS (its su service has no
    // startSession): Debian's would start a user manager for every
    // `su -- alice -c CMD`, about 2 s under TCG each time.
    let su = root.join("etc/pam.d/su");
    if let Ok(text) = std::fs::read_to_string(&su) {
        write("etc/pam.d/su", &su_without_session(&text))?;
    }
    write(
        "etc/profile.d/vmrig-per-user.sh",
        "d=/etc/profiles/per-user/$(id -un)/bin\n\
         case \":$PATH:\" in *\":$d:\"*) ;; *) [ -d \"$d\" ] && PATH=\"$d:$PATH\" ;; esac\n\
         unset d\n",
    )?;
    write(
        "etc/fstab",
        "# the root file system is mounted by vmrig's initrd\n",
    )?;
    write("etc/resolv.conf", "nameserver 10.0.2.3\n")?;
    write("etc/machine-id", "")?;
    write(
        "etc/vmrig/layer",
        &format!("{RECIPE}\nvmrig {}\n", env!("CARGO_PKG_VERSION")),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn su_gets_the_non_interactive_session_stack() {
        let debian = "auth       sufficient pam_rootok.so\nsession       required   pam_env.so readenv=1\n@include common-auth\n@include common-account\n@include common-session\n";
        let ours = su_without_session(debian);
        assert!(ours.contains("\n@include common-session-noninteractive\n"));
        assert!(!ours.contains("\n@include common-session\n"));
        assert_eq!(ours.lines().count(), debian.lines().count());
        assert!(ours.starts_with("auth       sufficient pam_rootok.so\n"));
    }
}
