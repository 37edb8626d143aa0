//! Batched datagram I/O: `recvmmsg(2)` and `sendmmsg(2)` over reusable buffers.
//!
//! One system call moves a whole batch of frames: the switch pays the kernel entry once
//! per batch instead of once per frame. Only this module holds unsafe code; each block
//! says why it is sound.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Frames received into fixed slots, each large enough for the largest frame.
///
/// The slot memory and the `iovec`/`mmsghdr` arrays pointing into it are allocated once
/// and never move (boxed slices), so the headers stay valid for the arena's life.
pub(crate) struct RecvArena {
    buf: Box<[u8]>,
    slot_len: usize,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    lens: Box<[usize]>,
    used: usize,
}

#[allow(unsafe_code)]
// SAFETY: the raw pointers in `iovs` and `hdrs` point only into `buf` and `iovs`, which
// the arena owns and which never move (boxed slices); moving the arena to another
// thread moves their owner with them, and `&RecvArena` gives no way to write through
// them (only `&mut self` methods hand them to the kernel).
unsafe impl Send for RecvArena {}

/// An all-zero `mmsghdr`: no name, no control data, no buffers.
fn empty_mmsghdr() -> libc::mmsghdr {
    #[allow(unsafe_code)]
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers, for which all
    // zero bytes is a valid value (null pointers, zero lengths).
    unsafe {
        std::mem::zeroed()
    }
}

