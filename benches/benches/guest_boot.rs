//! Boot time of a guest-kit guest, start script to backdoor, under TCG with the
//! NixOS driver's options; and the time of a cached `vmrig guest build`.
//!
//! `cargo bench -p vmrig-benches --bench guest_boot [-- BOOTS] [EXAMPLE]`
//! (default 7 boots of examples/hello; `minimal` boots the debian guest of
//! examples/minimal, building its image on first use). Prints a table. Boots
//! are sequential, so the figure is one guest on an otherwise idle host.

use std::path::Path;
use std::time::{Duration, Instant};

use vmrig_guest::harness::{Guest, StartOptions, Vde2Switch};
use vmrig_guest::{build, BuildOptions};

fn main() {
    // cargo bench passes `--bench`; any other number is the boot count.
    let boots: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(7);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::env::args()
        .skip(1)
        .find(|a| repo.join("examples").join(a).join("vmrig.toml").is_file())
        .unwrap_or_else(|| "hello".to_owned());
    let definition = repo.join("examples").join(&example).join("vmrig.toml");
    let out = tempfile::tempdir().expect("temporary directory");
    let opts = BuildOptions::default();
    let first = build(&definition, out.path(), &opts).expect("build the example");
    let mut cached = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let built = build(&definition, out.path(), &opts).expect("cached build");
        assert!(built.cached, "a second build must come from the cache");
        cached.push(t.elapsed());
    }

    let switch_dir = tempfile::tempdir().expect("temporary directory");
    let switch = Vde2Switch::start(&switch_dir.path().join("vde1.ctl")).expect("vde_switch");
    let start = StartOptions {
        vde_sockets: vec![(1, switch.dir().to_owned())],
        ..Default::default()
    };
    let script = first.nodes[0].start_script.clone();
    let mut times = Vec::new();
    for i in 0..boots {
        let t = Instant::now();
        let mut guest = Guest::start(&script, &start).expect("start");
        guest
            .wait_for_backdoor(Duration::from_secs(120))
            .expect("backdoor");
        let took = t.elapsed();
        eprintln!("boot {}: {:.2} s", i + 1, took.as_secs_f64());
        times.push(took);
        drop(guest);
    }
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}",
        format!("guest kit (examples/{example}, TCG)"),
        "min",
        "median",
        "p90",
        "max"
    );
    row("cached `vmrig guest build` (ms)", &mut cached, 1e3);
    row("start script -> backdoor magic line (s)", &mut times, 1.0);
}

fn row(name: &str, v: &mut [Duration], scale: f64) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * scale;
    println!(
        "{name:<44} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}
