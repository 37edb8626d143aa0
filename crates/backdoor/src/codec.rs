//! Guest to host: the streaming decoder of what the backdoor shell prints.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use nom::bytes::streaming::tag;
use nom::character::streaming::digit1;
use nom::IResult;

use crate::command::NumBuf;
use crate::error::{Error, Result, Snippet};

/// The line a guest prints on `/dev/hvc0` when its backdoor shell starts.
pub const MAGIC: &[u8] = b"Spawning backdoor root shell...";

/// Start of every reply: `#vmrig` then the nonce in decimal then `:`.
const HEADER_TAG: &[u8] = b"#vmrig";
/// `#vmrig` + 20 digits + `:`.
const HEADER_MAX: usize = HEADER_TAG.len() + 20 + 1;
/// `:` + 3 digits + `:` + 20 digits + `#\n`.
const TRAILER_MAX: usize = 1 + 3 + 1 + 20 + 2;
/// Stray output is reported in pieces of at most this many bytes.
const STRAY_MAX: usize = 256;

/// Limits and modes of a [`Decoder`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest decoded output of one reply; a larger one yields
    /// [`Error::OutputTooLarge`] and is skipped. Default 1 GiB.
    pub max_output: usize,
    /// How much console noise before the magic line [`Event::Ready`] keeps
    /// (the last bytes; the rest is only counted). Default 64 KiB.
    pub max_noise: usize,
    /// When true, output is handed out as it is decoded in
    /// [`Event::Output`] chunks and [`Reply::output`] is empty; when false
    /// (default) the whole output comes in the [`Reply`]. Chunks of a
    /// reply that then turns out malformed have been handed out already: an
    /// error with that reply's nonce means they are void.
    pub stream_output: bool,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_output: 1 << 30,
            max_noise: 64 << 10,
            stream_output: false,
        }
    }
}

/// A command's complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The nonce the command was encoded with.
    pub nonce: u64,
    /// The exit status of `bash -c` (or of `timeout`: 124 when it fired).
    pub status: u8,
    /// The command's stdout, byte for byte (empty when streaming).
    pub output: Bytes,
}

/// What the decoder found in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The magic line was seen: the shell is ready for commands.
    Ready {
        /// The last [`DecoderConfig::max_noise`] bytes that came before it.
        noise: Bytes,
        /// How many bytes came before it in all.
        noise_len: u64,
    },
    /// A piece of a command's output (only with
    /// [`DecoderConfig::stream_output`]).
    Output {
        /// The command's nonce.
        nonce: u64,
        /// The next decoded bytes.
        chunk: Bytes,
    },
    /// A command finished.
    Reply(Reply),
}

#[derive(Debug)]
enum State {
    /// Before the magic line.
    Magic { noise: BytesMut, noise_len: u64 },
    /// Between replies.
    Idle,
    /// Inside a reply's base64 block.
    Body {
        nonce: u64,
        out: BytesMut,
        len: usize,
        padded: bool,
    },
    /// After a reply's base64 block.
    Trailer { nonce: u64, out: BytesMut },
    /// Dropping the rest of a broken reply, up to its `#\n` or the next
    /// reply's header.
    Skip,
}

/// Streaming, sans-IO decoder of the backdoor shell's output.
///
/// Shaped like a `tokio_util::codec::Decoder`: [`Decoder::decode`] consumes
/// what it used from the buffer, leaves partial input there, and returns one
/// [`Event`] at a time. Any split of the stream into chunks yields the same
/// events. Memory is bounded: before the magic line it keeps at most
/// [`DecoderConfig::max_noise`] bytes of noise plus less than a magic line;
/// inside a reply it leaves at most 3 undecoded bytes (or a partial
/// trailer) in the buffer and decodes the base64 text straight into the
/// output, never holding a second copy of it.
///
/// Errors are never fatal: the decoder has consumed the offending bytes and
/// the next call resumes with the next reply.
#[derive(Debug)]
pub struct Decoder {
    state: State,
    config: DecoderConfig,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder waiting for the magic line, with default limits.
    pub fn new() -> Self {
        Decoder::with_config(DecoderConfig::default())
    }

