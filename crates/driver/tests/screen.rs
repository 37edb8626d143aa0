//! The screen: keys typed with send_chars into a shell on tty1, read back by
//! OCR (tesseract), screenshots, and the TTY helpers. Uses a `graphics` node.

use std::path::Path;
use std::time::Duration;

use vmrig_driver::{Driver, DriverOptions};

#[test]
fn keys_in_ocr_out() {
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("vmrig.toml");
    std::fs::write(
        &def,
        "[nodes.desk]\nvlans = []\ngraphics = true\n\
         [nodes.desk.services.tty1-shell]\ncommand = \"exec setsid sh -c 'exec sh </dev/tty1 >/dev/tty1 2>&1'\"\n",
    )
    .unwrap();
    let opts = vmrig_guest::BuildOptions {
        cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
        ..Default::default()
    };
    vmrig_guest::build(&def, &dir.path().join("result"), &opts).unwrap();
    let mut dopts = DriverOptions::new(vec![dir.path().join("result/bin/run-desk-vm")]);
    dopts.out_dir = dir.path().join("out");
    let driver = Driver::new(dopts).unwrap();
    let m = driver.machine("desk").unwrap();
    m.connect().unwrap();

    // The NixOS character map: upper case, symbols and Enter reach the shell.
    m.send_chars(
        "clear; echo Typed:$((6*7))_OK\n",
        Some(Duration::from_millis(20)),
    )
    .unwrap();
    if let Err(e) = m.wait_until_tty_matches("1", "Typed:42_OK", Duration::from_secs(60)) {
        panic!(
            "{e}\ntty1: {:?}\nps: {}",
            m.get_tty_text("1"),
            m.succeed(&["ps"], None).unwrap()
        );
    }
    // OCR is not exact (it reads `Typed :42_0K` here): allow for that.
    if let Err(e) = m.wait_for_text(r"Typed\W{0,3}42", Duration::from_secs(60)) {
        panic!("{e}\nOCR: {:?}", m.get_screen_text_variants());
    }
    let text = m.get_screen_text().unwrap();
    assert!(text.contains("42"), "{text}");
    assert_eq!(m.get_screen_text_variants().unwrap().len(), 3);
    let png = m.screenshot("desk.png").unwrap();
    assert!(std::fs::read(png).unwrap().starts_with(b"\x89PNG"));
}
