//! The marker process of a debug breakpoint (`--debug-hook-attach`).
//!
//! NixOS's driver, at a breakpoint, forks a `sleep PATTERN` for the attach
//! command (`sudo ATTACH PATTERN`) to find the test's sandbox by, and opens a
//! pdb on TCP port 4444 (the prelude's `_Debug`). Its sleep outlives the driver;
//! ours dies with the breakpoint, and with the driver however it ends
//! (`vmrig_guest::process::die_with_parent`), so no process is left behind.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// A running `sleep PATTERN`; [`Marker::stop`] (or dropping it) ends it.
#[pyclass(name = "_Marker", module = "_vmrig", frozen)]
pub struct Marker {
    child: Mutex<Option<Child>>,
}

#[pymethods]
impl Marker {
    /// The sleep's pid.
    #[getter]
    fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(Child::id)
    }

    /// Kills and reaps the sleep. Idempotent.
    fn stop(&self) {
        if let Some(mut child) = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `sleep PATTERN` with `bashInteractive` in its environment (NixOS's
/// attach command runs that shell inside the sandbox it finds).
#[pyfunction]
pub fn debug_marker(pattern: &str) -> PyResult<Marker> {
    let mut cmd = Command::new("sleep");
    cmd.arg(pattern)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(bash) = find_bash() {
        cmd.env("bashInteractive", bash);
    }
    vmrig_guest::process::die_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(|e| {
        PyOSError::new_err(format!(
            "debug breakpoint: cannot start `sleep {pattern}`: {e}"
        ))
    })?;
    Ok(Marker {
        child: Mutex::new(Some(child)),
    })
}

fn find_bash() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bash"))
        .find(|p| p.is_file())
}
