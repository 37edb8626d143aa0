//! End-to-end tests against a real bash run the way a guest runs it.

mod common;

use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use common::{Guest, LONG};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use vmrig_backdoor::{shell_quote, write_reply, Command, Error, Outcome, Shell, MAGIC};

/// NixOS's driver, byte for byte: two round trips per command.
struct NixosShell {
    io: UnixStream,
    buf: Vec<u8>,
}

impl NixosShell {
    async fn connect(mut io: UnixStream) -> Self {
        let mut buf = Vec::new();
        while memchr::memmem::find(&buf, MAGIC).is_none() {
            read_some(&mut io, &mut buf).await;
        }
        let at = memchr::memmem::find(&buf, MAGIC).unwrap() + MAGIC.len();
        buf.drain(..at);
        let mut shell = NixosShell { io, buf };
        // the rest of the magic line
        assert_eq!(shell.block().await, b"");
        shell
    }

    async fn block(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..=i);
                return line;
            }
            read_some(&mut self.io, &mut self.buf).await;
        }
    }

    async fn execute(&mut self, script: &[u8], timeout: Option<&str>) -> (i32, Vec<u8>) {
        let mut line = BytesMut::new();
        if let Some(t) = timeout {
            line.extend_from_slice(format!("timeout {t}").as_bytes());
        }
        line.extend_from_slice(b" bash -c ");
        shell_quote(&[&b"set -euo pipefail; "[..], script].concat(), &mut line);
        line.extend_from_slice(b" | (base64 -w 0; echo)\n");
        self.io.write_all(&line).await.unwrap();
        // The magic line's own newline comes first after connecting.
        let b64 = self.block().await;
        let output = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .unwrap_or_else(|e| panic!("nixos reply {:?}: {e}", b64.escape_ascii().to_string()));
        self.io.write_all(b"echo ${PIPESTATUS[0]}\n").await.unwrap();
        let status = String::from_utf8(self.block().await).unwrap();
        (status.trim().parse().unwrap(), output)
    }
}

async fn read_some(io: &mut UnixStream, buf: &mut Vec<u8>) {
    let mut chunk = [0; 65536];
    let n = tokio::time::timeout(LONG, io.read(&mut chunk))
        .await
        .expect("guest answers in time")
        .unwrap();
    assert!(n > 0, "guest closed the console");
    buf.extend_from_slice(&chunk[..n]);
}

async fn ready_shell() -> (Guest, Shell<UnixStream>) {
    let (guest, io) = Guest::start();
    let mut shell = Shell::new(io);
    let noise = shell.wait_ready(LONG).await.expect("magic line");
    assert_eq!(
        &noise[..],
        b"[    0.000000] Linux version 6.1\r\nboot noise\n"
    );
    (guest, shell)
}

async fn run(shell: &mut Shell<UnixStream>, cmd: Command) -> Outcome {
    shell
        .run(&cmd, LONG)
        .await
        .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(&cmd.script)))
}

