//! A switch with vhost-user ports, for trying QEMU by hand:
//! `cargo run -p vmrig-vde-net --features vhost-user --example vhost_switch -- DIR SOCKET...`
//! serves a VDE switch in DIR and one vhost-user port on each SOCKET until killed,
//! printing the ports' counters every 5 s.

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let dir = args.next().ok_or("usage: vhost_switch DIR SOCKET...")?;
    let switch = vmrig_vde_net::Switch::start(vmrig_vde_net::SwitchOptions::new(dir)).await?;
    for sock in args {
        let port = switch.add_vhost_user_port(&sock)?;
        println!("port {port}: {}", std::path::Path::new(&sock).display());
    }
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        for p in switch.ports() {
            println!("{} {:?} {:?}", p.id, p.counters, p.macs);
        }
    }
}
