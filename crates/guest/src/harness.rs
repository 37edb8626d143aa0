//! Boots start scripts the way the NixOS driver does, for tests and demos of
//! guests: the same start-script contract ([`crate::contract`]) and the same
//! backdoor protocol ([`vmrig_backdoor`]) as `vmrig-driver`, behind a small
//! synchronous API. The real orchestration (QMP, VLANs, logging, reports) is
//! the driver's; this module exists because the crates below the driver
//! (this one, `vmrig-vde-net`) test with real guests and cannot depend on it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use vmrig_guest::harness::{Guest, StartOptions};
//! let mut guest = Guest::start("result/bin/run-machine-vm".as_ref(), &StartOptions::default())?;
//! guest.wait_for_backdoor(Duration::from_secs(120))?;
//! let (status, out) = guest.run("uname -r", Duration::from_secs(30))?;
//! assert_eq!(status, 0);
//! print!("{out}");
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmrig_backdoor::Shell;

use crate::contract::{machine_name, StartContract};
use crate::process::kill_and_reap;

/// What went wrong with a guest; every message carries the machine and the
/// last console lines.
#[derive(Debug, thiserror::Error)]
#[error("{machine}: {message}\n--- last console lines ---\n{console}")]
pub struct HarnessError {
    /// Machine name.
    pub machine: String,
    /// What failed.
    pub message: String,
    /// The tail of the serial console.
    pub console: String,
}

/// How to start a guest.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// `QEMU_VDE_SOCKET_<n>` values: VLAN number and switch directory.
    pub vde_sockets: Vec<(u8, PathBuf)>,
    /// `QEMU_VHOST_USER_SOCKET_<n>` values: VLAN number and the socket of a
    /// vhost-user switch port (scripts of `net = "vhost-user"` nodes).
    pub vhost_user_sockets: Vec<(u8, PathBuf)>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Leave out `-no-reboot`.
    pub allow_reboot: bool,
    /// Echo console lines to stderr, prefixed with the machine name.
    pub echo_console: bool,
}

/// A running guest. Dropping it kills QEMU (its whole process group).
pub struct Guest {
    name: String,
    child: Child,
    /// Dropped before `rt`, whose reactor it is registered with.
    shell: Shell<tokio::net::UnixStream>,
    rt: tokio::runtime::Runtime,
    console: Arc<Mutex<VecDeque<String>>>,
    state: tempfile::TempDir,
    _monitor: UnixStream,
}

const CONSOLE_LINES: usize = 30;

