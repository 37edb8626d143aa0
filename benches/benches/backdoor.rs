//! Backdoor protocol: decoding replies of 1 KB, 1 MB and 100 MB (fed in
//! 64 KiB reads, as the shell adapter does), against a naive decoder that
//! collects the whole base64 line, decodes it, then copies the result; and
//! the cost of encoding a command line; the session's bookkeeping per
//! command (send, then sort the replies); and whole round trips through a real
//! bash (on this host, not in a guest under TCG) with vmrig's protocol and
//! with NixOS's, which shows the guest-side work each one costs.

// criterion_group! defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmrig_backdoor::{write_reply, Command, Decoder, DecoderConfig, Event, Session, Update};

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

/// The baseline: gather the whole reply, drop the newlines, decode it, then
/// copy it out (what a read-it-all-then-b64decode client does).
fn decode_naive(wire: &[u8]) -> Vec<u8> {
    let mut line = Vec::new();
    for chunk in wire.chunks(READ) {
        line.extend_from_slice(chunk);
        if line.ends_with(b"#\n") {
            break;
        }
    }
    let start = line.iter().position(|&b| b == b':').unwrap() + 1;
    let end = line.iter().rposition(|&b| b == b':').unwrap();
    let end = line[..end - 1].iter().rposition(|&b| b == b':').unwrap();
    let text: Vec<u8> = line[start..end]
        .iter()
        .copied()
        .filter(|&b| b != b'\n')
        .collect();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&text)
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

/// A real bash reading its script from a socket, as a guest's backdoor
/// does (bash on its stdin; stdout the same socket).
fn spawn_shell() -> (std::process::Child, tokio::net::UnixStream) {
    let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
    let child = std::process::Command::new("bash")
        .args([
            "--norc",
            "-c",
            "echo 'Spawning backdoor root shell...'; PS1='' exec bash --norc",
        ])
        .stdin(std::os::fd::OwnedFd::from(guest.try_clone().unwrap()))
        .stdout(std::os::fd::OwnedFd::from(guest))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    host.set_nonblocking(true).unwrap();
    (child, tokio::net::UnixStream::from_std(host).unwrap())
}

/// NixOS's two round trips, for comparison.
async fn nixos_execute(io: &mut tokio::net::UnixStream, buf: &mut Vec<u8>, line: &[u8]) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn block(io: &mut tokio::net::UnixStream, buf: &mut Vec<u8>) -> Vec<u8> {
        loop {
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line = buf[..i].to_vec();
                buf.drain(..=i);
                return line;
            }
            let mut chunk = [0; 65536];
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    io.write_all(line).await.unwrap();
    let out = base64::engine::general_purpose::STANDARD
        .decode(block(io, buf).await)
        .unwrap();
    io.write_all(b"echo ${PIPESTATUS[0]}\n").await.unwrap();
    let status = block(io, buf).await;
    assert_eq!(status, b"0");
    out.len()
}

fn round_trip(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // tokio sockets are made inside the runtime
    let _enter = rt.enter();
    let mut g = c.benchmark_group("backdoor/round_trip");
    g.sample_size(50).measurement_time(Duration::from_secs(8));
    for (name, script, len) in [
        ("true", "true", 0),
        ("1MB", "head -c 1000000 /dev/zero", 1_000_000),
    ] {
        let (mut child, io) = spawn_shell();
        let mut shell = vmrig_backdoor::Shell::new(io);
        rt.block_on(shell.wait_ready(Duration::from_secs(30)))
            .unwrap();
        let cmd = Command::new(script);
        g.bench_function(BenchmarkId::new("vmrig", name), |b| {
            b.iter(|| {
                let out = rt
                    .block_on(shell.run(&cmd, Duration::from_secs(60)))
                    .unwrap();
                assert_eq!((out.status, out.output.len()), (0, len));
            })
        });
        drop(shell);
        let _ = child.kill();
        let _ = child.wait();

        let (mut child, mut io) = spawn_shell();
        let mut buf = Vec::new();
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            while !buf.ends_with(b"...\n") {
                let mut chunk = [0; 4096];
                let n = io.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.clear();
        });
        let line = format!(" bash -c 'set -euo pipefail; {script}' | (base64 -w 0; echo)\n");
        g.bench_function(BenchmarkId::new("nixos", name), |b| {
            b.iter(|| {
                let n = rt.block_on(nixos_execute(&mut io, &mut buf, line.as_bytes()));
                assert_eq!(n, len);
            })
        });
        let _ = child.kill();
        let _ = child.wait();
    }
    g.finish();
}

/// One command through the sans-IO session: encode it, then decode its 1 KB
/// reply, after `abandoned` replies to commands nobody waits for.
fn session(c: &mut Criterion) {
    let mut g = c.benchmark_group("backdoor/session");
    let out = output(1_000);
    for abandoned in [0u64, 3] {
        let mut s = Session::ready(DecoderConfig::default()).with_first_nonce(1);
        let cmd = Command::new("cat /etc/hosts");
        let quiet = Command::new("true").check_output(false);
        let mut line = BytesMut::with_capacity(4096);
        let mut buf = BytesMut::with_capacity(READ);
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("command_1KB_reply", abandoned), |b| {
            b.iter(|| {
                line.clear();
                let mut first = 0;
                for i in 0..abandoned {
                    let n = s.send(&quiet, &mut line).unwrap();
                    if i == 0 {
                        first = n;
                    }
                }
                let nonce = s.send(black_box(&cmd), &mut line).unwrap();
                for n in first..first + abandoned {
                    write_reply(n, 0, b"", &mut buf);
                }
                write_reply(nonce, 0, &out, &mut buf);
                let Some(Update::Reply(r)) = s.decode(&mut buf).unwrap() else {
                    panic!("no reply")
                };
                black_box(r.output.len())
            })
        });
        assert_eq!(s.stray_count(), 0);
    }
    g.finish();
}

criterion_group!(benches, decode, encode, session, round_trip);
criterion_main!(benches);
