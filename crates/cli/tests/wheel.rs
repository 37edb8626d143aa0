//! `pip install ./crates/pyshim` into a fresh virtualenv (maturin from PyPI,
//! a release build of the extension module), then NixOS-style tests written
//! as plain Python programs against a busybox guest: `from vmrig import
//! Driver`. Ignored by default: it needs PyPI and takes minutes (the release
//! build); run it with `cargo test -p vmrig --test wheel -- --ignored`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{assert_no_qemu_left, assert_success, hello, repo, Stopped};

/// A virtualenv with vmrig installed from this checkout; returns its python.
fn venv_with_vmrig() -> std::path::PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wheel-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        assert_success(
            &Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .output()
                .unwrap(),
        );
    }
    let pip = |args: &[&str]| {
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert_success(&out);
    };
    pip(&["maturin>=1.5,<2"]);
    pip(&["--force-reinstall", "--no-deps", "./crates/pyshim"]);
    python
}

const PROGRAM: &str = r#"
import sys
from pathlib import Path

from vmrig import Driver, RequestedAssertionFailed
from test_driver.errors import MachineError  # importable as in NixOS, after `import vmrig`

start_script, out_dir = sys.argv[1], sys.argv[2]
with Driver(start_scripts=[start_script], vlans=[1], out_dir=out_dir,
            junit_xml=Path(out_dir) / "junit.xml", global_timeout=600) as d:
    symbols = d.test_symbols()
    for name in ("start_all", "machine", "machines", "vlan1", "subtest", "t", "retry", "log"):
        assert name in symbols, name
    d.start_all()
    with d.subtest("commands"):
        assert d.machine.succeed("echo hi") == "hi\n"
        d.t.assertEqual(d.machine.execute("exit 3"), (3, ""))
        try:
            d.machine.succeed("false")
        except RequestedAssertionFailed:
            print("caught RequestedAssertionFailed")
    d.machine.copy_from_vm("/etc/hostname")
print("plain python passed:", (Path(out_dir) / "hostname").read_text().strip())
"#;

#[test]
#[ignore = "needs PyPI (maturin) and a release build: minutes"]
fn pip_installed_vmrig_runs_a_plain_python_test() {
    let started = Instant::now();
    let python = venv_with_vmrig();
    eprintln!("venv and wheel: {:.0} s", started.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let start = hello(dir.path());
    let program = dir.path().join("plain.py");
    std::fs::write(&program, PROGRAM).unwrap();
    let out = Command::new(&python)
        .arg(&program)
        .arg(&start)
        .arg(dir.path())
        .env("TMPDIR", dir.path())
        .env("NO_COLOR", "1")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("caught RequestedAssertionFailed"),
        "{stdout}"
    );
    assert!(stdout.contains("plain python passed: machine"), "{stdout}");
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");
    assert_no_qemu_left(dir.path());

    // Ctrl-C in a plain program: KeyboardInterrupt at once, machines stopped.
    let program = dir.path().join("interrupted.py");
    std::fs::write(
        &program,
        "import signal, sys\n\
         # Python ignores SIGINT if it started ignored (a background job): not here.\n\
         signal.signal(signal.SIGINT, signal.default_int_handler)\n\
         from vmrig import Driver\n\
         with Driver(start_scripts=[sys.argv[1]], vlans=[1]) as d:\n\
         \x20   d.machine.connect()\n\
         \x20   print('connected', flush=True)\n\
         \x20   d.machine.succeed('echo sleeping > /dev/ttyS0; sleep 300')\n",
    )
    .unwrap();
    let mut child = Command::new(&python)
        .arg(&program)
        .arg(&start)
        .env("TMPDIR", dir.path())
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut child = Stopped(child);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "connected\n");
    // The guest's command says on the serial console that it runs.
    let (mut seen, mut lines) = (String::new(), std::io::BufRead::lines(stderr));
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("machine # sleeping") {
            break;
        }
    }
    assert!(seen.contains("machine # sleeping"), "{seen}");
    common::signal(&child.0, common::Signal::INT);
    let interrupted = Instant::now();
    let status = child.0.wait().unwrap();
    assert!(
        interrupted.elapsed() < Duration::from_secs(15),
        "took {:?}",
        interrupted.elapsed()
    );
    assert!(!status.success(), "{status:?}");
    let stderr: String = lines.map(|l| l.unwrap() + "\n").collect();
    assert!(
        stderr.contains("KeyboardInterrupt") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_no_qemu_left(dir.path());
}
