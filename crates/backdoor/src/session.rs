//! The sans-IO session: which command's reply the host waits for, and what to
//! do with every other reply.
//!
//! Each command line carries a nonce (see the crate docs); the guest echoes it
//! in its reply's header and trailer. A [`Session`] numbers the commands it
//! encodes, remembers the one whose reply is awaited and the ones nobody waits
//! for any more (sent without `check_output`, timed out, cancelled), and sorts
//! what the [`Decoder`] finds: the awaited reply is handed out, replies and
//! broken replies to abandoned commands are dropped quietly, and everything
//! else (stray output, replies to commands this session never sent) is dropped,
//! counted and kept as a warning for the caller to log. No I/O, no clock: the
//! tokio [`Shell`](crate::Shell) only moves bytes and bounds the waits.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::codec::{Decoder, DecoderConfig, Event, Reply};
use crate::command::Command;
use crate::error::{Error, Result};

/// How many unanswered abandoned commands are remembered; older ones' replies
/// count as unexpected (a warning) when they arrive.
const MAX_ABANDONED: usize = 4096;
/// Warnings kept for [`Session::poll_warning`] before the oldest are dropped.
const MAX_WARNINGS: usize = 64;

/// What [`Session::decode`] found for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The magic line came: the shell takes commands now.
    Ready {
        /// The console noise before it (the last [`DecoderConfig::max_noise`] bytes).
        noise: Bytes,
    },
    /// The reply to the awaited command, with its whole output (streamed
    /// chunks are put together).
    Reply(Reply),
}

/// The nonce bookkeeping of one backdoor connection, without I/O.
///
/// ```
/// use bytes::BytesMut;
/// use vmrig_backdoor::{write_reply, Command, Session, Update};
///
/// let mut s = Session::ready(Default::default()).with_first_nonce(7);
/// let mut line = BytesMut::new();
/// let nonce = s.send(&Command::new("echo hi"), &mut line)?;
/// assert_eq!((nonce, s.awaiting()), (7, Some(7)));
///
/// // The guest answers an older command first, then ours.
/// let mut input = BytesMut::new();
/// write_reply(3, 0, b"old", &mut input);
/// write_reply(7, 0, b"hi\n", &mut input);
/// let Some(Update::Reply(reply)) = s.decode(&mut input)? else { panic!() };
/// assert_eq!((reply.nonce, &reply.output[..]), (7, &b"hi\n"[..]));
/// assert_eq!(s.stray_count(), 1);
/// assert!(s.poll_warning().unwrap().to_string().contains("#3"));
/// # Ok::<(), vmrig_backdoor::Error>(())
/// ```
#[derive(Debug)]
pub struct Session {
    decoder: Decoder,
    next_nonce: u64,
    /// The command whose reply the caller waits for.
    awaiting: Option<u64>,
    /// Its output so far, when the decoder streams.
    streamed: BytesMut,
    /// Commands whose reply nobody waits for.
    abandoned: VecDeque<u64>,
    stray: u64,
    warnings: VecDeque<Error>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A session whose guest has not printed the magic line yet.
    pub fn new() -> Self {
        Self::with_decoder(Decoder::new())
    }

    /// A session that is already ready (e.g. after restoring a snapshot, when
    /// no magic line comes again).
    pub fn ready(config: DecoderConfig) -> Self {
        Self::with_decoder(Decoder::ready(config))
    }

    /// A session around a configured decoder. Its nonces start at a number
    /// that differs between connections (see [`with_first_nonce`](Self::with_first_nonce)).
    pub fn with_decoder(decoder: Decoder) -> Self {
        Session {
            decoder,
            next_nonce: initial_nonce(),
            awaiting: None,
            streamed: BytesMut::new(),
            abandoned: VecDeque::new(),
            stray: 0,
            warnings: VecDeque::new(),
        }
    }

