//! The `debian` flavour: systemd guests on a Debian root file system.
//!
//! Three layers, each cached by a hash of its inputs:
//! 1. the **base**, `debian/base/<key>.tar`: mmdebstrap's minbase of the host's
//!    release with systemd, from the archive the host's apt uses; built once and
//!    shared by every node and every test;
//! 2. the **package layer**, `debian/layers/<key>.qcow2`: the base plus a node's
//!    `packages` (apt-get in a chroot), the host kernel's modules, and the
//!    test instrumentation every node shares (masked serial gettys, journald on
//!    the serial console, per-user PATH through pam_env); nodes with the same
//!    package lists share it;
//! 3. the **node**: a small busybox initrd that mounts the disk, copies the
//!    node's own files in (hostname, hosts, units, users, services), sets the
//!    addresses and hands over to systemd. The start script boots the disk as a
//!    qcow2 overlay on the package layer, so a test never writes to the cache.
//!
//! Building layers 1 and 2 needs root and the package archive, on first use
//! only; later builds work offline.

mod base;
mod instrument;
mod layer;
mod node;
mod packages;
mod rootfs;
mod units;

pub use base::BASE_PACKAGES;
pub use layer::{layer, Layer};
pub use node::{node_archive, INITRD_MODULES, KERNEL_PARAMS};
pub use packages::Packages;
