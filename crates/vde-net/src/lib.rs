//! A VDE-compatible virtual Ethernet switch.
//!
//! vmrig connects QEMU guests the way NixOS does, through VDE: each VLAN is a switch
//! directory, and QEMU joins with `-netdev vde,sock=DIR` (libvdeplug). This crate is the
//! switch side of libvdeplug's protocol, in-process, plus what tests of distributed
//! systems need:
//!
//! - **wire compatibility**: control socket `DIR/ctl`, libvdeplug's `request_v3`
//!   ([`request`]), one datagram socket per port, Ethernet frames as datagrams, the port
//!   torn down when the control connection closes; hostile requests (bad magic, short
//!   structs, paths outside the directory, other users, connection floods) are rejected
//!   with a log line while everyone else keeps being served;
//! - **switching** ([`SwitchCore`]): MAC learning with ageing, flooding, hub mode,
//!   bounded ports, per-port counters, no reflection;
//! - **test controls** on a running [`Switch`]: per-port and per-VLAN link down/up, loss,
//!   delay with jitter, partitions, and pcap capture ([`pcap`]);
//! - **a blocking client** ([`VdePlug`]) that speaks libvdeplug's side, for tests and
//!   benchmarks;
//! - **vhost-user ports** (feature `vhost-user`, off by default):
//!   `Switch::add_vhost_user_port` serves a QEMU `-netdev vhost-user` NIC from the
//!   guest's shared memory, on rust-vmm's `vhost-user-backend`. Such ports join the same
//!   switch as VDE ports: one MAC table, the same counters, faults and capture. The
//!   descriptor handling (module `vhost_ring`, feature `vhost-ring`, sans-IO and fuzzed)
//!   trusts nothing from the guest, and a guest that stops taking frames only loses
//!   its own. QEMU needs shared guest RAM (`-object
//!   memory-backend-memfd,id=mem,size=SIZE,share=on -machine memory-backend=mem`), and
//!   QEMU 7.2 under TCG needs `vectors=0` on the `virtio-net-pci` device (it crashes
//!   starting a vhost device with MSI-X but without KVM).
//!
//! The core ([`request`], [`SwitchCore`], [`MacTable`], [`pcap`]) is sans-IO and always
//! built. Everything that does I/O is behind the default feature `server`: tokio in
//! `server` (control socket, handshakes), frames on one dedicated epoll thread
//! (`engine`; a vhost-user port's frames on its own ring thread, `vhost_user`), pcap
//! files written by a thread of their own (`capture`), and the
//! [`VdePlug`] client; `default-features = false` leaves the core alone, without
//! tokio. vde_switch's management console (`vmrig vde-switch`) lives in the CLI. Not
//! supported: vde_switch's tagged VLANs inside one switch, FSTP, remote management
//! sockets, and the pre-v3 request formats.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "server")]
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use vmrig_vde_net::{Switch, SwitchOptions, VdePlug};
//!
//! let dir = tempfile::tempdir()?;
//! let switch = Switch::start(SwitchOptions::new(dir.path().join("vlan1"))).await?;
//! let sock = switch.dir().to_owned();
//! // Two clients speaking libvdeplug's protocol (QEMU would do the same).
//! let (a, b) = tokio::task::spawn_blocking(move || {
//!     (VdePlug::connect(&sock, "a").unwrap(), VdePlug::connect(&sock, "b").unwrap())
//! }).await?;
//! let mut frame = vec![0xff; 6]; // broadcast
//! frame.extend_from_slice(&[0x52, 0x54, 0, 0x12, 1, 1, 0x08, 0x00]);
//! frame.resize(60, 0);
//! assert_eq!(switch.ports().len(), 2);
//! a.send(&frame)?;
//! b.socket().set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! let mut buf = [0u8; 1600];
//! let n = tokio::task::spawn_blocking(move || b.recv(&mut buf)).await??;
//! assert_eq!(n, 60);
//! assert_eq!(switch.ports()[0].counters.rx_frames, 1);
//! # Ok(()) }
//! # #[cfg(not(feature = "server"))] fn main() {}
//! ```

#[cfg(feature = "server")]
mod capture;
#[cfg(feature = "server")]
pub mod client;
#[cfg(feature = "server")]
mod delay_queue;
#[cfg(feature = "server")]
mod engine;
pub mod error;
pub mod mac_table;
#[cfg(feature = "server")]
mod mmsg;
pub mod pcap;
pub mod port;
pub mod request;
#[cfg(feature = "server")]
mod route;
#[cfg(feature = "server")]
pub mod server;
pub mod switch;
#[cfg(feature = "vhost-user")]
mod vhost_link;
#[cfg(feature = "vhost-ring")]
pub mod vhost_ring;
#[cfg(feature = "vhost-user")]
mod vhost_shim;
#[cfg(feature = "vhost-user")]
mod vhost_user;

#[cfg(feature = "server")]
pub use client::{RecvBatch, VdePlug};
#[cfg(feature = "server")]
pub use delay_queue::DEFAULT_MAX_DELAYED_BYTES;
pub use error::{Error, Result};
pub use mac_table::{Mac, MacTable};
pub use port::{Counters, LinkFaults, PortId, PortInfo};
#[cfg(feature = "server")]
pub use server::{Switch, SwitchOptions};
pub use switch::{Delivery, SwitchConfig, SwitchCore};
