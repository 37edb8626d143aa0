//! The backdoor shell protocol spoken between the vmrig driver and a guest's
//! root shell on `/dev/hvc0`: command encoding, a streaming decoder of the
//! replies, and (feature `tokio`, on by default) a thin async [`Shell`].
//!
//! # The guest side (fixed by NixOS)
//!
//! ```text
//! exec < /dev/hvc0 > /dev/hvc0 ; exec 2> /dev/ttyS0
//! stty -F /dev/hvc0 raw -echo
//! echo "Spawning backdoor root shell..."
//! PS1="" exec bash --norc /dev/hvc0
//! ```
//!
//! bash reads its script line by line from the console; what it and its
//! commands print to stdout comes back to the host; stderr goes to the serial
//! console.
//!
//! # The wire format
//!
//! NixOS's driver sends `timeout T bash -c 'set -euo pipefail; CMD' | (base64
//! -w 0; echo)`, reads the base64 line, then sends `echo ${PIPESTATUS[0]}` and
//! reads the status: two round trips, and nothing ties a reply to its command.
//! vmrig sends one line per command, numbered with a nonce `N`:
//!
//! ```text
//! echo -n '#vmrigN:';[timeout T ]bash -c 'set -euo pipefail; CMD' | base64 -w 65532;echo ":${PIPESTATUS[0]}:N#"
//! ```
//!
//! and the guest answers with one frame: a header, the output in base64 lines
//! of 65532 characters (the last one shorter) each closed by `\n`, and a
//! trailer with the exit status:
//!
//! ```text
//! #vmrigN:LINE\nLINE\n...LAST\n:STATUS:N#\n
//! ```
//!
//! The command runs exactly as under NixOS (same `bash -c` argument, quoted
//! like Python's `shlex.quote`, same pipe for stdout, same `timeout` with
//! status 124), and the guest does less work: no subshell around `base64`, no
//! second command. The nonce in the header and trailer ties each reply to its
//! command; bytes outside a frame (say, from a process a previous command put
//! in the background writing to `/dev/hvc0`) are reported as
//! [`Error::StrayOutput`] and dropped; a frame with foreign bytes inside is
//! rejected as [`Error::MalformedReply`]. Output written by a stray process
//! *inside* a frame using only base64 letters in multiples of 4 cannot be
//! told apart; everything else is caught.
//!
//! Why lines: QEMU's `virtconsole` silently drops guest output that the host
//! does not read in time (`hw/char/virtio-console.c` drops console data on
//! `EAGAIN`; seen here as 4 KiB holes in 10 MB replies from a TCG guest on a
//! loaded host). NixOS's `base64 -w 0` turns such a hole into silently
//! shorter output whenever it is a multiple of 4 bytes. A hole inside a
//! fixed-width line leaves a line of the wrong length, and the reply is
//! rejected with [`Error::MalformedReply`]. Not caught: a hole that removes
//! exactly the end of the output (the last, short line's tail) or exactly
//! whole lines; so readers should also drain the socket promptly.
//!
//! An example exchange (`>` host to guest, `<` guest to host):
//!
//! ```text
//! < [    1.234] random console noise
//! < Spawning backdoor root shell...\n
//! > echo -n '#vmrig7:';bash -c 'set -euo pipefail; echo hi; exit 3' | base64 -w 65532;echo ":${PIPESTATUS[0]}:7#"\n
//! < #vmrig7:aGkK\n:3:7#\n
//! ```
//!
//! # Example
//!
//! The sans-IO core, fed the guest's bytes in arbitrary pieces:
//!
//! ```
//! use bytes::BytesMut;
//! use vmrig_backdoor::{Command, Decoder, Event};
//!
//! // What the host sends for command #7:
//! let mut line = BytesMut::new();
//! Command::new("echo hi; exit 3").encode(7, &mut line)?;
//! assert!(line.starts_with(b"echo -n '#vmrig7:';bash -c 'set -euo pipefail; echo hi; exit 3'"));
//!
//! // What the guest prints, in two pieces:
//! let mut dec = Decoder::new();
//! let mut buf = BytesMut::from(&b"[ 1.2] boot noise\nSpawning backdoor root she"[..]);
//! assert_eq!(dec.decode(&mut buf)?, None);
//! buf.extend_from_slice(b"ll...\n#vmrig7:aGkK\n:3:7#\n");
//! let Some(Event::Ready { noise, .. }) = dec.decode(&mut buf)? else { panic!() };
//! assert_eq!(&noise[..], b"[ 1.2] boot noise\n");
//! let Some(Event::Reply(reply)) = dec.decode(&mut buf)? else { panic!() };
//! assert_eq!((reply.nonce, reply.status, &reply.output[..]), (7, 3, &b"hi\n"[..]));
//! # Ok::<(), vmrig_backdoor::Error>(())
//! ```
//!
//! [`Session`] adds the nonce bookkeeping on top of the decoder: it numbers
//! commands, hands out the reply to the awaited one and drops (and counts)
//! everything else, still without I/O. With the `tokio` feature, [`Shell`]
//! feeds a [`Session`] from a stream:
//! `shell.wait_ready(t).await?` then `shell.run(&Command::new("true"), t).await?`.
//!
//! # Semantics kept from NixOS on purpose
//!
//! - A command's stdout is a pipe (not the console), its stdin is the
//!   console itself: a command that reads stdin eats the lines sent after it,
//!   exactly as under NixOS; give such commands `</dev/null`.
//! - A command that leaves a background process holding its stdout (`foo &`)
//!   does not return until that process exits, as under NixOS (`base64` waits
//!   for the end of the pipe); redirect its output (`foo >/dev/null 2>&1 &`).
//! - A background process that writes to `/dev/hvc0` *while* a reply is
//!   being printed breaks that reply ([`Error::MalformedReply`]); between
//!   replies its output is only dropped and counted ([`Shell::stray_count`]).
//!
//! # What this crate does not do
//!
//! It does not start VMs, open sockets or log the serial console: that is the
//! driver's work. It does not decode output as text (NixOS decodes UTF-8 with
//! replacement; the caller does that at the Python boundary).

mod codec;
mod command;
mod error;
mod session;

#[cfg(feature = "tokio")]
mod client;

#[cfg(feature = "tokio")]
pub use client::{Outcome, Shell};
pub use codec::{write_reply, Decoder, DecoderConfig, Event, Reply, MAGIC};
pub use command::{shell_quote, Command, STATUS_UNCHECKED_OUTPUT, STATUS_UNCHECKED_RETURN};
pub use error::{Error, Result, Snippet, SNIPPET_MAX};
pub use session::{Session, Update};
