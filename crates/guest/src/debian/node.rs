//! Layer 3, the node: the initrd archive that puts a node's own files on its
//! disk (hostname, hosts, units, users, services) and hands over to systemd.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::units::{service_unit, BACKDOOR_UNIT, SHARED_MOUNT};
use crate::cpio::{Archive, Kind};
use crate::definition::{Definition, FileContent, Node};
use crate::script::sh_quote;

/// Kernel modules the node initrd loads before it mounts the disk.
pub const INITRD_MODULES: &[(&str, &str)] = &[
    ("virtio_pci", "virtio devices on the PCI bus"),
    ("virtio_blk", "the root disk"),
    ("crc32c_generic", "ext4 metadata checksums"),
    ("ext4", "the root file system"),
    ("virtio_console", "the backdoor on /dev/hvc0"),
    ("virtio_net", "VLAN and user-mode NICs"),
    ("virtio_rng", "entropy from -device virtio-rng-pci"),
    ("9pnet_virtio", "the shared directory at /tmp/shared"),
    ("9p", "the shared directory at /tmp/shared"),
];

/// Kernel parameters of debian nodes: the initrd's init, NICs named ethN
/// (NixOS's names; udev cannot rename an interface that is already up), and no
/// status lines on the console (journald forwards the same messages there).
pub const KERNEL_PARAMS: &str =
    "rdinit=/etc/vmrig/debian-init net.ifnames=0 systemd.show_status=false";

/// The per-node initrd archive: the node's files under `/etc/vmrig/root`, the
/// init that copies them onto the disk and starts systemd, and the network set-up.
pub fn node_archive(def: &Definition, node: &Node) -> Archive {
    let mut a = Archive::new();
    let r = |p: &str| format!("/etc/vmrig/root{p}");
    a.file(&r("/etc/hostname"), format!("{}\n", node.name), 0o644);
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
    for (addr, name) in def.hosts() {
        let _ = writeln!(hosts, "{addr} {name}");
    }
    a.file(&r("/etc/hosts"), hosts, 0o644);
    a.file(&r("/etc/vmrig/backdoor"), crate::image::BACKDOOR, 0o755);
    a.file(
        &r("/etc/systemd/system/backdoor.service"),
        BACKDOOR_UNIT,
        0o644,
    );
    a.symlink(
        &r("/etc/systemd/system/multi-user.target.wants/backdoor.service"),
        "../backdoor.service",
    );
    a.file(
        &r("/etc/systemd/system/tmp-shared.mount"),
        SHARED_MOUNT,
        0o644,
    );
    a.symlink(
        &r("/etc/systemd/system/local-fs.target.wants/tmp-shared.mount"),
        "../tmp-shared.mount",
    );
    for (name, svc) in &node.services {
        a.file(
            &r(&format!("/etc/vmrig/services/{name}")),
            format!(
                "#!/bin/bash\n# vmrig service `{name}` of node `{}`\n{}\n",
                node.name, svc.command
            ),
            0o755,
        );
        a.file(
            &r(&format!("/etc/systemd/system/{name}.service")),
            service_unit(name, svc),
            0o644,
        );
        for target in &svc.wanted_by {
            a.symlink(
                &r(&format!(
                    "/etc/systemd/system/{target}.wants/{name}.service"
                )),
                &format!("../{name}.service"),
            );
        }
    }
    for (path, file) in &node.files {
        let kind = match &file.content {
            FileContent::Text(t) => Kind::File(t.clone().into_bytes()),
            FileContent::Source(p) => Kind::HostFile(p.clone()),
        };
        a.insert(&r(path), kind, file.mode);
    }
    a.file("/etc/vmrig/setup", setup_script(node), 0o755);
    a.file("/etc/vmrig/debian-init", init_script(node), 0o755);
    a
}

/// Users, groups and per-user PATHs, run in the disk's root by the initrd
/// (Debian's own useradd); idempotent, for disks kept between runs.
fn setup_script(node: &Node) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# vmrig: users of this node (generated)\nset -eu\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    );
    let groups: BTreeSet<&String> = node.users.values().flat_map(|u| &u.groups).collect();
    for g in groups {
        let g = sh_quote(g);
        let _ = writeln!(s, "getent group {g} >/dev/null || groupadd {g}");
    }
    for (name, user) in &node.users {
        let q = sh_quote(name);
        let groups = user.groups.join(",");
        let gflag = if groups.is_empty() {
            String::new()
        } else {
            format!(" -G {}", sh_quote(&groups))
        };
        let _ = writeln!(
            s,
            "if ! id -u {q} >/dev/null 2>&1; then useradd -m -u {uid} -g users{gflag} -d {home} -s /bin/bash {q}; fi",
            uid = user.uid,
            home = sh_quote(&user.home),
        );
        // Files the definition put in the home were copied in as root's.
        let _ = writeln!(
            s,
            "chown -R {uid}:users {home}",
            uid = user.uid,
            home = sh_quote(&user.home)
        );
        let d = format!("/etc/profiles/per-user/{name}/bin");
        let dq = sh_quote(&d);
        let _ = writeln!(s, "rm -rf {dq}; mkdir -p {dq}");
        for pkg in &user.packages {
            let _ = writeln!(
                s,
                "for f in /usr/lib/vmrig/packages/{pkg}/bin/*; do [ -e \"$f\" ] && ln -sfn \"$f\" {dq}/; done",
                pkg = sh_quote(pkg)
            );
        }
        for (alias, target) in &user.aliases {
            let t = sh_quote(target);
            let _ = writeln!(
                s,
                "if [ -e {dq}/{t} ]; then ln -sfn {t} {dq}/{a}; else ln -sfn \"$(command -v {t} || echo {t})\" {dq}/{a}; fi",
                a = sh_quote(alias)
            );
        }
    }
    s
}

