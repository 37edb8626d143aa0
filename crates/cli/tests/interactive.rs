//! Interactive mode in a real terminal (a pty): `vmrig -I` and `vmrig repl`
//! typed at like a person would, down to Ctrl-C, Ctrl-D and the history file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pty::Terminal;
use common::{assert_no_qemu_left, hello, repo, vmrig_in};

const PROMPT: &str = ">>> ";
const SHORT: Duration = Duration::from_secs(20);

/// Types `line` at the Python prompt and waits for `reply`, then the prompt.
fn python(t: &mut Terminal, line: &str, reply: &str) {
    t.send(&format!("{line}\n"));
    t.expect(reply, SHORT);
    t.expect(PROMPT, SHORT);
}

/// Types `line` in a shell_interact session, waits for `reply` and the next prompt.
fn shell(t: &mut Terminal, line: &str, reply: &str) {
    t.send(&format!("{line}\n"));
    t.expect(reply, SHORT);
    t.expect("machine$ ", SHORT);
}

#[test]
fn repl_runs_commands_the_script_and_both_interact_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let script = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(
        &test,
        "start_all()\nprint('script ran:', machine.succeed('echo from-script').strip())\n",
    )
    .unwrap();
    let mut cmd = vmrig_in(dir.path());
    cmd.current_dir(dir.path())
        .env("TERM", "xterm")
        // The plain console whatever the host's Python has (ptpython: below).
        .env("VMRIG_REPL", "plain")
        .arg("-I")
        .arg("--start-scripts")
        .arg(&script)
        .args(["--vlans", "1"])
        .arg(&test);
    let mut t = Terminal::spawn(cmd);
    let banner = t.expect(PROMPT, SHORT);
    assert!(banner.contains("additionally exposed symbols:"), "{banner}");
    assert!(
        banner.contains("machine,\n") || banner.contains("machine,\r\n"),
        "{banner}"
    );

    // The first command boots the machine.
    t.send("machine.succeed(\"echo hi\")\n");
    t.expect("'hi\\n'", Duration::from_secs(90));
    t.expect(PROMPT, SHORT);
    python(&mut t, "test_script()", "script ran: from-script");

    // The guest's shell, line by line; Ctrl-D back to Python.
    python_starts_shell(&mut t);
    shell(&mut t, "echo from-shell-$((6 * 7))", "from-shell-42");
    shell(&mut t, "exit 3", "(exit status 3)");
    t.send("\x04");
    t.expect(PROMPT, SHORT);
    // Ctrl-C ends a shell session too, and the REPL goes on.
    python_starts_shell(&mut t);
    t.send("\x03");
    t.expect(PROMPT, SHORT);

    // A line typed for the serial console reaches the guest's ttyS0.
    python(
        &mut t,
        "machine.succeed(\"stty -F /dev/ttyS0 -echo; (head -n1 /dev/ttyS0 > /tmp/got &)\")",
        "''",
    );
    t.send("machine.console_interact()\n");
    t.expect("Terminal is ready (there is no prompt):", SHORT);
    t.send("typed-on-console\n");
    t.send("\x04");
    t.expect(PROMPT, SHORT);
    python(
        &mut t,
        "machine.succeed(\"timeout 10 sh -c 'until [ -s /tmp/got ]; do sleep 0.1; done'; cat /tmp/got\")",
        "'typed-on-console\\n'",
    );

    // Ctrl-C interrupts a long command at once; the machine stays usable.
    // The command says on the serial console that it runs (the marker is
    // computed, so the terminal's echo of the typed line does not match).
    t.send("machine.succeed(\"echo running-$((6 * 7)) > /dev/ttyS0; sleep 10; echo slept\")\n");
    t.expect("running-42", SHORT);
    let interrupted = Instant::now();
    t.send("\x03");
    t.expect("KeyboardInterrupt", SHORT);
    assert!(
        // Well before the command's 10 s: a busy CI host is slow, not that slow.
        interrupted.elapsed() < Duration::from_secs(6),
        "Ctrl-C took {:?}",
        interrupted.elapsed()
    );
    t.expect(PROMPT, SHORT);
    python(&mut t, "machine.succeed(\"echo after\")", "'after\\n'");
    // A failing call is an exception at the prompt, not the end of the run.
    python(&mut t, "machine.fail(\"true\")", "RequestedAssertionFailed");

    // Ctrl-D leaves: exit status 0, history kept, no QEMU left.
    t.send("\x04");
    let status = t.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", t.screen());
    let history = std::fs::read_to_string(dir.path().join(".nixos-test-history")).unwrap();
    assert!(
        history.contains("machine.succeed(\"echo hi\")"),
        "{history}"
    );
    assert!(history.contains("test_script()"), "{history}");
    assert_no_qemu_left(dir.path());
}

