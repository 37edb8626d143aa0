//! Fuzzes the backdoor shell's stream decoder: it must never panic, never
//! keep more than a few hundred undecoded bytes, and give the same events
//! however the stream is cut into chunks.
//!
//! Input: one control byte (bit 0: tiny output limit, bit 1: streaming
//! output, bit 2: start after the magic line, bits 3-7: chunk size - 1),
//! then the bytes the guest printed.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use vmrig_backdoor::{Decoder, DecoderConfig, Event};

/// The most undecoded input the decoder may leave in its buffer.
const MAX_PENDING: usize = 256;

fn run<'a>(
    config: &DecoderConfig,
    ready: bool,
    chunks: impl Iterator<Item = &'a [u8]>,
) -> Vec<Result<Event, ()>> {
    let mut dec = if ready {
        Decoder::ready(config.clone())
    } else {
        Decoder::with_config(config.clone())
    };
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(ev)) => events.push(Ok(ev)),
                Ok(None) => break,
                // Which error (and its snippet) may depend on the chunks;
                // that there is one, and where, may not.
                Err(_) => events.push(Err(())),
            }
        }
        assert!(buf.len() <= MAX_PENDING, "{} bytes pending", buf.len());
    }
    merge_output(events)
}

/// Joins consecutive output chunks of one reply (where streamed output is
/// cut depends on the input's chunks) and drops the chunks of replies that
/// ended in an error (how much of a broken reply was streamed before the
/// error depends on the chunks too).
fn merge_output(events: Vec<Result<Event, ()>>) -> Vec<Result<Event, ()>> {
    let mut out: Vec<Result<Event, ()>> = Vec::with_capacity(events.len());
    for ev in events {
        if let (
            Some(Ok(Event::Output { nonce: a, chunk: prev })),
            Ok(Event::Output { nonce: b, chunk }),
        ) = (out.last_mut(), &ev)
        {
            if a == b {
                let mut joined = BytesMut::from(&prev[..]);
                joined.extend_from_slice(chunk);
                *prev = joined.freeze();
                continue;
            }
        }
        out.push(ev);
    }
    let completed = |i: usize| match (&out[i], out.get(i + 1)) {
        (Ok(Event::Output { nonce, .. }), Some(Ok(Event::Reply(r)))) => r.nonce == *nonce,
        (Ok(Event::Output { .. }), _) => false,
        _ => true,
    };
    let keep: Vec<bool> = (0..out.len()).map(completed).collect();
    out.into_iter()
        .zip(keep)
        .filter_map(|(ev, keep)| keep.then_some(ev))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, input)) = data.split_first() else {
        return;
    };
    let config = DecoderConfig {
        max_output: if ctl & 1 != 0 { 16 } else { 1 << 20 },
        max_noise: 32,
        stream_output: ctl & 2 != 0,
    };
    let ready = ctl & 4 != 0;
    let step = usize::from(ctl >> 3) + 1;
    let whole = run(&config, ready, std::iter::once(input));
    let chunked = run(&config, ready, input.chunks(step));
    assert_eq!(whole, chunked, "chunks of {step} bytes");
});
