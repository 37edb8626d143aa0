//! Each flag of the NixOS command line, and each error a user can make,
//! through the `vmrig` binary. Errors are checked before anything boots; the
//! flags share two runs with one boot each.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{assert_no_qemu_left, hello, vmrig, vmrig_in, Stopped};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs vmrig with `args` and checks that it fails with `code` saying `says`.
fn fails_with(dir: &Path, args: &[&str], code: i32, says: &str) {
    let out = vmrig().current_dir(dir).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
    assert!(
        stderr(&out).contains(says),
        "{args:?} should say {says:?}: {}",
        stderr(&out)
    );
}

#[test]
fn errors_name_what_went_wrong_before_anything_boots() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("test.py"), "pass\n").unwrap();
    let script = std::fs::canonicalize(d.join("test.py")).unwrap();
    let script = script.to_str().unwrap();
    std::fs::write(d.join("run-plain-vm"), "#!/bin/sh\n").unwrap(); // not executable
    let ok_start = "/bin/true"; // executable; never started below
    let older = |extra: &[&str]| {
        let mut v = vec!["--start-scripts", ok_start, "--vlans", "1"];
        v.extend_from_slice(extra);
        v.push(script);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let as_strs = |v: &Vec<String>| {
        v.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\u{1}")
    };
    let run = |v: Vec<String>, code: i32, says: &str| {
        let joined = as_strs(&v);
        fails_with(d, &joined.split('\u{1}').collect::<Vec<_>>(), code, says);
    };

    // -o: an existing directory we can write in (argparse's type check: usage error 2).
    run(
        older(&["-o", "missing"]),
        2,
        "argument -o/--output_directory: missing is not a directory",
    );
    run(
        older(&["-o", "/proc"]),
        2,
        "/proc is not a writeable directory",
    );
    // The test script and the start scripts.
    fails_with(
        d,
        &["--start-scripts", ok_start, "--vlans", "1", "nosuch.py"],
        1,
        "test script nosuch.py does not exist",
    );
    fails_with(
        d,
        &["--start-scripts", "run-gone-vm", "--vlans", "1", script],
        1,
        "start script run-gone-vm does not exist",
    );
    fails_with(
        d,
        &["--start-scripts", "run-plain-vm", "--vlans", "1", script],
        1,
        "start script run-plain-vm is not executable",
    );
    // VLAN numbers are 1-255.
    for bad in ["0", "300", "1.5"] {
        fails_with(
            d,
            &[
                "--start-scripts",
                ok_start,
                "--vlans",
                bad,
                "--test-script",
                script,
            ],
            1,
            &format!("--vlans: `{bad}` is not a VLAN number (1-255)"),
        );
    }
    // --log-level and logLevel take NixOS's four levels (clap's usage error).
    fails_with(d, &["--log-level", "loud"], 2, "invalid value 'loud'");
    let out = vmrig()
        .env("logLevel", "chatty")
        .arg("--test-script")
        .arg(script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // LOGFILE must be writable.
    let out = vmrig()
        .env("LOGFILE", "/nonexistent/log.xml")
        .args(older(&[]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("LOGFILE=/nonexistent/log.xml: cannot write the XML log"),
        "{}",
        stderr(&out)
    );

    // The JSON config: errors name the file and the bad key.
    let config = d.join("config.json");
    let good = serde_json::json!({
        "vms": {"machine": {"name": "machine", "start_script": "/r/bin/run-machine-vm"}},
        "containers": {}, "vlans": [1], "global_timeout": 600,
        "enable_ssh_backdoor": false, "test_script": script,
    });
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "/vlans",
            serde_json::json!([1, "two"]),
            "`vlans[1]`: invalid type: string \"two\", expected i64",
        ),
        (
            "/vms/machine/start_script",
            serde_json::Value::Null,
            "`vms.machine.start_script`: invalid type: null",
        ),
        (
            "/global_timeout",
            serde_json::json!("an hour"),
            "`global_timeout`: invalid type: string \"an hour\"",
        ),
        (
            "/enable_ssh_backdoor",
            serde_json::json!(true),
            "`enable_ssh_backdoor` is not supported by vmrig yet",
        ),
        (
            "/vms/machine/name",
            serde_json::json!("db"),
            "`vms.machine.name` is `db`",
        ),
        (
            "/test_script",
            serde_json::Value::Null,
            "no `test_script` (and no --test-script)",
        ),
    ];
    for (pointer, value, says) in cases {
        let mut json = good.clone();
        *json.pointer_mut(pointer).unwrap() = value;
        std::fs::write(&config, json.to_string()).unwrap();
        let out = vmrig().arg("-c").arg(&config).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{pointer}: {}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains(&*config.to_string_lossy()) && e.contains(says),
            "{pointer} should say {says:?}: {e}"
        );
    }
    std::fs::write(&config, "{\"vms\": ").unwrap();
    let out = vmrig().arg("-c").arg(&config).output().unwrap();
    assert!(
        stderr(&out).contains("not valid JSON: EOF while parsing"),
        "{}",
        stderr(&out)
    );
}

