//! Guest to guest through each kind of switch port: TCP throughput and ping
//! round trip between two busybox guests under TCG, over vde2's `vde_switch`,
//! over vmrig's VDE ports and over vmrig's vhost-user ports, in the same run.
//!
//! Each path boots a fresh pair `a` (192.168.1.1) and `b` (192.168.1.2) from
//! the guest kit: `net = "vde"` start scripts on the two VDE switches,
//! `net = "vhost-user"` ones (shared RAM, vhost-user NICs) on vhost-user ports.
//! Per round: `ping -c PINGS` (busybox's average round trip) and `MIB` MiB of
//! zeros from `a` to `b` over TCP (OpenBSD `nc`), timed from the host around
//! the sending command. A last row sends the same over `a`'s loopback: what
//! the guest's own network stack manages under TCG with no NIC at all, the
//! ceiling of every path.
//!
//! `cargo bench -p vmrig-benches --bench guest_net [-- --rounds R --mib N]`
//! (default 3 rounds of 32 MiB). Prints a table of medians.

use std::path::Path;
use std::time::{Duration, Instant};

use vmrig_guest::harness::{Guest, StartOptions, Vde2Switch};
use vmrig_guest::{build, BuildOptions};
use vmrig_vde_net::{Switch, SwitchOptions};

const CMD: Duration = Duration::from_secs(300);
const PINGS: u32 = 20;

struct Args {
    rounds: usize,
    mib: u64,
}

fn args() -> Args {
    let mut a = Args { rounds: 3, mib: 32 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--rounds" => a.rounds = value() as usize,
            "--mib" => a.mib = value(),
            _ => {}
        }
    }
    a
}

/// Per round: MiB/s over TCP and the average ping round trip in ms.
struct Figures {
    mib_s: Vec<f64>,
    rtt_ms: Vec<f64>,
}

fn main() {
    let args = args();
    let work = tempfile::tempdir().expect("temporary directory");
    let built = |name: &str, toml: &str| {
        let def = work.path().join(name).join("vmrig.toml");
        std::fs::create_dir_all(def.parent().unwrap()).unwrap();
        std::fs::write(&def, toml).unwrap();
        let out = work.path().join(name).join("result");
        build(&def, &out, &BuildOptions::default()).expect("guest build");
        out
    };
    let nodes = "[nodes.a]\nmemory = 256\n[nodes.b]\nmemory = 256\n";
    let vde = built("vde", nodes);
    let vhost = built("vhost", &format!("net = \"vhost-user\"\n{nodes}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut rows: Vec<(&str, Figures)> = Vec::new();

    let dir = work.path().join("vde_switch.ctl");
    let vde2 = Vde2Switch::start(&dir).expect("vde_switch (apt-get install vde2)");
    let on = |dir: &Path| StartOptions {
        vde_sockets: vec![(1, dir.to_owned())],
        ..StartOptions::default()
    };
    let pair = boot_pair(&vde, &on(vde2.dir()), &on(vde2.dir()));
    rows.push(("vde2 vde_switch", measure(pair, &args)));
    drop(vde2);

    let switch = rt
        .block_on(Switch::start(SwitchOptions::new(
            work.path().join("vmrig.ctl"),
        )))
        .expect("vmrig switch");
    let pair = boot_pair(&vde, &on(switch.dir()), &on(switch.dir()));
    rows.push(("vmrig, VDE ports", measure(pair, &args)));

    let sockets: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| {
            let path = work.path().join(format!("vhost-{n}.sock"));
            switch.add_vhost_user_port(&path).expect("vhost-user port");
            StartOptions {
                vhost_user_sockets: vec![(1, path)],
                ..StartOptions::default()
            }
        })
        .collect();
    let pair = boot_pair(&vhost, &sockets[0], &sockets[1]);
    let (mut a, b) = pair;
    let lo = loopback(&mut a, &args);
    rows.push(("vmrig, vhost-user ports", measure((a, b), &args)));
    drop(switch);

    println!(
        "guest to guest, 2 busybox guests (1 vCPU, TCG), {} rounds of {} MiB, medians:",
        args.rounds, args.mib
    );
    println!(
        "{:<26} {:>12} {:>8} {:>14}",
        "path", "TCP MiB/s", "ratio", "ping RTT ms"
    );
    let base = median(&rows[0].1.mib_s);
    for (name, f) in &rows {
        let mib_s = median(&f.mib_s);
        println!(
            "{name:<26} {mib_s:>12.1} {:>7.2}x {:>14.3}",
            mib_s / base,
            median(&f.rtt_ms)
        );
    }
    let lo = median(&lo);
    println!(
        "{:<26} {lo:>12.1} {:>7.2}x {:>14}",
        "a's own loopback",
        lo / base,
        "-"
    );
}

/// Boots `a` and `b` of a built test in parallel.
fn boot_pair(out: &Path, a: &StartOptions, b: &StartOptions) -> (Guest, Guest) {
    let start = |name: &str, opts: &StartOptions| {
        let script = out.join("bin").join(format!("run-{name}-vm"));
        let opts = opts.clone();
        std::thread::spawn(move || {
            let mut g = Guest::start(&script, &opts).expect("start guest");
            g.wait_for_backdoor(Duration::from_secs(180))
                .expect("backdoor");
            g
        })
    };
    let (a, b) = (start("a", a), start("b", b));
    (a.join().unwrap(), b.join().unwrap())
}

fn measure((mut a, mut b): (Guest, Guest), args: &Args) -> Figures {
    // Warm-up: ARP, and TCG's first translation of ping and nc.
    a.succeed("ping -c 3 -W 2 192.168.1.2", CMD)
        .expect("ping b");
    let mut f = Figures {
        mib_s: Vec::new(),
        rtt_ms: Vec::new(),
    };
    for _ in 0..args.rounds {
        let out = a
            .succeed(&format!("ping -c {PINGS} -i 0.2 -W 2 192.168.1.2"), CMD)
            .expect("ping b");
        f.rtt_ms.push(average_rtt(&out));
        f.mib_s.push(send(&mut a, &mut b, "192.168.1.2", args.mib));
    }
    f
}

/// `a` sends `mib` MiB of zeros to `nc` listening in `b` (the same guest for
/// loopback); MiB/s as timed from the host.
fn send(a: &mut Guest, b: &mut Guest, to: &str, mib: u64) -> f64 {
    listen(b);
    send_to(a, to, mib)
}

fn listen(g: &mut Guest) {
    g.succeed("nc -d -l 5000 > /dev/null 2>&1 &", CMD)
        .expect("listen");
}

fn send_to(a: &mut Guest, to: &str, mib: u64) -> f64 {
    let t = Instant::now();
    a.succeed(
        &format!(
            "for i in $(seq 50); do head -c {} /dev/zero | nc -N {to} 5000 && exit 0; sleep 0.1; done; exit 1",
            mib << 20
        ),
        CMD,
    )
    .expect("send over TCP");
    mib as f64 / t.elapsed().as_secs_f64()
}

fn loopback(a: &mut Guest, args: &Args) -> Vec<f64> {
    (0..args.rounds)
        .map(|_| {
            listen(a);
            send_to(a, "127.0.0.1", args.mib)
        })
        .collect()
}

/// busybox ping's `round-trip min/avg/max = 0.5/0.7/1.2 ms`.
fn average_rtt(out: &str) -> f64 {
    out.lines()
        .find_map(|l| {
            l.split_once("min/avg/max = ")?
                .1
                .split('/')
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no round-trip summary in {out:?}"))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
