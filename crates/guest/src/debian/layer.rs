//! Layer 2, the package layer: the base plus a node's packages, the host
//! kernel's modules and the test instrumentation, as a read-only qcow2 image;
//! cached by a hash of its inputs and built under a lock.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::base::{build_base, host_sources, host_suite, run_logged, BASE_PACKAGES, BASE_RECIPE};
use super::instrument::{instrument, MASKED_UNITS, RECIPE};
use super::packages::{user_package_bins, Packages};
use super::rootfs::{copy_tree, dir_size};
use crate::error::{Error, IoContext, Result};
use crate::kernel::Kernel;

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
        // Bumping the recipe must rebuild the layers it made.
        h.update(RECIPE.as_bytes());
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

/// Copies the host kernel's modules (less hardware a VM never has): udev loads
/// what the devices need, and the guest boots the host's kernel.
fn copy_modules(kernel: &Kernel, root: &Path) -> Result<()> {
    let dest = root.join("usr/lib/modules").join(&kernel.release);
    copy_tree(&kernel.modules_dir, &dest, &|rel| {
        !SKIPPED_MODULES.iter().any(|s| rel.starts_with(s))
    })
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
