//! What goes into a busybox-flavour guest: a base archive shared by every node
//! (busybox, bash, the tools the Machine API runs, kernel modules, init) and a
//! small per-node archive (hostname, addresses, users, packages, services,
//! files). The kernel unpacks both, in that order, from one initrd.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::cpio::{Archive, Kind};
use crate::definition::{Definition, FileContent, Node};
use crate::host::Program;
use crate::kernel::{module_name, Kernel};
use crate::script::sh_quote;

/// Programs every guest carries from the host (GNU coreutils where busybox's
/// applets differ from what the driver expects: busybox `timeout` exits 143,
/// not 124), with the guest name of each. `base64` stays busybox's: its
/// output is byte-identical to GNU's, and a static binary starts in a fraction
/// of the time a dynamic one needs under TCG (it runs for every command).
pub const BASE_PROGRAMS: &[(&str, &str)] = &[
    ("timeout", "timeout"),
    ("fold", "fold"),
    ("stty", "stty"),
    // busybox's nc has no -z, which wait_for_open_port needs.
    ("nc", "nc.openbsd"),
];

/// The host parts of the base archive.
#[derive(Debug, Clone)]
pub struct BaseInputs {
    /// The kernel whose modules are loaded.
    pub kernel: Kernel,
    /// Module files in load order.
    pub modules: Vec<PathBuf>,
    /// A statically linked busybox.
    pub busybox: PathBuf,
    /// Its applet names.
    pub applets: Vec<String>,
    /// A statically linked bash.
    pub bash: PathBuf,
    /// `BASE_PROGRAMS`, resolved: guest name and program.
    pub programs: Vec<(String, Program)>,
}

