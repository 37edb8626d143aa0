//! The standalone console: vde_switch's management protocol on stdin/stdout.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vmrig_vde_net::{run_standalone, SwitchOptions};

async fn read_until_status(
    lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("reply within 10 s")
            .unwrap()
            .expect("console still open");
        let done = line.starts_with("1000 ") || line.starts_with("1038 ");
        got.push(line);
        if done {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_like_vde_switch_and_stops_on_eof() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vde1.ctl");
    let (mut to_switch, stdin) = tokio::io::duplex(4096);
    let (stdout, from_switch) = tokio::io::duplex(4096);
    let opts = SwitchOptions::new(&dir).hub(true);
    let task = tokio::spawn(run_standalone(opts, BufReader::new(stdin), stdout));
    let mut lines = BufReader::new(from_switch).lines();

    // The current NixOS driver: showinfo, then wait for `1000 Success`.
    to_switch.write_all(b"showinfo\n").await.unwrap();
    let reply = read_until_status(&mut lines).await;
    assert_eq!(reply[0], "0000 DATA END WITH '.'");
    assert!(reply[1].starts_with("VDE switch V."));
    assert_eq!(reply[reply.len() - 2], ".");
    assert_eq!(reply.last().unwrap(), "1000 Success");
    // The switch is up by the time it answers.
    assert!(dir.join("ctl").exists());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Older drivers: `version`, one line read.
    to_switch.write_all(b"version\n").await.unwrap();
    let reply = read_until_status(&mut lines).await;
    assert_eq!(reply.last().unwrap(), "1000 Success");

    to_switch.write_all(b"no/such/command\n").await.unwrap();
    let reply = read_until_status(&mut lines).await;
    assert_eq!(reply, vec!["1038 Function not implemented"]);

    to_switch.write_all(b"port/showinfo\n").await.unwrap();
    let reply = read_until_status(&mut lines).await;
    assert!(reply.contains(&"HUB=true".to_owned()), "{reply:?}");

    drop(to_switch);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("switch stops when stdin closes")
        .unwrap()
        .unwrap();
    assert!(!dir.join("ctl").exists());
}

#[test]
fn the_cli_stands_in_for_vde_switch() {
    // `vmrig vde-switch` is built by the cli crate; exercise it when it is there.
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/vmrig");
    if !bin.exists() {
        eprintln!("skipping: {} not built", bin.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'showinfo\\n' | timeout 20 {} vde-switch --sock {} --dirmode 0700 --hub",
            bin.display(),
            tmp.path().join("sw").display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.lines().any(|l| l == "1000 Success"), "{stdout}");
}
