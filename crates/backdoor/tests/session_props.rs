//! Property test for the sans-IO session: replies to the awaited command, to
//! abandoned commands and to commands nobody sent, plus stray lines, arriving
//! in any order and any chunking: the awaited reply comes out exactly once,
//! abandoned ones vanish quietly, everything else is counted.

use bytes::BytesMut;
use proptest::prelude::*;
use vmrig_backdoor::{write_reply, Command, DecoderConfig, Session, Update};

#[derive(Debug, Clone)]
enum Piece {
    Abandoned(usize),
    Foreign(u64),
    Stray,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn the_awaited_reply_comes_out_once_whatever_comes_around_it(
        abandoned in 0usize..6,
        extras in prop::collection::vec(prop_oneof![
            (1_000_000u64..2_000_000).prop_map(Piece::Foreign),
            Just(Piece::Stray),
        ], 0..6),
        seed in any::<u64>(),
        chunk in 1usize..97,
        stream in any::<bool>(),
        output in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let config = DecoderConfig { stream_output: stream, ..DecoderConfig::default() };
        let mut s = Session::ready(config).with_first_nonce(100);
        let mut line = BytesMut::new();
        let mut old = Vec::new();
        for i in 0..abandoned {
            // Alternately unchecked and timed out.
            if i % 2 == 0 {
                old.push(s.send(&Command::new("x").check_output(false), &mut line).unwrap());
            } else {
                old.push(s.send(&Command::new("x"), &mut line).unwrap());
                s.abandon();
            }
        }
        let nonce = s.send(&Command::new("mine"), &mut line).unwrap();
        // Abandoned replies in any order before ours; extras anywhere.
        let mut pieces: Vec<Piece> = (0..abandoned).map(Piece::Abandoned).collect();
        pieces.extend(extras.iter().cloned());
        let mut order: Vec<usize> = (0..=pieces.len()).collect();
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut wire = BytesMut::new();
        let mut foreign = 0;
        let mut stray = 0;
        for &k in &order {
            match pieces.get(k) {
                None => write_reply(nonce, 7, &output, &mut wire),
                Some(Piece::Abandoned(i)) => write_reply(old[*i], 0, b"old", &mut wire),
                Some(Piece::Foreign(n)) => { foreign += 1; write_reply(*n, 0, b"?", &mut wire) }
                Some(Piece::Stray) => { stray += 1; wire.extend_from_slice(b"stray\n") }
            }
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(update) = s.decode(&mut buf).unwrap() {
                got.push(update);
            }
        }
        prop_assert_eq!(got.len(), 1);
        let Update::Reply(reply) = &got[0] else { panic!("{:?}", got) };
        prop_assert_eq!(reply.nonce, nonce);
        prop_assert_eq!(reply.status, 7);
        prop_assert_eq!(&reply.output[..], &output[..]);
        prop_assert_eq!(s.awaiting(), None);
        prop_assert_eq!(s.stray_count(), foreign + stray);
    }
}
