//! Child processes that must not outlive their owner: the one home of
//! vmrig's process-group and parent-death helpers, for the guest kit, the
//! driver (QEMU), the Python shim and the CLI (a `vmrig run`'s tests).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

pub use rustix::process::{Pid, Signal};

/// Makes the process `cmd` starts get SIGKILL when this process dies, even by
/// SIGKILL (`PR_SET_PDEATHSIG`); if this process is already gone by then, the
/// child does not start.
///
/// The signal comes when the *thread* that spawned the child ends: spawn from a
/// thread that outlives the child (one that waits for it), not from a pool.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec; `die_with` makes only the
    // prctl(2) and getppid(2) system calls (rustix calls the kernel directly),
    // which are async-signal-safe, and allocates nothing unless one fails.
    unsafe {
        cmd.pre_exec(move || die_with(parent, Signal::KILL));
    }
}

/// In this process: be sent `signal` when `parent` dies, even by SIGKILL
/// (`PR_SET_PDEATHSIG`).
///
/// Fails with [`std::io::ErrorKind::NotFound`] when `parent` is not (or no
/// longer) this process's parent: it died before the signal was armed, and
/// no signal will come.
pub fn die_with(parent: Pid, signal: Signal) -> std::io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(signal))?;
    if rustix::process::getppid() != Some(parent) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the parent process is gone",
        ));
    }
    Ok(())
}

/// Sends SIGKILL to the process group that process `pid` leads.
///
/// The process must lead its own group (spawned with `process_group(0)`):
/// QEMU started through a start script is a grandchild, and only the group
/// reaches it. Pids 0 and 1 are ignored: they would name our own group or
/// init's.
pub fn kill_group(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .filter(|&p| p > 1)
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

/// Kills a child's whole process group ([`kill_group`]) and reaps the child.
pub fn kill_and_reap(child: &mut Child) {
    kill_group(child.id());
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn kill_group_reaches_grandchildren() {
        // The shell leads its group and waits for a grandchild `sleep`.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 60 & echo $!; wait"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild = Pid::from_raw(line.trim().parse().unwrap()).unwrap();
        kill_and_reap(&mut child);
        // The grandchild is gone (a zombie at most, until init reaps it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while rustix::process::test_kill_process(grandchild).is_ok()
            && !is_zombie(grandchild)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            rustix::process::test_kill_process(grandchild).is_err() || is_zombie(grandchild),
            "the grandchild survived"
        );
    }

    fn is_zombie(pid: Pid) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    #[test]
    fn kill_group_spares_our_group_and_init() {
        kill_group(0);
        kill_group(1);
        kill_group(u32::MAX);
    }

    #[test]
    fn a_child_tied_to_a_live_parent_starts() {
        let mut cmd = Command::new("true");
        die_with_parent(&mut cmd);
        assert!(cmd.status().unwrap().success());
    }
}
