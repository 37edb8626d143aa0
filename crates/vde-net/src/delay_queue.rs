//! Frames held back by a "delay" link fault, until they are due (sans-IO).
//!
//! The queue is bounded by the bytes of frame data it holds: a delay set on a busy link
//! must not let a fast sender grow the switch's memory without limit. Past the bound a
//! frame is refused; the caller drops it and counts it (like a full egress queue on a
//! real switch, or netem's `limit`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use crate::port::PortId;

/// Default bound of the delay queue (`SwitchOptions::max_delayed_bytes`): 16 MiB of
/// frame data, about 11,000 full-size 1514-byte frames (100 ms of delay at 110 MB/s).
pub const DEFAULT_MAX_DELAYED_BYTES: usize = 16 << 20;

struct Entry {
    due: Instant,
    seq: u64,
    port: PortId,
    frame: Vec<u8>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// A timer queue of delayed frames, bounded by the bytes it holds.
///
/// Frames come out in order of due time; frames due at the same instant come out in the
/// order they went in.
pub(crate) struct DelayQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    bytes: usize,
    max_bytes: usize,
}

impl DelayQueue {
    /// An empty queue holding at most `max_bytes` bytes of frames.
    pub(crate) fn new(max_bytes: usize) -> Self {
        DelayQueue {
            heap: BinaryHeap::new(),
            seq: 0,
            bytes: 0,
            max_bytes,
        }
    }

    /// Queues a copy of `frame` for `port`, due at `due`. Returns false, queuing
    /// nothing, when the frame would take the queue past its bound.
    pub(crate) fn push(&mut self, due: Instant, port: PortId, frame: &[u8]) -> bool {
        if frame.len() > self.max_bytes - self.bytes {
            return false;
        }
        self.bytes += frame.len();
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            due,
            seq: self.seq,
            port,
            frame: frame.to_vec(),
        }));
        true
    }

    /// When the earliest frame is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.due)
    }

    /// Takes the earliest frame if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(PortId, Vec<u8>)> {
        if self.next_due()? > now {
            return None;
        }
        let Reverse(e) = self.heap.pop()?;
        self.bytes -= e.frame.len();
        Some((e.port, e.frame))
    }

    /// Number of frames held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no frame is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Bytes of frame data held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn refuses_past_the_bound_and_frees_as_frames_leave() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(100);
        assert!(q.push(t0, PortId(1), &[1; 60]));
        assert!(q.push(t0, PortId(2), &[2; 40]));
        assert!(!q.push(t0, PortId(3), &[3; 1]));
        assert_eq!((q.len(), q.bytes()), (2, 100));
        assert_eq!(q.pop_due(t0), Some((PortId(1), vec![1; 60])));
        assert!(q.push(t0, PortId(3), &[3; 60]));
        assert!(!q.push(t0, PortId(3), &[3; 1]));
        assert_eq!(q.pop_due(t0).map(|(p, _)| p), Some(PortId(2)));
        assert_eq!(q.pop_due(t0).map(|(p, _)| p), Some(PortId(3)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!((q.len(), q.bytes()), (0, 0));
        // A frame larger than the whole bound never fits.
        assert!(!DelayQueue::new(10).push(t0, PortId(1), &[0; 11]));
    }

    #[test]
    fn nothing_leaves_before_it_is_due() {
        let t0 = Instant::now();
        let mut q = DelayQueue::new(1000);
        q.push(t0 + Duration::from_millis(5), PortId(1), &[1]);
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(5)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(
            q.pop_due(t0 + Duration::from_millis(5)),
            Some((PortId(1), vec![1]))
        );
        assert_eq!(q.next_due(), None);
    }

    proptest! {
        /// Against a model: never more than the bound held, a frame is refused exactly
        /// when it would not fit, frames leave in (due, arrival) order and only when due.
        #[test]
        fn behaves_like_model(
            ops in proptest::collection::vec((0u64..50, 0usize..40, any::<bool>()), 0..300),
            max in 0usize..200,
        ) {
            let t0 = Instant::now();
            let mut q = DelayQueue::new(max);
            let mut model: Vec<(u64, u64, Vec<u8>)> = Vec::new();
            let (mut now, mut seq) = (0u64, 0u64);
            for (delay, len, advance) in ops {
                if advance {
                    now += delay;
                    let at = t0 + Duration::from_millis(now);
                    model.sort();
                    while let Some(got) = q.pop_due(at) {
                        let (due, _, frame) = model.remove(0);
                        prop_assert!(due <= now);
                        prop_assert_eq!(got.1, frame);
                    }
                    prop_assert!(model.first().is_none_or(|(due, _, _)| *due > now));
                } else {
                    seq += 1;
                    let frame = vec![seq as u8; len];
                    let held: usize = model.iter().map(|(_, _, f)| f.len()).sum();
                    let fits = held + len <= max;
                    let due = now + delay;
                    prop_assert_eq!(q.push(t0 + Duration::from_millis(due), PortId(1), &frame), fits);
                    if fits {
                        model.push((due, seq, frame));
                    }
                }
                prop_assert!(q.bytes() <= max);
                prop_assert_eq!(q.len(), model.len());
            }
        }
    }
}
