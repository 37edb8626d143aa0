//! The native module `_vmrig`: thin classes over the Rust driver. Python's
//! names, keyword arguments and defaults live in the prelude (the `vmrig_prelude` package);
//! this layer converts values and errors, and releases the GIL while the
//! driver blocks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use vmrig_driver::{ConditionGuard, Driver, Error, Machine, PollingCondition, SubtestResult};

/// Turns a driver error into NixOS's exception: assertion failures and
/// timeouts of waits are `RequestedAssertionFailed`, a polling condition that
/// does not hold `PollingConditionError`, the rest `MachineError`.
pub(crate) fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let (module, class) = match e {
        Error::Assertion { .. } | Error::Timeout { .. } => {
            ("test_driver.errors", "RequestedAssertionFailed")
        }
        Error::PollingCondition { .. } => {
            ("test_driver.polling_condition", "PollingConditionError")
        }
        _ => ("test_driver.errors", "MachineError"),
    };
    match py
        .import(module)
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((e.to_string(),)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// The longest duration a script may ask for: a year. Longer ones are typos
/// (or `float("inf")`), and would overflow the clock arithmetic below.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A duration argument from Python, or a `ValueError` naming the argument:
/// never a panic on a negative, NaN, infinite or huge number.
pub(crate) fn duration(name: &str, s: f64) -> PyResult<Duration> {
    if s.is_finite() && (0.0..=MAX_SECONDS).contains(&s) {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(PyValueError::new_err(format!(
            "{name}={s}: expected a number of seconds from 0 to {MAX_SECONDS:.0} (a year)"
        )))
    }
}

/// As [`duration`], for an optional argument.
fn secs(name: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|s| duration(name, s)).transpose()
}

/// One machine (wrapped by `Machine` in the prelude).
#[pyclass(name = "_Machine", module = "_vmrig", frozen)]
pub struct PyMachine {
    pub(crate) m: Machine,
}

/// Runs a driver call on the machine off the GIL, interruptible by Python's
/// signal handlers (see [`crate::blocking`]).
macro_rules! blocking {
    ($py:expr, $self:expr, |$m:ident| $body:expr) => {{
        let $m = $self.m.clone();
        let what = $self.m.name().to_owned();
        crate::blocking::interruptible($py, &what, move || $body)?.map_err(|e| to_py($py, e))
    }};
}

