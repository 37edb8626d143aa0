//! A machine's serial console: every line kept for `get_console_log`, the
//! last ones for error messages, and a wake-up for `wait_for_console_text`.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

/// How many lines error messages quote.
pub const TAIL_LINES: usize = 30;

/// The console of one machine (all its boots).
#[derive(Debug, Default)]
pub struct Console {
    inner: Mutex<Inner>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct Inner {
    log: String,
    tail: VecDeque<String>,
}

impl Console {
    /// Appends one line (without its newline).
    pub fn push_line(&self, line: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.log.push_str(line);
        inner.log.push('\n');
        if inner.tail.len() == TAIL_LINES {
            inner.tail.pop_front();
        }
        inner.tail.push_back(line.to_owned());
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Everything the console printed so far.
    pub fn log(&self) -> String {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .clone()
    }

    /// Length of the log so far (an offset for [`Console::log_since`]).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .log
            .len()
    }

    /// Whether nothing was printed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log from byte `offset` on.
    pub fn log_since(&self, offset: usize) -> String {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.log.get(offset..).unwrap_or_default().to_owned()
    }

    /// The last [`TAIL_LINES`] lines.
    pub fn tail(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Resolves at the next appended line.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// A future that resolves at the next change, registered now (so a line
    /// pushed between a check and the await is not missed).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_holding_the_lock_does_not_break_later_calls() {
        let console = std::sync::Arc::new(Console::default());
        console.push_line("before");
        let c = console.clone();
        let _ = std::thread::spawn(move || {
            let _held = c.inner.lock().unwrap();
            panic!("poisons the lock");
        })
        .join();
        assert!(console.inner.is_poisoned());
        console.push_line("after");
        assert_eq!(console.log(), "before\nafter\n");
        assert_eq!(console.tail(), "before\nafter");
    }

    #[test]
    fn keeps_all_and_tails_the_last() {
        let c = Console::default();
        for i in 0..100 {
            c.push_line(&format!("line {i}"));
        }
        assert!(c.log().starts_with("line 0\nline 1\n"));
        assert_eq!(c.tail().lines().count(), TAIL_LINES);
        assert!(c.tail().ends_with("line 99"));
        let at = c.len();
        c.push_line("new");
        assert_eq!(c.log_since(at), "new\n");
    }
}
