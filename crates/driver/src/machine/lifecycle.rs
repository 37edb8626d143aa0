//! Starting QEMU with the start-script contract, waiting for the backdoor,
//! and the ways a machine stops: `shutdown`, `crash`, `kill`.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::process::Child;
use vmrig_backdoor::Shell;
use vmrig_guest::contract::StartContract;
use vmrig_qmp::Client as Qmp;

use super::monitor::read_monitor_prompt;
use super::{Machine, Running, DEFAULT_TIMEOUT};
use crate::error::{Error, Result};

/// How long QEMU may take to connect its monitor and shell sockets.
const CONNECT_SOCKETS: Duration = Duration::from_secs(60);

impl Machine {
    /// Starts QEMU if it is not running: binds the monitor and shell sockets,
    /// runs the start script with the driver's options and environment, accepts
    /// both connections and connects to QMP. `-no-reboot` unless `allow_reboot`.
    pub fn start(&self, allow_reboot: bool) -> Result<()> {
        self.block(self.start_async(allow_reboot))
    }

    pub(super) async fn start_async(&self, allow_reboot: bool) -> Result<()> {
        let mut running = self.inner.running.lock().await;
        if let Some(r) = running.as_mut() {
            if matches!(r.child.try_wait(), Ok(None)) {
                return Ok(());
            }
            *running = None;
        }
        if self.inner.halted.load(Ordering::SeqCst) {
            return Err(self.machine_error(
                "the global timeout stopped every machine: it does not start again",
            ));
        }
        let cfg = &self.inner.cfg;
        tracing::info!(machine = %cfg.name, "starting vm");
        let started = Instant::now();
        let io = |what: &str, e: std::io::Error| self.machine_error(format!("{what}: {e}"));
        create_private_dir(&cfg.state_dir)
            .map_err(|e| io(&format!("cannot create {}", cfg.state_dir.display()), e))?;
        std::fs::create_dir_all(&cfg.shared_dir)
            .map_err(|e| io(&format!("cannot create {}", cfg.shared_dir.display()), e))?;
        let mut contract = self.contract(allow_reboot);
        // A save planned for an earlier boot that never became ready is void.
        let _ = self.take_save_key();
        let plan = self.snapshot_plan(&mut contract);
        if let Some(plan) = &plan {
            contract.vmgenid = true;
            if let Some(entry) = &plan.entry {
                match self.restore(&mut contract.clone(), entry).await {
                    Ok(r) => {
                        self.inner.booted.store(true, Ordering::SeqCst);
                        self.inner.connected.store(true, Ordering::SeqCst);
                        *running = Some(r);
                        return Ok(());
                    }
                    Err(why) => match &cfg.snapshots {
                        Some(store) if store.is_forensic() => {
                            return Err(self.machine_error(format!(
                                "cannot restore the saved machine from {}: {why}",
                                entry.dir.display()
                            )));
                        }
                        store => {
                            tracing::warn!(machine = %cfg.name, "snapshot {} removed, booting cold: {why}", plan.key);
                            if let Some(store) = store {
                                let _ = store.remove(&plan.key);
                            }
                        }
                    },
                }
            }
        }
        let r = self.launch(&contract).await?;
        if let Some(plan) =
            plan.filter(|_| cfg.snapshots.as_ref().is_some_and(|s| !s.is_forensic()))
        {
            self.plan_save(plan.key);
        }
        self.inner.booted.store(true, Ordering::SeqCst);
        self.inner.connected.store(false, Ordering::SeqCst);
        let pid = self.inner.pid.load(Ordering::SeqCst);
        tracing::info!(machine = %cfg.name, pid, "QEMU running (pid {pid}) after {:.2} s", started.elapsed().as_secs_f64());
        *running = Some(r);
        Ok(())
    }

    /// The start-script contract of this machine's run.
    pub(super) fn contract(&self, allow_reboot: bool) -> StartContract {
        let cfg = &self.inner.cfg;
        let mut contract = StartContract::new(cfg.name.as_str(), &cfg.state_dir, &cfg.shared_dir);
        contract.vde_sockets.clone_from(&cfg.vde_sockets);
        contract.vhost_user_sockets = cfg
            .vhost_user_ports
            .iter()
            .map(|p| (p.vlan, p.socket.clone()))
            .collect();
        contract.allow_reboot = allow_reboot;
        contract
    }

    /// Runs the start script under `contract`: binds the monitor and shell
    /// sockets, spawns it, records its output as the console, accepts both
    /// connections and connects to QMP.
    pub(super) async fn launch(&self, contract: &StartContract) -> Result<Running> {
        let cfg = &self.inner.cfg;
        let io = |what: &str, e: std::io::Error| self.machine_error(format!("{what}: {e}"));
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
        Ok(Running {
            stdin,
            child,
            shell: Shell::new(shell),
            await_magic: false,
            qmp,
            monitor,
            ram_shared: contract.ram.as_ref().is_some_and(|r| r.shared),
        })
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

    pub(super) async fn connect_async(&self) -> Result<()> {
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
        if let Some(key) = self.take_save_key() {
            self.save_snapshot(r, &key).await;
        }
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

    /// After a reboot: the next command waits for the backdoor again.
    pub(crate) fn mark_disconnected(&self) {
        self.inner.connected.store(false, Ordering::SeqCst);
        self.block(async {
            if let Some(r) = self.inner.running.lock().await.as_mut() {
                r.await_magic = true;
            }
        });
    }

    /// Kills the machine for good: nothing starts it again (the global
    /// timeout does this, so that a wait in progress, like `wait_for_text`,
    /// cannot boot it again).
    pub fn halt(&self) {
        self.inner.halted.store(true, Ordering::SeqCst);
        self.kill();
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
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
