//! Driver figures against a real guest-kit guest under TCG, beside the NixOS
//! driver's figures measured on the same kind of machine (docs/benchmarks.md):
//! boot to first command, `succeed("true")` latency (median and p99 of 200),
//! `execute("true")` with NixOS's default guest timeout, 1 MB and 10 MB of
//! output, and the driver's peak RSS.
//!
//! `cargo bench -p vmrig-benches --bench driver`

use std::time::{Duration, Instant};

use vmrig_driver::{Driver, DriverOptions, DEFAULT_TIMEOUT};
use vmrig_guest::{build, BuildOptions};

fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let def = dir.path().join("vmrig.toml");
    std::fs::write(&def, "[nodes.bench]\nvlans = []\n").expect("definition");
    build(&def, &dir.path().join("result"), &BuildOptions::default()).expect("build the guest");
    let mut opts = DriverOptions::new(vec![dir.path().join("result/bin/run-bench-vm")]);
    opts.out_dir = dir.path().join("out");
    let driver = Driver::new(opts).expect("driver");
    let m = driver.machine("bench").expect("machine");

    let t = Instant::now();
    m.succeed(&["true"], None).expect("first command");
    let boot = t.elapsed();

    let mut succeed = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        m.succeed(&["true"], None).expect("succeed");
        succeed.push(t.elapsed());
    }
    let mut execute = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        m.execute("true", true, true, Some(DEFAULT_TIMEOUT))
            .expect("execute");
        execute.push(t.elapsed());
    }
    let output = |bytes: usize| {
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let out = m
                .succeed(&[&format!("head -c {bytes} /dev/zero | tr '\\0' x")], None)
                .expect("output");
            assert_eq!(out.len(), bytes);
            v.push(t.elapsed());
        }
        v
    };
    let mut mb1 = output(1 << 20);
    let mut mb10 = output(10 << 20);
    let rss = peak_rss_mib();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{:<48} {:>12} {:>12}",
        "driver, busybox guest, TCG", "vmrig", "NixOS driver"
    );
    println!(
        "{:<48} {:>10.2} s {:>10} s",
        "boot to first command",
        boot.as_secs_f64(),
        "5.2"
    );
    println!(
        "{:<48} {:>9.1} ms {:>9} ms",
        "succeed(\"true\") median of 200",
        ms(pct(&mut succeed, 0.5)),
        "15.8"
    );
    println!(
        "{:<48} {:>9.1} ms {:>9} ms",
        "succeed(\"true\") p99 of 200",
        ms(pct(&mut succeed, 0.99)),
        "22.5"
    );
    println!(
        "{:<48} {:>9.1} ms {:>9} ms",
        "execute(\"true\", timeout=900) median of 50",
        ms(pct(&mut execute, 0.5)),
        "50.9"
    );
    println!(
        "{:<48} {:>10.2} s {:>10} s",
        "1 MB of output (median of 3)",
        pct(&mut mb1, 0.5).as_secs_f64(),
        "0.31"
    );
    println!(
        "{:<48} {:>10.2} s {:>10} s",
        "10 MB of output (median of 3)",
        pct(&mut mb10, 0.5).as_secs_f64(),
        "2.86"
    );
    println!(
        "{:<48} {:>8.1} MiB {:>8} MiB",
        "driver peak RSS (own process)", rss, "97"
    );
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// VmHWM of this process.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
