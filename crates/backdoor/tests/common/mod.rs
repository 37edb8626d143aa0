//! A guest backdoor shell without a VM: a real bash run exactly as the
//! guest's init runs it, on a pseudo-terminal standing in for `/dev/hvc0`.
//!
//! QEMU relays hvc0 to a unix socket; here two threads relay the pty master
//! to one end of a unix socket pair and the test talks to the other end.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::process::{kill_process_group, Pid, Signal};
use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

/// The guest's init, as in NixOS, with `$HVC0`/`$TTYS0` for the devices and
/// some boot noise before the magic line.
const GUEST_INIT: &str = r#"
exec < "$HVC0" > "$HVC0" ; exec 2> "$TTYS0"
stty -F "$HVC0" raw -echo
printf '[    0.000000] Linux version 6.1\r\nboot noise\n'
echo "Spawning backdoor root shell..."
PS1="" exec bash --norc "$HVC0"
"#;

/// Generous bound for anything a test waits for.
pub const LONG: Duration = Duration::from_secs(60);

pub struct Guest {
    child: Child,
    slave: Option<OwnedFd>,
    /// Path of the pty slave: the guest's `/dev/hvc0`.
    pub hvc0: PathBuf,
    /// A scratch directory shared by host and "guest".
    pub dir: tempfile::TempDir,
}

impl Guest {
    /// Starts the guest shell; returns it and the host's end of the console.
    pub fn start() -> (Guest, tokio::net::UnixStream) {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open /dev/ptmx");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let hvc0 = PathBuf::from(name.to_str().expect("pty name is UTF-8"));
        // Hold the slave open ourselves so the master does not see EOF before
        // bash opens it.
        let slave = rustix::fs::open(
            &hvc0,
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open pty slave");
        let dir = tempfile::tempdir().expect("temp dir");
        let child = std::process::Command::new("bash")
            .args(["--norc", "-c", GUEST_INIT])
            .env("HVC0", &hvc0)
            .env("TTYS0", dir.path().join("ttyS0"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn bash");

        let (host, relay) = StdUnixStream::pair().expect("socketpair");
        let master = File::from(master);
        let mut from_pty = master.try_clone().expect("dup master");
        let mut to_pty = master;
        let mut relay_out = relay.try_clone().expect("dup socket");
        let mut relay_in = relay;
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 << 10];
            // Ends with EIO once no process has the slave open.
            while let Ok(n) = from_pty.read(&mut buf) {
                if n == 0 || relay_out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = relay_out.shutdown(std::net::Shutdown::Write);
        });
        std::thread::spawn(move || {
            let mut buf = vec![0; 64 << 10];
            while let Ok(n) = relay_in.read(&mut buf) {
                if n == 0 || to_pty.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        host.set_nonblocking(true).expect("nonblocking");
        let host = tokio::net::UnixStream::from_std(host).expect("tokio socket");
        (
            Guest {
                child,
                slave: Some(slave),
                hvc0,
                dir,
            },
            host,
        )
    }

    /// What the shell wrote to its stderr (the guest's serial console).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ttyS0")).unwrap_or_default()
    }

    /// Kills the guest shell and everything it started, and closes the
    /// console, as a VM that dies does.
    pub fn kill(&mut self) {
        let _ = kill_process_group(Pid::from_child(&self.child), Signal::KILL);
        let _ = self.child.wait();
        self.slave = None;
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}