impl RecvArena {
    /// An arena of `slots` frames of at most `slot_len` bytes each.
    pub(crate) fn new(slots: usize, slot_len: usize) -> Self {
        let mut buf = vec![0u8; slots * slot_len].into_boxed_slice();
        let base = buf.as_mut_ptr();
        let mut iovs: Box<[libc::iovec]> = (0..slots)
            .map(|i| libc::iovec {
                // In bounds: i < slots, so i * slot_len + slot_len <= buf.len().
                iov_base: base.wrapping_add(i * slot_len).cast(),
                iov_len: slot_len,
            })
            .collect();
        let iov_base = iovs.as_mut_ptr();
        let hdrs = (0..slots)
            .map(|i| {
                let mut h = empty_mmsghdr();
                h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        RecvArena {
            buf,
            slot_len,
            iovs,
            hdrs,
            lens: vec![0; slots].into_boxed_slice(),
            used: 0,
        }
    }

    /// Number of frames held.
    pub(crate) fn len(&self) -> usize {
        self.used
    }

    /// Number of free slots.
    pub(crate) fn free(&self) -> usize {
        self.hdrs.len() - self.used
    }

    /// Forgets every frame held.
    pub(crate) fn clear(&mut self) {
        self.used = 0;
    }

    /// Frame `i` (in arrival order).
    pub(crate) fn frame(&self, i: usize) -> &[u8] {
        let start = i * self.slot_len;
        &self.buf[start..start + self.lens[i]]
    }

    /// Receives up to `max` frames (bounded by the free slots) from a datagram socket.
    /// Never waits when `wait` is false (`WouldBlock` when no frame was queued); else
    /// waits for the first frame as `recv` would (the socket's read timeout applies) and
    /// takes the others already queued. Returns how many arrived. A frame longer than a
    /// slot is truncated to the slot, as `recv` would.
    pub(crate) fn recv_from(
        &mut self,
        fd: BorrowedFd<'_>,
        max: usize,
        wait: bool,
    ) -> io::Result<usize> {
        let want = max.min(self.free());
        if want == 0 {
            return Ok(0);
        }
        let first = self.used;
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        let n = {
            let hdrs = &mut self.hdrs[first..first + want];
            #[allow(unsafe_code)]
            // SAFETY: `hdrs` holds `want` initialised headers, each with one iovec that
            // points at its own `slot_len`-byte slot of `self.buf`; `&mut self` makes
            // those slots and headers exclusively ours for the call, and the kernel
            // writes only within them. No name, control buffer or timeout is passed.
            unsafe {
                libc::recvmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    want as libc::c_uint,
                    flags as _,
                    std::ptr::null_mut(),
                )
            }
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in first..first + n {
            self.lens[i] = (self.hdrs[i].msg_len as usize).min(self.slot_len);
            // The kernel never moves our buffers; this keeps the invariant obvious.
            debug_assert_eq!(self.hdrs[i].msg_hdr.msg_iov, &mut self.iovs[i] as *mut _);
        }
        self.used += n;
        Ok(n)
    }
}

/// Scratch space to send a batch of frames with one `sendmmsg` call.
///
/// Holds no pointer between calls: the arrays are refilled for each batch.
#[derive(Default)]
pub(crate) struct SendBatch {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    /// Sends `frames`, in order, on a connected datagram socket; never waits when `wait`
    /// is false, else waits for room as `send` would. Indexes of the frames that could
    /// not be sent are appended to `failed`, and the last error is returned. When the
    /// socket refuses a frame for lack of room (its queue is full) or because the peer
    /// is gone, the rest of the batch is refused too; a frame refused for its own size
    /// is skipped alone.
    pub(crate) fn send<'a>(
        &mut self,
        fd: BorrowedFd<'_>,
        frames: impl Iterator<Item = &'a [u8]>,
        wait: bool,
        failed: &mut Vec<usize>,
    ) -> Option<io::Error> {
        self.iovs.clear();
        self.hdrs.clear();
        self.iovs.extend(frames.map(|f| libc::iovec {
            iov_base: f.as_ptr().cast_mut().cast(),
            iov_len: f.len(),
        }));
        // The iovec array is complete: its address no longer changes.
        let iov_base = self.iovs.as_mut_ptr();
        self.hdrs.extend((0..self.iovs.len()).map(|i| {
            let mut h = empty_mmsghdr();
            h.msg_hdr.msg_iov = iov_base.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            h
        }));
        let total = self.hdrs.len();
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        let mut next = 0;
        let mut error = None;
        while next < total {
            // UIO_MAXIOV (1024) bounds one call.
            let count = (total - next).min(1024);
            let hdrs = &mut self.hdrs[next..next + count];
            #[allow(unsafe_code)]
            // SAFETY: `hdrs` holds `count` initialised headers, each pointing at one
            // iovec of `self.iovs`, which describe the caller's frames: slices borrowed
            // for this call ('a outlives it) that the kernel only reads. No name or
            // control data is passed.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    count as libc::c_uint,
                    flags as _,
                )
            };
            if n > 0 {
                next += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if err.raw_os_error() == Some(libc::EMSGSIZE) {
                failed.push(next);
                next += 1;
            } else {
                failed.extend(next..total);
                next = total;
            }
            error = Some(err);
        }
        // Leave no pointer to the caller's frames behind.
        self.iovs.clear();
        self.hdrs.clear();
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    fn pair() -> (UnixDatagram, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    #[test]
    fn batches_round_trip_in_order() {
        let (a, b) = pair();
        let frames: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 20 + i as usize]).collect();
        let mut failed = Vec::new();
        SendBatch::default().send(
            a.as_fd(),
            frames.iter().map(Vec::as_slice),
            false,
            &mut failed,
        );
        assert!(failed.is_empty());
        let mut arena = RecvArena::new(32, 100);
        assert_eq!(arena.recv_from(b.as_fd(), 64, false).unwrap(), 32);
        assert_eq!(arena.free(), 0);
        assert_eq!(arena.recv_from(b.as_fd(), 64, false).unwrap(), 0);
        for (i, f) in frames.iter().take(32).enumerate() {
            assert_eq!(arena.frame(i), &f[..]);
        }
        arena.clear();
        assert_eq!(arena.recv_from(b.as_fd(), 5, false).unwrap(), 5);
        assert_eq!(arena.recv_from(b.as_fd(), 64, false).unwrap(), 3);
        assert_eq!(arena.len(), 8);
        assert_eq!(arena.frame(7), &frames[39][..]);
        let err = arena.recv_from(b.as_fd(), 64, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn long_frames_are_truncated_and_empty_ones_kept() {
        let (a, b) = pair();
        a.send(&[7u8; 300]).unwrap();
        a.send(&[]).unwrap();
        let mut arena = RecvArena::new(4, 100);
        assert_eq!(arena.recv_from(b.as_fd(), 4, false).unwrap(), 2);
        assert_eq!(arena.frame(0), &[7u8; 100][..]);
        assert_eq!(arena.frame(1), &[] as &[u8]);
    }

    #[test]
    fn a_full_or_gone_peer_fails_the_rest_of_the_batch() {
        let (a, b) = pair();
        let frame = [1u8; 1000];
        let mut failed = Vec::new();
        let mut batch = SendBatch::default();
        // Far more than the default send buffer holds.
        let err = batch.send(
            a.as_fd(),
            std::iter::repeat_n(&frame[..], 2000),
            false,
            &mut failed,
        );
        assert_eq!(err.unwrap().kind(), io::ErrorKind::WouldBlock);
        assert!(!failed.is_empty());
        let first = failed[0];
        assert_eq!(failed, (first..2000).collect::<Vec<_>>());
        let mut n = 0;
        let mut buf = [0u8; 2000];
        while b.recv(&mut buf).is_ok() {
            n += 1;
        }
        assert_eq!(n, first);
        drop(b);
        failed.clear();
        assert!(batch
            .send(
                a.as_fd(),
                std::iter::repeat_n(&frame[..], 3),
                false,
                &mut failed
            )
            .is_some());
        assert_eq!(failed, vec![0, 1, 2]);
    }
}
