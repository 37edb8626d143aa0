//! Signals and child processes of `vmrig run`: SIGINT and SIGTERM are
//! counted here and passed on to each test's process; a test's process dies
//! with the run that started it, even when that run is SIGKILLed.

use std::process::Child;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

use rustix::process::{Pid, Signal};

/// SIGINT and SIGTERM, counted, as a background thread sees them.
pub struct Signals {
    count: Arc<AtomicUsize>,
    last: Arc<AtomicI32>,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM for this process.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered before any child exists, so no signal can slip past.
        let (mut int, mut term) = {
            let _guard = rt.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        let count = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(AtomicI32::new(0));
        let (c, l) = (count.clone(), last.clone());
        std::thread::spawn(move || {
            rt.block_on(async move {
                loop {
                    let sig = tokio::select! {
                        _ = int.recv() => libc::SIGINT,
                        _ = term.recv() => libc::SIGTERM,
                    };
                    l.store(sig, Ordering::SeqCst);
                    c.fetch_add(1, Ordering::SeqCst);
                }
            });
        });
        Ok(Signals { count, last })
    }

    /// How many have arrived.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// The last one.
    pub fn last(&self) -> Option<Signal> {
        match self.last.load(Ordering::SeqCst) {
            libc::SIGINT => Some(Signal::INT),
            libc::SIGTERM => Some(Signal::TERM),
            _ => None,
        }
    }

    /// 130 after SIGINT, 143 after SIGTERM, as the driver exits.
    pub fn exit_code(&self) -> Option<u8> {
        match self.last.load(Ordering::SeqCst) {
            libc::SIGINT => Some(130),
            libc::SIGTERM => Some(143),
            _ => None,
        }
    }
}

/// In a child: be sent SIGTERM when the `vmrig run` that started us dies,
/// even by SIGKILL, so its driver still kills the QEMUs; exit at once if it
/// is already gone.
pub fn die_with_parent(parent: i32) {
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        tracing::warn!("cannot tie this test to its vmrig run: {e}");
    }
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        eprintln!("vmrig: error: the vmrig run that started this test is gone");
        std::process::exit(143);
    }
}

/// Passes a signal on to a test's process.
pub fn forward(child: &Child, sig: Option<Signal>) {
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let (Some(pid), Some(sig)) = (pid, sig) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// SIGKILL to the group a child leads (never our own group, nor init's).
pub fn kill_group(child: &Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .filter(|&p| p > 1)
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}
