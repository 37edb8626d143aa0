//! The snapshot store: machines saved when they were first ready, so later
//! runs restore them (QEMU's `-incoming`) instead of booting.
//!
//! Layout: `<store>/<key>/` with `meta.json` ([`Meta`]), `ram` (QEMU's
//! migration stream: device state, and RAM unless `mem` holds it), `mem`
//! (the guest's RAM as a sparse file, mapped privately by restored copies:
//! see [`ram`]), `console.log` (the boot's serial
//! console) and `disk/` (the files of the machine's state directory when it
//! was saved: its disk overlay). An entry is written under `.tmp-*` and
//! renamed into place whole, so a reader never sees half of one. The key
//! ([`key`]) hashes everything that shapes the machine; a restore also checks
//! QEMU's real command line against the one saved ([`Meta::argv`]), so a key
//! that missed an input cannot restore the wrong machine.
//!
//! ```
//! use vmrig_driver::snapshot::Store;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::new(dir.path().join("snapshots"), 1 << 30);
//! assert!(store.lookup("0123").is_none());
//! assert!(store.list().is_empty());
//! ```

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use vmrig_guest::contract::StartContract;

pub mod ram;

/// Bumped when the layout or the save/restore recipe changes.
const FORMAT: &str = "vmrig-snapshot v2";

/// Default size cap of the store: least recently used entries go first beyond it.
pub const DEFAULT_CAP: u64 = 8 << 30;

/// What a snapshot records besides its files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// The machine's name.
    pub machine: String,
    /// vmrig's version that saved it.
    pub version: String,
    /// QEMU's command line when it was saved, run paths as placeholders.
    pub argv: Vec<String>,
    /// QEMU's executable.
    pub exe: PathBuf,
    /// Size of `ram` in bytes.
    pub ram_size: u64,
    /// BLAKE3 of `ram`: a corrupt stream is refused before QEMU reads it.
    pub ram_hash: String,
    /// BLAKE3 of `mem`'s pages that are not zero ([`ram::copy_sparse`]),
    /// when the guest's RAM was a shared file saved apart from the stream.
    #[serde(default)]
    pub mem_hash: Option<String>,
    /// Whether the stream was written with QEMU's `x-ignore-shared` (it
    /// must be read with it too).
    #[serde(default)]
    pub ignore_shared: bool,
    /// Whether `/tmp/shared` was mounted (it is unmounted to save, and mounted
    /// again after a restore).
    pub shared_mounted: bool,
    /// Seconds since the epoch.
    pub saved_at: u64,
    /// How long the save took.
    pub save_secs: f64,
}

/// A snapshot in the store.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its key.
    pub key: String,
    /// Its directory.
    pub dir: PathBuf,
    /// What it records.
    pub meta: Meta,
    /// Bytes on disk (allocated blocks).
    pub size: u64,
    /// When it was last saved or restored.
    pub last_used: SystemTime,
}

impl Entry {
    /// The migration stream.
    pub fn ram(&self) -> PathBuf {
        self.dir.join("ram")
    }

    /// The guest's RAM, when saved apart from the stream.
    pub fn mem(&self) -> PathBuf {
        self.dir.join("mem")
    }

    /// The saved state-directory files.
    pub fn disk_dir(&self) -> PathBuf {
        self.dir.join("disk")
    }

    /// The boot's serial console, one line per line.
    pub fn console_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("console.log"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

/// The snapshot store: a directory and a size cap.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    cap: u64,
    forensic: bool,
}

impl Store {
    /// A store in `dir` (created when first written) holding at most `cap` bytes.
    pub fn new(dir: impl Into<PathBuf>, cap: u64) -> Store {
        Store {
            dir: absolute(dir.into()),
            cap,
            forensic: false,
        }
    }

    /// The machines of a failed test, saved in its output directory for
    /// `vmrig resume`: entries are named by machine, not by key (the saved
    /// command line and stream hash still guard a restore), machines without
    /// one boot, nothing is saved when ready, and an entry that cannot be
    /// restored stays for inspection.
    pub fn forensic(dir: impl Into<PathBuf>) -> Store {
        Store {
            dir: absolute(dir.into()),
            cap: u64::MAX,
            forensic: true,
        }
    }

    /// Whether this is a failed test's store ([`Store::forensic`]).
    pub fn is_forensic(&self) -> bool {
        self.forensic
    }

