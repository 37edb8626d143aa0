//! Frames in and out of a guest's virtio-net rings (sans-IO): the part of a vhost-user
//! port that reads what the guest wrote.
//!
//! Everything here is driven by descriptor chains the guest controls, so nothing is
//! trusted: a chain is walked through [`virtio_queue`] (which bounds loops by the queue
//! size and refuses a descriptor table outside guest memory), every copy goes through
//! [`vm_memory`]'s checked accessors (an address outside the guest's regions is an
//! error, never a read of other memory), a TX frame longer than [`MAX_FRAME`] is dropped
//! before anything is allocated for it, and a bad chain is returned to the guest as used
//! (length 0) so that it cannot wedge its own ring. No function here blocks or waits: an
//! empty RX ring is reported to the caller, which drops or keeps the frame.
//!
//! Byte layout (virtio 1.2, 5.1.6 "Device Operation"): each buffer starts with a
//! `virtio_net_hdr`, 12 bytes when `VIRTIO_F_VERSION_1` or `VIRTIO_NET_F_MRG_RXBUF` is
//! negotiated (its last field `num_buffers`, little-endian, at offset 10), 10 bytes for a
//! legacy driver without either. The switch offers no offloads, so a zeroed header
//! (apart from `num_buffers`) is always correct on RX and the TX header carries nothing
//! the switch needs.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

/// Length of `virtio_net_hdr_mrg_rxbuf`, the header of a modern (VERSION_1) driver.
pub const NET_HDR_LEN: usize = 12;
/// Length of the legacy `virtio_net_hdr` (no VERSION_1, no MRG_RXBUF).
pub const LEGACY_NET_HDR_LEN: usize = 10;
/// Offset of `num_buffers` in the 12-byte header.
const NUM_BUFFERS_OFFSET: usize = 10;
/// Largest Ethernet frame taken from or given to a guest (jumbo frames included; the
/// same bound as the VDE ports').
pub const MAX_FRAME: usize = 9216;

/// What the header looks like for the features a driver acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLayout {
    /// Header length: [`NET_HDR_LEN`] or [`LEGACY_NET_HDR_LEN`].
    pub len: usize,
    /// Whether an RX frame may span several chains (`VIRTIO_NET_F_MRG_RXBUF`).
    pub mergeable: bool,
}

impl HeaderLayout {
    /// The layout for a driver's acked feature bits.
    pub fn from_features(features: u64) -> Self {
        use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
        let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let modern = features & (1 << VIRTIO_F_VERSION_1) != 0;
        HeaderLayout {
            len: if modern || mergeable {
                NET_HDR_LEN
            } else {
                LEGACY_NET_HDR_LEN
            },
            mergeable,
        }
    }
}

impl Default for HeaderLayout {
    /// What QEMU 7.2's virtio-net and Linux negotiate with the switch.
    fn default() -> Self {
        HeaderLayout {
            len: NET_HDR_LEN,
            mergeable: true,
        }
    }
}

/// What [`take_tx`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Chains taken from the ring and returned as used (the guest must be signalled when
    /// this is not zero).
    pub chains: usize,
    /// Frames handed to the callback.
    pub frames: usize,
    /// Chains dropped as malformed: device-writable descriptors, an address outside
    /// guest memory, shorter than the header, or a frame above [`MAX_FRAME`].
    pub bad: usize,
}

/// Where [`take_tx`] puts the frames it takes: fixed slots, each filled in place so that
/// a frame is copied once, from the guest's buffers to its slot.
pub trait FrameSink {
    /// The next free slot (at least [`MAX_FRAME`] bytes), or `None` when the sink is full.
    fn slot(&mut self) -> Option<&mut [u8]>;
    /// The last slot handed out now holds a frame of `len` bytes.
    fn commit(&mut self, len: usize);
}

/// A batch of frames in [`MAX_FRAME`]-byte slots: the [`FrameSink`] of a port's ring
/// thread, allocated once.
#[derive(Debug)]
pub struct FrameBatch {
    buf: Box<[u8]>,
    lens: Vec<usize>,
}

impl FrameBatch {
    /// A batch of at most `slots` frames.
    pub fn new(slots: usize) -> Self {
        FrameBatch {
            buf: vec![0; slots * MAX_FRAME].into_boxed_slice(),
            lens: Vec::with_capacity(slots),
        }
    }

