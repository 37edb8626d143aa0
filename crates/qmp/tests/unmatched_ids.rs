//! Responses whose id matches no command in flight (a QMP peer that is not
//! QEMU, or a bug) are dropped with a log line; they never satisfy another
//! command. QEMU itself cannot be made to send them, so a scripted peer on a
//! real unix socket plays QEMU here.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use vmrig_qmp::{Client, QueryStatus};

#[tokio::test]
async fn foreign_ids_are_dropped_and_the_right_reply_still_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut answered = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            let cmd: serde_json::Value = serde_json::from_str(&line).unwrap();
            let id = cmd["id"].clone();
            let reply = if cmd["execute"] == "qmp_capabilities" {
                serde_json::json!({"return": {}, "id": id})
            } else {
                // First a reply to nobody, one without an id, then the real one.
                for bogus in [
                    serde_json::json!({"return": {"status": "paused", "singlestep": false, "running": false}, "id": 987654321}),
                    serde_json::json!({"return": {"status": "paused", "singlestep": false, "running": false}}),
                ] {
                    write
                        .write_all(format!("{bogus}\r\n").as_bytes())
                        .await
                        .unwrap();
                }
                answered += 1;
                serde_json::json!({"return": {"status": "running", "singlestep": false, "running": true}, "id": id})
            };
            write
                .write_all(format!("{reply}\r\n").as_bytes())
                .await
                .unwrap();
        }
        answered
    });

    let qmp = Client::connect(&path, Duration::from_secs(10))
        .await
        .unwrap();
    for _ in 0..3 {
        let status = tokio::time::timeout(Duration::from_secs(10), qmp.execute(QueryStatus))
            .await
            .expect("the real reply arrives")
            .unwrap();
        assert!(
            status.running,
            "a reply with a foreign id was taken for ours"
        );
    }
    drop(qmp);
    assert_eq!(peer.await.unwrap(), 3);
}
