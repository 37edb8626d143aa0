//! A synthetic vhost-user frontend (what QEMU does, driven by hand) for tests: the
//! `vhost` crate's `Frontend`, "guest memory" in a memfd shared with the switch, one RX
//! and one TX split ring of 256 entries. The `vde` bench includes this file too;
//! raw descriptor access serves the hostile-guest tests. With
//! [`Port::connect_event_idx`] the driver side negotiates `VIRTIO_RING_F_EVENT_IDX` as
//! Linux does: it kicks only when the switch's `avail_event` asks for it and asks for
//! a signal (`used_event`) only when it is about to wait for one.
#![allow(dead_code)]

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const HDR: usize = 12;
/// VIRTIO_RING_F_EVENT_IDX (virtio 1.2, 6).
const EVENT_IDX: u32 = 29;

pub fn mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0x7e, (i >> 8) as u8, i as u8]
}

/// A frame with its zeroed virtio-net header.
pub fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; HDR];
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.resize(HDR + 60, 0);
    f
}

pub const QUEUE: u16 = 256;
const BUF: u64 = 2048;
const MEM: usize = 2 << 20;

// Layout of a port's memory: RX ring, TX ring, RX buffers, TX buffers.
const RX_DESC: u64 = 0x0;
const RX_AVAIL: u64 = 0x1000;
const RX_USED: u64 = 0x2000;
const TX_DESC: u64 = 0x3000;
const TX_AVAIL: u64 = 0x4000;
const TX_USED: u64 = 0x5000;
const RX_BUFS: u64 = 0x10000;
pub const TX_BUFS: u64 = 0x100000;
/// Bytes of "guest memory" per port.
pub const MEM_SIZE: u64 = MEM as u64;

// virtq_desc flags (virtio 1.2, 2.7.5).
const WRITE: u16 = 2;

/// The driver's side of one split virtqueue.
pub struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
    /// `VIRTIO_RING_F_EVENT_IDX` negotiated.
    event_idx: bool,
    /// The avail index at the last kick (or decision not to kick).
    kicked_at: u16,
    pub avail_idx: u16,
    pub last_used: u16,
    pub free: Vec<u16>,
}

impl Ring {
    fn new(desc: u64, avail: u64, used: u64, bufs: u64) -> Ring {
        Ring {
            desc,
            avail,
            used,
            bufs,
            event_idx: false,
            kicked_at: 0,
            avail_idx: 0,
            last_used: 0,
            free: (0..QUEUE).rev().collect(),
        }
    }