    /// Number of frames held.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Frame `i`, in arrival order.
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.buf[i * MAX_FRAME..i * MAX_FRAME + self.lens[i]]
    }

    /// Forgets every frame held.
    pub fn clear(&mut self) {
        self.lens.clear();
    }
}

impl FrameSink for FrameBatch {
    fn slot(&mut self) -> Option<&mut [u8]> {
        let i = self.lens.len();
        self.buf.get_mut(i * MAX_FRAME..(i + 1) * MAX_FRAME)
    }

    fn commit(&mut self, len: usize) {
        self.lens.push(len.min(MAX_FRAME));
    }
}

/// Takes up to `budget` chains from a TX ring (fewer when `sink` fills up), copies each
/// frame (header stripped) into a slot of `sink`, and returns every chain to the guest
/// as used. A ring that is not ready, or whose avail index is impossible, yields nothing.
pub fn take_tx<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    layout: HeaderLayout,
    budget: usize,
    sink: &mut impl FrameSink,
) -> TxStats {
    let mut stats = TxStats::default();
    while stats.chains < budget {
        let Some(slot) = sink.slot() else {
            break;
        };
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        let len = read_chain(chain, mem, layout.len, slot);
        // A used entry the guest cannot accept (used ring outside memory) leaves the
        // ring broken for this guest only: stop taking from it.
        if queue.add_used(mem, head, 0).is_err() {
            stats.bad += 1;
            break;
        }
        stats.chains += 1;
        match len {
            Some(len) => {
                stats.frames += 1;
                sink.commit(len);
            }
            None => stats.bad += 1,
        }
    }
    stats
}

/// Copies a TX chain's frame, header skipped, into `slot`; the frame's length, or `None`
/// when the chain is not a valid frame.
fn read_chain<M: GuestMemory>(
    chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
    mem: &M,
    hdr_len: usize,
    slot: &mut [u8],
) -> Option<usize> {
    let limit = hdr_len + MAX_FRAME;
    // The header is read too (into scratch), so that its addresses are checked as the
    // frame's are.
    let mut hdr = [0u8; NET_HDR_LEN];
    let (mut total, mut len) = (0usize, 0usize);
    // The iterator ends a looping chain after a queue size of descriptors, silently:
    // a last descriptor that still points on is such a loop (or a bad index).
    let mut dangling = false;
    for desc in chain {
        dangling = desc.has_next();
        if desc.is_write_only() {
            return None;
        }
        let n = desc.len() as usize;
        if n > limit - total {
            return None;
        }
        let mut addr = desc.addr();
        let in_hdr = hdr_len.saturating_sub(total).min(n);
        if in_hdr > 0 {
            mem.read_slice(&mut hdr[total..total + in_hdr], addr).ok()?;
            addr = addr.checked_add(in_hdr as u64)?;
        }
        let body = n - in_hdr;
        if body > 0 {
            mem.read_slice(slot.get_mut(len..len + body)?, addr).ok()?;
            len += body;
        }
        total += n;
    }
    (!dangling && total >= hdr_len).then_some(len)
}

/// What [`put_rx`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxOutcome {
    /// Written to the guest's RX ring, in this many chains.
    Delivered(usize),
    /// The ring has no (or not enough) buffers: nothing was consumed; the caller keeps
    /// or drops the frame.
    NoBuffers,
    /// The frame was dropped: a chain was malformed (read-only descriptors, addresses
    /// outside guest memory) or, without mergeable buffers, too small. The chains taken
    /// were returned to the guest as used with length 0.
    Dropped,
}

/// Most chains one frame may take (mergeable buffers); Linux posts buffers of at least
/// 1518 bytes, so a real guest needs one or a few.
const MAX_CHAINS_PER_FRAME: usize = 64;

