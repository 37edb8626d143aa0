//! Boot once, restore many: cold boot against restore, to the first command,
//! for a busybox guest (examples/hello) and a debian guest (examples/minimal),
//! under TCG; the time to save, the snapshot's size on disk, and two restores
//! of one snapshot at once, and how much RAM those two share (pages of the
//! snapshot's RAM file both map and neither wrote).
//!
//! `cargo bench -p vmrig-benches --bench snapshot [-- ROUNDS] [busybox|debian]`
//! (default 3 rounds of both; debian builds its image on first use). Prints a
//! table; `VMRIG_BENCH_LOG=1` shows the driver's log with the restore's steps.

use std::path::Path;
use std::time::{Duration, Instant};

use vmrig_driver::snapshot::Store;
use vmrig_driver::{Driver, DriverOptions, Machine};
use vmrig_guest::{build, BuildOptions};

struct Figures {
    cold: Vec<Duration>,
    save: Vec<Duration>,
    restore: Vec<Duration>,
    parallel: Vec<Duration>,
    size: u64,
    ram: u64,
    mem: u64,
    shared: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3);
    let only = args
        .iter()
        .find(|a| *a == "busybox" || *a == "debian")
        .cloned();
    if std::env::var_os("VMRIG_BENCH_LOG").is_some() {
        vmrig_driver::log::init(tracing::Level::DEBUG);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut rows = Vec::new();
    for (flavour, example) in [("busybox", "hello"), ("debian", "minimal")] {
        if only.as_deref().is_some_and(|o| o != flavour) {
            continue;
        }
        let def = repo.join("examples").join(example).join("vmrig.toml");
        let out = tempfile::tempdir().expect("temporary directory");
        let built = build(&def, out.path(), &BuildOptions::default()).expect("build the example");
        let script = built.nodes[0].start_script.clone();
        let vlans = built.definition.vlans();
        rows.push((flavour, example, measure(&script, &vlans, rounds)));
    }

    let s = |d: &mut Vec<Duration>| format!("{:.2} s", median(d).as_secs_f64());
    println!(
        "{:<40} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "snapshots, TCG, median",
        "cold boot",
        "save",
        "restore",
        "2 at once",
        "size on disk",
        "stream",
        "RAM file",
        "2 share"
    );
    for (flavour, example, mut f) in rows {
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>10} {:>9} MB {:>7} MB {:>7} MB {:>9} MB",
            format!("{flavour} (examples/{example})"),
            s(&mut f.cold),
            s(&mut f.save),
            s(&mut f.restore),
            s(&mut f.parallel),
            f.size >> 20,
            f.ram >> 20,
            f.mem >> 20,
            f.shared >> 20
        );
    }
    println!("cold boot and restore: start to the first command's answer; save: added to the first command; 2 at once: the slower of two restores started together; stream: QEMU's migration stream; RAM file: the guest's RAM saved apart (data, not holes); 2 share: pages each of the two restored QEMUs maps that the other maps too (smaps Shared_Clean + Shared_Dirty, the smaller)");
}

fn driver(script: &Path, vlans: &[u8], store: Option<&Store>, dir: &Path) -> Driver {
    let mut opts = DriverOptions::new(vec![script.to_owned()]);
    opts.vlans = vlans.to_vec();
    opts.out_dir = dir.to_owned();
    opts.handle_signals = false;
    opts.snapshots = store.cloned();
    Driver::new(opts).expect("driver")
}

fn first_command(m: &Machine) -> Duration {
    let t = Instant::now();
    m.succeed(&["true"], None).expect("first command");
    t.elapsed()
}

fn measure(script: &Path, vlans: &[u8], rounds: usize) -> Figures {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::new(dir.path().join("snapshots"), u64::MAX);
    let mut f = Figures {
        cold: Vec::new(),
        save: Vec::new(),
        restore: Vec::new(),
        parallel: Vec::new(),
        size: 0,
        ram: 0,
        mem: 0,
        shared: 0,
    };
    for round in 0..rounds {
        let plain = driver(script, vlans, None, dir.path());
        let m = plain.machines().remove(0);
        f.cold.push(first_command(&m));
        drop(plain);

        store.clear().expect("clear the store");
        let saving = driver(script, vlans, Some(&store), dir.path());
        let m = saving.machines().remove(0);
        first_command(&m);
        drop(saving);
        let entry = store.list().pop().expect("a snapshot was saved");
        f.save.push(Duration::from_secs_f64(entry.meta.save_secs));
        f.size = entry.size;
        f.ram = entry.meta.ram_size;
        f.mem = std::fs::metadata(entry.mem()).map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });

        let restoring = driver(script, vlans, Some(&store), dir.path());
        let m = restoring.machines().remove(0);
        f.restore.push(first_command(&m));
        drop(restoring);

        let both: Vec<Driver> = (0..2)
            .map(|_| driver(script, vlans, Some(&store), dir.path()))
            .collect();
        let slower = std::thread::scope(|s| {
            let handles: Vec<_> = both
                .iter()
                .map(|d| {
                    let m = d.machines().remove(0);
                    s.spawn(move || first_command(&m))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("restore thread"))
                .max()
                .unwrap_or_default()
        });
        f.parallel.push(slower);
        f.shared = both
            .iter()
            .filter_map(|d| d.machines().remove(0).pid())
            .map(shared_bytes)
            .min()
            .unwrap_or(0);
        drop(both);
        eprintln!(
            "round {}: cold {:.2} s, save {:.2} s, restore {:.2} s, two at once {:.2} s",
            round + 1,
            f.cold[round].as_secs_f64(),
            f.save[round].as_secs_f64(),
            f.restore[round].as_secs_f64(),
            f.parallel[round].as_secs_f64()
        );
    }
    f
}

/// Bytes of process `pid` that other processes map too.
fn shared_bytes(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    rollup
        .lines()
        .filter(|l| l.starts_with("Shared_Clean:") || l.starts_with("Shared_Dirty:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}