/// Reads `stderr` lines until one contains `needle`; returns what it read.
fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
    seen: &mut String,
) -> String {
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no line with {needle:?}:\n{seen}");
}

#[test]
fn one_run_with_output_junit_keep_state_log_level_logfile_and_the_debug_hook() {
    let dir = tempfile::tempdir().unwrap();
    let start = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(
        &test,
        "start_all()\n\
         machine.succeed('echo console-line > /dev/ttyS0')\n\
         machine.wait_for_console_text('console-line')\n\
         log.info('an info line')\n\
         log.warning('a warning line')\n\
         with subtest('fails'):\n    value = 6 * 7\n    machine.succeed('exit 5')\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let logfile = dir.path().join("log.xml");
    let mut child = vmrig_in(dir.path())
        .env("LOGFILE", &logfile)
        .arg("--start-scripts")
        .arg(&start)
        .args(["--vlans", "1"])
        .arg(&test)
        .arg("-o")
        .arg(&out)
        .args([
            "--junit-xml",
            "junit.xml",
            "--keep-vm-state",
            "--log-level",
            "warning",
        ])
        .args(["--debug-hook-attach", "attach-cmd"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut child = Stopped(child);
    let mut seen = String::new();
    let line = read_until(
        &mut lines,
        "Breakpoint reached, run 'sudo attach-cmd ",
        &mut seen,
    );
    // NixOS's words, then a `sleep PATTERN` the attach command finds the run by.
    let pattern = line
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches('\'')
        .to_owned();
    assert!(
        pattern.len() == 7 && pattern.parse::<u32>().is_ok(),
        "{line}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while marker_pids(&pattern).len() != 1 {
        assert!(Instant::now() < deadline, "no `sleep {pattern}`");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut pdb = loop {
        match std::net::TcpStream::connect("127.0.0.1:4444") {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no debugger port: {e}\n{seen}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    pdb.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let reply = |pdb: &mut std::net::TcpStream| {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"(Pdb) ") {
            let n = pdb.read(&mut buf).unwrap();
            assert!(n > 0, "pdb closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let first = reply(&mut pdb);
    assert!(
        first.contains("machine.succeed('exit 5')"),
        "pdb starts in the failing frame: {first}"
    );
    pdb.write_all(b"p value\n").unwrap();
    assert!(reply(&mut pdb).starts_with("42\n"));
    pdb.write_all(b"c\n").unwrap();
    let mut rest = String::new();
    for line in lines {
        rest.push_str(&line.unwrap());
        rest.push('\n');
    }
    let status = child.0.wait().unwrap();
    let all = format!("{seen}{rest}");
    assert_eq!(status.code(), Some(1), "{all}");

    // --log-level warning: warnings and console lines, no info lines.
    assert!(all.contains("a warning line"), "{all}");
    assert!(all.contains("machine # console-line"), "{all}");
    assert!(
        !all.contains("an info line") && !all.contains("starting vm"),
        "{all}"
    );
    assert!(
        all.contains(
            "!!! RequestedAssertionFailed: machine: command `exit 5` failed (exit code 5)"
        ),
        "{all}"
    );
    // LOGFILE: NixOS's XML log, well formed, at the same level.
    let xml = std::fs::read_to_string(&logfile).unwrap();
    assert!(
        xml.starts_with("<?xml") && xml.ends_with("</logfile>\n"),
        "{xml}"
    );
    assert!(
        xml.contains("<line machine=\"machine\" type=\"serial\">console-line</line>"),
        "{xml}"
    );
    assert!(
        xml.contains("<head>subtest: fails</head>") && !xml.contains("an info line"),
        "{xml}"
    );
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, xml.dom.minidom; xml.dom.minidom.parse(sys.argv[1])",
        ])
        .arg(&logfile)
        .status()
        .unwrap();
    assert!(parsed.success(), "{xml}");
    // --junit-xml relative to -o.
    let junit = std::fs::read_to_string(out.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"1\""), "{junit}");
    // --keep-vm-state (NixOS's deprecated spelling of -K): the run directory stays.
    assert!(
        kept_state(dir.path()),
        "no vm-state-machine kept under {}",
        dir.path().display()
    );
    assert!(
        marker_pids(&pattern).is_empty(),
        "`sleep {pattern}` left behind"
    );
    assert_no_qemu_left(dir.path());
}

#[test]
fn global_timeout_from_the_environment_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let start = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(&test, "machine.succeed('sleep 300')\n").unwrap();
    let started = Instant::now();
    let out = vmrig_in(dir.path())
        .env("startScripts", &start)
        .env("vlans", "1")
        .env("globalTimeout", "15")
        .env("testScript", &test)
        .arg("-K")
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("global timeout of 15 s reached"),
        "{}",
        stderr(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(kept_state(dir.path()));
    assert_no_qemu_left(dir.path());
}

/// Whether a kept run directory under `dir` holds `vm-state-machine`.
fn kept_state(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with("vmrig-")
            && e.path().join("vm-state-machine").is_dir()
    })
}

/// Pids of live `sleep PATTERN` processes.
fn marker_pids(pattern: &str) -> Vec<u32> {
    let want = format!("sleep\0{pattern}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_string_lossy()
                .parse::<u32>()
                .ok()
                .map(|pid| (pid, e.path()))
        })
        .filter(|(_, p)| std::fs::read(p.join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .filter(|(_, p)| {
            !std::fs::read_to_string(p.join("stat"))
                .unwrap_or_default()
                .contains(") Z")
        })
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn the_embedded_python_finds_its_own_stdlib_whatever_python3_is_on_path() {
    // With the system's python3 first on PATH (or none), an embedded Python
    // that looked its prefix up there loaded the wrong standard library.
    let dir = tempfile::tempdir().unwrap();
    let test = dir.path().join("test.py");
    std::fs::write(
        &test,
        "import math, datetime, json, sys\nprint('stdlib ok', math.sqrt(16), sys.version_info[:2])\n",
    )
    .unwrap();
    for path in ["/usr/bin:/bin", "/nonexistent"] {
        let out = vmrig()
            .env("PATH", path)
            .args(["--start-scripts", "/bin/true", "--vlans", "1"])
            .arg(&test)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "PATH={path}: {}", stderr(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("stdlib ok 4.0"));
    }
}

#[test]
fn global_timeout_ends_a_script_that_never_calls_the_driver_again() {
    let dir = tempfile::tempdir().unwrap();
    let start = hello(dir.path());
    let test = dir.path().join("test.py");
    // Pure Python: no machine call fails when the machines are stopped.
    std::fs::write(&test, "import time\nprint('sleeping')\ntime.sleep(600)\n").unwrap();
    let child = vmrig_in(dir.path())
        .args(["--vlans", "1", "--global-timeout", "2", "--start-scripts"])
        .arg(&start)
        .arg("-o")
        .arg(dir.path())
        .arg(&test)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Stopped(child);
    // Generous: the run ends 2 s + 5 s of grace after it starts.
    let status = common::wait_exit(
        &mut child.0,
        Duration::from_secs(120),
        "running after a 2 s global timeout",
    );
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("global timeout of 2 s reached"), "{err}");
    assert!(
        err.contains("the test script was still running 5 s after the global timeout: exiting"),
        "{err}"
    );
    // The run directory went with it.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmrig-"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn global_timeout_stops_an_ocr_wait_and_no_machine_boots_again() {
    let dir = tempfile::tempdir().unwrap();
    let start = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(
        &test,
        "machine.succeed('true')\nprint('booted', flush=True)\n\
         machine.wait_for_text('text that never shows', timeout=600)\n",
    )
    .unwrap();
    let out = vmrig_in(dir.path())
        .args(["--vlans", "1", "--global-timeout", "25", "--start-scripts"])
        .arg(&start)
        .arg("-o")
        .arg(dir.path())
        .arg(&test)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("booted"),
        "the machine must boot within the timeout for this test: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    let (_, after) = err
        .split_once("global timeout of 25 s reached")
        .unwrap_or_else(|| panic!("no global timeout: {err}"));
    assert!(!after.contains("starting vm"), "booted again: {after}");
    assert!(
        !after.contains("still running"),
        "the wait went on until the hard exit: {after}"
    );
    assert!(
        after.contains("the global timeout stopped every machine"),
        "{after}"
    );
    assert_no_qemu_left(dir.path());
}
