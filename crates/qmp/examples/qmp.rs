//! Run one QMP command against a running QEMU and print its JSON return value.
//!
//! ```text
//! cargo run -p vmrig-qmp --example qmp -- SOCKET COMMAND [JSON-ARGS]
//! cargo run -p vmrig-qmp --example qmp -- /tmp/qmp.sock query-status
//! cargo run -p vmrig-qmp --example qmp -- /tmp/qmp.sock set_link '{"name": "nic0", "up": false}'
//! ```
//!
//! Exit status: 0 on success, 1 when QEMU answers with an error (its class and
//! description go to stderr), 2 on bad usage or when QEMU cannot be reached.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use vmrig_qmp::{Client, Error};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (socket, command, arguments) = match args.as_slice() {
        [socket, command] => (socket, command, Value::Null),
        [socket, command, json] => match serde_json::from_str::<Value>(json) {
            Ok(v @ Value::Object(_)) => (socket, command, v),
            Ok(other) => {
                eprintln!("error: JSON-ARGS must be a json object, not {other}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("error: JSON-ARGS is not valid json: {e}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: qmp SOCKET COMMAND [JSON-ARGS]");
            return ExitCode::from(2);
        }
    };
    let client = match Client::connect(socket, Duration::from_secs(10)).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match client.execute_raw(command, arguments).await {
        Ok(ret) => {
            // A Value always serializes.
            println!("{}", serde_json::to_string_pretty(&ret).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(Error::Command { class, desc, .. }) => {
            eprintln!("error: {class}: {desc}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
