//! Boots one node of a built definition the way the NixOS driver does (its
//! VLANs on vde2 switches), waits for the backdoor and runs commands in it.
//!
//! ```text
//! cargo run -p vmrig-guest --example boot -- OUT NODE [COMMAND ...]
//! ```
//! OUT is the output directory of `vmrig guest build`. Prints each command's
//! output and status; exits 1 if any command fails.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vmrig_guest::harness::{Guest, StartOptions, Vde2Switch};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out, node, commands @ ..] = args.as_slice() else {
        eprintln!("usage: boot OUT NODE [COMMAND ...]");
        return ExitCode::from(2);
    };
    match run(out.into(), node, commands) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("boot: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(out: PathBuf, node: &str, commands: &[String]) -> Result<bool, Box<dyn std::error::Error>> {
    let nodes: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("nodes.json"))?)?;
    let vlans: Vec<u8> = nodes[node]["vlans"]
        .as_array()
        .ok_or_else(|| format!("no node `{node}` in {}", out.join("nodes.json").display()))?
        .iter()
        .filter_map(|v| v["id"].as_u64().and_then(|id| u8::try_from(id).ok()))
        .collect();
    let switches_dir = tempfile::tempdir()?;
    let mut switches = Vec::new();
    for vlan in &vlans {
        switches.push((
            *vlan,
            Vde2Switch::start(&switches_dir.path().join(format!("vde{vlan}.ctl")))?,
        ));
    }
    let opts = StartOptions {
        vde_sockets: switches
            .iter()
            .map(|(v, s)| (*v, s.dir().to_owned()))
            .collect(),
        ..Default::default()
    };
    let script = out.join("bin").join(format!("run-{node}-vm"));
    let started = Instant::now();
    let mut guest = Guest::start(&script, &opts)?;
    let took = guest.wait_for_backdoor(Duration::from_secs(120))?;
    eprintln!(
        "boot: {node} reached its backdoor {:.2} s after start",
        took.as_secs_f64()
    );
    let mut all_ok = true;
    for command in commands {
        let (status, output) = guest.run(command, Duration::from_secs(60))?;
        println!("$ {command}");
        print!("{output}");
        if status != 0 {
            println!("(exit status {status})");
            all_ok = false;
        }
    }
    guest.run("poweroff", Duration::from_secs(10)).ok();
    let _ = guest.wait_for_exit(Duration::from_secs(20));
    eprintln!(
        "boot: {node} ran for {:.2} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}