    /// `<vmrig cache>/snapshots`, capped by `$VMRIG_SNAPSHOT_CAP_MB` (default 8 GiB).
    pub fn default_store() -> Store {
        let cap = std::env::var("VMRIG_SNAPSHOT_CAP_MB")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_CAP, |mb| mb << 20);
        Store::new(
            vmrig_guest::builder::default_cache_dir().join("snapshots"),
            cap,
        )
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size cap in bytes.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The entry for `key`, if a whole one is there.
    pub fn lookup(&self, key: &str) -> Option<Entry> {
        let dir = self.dir.join(key);
        let meta: Meta =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).ok()?).ok()?;
        let last_used = std::fs::metadata(dir.join("meta.json"))
            .and_then(|m| m.modified())
            .unwrap_or(UNIX_EPOCH);
        Some(Entry {
            key: key.to_owned(),
            size: disk_usage(&dir),
            dir,
            meta,
            last_used,
        })
    }

    /// Marks an entry used now (for the size cap's LRU order).
    pub fn touch(&self, entry: &Entry) {
        let now = std::fs::FileTimes::new().set_modified(SystemTime::now());
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(entry.dir.join("meta.json"))
        {
            let _ = f.set_times(now);
        }
    }

    /// Every whole entry, most recently used first.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut entries: Vec<Entry> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                (!name.starts_with('.'))
                    .then(|| self.lookup(&name))
                    .flatten()
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        entries
    }

    /// Removes one entry.
    pub fn remove(&self, key: &str) -> std::io::Result<()> {
        match std::fs::remove_dir_all(self.dir.join(key)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Removes every entry (and abandoned partial ones); returns how many
    /// entries and bytes went.
    pub fn clear(&self) -> std::io::Result<(usize, u64)> {
        let entries = self.list();
        let bytes = entries.iter().map(|e| e.size).sum();
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok((entries.len(), bytes))
    }

    /// A directory to write a new entry in, renamed into place by [`Store::commit`].
    pub fn begin(&self, key: &str) -> std::io::Result<PathBuf> {
        let staging = self.dir.join(format!(".tmp-{key}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(staging.join("disk"))?;
        Ok(staging)
    }

    /// Writes `meta` into `staging` and moves it to `key`'s place, then trims
    /// the store to its cap, keeping this entry. When another run saved the
    /// same key meanwhile, its entry stays (it may be being restored) and
    /// `staging` goes.
    pub fn commit(&self, staging: &Path, key: &str, meta: &Meta) -> std::io::Result<Entry> {
        if let Some(existing) = self.lookup(key) {
            let _ = std::fs::remove_dir_all(staging);
            return Ok(existing);
        }
        let json = serde_json::to_vec_pretty(meta).map_err(std::io::Error::other)?;
        std::fs::write(staging.join("meta.json"), json)?;
        // A directory without meta.json is a broken entry: it may be replaced.
        let _ = self.remove(key);
        if let Err(e) = std::fs::rename(staging, self.dir.join(key)) {
            let _ = std::fs::remove_dir_all(staging);
            return match self.lookup(key) {
                Some(existing) => Ok(existing),
                None => Err(e),
            };
        }
        let entry = self
            .lookup(key)
            .ok_or_else(|| std::io::Error::other("the new snapshot cannot be read back"))?;
        self.trim(Some(key));
        Ok(entry)
    }

    /// Removes least recently used entries until the store fits its cap
    /// (never `keep`); returns the keys removed.
    pub fn trim(&self, keep: Option<&str>) -> Vec<String> {
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let mut removed = Vec::new();
        for e in entries.iter().rev() {
            if total <= self.cap {
                break;
            }
            if Some(e.key.as_str()) == keep {
                continue;
            }
            if self.remove(&e.key).is_ok() {
                tracing::info!(
                    "snapshot {} of {} removed: the store is over its cap of {} MiB",
                    e.key,
                    e.meta.machine,
                    self.cap >> 20
                );
                total -= e.size;
                removed.push(e.key.clone());
            }
        }
        removed
    }
}

/// QEMU and qemu-img run elsewhere: the store's paths must not be relative.
fn absolute(dir: PathBuf) -> PathBuf {
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Bytes allocated by the files under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The QEMU environment variables of NixOS's start scripts and vmrig's: they
/// shape the machine, so they are part of the key.
const SHAPING_ENV: &[&str] = &[
    "QEMU_OPTS",
    "QEMU_KERNEL_PARAMS",
    "QEMU_NET_OPTS",
    "NIX_DISK_IMAGE",
    "VMRIG_ACCEL",
    "VMRIG_QEMU",
    "VMRIG_QEMU_IMG",
];

/// The key of a machine started by `script` under `contract`: the start
/// script's text, every file it names by absolute path (kernel, initrd, disk
/// layer, QEMU; by path, size and modification time), the QEMU binary it
/// would find on `PATH`, the contract's options less the run's own paths, the
/// environment that shapes QEMU, and this vmrig.
pub fn key(script: &Path, contract: &StartContract) -> std::io::Result<String> {
    let text = std::fs::read(script)?;
    let mut h = blake3::Hasher::new();
    let mut field = |bytes: &[u8]| {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(FORMAT.as_bytes());
    field(env!("CARGO_PKG_VERSION").as_bytes());
    field(exe_identity().as_bytes());
    field(contract.name.as_bytes());
    field(&text);
    for path in named_files(&String::from_utf8_lossy(&text)) {
        field(file_identity(&path).as_bytes());
    }
    let qemu = std::env::var_os("VMRIG_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    if let Some(q) = find_on_path(Path::new(&qemu)) {
        field(file_identity(&q).as_bytes());
    }
    for arg in contract.qemu_args() {
        field(
            contract
                .without_run_paths(&arg.to_string_lossy())
                .as_bytes(),
        );
    }
    for var in SHAPING_ENV {
        let value = std::env::var_os(var).unwrap_or_default();
        field(var.as_bytes());
        field(
            contract
                .without_run_paths(&value.to_string_lossy())
                .as_bytes(),
        );
    }
    Ok(h.finalize().to_hex()[..32].to_owned())
}

/// Absolute paths of regular files named in a script (split at the
/// characters that end a path in shell words and QEMU options).
fn named_files(text: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = text
        .split(|c: char| c.is_whitespace() || "'\"=,;:()[]{}|&<>`$".contains(c))
        .filter(|w| w.starts_with('/') && w.len() > 1)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// `path size mtime`, or `path missing`.
fn file_identity(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default();
            format!("{} {} {}", path.display(), m.len(), mtime.as_nanos())
        }
        Err(_) => format!("{} missing", path.display()),
    }
}

/// This vmrig's executable (a rebuilt vmrig may save and restore differently).
fn exe_identity() -> String {
    std::env::current_exe()
        .map(|p| file_identity(&p))
        .unwrap_or_default()
}

/// `cmd` as `PATH` resolves it (or itself when it has a slash).
pub(crate) fn find_on_path(cmd: &Path) -> Option<PathBuf> {
    if cmd.components().count() > 1 {
        return cmd.is_file().then(|| cmd.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Seconds since the epoch.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn meta(machine: &str) -> Meta {
        Meta {
            machine: machine.into(),
            version: "0".into(),
            argv: vec!["qemu".into(), "-m".into(), "512".into()],
            exe: "/usr/bin/qemu".into(),
            ram_size: 3,
            ram_hash: blake3::hash(b"ram").to_hex().to_string(),
            mem_hash: None,
            ignore_shared: false,
            shared_mounted: true,
            saved_at: 1,
            save_secs: 0.1,
        }
    }

    fn put(store: &Store, key: &str, bytes: usize) -> Entry {
        let staging = store.begin(key).unwrap();
        std::fs::write(staging.join("ram"), vec![7u8; bytes]).unwrap();
        std::fs::write(staging.join("console.log"), "one\ntwo\n").unwrap();
        store.commit(&staging, key, &meta(key)).unwrap()
    }

    #[test]
    fn entries_round_trip_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 1 << 30);
        let a = put(&store, "aaaa", 10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        put(&store, "bbbb", 10);
        assert_eq!(a.meta, meta("aaaa"));
        assert_eq!(a.console_lines(), ["one", "two"]);
        let keys: Vec<_> = store.list().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["bbbb", "aaaa"]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        store.touch(&a);
        let keys: Vec<_> = store.list().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["aaaa", "bbbb"]);
        assert_eq!(store.clear().unwrap().0, 2);
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_partial_entry_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 1 << 30);
        let staging = store.begin("cccc").unwrap();
        std::fs::write(staging.join("ram"), b"x").unwrap();
        assert!(store.lookup("cccc").is_none());
        assert!(store.list().is_empty());
        // A meta.json that does not parse is no entry either.
        std::fs::create_dir_all(dir.path().join("dddd")).unwrap();
        std::fs::write(dir.path().join("dddd/meta.json"), b"{").unwrap();
        assert!(store.lookup("dddd").is_none());
    }

    #[test]
    fn the_cap_removes_the_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), 300 << 10);
        put(&store, "old", 200 << 10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        put(&store, "new", 200 << 10);
        let keys: Vec<_> = store.list().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["new"]);
    }

    #[test]
    fn the_key_follows_the_script_and_the_files_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, b"kernel").unwrap();
        let script = dir.path().join("run-a-vm");
        let write_script = |params: &str| {
            std::fs::write(
                &script,
                format!(
                    "#!/bin/sh\nexec qemu -kernel '{}' -append \"{params}\"\n",
                    kernel.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        write_script("quiet");
        let run1 = StartContract::new(
            "a",
            dir.path().join("run1/state"),
            dir.path().join("run1/shared"),
        );
        let run2 = StartContract::new(
            "a",
            dir.path().join("run2/state"),
            dir.path().join("run2/shared"),
        );
        let k = key(&script, &run1).unwrap();
        assert_eq!(
            k,
            key(&script, &run2).unwrap(),
            "run paths are not part of the key"
        );
        write_script("quiet panic=5");
        let k2 = key(&script, &run1).unwrap();
        assert_ne!(k, k2, "a kernel parameter changes the key");
        std::fs::write(&kernel, b"another kernel").unwrap();
        assert_ne!(
            k2,
            key(&script, &run1).unwrap(),
            "the kernel changes the key"
        );
        let mut reboot = run1.clone();
        reboot.allow_reboot = true;
        assert_ne!(key(&script, &run1).unwrap(), key(&script, &reboot).unwrap());
    }

    #[test]
    fn named_files_are_absolute_existing_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("initrd");
        std::fs::write(&f, b"x").unwrap();
        let text = format!(
            "-initrd '{}' -b {},x /nonexistent {}",
            f.display(),
            f.display(),
            dir.path().display()
        );
        assert_eq!(named_files(&text), [f]);
    }
}
