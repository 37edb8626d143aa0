//! NixOS's `polling_condition`: a check that runs before machine actions
//! (at most once per interval) and fails the test when it does not hold.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
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
    /// A condition checked at most every `interval` (zero: before every action).
    pub fn new(name: impl Into<String>, interval: Duration, condition: Condition) -> Self {
        PollingCondition {
            name: name.into(),
            condition,
            interval,
            last: Mutex::new(None),
            entered: AtomicBool::new(false),
        }
    }

    /// The condition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn overdue(&self) -> bool {
        self.last
            .lock()
            .expect("condition lock")
            .is_none_or(|t| t.elapsed() >= self.interval)
    }

    /// Runs the check if it is overdue (or `force`), unless it is already
    /// running (its own machine actions do not re-enter it). Fails with an
    /// assertion naming the condition when it does not hold.
    pub fn check(&self, force: bool) -> Result<()> {
        if (!self.overdue() && !force) || self.entered.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let span = tracing::info_span!("polling condition", name = %self.name).entered();
        let result = (self.condition)();
        *self.last.lock().expect("condition lock") = Some(Instant::now());
        self.entered.store(false, Ordering::SeqCst);
        drop(span);
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.failed("returned false".into())),
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    fn failed(&self, why: String) -> Error {
        Error::Assertion {
            machine: String::new(),
            message: format!("Polling condition failed: {} ({why})", self.name),
            console: String::new(),
        }
    }

    /// Waits until the condition holds, checking every `interval` (NixOS's `condition.wait`).
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        crate::retry::retry(|_| Ok(self.check(true).is_ok()), timeout)
    }
}

/// The conditions in force, shared by the driver and its machines.
pub type Conditions = Arc<Mutex<Vec<Arc<PollingCondition>>>>;

/// Checks every condition in force.
pub fn check_all(conditions: &Conditions) -> Result<()> {
    let list: Vec<Arc<PollingCondition>> = conditions.lock().expect("conditions lock").clone();
    for c in list {
        c.check(false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(
            e.to_string().contains("Polling condition failed: counts"),
            "{e}"
        );
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
