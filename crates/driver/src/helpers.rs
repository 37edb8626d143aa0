//! The Machine operations NixOS builds on `execute` and the monitor: systemd,
//! TTYs, keys, X11, unix sockets, port forwarding, QMP events.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::Result;
use crate::keys::key_for;
use crate::machine::Machine;
use crate::retry::retry;
use crate::systemd::{parse_property, parse_show, property_query, show_query, systemctl_command};
use vmrig_guest::script::sh_quote;

impl Machine {
    /// NixOS's `systemctl(q, user)`: runs `systemctl Q`, or `systemctl --user Q`
    /// in a login shell of `user`. Returns `(status, output)`.
    pub fn systemctl(&self, query: &str, user: Option<&str>) -> Result<(i32, String)> {
        self.execute(&systemctl_command(query, user), true, true, None)
    }

    /// Every property of a unit (`systemctl show`).
    pub fn get_unit_info(
        &self,
        unit: &str,
        user: Option<&str>,
    ) -> Result<BTreeMap<String, String>> {
        let (status, out) = self.systemctl(&show_query(unit), user)?;
        if status != 0 {
            return Err(self.assertion(format!(
                "retrieving systemctl info for unit \"{unit}\"{} failed with exit code {status}",
                user.map(|u| format!(" under user \"{u}\""))
                    .unwrap_or_default()
            )));
        }
        Ok(parse_show(&out))
    }

    /// One property of a unit.
    pub fn get_unit_property(
        &self,
        unit: &str,
        property: &str,
        user: Option<&str>,
    ) -> Result<String> {
        let (status, out) = self.systemctl(&property_query(unit, property), user)?;
        if status != 0 {
            return Err(self.assertion(format!(
                "retrieving systemctl property \"{property}\" for unit \"{unit}\"{} failed with exit code {status}",
                user.map(|u| format!(" under user \"{u}\"")).unwrap_or_default()
            )));
        }
        parse_property(&out, property).ok_or_else(|| {
            self.assertion(format!("systemctl show --property \"{property}\" \"{unit}\" produced invalid output: {out}"))
        })
    }

    /// Waits until a unit is active; fails at once when it fails, or when it is
    /// inactive with no jobs pending (NixOS's semantics).
    pub fn wait_for_unit(&self, unit: &str, user: Option<&str>, timeout: Duration) -> Result<()> {
        let _log = self.nested(&format!(
            "waiting for unit {unit}{}",
            user.map(|u| format!(" with user {u}")).unwrap_or_default()
        ));
        retry(
            |_| {
                let state = self.get_unit_property(unit, "ActiveState", user)?;
                if state == "failed" {
                    return Err(
                        self.assertion(format!("unit \"{unit}\" reached state \"{state}\""))
                    );
                }
                if state == "inactive" {
                    let (_, jobs) = self.systemctl("list-jobs --full 2>&1", user)?;
                    if jobs.contains("No jobs")
                        && self.get_unit_info(unit, user)?.get("ActiveState") == Some(&state)
                    {
                        return Err(self.assertion(format!(
                            "unit \"{unit}\" is inactive and there are no pending jobs"
                        )));
                    }
                }
                Ok(state == "active")
            },
            timeout,
        )
        .map_err(|e| self.with_machine(e))
    }

    /// Fails unless the unit's `ActiveState` is `state`.
    pub fn require_unit_state(&self, unit: &str, state: &str) -> Result<()> {
        let _log = self.nested(&format!(
            "checking if unit '{unit}' has reached state '{state}'"
        ));
        let info = self.get_unit_info(unit, None)?;
        let actual = info.get("ActiveState").map(String::as_str).unwrap_or("");
        if actual != state {
            return Err(self.assertion(format!(
                "Expected unit '{unit}' to to be in state '{state}' but it is in state '{actual}'"
            )));
        }
        Ok(())
    }

    /// `systemctl start UNIT`; returns `(status, output)`.
    pub fn start_job(&self, unit: &str, user: Option<&str>) -> Result<(i32, String)> {
        self.systemctl(&format!("start {unit}"), user)
    }

    /// `systemctl stop UNIT`; returns `(status, output)`.
    pub fn stop_job(&self, unit: &str, user: Option<&str>) -> Result<(i32, String)> {
        self.systemctl(&format!("stop {unit}"), user)
    }

    /// Waits until something listens on a unix socket (`nc -z -U`, `-uU` for datagrams).
    pub fn wait_for_open_unix_socket(
        &self,
        addr: &str,
        is_datagram: bool,
        timeout: Duration,
    ) -> Result<()> {
        let flags = if is_datagram { "-z -uU" } else { "-z -U" };
        let cmd = format!("nc {flags} {}", sh_quote(addr));
        retry(
            |_| Ok(self.execute(&cmd, true, true, None)?.0 == 0),
            timeout,
        )
        .map_err(|e| self.with_machine(e))
    }

    /// The text on virtual console `tty` (`/dev/vcsN`, folded to its width).
    pub fn get_tty_text(&self, tty: &str) -> Result<String> {
        let cmd =
            format!("fold -w$(stty -F /dev/tty{tty} size | awk '{{print $2}}') /dev/vcs{tty}");
        Ok(self.execute(&cmd, true, true, None)?.1)
    }

    /// Waits until virtual console `tty` matches `regex`.
    pub fn wait_until_tty_matches(&self, tty: &str, regex: &str, timeout: Duration) -> Result<()> {
        let re = regex::Regex::new(regex)
            .map_err(|e| self.assertion(format!("bad regex `{regex}`: {e}")))?;
        let _log = self.nested(&format!("waiting for {regex} to appear on tty {tty}"));
        retry(
            |last| {
                let text = self.get_tty_text(tty)?;
                if last && !re.is_match(&text) {
                    tracing::info!(machine = %self.name(), "Last chance to match /{regex}/ on TTY{tty}, which currently contains: {text}");
                }
                Ok(re.is_match(&text))
            },
            timeout,
        )
        .map_err(|e| self.with_machine(e))
    }