#[pymethods]
impl PyMachine {
    #[getter]
    fn name(&self) -> String {
        self.m.name().to_owned()
    }
    #[getter]
    fn state_dir(&self) -> PathBuf {
        self.m.config().state_dir.clone()
    }
    #[getter]
    fn shared_dir(&self) -> PathBuf {
        self.m.config().shared_dir.clone()
    }
    #[getter]
    fn out_dir(&self) -> PathBuf {
        self.m.config().out_dir.clone()
    }
    #[getter]
    fn pid(&self) -> Option<u32> {
        self.m.pid()
    }
    #[getter]
    fn booted(&self) -> bool {
        self.m.is_booted()
    }
    #[getter]
    fn connected(&self) -> bool {
        self.m.is_connected()
    }
    fn is_up(&self) -> bool {
        self.m.is_up()
    }
    fn start(&self, py: Python<'_>, allow_reboot: bool) -> PyResult<()> {
        blocking!(py, self, |m| m.start(allow_reboot))
    }
    fn connect(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.connect())
    }
    #[pyo3(signature = (command, check_return, check_output, timeout))]
    fn execute(
        &self,
        py: Python<'_>,
        command: String,
        check_return: bool,
        check_output: bool,
        timeout: Option<f64>,
    ) -> PyResult<(i32, String)> {
        let timeout = secs("timeout", timeout)?;
        blocking!(py, self, |m| m.execute(
            &command,
            check_return,
            check_output,
            timeout
        ))
    }
    #[pyo3(signature = (commands, timeout))]
    fn succeed(
        &self,
        py: Python<'_>,
        commands: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<String> {
        let timeout = secs("timeout", timeout)?;
        blocking!(py, self, |m| m.succeed(
            &commands.iter().map(String::as_str).collect::<Vec<_>>(),
            timeout
        ))
    }
    #[pyo3(signature = (commands, timeout))]
    fn fail(
        &self,
        py: Python<'_>,
        commands: Vec<String>,
        timeout: Option<f64>,
    ) -> PyResult<String> {
        let timeout = secs("timeout", timeout)?;
        blocking!(py, self, |m| m.fail(
            &commands.iter().map(String::as_str).collect::<Vec<_>>(),
            timeout
        ))
    }
    fn wait_until_succeeds(
        &self,
        py: Python<'_>,
        command: String,
        timeout: f64,
    ) -> PyResult<String> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_until_succeeds(&command, timeout))
    }
    fn wait_until_fails(&self, py: Python<'_>, command: String, timeout: f64) -> PyResult<String> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_until_fails(&command, timeout))
    }
    #[pyo3(signature = (q, user))]
    fn systemctl(
        &self,
        py: Python<'_>,
        q: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        blocking!(py, self, |m| m.systemctl(&q, user.as_deref()))
    }
    #[pyo3(signature = (unit, user, timeout))]
    fn wait_for_unit(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
        timeout: f64,
    ) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_unit(
            &unit,
            user.as_deref(),
            timeout
        ))
    }
    #[pyo3(signature = (unit, user))]
    fn get_unit_info(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
    ) -> PyResult<std::collections::BTreeMap<String, String>> {
        blocking!(py, self, |m| m.get_unit_info(&unit, user.as_deref()))
    }
    #[pyo3(signature = (unit, property, user))]
    fn get_unit_property(
        &self,
        py: Python<'_>,
        unit: String,
        property: String,
        user: Option<String>,
    ) -> PyResult<String> {
        blocking!(py, self, |m| m.get_unit_property(
            &unit,
            &property,
            user.as_deref()
        ))
    }
    fn require_unit_state(&self, py: Python<'_>, unit: String, state: String) -> PyResult<()> {
        blocking!(py, self, |m| m.require_unit_state(&unit, &state))
    }
    #[pyo3(signature = (unit, user))]
    fn start_job(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        blocking!(py, self, |m| m.start_job(&unit, user.as_deref()))
    }
    #[pyo3(signature = (unit, user))]
    fn stop_job(
        &self,
        py: Python<'_>,
        unit: String,
        user: Option<String>,
    ) -> PyResult<(i32, String)> {
        blocking!(py, self, |m| m.stop_job(&unit, user.as_deref()))
    }
    fn wait_for_file(&self, py: Python<'_>, path: String, timeout: f64) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_file(&path, timeout))
    }
    fn wait_for_open_port(
        &self,
        py: Python<'_>,
        port: u16,
        addr: String,
        timeout: f64,
    ) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_open_port(port, &addr, timeout))
    }
    fn wait_for_closed_port(
        &self,
        py: Python<'_>,
        port: u16,
        addr: String,
        timeout: f64,
    ) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_closed_port(port, &addr, timeout))
    }
    fn wait_for_open_unix_socket(
        &self,
        py: Python<'_>,
        addr: String,
        is_datagram: bool,
        timeout: f64,
    ) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_open_unix_socket(
            &addr,
            is_datagram,
            timeout
        ))
    }
    fn get_tty_text(&self, py: Python<'_>, tty: String) -> PyResult<String> {
        blocking!(py, self, |m| m.get_tty_text(&tty))
    }
    fn wait_until_tty_matches(
        &self,
        py: Python<'_>,
        tty: String,
        regexp: String,
        timeout: f64,
    ) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m
            .wait_until_tty_matches(&tty, &regexp, timeout))
    }
    fn dump_tty_contents(&self, py: Python<'_>, tty: String) -> PyResult<()> {
        blocking!(py, self, |m| m.dump_tty_contents(&tty))
    }
    #[pyo3(signature = (key, delay))]
    fn send_key(&self, py: Python<'_>, key: String, delay: Option<f64>) -> PyResult<()> {
        let delay = secs("delay", delay)?;
        blocking!(py, self, |m| m.send_key(&key, delay))
    }
    #[pyo3(signature = (chars, delay))]
    fn send_chars(&self, py: Python<'_>, chars: String, delay: Option<f64>) -> PyResult<()> {
        let delay = secs("delay", delay)?;
        blocking!(py, self, |m| m.send_chars(&chars, delay))
    }
    fn send_console(&self, py: Python<'_>, chars: String) -> PyResult<()> {
        blocking!(py, self, |m| m.send_console(&chars))
    }
    fn send_monitor_command(&self, py: Python<'_>, command: String) -> PyResult<String> {
        blocking!(py, self, |m| m.send_monitor_command(&command))
    }
    fn screenshot(&self, py: Python<'_>, name: String) -> PyResult<PathBuf> {
        blocking!(py, self, |m| m.screenshot(&name))
    }
    fn get_screen_text(&self, py: Python<'_>) -> PyResult<String> {
        blocking!(py, self, |m| m.get_screen_text())
    }
    fn get_screen_text_variants(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        blocking!(py, self, |m| m.get_screen_text_variants())
    }
    fn wait_for_text(&self, py: Python<'_>, regex: String, timeout: f64) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_text(&regex, timeout))
    }
    #[pyo3(signature = (regex, timeout))]
    fn wait_for_console_text(
        &self,
        py: Python<'_>,
        regex: String,
        timeout: Option<f64>,
    ) -> PyResult<String> {
        let timeout = secs("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_console_text(&regex, timeout))
    }
    fn get_console_log(&self) -> String {
        self.m.console_log()
    }
    fn wait_for_x(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_x(timeout))
    }
    fn get_window_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        blocking!(py, self, |m| m.get_window_names())
    }
    fn wait_for_window(&self, py: Python<'_>, regexp: String, timeout: f64) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_window(&regexp, timeout))
    }
    fn forward_port(&self, py: Python<'_>, host_port: u16, guest_port: u16) -> PyResult<()> {
        blocking!(py, self, |m| m.forward_port(host_port, guest_port))
    }
    fn block(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.block_network())
    }
    fn unblock(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.unblock_network())
    }
    fn copy_from_host(&self, py: Python<'_>, source: PathBuf, target: String) -> PyResult<()> {
        blocking!(py, self, |m| m.copy_from_host(&source, &target))
    }
    fn copy_from_host_via_shell(
        &self,
        py: Python<'_>,
        source: PathBuf,
        target: String,
    ) -> PyResult<()> {
        blocking!(py, self, |m| m.copy_from_host_via_shell(&source, &target))
    }
    fn copy_from_machine(
        &self,
        py: Python<'_>,
        source: String,
        target_dir: String,
    ) -> PyResult<PathBuf> {
        blocking!(py, self, |m| m.copy_from_machine(&source, &target_dir))
    }
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.shutdown())
    }
    fn crash(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.crash())
    }
    fn reboot(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.reboot())
    }
    fn wait_for_shutdown(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        blocking!(py, self, |m| m.wait_for_shutdown(timeout))
    }
    fn switch_root(&self, py: Python<'_>) -> PyResult<()> {
        blocking!(py, self, |m| m.switch_root())
    }
    fn release(&self, py: Python<'_>) {
        let m = self.m.clone();
        py.allow_threads(move || m.release());
    }
    #[pyo3(signature = (address))]
    fn shell_interact(&self, py: Python<'_>, address: Option<String>) -> PyResult<()> {
        crate::interact::shell_interact(py, &self.m, address.as_deref())
    }
    fn console_interact(&self, py: Python<'_>) -> PyResult<()> {
        crate::interact::console_interact(py, &self.m)
    }
    /// Waits for a QMP event whose dict `filter` accepts; returns the event as a dict.
    fn wait_for_qmp_event(
        &self,
        py: Python<'_>,
        filter: PyObject,
        timeout: f64,
    ) -> PyResult<PyObject> {
        let m = self.m.clone();
        let filter = Arc::new(filter);
        let timeout = duration("timeout", timeout)?;
        let event = crate::blocking::interruptible(py, self.m.name(), move || {
            m.wait_for_qmp_event(
                |e| {
                    Python::with_gil(|py| {
                        let d = PyDict::new(py);
                        let _ = d.set_item("event", &e.event);
                        if let Ok(data) = serde_json::to_string(&e.data) {
                            let _ = py
                                .import("json")
                                .and_then(|j| j.call_method1("loads", (data,)))
                                .and_then(|v| d.set_item("data", v));
                        }
                        filter
                            .call1(py, (d,))
                            .and_then(|r| r.is_truthy(py))
                            .unwrap_or(false)
                    })
                },
                timeout,
            )
        })?
        .map_err(|e| to_py(py, e))?;
        let d = PyDict::new(py);
        d.set_item("event", event.event)?;
        Ok(d.into_any().unbind())
    }
}

