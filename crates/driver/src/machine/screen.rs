//! Screenshots over QMP.

use std::path::{Path, PathBuf};

use vmrig_qmp::{ImageFormat, Screendump};

use super::Machine;
use crate::error::Result;

impl Machine {
    /// Saves a PNG of the screen. Names without a dot get `.png`; names
    /// without a `/` go to the output directory (NixOS's rules). Returns the path.
    pub fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let mut file = name.to_owned();
        if !Path::new(name)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().contains('.'))
        {
            file.push_str(".png");
        }
        let path = if file.contains('/') {
            PathBuf::from(file)
        } else {
            self.inner.cfg.out_dir.join(file)
        };
        let path = std::path::absolute(&path).unwrap_or(path);
        self.block(async {
            self.start_async(false).await?;
            let running = self.inner.running.lock().await;
            let r = running
                .as_ref()
                .ok_or_else(|| self.machine_error("screenshot: the machine is not running"))?;
            r.qmp
                .execute(Screendump::new(path.to_string_lossy(), ImageFormat::Png))
                .await
                .map(drop)
                .map_err(|e| self.machine_error(format!("screenshot {}: {e}", path.display())))
        })?;
        Ok(path)
    }
}
