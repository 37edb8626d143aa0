//! The host kernel a guest boots, and the modules it loads, resolved with their
//! dependencies from the kernel's own `modules.dep`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Modules every guest loads, and why. Built-in ones (per `modules.builtin`) are skipped.
pub const GUEST_MODULES: &[(&str, &str)] = &[
    ("virtio_pci", "virtio devices on the PCI bus"),
    ("virtio_console", "the backdoor on /dev/hvc0"),
    ("virtio_net", "VLAN and user-mode NICs"),
    ("virtio_rng", "entropy from -device virtio-rng-pci"),
    ("virtio_blk", "the NIX_DISK_IMAGE disk"),
    ("9pnet_virtio", "the shared directory at /tmp/shared"),
    ("9p", "the shared directory at /tmp/shared"),
];

/// A kernel image and its module tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The bzImage.
    pub image: PathBuf,
    /// Its release, like `6.1.0-56-amd64`.
    pub release: String,
    /// `/lib/modules/<release>`.
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// Finds the newest kernel in `boot_dir` (`vmlinuz-*`) that has a module tree
    /// under `modules_root` (usually `/boot` and `/lib/modules`).
    pub fn find(boot_dir: &Path, modules_root: &Path) -> Result<Self> {
        let hint = || Error::HostMissing {
            what: format!(
                "a kernel with modules ({}/vmlinuz-* and {}/<release>)",
                boot_dir.display(),
                modules_root.display()
            ),
            hint: "install one with `apt-get install linux-image-amd64`, or pass --kernel".into(),
        };
        let mut candidates: Vec<(Vec<u64>, String, PathBuf)> = Vec::new();
        let entries = std::fs::read_dir(boot_dir).map_err(|_| hint())?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(release) = name.strip_prefix("vmlinuz-") else {
                continue;
            };
            if modules_root.join(release).join("modules.dep").is_file() {
                candidates.push((version_key(release), release.to_owned(), entry.path()));
            }
        }
        candidates.sort();
        let (_, release, image) = candidates.pop().ok_or_else(hint)?;
        Ok(Kernel {
            image,
            modules_dir: modules_root.join(&release),
            release,
        })
    }

    /// Uses the given bzImage; its release is read from the image header and
    /// must have a module tree under `modules_root`.
    pub fn from_image(image: &Path, modules_root: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(image).context(|| format!("cannot read kernel {}", image.display()))?;
        let release = bzimage_release(&bytes).ok_or_else(|| Error::HostMissing {
            what: format!("a kernel release string in {}", image.display()),
            hint: "pass an x86 bzImage (like /boot/vmlinuz-*)".into(),
        })?;
        let modules_dir = modules_root.join(&release);
        if !modules_dir.join("modules.dep").is_file() {
            return Err(Error::HostMissing {
                what: format!(
                    "{}/modules.dep for kernel {}",
                    modules_dir.display(),
                    image.display()
                ),
                hint: "install the kernel's package (it ships the modules) or run depmod".into(),
            });
        }
        Ok(Kernel {
            image: image.to_owned(),
            release,
            modules_dir,
        })
    }

    /// The module files to load for `wanted`, dependencies first.
    pub fn resolve_modules(&self, wanted: &[(&str, &str)]) -> Result<Vec<PathBuf>> {
        let dep_path = self.modules_dir.join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path)
            .context(|| format!("cannot read {}", dep_path.display()))?;
        let builtin =
            std::fs::read_to_string(self.modules_dir.join("modules.builtin")).unwrap_or_default();
        let deps = ModuleDeps::parse(&dep, &builtin);
        let mut order = Vec::new();
        for (name, why) in wanted {
            deps.resolve(name, &mut order)
                .map_err(|module| Error::Module {
                    kernel: self.release.clone(),
                    module,
                    modules_dep: dep_path.clone(),
                    why: (*why).to_owned(),
                })?;
        }
        Ok(order
            .into_iter()
            .map(|rel| self.modules_dir.join(rel))
            .collect())
    }
}

