//! One virtual machine: its QEMU process, backdoor shell, QMP and HMP
//! monitor connections, and the NixOS `Machine` operations on them.
//!
//! Methods block (like NixOS's): they run on the driver's tokio runtime and
//! must not be called from inside an async context.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, ChildStdin};
use tokio::sync::Mutex;
use vmrig_backdoor::{Command, Shell};
use vmrig_qmp::{Client as Qmp, ImageFormat, Screendump, SetLink};

use crate::console::Console;
use crate::error::{Error, Result};
use vmrig_guest::contract::StartContract;
use vmrig_guest::script::sh_quote;

/// NixOS's default for `execute` and every `wait_*`: 15 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

/// How long QEMU may take to connect its monitor and shell sockets.
const CONNECT_SOCKETS: Duration = Duration::from_secs(60);

/// How long the backdoor may take to appear by default (NixOS: 10 x 30 s).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Extra host-side time over a guest-side `timeout`, so the guest's 124 arrives.
const HOST_MARGIN: Duration = Duration::from_secs(30);

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
    /// Bound for commands that have no timeout of their own.
    pub global_timeout: Duration,
    /// The switch of each VLAN (for link faults on this machine's ports).
    pub switches: Vec<(u8, Arc<vmrig_vde_net::Switch>)>,
    /// Polling conditions checked before actions.
    pub conditions: crate::polling::Conditions,
    /// How long the backdoor may take to appear after start.
    pub boot_timeout: Duration,
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
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    shell: Shell<UnixStream>,
    /// Set by `reboot()`: the guest prints the magic line again.
    await_magic: bool,
    qmp: Qmp,
    monitor: BufReader<UnixStream>,
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
                console_cursor: std::sync::atomic::AtomicUsize::new(0),
                pid: std::sync::atomic::AtomicU32::new(0),
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

    /// Starts QEMU if it is not running: binds the monitor and shell sockets,
    /// runs the start script with the driver's options and environment, accepts
    /// both connections and connects to QMP. `-no-reboot` unless `allow_reboot`.
    pub fn start(&self, allow_reboot: bool) -> Result<()> {
        self.block(self.start_async(allow_reboot))
    }

    async fn start_async(&self, allow_reboot: bool) -> Result<()> {
        let mut running = self.inner.running.lock().await;
        if let Some(r) = running.as_mut() {
            if matches!(r.child.try_wait(), Ok(None)) {
                return Ok(());
            }
            *running = None;
        }
        let cfg = &self.inner.cfg;
        tracing::info!(machine = %cfg.name, "starting vm");
        let started = Instant::now();
        let io = |what: &str, e: std::io::Error| self.machine_error(format!("{what}: {e}"));
        create_private_dir(&cfg.state_dir)
            .map_err(|e| io(&format!("cannot create {}", cfg.state_dir.display()), e))?;
        std::fs::create_dir_all(&cfg.shared_dir)
            .map_err(|e| io(&format!("cannot create {}", cfg.shared_dir.display()), e))?;
        let mut contract = StartContract::new(cfg.name.as_str(), &cfg.state_dir, &cfg.shared_dir);
        contract.vde_sockets.clone_from(&cfg.vde_sockets);
        contract.allow_reboot = allow_reboot;
        let (monitor_path, shell_path, qmp_path) = (
            contract.monitor_socket(),
            contract.shell_socket(),
            contract.qmp_socket(),
        );
        for p in [&monitor_path, &shell_path, &qmp_path] {
            let _ = std::fs::remove_file(p);
        }
        let monitor_listener = UnixListener::bind(&monitor_path)
            .map_err(|e| io(&format!("cannot listen on {}", monitor_path.display()), e))?;
        let shell_listener = UnixListener::bind(&shell_path)
            .map_err(|e| io(&format!("cannot listen on {}", shell_path.display()), e))?;

        let mut cmd = tokio::process::Command::from(contract.command(&cfg.start_script));
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| io(&format!("cannot run {}", cfg.start_script.display()), e))?;
        let pid = child.id().unwrap_or(0);
        self.inner.pid.store(pid, Ordering::SeqCst);
        // Before anything polls `child.wait()`, which closes the child's stdin.
        let stdin = child.stdin.take();
        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (console, name) = (Arc::clone(&self.inner.console), cfg.name.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).split(b'\n');
                while let Ok(Some(line)) = lines.next_segment().await {
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim_end_matches('\r');
                    tracing::info!(target: "vmrig::console", machine = %name, "{line}");
                    console.push_line(line);
                }
            });
        }

        let monitor = self
            .accept(&monitor_listener, &mut child, "monitor")
            .await?;
        let shell = self.accept(&shell_listener, &mut child, "shell").await?;
        let qmp = Qmp::connect(&qmp_path, Duration::from_secs(30))
            .await
            .map_err(|e| {
                self.machine_error(format!(
                    "cannot connect to QMP at {}: {e}",
                    qmp_path.display()
                ))
            })?;
        let mut monitor = BufReader::new(monitor);
        read_monitor_prompt(&mut monitor, Duration::from_secs(30))
            .await
            .map_err(|e| self.machine_error(format!("monitor: {e}")))?;
        self.inner.booted.store(true, Ordering::SeqCst);
        self.inner.connected.store(false, Ordering::SeqCst);
        tracing::info!(machine = %cfg.name, pid, "QEMU running (pid {pid}) after {:.2} s", started.elapsed().as_secs_f64());
        *running = Some(Running {
            stdin,
            child,
            shell: Shell::new(shell),
            await_magic: false,
            qmp,
            monitor,
        });
        Ok(())
    }

    async fn accept(
        &self,
        listener: &UnixListener,
        child: &mut Child,
        what: &str,
    ) -> Result<UnixStream> {
        tokio::select! {
            accepted = tokio::time::timeout(CONNECT_SOCKETS, listener.accept()) => match accepted {
                Ok(Ok((stream, _))) => Ok(stream),
                Ok(Err(e)) => Err(self.machine_error(format!("cannot accept QEMU's {what} connection: {e}"))),
                Err(_) => Err(self.timeout(format!("QEMU connecting to the {what} socket"), CONNECT_SOCKETS)),
            },
            status = child.wait() => {
                // Give the console readers a moment to record QEMU's last words.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                Err(self.machine_error(format!("QEMU exited ({status}) before connecting its {what} socket")))
            }
        }
    }

    /// Starts the machine if needed and waits for the backdoor shell.
    pub fn connect(&self) -> Result<()> {
        self.block(self.connect_async())
    }

    async fn connect_async(&self) -> Result<()> {
        if self.is_connected() {
            return Ok(());
        }
        self.start_async(false).await?;
        let mut running = self.inner.running.lock().await;
        let r = running
            .as_mut()
            .ok_or_else(|| self.machine_error("the machine stopped while connecting"))?;
        if std::mem::take(&mut r.await_magic) {
            // After a reboot the same socket carries a new backdoor: start over.
            let (spare, _) = UnixStream::pair().map_err(|e| self.machine_error(e.to_string()))?;
            let old = std::mem::replace(&mut r.shell, Shell::ready(spare));
            r.shell = Shell::new(old.into_inner());
        }
        let started = Instant::now();
        r.shell
            .wait_ready(self.inner.cfg.boot_timeout)
            .await
            .map_err(|e| self.backdoor_error(e, "waiting for the backdoor shell"))?;
        self.inner.connected.store(true, Ordering::SeqCst);
        tracing::info!(machine = %self.name(), "connected to the backdoor: connecting took {:.2} seconds", started.elapsed().as_secs_f64());
        Ok(())
    }

    fn backdoor_error(&self, e: vmrig_backdoor::Error, doing: &str) -> Error {
        match e {
            vmrig_backdoor::Error::Timeout { .. } => {
                self.timeout(doing.to_owned(), self.inner.cfg.boot_timeout)
            }
            other => self.machine_error(format!("{doing}: {other}")),
        }
    }

    /// NixOS's `execute`: runs `command` with `bash -c` under `set -euo pipefail`;
    /// returns `(status, stdout)`. `timeout` is enforced in the guest (status 124).
    /// Without `check_return` the status is -1, without `check_output` -2 and no output.
    pub fn execute(
        &self,
        command: &str,
        check_return: bool,
        check_output: bool,
        timeout: Option<Duration>,
    ) -> Result<(i32, String)> {
        crate::polling::check_all(&self.inner.cfg.conditions).map_err(|e| self.with_machine(e))?;
        self.block(self.execute_async(command, check_return, check_output, timeout))
    }

    async fn execute_async(
        &self,
        command: &str,
        check_return: bool,
        check_output: bool,
        timeout: Option<Duration>,
    ) -> Result<(i32, String)> {
        self.connect_async().await?;
        let cmd = Command::new(command.as_bytes().to_vec())
            .timeout(timeout)
            .check_return(check_return)
            .check_output(check_output);
        let host_bound = timeout.map_or(self.inner.cfg.global_timeout, |t| t + HOST_MARGIN);
        let mut running = self.inner.running.lock().await;
        let r = running.as_mut().ok_or_else(|| {
            self.machine_error(format!("`{command}`: the machine is not running"))
        })?;
        match r.shell.run(&cmd, host_bound).await {
            Ok(outcome) => Ok((
                outcome.status,
                String::from_utf8_lossy(&outcome.output).into_owned(),
            )),
            Err(vmrig_backdoor::Error::Timeout { .. }) => {
                Err(self.timeout(format!("`{command}`"), host_bound))
            }
            Err(e) => {
                if matches!(r.child.try_wait(), Ok(Some(_))) {
                    self.inner.booted.store(false, Ordering::SeqCst);
                    self.inner.connected.store(false, Ordering::SeqCst);
                }
                Err(self.machine_error(format!("`{command}`: {e}")))
            }
        }
    }

    /// NixOS's `succeed`: runs each command, fails unless every one exits 0;
    /// returns their outputs concatenated.
    pub fn succeed(&self, commands: &[&str], timeout: Option<Duration>) -> Result<String> {
        let mut out = String::new();
        for command in commands {
            let _log = self.nested(&format!("must succeed: {command}"));
            let (status, output) = self.execute(command, true, true, timeout)?;
            if status != 0 {
                return Err(self.assertion(format!(
                    "command `{command}` failed (exit code {status})\n{output}"
                )));
            }
            out.push_str(&output);
        }
        Ok(out)
    }

    /// NixOS's `fail`: fails if any command exits 0; returns their outputs.
    pub fn fail(&self, commands: &[&str], timeout: Option<Duration>) -> Result<String> {
        let mut out = String::new();
        for command in commands {
            let _log = self.nested(&format!("must fail: {command}"));
            let (status, output) = self.execute(command, true, true, timeout)?;
            if status == 0 {
                return Err(self.assertion(format!(
                    "command `{command}` unexpectedly succeeded\n{output}"
                )));
            }
            out.push_str(&output);
        }
        Ok(out)
    }

    /// Retries `command` every second until it exits 0 (returns its output)
    /// or `timeout` passes.
    pub fn wait_until_succeeds(&self, command: &str, timeout: Duration) -> Result<String> {
        self.retry_command(
            command,
            timeout,
            true,
            &format!("waiting for `{command}` to succeed"),
        )
    }

    /// Retries `command` every second until it exits non-zero.
    pub fn wait_until_fails(&self, command: &str, timeout: Duration) -> Result<String> {
        self.retry_command(
            command,
            timeout,
            false,
            &format!("waiting for `{command}` to fail"),
        )
    }

    fn retry_command(
        &self,
        command: &str,
        timeout: Duration,
        want_success: bool,
        what: &str,
    ) -> Result<String> {
        let _log = self.nested(what);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (status, output) =
                self.execute(command, true, true, Some(left.max(Duration::from_secs(1))))?;
            if (status == 0) == want_success {
                return Ok(output);
            }
            if Instant::now() + Duration::from_secs(1) > deadline {
                return Err(self.timeout(format!("{what} (last exit code {status})"), timeout));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until a TCP port accepts connections in the guest (`nc -z`).
    pub fn wait_for_open_port(&self, port: u16, addr: &str, timeout: Duration) -> Result<()> {
        self.wait_for_port(port, addr, timeout, true)
    }

    /// Waits until nothing listens on a TCP port any more.
    pub fn wait_for_closed_port(&self, port: u16, addr: &str, timeout: Duration) -> Result<()> {
        self.wait_for_port(port, addr, timeout, false)
    }

    fn wait_for_port(&self, port: u16, addr: &str, timeout: Duration, open: bool) -> Result<()> {
        let cmd = format!("nc -z {} {port}", sh_quote(addr));
        let state = if open { "open" } else { "close" };
        let what = format!("waiting for port {port} on {addr} to {state}");
        self.retry_command(&cmd, timeout, open, &what).map(drop)
    }

    /// Waits until a file exists in the guest.
    pub fn wait_for_file(&self, path: &str, timeout: Duration) -> Result<()> {
        let cmd = format!("test -e {}", sh_quote(path));
        self.retry_command(&cmd, timeout, true, &format!("waiting for file {path}"))
            .map(drop)
    }

    /// Waits until the serial console matches `regex`, searching what it printed
    /// since the previous call consumed it (like NixOS's console queue); returns the match.
    pub fn wait_for_console_text(&self, regex: &str, timeout: Option<Duration>) -> Result<String> {
        let re = regex::Regex::new(regex)
            .map_err(|e| self.assertion(format!("bad regex `{regex}`: {e}")))?;
        let console = Arc::clone(&self.inner.console);
        let start_at = self.inner.console_cursor.load(Ordering::SeqCst);
        let deadline = timeout.map(|t| Instant::now() + t);
        self.block(async {
            loop {
                let notified = console.notified();
                let (text, end) = (console.log_since(start_at), console.len());
                if let Some(m) = re.find(&text) {
                    self.inner.console_cursor.store(end, Ordering::SeqCst);
                    return Ok(m.as_str().to_owned());
                }
                match deadline {
                    Some(d) => {
                        if tokio::time::timeout_at(d.into(), notified).await.is_err() {
                            return Err(self.timeout(
                                format!("waiting for `{regex}` on the console"),
                                timeout.unwrap_or_default(),
                            ));
                        }
                    }
                    None => notified.await,
                }
            }
        })
    }

    /// `sleep` in guest time.
    pub fn sleep(&self, duration: Duration) -> Result<()> {
        self.succeed(&[&format!("sleep {}", duration.as_secs_f64())], None)
            .map(drop)
    }

    /// Sends an HMP command on the monitor socket; returns its raw reply.
    pub fn send_monitor_command(&self, command: &str) -> Result<String> {
        crate::polling::check_all(&self.inner.cfg.conditions).map_err(|e| self.with_machine(e))?;
        self.block(async {
            let mut running = self.inner.running.lock().await;
            let r = running.as_mut().ok_or_else(|| {
                self.machine_error("send_monitor_command: the machine is not running")
            })?;
            r.monitor
                .get_mut()
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(|e| self.machine_error(format!("monitor: {e}")))?;
            read_monitor_prompt(&mut r.monitor, Duration::from_secs(60))
                .await
                .map_err(|e| self.machine_error(format!("monitor `{command}`: {e}")))
        })
    }

    /// Writes bytes to the serial console's input (QEMU's stdin).
    pub fn send_console(&self, chars: &str) -> Result<()> {
        self.block(async {
            let mut running = self.inner.running.lock().await;
            let r = running
                .as_mut()
                .ok_or_else(|| self.machine_error("send_console: the machine is not running"))?;
            let stdin = r
                .stdin
                .as_mut()
                .ok_or_else(|| self.machine_error("send_console: QEMU's stdin is closed"))?;
            stdin
                .write_all(chars.as_bytes())
                .await
                .map_err(|e| self.machine_error(format!("send_console: {e}")))
        })
    }

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

    /// Unplugs (false) or plugs (true) the first VLAN NIC (`virtio-net-pci.1`,
    /// after the user-mode NIC), as NixOS's `block`/`unblock` do.
    pub fn set_link(&self, up: bool) -> Result<()> {
        self.block(async {
            let running = self.inner.running.lock().await;
            let r = running
                .as_ref()
                .ok_or_else(|| self.machine_error("set_link: the machine is not running"))?;
            r.qmp
                .execute(SetLink {
                    name: "virtio-net-pci.1".into(),
                    up,
                })
                .await
                .map(drop)
                .map_err(|e| self.machine_error(format!("set_link virtio-net-pci.1: {e}")))
        })
    }

    /// NixOS's `block`: the first VLAN NIC's cable out.
    pub fn block_network(&self) -> Result<()> {
        self.set_link(false)
    }

    /// NixOS's `unblock`.
    pub fn unblock_network(&self) -> Result<()> {
        self.set_link(true)
    }

    /// NixOS's `shutdown`: `poweroff` in the guest, then waits for QEMU to exit.
    pub fn shutdown(&self) -> Result<()> {
        if !self.is_booted() {
            return Ok(());
        }
        self.connect()?;
        self.block(async {
            let mut running = self.inner.running.lock().await;
            if let Some(r) = running.as_mut() {
                r.shell
                    .send_raw(b"poweroff\n", Duration::from_secs(10))
                    .await
                    .map_err(|e| self.machine_error(format!("shutdown: {e}")))?;
            }
            drop(running);
            self.wait_for_shutdown_async(DEFAULT_TIMEOUT).await
        })
    }

    /// NixOS's `crash`: QMP `quit`, then waits for QEMU to exit.
    pub fn crash(&self) -> Result<()> {
        if !self.is_booted() {
            return Ok(());
        }
        self.block(async {
            {
                let running = self.inner.running.lock().await;
                if let Some(r) = running.as_ref() {
                    // QEMU may close the socket before answering: that is success.
                    let _ = r.qmp.execute(vmrig_qmp::Quit).await;
                }
            }
            self.wait_for_shutdown_async(Duration::from_secs(60)).await
        })
    }

    /// Waits until QEMU exits.
    pub fn wait_for_shutdown(&self, timeout: Duration) -> Result<()> {
        self.block(self.wait_for_shutdown_async(timeout))
    }

    async fn wait_for_shutdown_async(&self, timeout: Duration) -> Result<()> {
        let mut running = self.inner.running.lock().await;
        if let Some(r) = running.as_mut() {
            let status = tokio::time::timeout(timeout, r.child.wait())
                .await
                .map_err(|_| self.timeout("waiting for the machine to shut down", timeout))?;
            tracing::info!(machine = %self.name(), "QEMU exited: {}", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
        }
        *running = None;
        self.inner.pid.store(0, Ordering::SeqCst);
        self.inner.booted.store(false, Ordering::SeqCst);
        self.inner.connected.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Copies a host file or directory into the guest at `target`, through the
    /// shared directory (`/tmp/shared`).
    pub fn copy_from_host(&self, source: &Path, target: &str) -> Result<()> {
        let name = source.file_name().ok_or_else(|| {
            self.assertion(format!(
                "copy_from_host: {} has no file name",
                source.display()
            ))
        })?;
        let staging = tempfile::Builder::new()
            .prefix("copy-")
            .tempdir_in(&self.inner.cfg.shared_dir)
            .map_err(|e| self.machine_error(format!("copy_from_host: {e}")))?;
        let staged = staging.path().join(name);
        copy_recursively(source, &staged)
            .map_err(|e| self.machine_error(format!("copy_from_host {}: {e}", source.display())))?;
        let in_guest = format!(
            "/tmp/shared/{}/{}",
            staging
                .path()
                .file_name()
                .expect("tempdir name")
                .to_string_lossy(),
            name.to_string_lossy()
        );
        let target_dir = Path::new(target)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cmd = if target_dir.is_empty() {
            format!("cp -r {} {}", sh_quote(&in_guest), sh_quote(target))
        } else {
            format!(
                "mkdir -p {} && cp -r {} {}",
                sh_quote(&target_dir),
                sh_quote(&in_guest),
                sh_quote(target)
            )
        };
        self.succeed(&[&cmd], None).map(drop)
    }

    /// Copies a guest file or directory to `OUT/target_dir/` (NixOS's
    /// `copy_from_machine`), through the shared directory. Returns the host path.
    pub fn copy_from_machine(&self, source: &str, target_dir: &str) -> Result<PathBuf> {
        let staging = tempfile::Builder::new()
            .prefix("copy-")
            .tempdir_in(&self.inner.cfg.shared_dir)
            .map_err(|e| self.machine_error(format!("copy_from_machine: {e}")))?;
        let dir_name = staging
            .path()
            .file_name()
            .expect("tempdir name")
            .to_string_lossy()
            .into_owned();
        let base = Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        self.succeed(
            &[&format!(
                "cp -r {} {}",
                sh_quote(source),
                sh_quote(&format!("/tmp/shared/{dir_name}/"))
            )],
            None,
        )?;
        let dest_dir = self.inner.cfg.out_dir.join(target_dir);
        std::fs::create_dir_all(&dest_dir)
            .map_err(|e| self.machine_error(format!("copy_from_machine: {e}")))?;
        let dest = dest_dir.join(&base);
        copy_recursively(&staging.path().join(&base), &dest)
            .map_err(|e| self.machine_error(format!("copy_from_machine {source}: {e}")))?;
        Ok(dest)
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

    /// After a reboot: the next command waits for the backdoor again.
    pub(crate) fn mark_disconnected(&self) {
        self.inner.connected.store(false, Ordering::SeqCst);
        self.block(async {
            if let Some(r) = self.inner.running.lock().await.as_mut() {
                r.await_magic = true;
            }
        });
    }

    /// Waits for a QMP event that `filter` accepts (NixOS's `wait_for_qmp_event`).
    pub fn wait_for_qmp_event(
        &self,
        filter: impl FnMut(&vmrig_qmp::Event) -> bool,
        timeout: Duration,
    ) -> Result<vmrig_qmp::Event> {
        self.block(async {
            let qmp = {
                let running = self.inner.running.lock().await;
                running.as_ref().map(|r| r.qmp.clone()).ok_or_else(|| {
                    self.machine_error("wait_for_qmp_event: the machine is not running")
                })?
            };
            qmp.wait_for_event(filter, timeout)
                .await
                .map_err(|e| match e {
                    vmrig_qmp::Error::EventTimeout { .. } => {
                        self.timeout("waiting for a QMP event", timeout)
                    }
                    other => self.machine_error(format!("wait_for_qmp_event: {other}")),
                })
        })
    }

    /// Kills QEMU at once (used at the end of a run, on errors and interrupts).
    pub fn kill(&self) {
        // By pid first: a command in flight may hold `running` for minutes.
        let pid = self.inner.pid.swap(0, Ordering::SeqCst);
        if pid != 0 {
            vmrig_guest::process::kill_group(pid);
        }
        if let Ok(mut running) = self.inner.running.try_lock() {
            *running = None;
        }
        self.inner.booted.store(false, Ordering::SeqCst);
        self.inner.connected.store(false, Ordering::SeqCst);
    }

    /// QEMU's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.inner.pid.load(Ordering::SeqCst)).filter(|p| *p != 0)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

async fn read_monitor_prompt(
    monitor: &mut BufReader<UnixStream>,
    timeout: Duration,
) -> std::io::Result<String> {
    const PROMPT: &[u8] = b"(qemu) ";
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = monitor.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "QEMU closed the monitor",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.ends_with(PROMPT) {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no `(qemu) ` prompt"))??;
    buf.truncate(buf.len() - PROMPT.len());
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn copy_recursively(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_recursively(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(drop)
    }
}
