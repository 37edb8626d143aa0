//! Commands over the backdoor shell: NixOS's `execute`, `succeed`, `fail` and
//! the waits built on them.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vmrig_backdoor::Command;
use vmrig_guest::script::sh_quote;

use super::Machine;
use crate::error::Result;

/// Extra host-side time over a guest-side `timeout`, so the guest's 124 arrives.
const HOST_MARGIN: Duration = Duration::from_secs(30);

impl Machine {
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
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (status, output) =
                self.execute(command, true, true, Some(left.max(Duration::from_secs(1))))?;
            if (status == 0) == want_success {
                return Ok(output);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let what = format!("{what} (last exit code {status})");
                return Err(self.action_timed_out(&what, started, timeout));
            }
            // Once a second, and a last try when the time is up.
            std::thread::sleep(left.min(Duration::from_secs(1)));
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

    /// `sleep` in guest time.
    pub fn sleep(&self, duration: Duration) -> Result<()> {
        self.succeed(&[&format!("sleep {}", duration.as_secs_f64())], None)
            .map(drop)
    }
}
