//! The thin tokio adapter: a [`Shell`] over any byte stream to the guest,
//! feeding the sans-IO [`Session`].

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use crate::codec::{Decoder, DecoderConfig, Reply};
use crate::command::{Command, STATUS_UNCHECKED_OUTPUT};
use crate::error::{Error, Result};
use crate::session::{Session, Update};

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
/// end of the stream fails the call at once with [`Error::Closed`]. Which
/// reply belongs to which command is the [`Session`]'s business.
#[derive(Debug)]
pub struct Shell<S> {
    io: S,
    buf: BytesMut,
    session: Session,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Shell<S> {
    /// A shell whose guest has not printed the magic line yet.
    pub fn new(io: S) -> Self {
        Shell::with_session(io, Session::new())
    }

    /// A shell that is already ready (e.g. after restoring a snapshot, when
    /// no magic line comes again).
    pub fn ready(io: S) -> Self {
        Shell::with_session(io, Session::ready(DecoderConfig::default()))
    }

    /// A shell with a configured decoder.
    pub fn with_decoder(io: S, decoder: Decoder) -> Self {
        Shell::with_session(io, Session::with_decoder(decoder))
    }

    /// A shell around a prepared session.
    pub fn with_session(io: S, session: Session) -> Self {
        Shell {
            io,
            buf: BytesMut::with_capacity(64 << 10),
            session,
        }
    }

    /// Whether the magic line has been seen.
    pub fn is_ready(&self) -> bool {
        self.session.is_ready()
    }

    /// Waits up to `timeout` for the magic line; returns the console noise
    /// that came before it (empty if the shell was ready already).
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Bytes> {
        self.ready_by(Instant::now() + timeout, timeout).await
    }

    async fn ready_by(&mut self, deadline: Instant, allowed: Duration) -> Result<Bytes> {
        while !self.session.is_ready() {
            match self
                .next_update(deadline, allowed, "the backdoor shell to start")
                .await?
            {
                Update::Ready { noise } => return Ok(noise),
                update => tracing::warn!(?update, "backdoor reply before the magic line"),
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
    /// only sent, and its reply skipped later. If this future is dropped
    /// before the reply comes, the reply is skipped the same way once the
    /// next command is sent.
    pub async fn run(&mut self, cmd: &Command, timeout: Duration) -> Result<Outcome> {
        let deadline = Instant::now() + timeout;
        self.ready_by(deadline, timeout).await?;
        let mut line = BytesMut::new();
        let nonce = self.session.send(cmd, &mut line)?;
        let result = async {
            self.write_by(&line, deadline, timeout).await?;
            if !cmd.check_output {
                return Ok(None);
            }
            self.reply_to(deadline, timeout).await.map(Some)
        }
        .await;
        if result.is_err() && self.session.awaiting() == Some(nonce) {
            self.session.abandon();
        }
        Ok(match result? {
            Some(reply) => Outcome {
                status: cmd.reported_status(reply.status),
                exit_status: Some(reply.status),
                output: reply.output,
            },
            None => Outcome {
                status: STATUS_UNCHECKED_OUTPUT,
                exit_status: None,
                output: Bytes::new(),
            },
        })
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
        self.session.stray_count()
    }

    /// The underlying stream.
    pub fn into_inner(self) -> S {
        self.io
    }

    async fn reply_to(&mut self, deadline: Instant, allowed: Duration) -> Result<Reply> {
        loop {
            match self
                .next_update(deadline, allowed, "a command's reply")
                .await?
            {
                Update::Reply(reply) => return Ok(reply),
                Update::Ready { .. } => {}
            }
        }
    }

    async fn next_update(
        &mut self,
        deadline: Instant,
        allowed: Duration,
        what: &'static str,
    ) -> Result<Update> {
        loop {
            let update = self.session.decode(&mut self.buf);
            while let Some(warning) = self.session.poll_warning() {
                tracing::warn!("{warning}; ignored");
            }
            if let Some(update) = update? {
                return Ok(update);
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
