//! NixOS's `retry`: call `f(false)` every second until it says yes or time is
//! up, then one last `f(true)`.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Retries `f` as NixOS's `retry(fn, timeout_seconds)` does; `f`'s argument
/// says whether this is the last try. Errors from `f` end the retry at once.
pub fn retry(mut f: impl FnMut(bool) -> Result<bool>, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f(false)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1).min(timeout.saturating_sub(start.elapsed())));
    }
    if f(true)? {
        return Ok(());
    }
    Err(Error::Assertion {
        machine: String::new(),
        message: format!(
            "action timed out after {:.2} seconds (timeout={})",
            start.elapsed().as_secs_f64(),
            timeout.as_secs_f64()
        ),
        console: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_try_is_flagged_and_errors_stop() {
        let mut calls = Vec::new();
        let e = retry(
            |last| {
                calls.push(last);
                Ok(false)
            },
            Duration::from_millis(1500),
        )
        .unwrap_err();
        assert!(e.to_string().contains("action timed out after"), "{e}");
        assert_eq!(calls.last(), Some(&true));
        assert!(calls[..calls.len() - 1].iter().all(|l| !l));
        let mut n = 0;
        retry(
            |_| {
                n += 1;
                Ok(n == 2)
            },
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(n, 2);
        let e = retry(
            |_| Err(Error::Setup("boom".into())),
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
    }
}
