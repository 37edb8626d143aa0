//! Boots one guest-kit node with the driver, types on its first virtual
//! console, prints what the TTY and OCR see and saves a screenshot: a quick
//! look at a `graphics = true` guest's screen.
//!
//! `cargo run -p vmrig-driver --example screen -- RESULT/bin/run-NODE-vm OUT_DIR [TEXT]`

use std::time::Duration;

use vmrig_driver::{Driver, DriverOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    vmrig_driver::log::init(tracing::Level::INFO);
    vmrig_driver::log::set_serial_stdout(false);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (script, out, text) = match args.as_slice() {
        [s, o] => (s, o, "echo hello from the keyboard\n"),
        [s, o, t] => (s, o, t.as_str()),
        _ => return Err("usage: screen START_SCRIPT OUT_DIR [TEXT]".into()),
    };
    let mut opts = DriverOptions::new(vec![script.into()]);
    opts.out_dir = out.into();
    opts.vlans = vec![1];
    let driver = Driver::new(opts)?;
    let m = driver.machines().remove(0);
    m.connect()?;
    m.send_chars(text, Some(Duration::from_millis(20)))?;
    std::thread::sleep(Duration::from_secs(2));
    println!("tty1: {:?}", m.get_tty_text("1")?);
    println!("screenshot: {}", m.screenshot("screen")?.display());
    println!("OCR: {:?}", m.get_screen_text()?);
    Ok(())
}
