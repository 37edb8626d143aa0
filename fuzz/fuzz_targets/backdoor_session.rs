//! Fuzz the backdoor session: arbitrary guest bytes, in arbitrary chunks, while
//! commands are sent, some unchecked, some abandoned.
//!
//! Input layout: byte 0 picks the chunk size (1..=256), byte 1 the command plan
//! (bit 0: stream output; bits 1..=3: unchecked commands sent first; bit 4: one
//! checked command abandoned), the rest is the stream. Nonces start at 1, so a
//! fuzzer that writes `#vmrig1:` frames reaches every branch. Checks: no panic;
//! at most one reply is handed out and only the awaited one; the warning queue
//! stays bounded; chunked input gives the same updates as the whole stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use bytes::BytesMut;
use vmrig_backdoor::{Command, DecoderConfig, Session, Update};

fn run(plan: u8, stream: &[u8], chunk: usize) -> Vec<Update> {
    let config = DecoderConfig {
        stream_output: plan & 1 == 1,
        max_output: 1 << 16,
        ..DecoderConfig::default()
    };
    let mut s = Session::ready(config).with_first_nonce(1);
    let mut line = BytesMut::new();
    for _ in 0..(plan >> 1) & 7 {
        s.send(&Command::new("x").check_output(false), &mut line)
            .unwrap();
    }
    if plan & 16 != 0 {
        s.send(&Command::new("x"), &mut line).unwrap();
        s.abandon();
    }
    let awaited = s.send(&Command::new("x"), &mut line).unwrap();
    let mut buf = BytesMut::new();
    let mut updates = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match s.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(u)) => {
                    if let Update::Reply(r) = &u {
                        assert_eq!(r.nonce, awaited, "a reply to another command came out");
                        assert!(
                            !updates.iter().any(|u| matches!(u, Update::Reply(_))),
                            "two replies for one command"
                        );
                        assert_eq!(s.awaiting(), None);
                    }
                    updates.push(u);
                }
                Err(e) => {
                    // Only the awaited command's failure surfaces; it is then over.
                    assert_eq!(e.nonce(), Some(awaited), "{e}");
                    assert_eq!(s.awaiting(), None);
                }
            }
        }
        let mut warnings = 0;
        while s.poll_warning().is_some() {
            warnings += 1;
        }
        assert!(warnings <= 64);
    }
    updates
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = usize::from(data[0]) + 1;
    let plan = data[1];
    let stream = &data[2..];
    let whole = run(plan, stream, stream.len().max(1));
    let chunked = run(plan, stream, chunk);
    assert_eq!(whole, chunked);
});
