//! Failure forensics: a `vmrig run` test that fails leaves its running
//! machines saved in `OUTPUT/machines/` (the driver saves them before it
//! stops them), with copies of the start scripts and `test.py` and what the
//! run was made of (`resume.json`). `vmrig resume OUTPUT` restores them on
//! their VLANs and opens the Python prompt with the test's globals, the
//! machines as they were when the test failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use vmrig_driver::snapshot::Store;
use vmrig_driver::Driver;

/// The directory of an output directory that holds the saved machines.
pub const MACHINES: &str = "machines";

/// What a failed run was made of, beside its saved machines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// The test's name.
    pub test: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its VLANs.
    pub vlans: Vec<u8>,
    /// The `nodes` global.
    pub nodes: Option<serde_json::Value>,
    /// NixOS's `enableOCR`.
    pub ocr: bool,
}

/// `vmrig resume`.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The failed test's output directory (it holds `machines/`).
    #[arg(value_name = "OUTPUT")]
    pub out: PathBuf,
    /// debug, info, warning or error.
    #[arg(long = "log-level", env = "logLevel", default_value = "info", value_parser = ["debug", "info", "warning", "error"])]
    pub log_level: String,
}

/// Before a `vmrig run` test: `OUTPUT/machines/` with the run's description,
/// start scripts and test script, and an empty store for the machines.
pub fn prepare(
    out: &Path,
    info: &Saved,
    scripts: &[PathBuf],
    test: &Path,
) -> Result<Store, String> {
    let dir = out.join(MACHINES);
    let _ = std::fs::remove_dir_all(&dir);
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;
    for script in scripts.iter().map(AsRef::as_ref).chain([test]) {
        let to = if script == test {
            dir.join("test.py")
        } else {
            bin.join(script.file_name().unwrap_or_default())
        };
        std::fs::copy(script, &to)
            .map_err(|e| format!("cannot copy {} to {}: {e}", script.display(), to.display()))?;
    }
    let json = serde_json::to_vec_pretty(info).map_err(|e| e.to_string())?;
    let path = dir.join("resume.json");
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Store::forensic(dir))
}

/// After a `vmrig run` test: `OUTPUT/machines/` goes unless it holds a saved machine.
pub fn tidy(out: &Path) {
    let dir = out.join(MACHINES);
    if Store::forensic(&dir).list().is_empty() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Restores every saved machine of a resumed run, at once.
pub fn restore_saved(driver: &Driver) -> Result<(), String> {
    let Some(store) = driver.options().snapshots.as_ref() else {
        return Ok(());
    };
    let machines: Vec<_> = driver
        .machines()
        .into_iter()
        .filter(|m| store.lookup(m.name()).is_some())
        .collect();
    if machines.is_empty() {
        return Err(format!("no machine was saved in {}", store.dir().display()));
    }
    Driver::start_machines(&machines).map_err(|e| e.to_string())?;
    eprintln!(
        "vmrig: resumed {} as they were when the test failed; test_script() runs the test again",
        machines
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `vmrig resume OUTPUT`.
pub fn resume(args: ResumeArgs) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("vmrig: error: {msg}");
        ExitCode::FAILURE
    };
    let dir = args.out.join(MACHINES);
    let path = dir.join("resume.json");
    let info: Saved = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(i) => i,
            Err(e) => {
                return fail(format!(
                    "{} is not a vmrig resume.json: {e}",
                    path.display()
                ))
            }
        },
        Err(e) => {
            return fail(format!(
                "{} has no saved machines ({}: {e}): only a failed `vmrig run` test leaves them",
                args.out.display(),
                path.display()
            ))
        }
    };
    let mut scripts: Vec<PathBuf> = match std::fs::read_dir(dir.join("bin")) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(e) => return fail(format!("cannot list {}: {e}", dir.join("bin").display())),
    };
    scripts.sort();
    eprintln!(
        "vmrig: resuming {} (from {}), saved in {}",
        info.test,
        info.dir.display(),
        dir.display()
    );
    let plan = crate::test_run::Plan {
        scripts,
        vlans: info.vlans,
        global_timeout: 3600,
        test_script: Some(dir.join("test.py")),
        nodes: info.nodes,
        ocr: info.ocr,
        snapshots: Some(Store::forensic(&dir)),
        no_snapshot: Vec::new(),
        forensics: None,
    };
    let flags = crate::test_run::CompatArgs {
        interactive: true,
        output_directory: Some(args.out.join("resumed")),
        log_level: args.log_level,
        ..Default::default()
    };
    crate::test_run::execute(plan, &flags)
}
