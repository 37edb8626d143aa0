//! The systemd units vmrig puts in every node: the backdoor, the shared
//! directory, and one per service of the definition.

use std::fmt::Write as _;

/// NixOS's backdoor.service, with ordinary dependencies, so it is up before
/// `multi-user.target` is reached. NixOS also waits for `dev-hvc0.device`; here
/// the initrd loaded virtio_console, so the console exists before systemd
/// starts, and waiting for udev to announce it costs seconds under TCG.
pub(super) const BACKDOOR_UNIT: &str = "\
[Unit]
Description=vmrig test backdoor (root shell on /dev/hvc0)

[Service]
ExecStart=/etc/vmrig/backdoor
KillSignal=SIGHUP

[Install]
WantedBy=multi-user.target
";

pub(super) const SHARED_MOUNT: &str = "\
[Unit]
Description=vmrig shared directory (9p tag `shared`)
DefaultDependencies=no
Before=local-fs.target

[Mount]
What=shared
Where=/tmp/shared
Type=9p
Options=trans=virtio,version=9p2000.L,msize=262144,cache=none,nofail
";

pub(super) fn service_unit(name: &str, svc: &crate::definition::Service) -> String {
    let mut s = format!("[Unit]\nDescription=vmrig service {name}\n");
    if !svc.after.is_empty() {
        let _ = writeln!(s, "After={}", svc.after.join(" "));
    }
    let _ = write!(s, "\n[Service]\nExecStart=/etc/vmrig/services/{name}\n");
    if let Some(user) = &svc.user {
        let _ = writeln!(s, "User={user}");
    }
    let _ = write!(s, "\n[Install]\nWantedBy={}\n", svc.wanted_by.join(" "));
    s
}
