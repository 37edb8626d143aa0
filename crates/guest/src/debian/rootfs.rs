//! File-system helpers on an image's root tree (guest paths, links, copies, sizes).

use std::path::{Component, Path, PathBuf};

use crate::error::{IoContext, Result};

/// A guest path as a host path inside `root`.
pub(super) fn inside(root: &Path, guest: &str) -> PathBuf {
    root.join(guest.trim_start_matches('/'))
}

/// Resolves `.` and `..` lexically in an absolute guest path.
pub(super) fn normalize(path: &Path) -> PathBuf {
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

pub(super) fn symlink(target: impl AsRef<Path>, link: &Path) -> Result<()> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target.as_ref(), link).context(|| {
        format!(
            "cannot link {} to {}",
            link.display(),
            target.as_ref().display()
        )
    })
}

pub(super) fn copy_tree(from: &Path, to: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
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

pub(super) fn dir_size(dir: &Path) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_resolves_relative_links() {
        assert_eq!(
            normalize(Path::new("/usr/bin/../lib/firefox-esr/firefox-esr")),
            Path::new("/usr/lib/firefox-esr/firefox-esr")
        );
        assert_eq!(normalize(Path::new("/a/./b/../../c")), Path::new("/c"));
    }
}
