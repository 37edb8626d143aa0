//! Child processes that must not outlive their owner.

use std::process::Child;

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
