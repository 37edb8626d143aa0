//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the switch, from a malformed client request to a
/// socket that cannot be bound.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request did not start with libvdeplug's magic number `0xfeedface`.
    #[error("bad magic 0x{0:08x} in vde request (expected 0xfeedface): not a libvdeplug client")]
    BadMagic(u32),
    /// The request used a protocol version other than 3.
    #[error("unsupported vde request version {0} (only version 3 is supported)")]
    BadVersion(u32),
    /// The request type is neither `REQ_NEW_CONTROL` (with an optional port) nor `REQ_NEW_PORT0`.
    #[error("unsupported vde request type 0x{0:08x}")]
    BadType(u32),
    /// The client's socket address is not an `AF_UNIX` address.
    #[error("vde request names a socket of address family {0}, expected AF_UNIX (1)")]
    BadFamily(u16),
    /// The client's socket path is empty, not NUL-terminated or not valid.
    #[error("vde request carries an invalid socket path: {0}")]
    BadPath(String),
    /// The client's socket path lies outside the switch directory.
    #[error("vde client socket {path} is outside the switch directory {dir}")]
    PathOutsideDir {
        /// The path the client sent.
        path: PathBuf,
        /// The switch directory.
        dir: PathBuf,
    },
    /// The connection closed before a whole request arrived.
    #[error("vde request truncated: got {got} bytes, need at least {need}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes needed for the fixed part of the request.
        need: usize,
    },
    /// A peer running as another user tried to connect.
    #[error("vde client runs as uid {peer}, only uid {ours} may connect")]
    ForeignUid {
        /// The peer's uid.
        peer: u32,
        /// The switch's uid.
        ours: u32,
    },
    /// Every port of the switch is taken.
    #[error("all {0} ports of the switch are in use")]
    PortsExhausted(usize),
    /// The client asked for a specific port that is taken or out of range.
    #[error("port {0} is taken or out of range")]
    PortUnavailable(u32),
    /// The client did not complete its request in time.
    #[error("vde client sent no complete request within {0:?}")]
    Timeout(std::time::Duration),
    /// No port with this id exists.
    #[error("no port {0} on this switch")]
    NoSuchPort(u32),
    /// A loss percentage above 100.
    #[error("loss must be between 0 and 100 percent, got {0}")]
    BadLoss(f64),
    /// A vhost-user port's socket path cannot be used.
    #[error("cannot serve vhost-user socket {path}: {why}")]
    VhostUserSocket {
        /// The path given.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The port exists but is not a vhost-user port.
    #[error("port {0} is not a vhost-user port of this switch")]
    NotVhostUserPort(u32),
    /// An I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What failed, with the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what was being done (e.g. "writing to stdout").
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