/// The test run (wrapped by the prelude's globals).
#[pyclass(name = "_Driver", module = "_vmrig", frozen)]
pub struct PyDriver {
    pub(crate) driver: Arc<Driver>,
    /// The XML log this driver started (plain Python), ended by `terminate`.
    pub(crate) xml_log: Option<vmrig_driver::xml_log::XmlLog>,
}

#[pymethods]
impl PyDriver {
    /// A run for a plain Python program (the prelude's `Driver`): Python keeps
    /// its own signal handling (Ctrl-C is `KeyboardInterrupt`); the terminal
    /// log (and the XML log when `LOGFILE` is set) is installed if none is.
    /// `options`: `out_dir`, `keep_machine_state`, `global_timeout` (seconds),
    /// `log_level`, `tmp_dir`; missing ones take the driver's defaults.
    #[new]
    fn new(
        py: Python<'_>,
        start_scripts: Vec<PathBuf>,
        vlans: Vec<u8>,
        options: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        fn get<'py, T: FromPyObject<'py>>(
            d: &Bound<'py, PyDict>,
            key: &str,
        ) -> PyResult<Option<T>> {
            match d.get_item(key)? {
                Some(v) if !v.is_none() => v.extract().map(Some),
                _ => Ok(None),
            }
        }
        let log_level: Option<String> = get(options, "log_level")?;
        let xml_log = crate::init_logging(log_level.as_deref().unwrap_or("info"))
            .map_err(|e| to_py(py, Error::Setup(e)))?;
        let mut opts = vmrig_driver::DriverOptions::new(start_scripts);
        opts.vlans = vlans;
        if let Some(dir) = get(options, "out_dir")? {
            opts.out_dir = dir;
        }
        opts.keep_state = get(options, "keep_machine_state")?.unwrap_or(false);
        if let Some(t) = get::<f64>(options, "global_timeout")? {
            opts.global_timeout = duration("global_timeout", t)?;
        }
        opts.tmp_dir = get(options, "tmp_dir")?;
        opts.handle_signals = false;
        // A script blocked in a machine call fails as soon as the machines are killed;
        // one that never calls the driver again ends here, as under NixOS.
        opts.exit_after_timeout = Some(vmrig_driver::EXIT_AFTER_TIMEOUT);
        let driver = py
            .allow_threads(move || Driver::new(opts))
            .map_err(|e| to_py(py, e))?;
        Ok(PyDriver {
            driver: Arc::new(driver),
            xml_log,
        })
    }
    /// Stops every machine and removes the run directory (unless kept).
    fn terminate(&self, py: Python<'_>) {
        let d = self.driver.clone();
        py.allow_threads(move || {
            d.terminate();
            crate::blocking::settle(Duration::from_secs(10));
        });
        if let Some(log) = &self.xml_log {
            log.finish();
        }
    }
    /// Writes the JUnit report of the subtests so far.
    fn write_junit(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        self.driver
            .write_junit(&path, "vmrig")
            .map_err(|e| to_py(py, e))
    }
    /// The global timeout, in seconds.
    #[getter]
    fn global_timeout(&self) -> f64 {
        self.driver.options().global_timeout.as_secs_f64()
    }
    #[getter]
    fn out_dir(&self) -> PathBuf {
        std::path::absolute(&self.driver.options().out_dir)
            .unwrap_or_else(|_| self.driver.options().out_dir.clone())
    }
    fn machines(&self) -> Vec<PyMachine> {
        self.driver
            .machines()
            .into_iter()
            .map(|m| PyMachine { m })
            .collect()
    }
    fn vlans(&self) -> Vec<u8> {
        self.driver.vlans().iter().map(|v| v.nr()).collect()
    }
    fn start_all(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.driver.clone();
        crate::blocking::interruptible(py, "start_all", move || d.start_all())?
            .map_err(|e| to_py(py, e))
    }
    fn join_all(&self, py: Python<'_>) -> PyResult<()> {
        let d = self.driver.clone();
        crate::blocking::interruptible(py, "join_all", move || d.join_all())?
            .map_err(|e| to_py(py, e))
    }
    fn create_machine(&self, start_script: PathBuf) -> PyResult<PyMachine> {
        Python::with_gil(|py| {
            self.driver
                .create_machine(&start_script)
                .map(|m| PyMachine { m })
                .map_err(|e| to_py(py, e))
        })
    }
    /// Records a finished subtest for the JUnit report.
    #[pyo3(signature = (name, seconds, failure))]
    fn record_subtest(&self, name: String, seconds: f64, failure: Option<String>) {
        self.driver.record_subtest(SubtestResult {
            name,
            duration: duration("seconds", seconds).unwrap_or_default(),
            failure,
        });
    }
}

