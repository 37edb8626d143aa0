//! Property tests for the sans-IO session: however QEMU orders its answers,
//! interleaves events and unmatched ids, and however the stream is split, each
//! answer reaches the command that asked for it exactly once and events keep
//! their order.

use proptest::prelude::*;
use serde_json::json;
use vmrig_qmp::{Error, Session};

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}"#;

#[derive(Debug, Clone)]
enum Item {
    /// The answer to the command at this index among those sent.
    Answer(usize),
    Event(u32),
    /// A response with an id nobody sent.
    Foreign(u64),
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Item>, Vec<usize>, Vec<bool>)> {
    (1usize..24).prop_flat_map(|n| {
        let answers: Vec<Item> = (0..n).map(Item::Answer).collect();
        let extras = prop::collection::vec(
            prop_oneof![
                any::<u32>().prop_map(Item::Event),
                (1_000_000u64..2_000_000).prop_map(Item::Foreign),
            ],
            0..16,
        );
        (
            Just(n),
            (Just(answers), extras)
                .prop_map(|(mut a, e)| {
                    a.extend(e);
                    a
                })
                .prop_shuffle(),
            prop::collection::vec(1usize..64, 1..32),
            prop::collection::vec(any::<bool>(), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_answer_reaches_its_command_exactly_once(
        (n, items, cuts, errors) in scenario(),
    ) {
        let mut s = Session::new();
        // Half the commands go out before negotiation (held), half after.
        let mut ids = Vec::new();
        for i in 0..n / 2 {
            ids.push(s.send_command("cmd", &json!({"i": i})).unwrap());
        }
        s.handle_input(GREETING.as_bytes()).unwrap();
        let negotiation = s.poll_transmit().unwrap();
        prop_assert!(negotiation.starts_with(b"{\"execute\":\"qmp_capabilities\""), "{:?}", negotiation);
        let caps_id: serde_json::Value = serde_json::from_slice(&negotiation).unwrap();
        s.handle_input(format!("{{\"return\": {{}}, \"id\": {}}}\r\n", caps_id["id"]).as_bytes()).unwrap();
        for i in n / 2..n {
            ids.push(s.send_command("cmd", &json!({"i": i})).unwrap());
        }
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(distinct.len(), n);
        // What went out: every command once, in the order sent.
        let mut out = Vec::new();
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
        let sent: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        prop_assert_eq!(sent.len(), n);
        for (i, cmd) in sent.iter().enumerate() {
            prop_assert_eq!(&cmd["arguments"]["i"], &json!(i));
            prop_assert_eq!(&cmd["id"], &json!(ids[i]));
        }

        // QEMU's side, in the shuffled order.
        let mut wire = String::new();
        let mut events = Vec::new();
        for item in &items {
            let line = match item {
                Item::Answer(i) if errors[*i] => json!({"error": {"class": "GenericError", "desc": format!("e{i}")}, "id": ids[*i]}),
                Item::Answer(i) => json!({"return": {"i": i}, "id": ids[*i]}),
                Item::Event(k) => {
                    events.push(format!("E{k}"));
                    json!({"event": format!("E{k}"), "data": {"k": k}, "timestamp": {"seconds": 1, "microseconds": 0}})
                }
                Item::Foreign(id) => json!({"return": {"i": "foreign"}, "id": id}),
            };
            wire.push_str(&line.to_string());
            wire.push_str("\r\n");
        }
        let foreign = items.iter().filter(|i| matches!(i, Item::Foreign(_))).count();

        // Fed in arbitrary pieces; answers taken as soon as they are in.
        let mut got: Vec<Option<Result<serde_json::Value, String>>> = vec![None; n];
        let mut rest = wire.as_bytes();
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let k = (*cut.next().unwrap()).min(rest.len());
            s.handle_input(&rest[..k]).unwrap();
            rest = &rest[k..];
            for (i, id) in ids.iter().enumerate() {
                if let Some(answer) = s.take_response(*id) {
                    prop_assert!(got[i].is_none(), "command {} answered twice", i);
                    got[i] = Some(answer.map(|raw| serde_json::from_str(raw.get()).unwrap()).map_err(|e| match e {
                        Error::Command { desc, .. } => desc,
                        other => other.to_string(),
                    }));
                }
            }
        }
        for (i, answer) in got.into_iter().enumerate() {
            let expected = if errors[i] { Err(format!("e{i}")) } else { Ok(json!({"i": i})) };
            prop_assert_eq!(answer, Some(expected));
            prop_assert!(!s.is_pending(ids[i]));
            prop_assert!(s.take_response(ids[i]).is_none());
        }
        let seen: Vec<String> = s.take_events().into_iter().map(|e| e.event).collect();
        prop_assert_eq!(seen, events);
        let warnings = std::iter::from_fn(|| s.poll_warning()).collect::<Vec<_>>();
        prop_assert_eq!(warnings.len(), foreign.min(64));
        let unmatched = warnings.iter().all(|w| matches!(w, Error::UnmatchedId { .. }));
        prop_assert!(unmatched, "{:?}", warnings);
    }
}
