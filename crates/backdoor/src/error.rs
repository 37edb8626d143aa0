//! The crate's one error type.

use std::fmt;
use std::time::Duration;

/// How many bytes of offending input an error keeps (the rest is only counted).
pub const SNIPPET_MAX: usize = 64;

/// A truncated copy of offending bytes, kept in an error for diagnosis.
///
/// At most [`SNIPPET_MAX`] bytes are kept; `len` is the full length. It
/// prints as an escaped byte string, e.g. `"abc\n\xff" (5 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The first (at most [`SNIPPET_MAX`]) offending bytes.
    pub bytes: Vec<u8>,
    /// How many offending bytes there were in all.
    pub len: usize,
}

impl Snippet {
    /// Keeps the first [`SNIPPET_MAX`] bytes of `bytes`.
    pub fn new(bytes: &[u8]) -> Self {
        Self::with_len(bytes, bytes.len())
    }

    /// Keeps the first [`SNIPPET_MAX`] bytes of `bytes`, recording `len` as the
    /// total length of the offending input.
    pub fn with_len(bytes: &[u8], len: usize) -> Self {
        let keep = bytes.len().min(SNIPPET_MAX);
        Snippet {
            bytes: bytes[..keep].to_vec(),
            len: len.max(keep),
        }
    }
}

impl fmt::Display for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.bytes.escape_ascii())?;
        if self.len > self.bytes.len() {
            write!(f, "... ({} bytes)", self.len)
        } else {
            write!(f, " ({} bytes)", self.len)
        }
    }
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Everything that can go wrong when encoding commands for, or decoding
/// replies from, the backdoor shell.
///
/// The decoding errors ([`Error::StrayOutput`], [`Error::MalformedReply`],
/// [`Error::NonceMismatch`], [`Error::OutputTooLarge`]) leave the
/// [`Decoder`](crate::Decoder) usable: it has consumed the offending bytes and
/// resumes looking for the next reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command contains a NUL byte, which no shell can receive.
    #[error("command contains a NUL byte at offset {offset}, which bash cannot read: {script}")]
    NulInScript {
        /// Offset of the first NUL byte in the script.
        offset: usize,
        /// The start of the script.
        script: Snippet,
    },

    /// Bytes arrived on the backdoor console outside any reply, e.g. from a
    /// process a previous command left running in the background. They were
    /// dropped; no reply was affected.
    #[error("stray output on the backdoor console outside any reply (a background process writing to /dev/hvc0?): {bytes}")]
    StrayOutput {
        /// The stray bytes.
        bytes: Snippet,
    },

    /// A reply started but its bytes do not follow the wire format (stray
    /// output inside it, a cut connection, a guest that is not running the
    /// backdoor shell). The reply is dropped.
    #[error("malformed reply to command #{nonce} from the backdoor shell: {reason}: {bytes}")]
    MalformedReply {
        /// The command the reply belonged to.
        nonce: u64,
        /// What was wrong.
        reason: &'static str,
        /// The offending bytes.
        bytes: Snippet,
    },

    /// A reply's closing nonce differs from its opening nonce: output of two
    /// commands got mixed up. The reply is dropped.
    #[error("reply to command #{opened} was closed as command #{closed}: replies are interleaved, dropping it")]
    NonceMismatch {
        /// The nonce in the reply's header.
        opened: u64,
        /// The nonce in the reply's trailer.
        closed: u64,
    },

    /// A reply's output is larger than the decoder's limit. The rest of the
    /// reply is skipped.
    #[error("output of command #{nonce} exceeds the limit of {limit} bytes; raise DecoderConfig::max_output or redirect the output to a file")]
    OutputTooLarge {
        /// The command the reply belonged to.
        nonce: u64,
        /// The configured limit.
        limit: usize,
    },

    /// A complete reply arrived for a command this session did not send or
    /// no longer remembers. It was dropped.
    #[error("dropping a reply to command #{nonce}, which this session did not send{}", match expected { Some(n) => format!(" (waiting for #{n})"), None => String::new() })]
    UnexpectedReply {
        /// The reply's nonce.
        nonce: u64,
        /// The command whose reply was awaited, if any.
        expected: Option<u64>,
    },

    /// Reading or writing the shell stream failed.
    #[error("i/o error on the backdoor shell: {0}")]
    Io(#[from] std::io::Error),

    /// The guest closed the stream.
    #[error("guest closed the backdoor shell (did the VM stop, crash or power off?)")]
    Closed,

    /// No answer within the allowed time.
    #[error("timed out after {after:?} waiting for {what} on the backdoor shell")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// The time allowed.
        after: Duration,
    },
}

impl Error {
    /// The command nonce an error is about, if it is about one reply.
    pub fn nonce(&self) -> Option<u64> {
        match self {
            Error::MalformedReply { nonce, .. } | Error::OutputTooLarge { nonce, .. } => {
                Some(*nonce)
            }
            Error::NonceMismatch { opened, .. } => Some(*opened),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_truncates_and_escapes() {
        let s = Snippet::new(b"a\n\xff");
        assert_eq!(s.to_string(), "\"a\\n\\xff\" (3 bytes)");
        let long = vec![b'x'; 1000];
        let s = Snippet::new(&long);
        assert_eq!(s.bytes.len(), SNIPPET_MAX);
        assert_eq!(s.len, 1000);
        assert!(s.to_string().ends_with("... (1000 bytes)"));
    }
}