/// The initrd's init (`rdinit=`): modules, network, root disk, node files, systemd.
fn init_script(node: &Node) -> String {
    let mut s = format!(
        r#"#!/bin/sh
# vmrig debian-flavour initrd for node `{name}` (generated).
fail() {{ echo "vmrig: $*" >&2; sleep 1; poweroff -f; }}
{early}hostname {name}
"#,
        name = node.name,
        early = crate::image::EARLY_INIT,
    );
    s.push_str(&crate::image::network_commands(node));
    s.push_str(
        r#"for _ in $(seq 200); do [ -b /dev/vda ] && break; sleep 0.05; done
mkdir -p /newroot
mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount the root disk /dev/vda (NIX_DISK_IMAGE)"
# -f: a disk kept from an earlier boot already has these (symlinks included).
cp -af /etc/vmrig/root/. /newroot/ || fail "cannot copy the node's files onto the root disk"
cp /etc/vmrig/setup /newroot/etc/vmrig/setup
chroot /newroot /etc/vmrig/setup || fail "cannot set up the node's users"
"#,
    );
    if node.graphics {
        // logind's device policy (DeviceAllow=char-drm) names drm by the major
        // number /proc/devices gives when logind starts: loaded later, as udev
        // would, /dev/dri/card0 stays closed to it, and every compositor that
        // asks logind for the GPU (gnome-shell, sway) gets EPERM.
        s.push_str(
            "chroot /newroot /sbin/modprobe drm || echo \"vmrig: cannot load drm: compositors will not get /dev/dri/card0\" >&2\n",
        );
    }
    s.push_str(
        r#"mkdir -p /newroot/tmp/shared
mount --move /dev /newroot/dev
umount /proc /sys
exec switch_root /newroot /lib/systemd/systemd
"#,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::test_support::{assert_valid_shell, def, records, text};

    #[test]
    fn node_archive_has_units_users_and_a_valid_init() {
        let d = def(r#"
            [nodes.server]
            flavour = "debian"
            vlans = [1]
            packages = ["postgresql"]
            [nodes.server.users.alice]
            uid = 1000
            groups = ["wheel"]
            packages = ["firefox-esr"]
            aliases = { firefox = "firefox-esr" }
            [nodes.server.services.web]
            command = "exec python3 -m http.server 3000"
            user = "alice"
            after = ["postgresql.service"]
            [nodes.server.files."/etc/motd"]
            text = "hi"
            [nodes.client]
            flavour = "debian"
        "#);
        let recs = records(&node_archive(&d, &d.nodes["server"]));
        let text = |p: &str| text(&recs, p);
        let unit = text("etc/vmrig/root/etc/systemd/system/web.service");
        assert!(unit.contains("After=postgresql.service"), "{unit}");
        assert!(unit.contains("User=alice") && unit.contains("WantedBy=multi-user.target"));
        assert!(recs
            .iter()
            .any(|r| r.path
                == "etc/vmrig/root/etc/systemd/system/multi-user.target.wants/web.service"));
        assert!(text("etc/vmrig/root/etc/hosts").contains("192.168.1.1 client"));
        assert_eq!(text("etc/vmrig/root/etc/motd"), "hi");
        let setup = text("etc/vmrig/setup");
        assert!(
            setup
                .contains("useradd -m -u 1000 -g users -G wheel -d /home/alice -s /bin/bash alice"),
            "{setup}"
        );
        assert!(
            setup.contains("/usr/lib/vmrig/packages/firefox-esr/bin/*"),
            "{setup}"
        );
        assert!(
            setup.contains("ln -sfn firefox-esr /etc/profiles/per-user/alice/bin/firefox"),
            "{setup}"
        );
        assert_valid_shell(&setup);
        assert_valid_shell(&text("etc/vmrig/debian-init"));
        assert!(text("etc/vmrig/debian-init").contains("ip addr add 192.168.1.2/24"));
    }

    #[test]
    fn graphics_nodes_load_drm_before_systemd() {
        let d = def(r#"
            [nodes.desk]
            flavour = "debian"
            graphics = true
            [nodes.server]
            flavour = "debian"
        "#);
        let init = |n: &str| {
            text(
                &records(&node_archive(&d, &d.nodes[n])),
                "etc/vmrig/debian-init",
            )
        };
        let desk = init("desk");
        assert_valid_shell(&desk);
        let drm = desk.find("modprobe drm").expect("no modprobe drm");
        assert!(drm < desk.find("switch_root").unwrap(), "{desk}");
        assert!(!init("server").contains("modprobe drm"));
    }
}
