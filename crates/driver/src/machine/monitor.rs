//! The HMP monitor and QMP events.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::Machine;
use crate::error::Result;

impl Machine {
    /// Sends an HMP command on the monitor socket; returns its raw reply, as
    /// NixOS does: QEMU's echo of the command, its answer and the `(qemu) `
    /// prompt that ends it.
    pub fn send_monitor_command(&self, command: &str) -> Result<String> {
        self.forgo_snapshot("a monitor command");
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
}

/// Reads the monitor up to and including its `(qemu) ` prompt.
pub(super) async fn read_monitor_prompt(
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
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
