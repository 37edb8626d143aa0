//! Edge cases of the tokio adapter that need no shell: a guest that stays
//! silent, or goes away before its backdoor starts.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use vmrig_backdoor::{Command, Error, Shell};

#[tokio::test]
async fn silent_guest_times_out() {
    let (host, _guest) = tokio::io::duplex(1024);
    let mut shell = Shell::new(host);
    let err = shell
        .wait_ready(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains("the backdoor shell to start"),
        "{err}"
    );
    assert!(!shell.is_ready());
}

#[tokio::test]
async fn guest_gone_before_magic_line_fails_at_once() {
    let (host, mut guest) = tokio::io::duplex(1024);
    guest.write_all(b"kernel panic\n").await.unwrap();
    drop(guest);
    let mut shell = Shell::new(host);
    let err = shell
        .run(&Command::new("true"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed), "{err}");
    assert_eq!(
        err.to_string(),
        "guest closed the backdoor shell (did the VM stop, crash or power off?)"
    );
}

#[tokio::test]
async fn nul_in_script_is_refused_before_sending() {
    let (host, _guest) = tokio::io::duplex(1024);
    let mut shell = Shell::ready(host);
    let err = shell
        .run(&Command::new(&b"echo \0"[..]), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NulInScript { offset: 5, .. }), "{err}");
}
