//! Reading the screen with tesseract (NixOS's `get_screen_text*`, `wait_for_text`).
//!
//! NixOS runs ImageMagick preprocessing and tesseract one variant after the
//! other (about 8.5 s per call here). vmrig reads the PNG screendump as it is,
//! and runs the variants (different page segmentation modes) in parallel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::machine::Machine;
use crate::retry::retry;

/// Page segmentation modes tried by `get_screen_text_variants`: automatic,
/// one uniform block, and sparse text.
const VARIANT_PSM: &[&str] = &["3", "6", "11"];

fn tesseract(image: &Path, psm: &str) -> std::io::Result<std::process::Output> {
    Command::new("tesseract")
        .arg(image)
        .args(["-", "--psm", psm])
        .env("OMP_THREAD_LIMIT", "1")
        .output()
}

impl Machine {
    fn ocr(&self, psms: &[&str]) -> Result<Vec<String>> {
        let dir = tempfile::tempdir().map_err(|e| self.machine_error(format!("OCR: {e}")))?;
        let image = self.screenshot(&dir.path().join("screen.png").to_string_lossy())?;
        let results: Vec<std::io::Result<std::process::Output>> = std::thread::scope(|s| {
            let handles: Vec<_> = psms
                .iter()
                .map(|psm| s.spawn(|| tesseract(&image, psm)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("tesseract thread"))
                .collect()
        });
        results
            .into_iter()
            .map(|r| match r {
                Ok(out) if out.status.success() => {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                }
                Ok(out) => Err(self.machine_error(format!(
                    "tesseract failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(self.machine_error(
                    "OCR needs tesseract, which is not installed: apt-get install tesseract-ocr",
                )),
                Err(e) => Err(self.machine_error(format!("cannot run tesseract: {e}"))),
            })
            .collect()
    }

    /// The text on the screen, read by OCR.
    pub fn get_screen_text(&self) -> Result<String> {
        let _log = self.nested("performing optical character recognition");
        Ok(self.ocr(&VARIANT_PSM[..1])?.remove(0))
    }

    /// Several OCR readings of the screen (read in parallel).
    pub fn get_screen_text_variants(&self) -> Result<Vec<String>> {
        self.ocr(VARIANT_PSM)
    }

    /// Waits until some OCR reading of the screen matches `regex`.
    pub fn wait_for_text(&self, regex: &str, timeout: Duration) -> Result<()> {
        let re = regex::Regex::new(regex)
            .map_err(|e| self.assertion(format!("bad regex `{regex}`: {e}")))?;
        let _log = self.nested(&format!("waiting for {regex} to appear on screen"));
        retry(
            |last| {
                let variants = self.get_screen_text_variants()?;
                let found = variants.iter().any(|t| re.is_match(t));
                if last && !found {
                    tracing::info!(machine = %self.name(), "Last OCR attempt failed. Text was: {variants:?}");
                }
                Ok(found)
            },
            timeout,
        )
        .map_err(|e| self.with_machine(e))
    }
}
