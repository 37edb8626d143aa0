//! A relay between QEMU and rust-vmm's vhost-user request handler that smooths over
//! one ordering difference of QEMU 7.2's vhost-user-net.
//!
//! QEMU 7.2's virtio-net sends `VHOST_USER_SET_VRING_ENABLE` when the device is
//! realized (`peer_attach`), before its first `VHOST_USER_SET_FEATURES`, and its
//! `SET_FEATURES` does not always carry `VHOST_USER_F_PROTOCOL_FEATURES`. The vhost
//! crate (0.18) only accepts `SET_VRING_ENABLE` once `SET_FEATURES` has acked that bit
//! and otherwise drops the connection ("inactive feature"). Without the protocol
//! features, QEMU 7.2 cannot start vhost-user-net at all (its own `SET_VRING_ENABLE`
//! fails with EINVAL, and its fallback path crashes under TCG). So the relay:
//!
//! - holds back a `SET_VRING_ENABLE` that arrives before any `SET_FEATURES` and
//!   replays it (the last one of each ring) right after `SET_FEATURES` (QEMU does not
//!   send it again; no reply is due, since `REPLY_ACK` is not offered),
//! - adds `VHOST_USER_F_PROTOCOL_FEATURES` to `SET_FEATURES` once QEMU has negotiated
//!   protocol features (`SET_PROTOCOL_FEATURES`), which is what it means.
//!
//! Everything else passes unchanged, file descriptors included (`SCM_RIGHTS`). Only
//! control messages cross the relay, a few dozen per QEMU start: frames never do.
//! Message layout: vhost-user spec, "Message Specification" (12-byte header: request,
//! flags, size, all little-endian u32, then `size` bytes of payload).

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::debug;

const HEADER: usize = 12;
/// Largest payload relayed; vhost-user messages are a few hundred bytes at most
/// (SET_MEM_TABLE with 8 regions: 328 bytes).
const MAX_PAYLOAD: usize = 4096;
/// Most descriptors one message may carry (VHOST_MEMORY_BASELINE_NREGIONS).
const MAX_FDS: usize = 8;

#[cfg(test)]
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// What the relay decides for one message from QEMU.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Pass it on (possibly rewritten), followed by these held-back messages.
    Forward(Vec<Vec<u8>>),
    /// Hold it back (the relay keeps a copy).
    Defer,
}

/// The relay's view of the handshake (sans-IO, unit-tested).
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    features_set: bool,
    protocol_negotiated: bool,
    /// Early SET_VRING_ENABLE messages, whole, the last one per ring index.
    deferred: Vec<(u32, Vec<u8>)>,
}

impl Handshake {
    /// Looks at (and maybe rewrites) one whole message from QEMU (header and payload).
    pub(crate) fn on_message(&mut self, msg: &mut [u8]) -> Verdict {
        if msg.len() < HEADER {
            return Verdict::Forward(Vec::new());
        }
        let request = u32::from_le_bytes([msg[0], msg[1], msg[2], msg[3]]);
        let payload = &mut msg[HEADER..];
        match request {
            SET_PROTOCOL_FEATURES => self.protocol_negotiated = true,
            SET_FEATURES => {
                self.features_set = true;
                if self.protocol_negotiated && payload.len() >= 8 {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&payload[..8]);
                    let features = u64::from_le_bytes(v) | PROTOCOL_FEATURES_BIT;
                    payload[..8].copy_from_slice(&features.to_le_bytes());
                }
                let replay = std::mem::take(&mut self.deferred);
                return Verdict::Forward(replay.into_iter().map(|(_, m)| m).collect());
            }
            SET_VRING_ENABLE if !self.features_set => {
                debug!("vhost-user relay: SET_VRING_ENABLE before SET_FEATURES held back");
                // struct vhost_vring_state: index (u32), num (u32).
                let index = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(u32::MAX);
                self.deferred.retain(|(i, _)| *i != index);
                if self.deferred.len() < 64 {
                    self.deferred.push((index, msg.to_vec()));
                }
                return Verdict::Defer;
            }
            _ => {}
        }
        Verdict::Forward(Vec::new())
    }
}

/// Relays between `qemu` and `ours`, a connection to the request handler. Two
/// threads; both end when either side closes.
pub(crate) fn relay(qemu: UnixStream, ours: UnixStream) -> std::io::Result<()> {
    let (q1, o1) = (qemu.try_clone()?, ours.try_clone()?);
    std::thread::Builder::new()
        .name("vhost-relay-in".into())
        .spawn(move || {
            let mut hs = Handshake::default();
            if let Err(e) = to_backend(&q1, &o1, &mut hs) {
                debug!(error = %e, "vhost-user relay: frontend side ended");
            }
            let _ = q1.shutdown(std::net::Shutdown::Both);
            let _ = o1.shutdown(std::net::Shutdown::Both);
        })?;
    std::thread::Builder::new()
        .name("vhost-relay-out".into())
        .spawn(move || {
            // Replies carry no descriptors for the features the switch offers.
            let _ = std::io::copy(&mut &ours, &mut &qemu);
            let _ = qemu.shutdown(std::net::Shutdown::Both);
            let _ = ours.shutdown(std::net::Shutdown::Both);
        })?;
    Ok(())
}

