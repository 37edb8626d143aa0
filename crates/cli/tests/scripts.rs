//! The NixOS-style scripts in tests/scripts (written against NixOS's
//! documented test-driver API, not against vmrig) on guest-kit start scripts,
//! each run twice: in the older command-line generation (flags, or the
//! environment defaults) and in the current one (`-c config.json`) under the
//! name `nixos-test-driver`. Every subtest must pass; no QEMU may be left.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_no_qemu_left, assert_success, build_definition, repo, vmrig_as, vmrig_in};

/// How the older generation gets its settings.
enum Older {
    Flags,
    /// `startScripts`, `vlans`, `globalTimeout`, `testScript`.
    Environment,
}

/// Runs tests/scripts/`script` on the `nodes` (machine names) in both
/// generations; `env` adds variables (with the `bin` directory of the
/// start scripts given).
fn run_both_generations(script: &str, nodes: &[&str], older: Older, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_definition(&repo().join("tests/scripts"), dir.path());
    let script = repo().join("tests/scripts").join(script);
    let starts: Vec<PathBuf> = nodes
        .iter()
        .map(|n| bin.join(format!("run-{n}-vm")))
        .collect();
    let env: Vec<(&str, PathBuf)> = env
        .iter()
        .map(|(k, node)| (*k, bin.join(format!("run-{node}-vm"))))
        .collect();

    let out = dir.path().join("older");
    std::fs::create_dir(&out).unwrap();
    let mut cmd = vmrig_in(dir.path());
    cmd.envs(env.iter().cloned()).arg("-o").arg(&out);
    cmd.args(["--junit-xml", "junit.xml"]); // under -o, as in NixOS
    match older {
        Older::Flags => {
            cmd.arg("--start-scripts")
                .args(&starts)
                .args(["--vlans", "1", "--global-timeout", "1800"])
                .arg(&script);
        }
        Older::Environment => {
            let joined: Vec<String> = starts.iter().map(|s| s.display().to_string()).collect();
            cmd.env("startScripts", joined.join(" "))
                .env("vlans", "1")
                .env("globalTimeout", "1800")
                .env("testScript", &script);
        }
    }
    let run = cmd.output().unwrap();
    assert_success(&run);
    assert_all_passed(&out.join("junit.xml"));

    let out = dir.path().join("current");
    std::fs::create_dir(&out).unwrap();
    let vms: serde_json::Map<String, serde_json::Value> = nodes
        .iter()
        .zip(&starts)
        .map(|(n, s)| {
            (
                n.to_string(),
                serde_json::json!({"name": n, "start_script": s}),
            )
        })
        .collect();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "vms": vms, "containers": {}, "vlans": [1], "global_timeout": 1800,
            "enable_ssh_backdoor": false, "test_script": script,
        })
        .to_string(),
    )
    .unwrap();
    let driver = dir.path().join("nixos-test-driver");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vmrig"), &driver).unwrap();
    let run = vmrig_as(&driver)
        .env("TMPDIR", dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .envs(env.iter().cloned())
        .arg("-c")
        .arg(&config)
        .arg("-o")
        .arg(&out)
        .arg("--junit-xml")
        .arg(out.join("junit.xml"))
        .output()
        .unwrap();
    assert_success(&run);
    assert_all_passed(&out.join("junit.xml"));
    assert_no_qemu_left(dir.path());
}

fn assert_all_passed(junit: &Path) {
    let xml = std::fs::read_to_string(junit).unwrap();
    assert!(xml.contains("failures=\"0\""), "{xml}");
    assert!(!xml.contains("tests=\"0\""), "{xml}");
}

#[test]
fn commands_script_in_both_generations() {
    run_both_generations("commands.py", &["machine"], Older::Flags, &[]);
}

#[test]
fn network_script_in_both_generations() {
    run_both_generations("network.py", &["client", "server"], Older::Environment, &[]);
}

#[test]
fn lifecycle_script_in_both_generations() {
    run_both_generations(
        "lifecycle.py",
        &["client"],
        Older::Flags,
        &[("OTHER_START_SCRIPT", "server")],
    );
}
