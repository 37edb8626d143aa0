//! The Python API of NixOS test scripts (`Machine`, `start_all`, `subtest`,
//! `t`, `test_driver.errors.RequestedAssertionFailed`, ...) over the Rust
//! driver, through PyO3.
//!
//! [`run`] embeds Python, installs the native module `_vmrig` (thin classes
//! over [`vmrig_driver`]) and a prelude that gives it NixOS's names, keyword
//! arguments and defaults, then either runs the script with NixOS's globals,
//! printing failures the NixOS way (`!!!`-prefixed script frames for
//! assertion failures, the full traceback otherwise), or starts the
//! interactive REPL (`-I`). Blocking calls release the GIL and can be
//! interrupted where Python handles SIGINT.
//!
//! ```no_run
//! use vmrig_driver::{Driver, DriverOptions};
//! let driver = Driver::new(DriverOptions::new(vec!["result/bin/run-machine-vm".into()]))?;
//! let status = vmrig_pyshim::run_test_script(driver, "test.py".as_ref(), None, None);
//! std::process::exit(status);
//! # Ok::<(), vmrig_driver::Error>(())
//! ```
//!
//! Built with the `extension-module` feature instead of `embed` (maturin,
//! `pip install ./crates/pyshim`), the same module is `import vmrig` for
//! tests written as plain Python programs (`vmrig.Driver`).
//!
//! Not supported: the SSH backdoor (`dump_machine_ssh`), containers. Every
//! other difference from NixOS's API is listed in `docs/compatibility.md` in
//! the repository.

mod blocking;
mod debug;
mod interact;
mod interpreter;
mod native;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use native::_vmrig;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};
use vmrig_driver::Driver;

/// The prelude package's modules (`vmrig_prelude` and its submodules), in
/// the binary: a test run needs no Python files on disk.
const PRELUDE: &[(&str, &str)] = &[
    ("vmrig_prelude", include_str!("vmrig_prelude/__init__.py")),
    (
        "vmrig_prelude.debug",
        include_str!("vmrig_prelude/debug.py"),
    ),
    (
        "vmrig_prelude.driver",
        include_str!("vmrig_prelude/driver.py"),
    ),
    (
        "vmrig_prelude.durations",
        include_str!("vmrig_prelude/durations.py"),
    ),
    (
        "vmrig_prelude.errors",
        include_str!("vmrig_prelude/errors.py"),
    ),
    (
        "vmrig_prelude.logger",
        include_str!("vmrig_prelude/logger.py"),
    ),
    (
        "vmrig_prelude.machine",
        include_str!("vmrig_prelude/machine.py"),
    ),
    ("vmrig_prelude.main", include_str!("vmrig_prelude/main.py")),
    (
        "vmrig_prelude.polling",
        include_str!("vmrig_prelude/polling.py"),
    ),
    ("vmrig_prelude.repl", include_str!("vmrig_prelude/repl.py")),
    (
        "vmrig_prelude.script",
        include_str!("vmrig_prelude/script.py"),
    ),
];

/// Serves [`PRELUDE`] to Python's import system.
const LOADER: &std::ffi::CStr = pyo3::ffi::c_str!(include_str!("loader.py"));

/// The prelude package, imported once per interpreter.
pub(crate) fn prelude(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    if let Ok(m) = py.import("vmrig_prelude") {
        return Ok(m);
    }
    let loader = PyModule::from_code(
        py,
        LOADER,
        c"<vmrig>/vmrig_prelude_loader.py",
        c"vmrig_prelude_loader",
    )?;
    let sources = PyDict::new(py);
    for (name, source) in PRELUDE {
        sources.set_item(name, source)?;
    }
    loader.call_method1("install", (sources,))?;
    py.import("vmrig_prelude")
}

/// How to run a test script (see [`run`]); the defaults run it once.
#[derive(Debug, Clone, Default)]
pub struct ScriptOptions {
    /// The test script; may be missing in interactive mode only.
    pub script: Option<PathBuf>,
    /// The `nodes` global (the vmrig.toml definition), as JSON.
    pub nodes: Option<serde_json::Value>,
    /// Write a JUnit XML report of the subtests here.
    pub junit_xml: Option<PathBuf>,
    /// `--debug-hook-attach CMD`: at a failure or `debug.breakpoint()`, print
    /// how to attach (`sudo CMD PATTERN`) and wait for a debugger on TCP
    /// 127.0.0.1:4444, as NixOS does. Without it breakpoints do nothing.
    pub debug_hook_attach: Option<String>,
    /// Start a Python REPL with the test's globals instead of running the
    /// script (`-I`); `test_script()` runs it from there.
    pub interactive: bool,
    /// The REPL's history file (default: `.nixos-test-history` in the
    /// current directory, as NixOS).
    pub history: Option<PathBuf>,
}

