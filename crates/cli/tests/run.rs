//! `vmrig run DIR...` end to end: parallel tests with a summary, the result
//! cache (hits, --rerun, invalidation, failures never cached, clearing),
//! --partition, bad inputs, SIGTERM, and `vmrig doctor` on this host.
//!
//! Each test has its own VMRIG_CACHE_DIR (so its own result cache; guests are
//! built from scratch there in a second or two). Only two tests boot a guest.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::vmrig;

/// `vmrig` with a private cache under `base` and temporary files in it, so
/// every process of the run names `base` on its command line.
fn vmrig_at(base: &Path) -> Command {
    let mut c = vmrig();
    c.env("VMRIG_CACHE_DIR", base.join("cache"))
        .env("TMPDIR", base)
        .env_remove("XDG_RUNTIME_DIR")
        .current_dir(base);
    c
}

/// Runs `vmrig ARGS` as [`vmrig_at`] does.
fn vmrig_out(base: &Path, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Output {
    vmrig_at(base).args(args).output().unwrap()
}

/// A test directory `base/name` with one busybox node and this script.
fn test_dir(base: &Path, name: &str, script: &str) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vmrig.toml"),
        "[nodes.machine]\nmemory = 256\nvlans = [1]\n",
    )
    .unwrap();
    std::fs::write(dir.join("test.py"), script).unwrap();
    dir
}

/// Asserts that `haystack` contains `needle`, showing all of it if not.
fn has(haystack: &str, needle: &str) {
    assert!(haystack.contains(needle), "no `{needle}` in:\n{haystack}");
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The summary row of `test`: its result word and output column.
fn row<'a>(stdout: &'a str, test: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&test))
        .unwrap_or_else(|| panic!("no summary row for {test} in:\n{stdout}"))
}

fn assert_nothing_cached(base: &Path) {
    let list = vmrig_out(base, ["cache", "list"]);
    has(&text(&list).0, "no cached results");
}

/// `START t` / `END t` lines a script printed, as seconds since the epoch.
fn span(log: &str) -> (f64, f64) {
    let at = |tag: &str| -> f64 {
        log.lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} in:\n{log}"))
            .trim()
            .parse()
            .unwrap()
    };
    (at("START "), at("END "))
}

