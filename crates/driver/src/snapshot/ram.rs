//! Guest RAM as a file, apart from the migration stream.
//!
//! A machine that may be saved boots with its RAM in a shared file
//! (`memory-backend-file,share=on` in a directory on tmpfs, which QEMU
//! unlinks at once, so nothing is left behind). Saving migrates with QEMU's
//! `x-ignore-shared` (the stream holds device state only) and copies that
//! file, skipping zero pages, into the snapshot; restored copies map the
//! snapshot's file privately (`share=off`): nothing is read before the guest
//! touches it, the snapshot never changes, and copies running at once share
//! the pages they have not written (one page cache).
//!
//! ```
//! use vmrig_driver::snapshot::ram::memory_mib;
//!
//! assert_eq!(memory_mib("exec qemu -name a -m 1024 -smp 1", ""), Some(1024));
//! // What QEMU would be given is not certain: no RAM file.
//! assert_eq!(memory_mib("qemu -m 512 -object memory-backend-ram,id=m", ""), None);
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;

/// Page granularity of the zero-page scan and the hash.
const PAGE: usize = 4096;

/// The guest's memory in MiB as QEMU will be given it: the `-m` of the
/// start script's text (every one alike), or of `QEMU_OPTS` (appended
/// later, so it wins). `None` when it is not certain: no `-m`, different
/// ones, or options that give RAM another shape (memory backends,
/// `-mem-path`, NUMA nodes, hot-pluggable memory).
pub fn memory_mib(script: &str, qemu_opts: &str) -> Option<u64> {
    let shaping = ["memory-backend", "-mem-path", "-numa", "maxmem", "slots="];
    if shaping
        .iter()
        .any(|w| script.contains(w) || qemu_opts.contains(w))
    {
        return None;
    }
    let sizes = |text: &str| -> Option<Vec<u64>> {
        let words: Vec<&str> = text
            .split(|c: char| c.is_whitespace() || c == '\\')
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .filter(|w| !w.is_empty())
            .collect();
        words
            .windows(2)
            .filter(|w| w[0] == "-m")
            .map(|w| parse_size(w[1]))
            .collect()
    };
    let from_opts = sizes(qemu_opts)?;
    if let Some(last) = from_opts.last() {
        return Some(*last);
    }
    let from_script = sizes(script)?;
    let first = *from_script.first()?;
    from_script.iter().all(|m| *m == first).then_some(first)
}

/// `1024`, `1024M`, `2G`, `size=1024` (QEMU's default unit is MiB).
fn parse_size(v: &str) -> Option<u64> {
    let v = v.strip_prefix("size=").unwrap_or(v);
    let (digits, scale) = match v.as_bytes().last()? {
        b'M' | b'm' => (&v[..v.len() - 1], 1),
        b'G' | b'g' => (&v[..v.len() - 1], 1024),
        _ => (v, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// Where a machine of `mib` MiB to be saved keeps its RAM while it runs:
/// `$VMRIG_RAM_DIR`, or `/dev/shm` (tmpfs: no disk writes). `None` when it
/// is missing or has less than twice `mib` free (a full tmpfs would kill
/// the guest with SIGBUS, not fail cleanly).
pub fn ram_dir(mib: u64) -> Option<PathBuf> {
    let dir =
        std::env::var_os("VMRIG_RAM_DIR").map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    let st = rustix::fs::statvfs(&dir).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free >= (mib << 20).saturating_mul(2)).then_some(dir)
}

/// The RAM file QEMU `pid` maps for backend `id` (unlinked, so found
/// through its open descriptors).
pub fn qemu_ram_file(pid: u32, id: &str) -> Option<PathBuf> {
    let needle = format!("qemu_back_mem.{id}.");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read_link(p).is_ok_and(|target| target.to_string_lossy().contains(&needle))
        })
}

/// Copies `from` to `to` (a new file) leaving out zero pages, which stay
/// holes. Returns the bytes written and the hash of [`hash_sparse`].
pub fn copy_sparse(from: &Path, to: &Path) -> io::Result<(u64, String)> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let mut written = 0u64;
    let len = for_each_page(from, |offset, pages| {
        out.write_all_at(pages, offset)?;
        written += pages.len() as u64;
        Ok(())
    })?;
    out.set_len(len.0)?;
    Ok((written, len.1))
}

/// BLAKE3 of a RAM file's length and of its pages that are not zero, with
/// their offsets: the same for a file and its sparse copy.
pub fn hash_sparse(path: &Path) -> io::Result<String> {
    for_each_page(path, |_, _| Ok(())).map(|(_, hash)| hash)
}

