//! `vmrig vde-switch` stands in for vde2's `vde_switch` as the NixOS driver runs it.

use std::process::Command;

#[test]
fn the_cli_stands_in_for_vde_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'showinfo\\n' | timeout 20 {} vde-switch --sock {} --dirmode 0700 --hub",
            env!("CARGO_BIN_EXE_vmrig"),
            tmp.path().join("sw").display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == "1000 Success"), "{stdout}");
    assert!(
        stdout.lines().any(|l| l.starts_with("VDE switch V.")),
        "{stdout}"
    );
}