/// Writes `frame` behind a zeroed header into the guest's RX ring. With mergeable
/// buffers the frame may span several chains (`num_buffers` says how many); without,
/// it must fit one.
pub fn put_rx<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    layout: HeaderLayout,
    frame: &[u8],
) -> RxOutcome {
    if frame.len() > MAX_FRAME {
        return RxOutcome::Dropped;
    }
    let hdr = [0u8; NET_HDR_LEN];
    let hdr = &hdr[..layout.len];
    let total = hdr.len() + frame.len();
    let start = queue.next_avail();
    // (head, bytes written) of each chain taken, published only once the frame is whole.
    let mut chains: [(u16, u32); MAX_CHAINS_PER_FRAME] = [(0, 0); MAX_CHAINS_PER_FRAME];
    let mut taken = 0;
    // Guest addresses of num_buffers' two bytes (the header may span descriptors).
    let mut num_buffers_at: [Option<GuestAddress>; 2] = [None; 2];
    let mut written = 0usize;
    let mut bad = false;
    while written < total {
        if taken == MAX_CHAINS_PER_FRAME || (taken == 1 && !layout.mergeable) {
            bad = true;
            break;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Not enough buffers: give back what we took, as if untouched.
            queue.set_next_avail(start);
            return RxOutcome::NoBuffers;
        };
        let head = chain.head_index();
        let mut in_chain = 0u32;
        for desc in chain {
            if !desc.is_write_only() {
                bad = true;
                break;
            }
            let n = (desc.len() as usize).min(total - written);
            if n == 0 {
                continue;
            }
            if write_stream(mem, desc.addr(), hdr, frame, written, n).is_err() {
                bad = true;
                break;
            }
            for (k, at) in num_buffers_at.iter_mut().enumerate() {
                let pos = NUM_BUFFERS_OFFSET + k;
                if layout.len == NET_HDR_LEN && (written..written + n).contains(&pos) {
                    *at = desc.addr().checked_add((pos - written) as u64);
                }
            }
            written += n;
            in_chain += n as u32;
            if written == total {
                break;
            }
        }
        chains[taken] = (head, in_chain);
        taken += 1;
        if bad {
            break;
        }
    }
    if bad {
        for &(head, _) in &chains[..taken] {
            if queue.add_used(mem, head, 0).is_err() {
                break;
            }
        }
        return RxOutcome::Dropped;
    }
    let count = (taken as u16).to_le_bytes();
    for (at, byte) in num_buffers_at.iter().zip(count) {
        if let Some(at) = at {
            // Written moments ago, so in memory.
            let _ = mem.write_slice(&[byte], *at);
        }
    }
    for &(head, len) in &chains[..taken] {
        if queue.add_used(mem, head, len).is_err() {
            return RxOutcome::Dropped;
        }
    }
    RxOutcome::Delivered(taken)
}

