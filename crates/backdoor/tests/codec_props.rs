//! Property tests of the decoder: for arbitrary outputs and statuses, the
//! guest's bytes cut at arbitrary points decode to exactly those.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use vmrig_backdoor::{write_reply, Command, Decoder, DecoderConfig, Event, Reply, MAGIC};

#[derive(Clone, Debug)]
struct Frame {
    nonce: u64,
    status: u8,
    output: Vec<u8>,
}

fn frame() -> impl Strategy<Value = Frame> {
    (any::<u64>(), any::<u8>(), vec(any::<u8>(), 0..600)).prop_map(|(nonce, status, output)| {
        Frame {
            nonce,
            status,
            output,
        }
    })
}

/// Console noise that cannot contain the magic line.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..300).prop_filter("no magic line", |n| {
        memchr::memmem::find(n, MAGIC).is_none() && memchr::memmem::find(n, b"Sp").is_none()
    })
}

/// Cuts `input` at the given points and feeds the pieces one by one.
fn feed(config: DecoderConfig, input: &[u8], cuts: &[usize]) -> (Vec<Event>, usize, usize) {
    let mut dec = Decoder::with_config(config);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let (mut events, mut errors, mut max_pending) = (vec![], 0, 0);
    let mut at = 0;
    for p in points {
        buf.extend_from_slice(&input[at..p]);
        at = p;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(_) => errors += 1,
            }
        }
        max_pending = max_pending.max(buf.len());
    }
    (events, errors, max_pending)
}

fn expected(noise: &[u8], frames: &[Frame]) -> Vec<Event> {
    let mut evs = vec![Event::Ready {
        noise: Bytes::copy_from_slice(noise),
        noise_len: noise.len() as u64,
    }];
    evs.extend(frames.iter().map(|f| {
        Event::Reply(Reply {
            nonce: f.nonce,
            status: f.status,
            output: Bytes::copy_from_slice(&f.output),
        })
    }));
    evs
}

fn stream(noise: &[u8], frames: &[Frame]) -> Vec<u8> {
    let mut input = BytesMut::from(noise);
    input.extend_from_slice(MAGIC);
    input.extend_from_slice(b"\n");
    for f in frames {
        write_reply(f.nonce, f.status, &f.output, &mut input);
    }
    input.to_vec()
}

proptest! {
    #[test]
    fn any_chunking_decodes_exactly(
        noise in noise(),
        frames in vec(frame(), 0..5),
        cuts in vec(any::<usize>(), 0..40),
    ) {
        let input = stream(&noise, &frames);
        let config = DecoderConfig { max_noise: 1024, ..DecoderConfig::default() };
        let (events, errors, pending) = feed(config, &input, &cuts);
        prop_assert_eq!(errors, 0);
        prop_assert_eq!(events, expected(&noise, &frames));
        prop_assert!(pending <= 256, "{} bytes left undecoded", pending);
    }

    #[test]
    fn streamed_chunks_join_to_the_output(
        frames in vec(frame(), 1..4),
        cuts in vec(any::<usize>(), 0..40),
    ) {
        let input = stream(b"", &frames);
        let config = DecoderConfig { stream_output: true, ..DecoderConfig::default() };
        let (events, errors, _) = feed(config, &input, &cuts);
        prop_assert_eq!(errors, 0);
        let mut outputs = vec![];
        let mut current = vec![];
        for ev in &events[1..] {
            match ev {
                Event::Output { chunk, .. } => current.extend_from_slice(chunk),
                Event::Reply(r) => {
                    prop_assert!(r.output.is_empty());
                    outputs.push((r.nonce, r.status, std::mem::take(&mut current)));
                }
                Event::Ready { .. } => prop_assert!(false, "second Ready"),
            }
        }
        let want: Vec<_> = frames.iter().map(|f| (f.nonce, f.status, f.output.clone())).collect();
        prop_assert_eq!(outputs, want);
    }

    #[test]
    fn stray_lines_between_replies_are_rejected_not_attributed(
        frames in vec(frame(), 1..4),
        strays in vec(vec(any::<u8>().prop_filter("no # or newline", |b| !b"#\r\n".contains(b)), 1..50), 1..4),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let mut input = BytesMut::from(&stream(b"", &frames[..1])[..]);
        for (f, s) in frames[1..].iter().zip(strays.iter().cycle()) {
            input.extend_from_slice(s);
            input.extend_from_slice(b"\n");
            write_reply(f.nonce, f.status, &f.output, &mut input);
        }
        let (events, errors, _) = feed(DecoderConfig::default(), &input, &cuts);
        prop_assert_eq!(errors, frames.len() - 1);
        prop_assert_eq!(events, expected(b"", &frames));
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded(
        input in vec(any::<u8>(), 0..2000),
        cuts in vec(any::<usize>(), 0..20),
    ) {
        let (_, _, pending) = feed(DecoderConfig::default(), &input, &cuts);
        prop_assert!(pending <= 256);
    }

    #[test]
    fn encoding_is_one_line_and_quotes_everything(
        script in vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..300),
        nonce in any::<u64>(),
        millis in proptest::option::of(1u64..10_000_000),
    ) {
        let cmd = Command::new(script.clone())
            .timeout(millis.map(std::time::Duration::from_millis));
        let mut line = BytesMut::new();
        cmd.encode(nonce, &mut line).unwrap();
        prop_assert!(line.ends_with(b"\"\n"));
        // The script sits inside one single-quoted word: undoing the quoting
        // gives it back.
        let start = memchr::memmem::find(&line, b"bash -c '").unwrap() + 8;
        let end = memchr::memmem::rfind(&line, b"' | base64 -w 0;").unwrap() + 1;
        let quoted = &line[start..end];
        let unquoted = unquote(quoted);
        prop_assert_eq!(unquoted, [&b"set -euo pipefail; "[..], &script].concat());
    }
}

/// Undoes `shlex.quote`: `'...'` pieces joined by `"'"`.
fn unquote(s: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(b"'\"'\"'") {
            out.push(b'\'');
            i += 5;
        } else if s[i] == b'\'' {
            i += 1;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}