/// Sort key for kernel releases: the numbers in it, in order.
fn version_key(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The release in an x86 boot-protocol header (`kernel_version` at 0x20e, as an
/// offset from 0x200), like `6.1.0-56-amd64`.
pub fn bzimage_release(image: &[u8]) -> Option<String> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let offset = u16::from_le_bytes([*image.get(0x20e)?, *image.get(0x20f)?]) as usize + 0x200;
    let tail = image.get(offset..)?;
    let end = tail.iter().position(|b| *b == 0 || *b == b' ')?;
    let release = std::str::from_utf8(&tail[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// A parsed `modules.dep` (+ `modules.builtin`).
#[derive(Debug, Default, Clone)]
pub struct ModuleDeps {
    /// Module name -> (path relative to the module tree, dependency paths).
    modules: BTreeMap<String, (String, Vec<String>)>,
    builtin: BTreeSet<String>,
}

/// Module name from a path: basename without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleDeps {
    /// Parses `modules.dep` lines (`path: dep dep ...`) and `modules.builtin` lines (paths).
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut modules = BTreeMap::new();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            modules.insert(module_name(path), (path.trim().to_owned(), deps));
        }
        let builtin = modules_builtin.lines().map(module_name).collect();
        ModuleDeps { modules, builtin }
    }

    /// Appends `name`'s file and those of everything it needs to `order`,
    /// dependencies first, each once. Built-in modules add nothing. Fails with
    /// the name of the first module that is neither a file nor built in.
    pub fn resolve(&self, name: &str, order: &mut Vec<String>) -> Result<(), String> {
        let name = name.replace('-', "_");
        if self.builtin.contains(&name) {
            return Ok(());
        }
        let (path, _) = self.modules.get(&name).ok_or_else(|| name.clone())?;
        self.visit(path, order, &mut BTreeSet::new())
    }

    fn visit(
        &self,
        path: &str,
        order: &mut Vec<String>,
        visiting: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        if order.iter().any(|p| p == path) || !visiting.insert(path.to_owned()) {
            return Ok(());
        }
        let name = module_name(path);
        let (_, deps) = self.modules.get(&name).ok_or_else(|| name.clone())?;
        for dep in deps {
            self.visit(dep, order, visiting)?;
        }
        order.push(path.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
";

    fn resolve(deps: &ModuleDeps, names: &[&str]) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        for n in names {
            deps.resolve(n, &mut order)?;
        }
        Ok(order)
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let deps = ModuleDeps::parse(DEP, "kernel/drivers/virtio/virtio_pci.ko\n");
        let order = resolve(
            &deps,
            &[
                "9p",
                "9pnet_virtio",
                "virtio_rng",
                "virtio_net",
                "virtio_pci",
            ],
        )
        .unwrap();
        let pos = |m: &str| order.iter().position(|p| module_name(p) == m).unwrap();
        assert!(pos("netfs") < pos("fscache") && pos("fscache") < pos("9p"));
        assert!(pos("9pnet") < pos("9p") && pos("9pnet") < pos("9pnet_virtio"));
        assert!(pos("failover") < pos("net_failover") && pos("net_failover") < pos("virtio_net"));
        assert!(pos("virtio") < pos("virtio_rng"));
        let unique: BTreeSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len());
        assert!(
            !order.iter().any(|p| p.contains("virtio_pci")),
            "built-in modules are skipped"
        );
        assert!(order.contains(&"kernel/drivers/char/hw_random/virtio-rng.ko".to_owned()));
    }

    #[test]
    fn unknown_module_is_named() {
        let deps = ModuleDeps::parse(DEP, "");
        assert_eq!(
            resolve(&deps, &["virtio_console"]),
            Err("virtio_console".into())
        );
        // A dependency missing from the file is named too.
        let deps = ModuleDeps::parse("a.ko: b.ko\n", "");
        assert_eq!(resolve(&deps, &["a"]), Err("b".into()));
    }

    #[test]
    fn cycles_terminate() {
        let deps = ModuleDeps::parse("a.ko: b.ko\nb.ko: a.ko\n", "");
        assert_eq!(resolve(&deps, &["a"]).unwrap().len(), 2);
    }

    #[test]
    fn names_and_versions() {
        assert_eq!(module_name("kernel/x/virtio-rng.ko.zst"), "virtio_rng");
        assert!(version_key("6.10.0-1-amd64") > version_key("6.9.12-3-amd64"));
    }

    #[test]
    fn release_from_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        img[0x500..0x520].copy_from_slice(b"6.1.0-56-amd64 (debian@x) #1 SMP");
        assert_eq!(bzimage_release(&img).as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(bzimage_release(&[0; 10]), None);
    }

    #[test]
    fn host_kernel_when_present() {
        // The set-up installs a Debian kernel; without one this checks the error says how to get it.
        match Kernel::find(Path::new("/boot"), Path::new("/lib/modules")) {
            Ok(k) => {
                let from_header = Kernel::from_image(&k.image, Path::new("/lib/modules")).unwrap();
                assert_eq!(from_header.release, k.release);
                let mods = k.resolve_modules(GUEST_MODULES).unwrap();
                assert!(mods
                    .iter()
                    .any(|p| module_name(&p.to_string_lossy()) == "virtio_console"));
            }
            Err(e) => assert!(
                e.to_string().contains("apt-get install linux-image-amd64"),
                "{e}"
            ),
        }
    }
}
