//! The driver: one test run's machines, VLANs, state directory and cleanup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmrig_vde_net::{Switch, SwitchOptions};

use std::sync::{Arc, PoisonError, RwLock};

use crate::error::{Error, Result};
use crate::machine::{Machine, MachineConfig, VhostUserPort};
use crate::polling::{Conditions, PollingCondition};
use crate::report::{junit_xml, SubtestResult};
use vmrig_guest::contract::machine_name;

/// How long a test script may go on after the global timeout stopped its machines
/// before the process exits, for the owners that set
/// [`DriverOptions::exit_after_timeout`] (the `vmrig` binary and the Python module).
pub const EXIT_AFTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a run consists of (NixOS driver flags).
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// Start scripts; machine names come from `run-<name>-vm`.
    pub start_scripts: Vec<PathBuf>,
    /// VLAN numbers; one switch each.
    pub vlans: Vec<u8>,
    /// Output directory (screenshots, copied files, logs).
    pub out_dir: PathBuf,
    /// Keep the state directory after the run (`-K`).
    pub keep_state: bool,
    /// Bound for the whole run, and for commands without a timeout.
    pub global_timeout: Duration,
    /// Where the private run directory is made (default: `$XDG_RUNTIME_DIR` or the temp dir).
    pub tmp_dir: Option<PathBuf>,
    /// How long a machine's backdoor may take to appear (default 300 s, as NixOS).
    pub boot_timeout: Duration,
    /// On SIGINT or SIGTERM: kill every machine, remove the run directory and
    /// exit (130 or 143). On by default; turn off to handle signals yourself.
    pub handle_signals: bool,
    /// When the global timeout has stopped every machine and the run still goes on
    /// this long after (a test script looping or sleeping in Python never calls the
    /// driver again), remove the run directory (unless kept) and exit the process
    /// with status 1, as NixOS's driver does. `None` (the default) leaves the process
    /// alone: the driver's calls fail, and its owner decides.
    pub exit_after_timeout: Option<Duration>,
    /// Whether machines may read their screen (NixOS's `enableOCR`); when
    /// off, OCR calls fail at once with NixOS's error.
    pub ocr: bool,
    /// The snapshot store: machines are saved when first ready and restored
    /// in later runs (`None`, the default: every machine boots).
    pub snapshots: Option<crate::snapshot::Store>,
    /// Machines that always boot even with a store (`snapshot = false`).
    pub no_snapshot: Vec<String>,
    /// Where a failed run's machines are saved ([`Driver::preserve_machines`],
    /// and the global timeout before it stops them); `None`: nowhere.
    pub forensics: Option<crate::snapshot::Store>,
}

impl DriverOptions {
    /// Options for these start scripts, with NixOS's defaults otherwise.
    pub fn new(start_scripts: Vec<PathBuf>) -> Self {
        DriverOptions {
            start_scripts,
            vlans: Vec::new(),
            out_dir: PathBuf::from("."),
            keep_state: false,
            global_timeout: Duration::from_secs(3600),
            tmp_dir: None,
            boot_timeout: crate::machine::BOOT_TIMEOUT,
            handle_signals: true,
            exit_after_timeout: None,
            ocr: true,
            snapshots: None,
            no_snapshot: Vec::new(),
            forensics: None,
        }
    }
}

/// A VLAN: an in-process VDE switch that `QEMU_VDE_SOCKET_<nr>` points at.
pub struct VLan {
    nr: u8,
    switch: Arc<Switch>,
    out_dir: PathBuf,
}

impl VLan {
    /// The VLAN number.
    pub fn nr(&self) -> u8 {
        self.nr
    }

    /// The switch directory (`QEMU_VDE_SOCKET_<nr>`).
    pub fn socket_dir(&self) -> &Path {
        self.switch.dir()
    }

    /// The switch, for link faults and capture.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Where captures go.
    pub fn out_dir(&self) -> &Path {
        &self.out_dir
    }
}

