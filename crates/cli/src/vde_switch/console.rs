//! vde_switch's management console on stdin/stdout, over a running [`Switch`].
//!
//! This is compatibility with vde2's `vde_switch` program, not switching, so it
//! lives in the CLI rather than in `vmrig-vde-net`.
//!
//! The NixOS driver starts `vde_switch --sock DIR --dirmode 0700 --hub` with a pipe on
//! stdin, writes `showinfo` and waits for a line `1000 Success` (older drivers wrote
//! `version` and read one line). Replies have vde_switch's shape: a data block opened by
//! `0000 DATA END WITH '.'` and closed by `.`, then a status line; unknown commands get
//! `1038 Function not implemented`, as from vde_switch 2.3.2. End of stdin stops the
//! switch, as it does vde_switch.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use vmrig_vde_net::{Error, Result, Switch, SwitchOptions};

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

/// Answers one management command (no I/O of its own); the reply text,
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
                "VDE switch V.2.3.2 compatible (vmrig {})\n\npid {} uptime {}\nnumports={} hub={}\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                switch.uptime().as_secs(),
                switch.ports().len(),
                switch.is_hub(),
            ),
        ),
        "version" => block(
            out,
            &format!("VDE switch V.2.3.2 compatible (vmrig {})\n", env!("CARGO_PKG_VERSION")),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    use super::*;

    async fn read_until_status(
        lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
    ) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("reply within 10 s")
                .unwrap()
                .expect("console still open");
            let done = line.starts_with("1000 ") || line.starts_with("1038 ");
            got.push(line);
            if done {
                return got;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_like_vde_switch_and_stops_on_eof() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vde1.ctl");
        let (mut to_switch, stdin) = tokio::io::duplex(4096);
        let (stdout, from_switch) = tokio::io::duplex(4096);
        let opts = SwitchOptions::new(&dir).hub(true);
        let task = tokio::spawn(run_standalone(opts, BufReader::new(stdin), stdout));
        let mut lines = BufReader::new(from_switch).lines();

        // The current NixOS driver: showinfo, then wait for `1000 Success`.
        to_switch.write_all(b"showinfo\n").await.unwrap();
        let reply = read_until_status(&mut lines).await;
        assert_eq!(reply[0], "0000 DATA END WITH '.'");
        assert!(reply[1].starts_with("VDE switch V."));
        assert_eq!(reply[reply.len() - 2], ".");
        assert_eq!(reply.last().unwrap(), "1000 Success");
        // The switch is up by the time it answers.
        assert!(dir.join("ctl").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );

        // Older drivers: `version`, one line read.
        to_switch.write_all(b"version\n").await.unwrap();
        let reply = read_until_status(&mut lines).await;
        assert_eq!(reply.last().unwrap(), "1000 Success");

        to_switch.write_all(b"no/such/command\n").await.unwrap();
        let reply = read_until_status(&mut lines).await;
        assert_eq!(reply, vec!["1038 Function not implemented"]);

        to_switch.write_all(b"port/showinfo\n").await.unwrap();
        let reply = read_until_status(&mut lines).await;
        assert!(reply.contains(&"HUB=true".to_owned()), "{reply:?}");

        to_switch.write_all(b"port/print\n").await.unwrap();
        let reply = read_until_status(&mut lines).await;
        assert_eq!(reply.last().unwrap(), "1000 Success");

        to_switch.write_all(b"shutdown\n").await.unwrap();
        let reply = read_until_status(&mut lines).await;
        assert_eq!(reply, vec!["1000 Success"]);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("switch stops on shutdown")
            .unwrap()
            .unwrap();
        assert!(!dir.join("ctl").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stops_when_stdin_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sw");
        let (to_switch, stdin) = tokio::io::duplex(64);
        let opts = SwitchOptions::new(&dir);
        let task = tokio::spawn(run_standalone(
            opts,
            BufReader::new(stdin),
            tokio::io::sink(),
        ));
        // Wait for the switch to be up, then close stdin.
        for _ in 0..500 {
            if dir.join("ctl").exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(dir.join("ctl").exists(), "switch did not start");
        drop(to_switch);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("switch stops when stdin closes")
            .unwrap()
            .unwrap();
        assert!(!dir.join("ctl").exists());
    }
}