fn torture_cases() -> Vec<Vec<u8>> {
    let mut cases: Vec<Vec<u8>> = [
        "echo hello",
        "printf 'no trailing newline'",
        "true",
        "",
        "exit 3",
        "false | true",
        "echo $UNSET_VARIABLE_FOR_TEST",
        "echo \"it's\" '\"double\"' \\$HOME \\\\back \\`tick\\` $((1+2))",
        "echo 'multi\nline'\necho second\n",
        "printf '\\0\\1\\2\\377\\r\\n\\033'",
        "echo $0 $# \"$-\"",
        "for i in 1 2 3; do echo $i; done; (exit 7)",
        "kill -9 $$",
        "echo out; echo err >&2",
        "x=$'tab\\there'; echo \"$x\"",
        "exec echo replaced",
        "set +e; false; echo survived",
        "cat /nonexistent/file",
        "echo -n",
        "trap 'echo trapped' EXIT; exit 4",
        "[ -t 1 ] && echo stdout-is-a-tty || echo stdout-is-not-a-tty",
        "echo ';' '|' '&' '#vmrig1:' ':0:1#' \"'\"",
        "echo ${PIPESTATUS[0]}; shopt -q lastpipe || echo no-lastpipe",
        "bad syntax (",
        "seq 1 3 | while read -r l; do echo \"<$l>\"; done",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    cases.push(b"printf '%s' '\xff\xfe\x80 not utf-8'".to_vec());
    cases.push(format!("echo {}", "a".repeat(100_000)).into_bytes());
    cases
}

#[tokio::test]
async fn results_match_nixos_driver() {
    let (_guest, mut shell) = ready_shell().await;
    let (_nixos_guest, io) = Guest::start();
    let mut nixos = NixosShell::connect(io).await;
    for script in torture_cases() {
        let ours = run(&mut shell, Command::new(script.clone())).await;
        let theirs = nixos.execute(&script, None).await;
        assert_eq!(
            (ours.status, &ours.output[..]),
            (theirs.0, &theirs.1[..]),
            "script {:?}",
            String::from_utf8_lossy(&script)
        );
        assert_eq!(ours.exit_status.map(i32::from), Some(ours.status));
    }
    // The same with a (not firing) guest-side timeout, and one that fires.
    let t = Some(Duration::from_secs(30));
    for script in ["echo hi; exit 2", "printf x"] {
        let ours = run(&mut shell, Command::new(script).timeout(t)).await;
        let theirs = nixos.execute(script.as_bytes(), Some("30")).await;
        assert_eq!((ours.status, &ours.output[..]), (theirs.0, &theirs.1[..]));
    }
    let ours = run(
        &mut shell,
        Command::new("echo started; sleep 30").timeout(Some(Duration::from_millis(300))),
    )
    .await;
    let theirs = nixos.execute(b"echo started; sleep 30", Some("0.3")).await;
    assert_eq!((ours.status, &ours.output[..]), (124, &b"started\n"[..]));
    assert_eq!((theirs.0, &theirs.1[..]), (124, &b"started\n"[..]));
}

#[tokio::test]
async fn semantics_spelled_out() {
    let (guest, mut shell) = ready_shell().await;
    let cases: &[(&str, i32, &[u8])] = &[
        ("exit 3", 3, b""),
        ("false | true", 1, b""),
        ("echo $UNSET_VARIABLE_FOR_TEST; echo not reached", 1, b""),
        ("printf 'a\\nb'", 0, b"a\nb"),
        ("true", 0, b""),
        ("echo out; echo err >&2", 0, b"out\n"),
    ];
    for &(script, status, output) in cases {
        let got = run(&mut shell, Command::new(script)).await;
        assert_eq!((got.status, &got.output[..]), (status, output), "{script}");
    }
    // stderr went to the serial console
    assert!(guest.console().contains("err\n"), "{}", guest.console());
    assert!(guest
        .console()
        .contains("UNSET_VARIABLE_FOR_TEST: unbound variable"));
}

#[tokio::test]
async fn large_binary_output_is_exact() {
    let (guest, mut shell) = ready_shell().await;
    let file = guest.dir.path().join("random");
    let script = format!(
        "head -c 10485760 /dev/urandom | tee {}",
        String::from_utf8(shell_quoted(file.to_str().unwrap())).unwrap()
    );
    let got = run(&mut shell, Command::new(script)).await;
    let want = std::fs::read(&file).unwrap();
    assert_eq!(want.len(), 10 << 20);
    assert_eq!(got.status, 0);
    assert!(got.output[..] == want[..], "10 MiB output differs");
    // every byte value
    let all: String = (0..=255u8).map(|b| format!("\\x{b:02x}")).collect();
    let got = run(&mut shell, Command::new(format!("printf '{all}'"))).await;
    assert_eq!(got.output[..], (0..=255u8).collect::<Vec<_>>()[..]);
}

fn shell_quoted(s: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    shell_quote(s.as_bytes(), &mut b);
    b.to_vec()
}

#[tokio::test]
async fn check_return_and_check_output() {
    let (_guest, mut shell) = ready_shell().await;
    let got = run(
        &mut shell,
        Command::new("echo out; exit 5").check_return(false),
    )
    .await;
    assert_eq!((got.status, &got.output[..]), (-1, &b"out\n"[..]));
    assert_eq!(got.exit_status, Some(5));
    // NixOS leaves this reply unread and the next command reads it; here it
    // is skipped.
    let got = run(
        &mut shell,
        Command::new("sleep 0.2; echo ignored; exit 6").check_output(false),
    )
    .await;
    assert_eq!(
        (got.status, &got.output[..], got.exit_status),
        (-2, &b""[..], None)
    );
    let got = run(&mut shell, Command::new("echo next")).await;
    assert_eq!((got.status, &got.output[..]), (0, &b"next\n"[..]));
}

#[tokio::test]
async fn host_timeout_then_late_reply_is_skipped() {
    let (_guest, mut shell) = ready_shell().await;
    let err = shell
        .run(
            &Command::new("sleep 1.5; echo late"),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    let got = run(&mut shell, Command::new("echo on time")).await;
    assert_eq!((got.status, &got.output[..]), (0, &b"on time\n"[..]));
}

#[tokio::test]
async fn stray_output_between_commands_is_dropped() {
    let (guest, mut shell) = ready_shell().await;
    let go = guest.dir.path().join("go");
    let done = guest.dir.path().join("done");
    // A background process that writes to the console once told to.
    let script = format!(
        "(while [ ! -e {go} ]; do sleep 0.02; done; echo stray line > \"$HVC0\"; printf partial > \"$HVC0\"; : > {done}) >/dev/null 2>&1 &",
        go = go.display(),
        done = done.display()
    );
    let got = run(&mut shell, Command::new(script)).await;
    assert_eq!((got.status, &got.output[..]), (0, &b""[..]));
    std::fs::write(&go, b"").unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while !done.exists() {
        assert!(std::time::Instant::now() < deadline, "writer never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = run(&mut shell, Command::new("echo after")).await;
    assert_eq!((got.status, &got.output[..]), (0, &b"after\n"[..]));
    assert_eq!(shell.stray_count(), 2, "'stray line\\n' and 'partial'");
}

#[tokio::test]
async fn background_writer_never_corrupts_attribution() {
    let (guest, mut shell) = ready_shell().await;
    let go = guest.dir.path().join("go");
    let done = guest.dir.path().join("done");
    // The writer starts once this command's reply is in, so that only the
    // commands below race with it.
    let got = run(
        &mut shell,
        Command::new(format!(
            "(while [ ! -e {go} ]; do sleep 0.02; done; for i in $(seq 1 40); do echo \"stray $i\" > \"$HVC0\"; sleep 0.01; done; : > {done}) >/dev/null 2>&1 &",
            go = go.display(),
            done = done.display()
        )),
    )
    .await;
    assert_eq!(got.status, 0);
    std::fs::write(&go, b"").unwrap();
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..60 {
        match shell.run(&Command::new(format!("echo cmd{i}")), LONG).await {
            Ok(got) => {
                assert_eq!(
                    (got.status, &got.output[..]),
                    (0, format!("cmd{i}\n").as_bytes())
                );
                ok += 1;
            }
            // Stray bytes inside this very reply: it is rejected, never
            // mistaken for output.
            Err(Error::MalformedReply { .. } | Error::NonceMismatch { .. }) => rejected += 1,
            Err(e) => panic!("command {i}: {e}"),
        }
    }
    // Once the writer is done, everything is in order again.
    let deadline = std::time::Instant::now() + LONG;
    while !done.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "writer never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = run(&mut shell, Command::new("echo last")).await;
    assert_eq!(&got.output[..], b"last\n");
    assert!(ok > 0);
    // The writer's lines were noticed, between replies or inside one.
    assert!(
        shell.stray_count() + rejected >= 1,
        "the writer's output was not noticed"
    );
}

#[tokio::test]
async fn guest_exit_fails_at_once() {
    let (mut guest, mut shell) = ready_shell().await;
    guest.kill();
    let started = std::time::Instant::now();
    let err = shell.run(&Command::new("true"), LONG).await.unwrap_err();
    assert!(matches!(err, Error::Closed | Error::Io(_)), "{err}");
    assert!(started.elapsed() < LONG / 2);
}

#[tokio::test]
async fn guest_bytes_match_write_reply() {
    // The reference encoder used by the property tests and the fuzz seeds
    // prints what real bash prints.
    let (_guest, mut io) = Guest::start();
    let mut buf = Vec::new();
    while memchr::memmem::find(&buf, MAGIC).is_none() {
        read_some(&mut io, &mut buf).await;
    }
    let at = memchr::memmem::find(&buf, MAGIC).unwrap() + MAGIC.len();
    buf.drain(..at);
    for (nonce, script, status, output) in [
        (1u64, "printf 'hi'; exit 7", 7u8, &b"hi"[..]),
        (12345678901234, "printf '\\377\\0'", 0, &b"\xff\0"[..]),
        (3, "true", 0, &b""[..]),
    ] {
        let mut line = BytesMut::new();
        Command::new(script).encode(nonce, &mut line).unwrap();
        io.write_all(&line).await.unwrap();
        let mut want = BytesMut::new();
        write_reply(nonce, status, output, &mut want);
        while !buf.ends_with(b"#\n") {
            read_some(&mut io, &mut buf).await;
        }
        // the magic line's own newline precedes the first reply
        let got = buf.strip_prefix(b"\n").unwrap_or(&buf);
        assert_eq!(
            got.escape_ascii().to_string(),
            want.escape_ascii().to_string()
        );
        buf.clear();
    }
}