/// A test run. Dropping it kills every machine, stops the switches and removes
/// the state directory (unless `keep_state`).
pub struct Driver {
    // Declared first so machines and switches go before the runtime.
    machines: Arc<RwLock<Vec<Machine>>>,
    out_dir: PathBuf,
    conditions: Conditions,
    vlans: Vec<VLan>,
    run_dir: Option<tempfile::TempDir>,
    opts: DriverOptions,
    subtests: std::sync::Mutex<SubtestState>,
    watchdog: Option<Watchdog>,
    rt: Option<tokio::runtime::Runtime>,
}

#[derive(Default)]
struct SubtestState {
    stack: Vec<String>,
    results: Vec<SubtestResult>,
}

/// Kills every machine when the global timeout passes.
struct Watchdog {
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    fired: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the watchdog does once the global timeout has stopped the machines, if the
/// run is still going `grace` later.
struct ExitAfter {
    grace: Duration,
    /// Removed before exiting, unless `None` (kept).
    run_dir: Option<PathBuf>,
}

impl Watchdog {
    fn start(
        machines: Arc<RwLock<Vec<Machine>>>,
        timeout: Duration,
        exit_after: Option<ExitAfter>,
        forensics: Option<crate::snapshot::Store>,
    ) -> Watchdog {
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop2, fired2) = (stop.clone(), fired.clone());
        let thread = std::thread::Builder::new()
            .name("vmrig-watchdog".into())
            .spawn(move || {
                let (lock, cvar) = &*stop2;
                let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let (guard, result) = cvar
                    .wait_timeout_while(guard, timeout, |stopped| !*stopped)
                    .unwrap_or_else(PoisonError::into_inner);
                if result.timed_out() && !*guard {
                    fired2.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::error!(
                        "global timeout of {} s reached: stopping every machine",
                        timeout.as_secs()
                    );
                    if let Some(store) = &forensics {
                        let list = machines.read().unwrap_or_else(PoisonError::into_inner).clone();
                        preserve(&list, store);
                    }
                    for m in machines.read().unwrap_or_else(PoisonError::into_inner).iter() {
                        m.halt();
                    }
                    let Some(exit) = exit_after else { return };
                    let (guard, result) = cvar
                        .wait_timeout_while(guard, exit.grace, |stopped| !*stopped)
                        .unwrap_or_else(PoisonError::into_inner);
                    if result.timed_out() && !*guard {
                        tracing::error!(
                            "the test script was still running {} s after the global timeout: exiting",
                            exit.grace.as_secs()
                        );
                        if let Some(dir) = exit.run_dir {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                        std::process::exit(1);
                    }
                }
            })
            .expect("spawn the watchdog thread");
        Watchdog {
            stop,
            fired,
            thread: Some(thread),
        }
    }

