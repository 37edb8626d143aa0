//! Fuzz the QMP decoder: arbitrary bytes from "QEMU", fed in arbitrary chunks.
//!
//! Input layout: byte 0 picks the chunk size (1..=256), byte 1 the message size
//! bound (64 << (b % 16)), the rest is the stream. Checks: no panic, every call
//! that returns a message or an error consumes input, the buffer never holds
//! more than the bound plus one chunk, and chunked decoding yields the same
//! messages as decoding the whole stream at once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmrig_qmp::bytes::BytesMut;
use vmrig_qmp::{Codec, Message};

fn decode_all(codec: &mut Codec, buf: &mut BytesMut, out: &mut Vec<Message>) {
    loop {
        let before = buf.len();
        match codec.decode(buf) {
            Ok(None) => return,
            Ok(Some(m)) => out.push(m),
            Err(_) => {}
        }
        assert!(
            buf.len() < before,
            "decode returned without consuming input"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = usize::from(data[0]) + 1;
    let max = 64usize << (data[1] % 16);
    let stream = &data[2..];

    let mut whole = Vec::new();
    let mut codec = Codec::with_max_message_size(max);
    let mut buf = BytesMut::from(stream);
    decode_all(&mut codec, &mut buf, &mut whole);

    let mut chunked = Vec::new();
    let mut codec = Codec::with_max_message_size(max);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        decode_all(&mut codec, &mut buf, &mut chunked);
        assert!(
            buf.len() <= max,
            "buffered {} bytes past the {max}-byte bound",
            buf.len()
        );
    }
    assert_eq!(whole, chunked);
});
