//! Fuzzes a vhost-user port's descriptor handling: arbitrary rings (descriptor table,
//! avail and used rings, queue size, buffers) in a guest's memory, read as TX frames
//! and written with RX frames. Nothing may panic, a TX frame never exceeds
//! `MAX_FRAME`, the budget holds, and every chain taken is returned to the used ring
//! exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmrig_vde_net::vhost_ring::{put_rx, take_tx, FrameBatch, HeaderLayout, RxOutcome, MAX_FRAME};

/// Guest RAM: 64 KiB at 0, and 4 KiB at 1 MiB behind a hole (a descriptor pointing
/// into the hole or past the end must fail cleanly).
const LOW: u64 = 64 << 10;
const HIGH: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (ctl, image) = data.split_at(8);
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), LOW as usize), (GuestAddress(HIGH), 4096)])
            .unwrap();
    // The rest of the input is the low memory, rings and buffers alike.
    let n = image.len().min(LOW as usize);
    mem.write_slice(&image[..n], GuestAddress(0)).unwrap();
    let size = 1u16 << (ctl[0] % 9); // 1..=256, a power of two as the spec wants
    let mut queue = Queue::new(256).unwrap();
    queue.set_size(size);
    // Rings somewhere in low memory (or, for odd selectors, straddling the hole).
    let place = |b: u8, align: u64| {
        let base = if b & 0x80 != 0 { HIGH - 64 + u64::from(b & 0x7f) * 2 } else { u64::from(b) * 256 };
        base & !(align - 1)
    };
    if queue.try_set_desc_table_address(GuestAddress(place(ctl[1], 16))).is_err()
        || queue.try_set_avail_ring_address(GuestAddress(place(ctl[2], 2))).is_err()
        || queue.try_set_used_ring_address(GuestAddress(place(ctl[3], 4))).is_err()
    {
        return;
    }
    queue.set_ready(true);
    let layout = HeaderLayout {
        len: if ctl[4] & 1 != 0 { 12 } else { 10 },
        mergeable: ctl[4] & 2 != 0,
    };
    let budget = usize::from(ctl[5] % 80);

    if ctl[6] & 1 == 0 {
        // Fewer slots than the budget, at times: a full batch stops the taking.
        let mut batch = FrameBatch::new(usize::from(ctl[7] % 96));
        let stats = take_tx(&mut queue, &mem, layout, budget, &mut batch);
        for i in 0..batch.len() {
            assert!(batch.frame(i).len() <= MAX_FRAME);
        }
        assert!(stats.chains <= budget);
        assert_eq!(stats.frames, batch.len());
        assert!(stats.frames + stats.bad <= stats.chains + 1);
        // Every chain taken was returned once, none twice.
        assert_eq!(usize::from(queue.next_used()), stats.chains);
    } else {
        let frame_len = usize::from(ctl[7]) * 40; // up to 10200: some above MAX_FRAME
        let frame: Vec<u8> = (0..frame_len).map(|i| i as u8).collect();
        for _ in 0..3 {
            let next = queue.next_avail();
            match put_rx(&mut queue, &mem, layout, &frame) {
                RxOutcome::Delivered(n) => {
                    assert!(n >= 1);
                    assert!(frame_len <= MAX_FRAME);
                    if !layout.mergeable {
                        assert_eq!(n, 1);
                    }
                }
                // Nothing consumed: the caller keeps the frame.
                RxOutcome::NoBuffers => assert_eq!(queue.next_avail(), next),
                RxOutcome::Dropped => {}
            }
        }
    }
});
