//! vmrig's guest kit: builds test guests and NixOS-style start scripts from
//! the host's own packages, so vmrig runs on any Linux host with QEMU, without Nix.
//!
//! A `vmrig.toml` ([`definition`]) names the nodes of a test. For each node the
//! kit writes `OUT/bin/run-<node>-vm`, a start script with the contract of
//! NixOS's `qemu-vm.nix` ([`script`]), so the NixOS driver (or vmrig's) can run
//! it unchanged. Two flavours. The `busybox` flavour boots the host kernel with an initramfs
//! ([`cpio`], [`image`]): busybox (with its static `base64`), bash, GNU `timeout`/`fold`/`stty`,
//! OpenBSD `nc`, the kernel modules the guest needs resolved with their
//! dependencies from the host's `modules.dep` ([`kernel`]), and the node's
//! programs with their shared libraries ([`host`]). Its init sets the hostname,
//! VLAN addresses (`192.168.<vlan>.<i>`), `/etc/hosts`, users, the 9p shared
//! directory at `/tmp/shared`, services, and then runs the backdoor shell on
//! `/dev/hvc0` exactly as NixOS guests do. The `debian` flavour ([`debian`])
//! boots a Debian root file system with systemd, for `wait_for_unit` and real
//! services: a base image made with mmdebstrap, a package layer per package
//! list, and a small per-node initrd that puts the node's files in place and
//! hands over to systemd; the node's disk is a qcow2 overlay of its layer.
//!
//! Built guests are cached by a hash of all their inputs ([`builder`]): a
//! second build of the same definition rebuilds nothing.
//!
//! ```
//! use std::path::Path;
//! use vmrig_guest::definition::Definition;
//!
//! let def = Definition::parse(
//!     "[nodes.server]\npackages = [\"curl\"]\n[nodes.client]\n",
//!     Path::new("vmrig.toml"),
//! )?;
//! let server = &def.nodes["server"];
//! assert_eq!(server.index, 2); // sorted: client is 1, server 2
//! assert_eq!(server.vlans[0].address.to_string(), "192.168.1.2");
//! assert_eq!(server.vlans[0].mac(server.index), "52:54:00:12:01:02");
//!
//! // Errors name the file, the node and the field:
//! let err = Definition::parse("[nodes.server]\nmemroy = 1\n", Path::new("vmrig.toml")).unwrap_err();
//! assert!(err.to_string().starts_with("vmrig.toml: node `server`: "));
//! # Ok::<(), vmrig_guest::Error>(())
//! ```
//!
//! Building needs the host's kernel (`/boot/vmlinuz-*` with `/lib/modules`),
//! `busybox-static` and `bash-static`, and for the `debian` flavour root,
//! mmdebstrap and the package archive on first use: see [`builder::build`].
//! [`accel`] chooses TCG or KVM (`auto` probes KVM with a bounded boot). How
//! a driver runs a start script (its QEMU options and environment) is built
//! in one place, [`contract`], for `vmrig-driver` and for the [`harness`]
//! module, a small synchronous runner for start scripts used by the
//! end-to-end tests and the demo; the real orchestration is
//! `vmrig-driver`'s. `docs/guest-kit.md` in the repository describes both
//! flavours in detail.

pub mod accel;
pub mod builder;
pub mod contract;
pub mod cpio;
pub mod debian;
pub mod definition;
mod error;
pub mod harness;
pub mod host;
pub mod image;
pub mod kernel;
pub mod process;
pub mod script;

pub use accel::{Accel, AccelChoice};
pub use builder::{build, BuildOptions, BuildOutput, BuiltNode};
pub use definition::Definition;
pub use error::{Error, Result};