/// A polling condition (wrapped by the prelude's `PollingCondition`): the
/// driver's, whose check calls the Python function. The driver runs it before
/// machine actions while it is entered.
#[pyclass(name = "_PollingCondition", module = "_vmrig", frozen)]
pub struct PyPollingCondition {
    condition: Arc<PollingCondition>,
    /// One per `with` level, innermost last.
    guards: Mutex<Vec<ConditionGuard>>,
}

#[pymethods]
impl PyPollingCondition {
    #[new]
    fn new(function: PyObject, seconds_interval: f64, description: String) -> PyResult<Self> {
        let interval = duration("seconds_interval", seconds_interval)?;
        // NixOS: `None` or a true value holds; an exception does not.
        let check = move || {
            Python::with_gil(|py| match function.call0(py) {
                Ok(r) => Ok(r.is_none(py) || r.is_truthy(py).unwrap_or(false)),
                Err(e) => {
                    tracing::debug!("the condition raised {e}");
                    Ok(false)
                }
            })
        };
        Ok(PyPollingCondition {
            condition: Arc::new(PollingCondition::new(
                description,
                interval,
                Box::new(check),
            )),
            guards: Mutex::new(Vec::new()),
        })
    }
    /// Runs the condition if it is overdue (or `force`); whether it holds.
    #[pyo3(signature = (force=false))]
    fn check(&self, py: Python<'_>, force: bool) -> bool {
        let c = self.condition.clone();
        py.allow_threads(move || c.holds(force))
    }
    /// As `check`, but raises `PollingConditionError` when it does not hold.
    fn maybe_raise(&self, py: Python<'_>) -> PyResult<()> {
        let c = self.condition.clone();
        py.allow_threads(move || c.check(false))
            .map_err(|e| to_py(py, e))
    }
    fn wait(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let timeout = duration("timeout", timeout)?;
        let c = self.condition.clone();
        crate::blocking::interruptible(py, "polling condition", move || c.wait(timeout))?
            .map_err(|e| to_py(py, e))
    }
    fn status_message(&self, status: bool) -> String {
        self.condition.status_message(status)
    }
    /// Puts the condition in force on `driver` until [`Self::exit`].
    fn enter(&self, driver: &PyDriver) {
        let guard = driver.driver.polling_condition(self.condition.clone());
        self.guards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(guard);
    }
    fn exit(&self) {
        self.guards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
    }
}

