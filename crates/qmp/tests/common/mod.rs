//! A real QEMU for the tests: own process group, own temp dir, killed on drop.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vmrig_qmp::{Client, ClientOptions};

/// Generous bounds for a loaded 2-core machine: these are hang guards, not speed checks.
pub const CONNECT: Duration = Duration::from_secs(60);
pub const LONG: Duration = Duration::from_secs(60);

pub struct Qemu {
    child: Child,
    pub dir: tempfile::TempDir,
    pub qmp: PathBuf,
}

/// The arguments of [`Qemu::pc`]'s machine (also the target of a migration,
/// whose device configuration must match).
pub const PC: &[&str] = &[
    "-M",
    "pc",
    "-accel",
    "tcg",
    "-m",
    "32",
    "-vga",
    "std",
    "-netdev",
    "user,id=net0",
    "-device",
    "e1000,netdev=net0,id=nic0",
];

impl Qemu {
    /// `qemu-system-x86_64 -M none`: no guest at all, fastest start.
    pub fn none() -> Qemu {
        Self::start(&["-M", "none"])
    }

    /// A PC with a VGA display and one e1000 NIC (`nic0` on netdev `net0`), for
    /// screendump, send-key, set_link, reset and powerdown. Starts paused (`-S`)
    /// unless `running`.
    pub fn pc(running: bool) -> Qemu {
        let mut args = PC.to_vec();
        if !running {
            args.push("-S");
        }
        Self::start(&args)
    }

    pub fn start(args: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().expect("create temp dir");
        let qmp = dir.path().join("qmp");
        let child = Command::new("qemu-system-x86_64")
            .args(["-nodefaults", "-display", "none"])
            .args(args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start qemu-system-x86_64");
        Qemu { child, dir, qmp }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.qmp, CONNECT)
            .await
            .expect("connect to qmp")
    }

    pub async fn connect_with(&self, options: ClientOptions) -> Client {
        Client::connect_with(&self.qmp, options.connect_timeout(CONNECT))
            .await
            .expect("connect to qmp")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits (bounded) for QEMU to exit by itself; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // Kill the whole group: `migrate` to `exec:` URIs starts shell children.
        // A SIGSTOPped QEMU still dies of SIGKILL.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
