//! `vmrig guest build`: definition in, start scripts and cached guests out.
//!
//! Cache layout (default `$XDG_CACHE_HOME/vmrig` or `~/.cache/vmrig`):
//! `boot-kernels/<hash>/{vmlinux,bzImage}` (the kernels booted), `base/<hash>.cpio` (shared by every node),
//! `guests/<hash>/initrd` (base + node archive) and `accel/<hash>` (the result
//! of a KVM probe). Every hash covers the bytes of every input and the vmrig
//! version; entries are written to a temporary name and renamed, so concurrent
//! builds never see half a file.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::accel::{probe_kvm, Accel, AccelChoice, PROBE_TIMEOUT};
use crate::cpio::Archive;
use crate::definition::{Definition, Flavour};
use crate::error::{Error, IoContext, Result};
use crate::host;
use crate::image::{self, BaseInputs, NodePrograms, BASE_PROGRAMS};
use crate::kernel::{Kernel, GUEST_MODULES};
use crate::script::{start_script, BootFiles};

/// Options of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Where built guests are kept.
    pub cache_dir: PathBuf,
    /// Accelerator for the start scripts.
    pub accel: AccelChoice,
    /// Kernel image; the newest `/boot/vmlinuz-*` with modules when `None`.
    pub kernel: Option<PathBuf>,
    /// QEMU binary used by the KVM probe.
    pub qemu: String,
    /// KVM device probed by `AccelChoice::Auto`.
    pub kvm_device: PathBuf,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            cache_dir: default_cache_dir(),
            accel: AccelChoice::Tcg,
            kernel: None,
            qemu: "qemu-system-x86_64".into(),
            kvm_device: "/dev/kvm".into(),
        }
    }
}

/// `$VMRIG_CACHE_DIR`, else `$XDG_CACHE_HOME/vmrig`, else `~/.cache/vmrig`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VMRIG_CACHE_DIR") {
        return d.into();
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("vmrig");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/vmrig")
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The definition built.
    pub definition: Definition,
    /// One entry per node, in name order.
    pub nodes: Vec<BuiltNode>,
    /// The accelerator the scripts use by default, and why.
    pub accel: Accel,
    /// Why that accelerator.
    pub accel_reason: String,
    /// The kernel release booted.
    pub kernel_release: String,
    /// Whether every guest came from the cache.
    pub cached: bool,
    /// Wall time of the build.
    pub elapsed: Duration,
}

/// One built node.
#[derive(Debug, Clone)]
pub struct BuiltNode {
    /// Node name.
    pub name: String,
    /// `OUT/bin/run-<name>-vm`.
    pub start_script: PathBuf,
    /// The kernel in the cache.
    pub kernel: PathBuf,
    /// The initrd in the cache.
    pub initrd: PathBuf,
    /// Whether the initrd came from the cache.
    pub cached: bool,
}

/// Builds every node of the definition at `definition` into `out`.
pub fn build(definition: &Path, out: &Path, opts: &BuildOptions) -> Result<BuildOutput> {
    let def = Definition::load(definition)?;
    build_definition(def, out, opts)
}

