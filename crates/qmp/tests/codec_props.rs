//! Property tests for the codec: encode/decode round trips, and a transcript
//! recorded from the real QEMU decodes to the same messages however it is split.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};
use vmrig_qmp::{Codec, Event, Message, QmpError, Response, Timestamp};

const TRANSCRIPT: &[u8] = include_bytes!("data/transcript.jsonl");

fn decode_chunks<'a>(
    codec: &mut Codec,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Vec<Message> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(m) = codec.decode(&mut buf).expect("valid stream") {
            out.push(m);
        }
    }
    assert!(
        buf.is_empty(),
        "leftover: {:?}",
        String::from_utf8_lossy(&buf)
    );
    out
}

fn transcript_messages() -> Vec<Message> {
    decode_chunks(&mut Codec::new(), [TRANSCRIPT])
}

#[test]
fn transcript_decodes_line_by_line() {
    let messages = transcript_messages();
    // One message per CRLF-terminated line, as QEMU sent them.
    let lines: Vec<&[u8]> = TRANSCRIPT
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(messages.len(), lines.len());
    for (message, line) in messages.iter().zip(&lines) {
        let value: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(&message.to_value(), &value);
    }
    assert!(matches!(messages[0], Message::Greeting(_)));
    let events = messages
        .iter()
        .filter(|m| matches!(m, Message::Event(_)))
        .count();
    let errors = messages
        .iter()
        .filter(|m| {
            matches!(
                m,
                Message::Response(Response {
                    outcome: Err(_),
                    ..
                })
            )
        })
        .count();
    assert!(
        events >= 5 && errors >= 2,
        "{events} events, {errors} errors"
    );
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Strings full of the characters the framer must not trip over.
        "[{}\\[\\]\"\\\\a-zé\n\r\t\u{1F600} ]{0,20}".prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z{}\"-]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn message() -> impl Strategy<Value = Message> {
    let id = prop_oneof![Just(None), json_leaf().prop_map(Some)];
    let response = (
        id,
        prop_oneof![
            json_value().prop_map(|v| Ok(serde_json::value::to_raw_value(&v).unwrap())),
            ("[A-Za-z]{1,16}", ".{0,40}").prop_map(|(class, desc)| Err(QmpError { class, desc })),
        ],
    )
        .prop_map(|(id, outcome)| Message::Response(Response { id, outcome }));
    let event = ("[A-Z_]{1,20}", json_value(), any::<i64>(), 0..1_000_000i64).prop_map(
        |(event, data, seconds, microseconds)| {
            Message::Event(Event {
                event,
                data,
                timestamp: Timestamp {
                    seconds,
                    microseconds,
                },
            })
        },
    );
    prop_oneof![response, event]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip_through_any_chunking(
        messages in prop::collection::vec(message(), 1..8),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut codec = Codec::new();
        let mut wire = BytesMut::new();
        for m in &messages {
            codec.encode_message(m, &mut wire);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([wire.len()]) {
            chunks.push(&wire[last..p]);
            last = p;
        }
        let decoded = decode_chunks(&mut codec, chunks);
        // An event whose data is null is sent without `data`, which decodes to null.
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn commands_encode_to_what_qemu_parses(
        name in "[a-z_-]{1,30}",
        args in prop::collection::btree_map("[a-z-]{1,10}", json_value(), 0..5),
        id in any::<u64>(),
    ) {
        let args: serde_json::Map<String, Value> = args.into_iter().collect();
        let mut buf = BytesMut::new();
        Codec::new().encode_command(&name, &args, Some(id), &mut buf).unwrap();
        prop_assert!(buf.ends_with(b"\r\n"));
        let wire: Value = serde_json::from_slice(&buf).unwrap();
        let mut want = json!({"execute": name, "id": id});
        if !args.is_empty() {
            want["arguments"] = Value::Object(args);
        }
        prop_assert_eq!(wire, want);
    }

    #[test]
    fn recorded_transcript_split_anywhere_decodes_the_same(
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..64),
        max_chunk in 1usize..4096,
    ) {
        let whole = transcript_messages();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(TRANSCRIPT.len() + 1)).collect();
        points.sort_unstable();
        // Arbitrary cut points, then no chunk longer than max_chunk.
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([TRANSCRIPT.len()]) {
            let mut start = last;
            while p - start > max_chunk {
                chunks.push(&TRANSCRIPT[start..start + max_chunk]);
                start += max_chunk;
            }
            chunks.push(&TRANSCRIPT[start..p]);
            last = p;
        }
        let decoded = decode_chunks(&mut Codec::new(), chunks);
        prop_assert_eq!(decoded, whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_always_progress(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut codec = Codec::with_max_message_size(128);
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..=data.len() {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => prop_assert!(buf.len() < before),
            }
        }
    }
}

#[test]
fn transcript_byte_at_a_time() {
    let whole = transcript_messages();
    let decoded = decode_chunks(&mut Codec::new(), TRANSCRIPT.chunks(1));
    assert_eq!(decoded, whole);
}