#[test]
fn two_dirs_in_parallel_then_cached_until_something_changes() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    // `boots` boots a real guest; `sleeps` only waits, so the two overlap if
    // and only if they run at the same time.
    let boots = test_dir(
        base,
        "boots",
        "import time\nprint('START', time.time())\n\
         assert machine.succeed('hostname').strip() == 'machine'\n\
         print('END', time.time())\n",
    );
    let sleeps = test_dir(
        base,
        "sleeps",
        "import time\nprint('START', time.time())\ntime.sleep(3)\nprint('END', time.time())\n",
    );
    let run = |extra: &[&str]| {
        vmrig_at(base)
            .args(["run", "-j", "2", "-o", "out"])
            .args(extra)
            .arg(&boots)
            .arg(&sleeps)
            .output()
            .unwrap()
    };

    let first = run(&[]);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "boots")[1..=1], ["passed"], "{stdout}");
    assert_eq!(row(&stdout, "sleeps")[1..=1], ["passed"], "{stdout}");
    assert_eq!(row(&stdout, "boots").last(), Some(&"out/boots"));
    assert!(stdout.contains("2 test(s): 2 passed, 0 cached, 0 failed"));
    assert!(
        stderr.contains("[boots] ") && stderr.contains("[sleeps] "),
        "several tests: plain lines prefixed with the test's name\n{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "no escape codes without a TTY");
    let log = |t: &str| std::fs::read_to_string(base.join("out").join(t).join("log.txt")).unwrap();
    let (b, s) = (span(&log("boots")), span(&log("sleeps")));
    assert!(
        b.0 < s.1 && s.0 < b.1,
        "the tests overlap in time: {b:?} {s:?}"
    );
    assert!(base.join("out/boots/junit.xml").is_file());

    // Unchanged: both come from the cache, at once, and say where the result is.
    let start = Instant::now();
    let second = run(&[]);
    let elapsed = start.elapsed();
    let (stdout, stderr) = text(&second);
    assert!(second.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "boots")[1..=1], ["cached"], "{stdout}");
    assert_eq!(row(&stdout, "sleeps")[1..=1], ["cached"], "{stdout}");
    assert!(
        stderr.contains("vmrig: boots: cached: passed") && stderr.contains("result in out/boots"),
        "{stderr}"
    );
    eprintln!("cached re-run of two tests: {elapsed:?}");
    // Well under a second when idle; the bound leaves room for a busy 2-core CI machine.
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert_eq!(log("sleeps").matches("START").count(), 1, "not run again");

    // A changed script runs again; the other test stays cached.
    std::fs::write(sleeps.join("test.py"), "print('START 0')\nprint('END 1')\n").unwrap();
    let third = run(&[]);
    let (stdout, stderr) = text(&third);
    assert!(third.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "sleeps")[1..=1], ["passed"], "{stdout}");
    assert_eq!(row(&stdout, "boots")[1..=1], ["cached"], "{stdout}");
    assert_eq!(span(&log("sleeps")), (0.0, 1.0));

    // --rerun runs even an unchanged test (here the one that does not boot).
    let rerun = vmrig_at(base)
        .args(["run", "--rerun", "-o", "out/sleeps"])
        .arg(&sleeps)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&rerun);
    assert!(rerun.status.success(), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "sleeps")[1..=1], ["passed"], "{stdout}");
    assert!(
        stderr.contains("START 0"),
        "one test: its log is shown as is\n{stderr}"
    );

    // Clearing one test's results (by directory: those of its first script
    // and of the changed one) runs it again; the other stays cached.
    let clear = vmrig_at(base)
        .args(["cache", "clear"])
        .arg(&sleeps)
        .output()
        .unwrap();
    let (stdout, _) = text(&clear);
    assert!(clear.status.success());
    has(&stdout, "removed 2 cached result(s) for");
    let fourth = run(&[]);
    let (stdout, _) = text(&fourth);
    assert_eq!(row(&stdout, "sleeps")[1..=1], ["passed"], "{stdout}");
    assert_eq!(row(&stdout, "boots")[1..=1], ["cached"], "{stdout}");

    // By name, then everything.
    let clear = vmrig_out(base, ["cache", "clear", "boots"]);
    assert!(text(&clear)
        .0
        .contains("removed 1 cached result(s) for boots"));
    let clear = vmrig_out(base, ["cache", "clear"]);
    has(&text(&clear).0, "removed 1 cached result(s) from");
    assert_nothing_cached(base);
    common::assert_no_qemu_left(base);
}

#[test]
fn a_tests_time_leaves_out_its_wait_for_a_slot() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    // No machine is used: each test only sleeps, and with one slot the second
    // waits for the first.
    let script = "import time\ntime.sleep(2)\n";
    let (a, b) = (test_dir(base, "a", script), test_dir(base, "b", script));
    let out = vmrig_at(base)
        .args(["run", "-j", "1", "-o", "out"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let secs = |cell: &str| -> f64 { cell.parse().unwrap() };
    let (ta, tb) = (secs(row(&stdout, "a")[2]), secs(row(&stdout, "b")[2]));
    // The same work takes about the same time; counting b's wait for a's slot
    // would add all of a's run (over 2 s) to b's.
    assert!(ta >= 2.0 && tb >= 2.0, "{stdout}");
    assert!((tb - ta).abs() < 1.5, "{stdout}");
}

#[test]
fn a_failing_test_is_never_cached() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let dir = test_dir(
        base,
        "fails",
        "print('RAN')\nassert 1 + 1 == 3, 'arithmetic is off'\n",
    );
    for _ in 0..2 {
        let run = vmrig_at(base).arg("run").arg(&dir).output().unwrap();
        let (stdout, stderr) = text(&run);
        assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
        assert_eq!(row(&stdout, "fails")[1..=1], ["FAILED"], "{stdout}");
        has(&stderr, "arithmetic is off");
        has(&stderr, "log in vmrig-out/fails/log.txt");
        let log = std::fs::read_to_string(base.join("vmrig-out/fails/log.txt")).unwrap();
        assert!(log.contains("RAN"), "ran again, not from the cache: {log}");
    }
    assert_nothing_cached(base);
}

