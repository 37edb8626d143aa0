//! One virtual machine: its QEMU process, backdoor shell, QMP and HMP
//! monitor connections, and the NixOS `Machine` operations on them.
//!
//! Methods block (like NixOS's): they run on the driver's tokio runtime and
//! must not be called from inside an async context.

mod command;
mod files;
mod lifecycle;
mod link;
mod monitor;
mod screen;
mod serial;
mod snapshot;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::process::{Child, ChildStdin};
use tokio::sync::Mutex;
use vmrig_backdoor::Shell;
use vmrig_qmp::Client as Qmp;

use crate::console::Console;
use crate::error::Error;

/// NixOS's default for `execute` and every `wait_*`: 15 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// How long the backdoor may take to appear by default (NixOS: 10 x 30 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Everything a machine needs to know about its place in a run.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Name (from `run-<name>-vm`).
    pub name: String,
    /// The start script.
    pub start_script: PathBuf,
    /// Private state directory (sockets, disk image); created 0700 at start.
    pub state_dir: PathBuf,
    /// `SHARED_DIR`, mounted at `/tmp/shared` in the guest.
    pub shared_dir: PathBuf,
    /// Output directory (screenshots, copied files).
    pub out_dir: PathBuf,
    /// `QEMU_VDE_SOCKET_<n>` for each VLAN.
    pub vde_sockets: Vec<(u8, PathBuf)>,
    /// This machine's vhost-user ports (`QEMU_VHOST_USER_SOCKET_<n>`), one per
    /// VLAN its start script names them for; they outlive its QEMU, so a
    /// restarted machine reconnects to the same ports.
    pub vhost_user_ports: Vec<VhostUserPort>,
    /// Bound for commands that have no timeout of their own.
    pub global_timeout: Duration,
    /// The switch of each VLAN (for link faults on this machine's ports).
    pub switches: Vec<(u8, Arc<vmrig_vde_net::Switch>)>,
    /// Polling conditions checked before actions.
    pub conditions: crate::polling::Conditions,
    /// How long the backdoor may take to appear after start.
    pub boot_timeout: Duration,
    /// Whether OCR is allowed (NixOS's `enableOCR`).
    pub ocr: bool,
    /// Where the machine is saved when first ready, and restored from in
    /// later runs; `None`: it always boots.
    pub snapshots: Option<crate::snapshot::Store>,
}

/// A machine's vhost-user port on one VLAN's switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserPort {
    /// The VLAN number.
    pub vlan: u8,
    /// The port on that VLAN's switch.
    pub port: vmrig_vde_net::PortId,
    /// The socket QEMU connects to (`QEMU_VHOST_USER_SOCKET_<vlan>`).
    pub socket: PathBuf,
}

/// A machine of a test run. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: MachineConfig,
    rt: tokio::runtime::Handle,
    console: Arc<Console>,
    running: Mutex<Option<Running>>,
    booted: AtomicBool,
    connected: AtomicBool,
    /// QEMU's pid while it runs (0: none), readable while a command holds
    /// `running`: the signal handler and the watchdog kill by it.
    pid: std::sync::atomic::AtomicU32,
    /// Where the next `wait_for_console_text` starts reading (NixOS consumes a
    /// queue of console lines; text before the cursor was consumed).
    console_cursor: std::sync::atomic::AtomicUsize,
    /// Set when the global timeout stopped the run's machines: none starts again.
    halted: AtomicBool,
    /// The snapshot key to save under when the machine is first ready.
    save_key: std::sync::Mutex<Option<String>>,
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    shell: Shell<UnixStream>,
    /// Set by `reboot()`: the guest prints the magic line again.
    await_magic: bool,
    qmp: Qmp,
    monitor: BufReader<UnixStream>,
    /// Guest RAM is a shared file (`memory-backend-file,share=on`): a save
    /// leaves it out of the migration stream and copies the file instead.
    ram_shared: bool,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.inner.cfg.name)
            .finish()
    }
}

impl Machine {
    /// A machine that is not started yet.
    pub fn new(cfg: MachineConfig, rt: tokio::runtime::Handle) -> Machine {
        Machine {
            inner: Arc::new(Inner {
                cfg,
                rt,
                console: Arc::new(Console::default()),
                running: Mutex::new(None),
                booted: AtomicBool::new(false),
                connected: AtomicBool::new(false),
                halted: AtomicBool::new(false),
                console_cursor: std::sync::atomic::AtomicUsize::new(0),
                pid: std::sync::atomic::AtomicU32::new(0),
                save_key: std::sync::Mutex::new(None),
            }),
        }
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }

    /// Its configuration (paths, VLAN sockets).
    pub fn config(&self) -> &MachineConfig {
        &self.inner.cfg
    }

    /// Whether QEMU was started and has not exited (as far as we know).
    pub fn is_booted(&self) -> bool {
        self.inner.booted.load(Ordering::SeqCst)
    }

    /// Whether the backdoor shell answered.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::SeqCst)
    }

    /// NixOS's `is_up`: booted and connected.
    pub fn is_up(&self) -> bool {
        self.is_booted() && self.is_connected()
    }

    /// The serial console so far.
    pub fn console_log(&self) -> String {
        self.inner.console.log()
    }

    /// The console, for callers that wait on it.
    pub fn console(&self) -> &Arc<Console> {
        &self.inner.console
    }

    /// A log section for an action on this machine (NixOS's `nested`).
    pub fn nested(&self, message: &str) -> tracing::span::EnteredSpan {
        tracing::info_span!("action", machine = %self.name(), message = %message).entered()
    }

    pub(crate) fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.inner.rt.block_on(f)
    }

    pub(crate) fn machine_error(&self, message: impl Into<String>) -> Error {
        Error::Machine {
            machine: self.name().to_owned(),
            message: message.into(),
            console: self.inner.console.tail(),
        }
    }

    pub(crate) fn assertion(&self, message: impl Into<String>) -> Error {
        Error::Assertion {
            machine: self.name().to_owned(),
            message: message.into(),
            console: self.inner.console.tail(),
        }
    }

    pub(crate) fn timeout(&self, what: impl Into<String>, timeout: Duration) -> Error {
        Error::Timeout {
            machine: self.name().to_owned(),
            what: what.into(),
            timeout,
            console: self.inner.console.tail(),
        }
    }

    /// A wait that NixOS builds on `retry` ran out of time: the same words
    /// ("action timed out after X seconds (timeout=T)"), then what was awaited.
    pub(crate) fn action_timed_out(
        &self,
        what: &str,
        started: Instant,
        timeout: Duration,
    ) -> Error {
        self.assertion(format!(
            "action timed out after {:.2} seconds (timeout={}): {what}",
            started.elapsed().as_secs_f64(),
            timeout.as_secs_f64()
        ))
    }

    /// Fills in the machine and console of an assertion made without them (by [`crate::retry`]).
    pub(crate) fn with_machine(&self, e: Error) -> Error {
        match e {
            Error::Assertion {
                machine, message, ..
            } if machine.is_empty() => self.assertion(message),
            other => other,
        }
    }

    /// QEMU's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.inner.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }
}
