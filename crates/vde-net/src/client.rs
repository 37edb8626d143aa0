//! A blocking libvdeplug-compatible client: what QEMU does, in Rust.
//!
//! Used by tests and benchmarks to act as synthetic ports; it also connects to vde2's
//! `vde_switch`, which is how the benchmark compares the two switches on equal terms.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;

use crate::engine::MAX_FRAME;
use crate::error::{Error, Result};
use crate::mmsg::{RecvArena, SendBatch};
use crate::request::{decode_reply, PortWish, Request, SOCKADDR_UN_LEN};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One connected port: the control stream (kept open: closing it frees the port) and
/// the datagram socket frames travel on.
#[derive(Debug)]
pub struct VdePlug {
    _ctl: UnixStream,
    data: UnixDatagram,
    local: PathBuf,
}

impl VdePlug {
    /// Connects to the switch whose directory is `dir`, like `vde_open(dir, descr)`.
    pub fn connect(dir: &Path, description: &str) -> Result<VdePlug> {
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io(format!("resolving switch directory {}", dir.display()), e))?;
        let ctl_path = dir.join("ctl");
        let mut ctl = UnixStream::connect(&ctl_path)
            .map_err(|e| Error::io(format!("connecting to {}", ctl_path.display()), e))?;
        let local = dir.join(format!(
            ".{:05}-{:05}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed) % 100_000
        ));
        let _ = std::fs::remove_file(&local);
        let data = UnixDatagram::bind(&local)
            .map_err(|e| Error::io(format!("binding {}", local.display()), e))?;
        let mut req = BytesMut::new();
        Request {
            port: PortWish::Any,
            sock_path: local.as_os_str().as_bytes().to_vec(),
            description: description.to_owned(),
        }
        .encode(&mut req);
        ctl.set_read_timeout(Some(Duration::from_secs(10)))
            .and_then(|()| ctl.write_all(&req))
            .map_err(|e| Error::io(format!("sending request to {}", ctl_path.display()), e))?;
        let mut reply = BytesMut::zeroed(SOCKADDR_UN_LEN);
        let mut got = 0;
        while got < SOCKADDR_UN_LEN {
            let n = ctl
                .read(&mut reply[got..])
                .map_err(|e| Error::io(format!("reading reply from {}", ctl_path.display()), e))?;
            if n == 0 {
                let _ = std::fs::remove_file(&local);
                return Err(Error::Truncated {
                    got,
                    need: SOCKADDR_UN_LEN,
                });
            }
            got += n;
        }
        let remote = decode_reply(&mut reply)?.unwrap_or_default();
        let remote = PathBuf::from(std::ffi::OsStr::from_bytes(&remote));
        data.connect(&remote)
            .map_err(|e| Error::io(format!("connecting to data socket {}", remote.display()), e))?;
        Ok(VdePlug {
            _ctl: ctl,
            data,
            local,
        })
    }

    /// The datagram socket (for timeouts, non-blocking mode, or polling).
    pub fn socket(&self) -> &UnixDatagram {
        &self.data
    }

    /// Sends one Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> std::io::Result<usize> {
        self.data.send(frame)
    }

    /// Receives one Ethernet frame.
    pub fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.data.recv(buf)
    }

    /// Sends frames in order with one system call per batch (`sendmmsg`), waiting for
    /// room like [`send`](Self::send) unless the socket is non-blocking. Fails with the
    /// first error, after sending the frames before it.
    pub fn send_batch(&self, frames: &[&[u8]]) -> std::io::Result<()> {
        let mut failed = Vec::new();
        match SendBatch::default().send(
            self.data.as_fd(),
            frames.iter().copied(),
            true,
            &mut failed,
        ) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends what the socket takes of `frames` now, in order, with one system call
    /// (`sendmmsg`, never waiting for room): returns how many went, for clients with
    /// an event loop. Nothing sent because the queue is full is `WouldBlock`; a frame
    /// refused for its size is skipped and not counted.
    pub fn try_send_batch(&self, frames: &[&[u8]]) -> std::io::Result<usize> {
        let mut failed = Vec::new();
        let error = SendBatch::default().send(
            self.data.as_fd(),
            frames.iter().copied(),
            false,
            &mut failed,
        );
        let sent = frames.len() - failed.len();
        match error {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }

    /// Replaces the batch's frames with those queued for this port (`recvmmsg`): waits
    /// for the first like [`recv`](Self::recv) (the read timeout applies) and takes the
    /// others already queued, up to the batch's capacity. Returns how many arrived.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> std::io::Result<usize> {
        batch.arena.clear();
        // On a non-blocking socket the first receive does not wait either.
        batch.arena.recv_from(self.data.as_fd(), usize::MAX, true)
    }
}

/// Frames received together by [`VdePlug::recv_batch`].
pub struct RecvBatch {
    arena: RecvArena,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("len", &self.arena.len())
            .finish()
    }
}

impl RecvBatch {
    /// Room for `capacity` frames of any size (jumbo frames included).
    pub fn new(capacity: usize) -> Self {
        RecvBatch {
            arena: RecvArena::new(capacity, MAX_FRAME),
        }
    }

    /// Number of frames received.
    pub fn len(&self) -> usize {
        self.arena.len()
    }

    /// Whether no frame was received.
    pub fn is_empty(&self) -> bool {
        self.arena.len() == 0
    }

    /// The frames, in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.arena.len()).map(|i| self.arena.frame(i))
    }
}

impl Drop for VdePlug {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.local);
    }
}