    /// Numbers commands from `nonce` on (for reproducible tests; by default
    /// each session starts far from 0 and from earlier sessions, so that a
    /// reply left over from another connection cannot match by accident).
    pub fn with_first_nonce(mut self, nonce: u64) -> Self {
        self.next_nonce = nonce;
        self
    }

    /// Whether the magic line has been seen.
    pub fn is_ready(&self) -> bool {
        self.decoder.is_ready()
    }

    /// The nonce of the command whose reply is awaited, if any.
    pub fn awaiting(&self) -> Option<u64> {
        self.awaiting
    }

    /// Appends `cmd`'s line to `dst` under the next nonce and returns that nonce.
    ///
    /// With `check_output` its reply becomes the awaited one (a command still
    /// awaited is abandoned: one command is in flight at a time); without, its
    /// reply is dropped quietly when it comes. On error (a NUL byte in the
    /// script) nothing is appended and no nonce is used.
    pub fn send(&mut self, cmd: &Command, dst: &mut BytesMut) -> Result<u64> {
        let nonce = self.next_nonce;
        cmd.encode(nonce, dst)?;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        if cmd.check_output {
            self.abandon();
            self.awaiting = Some(nonce);
        } else {
            self.remember_abandoned(nonce);
        }
        Ok(nonce)
    }

    /// Stops waiting for the awaited command (its caller timed out or gave
    /// up): its reply is dropped quietly when it comes.
    pub fn abandon(&mut self) {
        if let Some(nonce) = self.awaiting.take() {
            self.streamed.clear();
            self.remember_abandoned(nonce);
        }
    }

    fn remember_abandoned(&mut self, nonce: u64) {
        if self.abandoned.len() == MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(nonce);
    }

    /// Forgets an abandoned nonce; returns whether it was one.
    fn forget(&mut self, nonce: u64) -> bool {
        match self.abandoned.iter().position(|&n| n == nonce) {
            Some(i) => {
                self.abandoned.remove(i);
                true
            }
            None => false,
        }
    }

    /// Decodes what the guest sent (consuming what it used from `buf`, like
    /// [`Decoder::decode`]) until there is something for the caller: the
    /// magic line or the awaited reply. `Ok(None)` means more input is needed.
    ///
    /// Fails with the decoder's error when the awaited reply is broken (it is
    /// then no longer awaited). Everything else that does not concern the
    /// awaited command is dropped: quietly when it belongs to an abandoned
    /// command, else counted ([`stray_count`](Self::stray_count)) and kept as a
    /// warning ([`poll_warning`](Self::poll_warning)).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Update>> {
        loop {
            match self.decoder.decode(buf) {
                Ok(None) => return Ok(None),
                Ok(Some(Event::Ready { noise, .. })) => return Ok(Some(Update::Ready { noise })),
                Ok(Some(Event::Reply(mut reply))) if Some(reply.nonce) == self.awaiting => {
                    self.awaiting = None;
                    if !self.streamed.is_empty() {
                        reply.output = self.streamed.split().freeze();
                    }
                    return Ok(Some(Update::Reply(reply)));
                }
                Ok(Some(Event::Reply(reply))) => {
                    if !self.forget(reply.nonce) {
                        self.stray(Error::UnexpectedReply {
                            nonce: reply.nonce,
                            expected: self.awaiting,
                        });
                    }
                }
                Ok(Some(Event::Output { nonce, chunk })) => {
                    if Some(nonce) == self.awaiting {
                        self.streamed.extend_from_slice(&chunk);
                    }
                }
                Err(e @ Error::StrayOutput { .. }) => self.stray(e),
                Err(e) => match e.nonce() {
                    None => return Err(e),
                    Some(n) if Some(n) == self.awaiting => {
                        self.awaiting = None;
                        self.streamed.clear();
                        return Err(e);
                    }
                    Some(n) => {
                        if !self.forget(n) {
                            self.stray(e);
                        }
                    }
                },
            }
        }
    }

    fn stray(&mut self, warning: Error) {
        self.stray += 1;
        if self.warnings.len() >= MAX_WARNINGS {
            self.warnings.pop_front();
        }
        self.warnings.push_back(warning);
    }

    /// How many pieces of stray output (bytes outside any reply, broken
    /// replies to commands nobody waits for, replies to commands this session
    /// did not send) were dropped so far.
    pub fn stray_count(&self) -> u64 {
        self.stray
    }

    /// Takes the oldest warning about dropped input ([`Error::StrayOutput`],
    /// [`Error::UnexpectedReply`], or a broken reply to another command); at
    /// most 64 are kept.
    pub fn poll_warning(&mut self) -> Option<Error> {
        self.warnings.pop_front()
    }
}

