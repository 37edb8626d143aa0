//! Boot once, restore many, end to end on real busybox guests: a machine is
//! saved when first ready and later runs restore it (same boot, state, clock
//! set, RNG reseeded, shared directory mounted again, console replayed); a
//! damaged snapshot or a changed input boots cold; `--no-snapshots`;
//! `vmrig cache`; two machines restored on one VLAN; two tests restoring one
//! snapshot at once.
//!
//! Each test has its own VMRIG_CACHE_DIR, so its own guests and snapshots.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::vmrig;

/// `vmrig` in `base` with its own cache (guests, snapshots) and temporary files there.
fn vmrig_at(base: &Path) -> std::process::Command {
    let mut c = vmrig();
    c.env("VMRIG_CACHE_DIR", base.join("cache"))
        .env("TMPDIR", base)
        .env_remove("XDG_RUNTIME_DIR")
        .current_dir(base);
    c
}

fn run(base: &Path, args: &[&str]) -> (Output, String) {
    run_env(base, args, &[])
}

fn run_env(base: &Path, args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let out = vmrig_at(base)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// Runs the test directory `dir` (again), returning the run's log.
fn run_test(base: &Path, dir: &Path, extra: &[&str]) -> String {
    run_test_env(base, dir, extra, &[])
}

fn run_test_env(base: &Path, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = vec!["run", "--rerun", "-o", "out"];
    args.extend_from_slice(extra);
    let dir = dir.to_str().unwrap();
    args.push(dir);
    let (out, text) = run_env(base, &args, env);
    assert!(out.status.success(), "{text}");
    std::fs::read_to_string(base.join("out/log.txt")).unwrap()
}

/// The value a script printed as `TAG value`.
fn printed<'a>(log: &'a str, tag: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{tag}` in:\n{log}"))
        .trim()
}

fn has(log: &str, needle: &str) {
    assert!(log.contains(needle), "no `{needle}` in:\n{log}");
}

fn lacks(log: &str, needle: &str) {
    assert!(!log.contains(needle), "`{needle}` in:\n{log}");
}

const SCRIPT: &str = r#"
import os, tempfile, time
print("BOOT", machine.succeed("cat /run/boot-id").strip())
print("RANDOM", machine.succeed("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"))
print("SKEW", abs(int(machine.succeed("date +%s")) - time.time()))
machine.wait_for_console_text("connecting to host")
with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.write("from the host")
machine.copy_from_host(f.name, "/root/host.txt")
assert machine.succeed("cat /root/host.txt") == "from the host"
"#;

/// A service that keeps the kernel's boot id (made on first read) in
/// /run/boot-id at boot: a restored machine has the saved one.
const BOOT_ID: &str = "\n[nodes.NODE.services.bootid]\ncommand = \"cat /proc/sys/kernel/random/boot_id > /run/boot-id\"\n";

fn snapshot_dirs(base: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(base.join("cache/snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("meta.json").is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_machine_is_saved_when_ready_and_later_runs_restore_it() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let dir = base.join("snap");
    std::fs::create_dir_all(&dir).unwrap();
    let toml = |extra: &str| {
        format!("[nodes.machine]\nmemory = 256\nvlans = [1]\n{extra}{BOOT_ID}")
            .replace("NODE", "machine")
    };
    std::fs::write(dir.join("vmrig.toml"), toml("")).unwrap();
    std::fs::write(dir.join("test.py"), SCRIPT).unwrap();

    let cold = run_test(base, &dir, &[]);
    has(&cold, "later runs restore it");
    lacks(&cold, "restored from snapshot");
    let snaps = snapshot_dirs(base);
    let [snap] = &snaps[..] else {
        panic!("one snapshot: {snaps:?}")
    };
    // The guest's RAM is saved apart from the stream, as a sparse file.
    let mem = std::fs::metadata(snap.join("mem")).unwrap();
    assert!(mem.len() == 256 << 20, "{} bytes", mem.len());
    assert!(
        std::fs::metadata(snap.join("ram")).unwrap().len() < 16 << 20,
        "the stream holds device state only"
    );

    // The guest clock stood still while saved: a restore sets it.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let warm = run_test(base, &dir, &[]);
    has(&warm, "restored from snapshot");
    lacks(&warm, "later runs restore it");
    assert_eq!(
        printed(&warm, "BOOT"),
        printed(&cold, "BOOT"),
        "the same boot"
    );
    let skew: f64 = printed(&warm, "SKEW").parse().unwrap();
    assert!(skew <= 2.0, "the guest clock is {skew} s off the host's");
    let again = run_test(base, &dir, &[]);
    has(&again, "restored from snapshot");
    assert_ne!(
        printed(&again, "RANDOM"),
        printed(&warm, "RANDOM"),
        "two restores of one snapshot read different random bytes"
    );

    let (list, text) = run(base, &["cache", "list"]);
    assert!(list.status.success(), "{text}");
    has(&text, snap.file_name().unwrap().to_str().unwrap());
    has(&text, "\tmachine\t");

    // A damaged stream is refused, removed, and the machine boots (and is saved) again.
    let ram = snap.join("ram");
    let len = std::fs::metadata(&ram).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ram)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let damaged = run_test(base, &dir, &[]);
    has(&damaged, "removed, booting cold");
    has(&damaged, "is damaged");
    has(&damaged, "later runs restore it");
    assert_ne!(printed(&damaged, "BOOT"), printed(&cold, "BOOT"));
    // So is a damaged RAM file.
    {
        use std::os::unix::fs::FileExt;
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(snap.join("mem"))
            .unwrap();
        mem.write_all_at(b"damage", 200 << 20).unwrap();
    }
    let damaged_mem = run_test(base, &dir, &[]);
    has(&damaged_mem, "removed, booting cold");
    has(&damaged_mem, "mem is damaged");
    has(&damaged_mem, "later runs restore it");

    // --no-snapshots boots and saves nothing.
    let before = snapshot_dirs(base);
    let plain = run_test(base, &dir, &["--no-snapshots"]);
    lacks(&plain, "restored from snapshot");
    lacks(&plain, "later runs restore it");
    assert_ne!(printed(&plain, "BOOT"), printed(&damaged, "BOOT"));
    assert_eq!(snapshot_dirs(base), before);

    // A kernel parameter is an input: a new snapshot, the old one stays.
    // Without room for a RAM file, the stream holds the RAM: saved and
    // restored all the same.
    std::fs::write(
        dir.join("vmrig.toml"),
        toml("kernel_params = [\"vmrig.test=1\"]\n"),
    )
    .unwrap();
    let no_ram_dir = [("VMRIG_RAM_DIR", "/nonexistent")];
    let changed = run_test_env(base, &dir, &[], &no_ram_dir);
    lacks(&changed, "restored from snapshot");
    has(&changed, "later runs restore it");
    let snaps = snapshot_dirs(base);
    assert_eq!(snaps.len(), 2);
    let streamed = snaps.iter().find(|s| *s != snap).unwrap();
    assert!(!streamed.join("mem").exists());
    let restored = run_test_env(base, &dir, &[], &no_ram_dir);
    has(&restored, "restored from snapshot");
    assert_eq!(printed(&restored, "BOOT"), printed(&changed, "BOOT"));
    // So is the package list.
    std::fs::write(dir.join("vmrig.toml"), toml("packages = [\"jq\"]\n")).unwrap();
    let packages = run_test(base, &dir, &[]);
    lacks(&packages, "restored from snapshot");
    has(&packages, "later runs restore it");
    assert_eq!(snapshot_dirs(base).len(), 3);

    // snapshot = false on the node: boots, saves nothing.
    std::fs::write(dir.join("vmrig.toml"), toml("snapshot = false\n")).unwrap();
    let off = run_test(base, &dir, &[]);
    lacks(&off, "restored from snapshot");
    lacks(&off, "later runs restore it");

    let (clear, text) = run(base, &["cache", "clear", "--snapshots"]);
    assert!(clear.status.success(), "{text}");
    has(&text, "removed 3 machine snapshot(s)");
    assert!(snapshot_dirs(base).is_empty());
}

#[test]
fn restored_machines_share_a_vlan_and_two_tests_restore_one_snapshot_at_once() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let make = |name: &str| {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("vmrig.toml"),
            format!(
                "[nodes.a]\nmemory = 256\nvlans = [1]\n{}\n[nodes.b]\nmemory = 256\nvlans = [1]\n",
                BOOT_ID.replace("NODE", "a")
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("test.py"),
            "start_all()\na.succeed('ping -c 1 -W 10 b')\nb.succeed('ping -c 1 -W 10 a')\n\
             print('BOOT', a.succeed('cat /run/boot-id').strip())\n",
        )
        .unwrap();
        dir
    };
    let (one, two) = (make("one"), make("two"));
    let cold = run_test(base, &one, &[]);
    assert_eq!(cold.matches("later runs restore it").count(), 2, "{cold}");

    let (out, text) = run(
        base,
        &[
            "run",
            "--rerun",
            "-j",
            "2",
            "-o",
            "both",
            one.to_str().unwrap(),
            two.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{text}");
    for t in ["one", "two"] {
        let log = std::fs::read_to_string(base.join("both").join(t).join("log.txt")).unwrap();
        assert_eq!(log.matches("restored from snapshot").count(), 2, "{log}");
        assert_eq!(printed(&log, "BOOT"), printed(&cold, "BOOT"));
    }
}

#[test]
fn nixos_command_lines_use_snapshots_only_when_asked() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (out, text) = run(
        base,
        &[
            "guest",
            "build",
            repo.join("examples/hello").to_str().unwrap(),
            "--out",
            "result",
        ],
    );
    assert!(out.status.success(), "{text}");
    std::fs::write(base.join("test.py"), "machine.succeed('true')\n").unwrap();
    let nixos = |extra: &[&str]| {
        let mut args = vec![
            "--start-scripts",
            "result/bin/run-machine-vm",
            "--vlans",
            "1",
        ];
        args.extend_from_slice(extra);
        args.push("test.py");
        let (out, text) = run(base, &args);
        assert!(out.status.success(), "{text}");
        text
    };
    let plain = nixos(&[]);
    lacks(&plain, "later runs restore it");
    assert!(snapshot_dirs(base).is_empty());
    has(&nixos(&["--snapshots"]), "later runs restore it");
    has(&nixos(&["--snapshots"]), "restored from snapshot");
    lacks(&nixos(&[]), "restored from snapshot");
}

#[test]
fn a_machine_qemu_cannot_migrate_goes_on_unsaved() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let dir = base.join("mounted");
    let export = base.join("export");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&export).unwrap();
    // A second 9p share that stays mounted, as NixOS guests mount /nix/store.
    std::fs::write(
        dir.join("vmrig.toml"),
        "[nodes.machine]\nmemory = 256\nvlans = [1]\n\n[nodes.machine.services.store]\n\
         command = \"mkdir -p /mnt/store && mount -t 9p -o trans=virtio,version=9p2000.L store /mnt/store\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("test.py"),
        "machine.wait_until_succeeds('grep -q /mnt/store /proc/mounts')\n\
         machine.succeed('grep -q \" /tmp/shared \" /proc/mounts')\n",
    )
    .unwrap();
    let out = vmrig_at(base)
        .env(
            "QEMU_OPTS",
            format!(
                "-virtfs local,path={},security_model=none,mount_tag=store",
                export.display()
            ),
        )
        .args(["run", "--rerun", "-o", "out"])
        .arg(&dir)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(base.join("out/log.txt")).unwrap_or_default();
    assert!(out.status.success(), "{log}");
    has(&log, "no snapshot: QEMU cannot save this machine");
    has(&log, "mount_tag");
    assert!(snapshot_dirs(base).is_empty());
}

#[test]
fn a_failed_test_leaves_its_machines_and_vmrig_resume_restores_them() {
    use common::pty::Terminal;
    use std::time::Duration;
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let dir = base.join("fails");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vmrig.toml"),
        "[nodes.machine]\nmemory = 256\nvlans = [1]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("test.py"),
        "machine.succeed('echo written-before-failure > /root/state')\n\
         machine.succeed('setsid sleep 1000 >/dev/null 2>&1 < /dev/null &')\n\
         machine.succeed('test -e /root/never')\n",
    )
    .unwrap();
    let (out, text) = run(
        base,
        &["run", "--rerun", "-o", "out", dir.to_str().unwrap()],
    );
    assert!(!out.status.success(), "{text}");
    let log = std::fs::read_to_string(base.join("out/log.txt")).unwrap();
    has(&log, "saved as it failed");
    has(&log, "vmrig resume");
    assert!(
        base.join("out/machines/machine/meta.json").is_file(),
        "{log}"
    );
    assert!(base.join("out/machines/resume.json").is_file());

    // A passing run leaves no machines behind.
    let passing = base.join("passes");
    std::fs::create_dir_all(&passing).unwrap();
    std::fs::copy(dir.join("vmrig.toml"), passing.join("vmrig.toml")).unwrap();
    std::fs::write(passing.join("test.py"), "machine.succeed('true')\n").unwrap();
    let (ok, text) = run(
        base,
        &[
            "run",
            "--rerun",
            "-o",
            "out-pass",
            passing.to_str().unwrap(),
        ],
    );
    assert!(ok.status.success(), "{text}");
    assert!(!base.join("out-pass/machines").exists());

    let mut cmd = vmrig_at(base);
    cmd.env("TERM", "xterm")
        .env("VMRIG_REPL", "plain")
        .args(["resume", "out"]);
    let mut t = Terminal::spawn(cmd);
    let banner = t.expect(">>> ", Duration::from_secs(60));
    assert!(banner.contains("restored from snapshot"), "{banner}");
    t.send("print('STATE', machine.succeed('cat /root/state').strip())\n");
    t.expect("STATE written-before-failure", Duration::from_secs(30));
    t.send(
        "print('SLEEPING', machine.succeed('cat /proc/[0-9]*/comm | grep -cx sleep').strip())\n",
    );
    t.expect("SLEEPING 1", Duration::from_secs(30));
    t.send("\x04");
    assert!(t.wait(Duration::from_secs(30)).success());
    // Resuming did not change what was saved: it can be resumed again.
    assert!(base.join("out/machines/machine/meta.json").is_file());
}

#[test]
fn the_global_timeout_saves_the_machines_before_stopping_them() {
    let base = tempfile::tempdir().unwrap();
    let base = base.path();
    let dir = base.join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("vmrig.toml"),
        "[nodes.machine]\nmemory = 256\nvlans = [1]\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("test.py"),
        "import time\nmachine.succeed('echo before-timeout > /root/state')\ntime.sleep(600)\n",
    )
    .unwrap();
    let (out, text) = run(
        base,
        &[
            "run",
            "--rerun",
            "--global-timeout",
            "25",
            "-o",
            "out",
            dir.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{text}");
    let log = std::fs::read_to_string(base.join("out/log.txt")).unwrap();
    has(&log, "global timeout");
    has(&log, "saved as it failed");
    has(&log, "vmrig resume");
    assert!(
        base.join("out/machines/machine/meta.json").is_file(),
        "{log}"
    );
}