/// Runs `script` against `driver` with NixOS's globals (`nodes` too, when
/// given as JSON); returns the exit status: 0 passed, 1 failed. The driver's
/// machines are stopped and its run directory removed before it returns.
pub fn run_test_script(
    driver: Driver,
    script: &Path,
    nodes: Option<&serde_json::Value>,
    junit_xml: Option<&Path>,
) -> i32 {
    run(
        driver,
        &ScriptOptions {
            script: Some(script.to_owned()),
            nodes: nodes.cloned(),
            junit_xml: junit_xml.map(Path::to_owned),
            ..ScriptOptions::default()
        },
    )
}

/// Runs a test script or the interactive REPL (see [`ScriptOptions`]);
/// returns the exit status (0 passed or the REPL was left normally). The
/// driver's machines are stopped and its run directory removed before it
/// returns.
pub fn run(driver: Driver, opts: &ScriptOptions) -> i32 {
    pyo3::append_to_inittab!(_vmrig);
    interpreter::initialize();
    let driver = Arc::new(driver);
    let status = Python::with_gil(|py| -> PyResult<i32> {
        let prelude = prelude(py)?;
        let nodes = match &opts.nodes {
            Some(v) => py
                .import("json")?
                .call_method1("loads", (v.to_string(),))?
                .unbind(),
            None => py.None(),
        };
        let history = opts
            .history
            .clone()
            .unwrap_or_else(|| PathBuf::from(".nixos-test-history"));
        let args = PyDict::new(py);
        args.set_item("script", opts.script.as_ref().map(|p| p.to_string_lossy()))?;
        args.set_item("nodes", nodes)?;
        args.set_item("debug_hook_attach", opts.debug_hook_attach.as_deref())?;
        args.set_item("interactive", opts.interactive)?;
        args.set_item("history", history.to_string_lossy())?;
        let native = native::PyDriver {
            driver: driver.clone(),
            xml_log: None,
        };
        prelude.call_method1("_main", (native, args))?.extract()
    });
    let status = status.unwrap_or_else(|e| {
        Python::with_gil(|py| e.print(py));
        1
    });
    if status != 0 {
        // Before anything stops them: a failed test's machines, for `vmrig resume`.
        driver.preserve_machines();
    }
    if let Some(path) = &opts.junit_xml {
        if let Err(e) = driver.write_junit(path, "vmrig") {
            eprintln!("vmrig: {e}");
        }
    }
    // Python may still hold machines; stop them here, whatever it holds.
    driver.terminate();
    blocking::settle(std::time::Duration::from_secs(10));
    status
}

/// Installs the terminal log at `level` (`debug`, `info`, `warning` or
/// `error`, as NixOS's `--log-level`) and, when the `LOGFILE` environment
/// variable names a file, NixOS's XML log there; returns the XML log's handle
/// to [`finish`](vmrig_driver::xml_log::XmlLog::finish) it. Does nothing when a
/// log is already installed.
pub fn init_logging(level: &str) -> Result<Option<vmrig_driver::xml_log::XmlLog>, String> {
    let level = match level {
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warning" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        other => {
            return Err(format!(
                "log level `{other}`: expected debug, info, warning or error"
            ))
        }
    };
    let xml = match std::env::var_os("LOGFILE").filter(|f| !f.is_empty()) {
        Some(file) => {
            let path = PathBuf::from(file);
            let (layer, log) =
                vmrig_driver::xml_log::XmlLayer::create(&path, level).map_err(|e| {
                    format!("LOGFILE={}: cannot write the XML log: {e}", path.display())
                })?;
            Some((layer, log))
        }
        None => None,
    };
    let (layer, log) = match xml {
        Some((layer, log)) => (Some(layer), Some(log)),
        None => (None, None),
    };
    if vmrig_driver::log::init_with_xml(level, layer) {
        Ok(log)
    } else {
        Ok(None)
    }
}
