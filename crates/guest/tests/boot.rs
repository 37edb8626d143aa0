//! End-to-end: build the examples with the guest kit, boot them under TCG with
//! the NixOS driver's QEMU options and a vde2 switch, and use them through the
//! backdoor. Needs the set-up's packages (qemu-system-x86, vde2, busybox-static,
//! bash-static, a kernel): `./setup.sh --deps`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmrig_guest::harness::{Guest, StartOptions, Vde2Switch};
use vmrig_guest::{build, AccelChoice, BuildOptions, BuildOutput};

const BOOT: Duration = Duration::from_secs(180);
const CMD: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn options() -> BuildOptions {
    BuildOptions {
        cache_dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-cache"),
        accel: AccelChoice::Tcg,
        ..Default::default()
    }
}

fn build_example(name: &str, out: &Path) -> BuildOutput {
    build(
        &repo().join("examples").join(name).join("vmrig.toml"),
        out,
        &options(),
    )
    .unwrap_or_else(|e| panic!("building examples/{name}: {e}"))
}

#[test]
fn pair_boots_talks_and_pings_by_hostname() {
    let out = tempfile::tempdir().unwrap();
    let built = build_example("pair", out.path());
    assert_eq!(
        built
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["client", "server"]
    );

    let switch_dir = tempfile::tempdir().unwrap();
    let switch = Vde2Switch::start(&switch_dir.path().join("vde1.ctl")).unwrap();
    let opts = StartOptions {
        vde_sockets: vec![(1, switch.dir().to_owned())],
        ..Default::default()
    };
    // Boot both at once, as start_all() does.
    let boots: Vec<_> = built
        .nodes
        .iter()
        .map(|n| {
            let (script, opts) = (n.start_script.clone(), opts.clone());
            std::thread::spawn(move || {
                let mut g = Guest::start(&script, &opts).unwrap_or_else(|e| panic!("{e}"));
                g.wait_for_backdoor(BOOT).unwrap_or_else(|e| panic!("{e}"));
                g
            })
        })
        .collect();
    let mut guests: Vec<Guest> = boots.into_iter().map(|h| h.join().unwrap()).collect();
    let mut server = guests.pop().unwrap();
    let mut client = guests.pop().unwrap();

    assert_eq!(client.succeed("hostname", CMD).unwrap(), "client\n");
    assert_eq!(server.succeed("hostname", CMD).unwrap(), "server\n");
    let addr = server
        .succeed("ip -4 -o addr show | grep -o '192.168.1.[0-9]*/24'", CMD)
        .unwrap();
    assert_eq!(addr, "192.168.1.2/24\n");
    let mac = server
        .succeed("cat /sys/class/net/eth1/address", CMD)
        .unwrap();
    assert_eq!(
        mac, "52:54:00:12:01:02\n",
        "the first VLAN NIC comes after the user-mode NIC"
    );

    let ping = client.run("ping -c 2 -W 10 server", CMD).unwrap();
    assert_eq!(
        ping.0, 0,
        "client cannot ping server by hostname:\n{}",
        ping.1
    );
    assert!(ping.1.contains("192.168.1.2"), "{}", ping.1);

    // The server's service answers over the VLAN; nc -z (OpenBSD) sees the port.
    client
        .succeed(
            "for i in $(seq 50); do nc -z server 8080 && exit 0; sleep 0.2; done; exit 1",
            CMD,
        )
        .unwrap();
    // The service listens for one connection at a time (nc -z used one): retry briefly.
    let fetch = "for i in $(seq 50); do r=$(nc -N server 8080 </dev/null) && [ -n \"$r\" ] && { echo \"$r\"; exit 0; }; sleep 0.2; done; exit 1";
    assert_eq!(client.succeed(fetch, CMD).unwrap(), "server\n");

    // The shared directory is the host's SHARED_DIR, at /tmp/shared.
    std::fs::write(
        server.state_dir().join("shared-xchg/from-host"),
        "hi from the host\n",
    )
    .unwrap();
    assert_eq!(
        server.succeed("cat /tmp/shared/from-host", CMD).unwrap(),
        "hi from the host\n"
    );
    server
        .succeed("echo hi from the guest > /tmp/shared/from-guest", CMD)
        .unwrap();
    let back = std::fs::read_to_string(server.state_dir().join("shared-xchg/from-guest")).unwrap();
    assert_eq!(back, "hi from the guest\n");
    drop(switch);
}