    /// A decoder waiting for the magic line.
    pub fn with_config(config: DecoderConfig) -> Self {
        Decoder {
            state: State::Magic {
                noise: BytesMut::new(),
                noise_len: 0,
            },
            config,
        }
    }

    /// A decoder for a shell that is already ready (e.g. a guest restored
    /// from a snapshot, which prints no magic line again).
    pub fn ready(config: DecoderConfig) -> Self {
        Decoder {
            state: State::Idle,
            config,
        }
    }

    /// Whether the magic line has been seen.
    pub fn is_ready(&self) -> bool {
        !matches!(self.state, State::Magic { .. })
    }

    /// The nonce of the reply being decoded, if one has started.
    pub fn current_reply(&self) -> Option<u64> {
        match self.state {
            State::Body { nonce, .. } | State::Trailer { nonce, .. } => Some(nonce),
            _ => None,
        }
    }

    /// Decodes the next event from `buf`, consuming what it used.
    ///
    /// `Ok(None)` means more input is needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>> {
        loop {
            match &mut self.state {
                State::Magic { noise, noise_len } => {
                    let ready = decode_magic(noise, noise_len, self.config.max_noise, buf);
                    if ready.is_some() {
                        self.state = State::Idle;
                    }
                    return Ok(ready);
                }
                State::Idle => {
                    if !self.decode_idle(buf)? {
                        return Ok(None);
                    }
                }
                State::Body { .. } => match self.decode_body(buf)? {
                    BodyStep::Wait => return Ok(None),
                    BodyStep::Chunk(ev) => return Ok(Some(ev)),
                    BodyStep::Done => {}
                },
                State::Trailer { .. } => {
                    if let Some(ev) = self.decode_trailer(buf)? {
                        return Ok(Some(ev));
                    }
                    if matches!(self.state, State::Trailer { .. }) {
                        return Ok(None);
                    }
                }
                State::Skip => {
                    if !skip_broken(buf) {
                        return Ok(None);
                    }
                    self.state = State::Idle;
                }
            }
        }
    }

    /// Between replies: skips newlines, reports stray bytes, enters a reply
    /// on a header. Returns whether the state changed.
    fn decode_idle(&mut self, buf: &mut BytesMut) -> Result<bool> {
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
        buf.advance(blank);
        if buf.is_empty() {
            return Ok(false);
        }
        if buf[0] == b'#' {
            match header(buf) {
                Ok((rest, nonce)) => {
                    let used = buf.len() - rest.len();
                    buf.advance(used);
                    self.state = State::Body {
                        nonce,
                        out: BytesMut::new(),
                        len: 0,
                        padded: false,
                    };
                    return Ok(true);
                }
                Err(nom::Err::Incomplete(_)) if buf.len() < HEADER_MAX => return Ok(false),
                Err(_) => {}
            }
        }
        // Stray bytes: report them up to the end of their line, or up to
        // what may be the next reply's header.
        let end = stray_end(buf);
        match end {
            Some(end) => {
                let stray = buf.split_to(end);
                Err(Error::StrayOutput {
                    bytes: Snippet::new(&stray),
                })
            }
            None => Ok(false),
        }
    }

    fn decode_body(&mut self, buf: &mut BytesMut) -> Result<BodyStep> {
        let State::Body {
            nonce,
            out,
            len,
            padded,
        } = &mut self.state
        else {
            return Ok(BodyStep::Done);
        };
        let nonce = *nonce;
        let colon = memchr::memchr(b':', buf);
        let end = colon.unwrap_or(buf.len() / 4 * 4);
        let data = &buf[..end];
        let broken = |reason, bytes: &[u8]| Error::MalformedReply {
            nonce,
            reason,
            bytes: Snippet::new(bytes),
        };
        let mut err = None;
        if colon.is_some() && end % 4 != 0 {
            err = Some(broken("base64 block length is not a multiple of 4", data));
        } else if !data.is_empty() {
            if *padded {
                err = Some(broken("data after base64 padding", data));
            } else {
                let start = out.len();
                out.resize(start + end / 4 * 3, 0);
                match STANDARD.decode_slice(data, &mut out[start..]) {
                    Ok(n) => {
                        out.truncate(start + n);
                        *len += n;
                        *padded = data[end - 1] == b'=';
                        if *len > self.config.max_output {
                            err = Some(Error::OutputTooLarge {
                                nonce,
                                limit: self.config.max_output,
                            });
                        }
                    }
                    Err(e) => {
                        let at = base64_error_offset(&e).unwrap_or(0).min(data.len());
                        err = Some(broken("invalid base64 data", &data[at..]));
                    }
                }
            }
        }
        if let Some(err) = err {
            // Leave the bytes after the valid prefix to the skipper, which
            // stops at this reply's end or the next reply's header.
            self.state = State::Skip;
            return Err(err);
        }
        buf.advance(end);
        let chunk = if self.config.stream_output && !out.is_empty() {
            Some(Event::Output {
                nonce,
                chunk: out.split().freeze(),
            })
        } else {
            None
        };
        if colon.is_some() {
            let out = std::mem::take(out);
            self.state = State::Trailer { nonce, out };
        }
        Ok(match (chunk, colon) {
            (Some(ev), _) => BodyStep::Chunk(ev),
            (None, Some(_)) => BodyStep::Done,
            (None, None) => BodyStep::Wait,
        })
    }

    fn decode_trailer(&mut self, buf: &mut BytesMut) -> Result<Option<Event>> {
        let State::Trailer { nonce, .. } = self.state else {
            return Ok(None);
        };
        match trailer(buf) {
            Ok((rest, (status, closed))) => {
                let used = buf.len() - rest.len();
                buf.advance(used);
                let State::Trailer { out, .. } = std::mem::replace(&mut self.state, State::Idle)
                else {
                    return Ok(None);
                };
                if closed != nonce {
                    return Err(Error::NonceMismatch {
                        opened: nonce,
                        closed,
                    });
                }
                Ok(Some(Event::Reply(Reply {
                    nonce,
                    status,
                    output: out.freeze(),
                })))
            }
            Err(nom::Err::Incomplete(_)) if buf.len() < TRAILER_MAX => Ok(None),
            Err(_) => {
                self.state = State::Skip;
                Err(Error::MalformedReply {
                    nonce,
                    reason: "bad reply trailer, expected :STATUS:NONCE#",
                    bytes: Snippet::new(&buf[..buf.len().min(TRAILER_MAX)]),
                })
            }
        }
    }
}

