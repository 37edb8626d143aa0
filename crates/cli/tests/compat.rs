//! The `vmrig` binary as NixOS users meet it: both command-line generations,
//! `vmrig run DIR`, exit statuses, `!!!` failure output, and no QEMU left over.

mod common;

use common::{assert_no_qemu_left, assert_success, hello, qemu_of, repo, vmrig, vmrig_in};
use std::time::Duration;

#[test]
fn vmrig_run_passes_and_writes_junit() {
    let out = tempfile::tempdir().unwrap();
    let junit = out.path().join("junit.xml");
    let run = vmrig()
        .args(["run", "--rerun"])
        .arg(repo().join("examples/pair"))
        .arg("-o")
        .arg(out.path())
        .arg("--junit-xml")
        .arg(&junit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("subtest: a cut cable stops traffic"),
        "{stderr}"
    );
    assert!(
        stderr.contains("server # "),
        "console lines are prefixed by the machine name"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<testsuite name=\"pair\" tests=\"2\""),
        "{xml}"
    );
    let subtests = vmrig_driver::read_junit(&xml).unwrap();
    assert_eq!(subtests.len(), 2, "{xml}");
    assert!(subtests.iter().all(|s| s.failure.is_none()), "{xml}");
}

#[test]
fn older_flags_failure_output_and_nixos_imports() {
    let dir = tempfile::tempdir().unwrap();
    let script = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(
        &test,
        "from test_driver.errors import RequestedAssertionFailed\n\
         from test_driver.machine import Machine\n\
         assert isinstance(machine, Machine) and machines == [machine] and vlan1.nr == 1\n\
         try:\n    machine.fail('true')\nexcept RequestedAssertionFailed as e:\n    print('caught', type(e).__name__)\n\
         def check():\n    machine.succeed('echo about to fail; exit 4')\n\
         with subtest('fails'):\n    check()\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // argparse-style: the last word after the greedy --vlans is the script.
    let run = vmrig_in(dir.path())
        .arg("--start-scripts")
        .arg(&script)
        .args(["--vlans", "1"])
        .arg(&test)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(
        stdout.contains("caught RequestedAssertionFailed"),
        "{stdout}"
    );
    let bangs: Vec<&str> = stderr.lines().filter(|l| l.starts_with("!!! ")).collect();
    assert!(
        bangs.iter().any(|l| l.contains("line 9, in check")),
        "{stderr}"
    );
    assert!(
        bangs
            .iter()
            .any(|l| l.starts_with("!!! RequestedAssertionFailed: ") && l.contains("exit code 4")),
        "{stderr}"
    );
    assert!(
        !bangs.iter().any(|l| l.contains("prelude")),
        "only the script's frames: {stderr}"
    );
    assert_no_qemu_left(dir.path());
}

#[test]
fn current_config_json_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let script = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(
        &test,
        "start_all()\nmachine.succeed('true')\nprint(driver.out_dir)\n",
    )
    .unwrap();
    let config = dir.path().join("config.json");
    let json = serde_json::json!({
        "vms": {"machine": {"name": "machine", "start_script": script}},
        "containers": {},
        "vlans": [1],
        "global_timeout": 600,
        "enable_ssh_backdoor": false,
        "test_script": test,
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let run = vmrig_in(dir.path())
        .arg("-c")
        .arg(&config)
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_success(&run);
    assert!(String::from_utf8_lossy(&run.stdout).contains(&*dir.path().to_string_lossy()));
    assert_no_qemu_left(dir.path());

    let mut with_containers = json.clone();
    with_containers["containers"] = serde_json::json!({"c": {"name": "c"}});
    std::fs::write(&config, with_containers.to_string()).unwrap();
    let run = vmrig().arg("-c").arg(&config).output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr)
        .contains("`containers` (systemd-nspawn machines) are not supported"));
}

#[test]
fn usage_errors_are_clear() {
    let run = vmrig().arg("test.py").output().unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("no machines: give --start-scripts"));
    // As with argparse, a trailing non-number after --vlans is the test script.
    let run = vmrig()
        .args(["--start-scripts", "a-vm", "--vlans", "1", "nosuch.py"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("test script nosuch.py does not exist"));
    let run = vmrig()
        .args([
            "--start-scripts",
            "a-vm",
            "--vlans",
            "1",
            "x2",
            "--test-script",
            "t.py",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&run.stderr).contains("`x2` is not a VLAN number"));
    let run = vmrig().args(["--log-level", "loud"]).output().unwrap();
    assert_eq!(run.status.code(), Some(2), "clap's usage error");
}

#[test]
fn ctrl_c_during_a_call_tears_everything_down() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let script = hello(dir.path());
    let test = dir.path().join("test.py");
    // The case: a long wait_until_succeeds (each try sleeps in the guest).
    std::fs::write(
        &test,
        "machine.wait_until_succeeds('echo trying > /dev/ttyS0; sleep 2; false', timeout=600)\n",
    )
    .unwrap();
    let mut child = vmrig_in(dir.path())
        .arg("--start-scripts")
        .arg(&script)
        .args(["--vlans", "1"])
        .arg(&test)
        .arg("-o")
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        // A try says on the serial console that it runs, then sleeps.
        if line.contains("machine # trying") {
            break;
        }
    }
    assert!(seen.contains("machine # trying"), "{seen}");
    assert!(
        !qemu_of(dir.path()).is_empty(),
        "the check below sees this run's QEMU"
    );
    common::signal(&child, common::Signal::INT);
    let status = common::wait_exit(&mut child, Duration::from_secs(60), "running after SIGINT");
    assert_eq!(status.code(), Some(130));
    assert_no_qemu_left(dir.path());
}
