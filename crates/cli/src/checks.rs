//! Early checks of command-line values, so a run fails before it boots
//! anything rather than when it first needs them.

use std::path::Path;

/// NixOS's `writeable_dir` (for `-o/--output_directory`): an existing
/// directory a file can be created in. Probed by creating one, which also
/// holds for root and read-only mounts, where permission bits say nothing.
pub fn writable_dir(path: &Path) -> Result<(), String> {
    if !path.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    tempfile::Builder::new()
        .prefix(".vmrig-write-probe-")
        .tempfile_in(path)
        .map(drop)
        .map_err(|e| format!("{} is not a writeable directory ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_we_can_write() {
        let dir = tempfile::tempdir().unwrap();
        writable_dir(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "the probe is gone"
        );
        let e = writable_dir(&dir.path().join("missing")).unwrap_err();
        assert!(e.ends_with("missing is not a directory"), "{e}");
        let e = writable_dir(Path::new("/proc")).unwrap_err();
        assert!(e.starts_with("/proc is not a writeable directory"), "{e}");
    }
}