fn initial_nonce() -> u64 {
    // Not a secret, only distinct per connection: the clock's nanoseconds
    // mixed with a per-process counter, kept well below u64::MAX.
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    ((t ^ c.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 1_000_000_000) * 1000 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{write_reply, MAGIC};

    fn reply(nonce: u64, status: u8, out: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        write_reply(nonce, status, out, &mut b);
        b
    }

    fn drain(s: &mut Session, buf: &mut BytesMut) -> Vec<Result<Update>> {
        let mut out = Vec::new();
        loop {
            match s.decode(buf) {
                Ok(None) => return out,
                other => out.push(other.map(|u| u.expect("some"))),
            }
        }
    }

    fn warnings(s: &mut Session) -> Vec<String> {
        std::iter::from_fn(|| s.poll_warning())
            .map(|w| w.to_string())
            .collect()
    }

    #[test]
    fn magic_line_then_the_awaited_reply() {
        let mut s = Session::new().with_first_nonce(10);
        assert!(!s.is_ready());
        let mut buf = BytesMut::from(&b"noise\n"[..]);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(b"\n");
        let Some(Update::Ready { noise }) = s.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(&noise[..], b"noise\n");
        assert!(s.is_ready());
        let mut line = BytesMut::new();
        assert_eq!(s.send(&Command::new("true"), &mut line).unwrap(), 10);
        assert!(line.starts_with(b"echo -n '#vmrig10:'"));
        buf.extend_from_slice(&reply(10, 3, b"out"));
        assert_eq!(
            s.decode(&mut buf).unwrap(),
            Some(Update::Reply(Reply {
                nonce: 10,
                status: 3,
                output: Bytes::from_static(b"out")
            }))
        );
        assert_eq!(s.awaiting(), None);
        assert_eq!(s.stray_count(), 0);
    }

    #[test]
    fn unchecked_and_abandoned_replies_are_dropped_quietly() {
        let mut s = Session::ready(DecoderConfig::default()).with_first_nonce(1);
        let mut line = BytesMut::new();
        let a = s
            .send(&Command::new("a").check_output(false), &mut line)
            .unwrap();
        assert_eq!(s.awaiting(), None);
        let b = s.send(&Command::new("b"), &mut line).unwrap();
        s.abandon(); // timed out
        let c = s.send(&Command::new("c"), &mut line).unwrap();
        let d = s.send(&Command::new("d"), &mut line).unwrap(); // c's caller went away
        assert_eq!((a, b, c, d), (1, 2, 3, 4));
        let mut buf = BytesMut::new();
        for n in [a, b, c, d] {
            buf.extend_from_slice(&reply(n, 0, format!("{n}").as_bytes()));
        }
        let got = drain(&mut s, &mut buf);
        assert_eq!(got.len(), 1);
        let Ok(Update::Reply(r)) = &got[0] else {
            panic!("{got:?}")
        };
        assert_eq!((r.nonce, &r.output[..]), (d, &b"4"[..]));
        assert_eq!(s.stray_count(), 0, "{:?}", warnings(&mut s));
        // A second reply with an abandoned nonce is no longer expected.
        buf.extend_from_slice(&reply(a, 0, b""));
        assert!(drain(&mut s, &mut buf).is_empty());
        assert_eq!(s.stray_count(), 1);
        let w = warnings(&mut s);
        assert!(w[0].contains("#1"), "{w:?}");
    }

    #[test]
    fn stray_output_and_foreign_replies_are_counted_and_reported() {
        let mut s = Session::ready(DecoderConfig::default()).with_first_nonce(5);
        let mut line = BytesMut::new();
        s.send(&Command::new("x"), &mut line).unwrap();
        let mut buf = BytesMut::from(&b"stray line\n"[..]);
        buf.extend_from_slice(&reply(99, 0, b"not ours"));
        buf.extend_from_slice(&reply(5, 0, b"ours"));
        let got = drain(&mut s, &mut buf);
        assert!(
            matches!(&got[..], [Ok(Update::Reply(r))] if &r.output[..] == b"ours"),
            "{got:?}"
        );
        assert_eq!(s.stray_count(), 2);
        let w = warnings(&mut s);
        assert!(w[0].contains("stray output"), "{w:?}");
        assert!(w[1].contains("#99") && w[1].contains("#5"), "{w:?}");
        assert!(s.poll_warning().is_none());
    }

    #[test]
    fn a_broken_awaited_reply_is_an_error_others_are_warnings() {
        let mut s = Session::ready(DecoderConfig::default()).with_first_nonce(1);
        let mut line = BytesMut::new();
        s.send(&Command::new("x"), &mut line).unwrap();
        // A reply to someone else that is broken, then ours, broken too.
        let mut buf = BytesMut::from(&b"#vmrig77:!!!\n:0:77#\n"[..]);
        buf.extend_from_slice(b"#vmrig1:aGkK\n:0:2#\n");
        let got = drain(&mut s, &mut buf);
        assert!(
            matches!(
                &got[..],
                [Err(Error::NonceMismatch {
                    opened: 1,
                    closed: 2
                })]
            ),
            "{got:?}"
        );
        assert_eq!(s.awaiting(), None);
        assert_eq!(s.stray_count(), 1);
        assert!(warnings(&mut s)[0].contains("#77"));
    }

    #[test]
    fn streamed_output_is_put_together() {
        let config = DecoderConfig {
            stream_output: true,
            ..DecoderConfig::default()
        };
        let mut s = Session::ready(config).with_first_nonce(1);
        let mut line = BytesMut::new();
        s.send(&Command::new("a").check_output(false), &mut line)
            .unwrap();
        s.send(&Command::new("b"), &mut line).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let wire = [reply(1, 0, b"ignored"), reply(2, 0, &big)].concat();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(4099) {
            buf.extend_from_slice(chunk);
            got.extend(drain(&mut s, &mut buf));
        }
        let [Ok(Update::Reply(r))] = &got[..] else {
            panic!("{got:?}")
        };
        assert_eq!(r.nonce, 2);
        assert_eq!(&r.output[..], &big[..]);
    }

    #[test]
    fn a_failed_encode_uses_no_nonce() {
        let mut s = Session::ready(DecoderConfig::default()).with_first_nonce(1);
        let mut line = BytesMut::new();
        assert!(s.send(&Command::new(&b"a\0"[..]), &mut line).is_err());
        assert!(line.is_empty());
        assert_eq!(s.awaiting(), None);
        assert_eq!(s.send(&Command::new("ok"), &mut line).unwrap(), 1);
    }

    #[test]
    fn warnings_are_bounded() {
        let mut s = Session::ready(DecoderConfig::default()).with_first_nonce(1);
        let mut buf = BytesMut::new();
        for n in 0..500 {
            buf.extend_from_slice(&reply(1000 + n, 0, b""));
        }
        assert!(drain(&mut s, &mut buf).is_empty());
        assert_eq!(s.stray_count(), 500);
        assert_eq!(warnings(&mut s).len(), MAX_WARNINGS);
    }
}
