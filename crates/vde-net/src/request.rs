//! libvdeplug's connection request and the switch's reply (sans-IO).
//!
//! Byte layout, from libvdeplug (vdeplug4 `libvdeplug_vde.c`, vde2 `libvdeplug.c`),
//! `struct request_v3` packed, host byte order:
//!
//! | offset | size | field                                                  |
//! |--------|------|--------------------------------------------------------|
//! | 0      | 4    | `magic` = `0xfeedface`                                  |
//! | 4      | 4    | `version` = 3                                           |
//! | 8      | 4    | `type`: `REQ_NEW_CONTROL` (0) + `port << 8`, or `REQ_NEW_PORT0` (1) |
//! | 12     | 110  | `struct sockaddr_un` of the client's datagram socket   |
//! | 122    | 0-128| description, not NUL-terminated (sent as `strlen` bytes) |
//!
//! The client writes the whole request with one `send` and waits for the reply, a bare
//! `struct sockaddr_un` (110 bytes) naming the switch's data socket for the new port.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{Error, Result};

/// libvdeplug's `SWITCH_MAGIC`.
pub const MAGIC: u32 = 0xfeed_face;
/// The only protocol version libvdeplug speaks today.
pub const VERSION: u32 = 3;
/// Size of `struct sockaddr_un` on Linux: `sa_family_t` plus 108 path bytes.
pub const SOCKADDR_UN_LEN: usize = 110;
/// Size of the fixed part of the request (everything before the description).
pub const HEADER_LEN: usize = 12 + SOCKADDR_UN_LEN;
/// libvdeplug's `MAXDESCR`.
pub const MAX_DESCRIPTION: usize = 128;
/// Largest request a client may send.
pub const MAX_REQUEST_LEN: usize = HEADER_LEN + MAX_DESCRIPTION;
const AF_UNIX: u16 = 1;
const PATH_LEN: usize = SOCKADDR_UN_LEN - 2;

/// Which port the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortWish {
    /// Any free port (`REQ_NEW_CONTROL`).
    Any,
    /// A given port number (`REQ_NEW_CONTROL + (port << 8)`).
    Number(u32),
    /// `REQ_NEW_PORT0`: libvdeplug's "port 0" request; treated as any free port.
    Port0,
}

/// A decoded connection request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The requested port.
    pub port: PortWish,
    /// Path of the client's bound datagram socket (raw bytes, no NUL).
    pub sock_path: Vec<u8>,
    /// The client's free-form description (QEMU and vde_plug send one).
    pub description: String,
}

impl Request {
    /// Encodes the request exactly as libvdeplug sends it (for tests, benches and
    /// clients written in Rust).
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(MAX_REQUEST_LEN);
        dst.put_u32_ne(MAGIC);
        dst.put_u32_ne(VERSION);
        dst.put_u32_ne(match self.port {
            PortWish::Any => 0,
            PortWish::Number(n) => n << 8,
            PortWish::Port0 => 1,
        });
        put_sockaddr_un(dst, &self.sock_path);
        let descr = self.description.as_bytes();
        dst.put_slice(&descr[..descr.len().min(MAX_DESCRIPTION)]);
    }
}

fn put_sockaddr_un(dst: &mut BytesMut, path: &[u8]) {
    dst.put_u16_ne(AF_UNIX);
    let n = path.len().min(PATH_LEN - 1);
    dst.put_slice(&path[..n]);
    dst.put_bytes(0, PATH_LEN - n);
}

/// Encodes the switch's reply: the `struct sockaddr_un` of the port's data socket.
pub fn encode_reply(data_sock_path: &[u8], dst: &mut BytesMut) -> Result<()> {
    if data_sock_path.is_empty() || data_sock_path.len() >= PATH_LEN {
        return Err(Error::BadPath(format!(
            "data socket path of {} bytes does not fit a sockaddr_un",
            data_sock_path.len()
        )));
    }
    put_sockaddr_un(dst, data_sock_path);
    Ok(())
}

