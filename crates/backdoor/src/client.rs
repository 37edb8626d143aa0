//! The thin tokio adapter: a [`Shell`] over any byte stream to the guest.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use crate::codec::{Decoder, DecoderConfig, Event, Reply};
use crate::command::{Command, STATUS_UNCHECKED_OUTPUT};
use crate::error::{Error, Result};

/// How many unanswered `check_output=false` commands are remembered; older
/// ones' replies count as unexpected (logged and dropped) when they arrive.
const MAX_ABANDONED: usize = 4096;

/// What [`Shell::run`] returns: NixOS's `(status, output)` pair plus the
/// real exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The status NixOS's `execute` reports: the exit status, or -1 without
    /// `check_return`, or -2 without `check_output`.
    pub status: i32,
    /// The exit status of the command (`None` without `check_output`, when
    /// the reply was not awaited).
    pub exit_status: Option<u8>,
    /// The command's stdout (empty without `check_output`).
    pub output: Bytes,
}

/// A connection to a guest's backdoor shell over a byte stream (in vmrig,
/// the unix socket QEMU's `virtconsole` chardev connects to).
///
/// One command is in flight at a time (the guest's bash runs them one after
/// the other anyway); every read is bounded by the caller's timeout, and the
/// end of the stream fails the call at once with [`Error::Closed`].
#[derive(Debug)]
pub struct Shell<S> {
    io: S,
    buf: BytesMut,
    decoder: Decoder,
    next_nonce: u64,
    abandoned: VecDeque<u64>,
    stray: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shell<S> {
    /// A shell whose guest has not printed the magic line yet.
    pub fn new(io: S) -> Self {
        Shell::with_decoder(io, Decoder::new())
    }

    /// A shell that is already ready (e.g. after restoring a snapshot, when
    /// no magic line comes again).
    pub fn ready(io: S) -> Self {
        Shell::with_decoder(io, Decoder::ready(DecoderConfig::default()))
    }

    /// A shell with a configured decoder.
    pub fn with_decoder(io: S, decoder: Decoder) -> Self {
        Shell {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            decoder,
            // Start far from 0 and from earlier connections, so that a reply
            // left over from another session cannot match by accident.
            next_nonce: initial_nonce(),
            abandoned: VecDeque::new(),
            stray: 0,
        }
    }

    /// Whether the magic line has been seen.
    pub fn is_ready(&self) -> bool {
        self.decoder.is_ready()
    }

    /// Waits up to `timeout` for the magic line; returns the console noise
    /// that came before it (empty if the shell was ready already).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Bytes> {
        self.ready_by(Instant::now() + timeout, timeout).await
    }

    async fn ready_by(&mut self, deadline: Instant, allowed: Duration) -> Result<Bytes> {
        while !self.decoder.is_ready() {
            match self
                .next_event(deadline, allowed, "the backdoor shell to start")
                .await?
            {
                Event::Ready { noise, .. } => return Ok(noise),
                ev => tracing::warn!(?ev, "backdoor event before the magic line"),
            }
        }
        Ok(Bytes::new())
    }

    /// Runs `cmd` and waits up to `timeout` (from now, including the wait
    /// for the magic line if it has not come yet) for its reply.
    ///
    /// With a guest-side timeout set in `cmd`, give a larger `timeout` here
    /// so that the guest's 124 arrives. On a host-side timeout the reply is
    /// skipped when it arrives later. Without `check_output` the command is
    /// only sent, and its reply skipped later.
    pub async fn run(&mut self, cmd: &Command, timeout: Duration) -> Result<Outcome> {
        let deadline = Instant::now() + timeout;
        self.ready_by(deadline, timeout).await?;
        let nonce = self.next_nonce;
        self.next_nonce = self.next_nonce.wrapping_add(1);
        let mut line = BytesMut::new();
        cmd.encode(nonce, &mut line)?;
        self.write_by(&line, deadline, timeout).await?;
        if !cmd.check_output {
            self.abandon(nonce);
            return Ok(Outcome {
                status: STATUS_UNCHECKED_OUTPUT,
                exit_status: None,
                output: Bytes::new(),
            });
        }
        match self.reply_to(nonce, deadline, timeout).await {
            Ok(reply) => Ok(Outcome {
                status: cmd.reported_status(reply.status),
                exit_status: Some(reply.status),
                output: reply.output,
            }),
            Err(e) => {
                if matches!(e, Error::Timeout { .. }) {
                    self.abandon(nonce);
                }
                Err(e)
            }
        }
    }

    /// Writes raw bytes to the shell (e.g. `poweroff\n`), bounded by
    /// `timeout`.
    pub async fn send_raw(&mut self, bytes: &[u8], timeout: Duration) -> Result<()> {
        self.write_by(bytes, Instant::now() + timeout, timeout)
            .await
    }

    /// How many pieces of stray output (bytes outside any reply, broken
    /// replies to commands nobody waits for, replies to commands this shell
    /// did not send) were dropped so far. Each is also logged as a warning.
    pub fn stray_count(&self) -> u64 {
        self.stray
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.io
    }

    fn abandon(&mut self, nonce: u64) {
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

    async fn reply_to(
        &mut self,
        nonce: u64,
        deadline: Instant,
        allowed: Duration,
    ) -> Result<Reply> {
        let mut streamed = BytesMut::new();
        loop {
            match self
                .next_event(deadline, allowed, "a command's reply")
                .await
            {
                Ok(Event::Reply(mut reply)) if reply.nonce == nonce => {
                    if !streamed.is_empty() {
                        reply.output = streamed.freeze();
                    }
                    return Ok(reply);
                }
                Ok(Event::Reply(reply)) => {
                    if !self.forget(reply.nonce) {
                        self.stray += 1;
                        tracing::warn!(
                            nonce = reply.nonce,
                            expected = nonce,
                            "dropping a reply to a command this shell did not send"
                        );
                    }
                }
                Ok(Event::Output { nonce: n, chunk }) => {
                    if n == nonce {
                        streamed.extend_from_slice(&chunk);
                    }
                }
                Ok(Event::Ready { .. }) => {}
                Err(Error::StrayOutput { bytes }) => {
                    self.stray += 1;
                    tracing::warn!(%bytes, "stray output on the backdoor console, ignored");
                }
                Err(e) if e.nonce() == Some(nonce) => return Err(e),
                Err(e) if e.nonce().is_some() => {
                    let other = e.nonce().unwrap_or_default();
                    if !self.forget(other) {
                        self.stray += 1;
                        tracing::warn!(error = %e, "broken reply to another command, ignored");
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn next_event(
        &mut self,
        deadline: Instant,
        allowed: Duration,
        what: &'static str,
    ) -> Result<Event> {
        loop {
            if let Some(ev) = self.decoder.decode(&mut self.buf)? {
                return Ok(ev);
            }
            self.buf.reserve(64 << 10);
            let n = timeout_at(deadline, self.io.read_buf(&mut self.buf))
                .await
                .map_err(|_| Error::Timeout {
                    what,
                    after: allowed,
                })??;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    async fn write_by(&mut self, bytes: &[u8], deadline: Instant, allowed: Duration) -> Result<()> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match timeout_at(deadline, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_closed(&e) => Err(Error::Closed),
            Ok(Err(e)) => Err(Error::Io(e)),
            Err(_) => Err(Error::Timeout {
                what: "the guest to accept a command",
                after: allowed,
            }),
        }
    }
}

fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
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