    fn disarm(&mut self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long saving one failed machine may take.
pub const PRESERVE_BUDGET: Duration = Duration::from_secs(30);

/// Saves the running machines into `store` at once; returns the names saved.
fn preserve(machines: &[Machine], store: &crate::snapshot::Store) -> Vec<String> {
    let running: Vec<&Machine> = machines.iter().filter(|m| m.is_booted()).collect();
    if running.is_empty() {
        return Vec::new();
    }
    tracing::info!(
        "saving the failed test's machines into {}",
        store.dir().display()
    );
    let saved: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = running
            .iter()
            .map(|m| s.spawn(move || (m.name().to_owned(), m.preserve(store, PRESERVE_BUDGET))))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .filter_map(|(name, result)| match result {
                Ok(_) => Some(name),
                Err(why) => {
                    tracing::warn!(machine = %name, "not saved for vmrig resume: {why}");
                    None
                }
            })
            .collect()
    });
    if !saved.is_empty() {
        let out = store.dir().parent().unwrap_or(store.dir());
        tracing::error!(
            "the failed test's machines ({}) are saved as they were: `vmrig resume {}` restores them with a Python prompt",
            saved.join(", "),
            out.display()
        );
    }
    saved
}

/// The VLANs whose `QEMU_VHOST_USER_SOCKET_<n>` a start script names, sorted.
fn vhost_user_vlans(script: &str) -> std::collections::BTreeSet<u8> {
    const VAR: &str = "QEMU_VHOST_USER_SOCKET_";
    script
        .match_indices(VAR)
        .filter_map(|(i, _)| {
            let digits: String = script[i + VAR.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

impl Driver {
    /// Sets up a run: a private 0700 run directory (NixOS's fixed names let two
    /// runs collide; these do not), one switch per VLAN, machines not started.
    pub fn new(opts: DriverOptions) -> Result<Driver> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("vmrig-driver")
            .build()
            .map_err(|e| Error::Setup(format!("cannot start the async runtime: {e}")))?;
        let base = opts
            .tmp_dir
            .clone()
            .or_else(|| std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from))
            .unwrap_or_else(std::env::temp_dir);
        let run_dir = tempfile::Builder::new()
            .prefix("vmrig-")
            .tempdir_in(&base)
            .map_err(|e| {
                Error::Setup(format!(
                    "cannot create a run directory in {}: {e}",
                    base.display()
                ))
            })?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(run_dir.path(), std::fs::Permissions::from_mode(0o700))
                .map_err(|e| {
                    Error::Setup(format!(
                        "cannot make {} private: {e}",
                        run_dir.path().display()
                    ))
                })?;
        }
        std::fs::create_dir_all(&opts.out_dir).map_err(|e| {
            Error::Setup(format!(
                "cannot create output directory {}: {e}",
                opts.out_dir.display()
            ))
        })?;
        let out_dir = std::path::absolute(&opts.out_dir).unwrap_or_else(|_| opts.out_dir.clone());

        let mut vlans = Vec::new();
        for &nr in &opts.vlans {
            if vlans.iter().any(|v: &VLan| v.nr == nr) {
                return Err(Error::Setup(format!("VLAN {nr} is listed twice")));
            }
            let dir = run_dir.path().join(format!("vde{nr}.ctl"));
            let switch = rt
                // A hub, as NixOS's `vde_switch --hub`: every machine on the VLAN
                // sees every frame (a sniffer in one guest sees the others).
                .block_on(Switch::start(SwitchOptions::new(&dir).hub(true)))
                .map_err(|e| {
                    Error::Setup(format!(
                        "cannot start the switch of VLAN {nr} at {}: {e}",
                        dir.display()
                    ))
                })?;
            tracing::info!(vlan = nr, "VLAN {nr} switch at {}", dir.display());
            vlans.push(VLan {
                nr,
                switch: Arc::new(switch),
                out_dir: out_dir.clone(),
            });
        }

        let mut driver = Driver {
            machines: Arc::new(RwLock::new(Vec::new())),
            vlans,
            run_dir: Some(run_dir),
            out_dir,
            conditions: Arc::default(),
            opts: opts.clone(),
            subtests: std::sync::Mutex::new(SubtestState::default()),
            watchdog: None,
            rt: Some(rt),
        };
        for script in &opts.start_scripts {
            driver.create_machine(script)?;
        }
        let exit_after = opts.exit_after_timeout.map(|grace| ExitAfter {
            grace,
            run_dir: (!opts.keep_state).then(|| driver.run_dir().to_owned()),
        });
        driver.watchdog = Some(Watchdog::start(
            driver.machines.clone(),
            opts.global_timeout,
            exit_after,
            opts.forensics.clone(),
        ));
        if opts.handle_signals {
            driver.handle_signals();
        }
        Ok(driver)
    }

    /// Kills every machine, removes the run directory (unless kept) and exits
    /// on SIGINT (130) or SIGTERM (143): no QEMU outlives an interrupted run.
    fn handle_signals(&self) {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the driver");
        let machines = self.machines.clone();
        let run_dir = self.run_dir().to_owned();
        let keep = self.opts.keep_state;
        rt.spawn(async move {
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                tracing::warn!(
                    "cannot handle SIGINT/SIGTERM: machines may outlive an interrupted run"
                );
                return;
            };
            let code = tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            };
            tracing::error!("interrupted: stopping every machine");
            for m in machines
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                m.kill();
            }
            if !keep {
                let _ = std::fs::remove_dir_all(&run_dir);
            }
            std::process::exit(code);
        });
    }

    /// Adds a machine for a start script (NixOS's `create_machine`); it is not started.
    pub fn create_machine(&self, script: &Path) -> Result<Machine> {
        let name = machine_name(script);
        if self.machine(&name).is_some() {
            return Err(Error::Setup(format!(
                "two start scripts make a machine named `{name}`"
            )));
        }
        if !script.is_file() {
            return Err(Error::Setup(format!(
                "start script {} does not exist",
                script.display()
            )));
        }
        if !is_executable(script) {
            return Err(Error::Setup(format!(
                "start script {} is not executable (chmod +x it)",
                script.display()
            )));
        }
        let run_dir = self.run_dir();
        let vhost_user_ports = self.vhost_user_ports(&name, script)?;
        let cfg = MachineConfig {
            state_dir: run_dir.join(format!("vm-state-{name}")),
            shared_dir: run_dir.join("shared-xchg"),
            out_dir: self.out_dir.clone(),
            vde_sockets: self
                .vlans
                .iter()
                .map(|v| (v.nr, v.socket_dir().to_owned()))
                .collect(),
            vhost_user_ports,
            global_timeout: self.opts.global_timeout,
            switches: self
                .vlans
                .iter()
                .map(|v| (v.nr, v.switch.clone()))
                .collect(),
            conditions: self.conditions.clone(),
            boot_timeout: self.opts.boot_timeout,
            ocr: self.opts.ocr,
            snapshots: self
                .opts
                .snapshots
                .clone()
                .filter(|_| !self.opts.no_snapshot.contains(&name)),
            start_script: std::path::absolute(script).unwrap_or_else(|_| script.to_owned()),
            name,
        };
        let rt = self
            .rt
            .as_ref()
            .expect("runtime lives as long as the driver")
            .handle()
            .clone();
        let machine = Machine::new(cfg, rt);
        self.machines
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(machine.clone());
        Ok(machine)
    }

    /// Makes machine `name`'s vhost-user ports: one on each VLAN whose
    /// `QEMU_VHOST_USER_SOCKET_<n>` the start script names (a guest-kit script
    /// of a `net = "vhost-user"` node; NixOS's scripts name none). The ports
    /// live as long as the switches, so QEMU reconnects to them after a
    /// shutdown or crash.
    fn vhost_user_ports(&self, name: &str, script: &Path) -> Result<Vec<VhostUserPort>> {
        let text = std::fs::read(script).map_err(|e| {
            Error::Setup(format!(
                "cannot read start script {}: {e}",
                script.display()
            ))
        })?;
        let mut ports: Vec<VhostUserPort> = Vec::new();
        for nr in vhost_user_vlans(&String::from_utf8_lossy(&text)) {
            let Some(vlan) = self.vlans.iter().find(|v| v.nr == nr) else {
                // The script stops with its own message naming the variable.
                tracing::warn!(machine = %name, "{} asks for a vhost-user port on VLAN {nr}, which this run does not have", script.display());
                continue;
            };
            let socket = self.run_dir().join(format!("vhost{nr}-{name}.sock"));
            match vlan.switch.add_vhost_user_port(&socket) {
                Ok(port) => {
                    tracing::info!(machine = %name, vlan = nr, "vhost-user port {} of VLAN {nr} at {}", port.0, socket.display());
                    ports.push(VhostUserPort {
                        vlan: nr,
                        port,
                        socket,
                    });
                }
                Err(e) => {
                    for p in ports {
                        if let Some(v) = self.vlans.iter().find(|v| v.nr == p.vlan) {
                            let _ = v.switch.remove_vhost_user_port(p.port);
                        }
                    }
                    return Err(Error::Setup(format!(
                        "machine `{name}`: cannot make its vhost-user port on VLAN {nr} at {}: {e}",
                        socket.display()
                    )));
                }
            }
        }
        Ok(ports)
    }

    /// Adds a polling condition (checked before machine actions) until the
    /// returned guard is dropped (NixOS's `with polling_condition(...)`).
    pub fn polling_condition(&self, condition: impl Into<Arc<PollingCondition>>) -> ConditionGuard {
        let condition = condition.into();
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(condition.clone());
        ConditionGuard {
            conditions: self.conditions.clone(),
            condition,
        }
    }

    /// The machines, in the order they were created.
    pub fn machines(&self) -> Vec<Machine> {
        self.machines
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A machine by name.
    pub fn machine(&self, name: &str) -> Option<Machine> {
        self.machines
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|m| m.name() == name)
            .cloned()
    }

    /// The VLANs.
    pub fn vlans(&self) -> &[VLan] {
        &self.vlans
    }

    /// The private run directory (state directories, switch sockets, `shared-xchg`).
    pub fn run_dir(&self) -> &Path {
        self.run_dir
            .as_ref()
            .expect("run dir lives as long as the driver")
            .path()
    }

    /// The options of this run.
    pub fn options(&self) -> &DriverOptions {
        &self.opts
    }

    /// Starts every machine at once (NixOS's `start_all`).
    pub fn start_all(&self) -> Result<()> {
        Self::start_machines(&self.machines())
    }

    /// Starts these machines at once; the first error, if any.
    pub fn start_machines(machines: &[Machine]) -> Result<()> {
        std::thread::scope(|s| {
            let handles: Vec<_> = machines
                .iter()
                .map(|m| s.spawn(move || m.start(false)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Setup("a start thread panicked".into())))
                })
                .collect::<Result<Vec<()>>>()
        })
        .map(drop)
    }

    /// Waits until every machine's QEMU has exited (NixOS's `join_all`).
    pub fn join_all(&self) -> Result<()> {
        for m in self.machines().iter() {
            m.wait_for_shutdown(self.opts.global_timeout)?;
        }
        Ok(())
    }

    /// Whether the global timeout passed (and every machine was stopped).
    pub fn timed_out(&self) -> bool {
        self.watchdog
            .as_ref()
            .is_some_and(|w| w.fired.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Runs `f` as a named subtest (nested in the current one, if any):
    /// logged with its duration, recorded for the JUnit report, its error
    /// passed on. A global timeout turns any error into one that says so.
    pub fn subtest<T>(&self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let full = {
            let mut st = self.subtests.lock().unwrap_or_else(PoisonError::into_inner);
            st.stack.push(name.to_owned());
            st.stack.join(" / ")
        };
        let span = tracing::info_span!("subtest", name = %full);
        let start = std::time::Instant::now();
        let result = span.in_scope(f);
        let result = match result {
            Err(e) if self.timed_out() => Err(Error::Setup(format!(
                "global timeout of {} s reached during subtest `{full}`; every machine was stopped ({e})",
                self.opts.global_timeout.as_secs()
            ))),
            other => other,
        };
        let duration = start.elapsed();
        match &result {
            Ok(_) => tracing::info!("subtest `{full}` passed in {:.2} s", duration.as_secs_f64()),
            Err(e) => tracing::error!(
                "subtest `{full}` failed after {:.2} s: {e}",
                duration.as_secs_f64()
            ),
        }
        let mut st = self.subtests.lock().unwrap_or_else(PoisonError::into_inner);
        st.stack.pop();
        st.results.push(SubtestResult {
            name: full,
            duration,
            failure: result.as_ref().err().map(|e| e.to_string()),
        });
        result
    }

    /// Records a subtest run elsewhere (e.g. by a Python `with subtest(...)`).
    pub fn record_subtest(&self, result: SubtestResult) {
        self.subtests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .results
            .push(result);
    }

    /// Saves every running machine into [`DriverOptions::forensics`] (a failed
    /// test's machines, for `vmrig resume`), each within
    /// [`PRESERVE_BUDGET`]; they stay stopped. Returns the names saved.
    pub fn preserve_machines(&self) -> Vec<String> {
        match &self.opts.forensics {
            Some(store) => preserve(&self.machines(), store),
            None => Vec::new(),
        }
    }

    /// Stops every machine and removes the run directory (unless kept) without
    /// needing the driver by value: for callers that share it (the Python shim).
    pub fn terminate(&self) {
        if let Some(w) = self.watchdog.as_ref() {
            *w.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
            w.stop.1.notify_all();
        }
        for m in self.machines().iter() {
            m.kill();
        }
        if !self.opts.keep_state {
            if let Some(dir) = self.run_dir.as_ref() {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }

    /// The subtests run so far, in the order they finished.
    pub fn subtest_results(&self) -> Vec<SubtestResult> {
        self.subtests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .results
            .clone()
    }

    /// Writes the subtests as JUnit XML.
    pub fn write_junit(&self, path: &Path, suite: &str) -> Result<()> {
        std::fs::write(path, junit_xml(suite, &self.subtest_results())).map_err(|e| {
            Error::Report(format!(
                "cannot write the JUnit report {}: {e}",
                path.display()
            ))
        })
    }

    /// Kills every machine, stops the switches, removes the run directory
    /// unless `keep_state`. Idempotent; also done on drop.
    pub fn cleanup(&mut self) {
        if let Some(w) = self.watchdog.as_mut() {
            w.disarm();
        }
        for m in self.machines().iter() {
            m.kill();
        }
        self.vlans.clear();
        if let Some(dir) = self.run_dir.take() {
            if self.opts.keep_state {
                let kept = dir.keep();
                tracing::info!("kept the machine state in {}", kept.display());
            }
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Keeps a polling condition in force; dropping it removes the condition.
#[must_use = "the condition is removed when the guard is dropped"]
pub struct ConditionGuard {
    conditions: Conditions,
    condition: Arc<PollingCondition>,
}

impl ConditionGuard {
    /// The condition.
    pub fn condition(&self) -> &PollingCondition {
        &self.condition
    }
}

impl Drop for ConditionGuard {
    fn drop(&mut self) {
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|c| !Arc::ptr_eq(c, &self.condition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_setups_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DriverOptions::new(vec![dir.path().join("run-a-vm")]);
        opts.out_dir = dir.path().join("out");
        let e = Driver::new(opts.clone()).err().unwrap().to_string();
        assert!(e.contains("run-a-vm does not exist"), "{e}");
        std::fs::write(dir.path().join("run-a-vm"), "#!/bin/sh\n").unwrap();
        let e = Driver::new(opts.clone()).err().unwrap().to_string();
        assert!(e.contains("run-a-vm is not executable"), "{e}");
        opts.start_scripts.clear();
        opts.vlans = vec![1, 1];
        let e = Driver::new(opts).err().unwrap().to_string();
        assert!(e.contains("VLAN 1 is listed twice"), "{e}");
    }

    #[test]
    fn vhost_user_vlans_are_read_from_the_script() {
        let script =
            ": \"${QEMU_VHOST_USER_SOCKET_12:?...}\"\n: \"${QEMU_VHOST_USER_SOCKET_1:?}\"\n\
                      path=\"$QEMU_VHOST_USER_SOCKET_1\" path=\"$QEMU_VHOST_USER_SOCKET_12\" \
                      QEMU_VHOST_USER_SOCKET_x QEMU_VHOST_USER_SOCKET_300 QEMU_VDE_SOCKET_2";
        assert_eq!(
            vhost_user_vlans(script).into_iter().collect::<Vec<_>>(),
            [1, 12]
        );
        assert!(vhost_user_vlans("-netdev vde,id=vlan1,sock=\"$QEMU_VDE_SOCKET_1\"").is_empty());
    }

    #[test]
    fn vhost_user_ports_are_made_for_the_scripts_that_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt;
            let p = dir.path().join(format!("run-{name}-vm"));
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let vde = script(
            "a",
            "#!/bin/sh\nexec qemu -netdev vde,sock=\"$QEMU_VDE_SOCKET_1\"\n",
        );
        let vhost = script("b", "#!/bin/sh\nexec qemu path=\"$QEMU_VHOST_USER_SOCKET_1\" path=\"$QEMU_VHOST_USER_SOCKET_2\" path=\"$QEMU_VHOST_USER_SOCKET_7\"\n");
        let mut opts = DriverOptions::new(vec![vde, vhost]);
        opts.vlans = vec![1, 2];
        opts.out_dir = dir.path().join("out");
        opts.tmp_dir = Some(dir.path().to_owned());
        let driver = Driver::new(opts).unwrap();
        assert!(driver
            .machine("a")
            .unwrap()
            .config()
            .vhost_user_ports
            .is_empty());
        let ports = driver
            .machine("b")
            .unwrap()
            .config()
            .vhost_user_ports
            .clone();
        assert_eq!(
            ports.iter().map(|p| p.vlan).collect::<Vec<_>>(),
            [1, 2],
            "no VLAN 7 in this run"
        );
        for (p, vlan) in ports.iter().zip(driver.vlans()) {
            assert_eq!(
                p.socket,
                driver.run_dir().join(format!("vhost{}-b.sock", vlan.nr()))
            );
            assert_eq!(vlan.switch().vhost_user_socket(p.port).unwrap(), p.socket);
            assert!(!vlan.switch().vhost_user_connected(p.port).unwrap());
        }
    }

    #[test]
    fn subtests_nest_and_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DriverOptions::new(vec![]);
        opts.out_dir = dir.path().join("out");
        let driver = Driver::new(opts).unwrap();
        let r: Result<()> = driver.subtest("outer", || {
            driver.subtest("inner ok", || Ok(()))?;
            driver.subtest("inner bad", || Err(Error::Setup("broken".into())))
        });
        assert!(r.is_err());
        let names: Vec<_> = driver
            .subtest_results()
            .into_iter()
            .map(|r| (r.name, r.failure.is_some()))
            .collect();
        assert_eq!(
            names,
            [
                ("outer / inner ok".to_owned(), false),
                ("outer / inner bad".into(), true),
                ("outer".into(), true)
            ]
        );
        let junit = dir.path().join("junit.xml");
        driver.write_junit(&junit, "suite").unwrap();
        assert!(std::fs::read_to_string(junit)
            .unwrap()
            .contains("failures=\"2\""));
    }

    #[test]
    fn global_timeout_fires_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DriverOptions::new(vec![]);
        opts.out_dir = dir.path().join("out");
        opts.global_timeout = Duration::from_millis(200);
        let driver = Driver::new(opts).unwrap();
        let e = driver
            .subtest("slow", || {
                std::thread::sleep(Duration::from_millis(800));
                Err::<(), _>(Error::Setup("interrupted".into()))
            })
            .unwrap_err();
        assert!(driver.timed_out());
        assert!(
            e.to_string()
                .contains("global timeout of 0 s reached during subtest `slow`"),
            "{e}"
        );
    }

    #[test]
    fn switches_live_in_a_private_run_dir_that_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = DriverOptions::new(vec![]);
        opts.vlans = vec![1, 2];
        opts.out_dir = dir.path().join("out");
        opts.tmp_dir = Some(dir.path().to_owned());
        let driver = Driver::new(opts).unwrap();
        let run = driver.run_dir().to_owned();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(driver.vlans()[1].socket_dir().join("ctl").exists());
        drop(driver);
        assert!(!run.exists());
    }
}
