//! The receiving side of one vhost-user port: its guest's RX ring, written into by
//! whichever thread forwards a frame to it.
//!
//! A frame for a vhost-user port is copied once, from the forwarding thread's batch
//! (the sending guest's ring thread, or the frame thread for frames from VDE ports)
//! straight into the guest's RX buffers, a batch at a time: one lock of the port, one
//! lock of its ring and one notification per batch, never per frame. A frame the ring
//! has no buffers for is held, in order, until the guest refills the ring (its next RX
//! kick, served by the port's own ring thread), up to [`LINK_QUEUE`] frames; past that,
//! further frames for the port are dropped and counted, as a full VDE client queue's
//! are. A guest that never refills its ring therefore loses only its own frames, and
//! nobody waits for it.
//!
//! Only the guest's own memory is written, through the checked accessors of
//! [`vhost_ring`](crate::vhost_ring), with the ring the port's vhost-user connection set
//! up; the ring is forgotten (and the mapping released) when the connection ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, RwLockWriteGuard};

use vhost_user_backend::{VringRwLock, VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::port::PortId;
use crate::vhost_ring::{put_rx, HeaderLayout, RxOutcome};

/// Frames held for a guest whose RX ring is full (a QEMU RX ring has 256 entries by
/// default).
pub(crate) const LINK_QUEUE: usize = 512;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// A guest's RX ring, as its connection set it up.
pub(crate) struct RxRing {
    pub(crate) vring: VringRwLock,
    pub(crate) mem: Mem,
}

#[derive(Default)]
struct RxSide {
    /// Unset until the port's ring thread has seen its rings, and between connections.
    ring: Option<RxRing>,
    layout: HeaderLayout,
    /// Frames waiting for RX buffers, oldest first.
    held: VecDeque<Vec<u8>>,
    /// Emptied buffers of held frames, for reuse.
    spare: Vec<Vec<u8>>,
}

/// One vhost-user port's receiving side, shared by every forwarding thread and the
/// port's ring thread.
pub(crate) struct VhostLink {
    pub(crate) port: PortId,
    rx: Mutex<RxSide>,
    /// Whether a QEMU is connected with its memory mapped; frames for a port without
    /// one are dropped.
    connected: AtomicBool,
    /// Wakes the port's ring thread (so that it learns its rings).
    wake_tx: EventNotifier,
    pub(crate) wake_rx: EventConsumer,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The held frames stay consistent whatever panicked while holding them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VhostLink {
    pub(crate) fn new(port: PortId) -> std::io::Result<Self> {
        let (wake_rx, wake_tx) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(VhostLink {
            port,
            rx: Mutex::new(RxSide::default()),
            connected: AtomicBool::new(false),
            wake_tx,
            wake_rx,
        })
    }

    /// A QEMU connected (its memory is mapped), or went away: then its ring, held
    /// frames and mapping are dropped.
    pub(crate) fn set_connected(&self, connected: bool) {
        let mut rx = lock(&self.rx);
        self.connected.store(connected, Ordering::SeqCst);
        if !connected {
            rx.ring = None;
            let RxSide { held, spare, .. } = &mut *rx;
            spare.extend(held.drain(..));
            spare.truncate(LINK_QUEUE);
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Ring thread: the RX ring of the current connection, once it is known.
    pub(crate) fn attach(&self, ring: impl FnOnce() -> RxRing) {
        let mut rx = lock(&self.rx);
        if rx.ring.is_none() && self.is_connected() {
            rx.ring = Some(ring());
        }
    }

    /// Ring thread: the header layout the driver acked.
    pub(crate) fn set_layout(&self, layout: HeaderLayout) {
        lock(&self.rx).layout = layout;
    }

    /// Wakes the port's ring thread.
    pub(crate) fn wake(&self) {
        let _ = self.wake_tx.notify();
    }

    /// Any forwarding thread: writes `frames` into the guest's RX ring (after the frames
    /// held before them), holding those it has no buffers for; the length of each
    /// frame that could not be delivered (no QEMU, held queue full, a malformed RX
    /// chain) is appended to `undelivered`, with this port, for counting.
    pub(crate) fn deliver<'a>(
        &self,
        frames: impl IntoIterator<Item = &'a [u8]>,
        undelivered: &mut Vec<(PortId, usize)>,
    ) {
        let mut rx = lock(&self.rx);
        if !self.is_connected() {
            undelivered.extend(frames.into_iter().map(|f| (self.port, f.len())));
            return;
        }
        let RxSide {
            ring,
            layout,
            held,
            spare,
        } = &mut *rx;
        let mut writer = ring.as_ref().and_then(RingWriter::new);
        if let Some(w) = writer.as_mut() {
            w.put_held(*layout, held, spare, self.port, undelivered);
        }
        for frame in frames {
            if held.is_empty() {
                if let Some(w) = writer.as_mut() {
                    match w.put(*layout, frame) {
                        Some(true) => continue,
                        Some(false) => {
                            undelivered.push((self.port, frame.len()));
                            continue;
                        }
                        None => {}
                    }
                }
            }
            if held.len() < LINK_QUEUE {
                let mut b = spare.pop().unwrap_or_default();
                b.clear();
                b.extend_from_slice(frame);
                held.push_back(b);
            } else {
                undelivered.push((self.port, frame.len()));
            }
        }
        if let Some(w) = writer {
            w.finish();
        }
    }

    /// Ring thread: the guest refilled its RX ring; delivers the frames held for it.
    pub(crate) fn put_held(&self, undelivered: &mut Vec<(PortId, usize)>) {
        self.deliver([], undelivered);
    }

    /// Frames held for the guest.
    #[cfg(test)]
    fn held(&self) -> usize {
        lock(&self.rx).held.len()
    }
}

/// An RX ring locked for a batch of frames: signals the guest once, at the end, if
/// anything was written.
struct RingWriter<'a> {
    ring: &'a RxRing,
    state: RwLockWriteGuard<'a, VringState<Mem>>,
    mem: <Mem as GuestAddressSpace>::T,
    used: bool,
}

impl<'a> RingWriter<'a> {
    /// None while the guest has not enabled the ring.
    fn new(ring: &'a RxRing) -> Option<Self> {
        let state = ring.vring.get_mut();
        if !state.is_enabled() {
            return None;
        }
        Some(RingWriter {
            ring,
            state,
            mem: ring.mem.memory(),
            used: false,
        })
    }

    /// Some(true) delivered, Some(false) dropped (a bad chain), None no buffers.
    fn put(&mut self, layout: HeaderLayout, frame: &[u8]) -> Option<bool> {
        let mut outcome = put_rx(self.state.get_queue_mut(), &*self.mem, layout, frame);
        if outcome == RxOutcome::NoBuffers {
            // Ask for a kick when the guest refills the ring (with EVENT_IDX, by moving
            // avail_event to here); buffers that came meanwhile are used at once.
            let queue = self.state.get_queue_mut();
            if queue.enable_notification(&*self.mem).unwrap_or(false) {
                outcome = put_rx(queue, &*self.mem, layout, frame);
            }
        }
        match outcome {
            RxOutcome::Delivered(_) => {
                self.used = true;
                Some(true)
            }
            RxOutcome::Dropped => {
                // Chains were returned: the guest must hear of them.
                self.used = true;
                Some(false)
            }
            RxOutcome::NoBuffers => None,
        }
    }

    fn put_held(
        &mut self,
        layout: HeaderLayout,
        held: &mut VecDeque<Vec<u8>>,
        spare: &mut Vec<Vec<u8>>,
        port: PortId,
        undelivered: &mut Vec<(PortId, usize)>,
    ) {
        while let Some(frame) = held.front() {
            match self.put(layout, frame) {
                None => break,
                Some(ok) => {
                    if !ok {
                        undelivered.push((port, frame.len()));
                    }
                    if let Some(b) = held.pop_front() {
                        spare.push(b);
                    }
                }
            }
        }
    }

    /// Signals the guest if it wants to hear of what was written (always, without
    /// EVENT_IDX; with it, when the used index passed the guest's `used_event`).
    fn finish(self) {
        let RingWriter {
            ring,
            mut state,
            mem,
            used,
        } = self;
        let signal = used
            && state
                .get_queue_mut()
                .needs_notification(&*mem)
                .unwrap_or(true);
        drop(state);
        if signal {
            let _ = ring.vring.signal_used_queue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_that_never_takes_its_frames_only_loses_its_own() {
        let link = VhostLink::new(PortId(3)).unwrap();
        let mut lost = Vec::new();
        // No QEMU yet: every frame is a drop.
        link.deliver([&[1u8; 60][..]], &mut lost);
        assert_eq!(lost, vec![(PortId(3), 60)]);
        link.set_connected(true);
        // Connected, rings not yet known (or never refilled): frames are held, up to
        // the bound, and further ones refused at once, never waited for.
        let frames = vec![[2u8; 60]; LINK_QUEUE + 2];
        lost.clear();
        link.deliver(frames.iter().map(|f| &f[..]), &mut lost);
        assert_eq!(link.held(), LINK_QUEUE);
        assert_eq!(lost, vec![(PortId(3), 60); 2]);
        link.put_held(&mut lost);
        assert_eq!(link.held(), LINK_QUEUE);
        // The guest goes away: its frames go with it.
        link.set_connected(false);
        assert_eq!(link.held(), 0);
    }
}
