//! NixOS's `polling_condition`: a check that runs before machine actions
//! (at most once per interval) and fails the test when it does not hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The condition's check: `Ok(true)` holds; `Ok(false)` or an error fails.
pub type Condition = Box<dyn Fn() -> Result<bool> + Send + Sync>;

/// A named condition with its interval.
pub struct PollingCondition {
    name: String,
    condition: Condition,
    interval: Duration,
    last: Mutex<Option<Instant>>,
    entered: AtomicBool,
}

impl std::fmt::Debug for PollingCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollingCondition")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .finish()
    }
}

impl PollingCondition {
    /// A condition checked at most every `interval` (zero: before every
    /// action); `name` is NixOS's description, used in the log and the error.
    pub fn new(name: impl Into<String>, interval: Duration, condition: Condition) -> Self {
        PollingCondition {
            name: name.into(),
            condition,
            interval,
            last: Mutex::new(None),
            entered: AtomicBool::new(false),
        }
    }

    /// The condition's name (NixOS's `description`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How often the condition runs at most.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn last(&self) -> Option<Instant> {
        // A panic in another check must not make every later action panic.
        *self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn overdue(&self) -> bool {
        self.last().is_none_or(|t| t.elapsed() > self.interval)
    }

    /// NixOS's `PollingCondition.check`: runs the condition if it is overdue
    /// (or `force`), unless it is already running (its own machine actions do
    /// not re-enter it), and says whether it holds. An error from the
    /// condition counts as "does not hold". Logs as NixOS does.
    pub fn holds(&self, force: bool) -> bool {
        if (!self.overdue() && !force) || self.entered.swap(true, Ordering::SeqCst) {
            return true;
        }
        let message = format!("Checking polling condition {}", py_repr(&self.name));
        let span = tracing::info_span!("section", message = %message).entered();
        match self.last() {
            Some(t) => tracing::info!("Time since last: {:.2}s", t.elapsed().as_secs_f64()),
            None => tracing::info!("(not called yet)"),
        }
        let holds = match (self.condition)() {
            Ok(holds) => holds,
            Err(e) => {
                tracing::debug!("{e}");
                false
            }
        };
        tracing::info!("{}", self.status_message(holds));
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.entered.store(false, Ordering::SeqCst);
        drop(span);
        holds
    }

    /// NixOS's `maybe_raise`: [`PollingCondition::holds`], or
    /// [`Error::PollingCondition`] naming the condition.
    pub fn check(&self, force: bool) -> Result<()> {
        if self.holds(force) {
            Ok(())
        } else {
            Err(Error::PollingCondition {
                description: self.name.clone(),
            })
        }
    }

    /// `Polling condition succeeded: NAME` (or failed), as NixOS logs it.
    pub fn status_message(&self, holds: bool) -> String {
        let outcome = if holds { "succeeded" } else { "failed" };
        format!("Polling condition {outcome}: {}", self.name)
    }

    /// Waits until the condition holds, checking it every second (NixOS's
    /// `with polling_condition(...) as c: c.wait(timeout)`).
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let message = format!("waiting for {}", self.name);
        let _span = tracing::info_span!("section", message = %message).entered();
        crate::retry::retry(
            |last| {
                if last {
                    tracing::info!("Last chance for {}", self.name);
                }
                let holds = self.holds(true);
                if !holds && !last {
                    tracing::info!("({} failure not fatal yet)", self.name);
                }
                Ok(holds)
            },
            timeout,
        )
    }
}

/// Python's `repr` of a string, as NixOS's log shows descriptions and keys.
pub(crate) fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// The conditions in force, shared by the driver and its machines.
pub type Conditions = Arc<Mutex<Vec<Arc<PollingCondition>>>>;

/// Checks every condition in force.
pub fn check_all(conditions: &Conditions) -> Result<()> {
    let list: Vec<Arc<PollingCondition>> = conditions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for c in list {
        c.check(false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_quoted_as_python_does() {
        assert_eq!(py_repr("/tmp is writable"), "'/tmp is writable'");
        assert_eq!(py_repr("it's up"), "\"it's up\"");
        assert_eq!(py_repr("both ' and \""), "'both \\' and \"'");
        assert_eq!(py_repr("a\\b\n"), "'a\\\\b\\n'");
    }

    #[test]
    fn an_error_does_not_hold_and_wait_retries() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let cond = PollingCondition::new(
            "third time",
            Duration::ZERO,
            Box::new(move || match c2.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Error::Setup("boom".into())),
                1 => Ok(false),
                _ => Ok(true),
            }),
        );
        assert!(!cond.holds(true), "an error is a failed check");
        cond.wait(Duration::from_secs(5)).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn interval_and_failure() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let cond = PollingCondition::new(
            "counts",
            Duration::from_secs(3600),
            Box::new(move || Ok(c2.fetch_add(1, Ordering::SeqCst) < 1)),
        );
        cond.check(false).unwrap();
        cond.check(false).unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "not overdue: not run again"
        );
        let e = cond.check(true).unwrap_err();
        assert!(e.to_string() == "Polling condition failed: counts", "{e}");
    }

    #[test]
    fn no_reentry() {
        let cond: Arc<Mutex<Option<Arc<PollingCondition>>>> = Arc::new(Mutex::new(None));
        let inner = cond.clone();
        let c = Arc::new(PollingCondition::new(
            "reenters",
            Duration::ZERO,
            Box::new(move || {
                // A check inside the condition (its own machine action) returns at once.
                let me = inner.lock().unwrap().clone().unwrap();
                me.check(true)?;
                Ok(true)
            }),
        ));
        *cond.lock().unwrap() = Some(c.clone());
        c.check(false).unwrap();
    }
}
