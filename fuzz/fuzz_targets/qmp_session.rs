//! Fuzz the QMP session: a valid greeting, then arbitrary bytes from "QEMU" in
//! arbitrary chunks, while some commands wait for answers.
//!
//! Input layout: byte 0 picks the chunk size (1..=256), byte 1 how many commands
//! are sent before the greeting (b % 4) and after it (b / 4 % 8), the rest is the
//! stream after the greeting. Checks: no panic; each answer is handed out at
//! most once and only for an id that was sent; the event and warning queues stay
//! within their bounds; chunked input gives the same answers, events and state
//! as the whole stream at once.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vmrig_qmp::{Session, SessionConfig};

const GREETING: &[u8] = br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;
const EVENTS: usize = 16;

#[derive(Debug, PartialEq)]
struct Seen {
    answers: Vec<(u64, String)>,
    events: Vec<String>,
    phase: String,
    closed: Option<String>,
    bytes_out: Vec<u8>,
}

fn run(before: usize, after: usize, stream: &[u8], chunk: usize) -> Seen {
    let mut s = Session::with_config(SessionConfig::default().event_capacity(EVENTS));
    let mut ids = Vec::new();
    for _ in 0..before {
        ids.push(s.send_command("stop", &()).unwrap());
    }
    s.handle_input(GREETING).unwrap();
    // QEMU accepting capabilities: the id is the one after the held commands.
    let caps = format!("{{\"return\": {{}}, \"id\": {}}}\r\n", before + 1);
    s.handle_input(caps.as_bytes()).unwrap();
    for _ in 0..after {
        ids.push(s.send_command("cont", &()).unwrap());
    }
    let mut seen = Seen {
        answers: Vec::new(),
        events: Vec::new(),
        phase: String::new(),
        closed: None,
        bytes_out: Vec::new(),
    };
    for piece in stream.chunks(chunk) {
        let _ = s.handle_input(piece);
        for &id in &ids {
            if let Some(answer) = s.take_response(id) {
                assert!(
                    !seen.answers.iter().any(|(i, _)| *i == id),
                    "answer to {id} handed out twice"
                );
                let text = match answer {
                    Ok(raw) => raw.get().to_owned(),
                    Err(e) => e.to_string(),
                };
                seen.answers.push((id, text));
            }
        }
        // Ids never sent have no answers.
        assert!(s.take_response(0).is_none());
        assert!(s.take_response(1_000_000).is_none());
        assert!(s.queued_events() <= EVENTS);
        while let Some(e) = s.poll_event() {
            seen.events.push(e.event);
        }
        let mut warnings = 0;
        while s.poll_warning().is_some() {
            warnings += 1;
        }
        assert!(warnings <= 64);
        while let Some(b) = s.poll_transmit() {
            seen.bytes_out.extend_from_slice(&b);
        }
    }
    seen.phase = format!("{:?}", s.phase());
    seen.closed = s.closed_reason().map(str::to_owned);
    seen
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let chunk = usize::from(data[0]) + 1;
    let before = usize::from(data[1] % 4);
    let after = usize::from(data[1] / 4 % 8);
    let stream = &data[2..];
    let whole = run(before, after, stream, stream.len().max(1));
    let chunked = run(before, after, stream, chunk);
    // Answers may be taken in a different order across chunkings; compare sets.
    let mut a = whole.answers.clone();
    let mut b = chunked.answers.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(whole.phase, chunked.phase);
    assert_eq!(whole.closed, chunked.closed);
    assert_eq!(whole.bytes_out, chunked.bytes_out);
});