/// Logs a line through the driver's terminal log.
#[pyfunction]
fn log(level: &str, message: &str) {
    match level {
        "error" => tracing::error!("{message}"),
        "warning" => tracing::warn!("{message}"),
        "debug" => tracing::debug!("{message}"),
        _ => tracing::info!("{message}"),
    }
}

thread_local! {
    /// Sections opened by Python's `log.nested` on this thread, innermost last.
    static SECTIONS: std::cell::RefCell<Vec<tracing::Span>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Opens a nested log section (a `tracing` span) until [`section_exit`].
#[pyfunction]
fn section_enter(message: &str) {
    let span = tracing::info_span!("section", message = %message);
    if let Some(id) = span.id() {
        tracing::dispatcher::get_default(|d| d.enter(&id));
    }
    SECTIONS.with(|s| s.borrow_mut().push(span));
}

/// Closes the innermost section opened by [`section_enter`].
#[pyfunction]
fn section_exit() {
    if let Some(span) = SECTIONS.with(|s| s.borrow_mut().pop()) {
        if let Some(id) = span.id() {
            tracing::dispatcher::get_default(|d| d.exit(&id));
        }
    }
}

/// Turns printing the machines' serial consoles on the terminal on or off.
#[pyfunction]
fn serial_stdout(on: bool) {
    vmrig_driver::log::set_serial_stdout(on);
}

/// Prints one line of a test failure the NixOS way (`!!! LINE`), in the
/// XML log too.
#[pyfunction]
fn log_test_error(line: &str) {
    tracing::error!(target: vmrig_driver::log::TEST_ERROR_TARGET, "{line}");
}

/// The prelude as a module (`vmrig_prelude`), loaded once.
#[pyfunction]
fn prelude(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    crate::prelude(py)
}

/// The `_vmrig` module.
#[pymodule]
pub fn _vmrig(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMachine>()?;
    m.add_class::<PyDriver>()?;
    m.add_class::<PyPollingCondition>()?;
    m.add_class::<crate::debug::Marker>()?;
    m.add_function(wrap_pyfunction!(log, m)?)?;
    m.add_function(wrap_pyfunction!(log_test_error, m)?)?;
    m.add_function(wrap_pyfunction!(serial_stdout, m)?)?;
    m.add_function(wrap_pyfunction!(section_enter, m)?)?;
    m.add_function(wrap_pyfunction!(section_exit, m)?)?;
    m.add_function(wrap_pyfunction!(prelude, m)?)?;
    m.add_function(wrap_pyfunction!(crate::debug::debug_marker, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_from_python_are_checked_not_panicking() {
        assert_eq!(
            duration("timeout", 1.5).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(duration("timeout", 0.0).unwrap(), Duration::ZERO);
        for bad in [-1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            let e = duration("timeout", bad).unwrap_err();
            assert!(e.to_string().contains("timeout="), "{e}");
        }
        assert_eq!(secs("delay", None).unwrap(), None);
        assert!(secs("delay", Some(-0.5)).is_err());
    }
}
