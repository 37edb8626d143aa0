//! Child processes that must not outlive their owner.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Makes the process `cmd` starts get SIGKILL when this process dies, even by
/// SIGKILL (`PR_SET_PDEATHSIG`); if this process is already gone by then, the
/// child does not start.
///
/// The signal comes when the *thread* that spawned the child ends: spawn from a
/// thread that outlives the child (one that waits for it), not from a pool.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2) and
    // getppid(2), which are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the parent process is gone"));
            }
            Ok(())
        });
    }
}

/// Kills a child's whole process group with SIGKILL and reaps the child.
///
/// The child must lead its own group (spawned with `process_group(0)`): QEMU
/// started through a start script is a grandchild, and only the group reaches it.
pub fn kill_group(child: &mut Child) {
    // Never signal a group we do not own: pid 0 or 1 would name ours or init's.
    if let Ok(pid) = i32::try_from(child.id()) {
        if pid > 1 {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) has no memory effects; the negative pid names the
            // group this child leads, and nothing else.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
