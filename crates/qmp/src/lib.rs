//! QEMU Machine Protocol (QMP): a sans-IO codec and session, typed commands and an async
//! tokio client.
//!
//! QMP is the JSON protocol QEMU speaks on `-qmp unix:PATH,server=on,wait=off`
//! (QEMU's `docs/interop/qmp-spec`). This crate has four layers:
//!
//! - [`Codec`]: pure framing and parsing over [`bytes::BytesMut`], shaped like a
//!   `tokio_util` codec. It accepts any chunking of the stream, several messages per
//!   read, pretty-printed or compact JSON, and bounds message size. No I/O.
//!   `return` values stay raw JSON text ([`Response::parse_return`]) so a large reply
//!   is parsed once, straight into the caller's type.
//! - [`command`]: one serde type per QMP command ([`Stop`], [`Screendump`],
//!   [`SendKey`], [`SetLink`], [`Migrate`], ...) tied to its return type by the
//!   [`Command`] trait, plus [`Execute`] for any other command.
//! - [`Session`]: the pure protocol state machine on top of the codec: it negotiates
//!   capabilities, numbers commands and files each answer under its id, and keeps
//!   events in a bounded queue. Bytes in, bytes out, no I/O, no runtime.
//! - [`Client`] (feature `client`, on by default): a tokio client over a unix socket
//!   that feeds a [`Session`]: it negotiates capabilities, runs commands from many tasks at once, queues
//!   events in a bounded queue ([`Client::wait_for_event`], [`Client::take_events`],
//!   [`Client::dropped_events`]) and fails every call at once when QEMU goes away.
//!
//! # Example
//!
//! Decoding what QEMU sends, without any I/O:
//!
//! ```
//! use bytes::BytesMut;
//! use vmrig_qmp::{Codec, Message};
//!
//! let mut codec = Codec::new();
//! let mut buf = BytesMut::new();
//! let wire = concat!(
//!     r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#, "\r\n",
//!     r#"{"return": {}, "id": 1}"#, "\r\n",
//!     r#"{"timestamp": {"seconds": 1, "microseconds": 5}, "event": "STOP"}"#, "\r\n",
//! );
//! let mut messages = Vec::new();
//! for chunk in wire.as_bytes().chunks(7) {
//!     buf.extend_from_slice(chunk);
//!     while let Some(message) = codec.decode(&mut buf)? {
//!         messages.push(message);
//!     }
//! }
//! assert!(matches!(&messages[0], Message::Greeting(g) if g.version.qemu.major == 7));
//! assert!(matches!(&messages[2], Message::Event(e) if e.event == "STOP"));
//!
//! // Encoding a typed command.
//! let mut out = BytesMut::new();
//! let cmd = vmrig_qmp::SendKey::combo("ctrl-alt-delete");
//! codec.encode_command("send-key", &cmd, Some(2), &mut out)?;
//! assert!(out.starts_with(br#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"}"#), "{out:?}");
//! # Ok::<(), vmrig_qmp::Error>(())
//! ```
//!
//! Talking to a running QEMU (started with `-qmp unix:/tmp/qmp.sock,server=on,wait=off`):
//!
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn demo() -> Result<(), vmrig_qmp::Error> {
//! use std::time::Duration;
//! use vmrig_qmp::{Client, ImageFormat, QueryStatus, Screendump, Stop};
//!
//! let qmp = Client::connect("/tmp/qmp.sock", Duration::from_secs(10)).await?;
//! let status = qmp.execute(QueryStatus).await?;
//! println!("running: {}", status.running);
//! qmp.execute(Stop).await?;
//! qmp.wait_for_event(|e| e.event == "STOP", Duration::from_secs(10)).await?;
//! qmp.execute(Screendump::new("/tmp/screen.png", ImageFormat::Png)).await?;
//! let other = qmp.execute_raw("query-cpus-fast", serde_json::Value::Null).await?;
//! # let _ = other;
//! # Ok(())
//! # }
//! ```
//!
//! # What it does not do
//!
//! No out-of-band (`oob`) execution, no file-descriptor passing (`getfd`), no TCP
//! sockets, no QEMU process management: starting and killing QEMU is the caller's job.

/// The `bytes` crate this API uses, re-exported so callers match its version.
pub use bytes;

#[cfg(feature = "client")]
mod client;
mod codec;
pub mod command;
mod error;
mod message;
mod session;

#[cfg(feature = "client")]
pub use client::{Client, ClientOptions};
pub use codec::{parse_frame, Codec, DEFAULT_MAX_MESSAGE_SIZE};
pub use command::{
    Command, Cont, DeviceAdd, DeviceDel, Empty, Execute, HumanMonitorCommand, ImageFormat,
    InputEvent, InputSendEvent, KeyValue, Migrate, MigrateIncoming, MigrationInfo, MigrationStatus,
    QmpCapabilities, QueryMigrate, QueryStatus, QueryVersion, Quit, RunState, Screendump, SendKey,
    SetLink, StatusInfo, Stop, SystemPowerdown, SystemReset,
};
pub use error::{Error, Result};
pub use message::{
    Event, Greeting, Message, QmpError, Response, Timestamp, VersionInfo, VersionTriple,
};
pub use session::{Phase, Session, SessionConfig};