fn to_backend(qemu: &UnixStream, backend: &UnixStream, hs: &mut Handshake) -> std::io::Result<()> {
    let mut buf = vec![0u8; HEADER + MAX_PAYLOAD];
    loop {
        // The descriptors come with the message's first bytes.
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            qemu.as_fd(),
            &mut [IoSliceMut::new(&mut buf[..HEADER])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?
        .bytes;
        if got == 0 {
            return Ok(());
        }
        let fds: Vec<OwnedFd> = control
            .drain()
            .flat_map(|m| match m {
                RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
                _ => Vec::new(),
            })
            .collect();
        (&*qemu).read_exact(&mut buf[got..HEADER])?;
        let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (request, size) = (word(0), word(8) as usize);
        if size > MAX_PAYLOAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("vhost-user message {request} of {size} bytes"),
            ));
        }
        (&*qemu).read_exact(&mut buf[HEADER..HEADER + size])?;
        let Verdict::Forward(replay) = hs.on_message(&mut buf[..HEADER + size]) else {
            continue;
        };
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !borrowed.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(&borrowed));
        }
        let msg = &buf[..HEADER + size];
        let sent = sendmsg(
            backend.as_fd(),
            &[IoSlice::new(msg)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?;
        (&*backend).write_all(&msg[sent..])?;
        for m in replay {
            (&*backend).write_all(&m)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(request: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = request.to_le_bytes().to_vec();
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn vring_enable(index: u32, on: u32) -> Vec<u8> {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&on.to_le_bytes());
        message(SET_VRING_ENABLE, &p)
    }

    const NONE: Verdict = Verdict::Forward(Vec::new());

    #[test]
    fn early_vring_enables_wait_for_set_features_and_protocol_bit_is_added() {
        let mut hs = Handshake::default();
        assert_eq!(hs.on_message(&mut message(GET_FEATURES, &[])), NONE);
        assert_eq!(
            hs.on_message(&mut message(SET_PROTOCOL_FEATURES, &[0; 8])),
            NONE
        );
        // Ring 0 off then on, ring 1 on: the last word of each ring is replayed.
        assert_eq!(hs.on_message(&mut vring_enable(0, 0)), Verdict::Defer);
        assert_eq!(hs.on_message(&mut vring_enable(1, 1)), Verdict::Defer);
        assert_eq!(hs.on_message(&mut vring_enable(0, 1)), Verdict::Defer);
        let mut set = message(SET_FEATURES, &(1u64 << 32).to_le_bytes());
        assert_eq!(
            hs.on_message(&mut set),
            Verdict::Forward(vec![vring_enable(1, 1), vring_enable(0, 1)])
        );
        assert_eq!(
            set[HEADER..],
            ((1u64 << 32) | PROTOCOL_FEATURES_BIT).to_le_bytes()
        );
        assert_eq!(hs.on_message(&mut vring_enable(0, 0)), NONE);
    }

    #[test]
    fn without_protocol_features_set_features_is_untouched() {
        let mut hs = Handshake::default();
        let mut set = message(SET_FEATURES, &5u64.to_le_bytes());
        hs.on_message(&mut set);
        assert_eq!(set[HEADER..], 5u64.to_le_bytes());
        // A runt message passes as it is.
        assert_eq!(hs.on_message(&mut [1, 2]), NONE);
    }

    #[test]
    fn relays_bytes_and_descriptors() {
        let (qemu, qemu_peer) = UnixStream::pair().unwrap();
        let (ours, backend) = UnixStream::pair().unwrap();
        relay(qemu_peer, ours).unwrap();
        // SET_OWNER (3), no payload, with a descriptor attached.
        let file = tempfile::tempfile().unwrap();
        let msg = [3u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(&fds));
        sendmsg(
            &qemu,
            &[IoSlice::new(&msg)],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        let mut buf = [0u8; HEADER];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = recvmsg(
            &backend,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::empty(),
        )
        .unwrap()
        .bytes;
        assert_eq!((n, buf), (HEADER, msg));
        assert_eq!(control.drain().count(), 1);
        // A reply goes back unchanged.
        (&backend).write_all(b"reply").unwrap();
        let mut r = [0u8; 5];
        (&qemu).read_exact(&mut r).unwrap();
        assert_eq!(&r, b"reply");
    }
}