#[test]
fn hello_has_users_tools_and_powers_off() {
    let out = tempfile::tempdir().unwrap();
    let built = build_example("hello", out.path());
    let switch_dir = tempfile::tempdir().unwrap();
    let switch = Vde2Switch::start(&switch_dir.path().join("vde1.ctl")).unwrap();
    let opts = StartOptions {
        vde_sockets: vec![(1, switch.dir().to_owned())],
        ..Default::default()
    };
    let mut m = Guest::start(&built.nodes[0].start_script, &opts).unwrap();
    m.wait_for_backdoor(BOOT).unwrap_or_else(|e| panic!("{e}"));

    // The tutorial's per-user package check.
    let which = m.succeed("su -- alice -c 'which jq'", CMD).unwrap();
    assert_eq!(which, "/etc/profiles/per-user/alice/bin/jq\n");
    let (status, _) = m.run("su -- root -c 'which jq'", CMD).unwrap();
    assert_ne!(status, 0, "jq must be on alice's PATH only");
    assert_eq!(
        m.succeed("su -- alice -c 'echo {} | jq -c .'", CMD)
            .unwrap(),
        "{}\n"
    );
    let id = m.succeed("id alice", CMD).unwrap();
    assert!(
        id.contains("uid=1000(alice)") && id.contains("wheel"),
        "{id}"
    );
    assert_eq!(m.succeed("stat -c %u /home/alice", CMD).unwrap(), "1000\n");

    // Programs with their shared libraries.
    assert!(m
        .succeed("curl --version", CMD)
        .unwrap()
        .starts_with("curl "));
    assert_eq!(
        m.succeed("cat /etc/motd", CMD).unwrap(),
        "Hello from a vmrig guest.\n"
    );
    // What the Machine API runs: GNU timeout (124), base64 -w, nc -z, fold, stty, awk.
    assert_eq!(m.run("timeout 1 sleep 10", CMD).unwrap().0, 124);
    assert_eq!(m.succeed("printf abc | base64 -w 0", CMD).unwrap(), "YWJj");
    assert_eq!(
        m.succeed("printf abcdef | fold -w 2", CMD).unwrap(),
        "ab\ncd\nef"
    );
    assert_eq!(m.run("nc -z 127.0.0.1 1", CMD).unwrap().0, 1);
    m.succeed(
        "stty --version && awk 'BEGIN{exit 0}' && which ip ping su poweroff",
        CMD,
    )
    .unwrap();
    // Modules came from the host kernel's modules.dep.
    let mods = m.succeed("cut -d' ' -f1 /proc/modules", CMD).unwrap();
    for needed in ["virtio_console", "virtio_net", "9pnet_virtio", "9p"] {
        assert!(
            mods.lines().any(|l| l == needed),
            "{needed} not loaded: {mods}"
        );
    }
    assert_eq!(
        m.succeed("test -b /dev/vda && echo disk", CMD).unwrap(),
        "disk\n"
    );

    // poweroff ends QEMU cleanly.
    let _ = m.run("poweroff", Duration::from_secs(5));
    assert_eq!(m.wait_for_exit(Duration::from_secs(60)).unwrap(), Some(0));
}

#[test]
fn second_build_comes_from_the_cache() {
    let out = tempfile::tempdir().unwrap();
    let first = build_example("pair", out.path());
    let stamp = |b: &BuildOutput| {
        b.nodes
            .iter()
            .map(|n| std::fs::metadata(&n.initrd).unwrap().modified().unwrap())
            .collect::<Vec<_>>()
    };
    let second = build_example("pair", out.path());
    assert!(second.cached, "nothing should be rebuilt");
    assert!(second.nodes.iter().all(|n| n.cached));
    assert_eq!(stamp(&first), stamp(&second));
    let a: Vec<_> = first.nodes.iter().map(|n| &n.initrd).collect();
    let b: Vec<_> = second.nodes.iter().map(|n| &n.initrd).collect();
    assert_eq!(a, b);
}

#[test]
fn missing_package_names_file_node_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("vmrig.toml");
    std::fs::write(
        &def,
        "[nodes.box]\npackages = [\"curl\", \"no-such-program-xyz\"]\n",
    )
    .unwrap();
    let err = build(&def, &dir.path().join("out"), &options())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&def.display().to_string()), "{err}");
    assert!(
        err.contains("node `box`")
            && err.contains("packages[1]")
            && err.contains("no-such-program-xyz"),
        "{err}"
    );
}

#[test]
fn accel_auto_never_hangs_and_only_picks_kvm_that_boots() {
    // The probe is bounded: whatever /dev/kvm does here (missing, broken,
    // hanging, working), the build finishes, and a KVM answer means a real boot.
    let out = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let opts = BuildOptions {
        cache_dir: cache.path().to_owned(),
        accel: AccelChoice::Auto,
        ..Default::default()
    };
    let built = build(&repo().join("examples/hello/vmrig.toml"), out.path(), &opts).unwrap();
    assert!(!built.accel_reason.is_empty());
    let script = std::fs::read_to_string(&built.nodes[0].start_script).unwrap();
    assert!(script.contains(&format!("accel=${{VMRIG_ACCEL:-{}}}", built.accel.as_str())));
    // The answer is cached with its reason.
    let again = build(&repo().join("examples/hello/vmrig.toml"), out.path(), &opts).unwrap();
    assert_eq!(again.accel, built.accel);
    assert!(
        again.accel_reason.ends_with("(cached probe)"),
        "{}",
        again.accel_reason
    );
    if built.accel == vmrig_guest::Accel::Kvm {
        let switch_dir = tempfile::tempdir().unwrap();
        let switch = Vde2Switch::start(&switch_dir.path().join("vde1.ctl")).unwrap();
        let start = StartOptions {
            vde_sockets: vec![(1, switch.dir().to_owned())],
            ..Default::default()
        };
        let mut m = Guest::start(&built.nodes[0].start_script, &start).unwrap();
        m.wait_for_backdoor(BOOT).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn graphics_nodes_boot_the_bzimage_and_others_the_vmlinux() {
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("vmrig.toml");
    std::fs::write(
        &def,
        "[nodes.plain]\nvlans = []\n[nodes.screen]\nvlans = []\ngraphics = true\n",
    )
    .unwrap();
    let built = build(&def, &dir.path().join("out"), &options()).unwrap();
    let script = |n: usize| std::fs::read_to_string(&built.nodes[n].start_script).unwrap();
    assert!(
        script(1).contains("/bzImage "),
        "graphics boots the BIOS way: {}",
        script(1)
    );
    // Debian's kernel is PVH-capable; another kernel may fall back to the bzImage.
    let plain = script(0);
    assert!(
        plain.contains("/vmlinux ") || plain.contains("/bzImage "),
        "{plain}"
    );
}
