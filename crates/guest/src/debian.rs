//! The `debian` flavour: systemd guests on a Debian root file system.
//!
//! Three layers, each cached by a hash of its inputs:
//! 1. the **base**, `debian/base/<key>.tar`: mmdebstrap's minbase of the host's
//!    release with systemd, from the archive the host's apt uses; built once and
//!    shared by every node and every test;
//! 2. the **package layer**, `debian/layers/<key>.qcow2`: the base plus a node's
//!    `packages` (apt-get in a chroot), the host kernel's modules, and the
//!    test instrumentation every node shares (masked serial gettys, journald on
//!    the serial console, per-user PATH through pam_env); nodes with the same
//!    package lists share it;
//! 3. the **node**: a small busybox initrd that mounts the disk, copies the
//!    node's own files in (hostname, hosts, units, users, services), sets the
//!    addresses and hands over to systemd. The start script boots the disk as a
//!    qcow2 overlay on the package layer, so a test never writes to the cache.
//!
//! Building layers 1 and 2 needs root and the package archive, on first use
//! only; later builds work offline.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::cpio::{Archive, Kind};
use crate::definition::{Definition, FileContent, Node};
use crate::error::{Error, IoContext, Result};
use crate::kernel::Kernel;
use crate::script::sh_quote;

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

/// Bumped whenever how the base is built changes.
const BASE_RECIPE: &str = "vmrig-debian-base v1";

/// Bumped whenever what a layer holds changes (the build code, `instrument`).
const RECIPE: &str = "vmrig-debian v3";

/// Free space the root file system gets beyond its contents, in MiB.
const FREE_MIB: u64 = 2048;

/// Module trees left out of the guest: hardware a VM never has.
const SKIPPED_MODULES: &[&str] = &[
    "kernel/sound",
    "kernel/drivers/media",
    "kernel/drivers/net/wireless",
    "kernel/drivers/net/ethernet",
    "kernel/drivers/infiniband",
    "kernel/drivers/staging",
    "kernel/drivers/gpu/drm/amd",
    "kernel/drivers/gpu/drm/nouveau",
    "kernel/drivers/gpu/drm/i915",
    "kernel/drivers/gpu/drm/radeon",
    "kernel/drivers/bluetooth",
    "kernel/drivers/isdn",
    "kernel/drivers/iio",
    "kernel/net/wireless",
    "kernel/net/mac80211",
    "kernel/net/bluetooth",
];

/// Units masked in every guest: serial gettys would steal the backdoor's console
/// (as NixOS's test instrumentation disables them), timers and the rest only cost
/// time.
const MASKED_UNITS: &[&str] = &[
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
    // use: early loading of drm (udev loads the display's driver when it appears),
    // configfs, fuse and their mounts.
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

/// A node's package lists: what its layer is built from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Packages {
    /// `packages`: on everybody's PATH.
    pub system: BTreeSet<String>,
    /// Users' packages that are not system packages: hidden from `/usr/bin`,
    /// reachable through `/etc/profiles/per-user/<user>/bin`.
    pub user_only: BTreeSet<String>,
    /// Every user package (those in `system` too): each gets
    /// `/usr/lib/vmrig/packages/<package>/bin`.
    pub user: BTreeSet<String>,
}

impl Packages {
    /// The lists of one node.
    pub fn of(node: &Node) -> Packages {
        let system: BTreeSet<String> = node.packages.iter().cloned().collect();
        let user: BTreeSet<String> = node
            .users
            .values()
            .flat_map(|u| u.packages.iter().cloned())
            .collect();
        let user_only = user.difference(&system).cloned().collect();
        Packages {
            system,
            user_only,
            user,
        }
    }
}

/// A built (or cached) package layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The qcow2 image, read-only backing file of each node's disk.
    pub image: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
}