enum BodyStep {
    Wait,
    Chunk(Event),
    Done,
}

fn decode_magic(
    noise: &mut BytesMut,
    noise_len: &mut u64,
    max_noise: usize,
    buf: &mut BytesMut,
) -> Option<Event> {
    let mut push = |bytes: &[u8], noise: &mut BytesMut| {
        *noise_len += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(max_noise)..];
        noise.extend_from_slice(bytes);
        // Trim in batches so that keeping the tail costs O(1) amortized.
        if noise.len() > max_noise.saturating_mul(2).max(4096) {
            noise.advance(noise.len() - max_noise);
        }
    };
    if let Some(p) = memchr::memmem::find(buf, MAGIC) {
        push(&buf[..p], noise);
        buf.advance(p + MAGIC.len());
        let mut noise = std::mem::take(noise);
        if noise.len() > max_noise {
            noise.advance(noise.len() - max_noise);
        }
        return Some(Event::Ready {
            noise: noise.freeze(),
            noise_len: *noise_len,
        });
    }
    // Keep only what may be the start of the magic line.
    let keep = (1..MAGIC.len().min(buf.len() + 1))
        .rev()
        .find(|&k| buf.ends_with(&MAGIC[..k]))
        .unwrap_or(0);
    let drop = buf.len() - keep;
    push(&buf[..drop], noise);
    buf.advance(drop);
    None
}