#[test]
fn partitions_split_a_suite_deterministically() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let names = ["e", "a", "d", "b", "c"];
    let dirs: Vec<PathBuf> = names
        .iter()
        .map(|n| test_dir(base, n, &format!("print('ran {n}')\n")))
        .collect();
    let mut seen = Vec::new();
    for k in 1..=2 {
        let junit = base.join(format!("shard{k}.xml"));
        let run = vmrig_at(base)
            .args(["run", "--partition", &format!("{k}/2"), "--junit-xml"])
            .arg(&junit)
            .args(&dirs)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&run);
        assert!(run.status.success(), "{stdout}\n{stderr}");
        let ran: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| stdout.lines().any(|l| l.starts_with(&format!("{n} "))))
            .collect();
        let xml = std::fs::read_to_string(&junit).unwrap();
        for n in &ran {
            assert!(xml.contains(&format!("<testsuite name=\"{n}\"")), "{xml}");
        }
        assert_eq!(xml.matches("<testsuite ").count(), ran.len(), "{xml}");
        seen.push(ran);
    }
    // Sorted a b c d e: share 1 takes the 1st, 3rd and 5th, share 2 the others.
    let mut sorted = seen.clone();
    for s in &mut sorted {
        s.sort_unstable();
    }
    assert_eq!(sorted, [vec!["a", "c", "e"], vec!["b", "d"]]);

    let bad = vmrig_at(base)
        .args(["run", "--partition", "3/2"])
        .args(&dirs)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    has(&text(&bad).1, "`3/2` is not K/N");
}

#[test]
fn bad_inputs_name_what_is_wrong_and_where() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let no_script = base.join("no-script");
    std::fs::create_dir(&no_script).unwrap();
    std::fs::write(no_script.join("vmrig.toml"), "[nodes.machine]\n").unwrap();
    let empty = base.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = vmrig_out(base, ["run", "missing", "no-script", "empty"]);
    let (stdout, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    has(&stderr, "test directory missing does not exist");
    has(&stderr, "no-script has no test.py");
    has(&stderr, "empty has no vmrig.toml and no test.py");
    assert!(stdout.is_empty(), "nothing ran: {stdout}");

    // A definition error is the test's error, named by file, node and field.
    let typo = test_dir(base, "typo", "print('never')\n");
    std::fs::write(typo.join("vmrig.toml"), "[nodes.machine]\nmemroy = 1\n").unwrap();
    let run = vmrig_at(base).arg("run").arg(&typo).output().unwrap();
    let (stdout, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "typo")[1..=1], ["ERROR"], "{stdout}");
    assert!(
        stderr.contains("typo/vmrig.toml: node `machine`") && stderr.contains("memroy"),
        "{stderr}"
    );

    // Two directories with one name would share an output directory.
    let other = base.join("other");
    test_dir(&other, "typo", "print('x')\n");
    let run = vmrig_out(base, ["run", "typo", "other/typo"]);
    assert_eq!(run.status.code(), Some(1));
    has(&text(&run).1, "two tests are named `typo`");
}

#[test]
fn sigterm_stops_every_test_and_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader};
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let boots = test_dir(
        base,
        "boots",
        "machine.succeed('echo sleeping > /dev/ttyS0; sleep 600')\n",
    );
    let waits = test_dir(
        base,
        "waits",
        "import time\nprint('waiting', flush=True)\ntime.sleep(600)\n",
    );
    let mut child = vmrig_at(base)
        .args(["run", "-j", "2"])
        .arg(&boots)
        .arg(&waits)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (mut booted, mut waiting, mut seen) = (false, false, String::new());
    let mut lines = stderr.lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        // The guest's command says on the serial console that it runs.
        booted |= line.starts_with("[boots]") && line.contains("machine # sleeping");
        waiting |= line == "[waits] waiting";
        if booted && waiting {
            break;
        }
    }
    assert!(booted && waiting, "{seen}");
    assert!(
        common::qemu_of(base).len() >= 3,
        "the run, its children and a QEMU name {base:?}"
    );
    common::signal(&child, common::Signal::TERM);
    // Keep reading, so the run never blocks on a full pipe.
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let status = common::wait_exit(&mut child, Duration::from_secs(60), "running after SIGTERM");
    let rest = reader.join().unwrap().join("\n");
    assert_eq!(status.code(), Some(143), "{rest}");
    has(&rest, "vmrig: boots: interrupted");
    common::assert_no_qemu_left(base);
}