/// Returns the package layer for `packages`, building the base and the layer
/// when they are not cached. `log` gets progress lines.
pub fn layer(
    cache: &Path,
    kernel: &Kernel,
    packages: &Packages,
    log: &mut dyn FnMut(&str),
) -> Result<Layer> {
    let dir = cache.join("debian");
    let sources = host_sources()?;
    let suite = host_suite()?;
    let base_key = {
        let mut h = blake3::Hasher::new();
        for part in [BASE_RECIPE, &suite, &BASE_PACKAGES.join(",")] {
            h.update(part.as_bytes());
            h.update(b"\0");
        }
        for (path, text) in &sources {
            h.update(path.as_os_str().as_encoded_bytes());
            h.update(text.as_bytes());
        }
        h.finalize().to_hex()[..32].to_owned()
    };
    let layer_key = {
        let mut h = blake3::Hasher::new();
        h.update(base_key.as_bytes());
        h.update(LAYER_SCRIPT.as_bytes());
        h.update(MASKED_UNITS.join(",").as_bytes());
        h.update(SKIPPED_MODULES.join(",").as_bytes());
        h.update(kernel.release.as_bytes());
        let dep = std::fs::read(kernel.modules_dir.join("modules.dep")).unwrap_or_default();
        h.update(&dep);
        for list in [&packages.system, &packages.user_only, &packages.user] {
            for p in list {
                h.update(p.as_bytes());
                h.update(b",");
            }
            h.update(b"\0");
        }
        h.finalize().to_hex()[..32].to_owned()
    };
    let image = dir.join("layers").join(format!("{layer_key}.qcow2"));
    if image.is_file() {
        return Ok(Layer {
            image,
            cached: true,
        });
    }
    std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
    // Parallel builds of one layer wait for each other instead of racing.
    let _lock = Lock::exclusive(&dir.join("lock"))?;
    if image.is_file() {
        return Ok(Layer {
            image,
            cached: true,
        });
    }
    // Under the lock no other build runs: what a killed build left is garbage.
    for sub in ["layers", "base"] {
        if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    need_root()?;
    let base = dir.join("base").join(format!("{base_key}.tar"));
    if !base.is_file() {
        build_base(&base, &suite, &sources, log)?;
    }
    build_layer(&base, &image, kernel, packages, log)?;
    Ok(Layer {
        image,
        cached: false,
    })
}

fn need_root() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(Error::HostMissing {
            what: "root privileges to build a debian-flavour image (first use only)".into(),
            hint:
                "run this build once as root (sudo vmrig guest build ...); later runs use the cache"
                    .into(),
        });
    }
    Ok(())
}

