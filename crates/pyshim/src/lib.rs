//! The Python API of NixOS test scripts (`Machine`, `start_all`, `subtest`,
//! `t`, `test_driver.errors.RequestedAssertionFailed`, ...) over the Rust
//! driver, through PyO3.
//!
//! [`run_test_script`] embeds Python, installs the native module `_vmrig`
//! (thin classes over [`vmrig_driver`]) and a prelude that gives it NixOS's
//! names, keyword arguments and defaults, runs the script with NixOS's
//! globals, prints failures the NixOS way (`!!!`-prefixed script frames for
//! assertion failures, the full traceback otherwise) and returns the exit
//! status. Blocking calls release the GIL.
//!
//! ```no_run
//! use vmrig_driver::{Driver, DriverOptions};
//! let driver = Driver::new(DriverOptions::new(vec!["result/bin/run-machine-vm".into()]))?;
//! let status = vmrig_pyshim::run_test_script(driver, "test.py".as_ref(), None, None);
//! std::process::exit(status);
//! # Ok::<(), vmrig_driver::Error>(())
//! ```
//!
//! Not yet: `shell_interact`/`console_interact` from scripts, the interactive
//! mode, `debug` breakpoints, the SSH backdoor, `pip install` as `import vmrig`.

mod native;

use std::path::Path;
use std::sync::Arc;

use native::_vmrig;
use pyo3::prelude::*;
use pyo3::types::PyModule;
use vmrig_driver::Driver;

const PRELUDE: &std::ffi::CStr = pyo3::ffi::c_str!(include_str!("prelude.py"));

/// Runs `script` against `driver` with NixOS's globals (`nodes` too, when
/// given as JSON); returns the exit status: 0 passed, 1 failed. The driver's
/// machines are stopped and its run directory removed before it returns.
pub fn run_test_script(
    driver: Driver,
    script: &Path,
    nodes: Option<&serde_json::Value>,
    junit_xml: Option<&Path>,
) -> i32 {
    pyo3::append_to_inittab!(_vmrig);
    pyo3::prepare_freethreaded_python();
    let driver = Arc::new(driver);
    let status = Python::with_gil(|py| -> PyResult<i32> {
        let prelude = PyModule::from_code(py, PRELUDE, c"vmrig_prelude.py", c"vmrig_prelude")?;
        let nodes = match nodes {
            Some(v) => py
                .import("json")?
                .call_method1("loads", (v.to_string(),))?
                .unbind(),
            None => py.None(),
        };
        let native = native::PyDriver {
            driver: driver.clone(),
        };
        prelude
            .call_method1(
                "_run",
                (native, script.to_string_lossy().into_owned(), nodes),
            )?
            .extract()
    });
    let status = status.unwrap_or_else(|e| {
        Python::with_gil(|py| e.print(py));
        1
    });
    if let Some(path) = junit_xml {
        if let Err(e) = driver.write_junit(path, "vmrig") {
            eprintln!("vmrig: {e}");
        }
    }
    // Python may still hold machines; stop them here, whatever it holds.
    driver.terminate();
    status
}