impl Guest {
    /// Binds the monitor and shell sockets in a private state directory, runs
    /// the start script with the driver's QEMU options and accepts QEMU's
    /// connections (bounded: 60 s).
    pub fn start(script: &Path, opts: &StartOptions) -> Result<Guest, HarnessError> {
        let name = machine_name(script);
        let fail = |message: String, console: &Arc<Mutex<VecDeque<String>>>| HarnessError {
            machine: name.clone(),
            message,
            console: tail(console),
        };
        let no_console = Arc::new(Mutex::new(VecDeque::new()));
        let state = tempfile::Builder::new()
            .prefix(&format!("vmrig-{name}-"))
            .tempdir()
            .map_err(|e| fail(format!("cannot create a state directory: {e}"), &no_console))?;
        let dir = state.path();
        let shared = dir.join("shared-xchg");
        std::fs::create_dir(&shared).map_err(|e| {
            fail(
                format!("cannot create {}: {e}", shared.display()),
                &no_console,
            )
        })?;
        let mut contract = StartContract::new(name.as_str(), dir, &shared);
        contract.vde_sockets.clone_from(&opts.vde_sockets);
        contract
            .vhost_user_sockets
            .clone_from(&opts.vhost_user_sockets);
        contract.allow_reboot = opts.allow_reboot;
        // Tests and demos never want a window.
        contract.graphics = false;
        let bind = |p: PathBuf| {
            UnixListener::bind(&p).map_err(|e| {
                fail(
                    format!("cannot listen on {}: {e}", p.display()),
                    &no_console,
                )
            })
        };
        let monitor = bind(contract.monitor_socket())?;
        let shell = bind(contract.shell_socket())?;

        // The script runs in the state directory: a relative path would not resolve there.
        let script = std::fs::canonicalize(script).map_err(|e| {
            fail(
                format!("cannot find {}: {e}", script.display()),
                &no_console,
            )
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start a tokio runtime: {e}"), &no_console))?;
        let mut cmd = contract.command(&script);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", script.display()), &no_console))?;

        let console = Arc::new(Mutex::new(VecDeque::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            let (echo, prefix, started) = (opts.echo_console, name.clone(), Instant::now());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                    let line = String::from_utf8_lossy(&line)
                        .trim_end_matches('\r')
                        .to_owned();
                    if echo {
                        eprintln!("{prefix} [{:7.3}] {line}", started.elapsed().as_secs_f64());
                    }
                    let mut c = console.lock().unwrap_or_else(PoisonError::into_inner);
                    if c.len() == CONSOLE_LINES {
                        c.pop_front();
                    }
                    c.push_back(line);
                }
            });
        }

        let deadline = Instant::now() + Duration::from_secs(60);
        let connected = (|| {
            let monitor = accept(&monitor, &mut child, deadline)
                .map_err(|m| fail(format!("monitor: {m}"), &console))?;
            let shell = accept(&shell, &mut child, deadline)
                .map_err(|m| fail(format!("shell: {m}"), &console))?;
            let _in_rt = rt.enter();
            let shell = shell
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(shell))
                .map_err(|e| fail(format!("shell: {e}"), &console))?;
            Ok((monitor, shell))
        })();
        let (monitor, shell) = match connected {
            Ok(sockets) => sockets,
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(e);
            }
        };
        Ok(Guest {
            name,
            child,
            shell: Shell::new(shell),
            rt,
            console,
            state,
            _monitor: monitor,
        })
    }

    /// The machine name (from `run-<name>-vm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The private state directory (sockets, disk image, `shared-xchg`).
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The last console lines.
    pub fn console_tail(&self) -> String {
        tail(&self.console)
    }

    fn error(&self, message: String) -> HarnessError {
        HarnessError {
            machine: self.name.clone(),
            message,
            console: self.console_tail(),
        }
    }

    /// Waits for the backdoor's `Spawning backdoor root shell...`; returns how long it took.
    pub fn wait_for_backdoor(&mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        let start = Instant::now();
        let ready = self.rt.block_on(self.shell.wait_ready(timeout));
        self.backdoor(ready, "waiting for the backdoor shell")?;
        Ok(start.elapsed())
    }

    /// Runs `command` in the guest as the driver's `execute` does (`bash -c`
    /// under `set -euo pipefail`, through the backdoor protocol), but with
    /// stdin from /dev/null and stderr captured with stdout; returns its
    /// status and output. `timeout` bounds the wait on the host.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String), HarnessError> {
        // A command that read the backdoor's console would eat the next command.
        let cmd = vmrig_backdoor::Command::new(format!("exec </dev/null 2>&1\n{command}"));
        let outcome = self.rt.block_on(self.shell.run(&cmd, timeout));
        let outcome = self.backdoor(outcome, &format!("`{command}`"))?;
        Ok((
            outcome.status,
            String::from_utf8_lossy(&outcome.output).into_owned(),
        ))
    }

    /// The result of a backdoor call, its error told with QEMU's exit if that
    /// is why the shell closed.
    fn backdoor<T>(
        &mut self,
        result: vmrig_backdoor::Result<T>,
        doing: &str,
    ) -> Result<T, HarnessError> {
        result.map_err(|e| {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100)); // let the console reader catch up
                return self.error(format!("{doing}: QEMU exited ({status}): {e}"));
            }
            self.error(format!("{doing}: {e}"))
        })
    }

    /// Like [`Guest::run`], but a non-zero status is an error.
    pub fn succeed(&mut self, command: &str, timeout: Duration) -> Result<String, HarnessError> {
        let (status, out) = self.run(command, timeout)?;
        if status != 0 {
            return Err(self.error(format!("`{command}` failed with status {status}: {out}")));
        }
        Ok(out)
    }

    /// Waits until QEMU exits (e.g. after `poweroff`); returns its exit code.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<Option<i32>, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok(status.code()),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    return Err(self.error(format!("QEMU still runs after {} s", timeout.as_secs())))
                }
                Err(e) => return Err(self.error(format!("cannot wait for QEMU: {e}"))),
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

fn accept(
    listener: &UnixListener,
    child: &mut Child,
    deadline: Instant,
) -> Result<UnixStream, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(100));
                    return Err(format!("QEMU exited ({status}) before connecting"));
                }
                if Instant::now() > deadline {
                    return Err("QEMU did not connect within 60 s".into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn tail(console: &Arc<Mutex<VecDeque<String>>>) -> String {
    let c = console
        .lock()
        .map(|c| c.iter().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    c.join("\n")
}

/// A vde2 `vde_switch` (hub mode) for tests, started as the NixOS driver starts
/// it; killed on drop.
pub struct Vde2Switch {
    child: Child,
    dir: PathBuf,
    _stdin: std::process::ChildStdin,
}

impl Vde2Switch {
    /// Starts `vde_switch --sock DIR --dirmode 0700 --hub` and waits (5 s) for its
    /// answer to `showinfo`.
    pub fn start(dir: &Path) -> Result<Vde2Switch, String> {
        let mut child = Command::new("vde_switch")
            .arg("--sock")
            .arg(dir)
            .args(["--dirmode", "0700", "--hub"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run vde_switch (apt-get install vde2): {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let _ = stdin.write_all(b"showinfo\n");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("1000 Success") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(5)).is_err() {
            kill_and_reap(&mut child);
            return Err(format!(
                "vde_switch on {} did not answer showinfo within 5 s",
                dir.display()
            ));
        }
        Ok(Vde2Switch {
            child,
            dir: dir.to_owned(),
            _stdin: stdin,
        })
    }

    /// The switch directory (`QEMU_VDE_SOCKET_<n>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Vde2Switch {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}