/// Decodes a reply (the client side of the handshake, used by tests and benches).
pub fn decode_reply(src: &mut BytesMut) -> Result<Option<Vec<u8>>> {
    if src.len() < SOCKADDR_UN_LEN {
        return Ok(None);
    }
    let raw = src.split_to(SOCKADDR_UN_LEN);
    parse_sockaddr_un(&raw).map(Some)
}

fn parse_sockaddr_un(raw: &[u8]) -> Result<Vec<u8>> {
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    if family != AF_UNIX {
        return Err(Error::BadFamily(family));
    }
    let path = &raw[2..SOCKADDR_UN_LEN];
    let Some(end) = path.iter().position(|&b| b == 0) else {
        return Err(Error::BadPath("socket path is not NUL-terminated".into()));
    };
    if end == 0 {
        return Err(Error::BadPath("socket path is empty".into()));
    }
    Ok(path[..end].to_vec())
}

/// Decoder for the connection request, in tokio-util codec shape.
///
/// The request has no length field: its fixed part is [`HEADER_LEN`] bytes and the
/// description is whatever follows in the same write (at most [`MAX_DESCRIPTION`]).
/// [`RequestDecoder::decode`] therefore returns the request as soon as the fixed part
/// is buffered, taking the description from the bytes already buffered; callers read
/// the client's single write before decoding (the tokio adapter does).
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestDecoder;