/// Builds an already parsed definition into `out`.
pub fn build_definition(def: Definition, out: &Path, opts: &BuildOptions) -> Result<BuildOutput> {
    let start = Instant::now();
    let kernel = match &opts.kernel {
        Some(image) => Kernel::from_image(image, Path::new("/lib/modules"))?,
        None => Kernel::find(Path::new("/boot"), Path::new("/lib/modules"))?,
    };
    let programs = node_programs(&def)?;

    let cache = &opts.cache_dir;
    std::fs::create_dir_all(cache)
        .context(|| format!("cannot create cache directory {}", cache.display()))?;

    let kernel_key = hash_file(&kernel.image)?;
    let (kernel_path, bzimage_path, kernel_cached) = boot_kernel(
        &cache.join("boot-kernels").join(&kernel_key[..32]),
        &kernel.image,
    )?;
    let mut all_cached = kernel_cached;

    // The base archives (one per flavour in use): every host file in them, hashed by content.
    let mut bases: std::collections::BTreeMap<Flavour, (BaseInputs, String, PathBuf)> =
        std::collections::BTreeMap::new();
    for flavour in def.nodes.values().map(|n| n.flavour) {
        if bases.contains_key(&flavour) {
            continue;
        }
        let modules = match flavour {
            Flavour::Busybox => GUEST_MODULES,
            Flavour::Debian => crate::debian::INITRD_MODULES,
        };
        let base = base_inputs(kernel.clone(), modules)?;
        let mut h = blake3::Hasher::new();
        h.update(b"vmrig-guest base v1\0");
        h.update(env!("CARGO_PKG_VERSION").as_bytes());
        let base_archive = image::base_archive(&base, &decompress_module)
            .context(|| "cannot assemble the base guest".to_owned())?;
        hash_archive(&mut h, &base_archive)?;
        let base_key = h.finalize().to_hex()[..32].to_owned();
        let base_path = cache.join("base").join(format!("{base_key}.cpio"));
        if !base_path.is_file() {
            all_cached = false;
            write_atomic(&base_path, |f| base_archive.write_to(f).map(drop))?;
        }
        bases.insert(flavour, (base, base_key, base_path));
    }
    let (accel, accel_reason) = match bases.values().next() {
        Some((probe_base, ..)) => resolve_accel(opts, probe_base, &kernel_key)?,
        // A driver-only test: nothing boots, nothing to probe.
        None => (Accel::Tcg, "no nodes: nothing boots".to_owned()),
    };

    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).context(|| format!("cannot create {}", bin.display()))?;
    let mut nodes = Vec::new();
    for node in def.nodes.values() {
        let (_, base_key, base_path) = &bases[&node.flavour];
        let (archive, layer) = match node.flavour {
            Flavour::Busybox => {
                let archive = image::node_archive(&def, node, &programs[&node.name])
                    .context(|| format!("node `{}`: cannot assemble the guest", node.name))?;
                (archive, None)
            }
            Flavour::Debian => {
                let layer = crate::debian::layer(
                    cache,
                    &kernel,
                    &crate::debian::Packages::of(node),
                    &mut |line| tracing::info!("node `{}`: {line}", node.name),
                )
                .map_err(|e| node_error(&def, node, e))?;
                all_cached &= layer.cached;
                (crate::debian::node_archive(&def, node), Some(layer.image))
            }
        };
        let mut h = blake3::Hasher::new();
        h.update(b"vmrig-guest node v1\0");
        h.update(base_key.as_bytes());
        hash_archive(&mut h, &archive)?;
        let key = h.finalize().to_hex()[..32].to_owned();
        let initrd = cache.join("guests").join(&key).join("initrd");
        let cached = initrd.is_file();
        if !cached {
            all_cached = false;
            write_atomic(&initrd, |f| {
                std::io::copy(&mut std::fs::File::open(base_path)?, f)?;
                archive.write_to(f).map(drop)
            })?;
        }
        let script_path = bin.join(format!("run-{}-vm", node.name));
        let script = start_script(
            node,
            BootFiles {
                kernel: if node.graphics {
                    &bzimage_path
                } else {
                    &kernel_path
                },
                initrd: &initrd,
                disk_base: layer.as_deref(),
                params: match node.flavour {
                    Flavour::Busybox => "",
                    Flavour::Debian => crate::debian::KERNEL_PARAMS,
                },
            },
            accel,
        );
        write_if_changed(&script_path, script.as_bytes(), 0o755)?;
        let guest_dir = out.join("guests").join(&node.name);
        std::fs::create_dir_all(&guest_dir)
            .context(|| format!("cannot create {}", guest_dir.display()))?;
        let mut links = vec![("kernel", &kernel_path), ("initrd", &initrd)];
        if let Some(layer) = &layer {
            links.push(("disk-base.qcow2", layer));
        }
        for (name, target) in links {
            relink(&guest_dir.join(name), target)?;
        }
        nodes.push(BuiltNode {
            name: node.name.clone(),
            start_script: script_path,
            kernel: kernel_path.clone(),
            initrd,
            cached,
        });
    }
    let nodes_json = serde_json::to_vec_pretty(&def.nodes).expect("definitions serialize");
    write_if_changed(&out.join("nodes.json"), &nodes_json, 0o644)?;

    Ok(BuildOutput {
        definition: def,
        nodes,
        accel,
        accel_reason,
        kernel_release: kernel.release.clone(),
        cached: all_cached,
        elapsed: start.elapsed(),
    })
}

/// Names the node in a debian build error.
fn node_error(def: &Definition, node: &crate::definition::Node, e: Error) -> Error {
    match e {
        Error::Command { command, message } => Error::Command {
            command,
            message: format!(
                "{}: node `{}` (flavour debian): {message}",
                def.path.display(),
                node.name
            ),
        },
        other => other,
    }
}

