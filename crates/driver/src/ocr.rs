//! Reading the screen with tesseract (NixOS's `get_screen_text*`, `wait_for_text`).
//!
//! As NixOS: `get_screen_text` reads the screenshot as it is; the variants
//! add two processed copies (scaled to 300 dpi, normalized, reduced to black
//! text on white, and its negative) that catch text the raw reading misses,
//! light on dark or small. NixOS processes with ImageMagick and runs the
//! readings one after the other; vmrig processes in process and runs the
//! three tesseracts in parallel.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use image::imageops::{self, FilterType};
use image::GrayImage;

use crate::error::Result;
use crate::machine::Machine;
use crate::retry::retry;

/// One way of reading the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// The screenshot as it is.
    Raw,
    /// Processed: dark text on light.
    Positive,
    /// Processed and inverted: light text on dark.
    Negative,
}

const ALL: [Variant; 3] = [Variant::Raw, Variant::Positive, Variant::Negative];

/// ImageMagick's `-density 72 -resample 300`, as NixOS scales.
const SCALE: f32 = 300.0 / 72.0;

/// NixOS's tesseract call: sparse text (page segmentation mode 11). NixOS
/// also asks for the legacy+LSTM engine (`--oem 2`); Debian's English model
/// has only the LSTM one, so the default engine it is.
fn tesseract(image: &Path) -> std::io::Result<std::process::Output> {
    Command::new("tesseract")
        .arg(image)
        .args(["-", "--psm", "11", "-c", "debug_file=/dev/null"])
        .env("OMP_THREAD_LIMIT", "1")
        .output()
}

/// Where processed copies split ink from paper. After normalizing and
/// scaling, the thin strokes of a small font are mid-grey; ImageMagick's
/// dithered posterize keeps some of them, a cut at the middle keeps them all
/// (both test screens read right from 112 to 144).
const INK: u8 = 128;

/// NixOS's preprocessing (`-contrast -normalize -despeckle -type grayscale
/// -sharpen 1 -posterize 3 [-negate] -gamma 100 -blur 1x65535` after the
/// resampling), in process: normalize, scale to 300 dpi, sharpen, then
/// binarize (what posterizing and a gamma of 100 amount to) at [`INK`], ink
/// black on white (or, negated, what was light), and smooth slightly.
fn preprocess(screen: &GrayImage, variant: Variant) -> GrayImage {
    let normalized = normalize(screen);
    let (w, h) = normalized.dimensions();
    let (sw, sh) = (
        (w as f32 * SCALE).round() as u32,
        (h as f32 * SCALE).round() as u32,
    );
    let scaled = imageops::resize(&normalized, sw.max(1), sh.max(1), FilterType::CatmullRom);
    let sharp = imageops::unsharpen(&scaled, 1.0, 0);
    let mut binary = sharp;
    for p in binary.pixels_mut() {
        let ink = match variant {
            Variant::Negative => p.0[0] >= INK,
            _ => p.0[0] < INK,
        };
        p.0[0] = if ink { 0 } else { 255 };
    }
    box_blur3(&binary)
}

/// Stretches the grey levels so that 2% of the pixels are black and 1%
/// white (ImageMagick's `-normalize`); a flat image stays as it is.
fn normalize(img: &GrayImage) -> GrayImage {
    let mut histogram = [0u64; 256];
    for p in img.pixels() {
        histogram[p.0[0] as usize] += 1;
    }
    let total: u64 = histogram.iter().sum();
    let level_at = |fraction: f64| {
        let target = (total as f64 * fraction) as u64;
        let mut seen = 0;
        for (level, n) in histogram.iter().enumerate() {
            seen += n;
            if seen > target {
                return level as u8;
            }
        }
        255
    };
    let (low, high) = (level_at(0.02), level_at(0.99));
    if high <= low {
        return img.clone();
    }
    let span = f32::from(high - low);
    let mut out = img.clone();
    for p in out.pixels_mut() {
        let v = (f32::from(p.0[0].saturating_sub(low)) * 255.0 / span).min(255.0);
        p.0[0] = v as u8;
    }
    out
}

/// A 3x3 mean (ImageMagick's `-blur 1x65535`: radius 1, flat weights).
fn box_blur3(img: &GrayImage) -> GrayImage {
    let (w, h) = img.dimensions();
    GrayImage::from_fn(w, h, |x, y| {
        let (mut sum, mut n) = (0u32, 0u32);
        for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
            for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                sum += u32::from(img.get_pixel(nx, ny).0[0]);
                n += 1;
            }
        }
        image::Luma([(sum / n) as u8])
    })
}