fn python_starts_shell(t: &mut Terminal) {
    t.send("machine.shell_interact()\n");
    t.expect("machine$ ", SHORT);
}

#[test]
fn repl_of_a_test_directory_sees_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let test_dir = dir.path().join("hello");
    std::fs::create_dir(&test_dir).unwrap();
    std::fs::copy(
        repo().join("examples/hello/vmrig.toml"),
        test_dir.join("vmrig.toml"),
    )
    .unwrap();
    std::fs::write(test_dir.join("test.py"), "machine.succeed('true')\n").unwrap();
    let mut cmd = vmrig_in(dir.path());
    cmd.current_dir(dir.path())
        .env("VMRIG_REPL", "plain")
        .arg("repl")
        .arg(&test_dir);
    let mut t = Terminal::spawn(cmd);
    t.expect(PROMPT, Duration::from_secs(60));
    // No machine is used, so none boots.
    t.send("print(sorted(nodes), nodes['machine']['users']['alice']['uid'], machine.is_up())\n");
    t.expect("['machine'] 1000 False", Duration::from_secs(10));
    t.send("exit()\n");
    let status = t.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", t.screen());
    assert_no_qemu_left(dir.path());
}

/// ptpython and its dependencies in a directory of their own, put first on
/// PYTHONPATH: the test does not depend on what the host's Python has.
fn ptpython() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ptpython-3.0.32");
    if !dir.join("ptpython").is_dir() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&dir)
            .arg("ptpython==3.0.32")
            .output()
            .expect("python3 -m pip");
        assert!(
            out.status.success(),
            "pip install ptpython: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

#[test]
#[ignore = "installs ptpython from PyPI (pip install --target) for the REPL"]
fn repl_is_ptpython_when_it_is_importable() {
    let dir = tempfile::tempdir().unwrap();
    let script = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(&test, "start_all()\n").unwrap();
    let mut cmd = vmrig_in(dir.path());
    cmd.current_dir(dir.path())
        .env("TERM", "xterm")
        .env("PYTHONPATH", ptpython())
        .env_remove("VMRIG_REPL")
        .arg("-I")
        .arg("--start-scripts")
        .arg(&script)
        .args(["--vlans", "1"])
        .arg(&test);
    let mut t = Terminal::spawn(cmd);
    t.expect("additionally exposed symbols:", SHORT);
    // ptpython's status bar, which the plain console does not have.
    t.expect("Menu - CPython", SHORT);
    // ptpython reads keys in raw mode: Enter is a carriage return. It colours
    // what it echoes and the values it shows, not what the command prints.
    t.send("print(machine.succeed(\"echo from-$((6 * 7))\").strip())\r");
    t.expect("from-42", Duration::from_secs(90));
    // The next prompt is drawn once ptpython reads keys again; a key sent
    // before that can go to the line discipline in cooked mode and be lost,
    // so ask again until the exit question shows.
    t.expect("Menu - CPython", SHORT);
    let asked = (0..5).any(|_| {
        t.send("\x04");
        t.try_expect("really want to exit?", Duration::from_secs(4))
            .is_some()
    });
    assert!(asked, "Ctrl-D never asked to exit:\n{}", t.screen());
    t.send("y");
    let status = t.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", t.screen());
    assert!(
        std::fs::read_to_string(dir.path().join(".nixos-test-history"))
            .unwrap()
            .contains("echo from-"),
        "ptpython keeps the history file"
    );
    assert_no_qemu_left(dir.path());
}

#[test]
fn a_wrong_vmrig_repl_choice_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let script = hello(dir.path());
    let test = dir.path().join("test.py");
    std::fs::write(&test, "").unwrap();
    for (choice, says) in [
        (
            "fancy",
            "VMRIG_REPL='fancy': expected auto, plain or ptpython",
        ),
        (
            "ptpython",
            "VMRIG_REPL=ptpython, but ptpython cannot be imported",
        ),
    ] {
        let mut cmd = vmrig_in(dir.path());
        cmd.current_dir(dir.path())
            .env("VMRIG_REPL", choice)
            // No ptpython, whatever the host has: PYTHONPATH cannot hide the
            // host's site-packages, so make the import fail on purpose.
            .env("PYTHONPATH", dir.path())
            .arg("-I")
            .arg("--start-scripts")
            .arg(&script)
            .arg(&test);
        if choice == "ptpython" {
            std::fs::create_dir_all(dir.path().join("ptpython")).unwrap();
            std::fs::write(
                dir.path().join("ptpython/__init__.py"),
                "raise ImportError('not here')\n",
            )
            .unwrap();
        }
        let mut t = Terminal::spawn(cmd);
        t.expect(says, SHORT);
        let status = t.wait(Duration::from_secs(30));
        assert_eq!(status.code(), Some(1), "{}", t.screen());
    }
}