/// Maps a host path to where it goes in the guest, whose `/usr/bin`, `/usr/sbin`
/// and `/sbin` are links to `/bin`, and `/usr/lib*` to `/lib*`.
pub fn guest_path(host: &Path) -> String {
    let s = host.to_string_lossy();
    for (from, to) in [
        ("/usr/lib64/", "/lib64/"),
        ("/usr/lib/", "/lib/"),
        ("/usr/sbin/", "/bin/"),
        ("/usr/bin/", "/bin/"),
        ("/sbin/", "/bin/"),
    ] {
        if let Some(rest) = s.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    s.into_owned()
}

/// Adds a program at `dest` and its libraries (and `#!` interpreter) at their
/// loader paths.
pub fn add_program(archive: &mut Archive, dest: &str, program: &Program) {
    archive.insert(dest, Kind::HostFile(program.file.clone()), 0o755);
    for lib in &program.libraries {
        let at = guest_path(&lib.path);
        if !archive.contains(&at) {
            archive.insert(&at, Kind::HostFile(lib.file.clone()), 0o755);
        }
    }
    if let Some(interp) = &program.interpreter {
        let at = guest_path(&interp.path);
        if !archive.contains(&at) {
            add_program(archive, &at, interp);
        }
    }
}

/// The base archive. Module files may be compressed on the host; `decompress`
/// turns one into plain bytes (busybox's insmod loads only plain modules).
pub fn base_archive(
    inputs: &BaseInputs,
    decompress: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> std::io::Result<Archive> {
    let mut a = Archive::new();
    for d in [
        "/proc", "/sys", "/dev", "/run", "/home", "/mnt", "/var", "/etc", "/lib", "/lib64",
    ] {
        a.dir(d, 0o755);
    }
    a.dir("/tmp", 0o1777);
    a.dir("/var/tmp", 0o1777);
    a.dir("/root", 0o700);
    a.insert("/dev/console", Kind::CharDevice(5, 1), 0o600);
    a.insert("/dev/null", Kind::CharDevice(1, 3), 0o666);
    for (link, target) in [
        ("/sbin", "bin"),
        ("/usr/bin", "../bin"),
        ("/usr/sbin", "../bin"),
        ("/usr/lib", "../lib"),
        ("/usr/lib64", "../lib64"),
        ("/var/run", "../run"),
        ("/init", "bin/busybox"),
    ] {
        a.symlink(link, target);
    }

    a.insert(
        "/bin/busybox",
        Kind::HostFile(inputs.busybox.clone()),
        0o755,
    );
    let own: Vec<&str> = BASE_PROGRAMS
        .iter()
        .map(|(g, _)| *g)
        .chain(["bash", "sh", "busybox"])
        .collect();
    for applet in &inputs.applets {
        if !own.contains(&applet.as_str()) && !applet.contains('/') {
            a.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }
    a.insert("/bin/bash", Kind::HostFile(inputs.bash.clone()), 0o755);
    a.symlink("/bin/sh", "bash");
    for (name, program) in &inputs.programs {
        add_program(&mut a, &format!("/bin/{name}"), program);
    }

    let mut list = String::new();
    for m in &inputs.modules {
        let rel = m.strip_prefix(&inputs.kernel.modules_dir).unwrap_or(m);
        let rel = rel.to_string_lossy();
        let plain = match rel.find(".ko") {
            Some(i) => format!("{}.ko", &rel[..i]),
            None => rel.to_string(),
        };
        let at = format!("/lib/modules/{}/{plain}", inputs.kernel.release);
        if rel.ends_with(".ko") {
            a.insert(&at, Kind::HostFile(m.clone()), 0o644);
        } else {
            a.file(&at, decompress(m)?, 0o644);
        }
        let _ = writeln!(list, "{at}");
    }
    a.file("/etc/vmrig/modules", list, 0o644);

    a.file("/etc/inittab", INITTAB, 0o644);
    a.file("/etc/vmrig/backdoor", BACKDOOR, 0o755);
    a.file("/etc/profile", PROFILE, 0o644);
    a.file("/bin/vmrig-user-shell", USER_SHELL, 0o755);
    a.file(
        "/etc/shells",
        "/bin/sh\n/bin/bash\n/bin/vmrig-user-shell\n",
        0o644,
    );
    a.file(
        "/etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        0o644,
    );
    a.file(
        "/etc/vmrig/version",
        format!("{}\n", env!("CARGO_PKG_VERSION")),
        0o644,
    );
    Ok(a)
}

/// busybox init's table: boot script, then the backdoor; ctrl-alt-del reboots
/// (what `Machine.reboot()` sends); `poweroff` syncs and unmounts first.
const INITTAB: &str = "\
::sysinit:/etc/vmrig/rc
::once:/etc/vmrig/backdoor
::ctrlaltdel:/bin/reboot
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
";

/// The backdoor, as NixOS's test instrumentation runs it (backdoor.service).
pub(crate) const BACKDOOR: &str = r#"#!/bin/bash
# The vmrig/NixOS test backdoor: a root shell reading commands from /dev/hvc0.
export USER=root HOME=/root DISPLAY=:0.0
if [[ -e /etc/profile ]]; then source /etc/profile; fi
export PAGER=
cd /tmp
for _ in $(seq 100); do [[ -e /dev/hvc0 ]] && break; sleep 0.1; done
if [[ ! -e /dev/hvc0 ]]; then
    echo "vmrig: /dev/hvc0 did not appear (virtio_console not loaded?): no backdoor" >/dev/console
    exit 1
fi
exec < /dev/hvc0 > /dev/hvc0
while ! exec 2> /dev/ttyS0; do sleep 0.1; done
echo "connecting to host..." >&2
stty -F /dev/hvc0 raw -echo # no nl -> cr/nl conversion, no echo
# The shell's output reaches the console through a pipe and `cat`: a program writing
# to the console itself (base64, with stdio's tty-sized buffer) would make a virtio
# message of every KiB, which costs more than twice the time for 10 MB under TCG.
{
    echo "Spawning backdoor root shell..."
    PS1="" exec /usr/bin/env bash --norc /dev/hvc0
} | exec cat > /dev/hvc0
"#;

const PROFILE: &str = r#"export PATH=/bin
if [ -d "/etc/profiles/per-user/$(id -un)/bin" ]; then PATH="/etc/profiles/per-user/$(id -un)/bin:$PATH"; fi
"#;

/// Login shell of normal users: puts their per-user packages on PATH (like
/// NixOS's /etc/profiles/per-user) also for `su USER -c CMD`, which keeps the
/// caller's environment.
const USER_SHELL: &str = r#"#!/bin/bash
d=/etc/profiles/per-user/$(id -un)/bin
if [[ -d $d && :$PATH: != *:$d:* ]]; then PATH=$d:${PATH:-/bin}; fi
exec /bin/bash "$@"
"#;

/// Resolved host programs of one node: its packages, and each user's.
#[derive(Debug, Clone, Default)]
pub struct NodePrograms {
    /// `packages`, by guest name.
    pub system: Vec<(String, Program)>,
    /// Per user: their `packages`, by guest name.
    pub users: BTreeMap<String, Vec<(String, Program)>>,
}

/// Guest name of a `packages` entry: the name as written, or the basename of a path.
pub fn package_name(entry: &str) -> String {
    entry.rsplit('/').next().unwrap_or(entry).to_owned()
}

/// The per-node archive.
pub fn node_archive(
    def: &Definition,
    node: &Node,
    programs: &NodePrograms,
) -> std::io::Result<Archive> {
    let mut a = Archive::new();
    a.file("/etc/hostname", format!("{}\n", node.name), 0o644);
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (addr, name) in def.hosts() {
        let _ = writeln!(hosts, "{addr} {name}");
    }
    a.file("/etc/hosts", hosts, 0o644);

    // Users and groups. `users` (100) is every normal user's primary group, as on NixOS.
    let mut groups: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
    groups.insert("root".into(), (0, vec![]));
    groups.insert("wheel".into(), (1, vec![]));
    groups.insert("users".into(), (100, vec![]));
    let mut next_gid = 1000;
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/bash\n");
    let mut shadow = String::from("root::1::::::\n");
    for (uname, user) in &node.users {
        let _ = writeln!(
            passwd,
            "{uname}:x:{}:100:{uname}:{}:/bin/vmrig-user-shell",
            user.uid, user.home
        );
        let _ = writeln!(shadow, "{uname}:!:1::::::");
        a.insert_owned(&user.home, Kind::Dir, 0o700, user.uid, 100);
        for g in &user.groups {
            let entry = groups.entry(g.clone()).or_insert_with(|| {
                next_gid += 1;
                (next_gid - 1, vec![])
            });
            entry.1.push(uname.clone());
        }
        let dir = format!("/etc/profiles/per-user/{uname}/bin");
        let progs = programs.users.get(uname);
        if progs.is_some() || !user.aliases.is_empty() {
            a.dir(&dir, 0o755);
        }
        for (name, program) in progs.into_iter().flatten() {
            add_program(&mut a, &format!("{dir}/{name}"), program);
        }
        for (alias, target) in &user.aliases {
            let own = progs.is_some_and(|p| p.iter().any(|(n, _)| n == target));
            let to = if target.starts_with('/') || own {
                target.clone()
            } else {
                format!("/bin/{target}")
            };
            a.symlink(&format!("{dir}/{alias}"), &to);
        }
    }
    let mut group = String::new();
    for (name, (gid, members)) in &groups {
        let _ = writeln!(group, "{name}:x:{gid}:{}", members.join(","));
    }
    a.file("/etc/passwd", passwd, 0o644);
    a.file("/etc/group", group, 0o644);
    a.file("/etc/shadow", shadow, 0o600);

    for (name, program) in &programs.system {
        add_program(&mut a, &format!("/bin/{name}"), program);
    }
    for (path, file) in &node.files {
        let kind = match &file.content {
            FileContent::Text(t) => Kind::File(t.clone().into_bytes()),
            FileContent::Source(p) => Kind::HostFile(p.clone()),
        };
        a.insert(&guest_path(Path::new(path)), kind, file.mode);
    }
    a.file("/etc/vmrig/rc", node_rc(node), 0o755);
    Ok(a)
}

/// The start of every initrd init (both flavours): the kernel's file systems
/// and the modules listed in `/etc/vmrig/modules`, in order.
pub(crate) const EARLY_INIT: &str = r#"export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
    insmod "$m" || echo "vmrig: cannot load kernel module $m" >&2
done < /etc/vmrig/modules
"#;

/// The node's boot script (busybox init's `sysinit`).
pub fn node_rc(node: &Node) -> String {
    let mut s = format!(
        "#!/bin/sh\n# vmrig guest init for node `{name}` (generated): what NixOS's test instrumentation sets up.\n{EARLY_INIT}",
        name = node.name
    );
    let _ = write!(
        s,
        r#"mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
# What udev gives a NixOS guest: `<(...)` and /dev/stdin need them.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
hostname {name}
"#,
        name = node.name
    );
    s.push_str(&network_commands(node));
    s.push_str(
        r#"mkdir -p /tmp/shared
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none shared /tmp/shared \
    || echo "vmrig: cannot mount the shared directory (9p tag 'shared') at /tmp/shared" >&2
"#,
    );
    for (name, svc) in services_in_order(node) {
        let cmd = sh_quote(&svc.command);
        let run = match svc.user.as_deref() {
            None | Some("root") => format!("setsid /bin/sh -c {cmd}"),
            Some(user) => format!("setsid su {user} -c {cmd}"),
        };
        let _ = writeln!(s, "echo \"vmrig: starting service {name}\" >&2");
        let _ = writeln!(s, "(cd / && exec {run}) </dev/null >/dev/console 2>&1 &");
    }
    s
}

/// Shell commands that bring up loopback, the VLAN NICs (found by MAC) with
/// their addresses, and the user-mode NIC.
pub fn network_commands(node: &Node) -> String {
    let mut s = String::from(
        r#"ip link set lo up
nic() { for d in /sys/class/net/*; do [ "$(cat "$d/address")" = "$1" ] && { echo "${d##*/}"; return 0; }; done; return 1; }
"#,
    );
    for v in &node.vlans {
        let mac = v.mac(node.index);
        let _ = writeln!(
            s,
            "if i=$(nic {mac}); then ip addr add {addr}/{prefix} dev \"$i\"; ip link set \"$i\" up; \
             else echo \"vmrig: no NIC with MAC {mac} for VLAN {id}\" >&2; fi",
            addr = v.address,
            prefix = v.prefix,
            id = v.id
        );
    }
    s.push_str(
        r#"# The user-mode NIC (QEMU's default MAC): slirp's fixed addresses, no DHCP wait.
if i=$(nic 52:54:00:12:34:56); then
    ip addr add 10.0.2.15/24 dev "$i"; ip link set "$i" up; ip route add default via 10.0.2.2
    echo "nameserver 10.0.2.3" > /etc/resolv.conf
fi
"#,
    );
    s
}

/// Services ordered so that each comes after those in its `after` list.
fn services_in_order(node: &Node) -> Vec<(&String, &crate::definition::Service)> {
    let mut done: Vec<&String> = Vec::new();
    let mut out = Vec::new();
    let names: Vec<&String> = node.services.keys().collect();
    while out.len() < names.len() {
        let before = out.len();
        for (name, svc) in &node.services {
            if done.contains(&name) {
                continue;
            }
            let ready = svc.after.iter().all(|a| {
                let a = a.trim_end_matches(".service");
                !node.services.contains_key(a) || done.iter().any(|d| d.as_str() == a)
            });
            if ready {
                done.push(name);
                out.push((name, svc));
            }
        }
        if out.len() == before {
            // A cycle: start the rest in name order rather than never.
            for (name, svc) in &node.services {
                if !done.contains(&name) {
                    done.push(name);
                    out.push((name, svc));
                }
            }
        }
    }
    out
}

/// Names of the modules in load order (for logs and tests).
pub fn module_names(modules: &[PathBuf]) -> Vec<String> {
    modules
        .iter()
        .map(|m| module_name(&m.to_string_lossy()))
        .collect()
}

/// Helpers for the tests of guest archives and scripts (both flavours).
#[cfg(test)]
pub(crate) mod test_support {
    use crate::cpio::{read, Archive};
    use crate::definition::Definition;

    /// A definition parsed from `text`, as if read from `/t/vmrig.toml`.
    pub fn def(text: &str) -> Definition {
        Definition::parse(text, std::path::Path::new("/t/vmrig.toml")).unwrap()
    }

    /// The archive's records, as the kernel would unpack them.
    pub fn records(a: &Archive) -> Vec<read::Record> {
        let mut v = Vec::new();
        a.write_to(&mut v).unwrap();
        read::records(&v).unwrap()
    }

    /// The text of the record at `path` (no leading `/`).
    pub fn text(recs: &[read::Record], path: &str) -> String {
        let r = recs
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("{path} missing"));
        String::from_utf8(r.data.clone()).unwrap()
    }

    /// Panics unless bash parses `script`.
    pub fn assert_valid_shell(script: &str) {
        let out = std::process::Command::new("bash")
            .args(["-n", "-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{assert_valid_shell, def, records, text};
    use super::*;

    #[test]
    fn guest_paths_fold_usr() {
        assert_eq!(
            guest_path(Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1")),
            "/lib/x86_64-linux-gnu/libz.so.1"
        );
        assert_eq!(guest_path(Path::new("/usr/sbin/ip")), "/bin/ip");
        assert_eq!(
            guest_path(Path::new("/lib64/ld-linux-x86-64.so.2")),
            "/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(guest_path(Path::new("/etc/motd")), "/etc/motd");
    }

    #[test]
    fn node_archive_has_identity_users_and_files() {
        let d = def(r#"
            [nodes.server]
            vlans = [1, 2]
            [nodes.server.users.alice]
            uid = 1000
            groups = ["wheel", "video"]
            [nodes.server.services.web]
            command = "echo it's up"
            user = "alice"
            after = ["db.service"]
            [nodes.server.services.db]
            command = "true"
            [nodes.server.files]
            "/etc/motd" = "hello"
            [nodes.client]
        "#);
        let server = &d.nodes["server"];
        let recs = records(&node_archive(&d, server, &NodePrograms::default()).unwrap());
        assert_eq!(text(&recs, "etc/hostname"), "server\n");
        let hosts = text(&recs, "etc/hosts");
        assert!(
            hosts.contains("192.168.1.1 client\n") && hosts.contains("192.168.1.2 server\n"),
            "{hosts}"
        );
        assert!(text(&recs, "etc/passwd")
            .contains("alice:x:1000:100:alice:/home/alice:/bin/vmrig-user-shell"));
        let group = text(&recs, "etc/group");
        assert!(
            group.contains("wheel:x:1:alice\n") && group.contains("video:x:1000:alice\n"),
            "{group}"
        );
        let home = recs.iter().find(|r| r.path == "home/alice").unwrap();
        assert_eq!((home.uid, home.mode), (1000, 0o040700));
        assert_eq!(text(&recs, "etc/motd"), "hello");
        let rc = text(&recs, "etc/vmrig/rc");
        assert!(rc.contains("hostname server"));
        assert!(
            rc.contains("nic 52:54:00:12:01:02); then ip addr add 192.168.1.2/24"),
            "{rc}"
        );
        assert!(
            rc.contains("nic 52:54:00:12:02:02); then ip addr add 192.168.2.2/24"),
            "{rc}"
        );
        assert!(rc.contains("mount -t 9p") && rc.contains("shared /tmp/shared"));
        let db = rc.find("service db").unwrap();
        let web = rc.find("service web").unwrap();
        assert!(db < web, "after= orders services");
        assert!(
            rc.contains(r#"setsid su alice -c 'echo it'"'"'s up')"#),
            "{rc}"
        );
    }

    #[test]
    fn rc_is_valid_shell() {
        let d = def("[nodes.a]\n[nodes.a.services.s]\ncommand = \"echo \\\"$HOME\\\" 'q' `x`\"\n");
        assert_valid_shell(&node_rc(&d.nodes["a"]));
    }

    #[test]
    fn guest_scripts_are_valid_shell() {
        for script in [BACKDOOR, USER_SHELL, PROFILE] {
            assert_valid_shell(script);
        }
        assert!(BACKDOOR.contains("echo \"Spawning backdoor root shell...\""));
        assert!(BACKDOOR.contains("stty -F /dev/hvc0 raw -echo"));
        assert!(BACKDOOR.contains("} | exec cat > /dev/hvc0"));
    }
}