/// Reads `screenshot` in each of `variants` (in parallel); one text each.
fn read(screenshot: &Path, variants: &[Variant]) -> std::result::Result<Vec<String>, String> {
    let needs_processing = variants.iter().any(|v| *v != Variant::Raw);
    let screen = if needs_processing {
        Some(
            image::open(screenshot)
                .map_err(|e| format!("cannot read the screenshot {}: {e}", screenshot.display()))?
                .to_luma8(),
        )
    } else {
        None
    };
    let image_of = |variant: Variant| -> std::result::Result<PathBuf, String> {
        let Some(screen) = &screen else {
            return Ok(screenshot.to_owned());
        };
        if variant == Variant::Raw {
            return Ok(screenshot.to_owned());
        }
        let name = if variant == Variant::Positive {
            "positive.png"
        } else {
            "negative.png"
        };
        let path = screenshot.with_file_name(name);
        preprocess(screen, variant)
            .save(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    let results: Vec<std::result::Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = variants
            .iter()
            .map(|&v| s.spawn(move || ocr_one(&image_of(v)?)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("the OCR thread panicked".into()))
            })
            .collect()
    });
    results.into_iter().collect()
}

fn ocr_one(image: &Path) -> std::result::Result<String, String> {
    match tesseract(image) {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => Err(format!(
            "tesseract failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err("OCR needs tesseract, which is not installed: apt-get install tesseract-ocr".into())
        }
        Err(e) => Err(format!("cannot run tesseract: {e}")),
    }
}

impl Machine {
    fn ocr(&self, variants: &[Variant]) -> Result<Vec<String>> {
        if !self.config().ocr {
            return Err(self.machine_error(
                "OCR requested but enableOCR is false (enable_ocr = false in the test's \
                 configuration turned it off)",
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| self.machine_error(format!("OCR: {e}")))?;
        let image = self.screenshot(&dir.path().join("screen.png").to_string_lossy())?;
        read(&image, variants).map_err(|e| self.machine_error(format!("OCR: {e}")))
    }

    /// The text on the screen, read by OCR.
    pub fn get_screen_text(&self) -> Result<String> {
        let _log = self.nested("performing optical character recognition");
        Ok(self.ocr(&[Variant::Raw])?.remove(0))
    }

    /// Three OCR readings of the screen: as it is, processed, and processed
    /// and inverted (read in parallel).
    pub fn get_screen_text_variants(&self) -> Result<Vec<String>> {
        self.ocr(&ALL)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ocr-console.png")
    }

    #[test]
    fn preprocessing_scales_and_binarizes() {
        let screen = image::open(fixture()).unwrap().to_luma8();
        let (w, h) = screen.dimensions();
        for variant in [Variant::Positive, Variant::Negative] {
            let out = preprocess(&screen, variant);
            assert_eq!(out.dimensions(), (3000, 1667), "{w}x{h} at 300/72");
            let dark = out.pixels().filter(|p| p.0[0] < 128).count();
            let share = dark as f64 / (out.width() * out.height()) as f64;
            // The console is light text on black: mostly white once processed,
            // mostly black once inverted.
            match variant {
                Variant::Positive => assert!(share > 0.5, "{share}"),
                _ => assert!(share < 0.5, "{share}"),
            }
        }
    }

    #[test]
    fn normalize_stretches_and_leaves_flat_images() {
        let img = GrayImage::from_fn(100, 1, |x, _| image::Luma([100 + x as u8]));
        let out = normalize(&img);
        assert_eq!(out.get_pixel(0, 0).0[0], 0);
        assert_eq!(out.get_pixel(99, 0).0[0], 255);
        let flat = GrayImage::from_pixel(4, 4, image::Luma([7]));
        assert_eq!(normalize(&flat), flat);
    }

    /// The xterm prompt on an icewm screen (nixpkgs' x11 test, on a debian
    /// guest): small dark text on white that the raw reading misses.
    #[test]
    fn processed_variants_read_a_small_xterm_prompt() {
        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("screen.png");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ocr-xterm.png"),
            &shot,
        )
        .unwrap();
        let texts = read(&shot, &ALL).unwrap();
        let prompt = regex::Regex::new(r"root@x11:/tmp#").unwrap();
        assert!(!prompt.is_match(&texts[0]), "{texts:?}");
        assert!(texts[1..].iter().any(|t| prompt.is_match(t)), "{texts:?}");
    }

    /// The processed readings find the prompt that the raw one misreads on a
    /// real guest's console (NixOS's reason for them).
    #[test]
    fn processed_variants_read_what_the_raw_one_misses() {
        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("screen.png");
        std::fs::copy(fixture(), &shot).unwrap();
        let texts = read(&shot, &ALL).unwrap();
        assert_eq!(texts.len(), 3);
        assert!(
            texts[..2].iter().all(|t| t.contains("Hello OCR 42")),
            "{texts:?}"
        );
        // Keep them to look at: OCR_KEEP=DIR.
        if let Some(keep) = std::env::var_os("OCR_KEEP") {
            for name in ["positive.png", "negative.png"] {
                std::fs::copy(dir.path().join(name), Path::new(&keep).join(name)).unwrap();
            }
        }
        // tesseract reads the raw console's `#` as `t`.
        assert!(!texts[0].contains("/tmp#\n"), "{texts:?}");
        assert!(
            texts[1..].iter().any(|t| t.contains("/tmp#\n")),
            "{texts:?}"
        );
    }
}
