//! Sans-IO framing: bytes from QEMU in, [`Message`]s out; commands in, bytes out.
//!
//! QMP (QEMU's `docs/interop/qmp-spec`, "Protocol Specification") is a stream of
//! JSON objects. QEMU ends each with `\r\n`, but with `pretty=on` a message spans
//! many lines, so the decoder frames by JSON structure, not by lines: it tracks
//! string, escape and nesting state incrementally, so a message that arrives in
//! many small reads is scanned once, not once per read.

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::message::{Message, Response};

/// Default bound on one message: 8 MiB. QEMU 7.2's largest reply here,
/// `query-qmp-schema`, is about 190 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024;

/// Incremental decoder and encoder for the QMP stream, shaped like a
/// `tokio_util::codec::{Decoder, Encoder}` pair.
///
/// ```
/// use bytes::BytesMut;
/// use vmrig_qmp::{Codec, Message};
///
/// let mut codec = Codec::new();
/// let mut buf = BytesMut::from(&b"{\"return\": {}, \"id\": 1}\r\n{\"event\": \"ST"[..]);
/// let Some(Message::Response(r)) = codec.decode(&mut buf)? else { panic!() };
/// assert_eq!(r.id, Some(serde_json::json!(1)));
/// assert_eq!(codec.decode(&mut buf)?, None); // the event is incomplete
/// buf.extend_from_slice(b"OP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\r\n");
/// assert!(matches!(codec.decode(&mut buf)?, Some(Message::Event(_))));
/// # Ok::<(), vmrig_qmp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Codec {
    max_message_size: usize,
    scan: Scan,
    /// Skipping the rest of an oversized message; its bytes are dropped as they come.
    discarding: bool,
}

/// Where the scan of the message at the front of the buffer stands.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    /// Bytes of the current message already scanned (counted from the buffer's front,
    /// or, while discarding, from the part already dropped).
    pos: usize,
    depth: usize,
    in_string: bool,
    escape: bool,
}

impl Default for Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Codec {
    /// A codec with the default message size bound ([`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A codec that rejects messages longer than `max` bytes (at least 2).
    pub fn with_max_message_size(max: usize) -> Self {
        Self {
            max_message_size: max.max(2),
            scan: Scan::default(),
            discarding: false,
        }
    }