/// The host's apt sources (one-line `.list` and deb822 `.sources` files).
fn host_sources() -> Result<Vec<(PathBuf, String)>> {
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
fn host_suite() -> Result<String> {
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

fn build_base(
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
fn run_logged(cmd: &mut Command, what: &str) -> Result<()> {
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

/// Installs the packages in a chroot of the extracted base, in a private mount
/// namespace (`unshare -m`), so no mount outlives the build, even a killed one.
const LAYER_SCRIPT: &str = r#"set -eu
root=$1; shift
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
if [ $# -gt 0 ]; then
    chroot "$root" apt-get -q update
    chroot "$root" apt-get -q install -y --no-install-recommends "$@"
    chroot "$root" apt-get clean
fi
rm -f "$root/usr/sbin/policy-rc.d"
chroot "$root" passwd -dq root
"#;

fn build_layer(
    base: &Path,
    image: &Path,
    kernel: &Kernel,
    packages: &Packages,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let start = Instant::now();
    let layers = image.parent().expect("cache paths have parents");
    std::fs::create_dir_all(layers).context(|| format!("cannot create {}", layers.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(layers)
        .context(|| format!("cannot create a directory in {}", layers.display()))?;
    let root = work.path().join("root");
    std::fs::create_dir(&root).context(|| format!("cannot create {}", root.display()))?;
    run_logged(
        Command::new("tar")
            .args(["-x", "-p", "--numeric-owner", "-f"])
            .arg(base)
            .arg("-C")
            .arg(&root),
        "tar",
    )?;
    let all: Vec<&String> = packages.system.union(&packages.user).collect();
    if !all.is_empty() {
        log(&format!(
            "debian: installing {} into a new layer",
            all.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
        ));
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        LAYER_SCRIPT,
        "sh",
    ])
    .arg(&root)
    .args(all);
    run_logged(&mut cmd, "apt-get in the image")?;

    user_package_bins(&root, packages)?;
    copy_modules(kernel, &root)?;
    run_logged(
        Command::new("chroot")
            .arg(&root)
            .args(["depmod", "-a", &kernel.release]),
        "depmod",
    )?;
    instrument(&root)?;

    let used = dir_size(&root);
    let size_mib = used / (1 << 20) * 5 / 4 + FREE_MIB;
    let raw = work.path().join("root.img");
    std::fs::File::create(&raw)
        .and_then(|f| f.set_len(size_mib << 20))
        .context(|| format!("cannot create {}", raw.display()))?;
    run_logged(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vmrig-root", "-d"])
            .arg(&root)
            .arg(&raw),
        "mkfs.ext4",
    )?;
    let tmp = work.path().join("root.qcow2");
    run_logged(
        Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(&raw)
            .arg(&tmp),
        "qemu-img",
    )?;
    // Backing files must never change under an overlay.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444))
        .context(|| format!("cannot chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, image)
        .context(|| format!("cannot move {} into place", image.display()))?;
    log(&format!(
        "debian: layer built in {:.1} s ({} MiB of files, {} MiB image)",
        start.elapsed().as_secs_f64(),
        used >> 20,
        std::fs::metadata(image).map(|m| m.len() >> 20).unwrap_or(0)
    ));
    Ok(())
}

/// Gives each user package `/usr/lib/vmrig/packages/<package>/bin`, and moves
/// the programs of users' packages out of everybody's PATH (NixOS's per-user
/// packages: alice's firefox is not root's).
fn user_package_bins(root: &Path, packages: &Packages) -> Result<()> {
    for pkg in &packages.user {
        let bin = format!("/usr/lib/vmrig/packages/{pkg}/bin");
        let host_bin = root.join(bin.trim_start_matches('/'));
        std::fs::create_dir_all(&host_bin)
            .context(|| format!("cannot create {}", host_bin.display()))?;
        let hide = packages.user_only.contains(pkg);
        for program in package_programs(root, pkg)? {
            let name = program.rsplit('/').next().unwrap_or(&program).to_owned();
            let at = inside(root, &program);
            let meta = match std::fs::symlink_metadata(&at) {
                Ok(m) => m,
                Err(_) => continue,
            };
            let dest = host_bin.join(&name);
            if !hide {
                symlink(&program, &dest)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&at)
                    .context(|| format!("cannot read link {}", at.display()))?;
                let dir = Path::new(&program).parent().unwrap_or(Path::new("/"));
                symlink(normalize(&dir.join(target)), &dest)?;
                std::fs::remove_file(&at).context(|| format!("cannot remove {}", at.display()))?;
            } else {
                std::fs::rename(&at, &dest)
                    .context(|| format!("cannot move {} to {}", at.display(), dest.display()))?;
            }
        }
    }
    Ok(())
}

/// The programs (`/usr/bin/x`, `/bin/x`, `/usr/sbin/x`, `/sbin/x`) a package installed.
fn package_programs(root: &Path, pkg: &str) -> Result<Vec<String>> {
    let info = root.join("var/lib/dpkg/info");
    let name = pkg.split(':').next().unwrap_or(pkg);
    let list = [format!("{name}.list"), format!("{name}:amd64.list")]
        .into_iter()
        .map(|f| info.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Command {
            command: format!("dpkg -L {name}"),
            message: format!("package `{name}` is not installed in the image (no {name}.list in /var/lib/dpkg/info)"),
        })?;
    let text =
        std::fs::read_to_string(&list).context(|| format!("cannot read {}", list.display()))?;
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| {
            ["/usr/bin/", "/bin/", "/usr/sbin/", "/sbin/"]
                .iter()
                .any(|d| {
                    l.strip_prefix(d)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
                })
        })
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A guest path as a host path inside `root`.
fn inside(root: &Path, guest: &str) -> PathBuf {
    root.join(guest.trim_start_matches('/'))
}

/// Resolves `.` and `..` lexically in an absolute guest path.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

fn symlink(target: impl AsRef<Path>, link: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target.as_ref(), link).context(|| {
        format!(
            "cannot link {} to {}",
            link.display(),
            target.as_ref().display()
        )
    })
}

/// Copies the host kernel's modules (less hardware a VM never has): udev loads
/// what the devices need, and the guest boots the host's kernel.
fn copy_modules(kernel: &Kernel, root: &Path) -> Result<()> {
    let dest = root.join("usr/lib/modules").join(&kernel.release);
    copy_tree(&kernel.modules_dir, &dest, &|rel| {
        !SKIPPED_MODULES.iter().any(|s| rel.starts_with(s))
    })
}

fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
    fn walk(base: &Path, dir: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
        let entries =
            std::fs::read_dir(dir).context(|| format!("cannot read {}", dir.display()))?;
        for e in entries {
            let e = e.context(|| format!("cannot read {}", dir.display()))?;
            let path = e.path();
            let rel = path.strip_prefix(base).expect("under base");
            if !keep(rel) {
                continue;
            }
            let dest = to.join(rel);
            let ty = e
                .file_type()
                .context(|| format!("cannot stat {}", path.display()))?;
            if ty.is_dir() {
                std::fs::create_dir_all(&dest)
                    .context(|| format!("cannot create {}", dest.display()))?;
                walk(base, &path, to, keep)?;
            } else if ty.is_symlink() {
                let target = std::fs::read_link(&path)
                    .context(|| format!("cannot read link {}", path.display()))?;
                symlink(target, &dest)?;
            } else {
                std::fs::copy(&path, &dest)
                    .context(|| format!("cannot copy {} to {}", path.display(), dest.display()))?;
            }
        }
        Ok(())
    }
    std::fs::create_dir_all(to).context(|| format!("cannot create {}", to.display()))?;
    walk(from, from, to, keep)
}

/// The test instrumentation every debian guest shares.
fn instrument(root: &Path) -> Result<()> {
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

fn dir_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.blocks() * 512;
        }
    }
    total
}

/// An exclusive `flock` held until dropped.
struct Lock {
    _file: std::fs::File,
}

impl Lock {
    fn exclusive(path: &Path) -> Result<Lock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .context(|| format!("cannot open lock {}", path.display()))?;
        // Blocks until the lock is ours.
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).map_err(|e| {
            Error::Io {
                context: format!("cannot lock {}", path.display()),
                source: e.into(),
            }
        })?;
        Ok(Lock { _file: f })
    }
}

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

/// NixOS's backdoor.service, with ordinary dependencies, so it is up before
/// `multi-user.target` is reached. NixOS also waits for `dev-hvc0.device`; here
/// the initrd loaded virtio_console, so the console exists before systemd
/// starts, and waiting for udev to announce it costs seconds under TCG.
const BACKDOOR_UNIT: &str = "\
[Unit]
Description=vmrig test backdoor (root shell on /dev/hvc0)

[Service]
ExecStart=/etc/vmrig/backdoor
KillSignal=SIGHUP

[Install]
WantedBy=multi-user.target
";

const SHARED_MOUNT: &str = "\
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

fn service_unit(name: &str, svc: &crate::definition::Service) -> String {
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
cp -a /etc/vmrig/root/. /newroot/ || fail "cannot copy the node's files onto the root disk"
cp /etc/vmrig/setup /newroot/etc/vmrig/setup
chroot /newroot /etc/vmrig/setup || fail "cannot set up the node's users"
mkdir -p /newroot/tmp/shared
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
    fn user_only_packages_are_split_from_system_ones() {
        let d = def(r#"
            [nodes.m]
            flavour = "debian"
            packages = ["curl"]
            [nodes.m.users.alice]
            packages = ["firefox-esr", "curl"]
            aliases = { firefox = "firefox-esr" }
        "#);
        let p = Packages::of(&d.nodes["m"]);
        assert_eq!(p.system, BTreeSet::from(["curl".to_owned()]));
        assert_eq!(p.user_only, BTreeSet::from(["firefox-esr".to_owned()]));
        assert_eq!(p.user.len(), 2);
    }

    #[test]
    fn normalize_resolves_relative_links() {
        assert_eq!(
            normalize(Path::new("/usr/bin/../lib/firefox-esr/firefox-esr")),
            Path::new("/usr/lib/firefox-esr/firefox-esr")
        );
        assert_eq!(normalize(Path::new("/a/./b/../../c")), Path::new("/c"));
    }

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
}
