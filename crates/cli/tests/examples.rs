//! The examples run end to end through `vmrig run`, as a new user runs them:
//! each passes, a second run with unchanged inputs answers from the result
//! cache, and a third forced one restores every machine from its snapshot. The debian ones (the nix.dev tutorial's tests) build Debian images
//! on first use and boot systemd guests: they are `#[ignore]`d so a plain
//! `cargo test` stays quick, and `./test.sh` runs them in its second pass.
//!
//! They use the default guest cache (or `$VMRIG_CACHE_DIR`), so the Debian
//! images are built once per machine, not once per test binary.

use std::path::Path;
use std::process::Command;

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn vmrig() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmrig"));
    c.current_dir(repo())
        .env("NO_COLOR", "1")
        .env_remove("startScripts")
        .env_remove("vlans")
        .env_remove("testScript")
        .env_remove("logLevel");
    c
}

/// Runs `examples/<name>` (forcing a real run), then again, which must be
/// cached, then (with `restore`) forced again, which must restore every
/// machine. Returns the output directory (and the temporary directory holding it).
fn run_example(name: &str, restore: bool) -> (tempfile::TempDir, std::path::PathBuf) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join(name);
    let dir = format!("examples/{name}");
    let first = vmrig()
        .args(["run", &dir, "--rerun", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&first.stdout);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(
        first.status.success(),
        "examples/{name} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 test(s): 1 passed, 0 cached"),
        "{stdout}\n{stderr}"
    );

    let second = vmrig()
        .args(["run", &dir, "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 test(s): 0 passed, 1 cached"),
        "the second run of examples/{name} is not cached:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("vmrig: {name}: cached: passed")),
        "{stderr}"
    );

    if !restore {
        return (out_dir, out);
    }
    // Forced again: every machine is restored from the snapshot the first run saved.
    let third = vmrig()
        .args(["run", &dir, "--rerun", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&third.stdout);
    let stderr = String::from_utf8_lossy(&third.stderr);
    assert!(
        third.status.success(),
        "examples/{name} failed after a restore:\n{stdout}\n{stderr}"
    );
    let log = std::fs::read_to_string(out.join("log.txt")).unwrap();
    assert!(log.contains("restored from snapshot"), "{log}");
    assert!(
        !log.contains("later runs restore it"),
        "a machine booted instead of being restored:\n{log}"
    );
    (out_dir, out)
}

#[test]
fn hello() {
    run_example("hello", true);
}

#[test]
#[ignore = "slow: builds a Debian image with firefox-esr on first use, boots systemd; ./test.sh runs it"]
fn minimal() {
    run_example("minimal", true);
}

#[test]
#[ignore = "slow: builds a Debian image with PostgreSQL on first use, boots two systemd guests; ./test.sh runs it"]
fn postgrest() {
    run_example("postgrest", true);
}

#[test]
#[ignore = "slow: builds a Debian image with Xorg and firefox-esr on first use, waits for firefox under TCG; ./test.sh runs it"]
fn screenshot() {
    // Not restored again: its OCR waits take minutes in a debug build.
    let (_tmp, out) = run_example("screenshot", false);
    // machine.screenshot("screen") left a PNG of the X screen in the output directory.
    assert_firefox_screenshot(&out);
}

#[test]
#[ignore = "slow: builds a Debian image with sway and firefox-esr on first use, waits for firefox on Wayland under TCG; ./test.sh runs it"]
fn wayland() {
    let (_tmp, out) = run_example("wayland", false);
    // The screenshot is of the Wayland session: firefox's window, whose page
    // the script has read back with OCR before taking it.
    assert_firefox_screenshot(&out);
}

/// `machine.screenshot("screen")` left a PNG of a firefox window in the output directory.
fn assert_firefox_screenshot(out: &Path) {
    let png = std::fs::read(out.join("screen.png")).expect("screen.png in the output directory");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 4096,
        "a {} byte PNG is too small for a firefox window",
        png.len()
    );
}
