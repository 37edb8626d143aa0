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
                        _ = int.recv() => Signal::INT.as_raw(),
                        _ = term.recv() => Signal::TERM.as_raw(),
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
        let last = self.last.load(Ordering::SeqCst);
        [Signal::INT, Signal::TERM]
            .into_iter()
            .find(|s| s.as_raw() == last)
    }

    /// 130 after SIGINT, 143 after SIGTERM, as the driver exits.
    pub fn exit_code(&self) -> Option<u8> {
        // 128 + the signal's number, as a shell reports it.
        self.last().map(|s| 128 + s.as_raw() as u8)
    }
}

/// In a child: be sent SIGTERM when the `vmrig run` that started us dies,
/// even by SIGKILL, so its driver still kills the QEMUs; exit at once if it
/// is already gone (or the tie cannot be made).
pub fn die_with_parent(parent: i32) {
    let tied = Pid::from_raw(parent)
        .ok_or_else(|| std::io::Error::other("no parent pid"))
        .and_then(|p| vmrig_guest::process::die_with(p, Signal::TERM));
    if let Err(e) = tied {
        eprintln!("vmrig: error: cannot tie this test to the vmrig run that started it: {e}");
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