/// Calls `f` with each run of pages of `path` that are not zero (skipping
/// holes without reading them); returns the file's length and the hash.
fn for_each_page(
    path: &Path,
    mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        // Holes read as zeros: skip them (tmpfs and ext4 report them).
        let data = match rustix::fs::seek(&file, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => pos,
        };
        let hole = rustix::fs::seek(&file, SeekFrom::Hole(data)).unwrap_or(len);
        // Whole pages, wherever the file system's blocks end.
        let end = hole
            .div_ceil(PAGE as u64)
            .saturating_mul(PAGE as u64)
            .min(len);
        let mut at = data - data % PAGE as u64;
        rustix::fs::seek(&file, SeekFrom::Start(at)).map_err(io::Error::from)?;
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            let chunk = &mut buf[..want];
            file.read_exact(chunk)?;
            let mut run: Option<usize> = None;
            for (i, page) in chunk.chunks(PAGE).enumerate() {
                let zero = page
                    .chunks(64)
                    .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0);
                if zero {
                    if let Some(start) = run.take() {
                        f(at + (start * PAGE) as u64, &chunk[start * PAGE..i * PAGE])?;
                    }
                } else {
                    let offset = at + (i * PAGE) as u64;
                    h.update(&offset.to_le_bytes());
                    h.update(page);
                    run.get_or_insert(i);
                }
            }
            if let Some(start) = run {
                f(at + (start * PAGE) as u64, &chunk[start * PAGE..])?;
            }
            at += want as u64;
        }
        pos = end.max(at);
    }
    Ok((len, h.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_from_the_one_certain_m() {
        assert_eq!(memory_mib("qemu -name a -m 512 -smp 1", ""), Some(512));
        assert_eq!(memory_mib("qemu \\\n  -m \"2G\" \\\n", ""), Some(2048));
        assert_eq!(memory_mib("qemu -m size=300M", ""), Some(300));
        assert_eq!(memory_mib("qemu -m 512", "-m 1024"), Some(1024));
        assert_eq!(memory_mib("a -m 512\nb -m 512", ""), Some(512));
        assert_eq!(memory_mib("a -m 512\nb -m 1024", ""), None);
        assert_eq!(memory_mib("qemu -smp 1", ""), None);
        assert_eq!(memory_mib("qemu -m $MEM", ""), None);
        assert_eq!(memory_mib("qemu -m 512", "-numa node"), None);
        assert_eq!(memory_mib("qemu -m 512,slots=2,maxmem=4G", ""), None);
    }

    #[test]
    fn a_sparse_copy_keeps_the_data_and_hash_and_leaves_zero_pages_out() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("ram");
        let len = 64 * PAGE + 100;
        let mut bytes = vec![0u8; len];
        bytes[PAGE + 7] = 1; // page 1
        bytes[10 * PAGE..12 * PAGE].fill(0xab); // pages 10-11, one run
        bytes[len - 1] = 9; // the short last page
        std::fs::write(&src, &bytes).unwrap();
        let dst = dir.path().join("mem");
        let (written, hash) = copy_sparse(&src, &dst).unwrap();
        assert_eq!(written, (3 * PAGE + 100) as u64);
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        assert_eq!(hash_sparse(&src).unwrap(), hash);
        assert_eq!(hash_sparse(&dst).unwrap(), hash);
        // Not a copy in a new place: the destination must be new.
        assert!(copy_sparse(&src, &dst).is_err());
        // Any change of a byte or of the length changes the hash.
        bytes[20 * PAGE] = 3;
        std::fs::write(&src, &bytes).unwrap();
        assert_ne!(hash_sparse(&src).unwrap(), hash);
        bytes[20 * PAGE] = 0;
        bytes.push(0);
        std::fs::write(&src, &bytes).unwrap();
        assert_ne!(hash_sparse(&src).unwrap(), hash);
    }

    #[test]
    fn holes_are_skipped_and_hash_like_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let holey = dir.path().join("holey");
        let f = File::create(&holey).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"x", 5 << 20).unwrap();
        let dense = dir.path().join("dense");
        let mut bytes = vec![0u8; 8 << 20];
        bytes[5 << 20] = b'x';
        std::fs::write(&dense, &bytes).unwrap();
        assert_eq!(hash_sparse(&holey).unwrap(), hash_sparse(&dense).unwrap());
    }

    #[test]
    fn the_ram_file_of_a_process_is_found_by_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qemu_back_mem.vmrig-ram.AbC123");
        let _open = File::create(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let found = qemu_ram_file(std::process::id(), "vmrig-ram").unwrap();
        assert!(std::fs::read_link(found)
            .unwrap()
            .to_string_lossy()
            .contains("(deleted)"));
        assert!(qemu_ram_file(std::process::id(), "other").is_none());
    }
}
