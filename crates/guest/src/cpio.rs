//! An initramfs: a tree of entries written as a `newc` cpio archive, the
//! format the kernel unpacks (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Entries are kept sorted by path and parents are created on demand, so the
//! archive always lists a directory before what it holds. Times are zero, so
//! the same tree always gives the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with inline bytes.
    File(Vec<u8>),
    /// A regular file whose bytes are read from the host when written.
    HostFile(PathBuf),
    /// A symbolic link to the given target.
    Symlink(String),
    /// A character device (major, minor).
    CharDevice(u32, u32),
}

/// One entry: kind, permission bits and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (without the file type).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
}

/// A file tree to be written as a cpio archive. Paths are absolute guest paths.
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an entry owned by root, creating missing parent directories.
    pub fn insert(&mut self, path: &str, kind: Kind, mode: u32) {
        self.insert_owned(path, kind, mode, 0, 0);
    }

    /// Adds (or replaces) an entry with an owner, creating missing parent directories.
    pub fn insert_owned(&mut self, path: &str, kind: Kind, mode: u32, uid: u32, gid: u32) {
        let path = normalize(path);
        let mut parent = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for c in &components[..components.len().saturating_sub(1)] {
            parent.push_str(c);
            self.entries.entry(parent.clone()).or_insert(Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
            parent.push('/');
        }
        self.entries.insert(
            path,
            Entry {
                kind,
                mode,
                uid,
                gid,
            },
        );
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Kind::Dir, mode);
    }

    /// Adds a file with inline content.
    pub fn file(&mut self, path: &str, content: impl Into<Vec<u8>>, mode: u32) {
        self.insert(path, Kind::File(content.into()), mode);
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Kind::Symlink(target.to_owned()), 0o777);
    }

    /// The entry at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&normalize(path))
    }

    /// Whether the tree has an entry at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive, ending with the `TRAILER!!!` record. Host files are
    /// streamed, not loaded whole.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut w = Counter {
            inner: out,
            count: 0,
        };
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let ino = ino as u32 + 1;
            let (type_bits, size, rdev) = match &entry.kind {
                Kind::Dir => (0o040000, 0, (0, 0)),
                Kind::File(data) => (0o100000, data.len() as u64, (0, 0)),
                Kind::HostFile(p) => (0o100000, std::fs::metadata(p)?.len(), (0, 0)),
                Kind::Symlink(t) => (0o120000, t.len() as u64, (0, 0)),
                Kind::CharDevice(maj, min) => (0o020000, 0, (*maj, *min)),
            };
            let size = u32::try_from(size).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{path}: over 4 GiB does not fit in cpio"),
                )
            })?;
            let nlink = if matches!(entry.kind, Kind::Dir) {
                2
            } else {
                1
            };
            header(
                &mut w,
                ino,
                type_bits | entry.mode,
                entry.uid,
                entry.gid,
                nlink,
                size,
                rdev,
                path,
            )?;
            match &entry.kind {
                Kind::File(data) => w.write_all(data)?,
                Kind::HostFile(p) => {
                    let mut f = std::fs::File::open(p)?;
                    let copied = io::copy(&mut f, &mut w)?;
                    if copied != u64::from(size) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} changed size while being archived", p.display()),
                        ));
                    }
                }
                Kind::Symlink(t) => w.write_all(t.as_bytes())?,
                Kind::Dir | Kind::CharDevice(..) => {}
            }
            pad(&mut w)?;
        }
        header(&mut w, 0, 0, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        // The kernel reads archives in 512-byte blocks in some paths; pad as cpio(1) does.
        while w.count % 512 != 0 {
            w.write_all(&[0])?;
        }
        Ok(w.count)
    }
}

fn normalize(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_owned()
}

