//! Boots start scripts the way the NixOS driver does, for tests and demos of
//! guests. This is deliberately small and synchronous; the
//! real orchestration (QMP, the one-round-trip backdoor protocol, logging,
//! reports) is `vmrig-driver`'s.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::contract::machine_name;
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
    shell: UnixStream,
    shell_reader: BufReader<UnixStream>,
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
        let bind = |p: PathBuf| {
            UnixListener::bind(&p).map_err(|e| {
                fail(
                    format!("cannot listen on {}: {e}", p.display()),
                    &no_console,
                )
            })
        };
        let monitor = bind(dir.join("monitor"))?;
        let shell = bind(dir.join("shell"))?;

        // The script runs in the state directory: a relative path would not resolve there.
        let script = std::fs::canonicalize(script).map_err(|e| {
            fail(
                format!("cannot find {}: {e}", script.display()),
                &no_console,
            )
        })?;
        let mut cmd = Command::new(&script);
        cmd.arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                dir.join("qmp").display()
            ))
            .arg("-monitor")
            .arg(format!("unix:{}", dir.join("monitor").display()))
            .arg("-chardev")
            .arg(format!(
                "socket,id=shell,path={}",
                dir.join("shell").display()
            ))
            .args([
                "-device",
                "virtio-serial",
                "-device",
                "virtconsole,chardev=shell",
            ])
            .args(["-device", "virtio-rng-pci", "-serial", "stdio"]);
        if !opts.allow_reboot {
            cmd.arg("-no-reboot");
        }
        cmd.arg("-nographic")
            .current_dir(dir)
            .env("TMPDIR", dir)
            .env("SHARED_DIR", &shared)
            .env("USE_TMPDIR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (vlan, sock) in &opts.vde_sockets {
            cmd.env(format!("QEMU_VDE_SOCKET_{vlan}"), sock);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
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
                    let mut c = console.lock().expect("console lock");
                    if c.len() == CONSOLE_LINES {
                        c.pop_front();
                    }
                    c.push_back(line);
                }
            });
        }

        let mut guest_parts = (state, child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let monitor = accept(&monitor, &mut guest_parts.1, deadline)
            .map_err(|m| fail(format!("monitor: {m}"), &console))?;
        let shell = accept(&shell, &mut guest_parts.1, deadline)
            .map_err(|m| fail(format!("shell: {m}"), &console))?;
        let (state, child) = guest_parts;
        let shell_reader = BufReader::new(
            shell
                .try_clone()
                .map_err(|e| fail(e.to_string(), &console))?,
        );
        Ok(Guest {
            name,
            child,
            shell,
            shell_reader,
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

    /// Reads the shell until `Spawning backdoor root shell...`; returns how long it took.
    pub fn wait_for_backdoor(&mut self, timeout: Duration) -> Result<Duration, HarnessError> {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let line = self.read_line(start + timeout, "the backdoor's magic line")?;
            if line.contains("Spawning backdoor root shell...") {
                return Ok(start.elapsed());
            }
            seen.push(line);
        }
    }

    /// Runs `command` with `bash -c` in the guest (stdin from /dev/null,
    /// stdout and stderr captured together); returns its status and output.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String), HarnessError> {
        let line = format!(
            "bash -c {} </dev/null 2>&1 | base64 -w 0; echo \" ${{PIPESTATUS[0]}}\"\n",
            crate::script::sh_quote(command)
        );
        self.shell
            .write_all(line.as_bytes())
            .map_err(|e| self.error(format!("cannot send `{command}`: {e}")))?;
        let reply = self.read_line(
            Instant::now() + timeout,
            &format!("the reply to `{command}`"),
        )?;
        let (b64, status) = reply
            .trim_end()
            .rsplit_once(' ')
            .ok_or_else(|| self.error(format!("malformed reply to `{command}`: {reply:?}")))?;
        let status = status.parse().map_err(|_| {
            self.error(format!(
                "malformed status in the reply to `{command}`: {reply:?}"
            ))
        })?;
        let out = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| self.error(format!("malformed output of `{command}`: {e}")))?;
        Ok((status, String::from_utf8_lossy(&out).into_owned()))
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

    fn read_line(&mut self, deadline: Instant, what: &str) -> Result<String, HarnessError> {
        let mut buf = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.error(format!("timed out waiting for {what}")));
            }
            let _ = self
                .shell
                .set_read_timeout(Some(left.min(Duration::from_millis(500))));
            match self.shell_reader.read_until(b'\n', &mut buf) {
                Ok(0) => {
                    return Err(
                        self.error(format!("QEMU closed the shell while waiting for {what}"))
                    )
                }
                Ok(_) if buf.ends_with(b"\n") => {
                    return Ok(String::from_utf8_lossy(&buf).into_owned())
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100)); // let the console reader catch up
                        return Err(
                            self.error(format!("QEMU exited ({status}) while waiting for {what}"))
                        );
                    }
                }
                Err(e) => return Err(self.error(format!("cannot read the shell: {e}"))),
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