fn base_inputs(kernel: Kernel, wanted: &[(&str, &str)]) -> Result<BaseInputs> {
    let modules = kernel.resolve_modules(wanted)?;
    let busybox = static_program("busybox", "busybox-static")?;
    let bash = static_program("bash-static", "bash-static")?;
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .map_err(|e| Error::Command {
            command: format!("{} --list", busybox.display()),
            message: e.to_string(),
        })?;
    let applets = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut programs = Vec::new();
    for (guest_name, host_name) in BASE_PROGRAMS {
        let p = host::resolve(host_name).map_err(|why| Error::HostMissing {
            what: format!("`{host_name}` (guests need it as `{guest_name}`: {why})"),
            hint: "run the set-up (./setup.sh), or apt-get install coreutils netcat-openbsd".into(),
        })?;
        programs.push(((*guest_name).to_owned(), p));
    }
    Ok(BaseInputs {
        kernel,
        modules,
        busybox,
        applets,
        bash,
        programs,
    })
}

/// A program that must be statically linked (it runs before any library is there).
fn static_program(name: &str, package: &str) -> Result<PathBuf> {
    let missing = |why: String| Error::HostMissing {
        what: format!("a statically linked `{name}` ({why})"),
        hint: format!("apt-get install {package}"),
    };
    let path = host::find_program(name).map_err(missing)?;
    let libs = host::libraries(&path).map_err(missing)?;
    if !libs.is_empty() {
        return Err(missing(format!("{} is dynamically linked", path.display())));
    }
    Ok(path)
}

fn node_programs(def: &Definition) -> Result<std::collections::BTreeMap<String, NodePrograms>> {
    let mut all = std::collections::BTreeMap::new();
    for node in def.nodes.values() {
        let resolve = |entries: &[String],
                       field: &dyn Fn(usize) -> String|
         -> Result<Vec<(String, host::Program)>> {
            entries
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    let program = host::resolve(entry).map_err(|why| Error::MissingProgram {
                        path: def.path.clone(),
                        node: node.name.clone(),
                        field: field(i),
                        program: entry.clone(),
                        why,
                    })?;
                    Ok((image::package_name(entry), program))
                })
                .collect()
        };
        let mut progs = NodePrograms::default();
        // Debian nodes name apt packages, installed in the image, not host programs.
        let host_programs = node.flavour == Flavour::Busybox;
        if host_programs {
            progs.system = resolve(&node.packages, &|i| format!("packages[{i}]"))?;
        }
        for (uname, user) in node.users.iter().filter(|_| host_programs) {
            let list = resolve(&user.packages, &|i| format!("users.{uname}.packages[{i}]"))?;
            if !list.is_empty() {
                progs.users.insert(uname.clone(), list);
            }
        }
        for (path, file) in &node.files {
            if let crate::definition::FileContent::Source(src) = &file.content {
                if !src.is_file() {
                    return Err(Error::Invalid {
                        path: def.path.clone(),
                        node: Some(node.name.clone()),
                        field: format!("files.\"{path}\".source"),
                        message: format!("{} is not a readable file", src.display()),
                    });
                }
            }
        }
        all.insert(node.name.clone(), progs);
    }
    Ok(all)
}

fn resolve_accel(
    opts: &BuildOptions,
    base: &BaseInputs,
    kernel_key: &str,
) -> Result<(Accel, String)> {
    match opts.accel {
        AccelChoice::Tcg => Ok((Accel::Tcg, "chosen with --accel tcg (the default)".into())),
        AccelChoice::Kvm => Ok((Accel::Kvm, "chosen with --accel kvm".into())),
        AccelChoice::Auto => {
            // The probe's answer depends on the host, QEMU and kernel: cache it per that.
            let qemu = host::find_program(&opts.qemu).ok();
            let qemu_id = qemu
                .as_ref()
                .and_then(|q| std::fs::metadata(q).ok())
                .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
                .unwrap_or_default();
            let mut h = blake3::Hasher::new();
            for part in [
                kernel_key,
                &qemu_id,
                &opts.kvm_device.to_string_lossy(),
                &boot_id(),
            ] {
                h.update(part.as_bytes());
                h.update(b"\0");
            }
            let path = opts
                .cache_dir
                .join("accel")
                .join(&h.finalize().to_hex()[..32]);
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Some((accel, reason)) = text.split_once('\n') {
                    let accel = if accel == "kvm" {
                        Accel::Kvm
                    } else {
                        Accel::Tcg
                    };
                    return Ok((accel, format!("{reason} (cached probe)")));
                }
            }
            let probe = probe_kvm(
                &opts.qemu,
                &opts.kvm_device,
                &base.kernel.image,
                &base.busybox,
                PROBE_TIMEOUT,
            );
            let text = format!("{}\n{}", probe.accel.as_str(), probe.reason);
            write_atomic(&path, |f| f.write_all(text.as_bytes()))?;
            Ok((probe.accel, probe.reason))
        }
    }
}

