//! The hand-off between the frame thread (`engine`) and one vhost-user port's ring
//! thread (`vhost_user`): two bounded frame queues and an eventfd.
//!
//! Only a port's own ring thread touches its guest's memory; the frame thread, which
//! forwards for every port, only moves frames in and out of these queues. A slow or
//! hostile guest therefore cannot stall anyone else: a full `to_guest` queue (its RX
//! ring not refilled) makes further frames for it drops, counted like a full VDE client
//! queue, and a full `from_guest` queue makes its ring thread stop taking TX chains
//! until the frame thread has caught up (the guest's own TX ring fills, nobody else's).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::port::PortId;

/// Frames each queue holds at most (a QEMU RX ring has 256 entries by default).
pub(crate) const LINK_QUEUE: usize = 512;

#[derive(Default)]
struct FromGuest {
    frames: VecDeque<Vec<u8>>,
    /// The ring thread stopped taking TX chains because the queue was full: wake it
    /// once there is room.
    blocked: bool,
}

/// One vhost-user port's queues, shared by the frame thread and the port's ring thread.
pub(crate) struct VhostLink {
    pub(crate) port: PortId,
    to_guest: Mutex<VecDeque<Vec<u8>>>,
    from_guest: Mutex<FromGuest>,
    /// Emptied frame buffers, reused to spare an allocation per frame.
    spare: Mutex<Vec<Vec<u8>>>,
    /// Whether a QEMU is connected with its memory mapped; frames for a port without
    /// one are dropped.
    connected: AtomicBool,
    /// Wakes the ring thread: frames to deliver, or room to take TX frames again.
    wake_tx: EventNotifier,
    pub(crate) wake_rx: EventConsumer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Frame queues stay consistent whatever panicked while holding them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhostLink {
    pub(crate) fn new(port: PortId) -> std::io::Result<Self> {
        let (wake_rx, wake_tx) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(VhostLink {
            port,
            to_guest: Mutex::new(VecDeque::new()),
            from_guest: Mutex::new(FromGuest::default()),
            spare: Mutex::new(Vec::new()),
            connected: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        })
    }

    fn buffer(&self, frame: &[u8]) -> Vec<u8> {
        let mut b = lock(&self.spare).pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(frame);
        b
    }

    /// Returns a frame buffer for reuse.
    pub(crate) fn recycle(&self, b: Vec<u8>) {
        let mut spare = lock(&self.spare);
        if spare.len() < LINK_QUEUE {
            spare.push(b);
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
        if !connected {
            lock(&self.to_guest).clear();
            let mut from = lock(&self.from_guest);
            from.frames.clear();
            from.blocked = false;
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Frame thread: queues a copy of `frame` for the guest; false (a drop) when the
    /// guest is not connected or its queue is full.
    pub(crate) fn deliver(&self, frame: &[u8]) -> bool {
        if !self.is_connected() {
            return false;
        }
        let b = self.buffer(frame);
        {
            let mut q = lock(&self.to_guest);
            if q.len() >= LINK_QUEUE {
                drop(q);
                self.recycle(b);
                return false;
            }
            q.push_back(b);
        }
        true
    }

    /// Frame thread: wakes the ring thread after a batch of [`deliver`](Self::deliver).
    pub(crate) fn wake(&self) {
        let _ = self.wake_tx.notify();
    }

    /// Ring thread: the next frame for the guest.
    pub(crate) fn next_to_guest(&self) -> Option<Vec<u8>> {
        lock(&self.to_guest).pop_front()
    }

    /// Ring thread: puts back a frame the RX ring had no room for.
    pub(crate) fn unget_to_guest(&self, frame: Vec<u8>) {
        lock(&self.to_guest).push_front(frame);
    }

    /// Ring thread: room left for TX frames; zero marks the thread as blocked, to be
    /// woken when the frame thread takes some.
    pub(crate) fn room_from_guest(&self) -> usize {
        let mut q = lock(&self.from_guest);
        let room = LINK_QUEUE.saturating_sub(q.frames.len());
        q.blocked = room == 0;
        room
    }

    /// Ring thread: queues frames taken from the TX ring (the caller then tells the
    /// frame thread).
    pub(crate) fn push_from_guest(&self, frames: impl IntoIterator<Item = Vec<u8>>) {
        lock(&self.from_guest).frames.extend(frames);
    }

    /// Ring thread: a buffer holding a copy of `frame`.
    pub(crate) fn copy(&self, frame: &[u8]) -> Vec<u8> {
        self.buffer(frame)
    }

    /// Frame thread: takes up to `max` frames from the guest into `take`; returns
    /// whether more are waiting.
    pub(crate) fn take_from_guest(&self, max: usize, mut take: impl FnMut(&[u8])) -> bool {
        let mut q = lock(&self.from_guest);
        let mut n = 0;
        let mut done = Vec::new();
        while n < max {
            let Some(f) = q.frames.pop_front() else { break };
            take(&f);
            done.push(f);
            n += 1;
        }
        let more = !q.frames.is_empty();
        let wake = n > 0 && std::mem::take(&mut q.blocked);
        drop(q);
        for f in done {
            self.recycle(f);
        }
        if wake {
            self.wake();
        }
        more
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_never_takes_its_frames_only_loses_its_own() {
        let link = VhostLink::new(PortId(3)).unwrap();
        // No QEMU yet: every frame is a drop.
        assert!(!link.deliver(&[1; 60]));
        link.set_connected(true);
        for _ in 0..LINK_QUEUE {
            assert!(link.deliver(&[2; 60]));
        }
        // The RX ring is never refilled: the queue stays full and further frames are
        // refused at once (the frame thread counts them as drops), never waited for.
        assert!(!link.deliver(&[3; 60]));
        let first = link.next_to_guest().unwrap();
        assert_eq!(first, vec![2; 60]);
        link.unget_to_guest(first);
        assert!(!link.deliver(&[3; 60]));
        // The guest goes away: its frames go with it.
        link.set_connected(false);
        assert!(link.next_to_guest().is_none());
    }

    #[test]
    fn a_full_tx_queue_blocks_the_ring_thread_until_the_frame_thread_takes_some() {
        let link = VhostLink::new(PortId(1)).unwrap();
        link.set_connected(true);
        assert_eq!(link.room_from_guest(), LINK_QUEUE);
        link.push_from_guest((0..LINK_QUEUE).map(|i| vec![i as u8; 14]));
        assert_eq!(link.room_from_guest(), 0);
        assert!(link.wake_rx.consume().is_err(), "nothing to wake yet");
        let mut got = Vec::new();
        let more = link.take_from_guest(64, |f| got.push(f[0]));
        assert!(more);
        assert_eq!(got, (0..64).map(|i| i as u8).collect::<Vec<_>>());
        // The blocked ring thread is woken, once.
        assert!(link.wake_rx.consume().is_ok());
        assert_eq!(link.room_from_guest(), 64);
        link.take_from_guest(64, |_| {});
        assert!(link.wake_rx.consume().is_err());
    }
}