/// Writes bytes `from..from + n` of the stream `hdr ++ frame` at `addr`.
fn write_stream<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    hdr: &[u8],
    frame: &[u8],
    from: usize,
    n: usize,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut addr = addr;
    let mut pos = from;
    let end = from + n;
    if pos < hdr.len() {
        let part = &hdr[pos..hdr.len().min(end)];
        mem.write_slice(part, addr)?;
        addr = addr
            .checked_add(part.len() as u64)
            .ok_or(vm_memory::GuestMemoryError::InvalidGuestAddress(addr))?;
        pos += part.len();
    }
    if pos < end {
        mem.write_slice(&frame[pos - hdr.len()..end - hdr.len()], addr)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use vm_memory::GuestMemoryMmap;

    // virtq_desc flags (virtio 1.2, 2.7.5).
    const NEXT: u16 = 1;
    const WRITE: u16 = 2;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;
    const DATA: u64 = 0x10000;
    const SIZE: u16 = 16;

    /// A ring of 16 entries in 1 MiB of guest memory, with chains given as lists of
    /// (table index, addr, len, flags, next); heads are each chain's first index.
    struct Ring {
        mem: GuestMemoryMmap,
        queue: Queue,
        avail: u16,
    }

    impl Ring {
        fn new() -> Self {
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
            let mut queue = Queue::new(SIZE).unwrap();
            queue.set_size(SIZE);
            queue
                .try_set_desc_table_address(GuestAddress(DESC))
                .unwrap();
            queue
                .try_set_avail_ring_address(GuestAddress(AVAIL))
                .unwrap();
            queue.try_set_used_ring_address(GuestAddress(USED)).unwrap();
            queue.set_ready(true);
            Ring {
                mem,
                queue,
                avail: 0,
            }
        }

        fn desc(&self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
            let d = RawDescriptor::from(Descriptor::new(addr, len, flags, next));
            self.mem
                .write_obj(d, GuestAddress(DESC + 16 * u64::from(i)))
                .unwrap();
        }

        fn offer(&mut self, head: u16) {
            let slot = AVAIL + 4 + 2 * u64::from(self.avail % SIZE);
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail = self.avail.wrapping_add(1);
            self.mem
                .write_obj(self.avail, GuestAddress(AVAIL + 2))
                .unwrap();
        }

        fn used(&self, n: u16) -> (u32, u32) {
            let at = USED + 4 + 8 * u64::from(n % SIZE);
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        fn used_idx(&self) -> u16 {
            self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
        }

        fn tx(&mut self) -> (TxStats, Vec<Vec<u8>>) {
            let mut batch = FrameBatch::new(64);
            let stats = take_tx(
                &mut self.queue,
                &self.mem,
                HeaderLayout::default(),
                64,
                &mut batch,
            );
            let frames = (0..batch.len()).map(|i| batch.frame(i).to_vec()).collect();
            (stats, frames)
        }

        fn rx(&mut self, frame: &[u8]) -> RxOutcome {
            put_rx(&mut self.queue, &self.mem, HeaderLayout::default(), frame)
        }
    }

    fn frame(n: usize) -> Vec<u8> {
        (0..n).map(|i| i as u8).collect()
    }

    #[test]
    fn tx_strips_the_header_across_descriptors() {
        let mut r = Ring::new();
        let f = frame(60);
        // Header alone, then the frame split in two.
        r.mem.write_slice(&[7; 12], GuestAddress(DATA)).unwrap();
        r.mem
            .write_slice(&f[..20], GuestAddress(DATA + 100))
            .unwrap();
        r.mem
            .write_slice(&f[20..], GuestAddress(DATA + 200))
            .unwrap();
        r.desc(0, DATA, 12, NEXT, 1);
        r.desc(1, DATA + 100, 20, NEXT, 2);
        r.desc(2, DATA + 200, 40, 0, 0);
        r.offer(0);
        let (stats, frames) = r.tx();
        assert_eq!(
            stats,
            TxStats {
                chains: 1,
                frames: 1,
                bad: 0
            }
        );
        assert_eq!(frames, vec![f]);
        assert_eq!(r.used_idx(), 1);
        assert_eq!(r.used(0), (0, 0));
        // Nothing more offered: nothing taken.
        assert_eq!(r.tx().0.chains, 0);
    }

    #[test]
    fn tx_drops_hostile_chains_and_keeps_going() {
        let mut r = Ring::new();
        // 0: outside guest memory; 1: a loop 1 -> 2 -> 1; 3: too long; 4: writable;
        // 5: shorter than the header; 6: a good frame.
        r.desc(0, 1 << 40, 100, 0, 0);
        r.desc(1, DATA, 12, NEXT, 2);
        r.desc(2, DATA, 12, NEXT, 1);
        r.desc(3, DATA, (NET_HDR_LEN + MAX_FRAME + 1) as u32, 0, 0);
        r.desc(4, DATA, 100, WRITE, 0);
        r.desc(5, DATA, 5, 0, 0);
        r.mem
            .write_slice(&frame(72), GuestAddress(DATA + 0x1000))
            .unwrap();
        r.desc(6, DATA + 0x1000, 72, 0, 0);
        for head in [0, 1, 3, 4, 5, 6] {
            r.offer(head);
        }
        let (stats, frames) = r.tx();
        assert_eq!(stats.chains, 6);
        assert_eq!(stats.bad, 5);
        assert_eq!(frames, vec![frame(72)[12..].to_vec()]);
        assert_eq!(r.used_idx(), 6);
    }

    #[test]
    fn tx_ignores_an_impossible_avail_index() {
        let mut r = Ring::new();
        r.desc(0, DATA, 72, 0, 0);
        r.offer(0);
        // The guest claims 1000 new entries in a ring of 16.
        r.mem.write_obj(1000u16, GuestAddress(AVAIL + 2)).unwrap();
        let (stats, frames) = r.tx();
        assert_eq!(stats, TxStats::default());
        assert!(frames.is_empty());
    }

    #[test]
    fn tx_respects_the_budget() {
        let mut r = Ring::new();
        for i in 0..5 {
            r.desc(i, DATA, 72, 0, 0);
            r.offer(i);
        }
        let mut batch = FrameBatch::new(64);
        let layout = HeaderLayout::default();
        let stats = take_tx(&mut r.queue, &r.mem, layout, 3, &mut batch);
        assert_eq!((stats.chains, batch.len()), (3, 3));
        assert_eq!(r.tx().0.chains, 2);
        // A full sink stops the taking before a chain is popped.
        r.desc(5, DATA, 72, 0, 0);
        r.desc(6, DATA, 72, 0, 0);
        r.offer(5);
        r.offer(6);
        let mut small = FrameBatch::new(1);
        let stats = take_tx(&mut r.queue, &r.mem, layout, 64, &mut small);
        assert_eq!((stats.chains, small.len()), (1, 1));
        assert_eq!(r.tx().0.chains, 1);
    }

    #[test]
    fn rx_prepends_a_header_with_num_buffers() {
        let mut r = Ring::new();
        r.desc(0, DATA, 2048, WRITE, 0);
        r.offer(0);
        let f = frame(60);
        assert_eq!(r.rx(&f), RxOutcome::Delivered(1));
        let mut got = [0u8; 72];
        r.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got[..10], [0; 10]);
        assert_eq!(got[10..12], [1, 0]);
        assert_eq!(got[12..], f[..]);
        assert_eq!(r.used(0), (0, 72));
        // No buffer left: the frame stays with the caller, nothing consumed.
        assert_eq!(r.rx(&f), RxOutcome::NoBuffers);
        assert_eq!(r.used_idx(), 1);
    }

    #[test]
    fn rx_merges_buffers_and_rolls_back_when_short() {
        let mut r = Ring::new();
        // Three chains of 40 bytes; the header is split over two descriptors in the
        // first chain.
        r.desc(0, DATA, 11, WRITE | NEXT, 1);
        r.desc(1, DATA + 11, 29, WRITE, 0);
        r.desc(2, DATA + 100, 40, WRITE, 0);
        r.desc(3, DATA + 200, 40, WRITE, 0);
        r.offer(0);
        r.offer(2);
        let f = frame(100); // 112 bytes with the header: does not fit in 80
        assert_eq!(r.rx(&f), RxOutcome::NoBuffers);
        assert_eq!(r.used_idx(), 0);
        r.offer(3);
        assert_eq!(r.rx(&f), RxOutcome::Delivered(3));
        assert_eq!(r.used_idx(), 3);
        assert_eq!(r.used(0), (0, 40));
        assert_eq!(r.used(1), (2, 40));
        assert_eq!(r.used(2), (3, 32));
        let mut got = [0u8; 120];
        r.mem
            .read_slice(&mut got[..40], GuestAddress(DATA))
            .unwrap();
        r.mem
            .read_slice(&mut got[40..80], GuestAddress(DATA + 100))
            .unwrap();
        r.mem
            .read_slice(&mut got[80..], GuestAddress(DATA + 200))
            .unwrap();
        assert_eq!(got[10..12], [3, 0]);
        assert_eq!(got[12..112], f[..]);
    }

    #[test]
    fn rx_drops_on_hostile_chains() {
        let mut r = Ring::new();
        r.desc(0, DATA, 2048, 0, 0); // read-only
        r.desc(1, (1 << 20) - 8, 2048, WRITE, 0); // runs off the end of memory
        r.offer(0);
        r.offer(1);
        assert_eq!(r.rx(&frame(60)), RxOutcome::Dropped);
        assert_eq!(r.rx(&frame(60)), RxOutcome::Dropped);
        assert_eq!(r.used_idx(), 2);
        assert_eq!(r.used(1), (1, 0));
        assert_eq!(r.rx(&frame(MAX_FRAME + 1)), RxOutcome::Dropped);
    }

    #[test]
    fn rx_without_mergeable_buffers_needs_one_chain() {
        let mut r = Ring::new();
        r.desc(0, DATA, 40, WRITE, 0);
        r.desc(1, DATA + 100, 40, WRITE, 0);
        r.offer(0);
        r.offer(1);
        let layout = HeaderLayout {
            len: NET_HDR_LEN,
            mergeable: false,
        };
        assert_eq!(
            put_rx(&mut r.queue, &r.mem, layout, &frame(60)),
            RxOutcome::Dropped
        );
        assert_eq!(
            put_rx(&mut r.queue, &r.mem, layout, &frame(20)),
            RxOutcome::Delivered(1)
        );
        assert_eq!(r.used(1), (1, 32));
    }

    #[test]
    fn header_layout_follows_features() {
        assert_eq!(HeaderLayout::from_features(0).len, LEGACY_NET_HDR_LEN);
        assert_eq!(HeaderLayout::from_features(1 << 32).len, NET_HDR_LEN);
        assert!(HeaderLayout::from_features(1 << 15).mergeable);
    }
}
