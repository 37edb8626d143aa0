//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while decoding QMP or talking to QEMU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message grew past the decoder's size limit; the decoder skips the rest of it.
    #[error(
        "qmp message exceeds the {limit}-byte limit and was discarded \
         (raise max_message_size if QEMU legitimately sends more)"
    )]
    MessageTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },

    /// Bytes outside any JSON object (QMP only ever sends objects); they were skipped.
    #[error("qmp stream holds {skipped} stray byte(s) outside a json object, starting with {first:#04x}")]
    UnexpectedBytes {
        /// The first skipped byte.
        first: u8,
        /// How many bytes were skipped.
        skipped: usize,
    },

    /// A framed message is not valid JSON.
    #[error("qmp message is not valid json: {source}")]
    InvalidJson {
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// A JSON object that is none of greeting, `return`, `error` or event.
    #[error("qmp message has an unknown shape ({reason}): {message}")]
    UnknownShape {
        /// What was wrong with it.
        reason: String,
        /// The message, truncated for display.
        message: String,
    },

    /// A response whose `id` matches no command in flight.
    #[error("qmp response carries id {id}, which matches no command in flight")]
    UnmatchedId {
        /// The id as QEMU sent it (JSON text), or `none`.
        id: String,
    },

    /// QEMU answered a command with an `error` response.
    #[error("qmp command `{command}` failed: {class}: {desc}")]
    Command {
        /// The command's name (`execute`).
        command: String,
        /// QEMU's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`.
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },

    /// The command's arguments could not be serialized to a JSON object.
    #[error("cannot encode the arguments of qmp command `{command}`: {reason}")]
    EncodeArguments {
        /// The command's name.
        command: String,
        /// Why.
        reason: String,
    },

    /// QEMU's `return` value does not have the type the command expects.
    #[error("cannot decode the return value of qmp command `{command}`: {source}")]
    DecodeReturn {
        /// The command's name.
        command: String,
        /// The deserializer's complaint.
        #[source]
        source: serde_json::Error,
    },

    /// Connecting to the socket failed with something other than "not there yet".
    #[error("cannot connect to qmp socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The socket did not accept a connection, greet and negotiate in time.
    #[error(
        "timed out after {timeout:?} connecting to qmp socket {path} \
         (is QEMU running with -qmp unix:{},server=on?)", path.display()
    )]
    ConnectTimeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// QEMU's first message was not a greeting, or capabilities negotiation failed.
    #[error("qmp negotiation on {path} failed: {reason}")]
    Negotiation {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The greeting was missing or malformed, or QEMU rejected `qmp_capabilities`
    /// ([`Session`](crate::Session) level; the client reports it as [`Error::Negotiation`]).
    #[error("qmp handshake failed: {reason}")]
    Handshake {
        /// What went wrong.
        reason: String,
    },

    /// The session is closed, so the command cannot be sent or answered
    /// ([`Session`](crate::Session) level; the client reports it as [`Error::Disconnected`]).
    #[error("qmp session is closed ({reason})")]
    Closed {
        /// Why the session closed.
        reason: String,
    },

    /// The connection is gone (QEMU exited or closed the socket); the call cannot complete.
    #[error("qmp {what} failed: connection to {path} is closed ({reason}); has QEMU exited?")]
    Disconnected {
        /// The socket path.
        path: PathBuf,
        /// What was attempted, e.g. "command `stop`".
        what: String,
        /// Why the connection closed.
        reason: String,
    },

    /// A command got no answer in time.
    #[error("qmp command `{command}` got no answer within {timeout:?}")]
    CommandTimeout {
        /// The command's name.
        command: String,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// No event matching the filter arrived in time.
    #[error("no qmp event matched the filter within {timeout:?}")]
    EventTimeout {
        /// The timeout that expired.
        timeout: Duration,
    },

    /// Reading or writing the socket failed.
    #[error("i/o error on qmp socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// QEMU's error class when QEMU rejected a command (`GenericError`, ...), else `None`.
    pub fn qmp_class(&self) -> Option<&str> {
        match self {
            Error::Command { class, .. } => Some(class),
            _ => None,
        }
    }

    /// True when the error means the connection to QEMU is gone for good.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Error::Disconnected { .. } | Error::Closed { .. })
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