    /// Sends virtual console `tty`'s contents to the journal (NixOS's `dump_tty_contents`).
    pub fn dump_tty_contents(&self, tty: &str) -> Result<()> {
        self.execute(
            &format!("fold -w 80 /dev/vcs{tty} | systemd-cat"),
            true,
            true,
            None,
        )
        .map(drop)
    }

    /// Presses a key (`ctrl-alt-delete`, `a`, or a character NixOS maps, like
    /// `A` or `\n`) through HMP `sendkey`, then waits `delay`.
    pub fn send_key(&self, key: &str, delay: Option<Duration>) -> Result<()> {
        self.send_monitor_command(&format!("sendkey {}", key_for(key)))?;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        Ok(())
    }

    /// Types `chars` key by key.
    pub fn send_chars(&self, chars: &str, delay: Option<Duration>) -> Result<()> {
        let _log = self.nested(&format!("sending keys {}", crate::polling::py_repr(chars)));
        let mut buf = [0u8; 4];
        for c in chars.chars() {
            self.send_key(c.encode_utf8(&mut buf), delay)?;
        }
        Ok(())
    }

    /// Presses ctrl-alt-delete; the next command reconnects (needs `start(allow_reboot = true)`).
    pub fn reboot(&self) -> Result<()> {
        self.send_key("ctrl-alt-delete", Some(Duration::from_millis(10)))?;
        self.mark_disconnected();
        Ok(())
    }

    /// Forwards a host TCP port to a guest port (HMP `hostfwd_add`).
    pub fn forward_port(&self, host_port: u16, guest_port: u16) -> Result<()> {
        let reply =
            self.send_monitor_command(&format!("hostfwd_add tcp::{host_port}-:{guest_port}"))?;
        if reply.to_lowercase().contains("could not") || reply.to_lowercase().contains("error") {
            return Err(self.machine_error(format!(
                "hostfwd_add tcp::{host_port}-:{guest_port}: {}",
                reply.trim()
            )));
        }
        Ok(())
    }

    /// Waits until the X server is up (NixOS's `wait_for_x`).
    pub fn wait_for_x(&self, timeout: Duration) -> Result<()> {
        let _log = self.nested("waiting for the X11 server");
        retry(
            |_| {
                let cmd = "journalctl -b SYSLOG_IDENTIFIER=systemd | grep \"Reached target Current graphical\"";
                Ok(self.execute(cmd, true, true, None)?.0 == 0 && self.execute("[ -e /tmp/.X11-unix/X0 ]", true, true, None)?.0 == 0)
            },
            timeout,
        )
        .map_err(|e| self.with_machine(e))
    }

    /// The names of the X11 windows (`xwininfo -root -tree`).
    pub fn get_window_names(&self) -> Result<Vec<String>> {
        let out = self.succeed(
            &[r#"xwininfo -root -tree | sed 's/.*0x[0-9a-f]* \"\([^\"]*\)\".*/\1/; t; d'"#],
            None,
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    }

    /// Waits until an X11 window name matches `regex`.
    pub fn wait_for_window(&self, regex: &str, timeout: Duration) -> Result<()> {
        let re = regex::Regex::new(regex)
            .map_err(|e| self.assertion(format!("bad regex `{regex}`: {e}")))?;
        let _log = self.nested("waiting for a window to appear");
        retry(
            |_| Ok(self.get_window_names()?.iter().any(|n| re.is_match(n))),
            timeout,
        )
        .map_err(|e| self.with_machine(e))
    }
}

impl Machine {
    /// Copies a host file into the guest through the backdoor shell (base64,
    /// in chunks), for guests without the shared directory.
    pub fn copy_from_host_via_shell(&self, source: &std::path::Path, target: &str) -> Result<()> {
        use base64::Engine as _;
        let bytes = std::fs::read(source).map_err(|e| {
            self.assertion(format!(
                "copy_from_host_via_shell: cannot read {}: {e}",
                source.display()
            ))
        })?;
        let t = sh_quote(target);
        self.succeed(&[&format!("mkdir -p \"$(dirname {t})\" && : > {t}")], None)?;
        // Bounded command lines: bash reads each command as one line.
        for chunk in bytes.chunks(48 * 1024) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.succeed(&[&format!("echo -n {b64} | base64 -d >> {t}")], None)?;
        }
        Ok(())
    }

    /// The old name of [`Machine::copy_from_machine`].
    pub fn copy_from_vm(&self, source: &str, target_dir: &str) -> Result<std::path::PathBuf> {
        self.copy_from_machine(source, target_dir)
    }

    /// Stops QEMU and closes its connections (NixOS's `release`).
    pub fn release(&self) {
        tracing::info!(machine = %self.name(), "kill machine (pid {:?})", self.pid());
        self.kill();
    }

    /// From the initrd to the real root (systemd initrd with the backdoor):
    /// isolates `initrd-switch-root.target` and reconnects.
    pub fn switch_root(&self) -> Result<()> {
        self.wait_for_unit("initrd.target", None, crate::DEFAULT_TIMEOUT)?;
        self.execute(
            "systemctl isolate --no-block initrd-switch-root.target 2>/dev/null >/dev/null",
            false,
            false,
            None,
        )?;
        self.mark_disconnected();
        self.connect()
    }
}
