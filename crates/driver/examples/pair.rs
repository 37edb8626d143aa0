//! A vmrig test written in Rust against the driver API: the two nodes of
//! examples/pair (guest kit, TCG), subtests, a link fault, a JUnit report.
//!
//! `cargo run -p vmrig-driver --example pair [-- OUT_DIR]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmrig_driver::{Driver, DriverOptions};
use vmrig_guest::{build, BuildOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    vmrig_driver::log::init(tracing::Level::INFO);
    let out: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/example-pair".into())
        .into();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = build(
        &repo.join("examples/pair/vmrig.toml"),
        &out.join("result"),
        &BuildOptions::default(),
    )?;

    let mut opts = DriverOptions::new(built.nodes.iter().map(|n| n.start_script.clone()).collect());
    opts.vlans = vec![1];
    opts.out_dir = out.clone();
    let driver = Driver::new(opts)?;
    driver.start_all()?;
    let client = driver.machine("client").expect("a client node");
    let server = driver.machine("server").expect("a server node");

    let result = (|| {
        driver.subtest("the server's service answers the client", || {
            server.wait_for_open_port(8080, "localhost", Duration::from_secs(60))?;
            let reply = client.wait_until_succeeds(
                "nc -N server 8080 </dev/null | grep server",
                Duration::from_secs(60),
            )?;
            assert_eq!(reply, "server\n");
            Ok(())
        })?;
        driver.subtest(
            "a cut cable stops traffic, and only until plugged back",
            || {
                client.block_network()?;
                client.fail(&["ping -c 1 -W 1 server"], None)?;
                client.unblock_network()?;
                client.wait_until_succeeds("ping -c 1 -W 1 server", Duration::from_secs(60))?;
                Ok(())
            },
        )?;
        driver.subtest("losing every frame is visible in ping", || {
            client.set_loss(1, 100.0)?;
            let (status, _) = client.execute("ping -c 3 -W 1 server", true, true, None)?;
            client.set_loss(1, 0.0)?;
            assert_ne!(status, 0);
            Ok(())
        })?;
        client.screenshot("client")?;
        Ok::<(), vmrig_driver::Error>(())
    })();
    driver.write_junit(&out.join("junit.xml"), "examples/pair")?;
    result?;
    println!("passed; report in {}", out.join("junit.xml").display());
    Ok(())
}
