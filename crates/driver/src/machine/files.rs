//! Copying files between the host and the guest through the shared directory.

use std::path::{Path, PathBuf};

use vmrig_guest::script::sh_quote;

use super::Machine;
use crate::error::Result;

impl Machine {
    /// Copies a host file or directory into the guest at `target`, through the
    /// shared directory (`/tmp/shared`).
    pub fn copy_from_host(&self, source: &Path, target: &str) -> Result<()> {
        let name = source.file_name().ok_or_else(|| {
            self.assertion(format!(
                "copy_from_host: {} has no file name",
                source.display()
            ))
        })?;
        let staging = tempfile::Builder::new()
            .prefix("copy-")
            .tempdir_in(&self.inner.cfg.shared_dir)
            .map_err(|e| self.machine_error(format!("copy_from_host: {e}")))?;
        let staged = staging.path().join(name);
        copy_recursively(source, &staged)
            .map_err(|e| self.machine_error(format!("copy_from_host {}: {e}", source.display())))?;
        let in_guest = format!(
            "/tmp/shared/{}/{}",
            staging
                .path()
                .file_name()
                .expect("tempdir name")
                .to_string_lossy(),
            name.to_string_lossy()
        );
        let target_dir = Path::new(target)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmd = if target_dir.is_empty() {
            format!("cp -r {} {}", sh_quote(&in_guest), sh_quote(target))
        } else {
            format!(
                "mkdir -p {} && cp -r {} {}",
                sh_quote(&target_dir),
                sh_quote(&in_guest),
                sh_quote(target)
            )
        };
        self.succeed(&[&cmd], None).map(drop)
    }

    /// Copies a guest file or directory to `OUT/target_dir/` (NixOS's
    /// `copy_from_machine`), through the shared directory. Returns the host path.
    pub fn copy_from_machine(&self, source: &str, target_dir: &str) -> Result<PathBuf> {
        let staging = tempfile::Builder::new()
            .prefix("copy-")
            .tempdir_in(&self.inner.cfg.shared_dir)
            .map_err(|e| self.machine_error(format!("copy_from_machine: {e}")))?;
        let dir_name = staging
            .path()
            .file_name()
            .expect("tempdir name")
            .to_string_lossy()
            .into_owned();
        let base = Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        self.succeed(
            &[&format!(
                "cp -r {} {}",
                sh_quote(source),
                sh_quote(&format!("/tmp/shared/{dir_name}/"))
            )],
            None,
        )?;
        let dest_dir = self.inner.cfg.out_dir.join(target_dir);
        std::fs::create_dir_all(&dest_dir)
            .map_err(|e| self.machine_error(format!("copy_from_machine: {e}")))?;
        let dest = dest_dir.join(&base);
        copy_recursively(&staging.path().join(&base), &dest)
            .map_err(|e| self.machine_error(format!("copy_from_machine {source}: {e}")))?;
        Ok(dest)
    }
}

fn copy_recursively(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_recursively(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(drop)
    }
}
