//! The result cache: a passing `vmrig run` is recorded under a hash of
//! everything it depended on, so an unchanged test is not run again (the
//! NixOS tutorial's "re-run successful tests"; nix-build does it with the
//! store). A failing run is never recorded.
//!
//! Layout: `<cache dir>/results/<key>/` with `result.json` (what passed,
//! where, when), and copies of the run's `log.txt` and `junit.xml`, so the
//! result stays readable even after its output directory is reused.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// The file in an output directory naming the cache key of the passing run
/// that wrote it (removed when another run starts there).
pub const STAMP: &str = ".vmrig-result";

/// Files of an output directory copied into a cache entry.
const KEPT: &[&str] = &["log.txt", "junit.xml"];

/// `<cache dir>/results`, beside the guest kit's cache.
pub fn results_dir() -> PathBuf {
    vmrig_guest::builder::default_cache_dir().join("results")
}

/// The inputs of one test, hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// Hash of `vmrig.toml`.
    pub definition: blake3::Hash,
    /// Hash of `test.py`.
    pub script: blake3::Hash,
    /// Hash of the built guests (their start scripts name every cached
    /// kernel and initrd by content hash).
    pub guests: blake3::Hash,
}

impl Inputs {
    /// Hashes the definition, the script and the guests built into `guests_dir`.
    pub fn read(definition: &Path, script: &Path, guests_dir: &Path) -> Result<Self> {
        let mut h = blake3::Hasher::new();
        let bin = guests_dir.join("bin");
        let mut scripts: Vec<PathBuf> = std::fs::read_dir(&bin)
            .with_context(|| format!("cannot list {}", bin.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list {}", bin.display()))?;
        scripts.sort();
        for s in scripts.iter().chain([&guests_dir.join("nodes.json")]) {
            h.update(s.file_name().unwrap_or_default().as_encoded_bytes());
            h.update(b"\0");
            h.update(read(s)?.as_bytes());
        }
        Ok(Inputs {
            definition: read(definition)?,
            script: read(script)?,
            guests: h.finalize(),
        })
    }

    /// The cache key: these inputs and this very vmrig binary.
    pub fn key(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"vmrig-result v1\0");
        h.update(version_id().as_bytes());
        for part in [&self.definition, &self.script, &self.guests] {
            h.update(part.as_bytes());
        }
        h.finalize().to_hex()[..32].to_owned()
    }
}

fn read(path: &Path) -> Result<blake3::Hash> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(blake3::hash(&bytes))
}

/// The version plus the binary's size and modification time: a rebuilt vmrig
/// (same version number, new code) does not reuse results of the old one.
fn version_id() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .unwrap_or_default();
            format!("{}:{}", m.len(), mtime.as_nanos())
        })
        .unwrap_or_default();
    format!("{} {exe}", env!("CARGO_PKG_VERSION"))
}

/// What a cache entry says about the passing run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The test's name (its directory's name).
    pub name: String,
    /// The test directory, canonical.
    pub dir: PathBuf,
    /// The output directory of the passing run, absolute.
    pub out_dir: PathBuf,
    /// When it passed, in seconds since the epoch.
    pub passed_at: u64,
    /// How long it ran.
    pub wall_secs: f64,
    /// The vmrig version that ran it.
    pub version: String,
}

/// A cache entry found for a key.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The record.
    pub record: Record,
    /// The entry's directory (with copies of the log and the JUnit report).
    pub entry: PathBuf,
}

impl Hit {
    /// Where the result is: the run's output directory while it still holds
    /// this result, else the cache entry's copies.
    pub fn location(&self) -> PathBuf {
        let stamp = std::fs::read_to_string(self.record.out_dir.join(STAMP)).unwrap_or_default();
        if Some(stamp.trim()) == self.entry.file_name().and_then(|n| n.to_str()) {
            self.record.out_dir.clone()
        } else {
            self.entry.clone()
        }
    }

    /// "passed 5 min ago in 12.3 s".
    pub fn describe(&self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        format!(
            "passed {} ago in {:.1} s",
            human_age(Duration::from_secs(
                now.saturating_sub(self.record.passed_at)
            )),
            self.record.wall_secs
        )
    }
}

fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

/// The entry for `key`, if a passing run left one.
pub fn lookup(key: &str) -> Option<Hit> {
    let entry = results_dir().join(key);
    let text = std::fs::read_to_string(entry.join("result.json")).ok()?;
    let record = serde_json::from_str(&text).ok()?;
    Some(Hit { record, entry })
}

/// Records a passing run whose output is in `record.out_dir`.
pub fn store(key: &str, record: &Record) -> Result<PathBuf> {
    let results = results_dir();
    std::fs::create_dir_all(&results)
        .with_context(|| format!("cannot create {}", results.display()))?;
    // Filled under a temporary name and renamed: a concurrent lookup sees all or nothing.
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(&results)
        .with_context(|| format!("cannot create a directory in {}", results.display()))?;
    for name in KEPT {
        let from = record.out_dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, tmp.path().join(name))
                .with_context(|| format!("cannot copy {} into the cache", from.display()))?;
        }
    }
    let json = serde_json::to_string_pretty(record).expect("records serialize");
    std::fs::write(tmp.path().join("result.json"), json)
        .with_context(|| format!("cannot write in {}", tmp.path().display()))?;
    let entry = results.join(key);
    let _ = std::fs::remove_dir_all(&entry);
    std::fs::rename(tmp.keep(), &entry)
        .with_context(|| format!("cannot move the result into {}", entry.display()))?;
    std::fs::write(record.out_dir.join(STAMP), key)
        .with_context(|| format!("cannot write {}", record.out_dir.join(STAMP).display()))?;
    Ok(entry)
}

