//! Classic pcap encoding (the libpcap "tcpdump" file format, LINKTYPE_ETHERNET).
//!
//! Layout (libpcap `pcap-savefile(5)`): a 24-byte global header — magic `0xa1b2c3d4`,
//! version 2.4, thiszone 0, sigfigs 0, snaplen, link type 1 — then per frame a 16-byte
//! record header (seconds, microseconds, captured length, original length) and the
//! bytes. Everything little-endian here (the magic tells readers the byte order).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};

/// The pcap magic number for microsecond timestamps.
pub const MAGIC: u32 = 0xa1b2_c3d4;
/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Snapshot length written in the header; longer frames are truncated.
pub const SNAPLEN: u32 = 65535;

/// Appends the pcap global header.
pub fn encode_header(dst: &mut BytesMut) {
    dst.put_u32_le(MAGIC);
    dst.put_u16_le(2);
    dst.put_u16_le(4);
    dst.put_i32_le(0);
    dst.put_u32_le(0);
    dst.put_u32_le(SNAPLEN);
    dst.put_u32_le(LINKTYPE_ETHERNET);
}

/// Appends one record for `frame` captured at `time`.
pub fn encode_record(time: SystemTime, frame: &[u8], dst: &mut BytesMut) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let caplen = frame.len().min(SNAPLEN as usize);
    dst.put_u32_le(since.as_secs() as u32);
    dst.put_u32_le(since.subsec_micros());
    dst.put_u32_le(caplen as u32);
    dst.put_u32_le(frame.len() as u32);
    dst.put_slice(&frame[..caplen]);
}

/// One captured frame, as read back from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Capture time since the Unix epoch.
    pub time: Duration,
    /// Length of the frame on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    pub data: Vec<u8>,
}

/// Errors reading a pcap file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PcapError {
    /// The file does not start with a little-endian microsecond pcap header.
    #[error("not a little-endian pcap file (magic 0x{0:08x})")]
    BadMagic(u32),
    /// The header names a link type other than Ethernet.
    #[error("pcap link type {0} is not ethernet (1)")]
    BadLinkType(u32),
    /// A record claims more bytes than the snapshot length.
    #[error("pcap record of {0} bytes exceeds the snapshot length")]
    Oversized(u32),
    /// The file ends in the middle of a header or record.
    #[error("pcap file truncated")]
    Truncated,
}

/// Parses a whole pcap file (used by tests to check captures).
pub fn parse(bytes: &[u8]) -> Result<Vec<Record>, PcapError> {
    let mut buf = bytes;
    if buf.len() < 24 {
        return Err(PcapError::Truncated);
    }
    let magic = buf.get_u32_le();
    if magic != MAGIC {
        return Err(PcapError::BadMagic(magic));
    }
    buf.advance(12);
    let snaplen = buf.get_u32_le();
    let link = buf.get_u32_le();
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::BadLinkType(link));
    }
    let mut records = Vec::new();
    while !buf.is_empty() {
        if buf.len() < 16 {
            return Err(PcapError::Truncated);
        }
        let secs = buf.get_u32_le();
        let micros = buf.get_u32_le();
        let caplen = buf.get_u32_le();
        let orig_len = buf.get_u32_le();
        if caplen > snaplen {
            return Err(PcapError::Oversized(caplen));
        }
        if buf.len() < caplen as usize {
            return Err(PcapError::Truncated);
        }
        records.push(Record {
            time: Duration::new(secs as u64, micros.saturating_mul(1000)),
            orig_len,
            data: buf[..caplen as usize].to_vec(),
        });
        buf.advance(caplen as usize);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1600), 0..20)) {
            let mut buf = BytesMut::new();
            encode_header(&mut buf);
            let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000);
            for f in &frames {
                encode_record(t, f, &mut buf);
            }
            let recs = parse(&buf).unwrap();
            prop_assert_eq!(recs.len(), frames.len());
            for (r, f) in recs.iter().zip(&frames) {
                prop_assert_eq!(&r.data, f);
                prop_assert_eq!(r.orig_len as usize, f.len());
                prop_assert_eq!(r.time, Duration::new(1_700_000_000, 123_456_000));
            }
        }
    }

    #[test]
    fn header_is_tcpdump_format() {
        let mut buf = BytesMut::new();
        encode_header(&mut buf);
        assert_eq!(&buf[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(buf.len(), 24);
        assert_eq!(parse(&buf[..10]), Err(PcapError::Truncated));
    }
}
