//! Blocking driver calls from Python: off the GIL, and interruptible.
//!
//! A call runs on a worker thread while the calling thread waits without the
//! GIL and runs Python's signal handlers every [`POLL`]: where Python handles
//! SIGINT (the REPL, a plain Python program), Ctrl-C raises `KeyboardInterrupt`
//! at once instead of when the guest is done. The interrupted call itself
//! runs to its end on the worker (the guest command cannot be taken back; the
//! next call on that machine waits for it). The worker enters the caller's
//! current log section, so the call's log lines nest as if made in place.

use std::sync::{mpsc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// How often a waiting call runs Python's signal handlers.
const POLL: Duration = Duration::from_millis(50);

/// How many calls run on workers (interrupted ones included).
static IN_FLIGHT: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// Counts a worker from its start to its end, even if it panics.
struct InFlight;

impl InFlight {
    fn start() -> InFlight {
        *IN_FLIGHT.0.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *IN_FLIGHT.0.lock().unwrap_or_else(PoisonError::into_inner) -= 1;
        IN_FLIGHT.1.notify_all();
    }
}

/// Waits (up to `timeout`) until no call runs on a worker: after the
/// machines are killed, interrupted calls end with an error at once, and
/// must end before the driver's runtime goes away under them.
pub(crate) fn settle(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut n = IN_FLIGHT.0.lock().unwrap_or_else(PoisonError::into_inner);
    while *n > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::warn!("{} interrupted call(s) still running at exit", *n);
            return;
        }
        n = IN_FLIGHT
            .1
            .wait_timeout(n, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Runs `f` on a worker thread; returns its result, or the exception a
/// Python signal handler raised while waiting (`KeyboardInterrupt`).
pub(crate) fn interruptible<T: Send + 'static>(
    py: Python<'_>,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> PyResult<T> {
    let span = tracing::Span::current();
    let (tx, rx) = mpsc::sync_channel(1);
    let in_flight = InFlight::start();
    std::thread::Builder::new()
        .name("vmrig-call".into())
        .spawn(move || {
            let _in_flight = in_flight;
            let value = span.in_scope(f);
            // Before the caller goes on: the section may end the moment it does.
            drop(span);
            let _ = tx.send(value);
        })
        .map_err(|e| PyRuntimeError::new_err(format!("{what}: cannot start a thread: {e}")))?;
    let mut rx = rx;
    loop {
        // The receiver is not `Sync`: it moves to the GIL-free closure and back.
        let (back, received) = py.allow_threads(move || {
            let received = rx.recv_timeout(POLL);
            (rx, received)
        });
        rx = back;
        match received {
            Ok(value) => return Ok(value),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    tracing::warn!(
                        "{what}: interrupted; it goes on in the background until it ends, \
                         and the machine's next action waits for it"
                    );
                    return Err(e);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PyRuntimeError::new_err(format!(
                    "{what}: the driver panicked (see the message above)"
                )))
            }
        }
    }
}
