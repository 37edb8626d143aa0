//! QMP layer: decode throughput on a transcript recorded from QEMU 7.2, the
//! sans-IO session's cost per command, and round-trip latency of `query-status`
//! against a real QEMU.
//!
//! `cargo bench -p vmrig-benches --bench qmp`

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use vmrig_qmp::bytes::BytesMut;
use vmrig_qmp::{Client, Codec, Message, QueryStatus, Session};

/// Everything QEMU sent in a session of 20 commands (greeting, returns from
/// 2 bytes to `query-qmp-schema`'s 190 KB, errors, events).
const TRANSCRIPT: &[u8] = include_bytes!("../../crates/qmp/tests/data/transcript.jsonl");

/// Decodes `stream` as reads of `read` bytes; returns the message count.
fn decode(stream: &[u8], read: usize) -> usize {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(read.min(stream.len()) * 2);
    let mut n = 0;
    for chunk in stream.chunks(read) {
        buf.extend_from_slice(chunk);
        while let Ok(Some(_)) = codec.decode(&mut buf) {
            n += 1;
        }
    }
    n
}

/// The transcript's small messages (returns, errors, events; < 1 KB each),
/// repeated: the traffic of a test that mostly sends keys and polls status.
fn small_messages() -> Vec<u8> {
    let lines: Vec<&[u8]> = TRANSCRIPT
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.len() < 1024)
        .collect();
    lines
        .iter()
        .cycle()
        .take(lines.len() * 200)
        .flat_map(|l| l.iter().copied())
        .collect()
}

fn bench_decode(c: &mut Criterion) {
    let small = small_messages();
    for (name, stream) in [("transcript", TRANSCRIPT), ("small_messages", &small[..])] {
        let messages = decode(stream, usize::MAX) as u64;
        let mut group = c.benchmark_group(format!("qmp/decode_bytes/{name}"));
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_function("whole", |b| b.iter(|| decode(stream, usize::MAX)));
        group.bench_function("4k_reads", |b| b.iter(|| decode(stream, 4096)));
        group.finish();
        let mut group = c.benchmark_group(format!("qmp/decode_messages/{name}"));
        group.throughput(Throughput::Elements(messages));
        group.bench_function("4k_reads", |b| b.iter(|| decode(stream, 4096)));
        group.finish();
    }

    // Framing alone (no JSON parse): how the cost splits between the two.
    let mut group = c.benchmark_group("qmp/frame_only/transcript");
    group.throughput(Throughput::Bytes(TRANSCRIPT.len() as u64));
    group.bench_function("4k_reads", |b| {
        b.iter(|| {
            let mut codec = Codec::new();
            let mut buf = BytesMut::with_capacity(8192);
            let mut n = 0;
            for chunk in TRANSCRIPT.chunks(4096) {
                buf.extend_from_slice(chunk);
                while let Ok(Some(_)) = codec.decode_frame(&mut buf) {
                    n += 1;
                }
            }
            n
        })
    });
    group.finish();

    let mut group = c.benchmark_group("qmp/encode");
    group.throughput(Throughput::Elements(1));
    let mut codec = Codec::new();
    let cmd = vmrig_qmp::SendKey::combo("ctrl-alt-delete");
    group.bench_function("send-key", |b| {
        b.iter_batched_ref(
            BytesMut::new,
            |buf| {
                codec
                    .encode_command("send-key", &cmd, Some(7), buf)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    assert!(matches!(
        Codec::new().decode(&mut BytesMut::from(TRANSCRIPT)),
        Ok(Some(Message::Greeting(_)))
    ));
}

/// A negotiated session, as the client holds it.
fn ready_session() -> Session {
    let mut s = Session::new();
    s.handle_input(TRANSCRIPT.split(|&b| b == b'\n').next().unwrap())
        .unwrap();
    s.handle_input(b"{\"return\": {}, \"id\": 1}\r\n").unwrap();
    assert!(s.is_ready());
    s.poll_transmit();
    s
}

fn bench_session(c: &mut Criterion) {
    // 64 commands in flight, answered in reverse order with an event between
    // answers: bytes out, bytes in, answers taken by id.
    const N: u64 = 64;
    let mut group = c.benchmark_group("qmp/session");
    group.throughput(Throughput::Elements(N));
    group.bench_function("64_commands_reversed_with_events", |b| {
        b.iter_batched_ref(
            ready_session,
            |s| {
                let ids: Vec<u64> = (0..N).map(|_| s.execute(&QueryStatus).unwrap()).collect();
                let out = s.poll_transmit().unwrap();
                let mut wire = Vec::with_capacity(out.len() * 3);
                for &id in ids.iter().rev() {
                    wire.extend_from_slice(
                        format!("{{\"return\": {{\"status\": \"running\", \"singlestep\": false, \"running\": true}}, \"id\": {id}}}\r\n")
                            .as_bytes(),
                    );
                    wire.extend_from_slice(b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 5}, \"event\": \"RESUME\"}\r\n");
                }
                for chunk in wire.chunks(4096) {
                    s.handle_input(chunk).unwrap();
                }
                for id in ids {
                    s.take_response(id).unwrap().unwrap();
                }
                s.take_events().len()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_round_trip(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("qmp");
    let child = Command::new("qemu-system-x86_64")
        .args(["-M", "none", "-nodefaults", "-display", "none", "-qmp"])
        .arg(format!("unix:{},server=on,wait=off", path.display()))
        .stdin(Stdio::null())
        .process_group(0)
        .spawn();
    let Ok(child) = child else {
        eprintln!("qmp/round_trip skipped: cannot start qemu-system-x86_64");
        return;
    };
    let _qemu = Qemu(child);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let client = rt
        .block_on(Client::connect(&path, Duration::from_secs(60)))
        .expect("connect to qmp");
    let mut group = c.benchmark_group("qmp/round_trip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("query-status", |b| {
        b.iter(|| rt.block_on(client.execute(QueryStatus)).unwrap())
    });
    // 8 commands in flight at once from one task: what pipelining buys.
    group.throughput(Throughput::Elements(8));
    group.bench_function("query-status_x8_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let calls: Vec<_> = (0..8)
                    .map(|_| {
                        let client = client.clone();
                        tokio::spawn(async move { client.execute(QueryStatus).await })
                    })
                    .collect();
                for call in calls {
                    call.await.unwrap().unwrap();
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench_decode, bench_session, bench_round_trip);
criterion_main!(benches);