    /// The message size bound in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Takes the next complete message off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete message yet (the partial
    /// input stays in `buf`, or is dropped while skipping an oversized message).
    /// An error consumes the offending input, so calling again continues with
    /// the next message: the stream stays usable after invalid JSON, an unknown
    /// shape, stray bytes or an oversized message.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>> {
        match self.decode_frame(buf)? {
            None => Ok(None),
            Some(frame) => parse_frame(&frame).map(Some),
        }
    }

    /// Takes the next complete JSON object off the front of `buf` without parsing
    /// it: framing and size bound only.
    pub fn decode_frame(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>> {
        loop {
            if !self.discarding && self.scan.pos == 0 {
                // Between messages: skip whitespace, reject anything but `{`.
                let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
                buf.advance(ws);
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                if first != b'{' {
                    let skipped = buf.iter().take_while(|&&b| b != b'{').count();
                    buf.advance(skipped);
                    return Err(Error::UnexpectedBytes { first, skipped });
                }
            }
            let end = self.scan_to_end(buf);
            if self.discarding {
                match end {
                    Some(end) => {
                        buf.advance(end);
                        self.discarding = false;
                        self.scan = Scan::default();
                        continue;
                    }
                    None => {
                        buf.clear();
                        self.scan.pos = 0;
                        return Ok(None);
                    }
                }
            }
            return match end {
                Some(end) if end <= self.max_message_size => {
                    self.scan = Scan::default();
                    Ok(Some(buf.split_to(end)))
                }
                Some(end) => {
                    buf.advance(end);
                    self.scan = Scan::default();
                    Err(self.too_large())
                }
                None if buf.len() > self.max_message_size => {
                    // Drop what we have and skip the rest of this message as it arrives.
                    buf.clear();
                    self.scan.pos = 0;
                    self.discarding = true;
                    Err(self.too_large())
                }
                None => Ok(None),
            };
        }
    }

    fn too_large(&self) -> Error {
        Error::MessageTooLarge {
            limit: self.max_message_size,
        }
    }

    /// Continues scanning `buf` from where the last call stopped; returns the length
    /// of the complete object at the front, if it is complete.
    fn scan_to_end(&mut self, buf: &[u8]) -> Option<usize> {
        let s = &mut self.scan;
        let mut i = s.pos;
        while i < buf.len() {
            let b = buf[i];
            i += 1;
            if s.in_string {
                if s.escape {
                    s.escape = false;
                } else if b == b'\\' {
                    s.escape = true;
                } else if b == b'"' {
                    s.in_string = false;
                } else if let Some(skip) = memchr_string_end(&buf[i..]) {
                    // Fast path: jump over plain string bytes.
                    i += skip;
                }
                continue;
            }
            match b {
                b'"' => s.in_string = true,
                b'{' | b'[' => s.depth += 1,
                b'}' | b']' => {
                    // Malformed nesting such as `{]` still ends the frame; the JSON
                    // parser then rejects it.
                    s.depth = s.depth.saturating_sub(1);
                    if s.depth == 0 {
                        s.pos = 0;
                        return Some(i);
                    }
                }
                _ => {}
            }
        }
        s.pos = i;
        None
    }

    /// Appends `{"execute": name, "arguments": ..., "id": id}\r\n` to `buf`.
    ///
    /// `arguments` that serialize to `null` or to an empty object are left out, as
    /// commands without arguments expect.
    pub fn encode_command<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        arguments: &A,
        id: Option<u64>,
        buf: &mut BytesMut,
    ) -> Result<()> {
        let encode_error = |reason: String| Error::EncodeArguments {
            command: name.to_owned(),
            reason,
        };
        // Serialized straight to text (no intermediate Value), so field order is
        // the struct's and the cost is one pass.
        let arguments = serde_json::to_vec(arguments).map_err(|e| encode_error(e.to_string()))?;
        let arguments = match arguments.as_slice() {
            b"null" | b"{}" => None,
            [b'{', ..] => Some(arguments),
            other => {
                return Err(encode_error(format!(
                    "arguments must be a json object, not {}",
                    String::from_utf8_lossy(other)
                )))
            }
        };
        buf.put_slice(b"{\"execute\":");
        // A &str always serializes, and writing into a BytesMut cannot fail.
        serde_json::to_writer((&mut *buf).writer(), name)
            .map_err(|e| encode_error(e.to_string()))?;
        if let Some(arguments) = arguments {
            buf.put_slice(b",\"arguments\":");
            buf.put_slice(&arguments);
        }
        if let Some(id) = id {
            buf.put_slice(b",\"id\":");
            buf.put_slice(id.to_string().as_bytes());
        }
        buf.put_u8(b'}');
        buf.put_slice(b"\r\n");
        Ok(())
    }

    /// Appends a server-side message in QEMU's wire form, for test servers and
    /// recorders.
    pub fn encode_message(&mut self, message: &Message, buf: &mut BytesMut) {
        if let Message::Response(Response {
            id,
            outcome: Ok(ret),
        }) = message
        {
            // Copy the raw return value through untouched.
            #[derive(Serialize)]
            struct Wire<'a> {
                #[serde(rename = "return")]
                ret: &'a RawValue,
                #[serde(skip_serializing_if = "Option::is_none")]
                id: &'a Option<Value>,
            }
            let _ = serde_json::to_writer((&mut *buf).writer(), &Wire { ret, id });
        } else {
            // A Value always serializes, and writing into a BytesMut cannot fail.
            let _ = serde_json::to_writer((&mut *buf).writer(), &message.to_value());
        }
        buf.put_slice(b"\r\n");
    }
}

/// Bytes before the next `"` or `\` in a string body.
fn memchr_string_end(rest: &[u8]) -> Option<usize> {
    let n = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .unwrap_or(rest.len());
    (n > 0).then_some(n)
}