/// Where a piece of stray output ends: after its newline, before a `#`
/// that may start a reply, or after [`STRAY_MAX`] bytes. `None` when more
/// input is needed to decide.
fn stray_end(buf: &[u8]) -> Option<usize> {
    let window = &buf[..buf.len().min(STRAY_MAX)];
    // buf[0] is not a newline, and is either not '#' or a '#' that does not
    // start a header: the search for the next '#' starts after it.
    match memchr::memchr2(b'\n', b'#', &window[1..]) {
        Some(i) if window[1 + i] == b'\n' => Some(i + 2),
        Some(i) => Some(i + 1),
        None if buf.len() >= STRAY_MAX => Some(STRAY_MAX),
        None => None,
    }
}

/// Drops the rest of a broken reply: through its `#\n`, or up to the next
/// `#vmrig` header. Returns whether it found the end.
fn skip_broken(buf: &mut BytesMut) -> bool {
    let mut from = 0;
    while let Some(i) = memchr::memchr(b'#', &buf[from..]).map(|i| from + i) {
        let after = &buf[i + 1..];
        if after.first() == Some(&b'\n') {
            buf.advance(i + 2);
            return true;
        }
        let tag = &HEADER_TAG[1..];
        let n = after.len().min(tag.len());
        if after[..n] == tag[..n] {
            buf.advance(i);
            // A full tag ends the skip; a partial one needs more input.
            return n == tag.len();
        }
        if after.is_empty() {
            buf.advance(i);
            return false;
        }
        from = i + 1;
    }
    buf.clear();
    false
}

fn base64_error_offset(e: &base64::DecodeSliceError) -> Option<usize> {
    use base64::{DecodeError, DecodeSliceError};
    match e {
        DecodeSliceError::DecodeError(
            DecodeError::InvalidByte(at, _) | DecodeError::InvalidLastSymbol(at, _),
        ) => Some(*at),
        _ => None,
    }
}