impl RequestDecoder {
    /// Decodes one request, consuming it (header plus up to 128 description bytes).
    ///
    /// Returns `Ok(None)` while fewer than [`HEADER_LEN`] bytes are buffered. Fields
    /// are checked before the whole header has arrived where possible, so a hostile
    /// peer is rejected on its first bytes.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Request>> {
        if src.len() >= 4 {
            let magic = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
            if magic != MAGIC {
                return Err(Error::BadMagic(magic));
            }
        }
        if src.len() >= 8 {
            let version = u32::from_ne_bytes([src[4], src[5], src[6], src[7]]);
            if version != VERSION {
                return Err(Error::BadVersion(version));
            }
        }
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = u32::from_ne_bytes([src[8], src[9], src[10], src[11]]);
        let port = match (kind & 0xff, kind >> 8) {
            (0, 0) => PortWish::Any,
            (0, n) => PortWish::Number(n),
            (1, 0) => PortWish::Port0,
            _ => return Err(Error::BadType(kind)),
        };
        let sock_path = parse_sockaddr_un(&src[12..HEADER_LEN])?;
        let descr_len = (src.len() - HEADER_LEN).min(MAX_DESCRIPTION);
        let descr = &src[HEADER_LEN..HEADER_LEN + descr_len];
        let descr = match descr.iter().position(|&b| b == 0) {
            Some(end) => &descr[..end],
            None => descr,
        };
        let description = String::from_utf8_lossy(descr).into_owned();
        src.advance(HEADER_LEN + descr_len);
        Ok(Some(Request {
            port,
            sock_path,
            description,
        }))
    }

    /// Like [`decode`](Self::decode), at end of stream: a partial request is an error.
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Request>> {
        match self.decode(src)? {
            Some(req) => Ok(Some(req)),
            None if src.is_empty() => Ok(None),
            None => Err(Error::Truncated {
                got: src.len(),
                need: HEADER_LEN,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Request {
        Request {
            port: PortWish::Any,
            sock_path: b"/tmp/sw/.01234-00000".to_vec(),
            description: "qemu-system-x86_64: vlan1".into(),
        }
    }

    #[test]
    fn layout_matches_libvdeplug() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN + "qemu-system-x86_64: vlan1".len());
        assert_eq!(&buf[0..4], &0xfeed_faceu32.to_ne_bytes());
        assert_eq!(&buf[4..8], &3u32.to_ne_bytes());
        assert_eq!(&buf[12..14], &1u16.to_ne_bytes());
        assert_eq!(&buf[14..34], b"/tmp/sw/.01234-00000");
        assert_eq!(buf[34], 0);
    }

    #[test]
    fn rejects_bad_magic_early() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            RequestDecoder.decode(&mut buf),
            Err(Error::BadMagic(_))
        ));
    }

    #[test]
    fn rejects_bad_version_type_family_and_path() {
        let mut good = BytesMut::new();
        sample().encode(&mut good);
        let mut v = good.clone();
        v[4] = 2;
        assert!(matches!(
            RequestDecoder.decode(&mut v),
            Err(Error::BadVersion(2))
        ));
        let mut t = good.clone();
        t[8] = 7;
        assert!(matches!(
            RequestDecoder.decode(&mut t),
            Err(Error::BadType(7))
        ));
        let mut f = good.clone();
        f[12] = 2;
        assert!(matches!(
            RequestDecoder.decode(&mut f),
            Err(Error::BadFamily(2))
        ));
        let mut p = good.clone();
        p[14..HEADER_LEN].fill(b'a');
        assert!(matches!(
            RequestDecoder.decode(&mut p),
            Err(Error::BadPath(_))
        ));
        let mut e = good;
        e[14..HEADER_LEN].fill(0);
        assert!(matches!(
            RequestDecoder.decode(&mut e),
            Err(Error::BadPath(_))
        ));
    }

    #[test]
    fn truncated_at_eof_is_an_error() {
        let mut buf = BytesMut::new();
        sample().encode(&mut buf);
        buf.truncate(50);
        assert_eq!(RequestDecoder.decode(&mut buf).unwrap(), None);
        assert!(matches!(
            RequestDecoder.decode_eof(&mut buf),
            Err(Error::Truncated { got: 50, .. })
        ));
    }

    #[test]
    fn port_wishes() {
        for port in [PortWish::Any, PortWish::Number(5), PortWish::Port0] {
            let req = Request { port, ..sample() };
            let mut buf = BytesMut::new();
            req.encode(&mut buf);
            assert_eq!(RequestDecoder.decode(&mut buf).unwrap().unwrap(), req);
        }
    }

    #[test]
    fn reply_round_trip() {
        let mut buf = BytesMut::new();
        encode_reply(b"/tmp/sw/port-3", &mut buf).unwrap();
        assert_eq!(buf.len(), SOCKADDR_UN_LEN);
        assert_eq!(decode_reply(&mut buf).unwrap().unwrap(), b"/tmp/sw/port-3");
        assert!(encode_reply(&[b'x'; 200], &mut buf).is_err());
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        (
            prop_oneof![
                Just(PortWish::Any),
                Just(PortWish::Port0),
                (1u32..0xff_ffff).prop_map(PortWish::Number)
            ],
            proptest::collection::vec(1u8..=255, 1..107),
            "[a-zA-Z0-9 :._-]{0,128}",
        )
            .prop_map(|(port, sock_path, description)| Request {
                port,
                sock_path,
                description,
            })
    }

    proptest! {
        #[test]
        fn round_trip(req in arb_request()) {
            let mut buf = BytesMut::new();
            req.encode(&mut buf);
            let got = RequestDecoder.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!(got, req);
            prop_assert!(buf.is_empty());
        }

        /// The header may arrive in any chunks; the description arrives with the
        /// last chunk (libvdeplug sends the request with one `send`).
        #[test]
        fn header_chunking(req in arb_request(), cuts in proptest::collection::vec(0usize..HEADER_LEN, 0..6)) {
            let mut whole = BytesMut::new();
            req.encode(&mut whole);
            let mut cuts = cuts;
            cuts.sort_unstable();
            cuts.dedup();
            let mut buf = BytesMut::new();
            let mut at = 0;
            for cut in cuts {
                buf.extend_from_slice(&whole[at..cut]);
                at = cut;
                prop_assert_eq!(RequestDecoder.decode(&mut buf).unwrap(), None);
            }
            buf.extend_from_slice(&whole[at..]);
            prop_assert_eq!(RequestDecoder.decode(&mut buf).unwrap().unwrap(), req);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = RequestDecoder.decode_eof(&mut buf);
        }
    }
}
