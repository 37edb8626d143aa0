//! Forwarding a batch of frames: the step the frame thread (frames from VDE ports) and
//! the vhost-user ring threads (frames from a guest's TX ring) share.
//!
//! [`route`] takes the switch's lock once per batch: every frame is recorded in the
//! capture, counted and forwarded by [`SwitchCore`](crate::SwitchCore), and its
//! deliveries are grouped by destination port in an [`Outbox`] (or handed to the delay
//! queue), so that the caller then hands each destination all its frames at once,
//! outside the lock.

use std::time::Instant;

use crate::mmsg::RecvArena;
use crate::port::PortId;
use crate::server::Shared;

/// A batch of frames held by the forwarding thread.
pub(crate) trait Frames {
    /// Number of frames.
    fn count(&self) -> usize;
    /// Frame `i`, in arrival order.
    fn frame(&self, i: usize) -> &[u8];
}

impl Frames for RecvArena {
    fn count(&self) -> usize {
        self.len()
    }

    fn frame(&self, i: usize) -> &[u8] {
        RecvArena::frame(self, i)
    }
}

#[cfg(feature = "vhost-user")]
impl Frames for crate::vhost_ring::FrameBatch {
    fn count(&self) -> usize {
        self.len()
    }

    fn frame(&self, i: usize) -> &[u8] {
        crate::vhost_ring::FrameBatch::frame(self, i)
    }
}

/// Frames waiting to be sent, grouped by destination port (batch indices, in arrival
/// order).
pub(crate) struct Outbox {
    queues: Vec<Vec<u16>>,
    /// Ports whose queue is not empty, each once.
    dirty: Vec<usize>,
}

impl Outbox {
    /// An outbox for port numbers below `ports`.
    pub(crate) fn new(ports: usize) -> Self {
        Outbox {
            queues: (0..ports).map(|_| Vec::new()).collect(),
            dirty: Vec::new(),
        }
    }

    fn push(&mut self, port: PortId, frame: usize) {
        let Some(q) = self.queues.get_mut(port.0 as usize) else {
            return;
        };
        if q.is_empty() {
            self.dirty.push(port.0 as usize);
        }
        q.push(frame as u16);
    }

    /// Hands each destination its frames (batch indices) and empties the outbox.
    pub(crate) fn drain(&mut self, mut send: impl FnMut(PortId, &[u16])) {
        for port in self.dirty.drain(..) {
            let queue = &mut self.queues[port];
            send(PortId(port as u32), queue);
            queue.clear();
        }
    }
}

/// Forwards every frame of `frames` (frame `i` came in on `ingress(i)`) under one lock:
/// captures it, counts it, queues its immediate deliveries in `outbox` and hands its
/// delayed ones to `delay` (due time, port, frame), which returns false when it cannot
/// hold one (counted as a delay-queue overflow). The capture is written after the lock
/// is released.
pub(crate) fn route(
    shared: &Shared,
    frames: &impl Frames,
    ingress: impl Fn(usize) -> PortId,
    outbox: &mut Outbox,
    mut delay: impl FnMut(Instant, PortId, &[u8]) -> bool,
) {
    if frames.count() == 0 {
        return;
    }
    let captured = {
        let mut guard = shared.lock();
        let state = &mut *guard;
        let now = Instant::now();
        for i in 0..frames.count() {
            let frame = frames.frame(i);
            if let Some(cap) = state.capture.as_mut() {
                cap.record(frame);
            }
            state.core.forward(
                ingress(i),
                frame,
                now,
                &mut state.rng,
                &mut state.deliveries,
            );
            for d in &state.deliveries {
                if d.delay.is_zero() {
                    outbox.push(d.port, i);
                } else if !delay(now + d.delay, d.port, frame) {
                    state.core.note_delay_overflow(d.port, frame.len());
                }
            }
        }
        state.capture.as_mut().and_then(|cap| cap.take_batch())
    };
    // The disk is the writer thread's business, and never under the lock.
    if let Some((sink, batch)) = captured {
        sink.submit(batch);
    }
}

/// Moves deliveries that could not be made from the sent to the dropped counts.
pub(crate) fn count_undelivered(shared: &Shared, undelivered: &mut Vec<(PortId, usize)>) {
    if undelivered.is_empty() {
        return;
    }
    let mut state = shared.lock();
    for (port, len) in undelivered.drain(..) {
        state.core.note_send_failed(port, len);
    }
}