#[test]
fn doctor_checks_this_host() {
    let run = vmrig().arg("doctor").output().unwrap();
    let (stdout, stderr) = text(&run);
    // This machine has everything vmrig needs (the tests above boot guests).
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for (check, status) in [
        ("qemu", "OK"),
        ("qemu-img", "OK"),
        ("kernel", "OK"),
        ("busybox-static", "OK"),
        ("python", "OK"),
        ("vde2", "OK"),
        ("tesseract", "OK"),
        ("debootstrap", "OK"),
    ] {
        assert_eq!(row(&stdout, check)[1], status, "{stdout}");
    }
    has(&stdout, "QEMU emulator version");
    has(&stdout, "/lib/modules/");
    has(&stdout, "Python 3.");
    // KVM works or the probe says why guests fall back to TCG.
    let kvm = row(&stdout, "kvm");
    assert!(
        kvm[1] == "OK" || (kvm[1] == "TCG" && stdout.contains("guests run under TCG")),
        "{stdout}"
    );
    assert!(stdout.contains("vmrig can run tests on this host."));
}

#[test]
fn doctor_reports_qemu_parts_of_different_releases() {
    // A qemu-img of another release beside QEMU, as apt can leave a backport.
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("qemu-img");
    std::fs::write(
        &img,
        "#!/bin/sh\necho 'qemu-img version 99.0.1 (Debian 1:99.0.1+ds-1~bpo12+1)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = vmrig()
        .env("PATH", path)
        .args(["doctor", "--no-probe"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&run);
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(row(&stdout, "qemu-img")[1], "MISSING", "{stdout}");
    has(&stdout, "is QEMU 99.0.1 but qemu-system-x86_64 is QEMU ");
    has(&stdout, "install both from one release");
    has(&stdout, "missing, required: qemu-img");
}

#[test]
fn driver_only_tests_and_ocr_turned_off() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // No nodes: a script that only uses the driver (NixOS allows it).
    let bare = base.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("vmrig.toml"), "").unwrap();
    std::fs::write(
        bare.join("test.py"),
        "import os\nfrom pathlib import Path\n\
         assert machines == [] and vlans == []\n\
         assert isinstance(driver.out_dir, Path), repr(driver.out_dir)\n\
         assert Path(os.environ['out']) == driver.out_dir, (os.environ['out'], driver.out_dir)\n\
         with subtest('nothing to boot'):\n    pass\n",
    )
    .unwrap();
    // enable_ocr = false: OCR fails at once with NixOS's words, before any boot.
    let blind = test_dir(
        base,
        "blind",
        "try:\n    machine.wait_for_text('foobar')\nexcept Exception as e:\n    \
         assert 'OCR requested but enableOCR is false' in str(e), str(e)\nelse:\n    \
         raise Exception('OCR was on')\nassert not machine.booted\n\
         from pathlib import Path\n\
         assert all(isinstance(p, Path) for p in (machine.out_dir, machine.state_dir, machine.shared_dir))\n\
         try:\n    log.error('log.error ends the script, as in NixOS')\nexcept SystemExit as e:\n    \
         assert e.code == 1\nelse:\n    raise Exception('log.error returned')\n",
    );
    let toml = std::fs::read_to_string(blind.join("vmrig.toml")).unwrap();
    std::fs::write(
        blind.join("vmrig.toml"),
        format!("enable_ocr = false\n{toml}"),
    )
    .unwrap();
    let out = vmrig_out(base, ["run", "-j", "2", "bare", "blind"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    has(&stdout, "2 test(s): 2 passed");
}
