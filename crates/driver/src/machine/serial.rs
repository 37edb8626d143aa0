//! The serial console: waiting for its text, typing into it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use super::Machine;
use crate::error::Result;

impl Machine {
    /// Waits until the serial console matches `regex`, searching what it printed
    /// since the previous call consumed it (like NixOS's console queue); returns the match.
    pub fn wait_for_console_text(&self, regex: &str, timeout: Option<Duration>) -> Result<String> {
        let re = regex::Regex::new(regex)
            .map_err(|e| self.assertion(format!("bad regex `{regex}`: {e}")))?;
        let console = Arc::clone(&self.inner.console);
        let start_at = self.inner.console_cursor.load(Ordering::SeqCst);
        let started = Instant::now();
        let deadline = timeout.map(|t| started + t);
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
                            return Err(self.action_timed_out(
                                &format!("waiting for `{regex}` on the console"),
                                started,
                                timeout.unwrap_or_default(),
                            ));
                        }
                    }
                    None => notified.await,
                }
            }
        })
    }

    /// Writes bytes to the serial console's input (QEMU's stdin).
    pub fn send_console(&self, chars: &str) -> Result<()> {
        self.forgo_snapshot("console input");
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
}