/// Parses one framed JSON object into a [`Message`].
pub fn parse_frame(frame: &[u8]) -> Result<Message> {
    Message::from_slice(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode_all(codec: &mut Codec, buf: &mut BytesMut) -> Vec<Result<Message>> {
        let mut out = Vec::new();
        loop {
            match codec.decode(buf) {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => return out,
                Err(e) => out.push(Err(e)),
            }
        }
    }

    #[test]
    fn several_messages_in_one_read() {
        let mut c = Codec::new();
        let mut buf = BytesMut::from(
            &b"{\"return\": {}, \"id\": 1}\r\n{\"return\": \"a}\\\"{\", \"id\": 2}\r\n{\"ret"[..],
        );
        let got = decode_all(&mut c, &mut buf);
        assert_eq!(got.len(), 2);
        let Ok(Message::Response(r)) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(r.parse_return::<String>().unwrap(), Ok("a}\"{".to_owned()));
        assert_eq!(&buf[..], b"{\"ret");
    }

    #[test]
    fn byte_at_a_time() {
        let text = b"{\"event\": \"X\", \"data\": {\"a\": [1, {\"b\": \"]}\\\\\"}]}, \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n";
        let mut c = Codec::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in text.iter() {
            buf.put_u8(b);
            if let Some(m) = c.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 1);
        let Message::Event(e) = &got[0] else { panic!() };
        assert_eq!(e.data, json!({"a": [1, {"b": "]}\\"}]}));
    }

    #[test]
    fn pretty_printed_messages_frame_by_structure() {
        let mut c = Codec::new();
        let mut buf =
            BytesMut::from(&b"{\n  \"return\": {\n    \"x\": 1\n  },\n  \"id\": 4\n}\n"[..]);
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Message::Response(_))
        ));
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn stray_bytes_are_skipped_with_one_error() {
        let mut c = Codec::new();
        let mut buf = BytesMut::from(&b"garbage\r\n{\"return\": 1}"[..]);
        let err = c.decode(&mut buf).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnexpectedBytes {
                    first: b'g',
                    skipped: 9
                }
            ),
            "{err}"
        );
        assert!(matches!(
            c.decode(&mut buf).unwrap(),
            Some(Message::Response(_))
        ));
    }

    #[test]
    fn invalid_json_is_an_error_and_the_stream_goes_on() {
        let mut c = Codec::new();
        let mut buf = BytesMut::from(&b"{\"return\": tru}\r\n{\"x\": 1}{\"return\": 2}"[..]);
        assert!(matches!(c.decode(&mut buf), Err(Error::InvalidJson { .. })));
        assert!(matches!(
            c.decode(&mut buf),
            Err(Error::UnknownShape { .. })
        ));
        assert!(matches!(c.decode(&mut buf), Ok(Some(Message::Response(_)))));
    }

    #[test]
    fn oversized_message_in_one_chunk() {
        let mut c = Codec::with_max_message_size(16);
        let mut buf = BytesMut::from(&b"{\"return\": \"0123456789abcdef\"}{\"return\": 1}"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(Error::MessageTooLarge { limit: 16 })
        ));
        assert!(matches!(c.decode(&mut buf), Ok(Some(Message::Response(_)))));
    }

    #[test]
    fn oversized_message_across_chunks_is_discarded_without_buffering() {
        let mut c = Codec::with_max_message_size(64);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"{\"return\": \"");
        let mut errors = 0;
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 50]);
            match c.decode(&mut buf) {
                Err(Error::MessageTooLarge { .. }) => errors += 1,
                Ok(None) => {}
                other => panic!("{other:?}"),
            }
            assert!(buf.len() <= 64 + 50);
        }
        assert_eq!(errors, 1);
        buf.extend_from_slice(b"\\\"}\"}\r\n{\"return\": {}, \"id\": 7}\r\n");
        let Some(Message::Response(r)) = c.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(r.id, Some(json!(7)));
    }

    #[test]
    fn encodes_commands_with_and_without_arguments() {
        let mut c = Codec::new();
        let mut buf = BytesMut::new();
        c.encode_command("stop", &(), Some(5), &mut buf).unwrap();
        c.encode_command(
            "set_link",
            &json!({"name": "n", "up": false}),
            None,
            &mut buf,
        )
        .unwrap();
        c.encode_command("cont", &json!({}), Some(6), &mut buf)
            .unwrap();
        let text = std::str::from_utf8(&buf).unwrap();
        let lines: Vec<Value> = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], json!({"execute": "stop", "id": 5}));
        assert_eq!(
            lines[1],
            json!({"execute": "set_link", "arguments": {"name": "n", "up": false}})
        );
        assert_eq!(lines[2], json!({"execute": "cont", "id": 6}));
        let err = c
            .encode_command("x", &json!([1]), None, &mut buf)
            .unwrap_err();
        assert!(matches!(err, Error::EncodeArguments { .. }));
    }
}
