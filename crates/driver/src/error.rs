//! The driver's error type.

use std::time::Duration;

/// Everything a driver operation can fail with. Messages name the machine,
/// the command or action, and end with the machine's last console lines where
/// they help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command did not have the expected outcome (`succeed`, `fail`, waits):
    /// NixOS's `RequestedAssertionFailed`.
    #[error("{machine}: {message}{}", console_tail(console))]
    Assertion {
        /// Machine name.
        machine: String,
        /// What was expected and what happened.
        message: String,
        /// The last console lines.
        console: String,
    },
    /// The machine itself failed: QEMU exited, a socket closed, a protocol
    /// error (NixOS's `MachineError`).
    #[error("{machine}: {message}{}", console_tail(console))]
    Machine {
        /// Machine name.
        machine: String,
        /// What failed.
        message: String,
        /// The last console lines.
        console: String,
    },
    /// An operation ran out of time.
    #[error("{machine}: {what} timed out after {} s{}", timeout.as_secs_f64(), console_tail(console))]
    Timeout {
        /// Machine name.
        machine: String,
        /// What was waited for.
        what: String,
        /// The limit.
        timeout: Duration,
        /// The last console lines.
        console: String,
    },
    /// A polling condition did not hold before a machine action (NixOS's
    /// `PollingConditionError`: not an assertion).
    #[error("Polling condition failed: {description}")]
    PollingCondition {
        /// The condition's description.
        description: String,
    },
    /// The driver could not be set up (state directory, switch, bad input).
    #[error("{0}")]
    Setup(String),
    /// A JUnit report could not be written or read.
    #[error("{0}")]
    Report(String),
}

fn console_tail(console: &str) -> String {
    if console.is_empty() {
        String::new()
    } else {
        format!("\n--- last console lines ---\n{console}")
    }
}

impl Error {
    /// Whether this is an assertion failure (a test failure, not a broken machine).
    pub fn is_assertion(&self) -> bool {
        matches!(self, Error::Assertion { .. })
    }
}

/// Result with the driver's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