#[allow(clippy::too_many_arguments)]
fn header(
    w: &mut Counter<'_, impl Write>,
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() as u32 + 1;
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

fn pad(w: &mut Counter<'_, impl Write>) -> io::Result<()> {
    let n = (4 - (w.count % 4) as usize) % 4;
    w.write_all(&[0; 3][..n])
}

struct Counter<'a, W> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A minimal `newc` reader, for tests and for inspecting built guests.
pub mod read {
    /// One record read back: path, mode (with type bits), uid, gid, rdev and data.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Record {
        /// Path without leading slash.
        pub path: String,
        /// Mode including file-type bits.
        pub mode: u32,
        /// Owner uid.
        pub uid: u32,
        /// Owner gid.
        pub gid: u32,
        /// Device major and minor.
        pub rdev: (u32, u32),
        /// File content or symlink target.
        pub data: Vec<u8>,
    }

    /// Parses every record up to the trailer, or says what is malformed.
    pub fn records(mut bytes: &[u8]) -> Result<Vec<Record>, String> {
        let total = bytes.len();
        let mut out = Vec::new();
        loop {
            let at = total - bytes.len();
            if bytes.len() < 110 || &bytes[..6] != b"070701" {
                return Err(format!("no newc header at offset {at}"));
            }
            let field = |i: usize| -> Result<u32, String> {
                let s = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i])
                    .map_err(|e| e.to_string())?;
                u32::from_str_radix(s, 16)
                    .map_err(|e| format!("bad header field at offset {at}: {e}"))
            };
            let (mode, uid, gid, size, rmaj, rmin, namesize) = (
                field(1)?,
                field(2)?,
                field(3)?,
                field(6)?,
                field(9)?,
                field(10)?,
                field(11)? as usize,
            );
            let name_end = 110 + namesize;
            let data_start = name_end.div_ceil(4) * 4;
            let data_end = data_start + size as usize;
            if bytes.len() < data_end || namesize == 0 {
                return Err(format!("record at offset {at} is truncated"));
            }
            let path = String::from_utf8_lossy(&bytes[110..name_end - 1]).into_owned();
            if path == "TRAILER!!!" {
                return Ok(out);
            }
            out.push(Record {
                path,
                mode,
                uid,
                gid,
                rdev: (rmaj, rmin),
                data: bytes[data_start..data_end].to_vec(),
            });
            bytes = &bytes[(data_end.div_ceil(4) * 4).min(bytes.len())..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(a: &Archive) -> Vec<u8> {
        let mut v = Vec::new();
        let n = a.write_to(&mut v).unwrap();
        assert_eq!(n as usize, v.len());
        v
    }

    #[test]
    fn parents_come_first_and_types_are_kept() {
        let mut a = Archive::new();
        a.file("/etc/vmrig/rc", "#!/bin/sh\n", 0o755);
        a.symlink("/usr/bin", "../bin");
        a.insert("/dev/console", Kind::CharDevice(5, 1), 0o600);
        a.insert_owned("/home/alice", Kind::Dir, 0o700, 1000, 100);
        let recs = read::records(&bytes(&a)).unwrap();
        let paths: Vec<_> = recs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/vmrig",
                "etc/vmrig/rc",
                "home",
                "home/alice",
                "usr",
                "usr/bin"
            ]
        );
        let rc = &recs[4];
        assert_eq!(rc.mode, 0o100755);
        assert_eq!(rc.data, b"#!/bin/sh\n");
        assert_eq!(recs[1].mode, 0o020600);
        assert_eq!(recs[1].rdev, (5, 1));
        assert_eq!(
            (recs[6].uid, recs[6].gid, recs[6].mode),
            (1000, 100, 0o040700)
        );
        assert_eq!(recs[8].mode, 0o120777);
        assert_eq!(recs[8].data, b"../bin");
    }

    #[test]
    fn output_is_block_padded_and_deterministic() {
        let mut a = Archive::new();
        a.file("/x", "y", 0o644);
        let b = bytes(&a);
        assert_eq!(b.len() % 512, 0);
        assert_eq!(b, bytes(&a));
    }

    #[test]
    fn host_files_are_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 100_001]).unwrap();
        let mut a = Archive::new();
        a.insert("/bin/f", Kind::HostFile(p), 0o755);
        let recs = read::records(&bytes(&a)).unwrap();
        assert_eq!(recs[1].data, vec![7u8; 100_001]);
    }

    #[test]
    fn busybox_cpio_reads_it_when_available() {
        // Cross-check against an independent reader when the host has one.
        let Ok(out) = std::process::Command::new("busybox").arg("--list").output() else {
            return;
        };
        if !String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == "cpio")
        {
            return;
        }
        let mut a = Archive::new();
        a.file("/a/b/c.txt", "hello", 0o644);
        a.symlink("/a/l", "b/c.txt");
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("x.cpio");
        std::fs::write(&archive, bytes(&a)).unwrap();
        let out = std::process::Command::new("busybox")
            .args(["cpio", "-t", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            listed.lines().collect::<Vec<_>>(),
            ["a", "a/b", "a/b/c.txt", "a/l"]
        );
    }

    proptest! {
        #[test]
        fn round_trip(files in proptest::collection::btree_map("[a-z]{1,8}(/[a-z]{1,8}){0,3}", proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
            let mut a = Archive::new();
            for (p, data) in &files {
                a.file(p, data.clone(), 0o600);
            }
            let recs = read::records(&bytes(&a)).unwrap();
            for (p, data) in &files {
                // A later path may turn an earlier file into a parent directory; skip those.
                if let Some(Entry { kind: Kind::File(_), .. }) = a.get(p) {
                    let r = recs.iter().find(|r| &r.path == p).unwrap();
                    prop_assert_eq!(&r.data, data);
                    prop_assert_eq!(r.mode, 0o100600);
                }
            }
            prop_assert_eq!(recs.len(), a.len());
        }
    }
}
