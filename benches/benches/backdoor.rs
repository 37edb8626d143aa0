//! Backdoor protocol: decoding replies of 1 KB, 1 MB and 100 MB (fed in
//! 64 KiB reads, as the shell adapter does), against a naive decoder that
//! collects the whole base64 line, decodes it, then copies the result; and
//! the cost of encoding a command line.

use std::hint::black_box;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmrig_backdoor::{write_reply, Command, Decoder, DecoderConfig, Event};

const READ: usize = 64 << 10;

fn output(len: usize) -> Vec<u8> {
    // Deterministic bytes of every value (an LCG), so base64 sees no pattern.
    let mut x: u32 = 12345;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

fn wire(output: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    write_reply(1_000_001, 0, output, &mut b);
    b.to_vec()
}

/// Ours: incremental base64 straight into the output buffer.
fn decode_streaming(wire: &[u8]) -> bytes::Bytes {
    let mut dec = Decoder::ready(DecoderConfig::default());
    let mut buf = BytesMut::with_capacity(READ);
    for chunk in wire.chunks(READ) {
        buf.extend_from_slice(chunk);
        if let Some(Event::Reply(r)) = dec.decode(&mut buf).expect("valid reply") {
            return r.output;
        }
    }
    panic!("no reply")
}

/// The baseline: gather the whole line, then decode it, then copy it out
/// (what a read-until-newline-then-b64decode client does).
fn decode_naive(wire: &[u8]) -> Vec<u8> {
    let mut line = Vec::new();
    for chunk in wire.chunks(READ) {
        line.extend_from_slice(chunk);
        if chunk.contains(&b'\n') {
            break;
        }
    }
    let start = line.iter().position(|&b| b == b':').unwrap() + 1;
    let end = line[start..].iter().position(|&b| b == b':').unwrap() + start;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&line[start..end])
        .unwrap();
    let mut out = Vec::with_capacity(decoded.len());
    out.extend_from_slice(&decoded);
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("backdoor/decode");
    for (name, len) in [("1KB", 1_000), ("1MB", 1_000_000), ("100MB", 100_000_000)] {
        let out = output(len);
        let wire = wire(&out);
        assert_eq!(&decode_streaming(&wire)[..], &out[..]);
        assert_eq!(decode_naive(&wire), out);
        if len >= 100_000_000 {
            g.sample_size(10).measurement_time(Duration::from_secs(8));
        }
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("streaming", name), &wire, |b, w| {
            b.iter(|| decode_streaming(black_box(w)))
        });
        g.bench_with_input(BenchmarkId::new("naive", name), &wire, |b, w| {
            b.iter(|| decode_naive(black_box(w)))
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("backdoor/encode");
    let cmd = Command::new("systemctl show --property=ActiveState 'nginx.service'")
        .timeout(Some(Duration::from_secs(900)));
    let mut buf = BytesMut::with_capacity(4096);
    g.bench_function("command_line", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&cmd)
                .encode(black_box(12_345_678), &mut buf)
                .unwrap();
            black_box(buf.len())
        })
    });
    let big = Command::new(format!("echo '{}'", "it's ".repeat(20_000)));
    g.throughput(Throughput::Bytes(big.script.len() as u64));
    g.bench_function("100KB_script_with_quotes", |b| {
        b.iter(|| {
            buf.clear();
            black_box(&big).encode(1, &mut buf).unwrap();
            black_box(buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