fn number(digits: &[u8], max_len: usize) -> Option<u64> {
    if digits.len() > max_len {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn fail(i: &[u8]) -> nom::Err<nom::error::Error<&[u8]>> {
    nom::Err::Failure(nom::error::Error::new(i, nom::error::ErrorKind::Digit))
}

/// `#vmrig` NONCE `:`
fn header(i: &[u8]) -> IResult<&[u8], u64> {
    let (i, _) = tag(HEADER_TAG)(i)?;
    let (rest, digits) = digit1(i)?;
    let nonce = number(digits, 20).ok_or_else(|| fail(i))?;
    let (rest, _) = tag(b":")(rest)?;
    Ok((rest, nonce))
}

/// `:` STATUS `:` NONCE `#\n`
fn trailer(i: &[u8]) -> IResult<&[u8], (u8, u64)> {
    let (i, _) = tag(b":")(i)?;
    let (i, digits) = digit1(i)?;
    let status = number(digits, 3)
        .and_then(|s| u8::try_from(s).ok())
        .ok_or_else(|| fail(i))?;
    let (i, _) = tag(b":")(i)?;
    let (i, digits) = digit1(i)?;
    let nonce = number(digits, 20).ok_or_else(|| fail(i))?;
    let (i, _) = tag(b"#\n")(i)?;
    Ok((i, (status, nonce)))
}

/// Appends the bytes a guest prints for a reply, exactly as the command line
/// from [`Command::encode`](crate::Command::encode) makes bash print them.
///
/// For tests, simulators, fuzzing and benchmarks.
pub fn write_reply(nonce: u64, status: u8, output: &[u8], dst: &mut BytesMut) {
    let mut num = NumBuf::default();
    let nonce = num.format(nonce);
    let b64_len = output.len().div_ceil(3) * 4;
    dst.reserve(b64_len + 2 * nonce.len() + 16);
    dst.put_slice(HEADER_TAG);
    dst.put_slice(nonce);
    dst.put_u8(b':');
    let start = dst.len();
    dst.resize(start + b64_len, 0);
    let n = STANDARD
        .encode_slice(output, &mut dst[start..])
        .unwrap_or(0);
    dst.truncate(start + n);
    dst.put_u8(b':');
    let mut num2 = NumBuf::default();
    dst.put_slice(num2.format(u64::from(status)));
    dst.put_u8(b':');
    dst.put_slice(nonce);
    dst.put_slice(b"#\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(dec: &mut Decoder, input: &[u8]) -> Vec<Result<Event, String>> {
        let mut buf = BytesMut::from(input);
        let mut evs = vec![];
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(ev)) => evs.push(Ok(ev)),
                Ok(None) => break,
                Err(e) => evs.push(Err(e.to_string())),
            }
        }
        evs
    }

    fn reply(nonce: u64, status: u8, out: &[u8]) -> Event {
        Event::Reply(Reply {
            nonce,
            status,
            output: Bytes::copy_from_slice(out),
        })
    }

    #[test]
    fn finds_magic_amid_noise_and_decodes() {
        let mut dec = Decoder::new();
        let mut input = b"[  1.0] booting\r\nSpawning backdoor root shell...\n".to_vec();
        write_reply(1, 0, b"hello\n", &mut BytesMut::new());
        let mut b = BytesMut::new();
        write_reply(1, 3, b"hello\n", &mut b);
        write_reply(2, 0, b"", &mut b);
        input.extend_from_slice(&b);
        let evs = all(&mut dec, &input);
        assert_eq!(
            evs,
            vec![
                Ok(Event::Ready {
                    noise: Bytes::from_static(b"[  1.0] booting\r\n"),
                    noise_len: 17
                }),
                Ok(reply(1, 3, b"hello\n")),
                Ok(reply(2, 0, b"")),
            ]
        );
    }

    #[test]
    fn wire_bytes_of_a_reply() {
        let mut b = BytesMut::new();
        write_reply(42, 1, b"hi\n", &mut b);
        assert_eq!(&b[..], b"#vmrig42:aGkK:1:42#\n");
    }

    #[test]
    fn noise_is_bounded() {
        let mut dec = Decoder::with_config(DecoderConfig {
            max_noise: 10,
            ..DecoderConfig::default()
        });
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            buf.extend_from_slice(b"noise noise Spawning backdoor ");
            assert_eq!(dec.decode(&mut buf).unwrap(), None);
            assert!(buf.len() < MAGIC.len());
        }
        buf.extend_from_slice(b"root shell...\n");
        let ev = dec.decode(&mut buf).unwrap().unwrap();
        let Event::Ready { noise, noise_len } = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(noise_len, 30 * 1000 - 18);
        assert_eq!(&noise[..], b"ise noise ");
    }

    #[test]
    fn stray_output_is_reported_not_attributed() {
        let mut dec = Decoder::ready(DecoderConfig::default());
        let mut input = b"stray line\n#not a header\n".to_vec();
        let mut b = BytesMut::new();
        write_reply(5, 0, b"ok", &mut b);
        input.extend_from_slice(&b);
        let evs = all(&mut dec, &input);
        assert_eq!(evs.len(), 3, "{evs:?}");
        assert!(evs[0].as_ref().unwrap_err().contains("\"stray line\\n\""));
        assert!(evs[1]
            .as_ref()
            .unwrap_err()
            .contains("\"#not a header\\n\""));
        assert_eq!(evs[2], Ok(reply(5, 0, b"ok")));
    }

    #[test]
    fn stray_inside_a_reply_breaks_only_that_reply() {
        let mut dec = Decoder::ready(DecoderConfig::default());
        let mut input = b"#vmrig7:aGVs".to_vec();
        input.extend_from_slice(b"stray\n");
        input.extend_from_slice(b"bG8K:0:7#\n");
        let mut b = BytesMut::new();
        write_reply(8, 0, b"next", &mut b);
        input.extend_from_slice(&b);
        let evs = all(&mut dec, &input);
        assert_eq!(evs.len(), 2, "{evs:?}");
        let e = evs[0].as_ref().unwrap_err();
        assert!(e.contains("malformed reply to command #7"), "{e}");
        assert_eq!(evs[1], Ok(reply(8, 0, b"next")));
    }

    #[test]
    fn truncated_reply_then_new_reply() {
        // The guest died mid-reply and a new shell answered the next command.
        let mut dec = Decoder::ready(DecoderConfig::default());
        let mut input = b"#vmrig7:aGVs".to_vec();
        let mut b = BytesMut::new();
        write_reply(8, 0, b"next", &mut b);
        input.extend_from_slice(&b);
        let evs = all(&mut dec, &input);
        assert!(evs[0].as_ref().is_err(), "{evs:?}");
        assert_eq!(evs.last().unwrap(), &Ok(reply(8, 0, b"next")));
    }

    #[test]
    fn nonce_mismatch() {
        let mut dec = Decoder::ready(DecoderConfig::default());
        let evs = all(&mut dec, b"#vmrig7:aGk=:0:8#\n");
        assert_eq!(evs.len(), 1);
        assert!(evs[0]
            .as_ref()
            .unwrap_err()
            .contains("#7 was closed as command #8"));
    }

    #[test]
    fn bad_trailers_and_headers() {
        for input in [
            &b"#vmrig7:aGk=:256:7#\n"[..],
            b"#vmrig7:aGk=:1:7#x",
            b"#vmrig7:aGk=:1:123456789012345678901#\n",
            b"#vmrig7:aGk=:x",
            b"#vmrig7:aGk:0:7#\n",
            b"#vmrig7:aGk=aGk=:0:7#\n",
            b"#vmrig7:aGl=:0:7#\n",
        ] {
            let mut dec = Decoder::ready(DecoderConfig::default());
            let evs = all(&mut dec, input);
            assert!(
                evs.iter().any(|e| e.is_err()) && evs.iter().all(|e| e.is_err()),
                "{:?}: {evs:?}",
                input.escape_ascii().to_string()
            );
        }
        let mut dec = Decoder::ready(DecoderConfig::default());
        let evs = all(&mut dec, b"#vmrig123456789012345678901:\n");
        assert!(evs.iter().all(|e| e.is_err()), "{evs:?}");
    }

    #[test]
    fn output_limit() {
        let mut dec = Decoder::ready(DecoderConfig {
            max_output: 10,
            ..DecoderConfig::default()
        });
        let mut b = BytesMut::new();
        write_reply(1, 0, &[7; 100], &mut b);
        write_reply(2, 0, &[7; 10], &mut b);
        let evs = all(&mut dec, &b);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert!(evs[0].as_ref().unwrap_err().contains("exceeds the limit"));
        assert_eq!(evs[1], Ok(reply(2, 0, &[7; 10])));
    }

    #[test]
    fn streaming_output_chunks() {
        let mut dec = Decoder::ready(DecoderConfig {
            stream_output: true,
            ..DecoderConfig::default()
        });
        let mut b = BytesMut::new();
        write_reply(1, 2, b"abcdefgh", &mut b);
        let mut got = vec![];
        let mut buf = BytesMut::new();
        for byte in b {
            buf.put_u8(byte);
            while let Some(ev) = dec.decode(&mut buf).unwrap() {
                got.push(ev);
            }
            assert!(buf.len() < TRAILER_MAX);
        }
        let mut out = vec![];
        for ev in &got[..got.len() - 1] {
            let Event::Output { nonce: 1, chunk } = ev else {
                panic!("{ev:?}")
            };
            out.extend_from_slice(chunk);
        }
        assert_eq!(out, b"abcdefgh");
        assert_eq!(got.last().unwrap(), &reply(1, 2, b""));
    }
}