    pub fn offer(&mut self, mem: &GuestMemoryMmap, id: u16, len: u32, flags: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&(self.bufs + u64::from(id) * BUF).to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(id)))
            .unwrap();
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE);
        mem.write_slice(&id.to_le_bytes(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Writes descriptor `id` as given (any address, length, flags, next) and offers
    /// it as a chain head, whatever it points to.
    pub fn offer_raw(
        &mut self,
        mem: &GuestMemoryMmap,
        id: u16,
        (addr, len, flags, next): (u64, u32, u16, u16),
    ) {
        self.write_desc(mem, id, (addr, len, flags, next));
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % QUEUE);
        mem.write_slice(&id.to_le_bytes(), GuestAddress(slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Writes descriptor `id` without offering it (the inside of a chain).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        id: u16,
        (addr, len, flags, next): (u64, u32, u16, u16),
    ) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc + 16 * u64::from(id % QUEUE)))
            .unwrap();
    }

    pub fn publish(&self, mem: &GuestMemoryMmap) {
        mem.store(
            self.avail_idx,
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .unwrap();
    }

    /// Whether the device wants a kick for what was published since the last call
    /// (always, without EVENT_IDX; virtio 1.2, 2.7.10, `vring_need_event`).
    pub fn needs_kick(&mut self, mem: &GuestMemoryMmap) -> bool {
        let (old, new) = (self.kicked_at, self.avail_idx);
        self.kicked_at = new;
        if !self.event_idx {
            return true;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        let avail_event: u16 = mem
            .load(
                GuestAddress(self.used + 4 + 8 * u64::from(QUEUE)),
                Ordering::Acquire,
            )
            .unwrap();
        new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Asks for a signal once the device has used `ahead` more entries than were seen
    /// (at least one); true when it already has (no need to wait).
    pub fn arm(&mut self, mem: &GuestMemoryMmap, ahead: u16) -> bool {
        if self.event_idx {
            mem.store(
                self.last_used.wrapping_add(ahead.max(1) - 1),
                GuestAddress(self.avail + 4 + 2 * u64::from(QUEUE)),
                Ordering::Release,
            )
            .unwrap();
            std::sync::atomic::fence(Ordering::SeqCst);
        }
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap();
        idx != self.last_used
    }

    /// Ids of the chains the device returned since the last call.
    pub fn used(&mut self, mem: &GuestMemoryMmap, out: &mut Vec<u16>) {
        let idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .unwrap();
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % QUEUE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            out.push(id as u16);
            self.last_used = self.last_used.wrapping_add(1);
        }
    }
}

/// One synthetic QEMU NIC on a vhost-user port.
pub struct Port {
    _frontend: Frontend,
    pub mem: GuestMemoryMmap,
    pub rx: Ring,
    pub tx: Ring,
    pub kick: [EventFd; 2],
    call: [EventFd; 2],
    /// One epoll per call eventfd: vmm-sys-util's safe way to wait with a timeout.
    epoll: [Epoll; 2],
    scratch: Vec<u16>,
}

impl Port {
    pub fn connect(sock: &Path) -> Port {
        Port::connect_with(sock, false)
    }

    /// A port whose driver negotiates EVENT_IDX (if the switch offers it).
    pub fn connect_event_idx(sock: &Path) -> Port {
        Port::connect_with(sock, true)
    }

    fn connect_with(sock: &Path, event_idx: bool) -> Port {
        let fd = rustix::fs::memfd_create("vhost-bench", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd");
        rustix::fs::ftruncate(&fd, MEM as u64).unwrap();
        let file = File::from(fd);
        let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            MEM,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
        let mut f = Frontend::connect(sock, 2).expect("connect to the vhost-user port");
        f.set_owner().unwrap();
        let offered = f.get_features().unwrap();
        let mut want = (1u64 << 32) | (1 << 15) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if event_idx {
            want |= 1 << EVENT_IDX;
        }
        let acked = offered & want;
        let event_idx = acked & (1 << EVENT_IDX) != 0;
        f.set_features(acked).unwrap();
        if offered & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let pf = f.get_protocol_features().unwrap();
            f.set_protocol_features(pf & VhostUserProtocolFeatures::MQ)
                .unwrap();
        }
        f.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM as u64,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: raw,
        }])
        .unwrap();
        let kick = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let call = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        for (q, (desc, avail, used)) in [(RX_DESC, RX_AVAIL, RX_USED), (TX_DESC, TX_AVAIL, TX_USED)]
            .into_iter()
            .enumerate()
        {
            f.set_vring_num(q, QUEUE).unwrap();
            f.set_vring_addr(
                q,
                &VringConfigData {
                    queue_max_size: QUEUE,
                    queue_size: QUEUE,
                    flags: 0,
                    desc_table_addr: host + desc,
                    used_ring_addr: host + used,
                    avail_ring_addr: host + avail,
                    log_addr: None,
                },
            )
            .unwrap();
            f.set_vring_base(q, 0).unwrap();
            f.set_vring_call(q, &call[q]).unwrap();
            f.set_vring_kick(q, &kick[q]).unwrap();
            f.set_vring_enable(q, true).unwrap();
        }
        let mut port = Port {
            _frontend: f,
            mem,
            rx: Ring::new(RX_DESC, RX_AVAIL, RX_USED, RX_BUFS),
            tx: Ring::new(TX_DESC, TX_AVAIL, TX_USED, TX_BUFS),
            kick,
            epoll: [0, 1].map(|q| {
                let e = Epoll::new().unwrap();
                e.ctl(
                    ControlOperation::Add,
                    std::os::fd::AsRawFd::as_raw_fd(&call[q]),
                    EpollEvent::new(EventSet::IN, 0),
                )
                .unwrap();
                e
            }),
            call,
            scratch: Vec::new(),
        };
        port.rx.event_idx = event_idx;
        port.tx.event_idx = event_idx;
        // Every RX buffer offered up front.
        while let Some(id) = port.rx.free.pop() {
            port.rx.offer(&port.mem, id, BUF as u32, WRITE);
        }
        port.rx.publish(&port.mem);
        port.kick[0].write(1).unwrap();
        port.rx.kicked_at = port.rx.avail_idx;
        port
    }

    /// Sends up to `n` copies of `f` (header included); returns how many went.
    pub fn send(&mut self, f: &[u8], n: usize) -> usize {
        self.scratch.clear();
        self.tx.used(&self.mem, &mut self.scratch);
        self.tx.free.extend_from_slice(&self.scratch);
        let n = n.min(self.tx.free.len());
        for _ in 0..n {
            let id = self.tx.free.pop().unwrap();
            self.mem
                .write_slice(f, GuestAddress(TX_BUFS + u64::from(id) * BUF))
                .unwrap();
            self.tx.offer(&self.mem, id, f.len() as u32, 0);
        }
        if n > 0 {
            self.tx.publish(&self.mem);
            if self.tx.needs_kick(&self.mem) {
                self.kick[1].write(1).unwrap();
            }
        }
        n
    }

    /// Waits (at most `timeout`) for the switch to signal queue `q`, as a guest waits
    /// for its interrupt. With EVENT_IDX, as Linux's virtio-net does: on RX, a signal
    /// for the first frame; on TX (a full ring), once three quarters of the chains in
    /// flight are used (`virtqueue_enable_cb_delayed`).
    pub fn wait(&mut self, q: usize, timeout: Duration) {
        let (ring, ahead) = if q == 0 {
            (&mut self.rx, 1)
        } else {
            let in_flight = self.tx.avail_idx.wrapping_sub(self.tx.last_used);
            (&mut self.tx, in_flight / 4 * 3)
        };
        if ring.arm(&self.mem, ahead) {
            return;
        }
        let mut events = [EpollEvent::default()];
        if self.epoll[q]
            .wait(timeout.as_millis() as i32, &mut events)
            .unwrap_or(0)
            > 0
        {
            let _ = self.call[q].read();
        }
    }

    /// Takes the frames received and gives their buffers back; returns how many.
    pub fn receive(&mut self) -> usize {
        self.scratch.clear();
        self.rx.used(&self.mem, &mut self.scratch);
        let n = self.scratch.len();
        for i in 0..n {
            let id = self.scratch[i];
            self.rx.offer(&self.mem, id, BUF as u32, WRITE);
        }
        if n > 0 {
            self.rx.publish(&self.mem);
            if self.rx.needs_kick(&self.mem) {
                self.kick[0].write(1).unwrap();
            }
        }
        n
    }
}
