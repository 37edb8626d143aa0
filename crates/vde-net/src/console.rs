//! Standalone mode: the switch plus vde_switch's management console on stdin/stdout.
//!
//! The NixOS driver starts `vde_switch --sock DIR --dirmode 0700 --hub` with a pipe on
//! stdin, writes `showinfo` and waits for a line `1000 Success` (older drivers wrote
//! `version` and read one line). Replies have vde_switch's shape: a data block opened by
//! `0000 DATA END WITH '.'` and closed by `.`, then a status line; unknown commands get
//! `1038 Function not implemented`, as from vde_switch 2.3.2. End of stdin stops the
//! switch, as it does vde_switch.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::server::{Switch, SwitchOptions};

/// The status line closing a successful reply.
pub const SUCCESS: &str = "1000 Success";
/// The status line for a command the switch does not know.
pub const NOT_IMPLEMENTED: &str = "1038 Function not implemented";
const DATA: &str = "0000 DATA END WITH '.'";

/// What a console command asks the caller to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Keep reading commands.
    Continue,
    /// Stop the switch (`shutdown`, `logout`).
    Stop,
}

/// Answers one management command (sans-IO over a running switch); the reply text,
/// newline-terminated, is appended to `out`.
pub fn answer(switch: &Switch, line: &str, out: &mut String) -> Next {
    let mut words = line.split_whitespace();
    let Some(cmd) = words.next() else {
        return Next::Continue;
    };
    let block = |out: &mut String, body: &str| {
        out.push_str(DATA);
        out.push('\n');
        out.push_str(body);
        out.push_str(".\n");
        out.push_str(SUCCESS);
        out.push('\n');
    };
    match cmd {
        "showinfo" => block(
            out,
            &format!(
                "VDE switch V.2.3.2 compatible (vmrig-vde-net {})\n\npid {} uptime {}\nnumports={} hub={}\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                switch.uptime().as_secs(),
                switch.ports().len(),
                switch.is_hub(),
            ),
        ),
        "version" => block(
            out,
            &format!("VDE switch V.2.3.2 compatible (vmrig-vde-net {})\n", env!("CARGO_PKG_VERSION")),
        ),
        "help" => block(
            out,
            "COMMAND PATH       SYNTAX          HELP\n\
             ------------       --------------  ------------\n\
             help               [arg]           Help (limited to arg when specified)\n\
             logout                             logout from this mgmt terminal\n\
             shutdown                           shutdown of the switch\n\
             showinfo                           show switch version and info\n\
             version                            show switch version\n\
             port/print                         print the port/endpoint table\n\
             port/showinfo                      show port info\n",
        ),
        "port/showinfo" => block(
            out,
            &format!(
                "Numports={}\nHUB={}\ncounters=true\n",
                switch.ports().len(),
                switch.is_hub()
            ),
        ),
        "port/print" => {
            let mut body = String::new();
            for p in switch.ports() {
                let c = p.counters;
                body.push_str(&format!(
                    "Port {:04} untagged_vlan=0000 ACTIVE - Unnamed Allocatable\n \
                     IN:  pkts {:10} bytes {:20}\n \
                     OUT: pkts {:10} bytes {:20}\n \
                     drops {}\n  -- endpoint ID 0000 module unix prog   : {}\n",
                    p.id.0, c.rx_frames, c.rx_bytes, c.tx_frames, c.tx_bytes, c.drops, p.description
                ));
            }
            block(out, &body);
        }
        "logout" | "shutdown" => {
            out.push_str(SUCCESS);
            out.push('\n');
            return Next::Stop;
        }
        _ => {
            out.push_str(NOT_IMPLEMENTED);
            out.push('\n');
        }
    }
    Next::Continue
}

/// Runs a switch until `stdin` ends or a `shutdown` command, answering management
/// commands on `stdout`. This is `vmrig vde-switch`.
pub async fn run_standalone<R, W>(opts: SwitchOptions, stdin: R, mut stdout: W) -> Result<()>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let switch = Switch::start(opts).await?;
    let mut lines = stdin.lines();
    let mut out = String::new();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => return Err(Error::io("reading management commands from stdin", e)),
        };
        out.clear();
        let next = answer(&switch, &line, &mut out);
        stdout
            .write_all(out.as_bytes())
            .await
            .map_err(|e| Error::io("writing to stdout", e))?;
        stdout
            .flush()
            .await
            .map_err(|e| Error::io("writing to stdout", e))?;
        if next == Next::Stop {
            break;
        }
    }
    tracing::info!(dir = %switch.dir().display(), "vde switch: stdin closed, shutting down");
    Ok(())
}