/// Every entry in the cache (unreadable ones are skipped).
pub fn entries() -> Vec<Hit> {
    let Ok(dir) = std::fs::read_dir(results_dir()) else {
        return Vec::new();
    };
    let mut hits: Vec<Hit> = dir
        .flatten()
        .filter_map(|e| lookup(e.file_name().to_str()?))
        .collect();
    hits.sort_by(|a, b| (&a.record.name, &a.entry).cmp(&(&b.record.name, &b.entry)));
    hits
}

/// `vmrig cache ...`.
#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Forget passing results, so `vmrig run` runs those tests again: all of
    /// them, or those of the given test directories or test names. Without
    /// names, machine snapshots go too.
    Clear {
        /// Test directories or names (a directory's name is the test's name).
        tests: Vec<String>,
        /// Remove only the machine snapshots (every later machine boots once
        /// and is saved again).
        #[arg(long, conflicts_with = "tests")]
        snapshots: bool,
    },
    /// List the cached results and the machine snapshots.
    List,
}

/// The snapshot store's entries as lines: key, machine, size, age.
fn list_snapshots() {
    let store = vmrig_driver::snapshot::Store::default_store();
    let entries = store.list();
    if entries.is_empty() {
        println!("no machine snapshots in {}", store.dir().display());
        return;
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    println!(
        "machine snapshots in {} ({} MiB of {} MiB):",
        store.dir().display(),
        total >> 20,
        store.cap() >> 20
    );
    for e in entries {
        let age = SystemTime::now()
            .duration_since(e.last_used)
            .unwrap_or_default();
        println!(
            "{}\t{}\t{} MiB\tused {} ago\tsaved in {:.2} s",
            e.key,
            e.meta.machine,
            e.size >> 20,
            human_age(age),
            e.meta.save_secs
        );
    }
}

fn clear_snapshots() -> Result<()> {
    let store = vmrig_driver::snapshot::Store::default_store();
    let (n, bytes) = store
        .clear()
        .with_context(|| format!("cannot remove {}", store.dir().display()))?;
    println!(
        "removed {n} machine snapshot(s), {} MiB, from {}",
        bytes >> 20,
        store.dir().display()
    );
    Ok(())
}

/// Runs a `vmrig cache` command.
pub fn command(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::List => {
            let hits = entries();
            if hits.is_empty() {
                println!("no cached results in {}", results_dir().display());
            }
            for hit in hits {
                println!(
                    "{}\t{}\t{}\t{}",
                    hit.record.name,
                    hit.describe(),
                    hit.record.dir.display(),
                    hit.location().display()
                );
            }
            list_snapshots();
            Ok(())
        }
        CacheCommand::Clear {
            snapshots: true, ..
        } => clear_snapshots(),
        CacheCommand::Clear { tests, .. } if tests.is_empty() => {
            let results = results_dir();
            let n = entries().len();
            if results.exists() {
                std::fs::remove_dir_all(&results)
                    .with_context(|| format!("cannot remove {}", results.display()))?;
            }
            println!("removed {n} cached result(s) from {}", results.display());
            clear_snapshots()
        }
        CacheCommand::Clear { tests, .. } => {
            for test in tests {
                // A directory names one test exactly; a bare name may match several.
                let dir = Path::new(&test)
                    .join("vmrig.toml")
                    .is_file()
                    .then(|| std::fs::canonicalize(&test).ok())
                    .flatten();
                let mut n = 0;
                for hit in entries() {
                    let matches = match &dir {
                        Some(d) => &hit.record.dir == d,
                        None => hit.record.name == test,
                    };
                    if matches {
                        std::fs::remove_dir_all(&hit.entry)
                            .with_context(|| format!("cannot remove {}", hit.entry.display()))?;
                        n += 1;
                    }
                }
                if n == 0 {
                    println!("no cached result for {test}");
                } else {
                    println!("removed {n} cached result(s) for {test}");
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        assert_eq!(human_age(Duration::from_secs(5)), "5 s");
        assert_eq!(human_age(Duration::from_secs(125)), "2 min");
        assert_eq!(human_age(Duration::from_secs(7300)), "2 h");
        assert_eq!(human_age(Duration::from_secs(3 * 86400)), "3 days");
    }

    #[test]
    fn the_key_covers_every_input() {
        let a = Inputs {
            definition: blake3::hash(b"def"),
            script: blake3::hash(b"script"),
            guests: blake3::hash(b"guests"),
        };
        let mut b = a.clone();
        b.script = blake3::hash(b"script2");
        let mut c = a.clone();
        c.guests = blake3::hash(b"guests2");
        assert_eq!(a.key(), a.clone().key());
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_ne!(b.key(), c.key());
    }
}