/// The host's boot id: KVM may work after a reboot that it did not work before.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default()
}

fn hash_archive(h: &mut blake3::Hasher, archive: &Archive) -> Result<()> {
    let mut w = HashWriter(h);
    archive
        .write_to(&mut w)
        .context(|| "cannot read a guest input while hashing it".to_owned())?;
    Ok(())
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hash_file(path: &Path) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = std::fs::File::open(path).context(|| format!("cannot read {}", path.display()))?;
    std::io::copy(&mut f, &mut HashWriter(&mut h))
        .context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}

/// Writes a cache entry under a temporary name, then renames it into place.
fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().expect("cache paths have parents");
    std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .context(|| format!("cannot create a file in {}", dir.display()))?;
    let mut w = std::io::BufWriter::new(
        tmp.reopen()
            .context(|| format!("cannot write in {}", dir.display()))?,
    );
    fill(&mut w)
        .and_then(|()| w.flush())
        .context(|| format!("cannot write {}", path.display()))?;
    drop(w);
    tmp.persist(path)
        .map_err(|e| e.error)
        .context(|| format!("cannot move {} into place", path.display()))?;
    Ok(())
}

fn write_if_changed(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if std::fs::read(path).ok().as_deref() != Some(content) {
        std::fs::write(path, content).context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .context(|| format!("cannot chmod {}", path.display()))
}

fn relink(link: &Path, target: &Path) -> Result<()> {
    if std::fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link)
        .context(|| format!("cannot link {} to {}", link.display(), target.display()))
}

/// The kernel file start scripts boot, cached in `dir`: the uncompressed ELF
/// `vmlinux` when the kernel can boot through PVH (QEMU then loads it directly;
/// under TCG that saves the seconds a bzImage spends decompressing itself),
/// else the bzImage as it is. Returns that path, the bzImage's (booted by
/// nodes with `graphics`: only a BIOS boot sets up the text console) and
/// whether both were cached.
fn boot_kernel(dir: &Path, image: &Path) -> Result<(PathBuf, PathBuf, bool)> {
    let (vmlinux, bzimage, no_pvh) = (dir.join("vmlinux"), dir.join("bzImage"), dir.join("no-pvh"));
    if bzimage.is_file() && (vmlinux.is_file() || no_pvh.is_file()) {
        let boot = if vmlinux.is_file() {
            vmlinux
        } else {
            bzimage.clone()
        };
        return Ok((boot, bzimage, true));
    }
    let bytes =
        std::fs::read(image).context(|| format!("cannot read kernel {}", image.display()))?;
    write_atomic(&bzimage, |f| f.write_all(&bytes))?;
    let elf = crate::kernel::bzimage_payload(&bytes).and_then(|(tool, payload)| {
        // The payload ends with the 4-byte decompressed size; try without it first.
        let exact = &payload[..payload.len().saturating_sub(4)];
        decompress(tool, exact)
            .or_else(|_| decompress(tool, payload))
            .ok()
    });
    match elf {
        Some(elf) if crate::kernel::has_pvh_note(&elf) => {
            write_atomic(&vmlinux, |f| f.write_all(&elf))?;
            Ok((vmlinux, bzimage, false))
        }
        _ => {
            tracing::info!(
                "{}: no PVH-bootable payload, booting the bzImage",
                image.display()
            );
            write_atomic(&no_pvh, |f| {
                f.write_all(b"the bzImage has no PVH-bootable payload\n")
            })?;
            Ok((bzimage.clone(), bzimage, false))
        }
    }
}

/// Decompresses `data` with a host tool (`xz`, `gzip`, `zstd`, `lzma`).
fn decompress(tool: &str, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let (program, args): (&str, &[&str]) = match tool {
        "lzma" => ("xz", &["--format=lzma", "-dc"]),
        "xz" => ("xz", &["--single-stream", "-dc"]),
        other => (other, &["-dc"]),
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| std::io::Error::other(format!("cannot run {program}: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Plain bytes of a possibly compressed kernel module (busybox's insmod loads
/// only plain ones).
fn decompress_module(path: &Path) -> std::io::Result<Vec<u8>> {
    let s = path.to_string_lossy();
    let bytes = std::fs::read(path)?;
    for (suffix, tool) in [(".xz", "xz"), (".zst", "zstd"), (".gz", "gzip")] {
        if s.ends_with(suffix) {
            return decompress(tool, &bytes)
                .map_err(|e| std::io::Error::other(format!("{s}: {e}")));
        }
    }
    Ok(bytes)
}
