//! Orchestration of a vmrig test run: the [`Driver`], its [`Machine`]s and
//! [`VLan`]s, with the operations of NixOS's test driver as a Rust API.
//!
//! The driver creates a private 0700 run directory, starts one in-process
//! VDE switch ([`vmrig_vde_net`]) per VLAN, and for each machine runs its
//! start script the way NixOS's driver does (the same appended QEMU options and
//! environment, see `docs/architecture.md` in the repository), talks to the
//! guest's backdoor shell with one round trip per command ([`vmrig_backdoor`])
//! and to QEMU over QMP ([`vmrig_qmp`]) and the HMP monitor. Dropping the
//! driver kills every QEMU process group and switch and removes the run
//! directory.
//!
//! ```no_run
//! use std::time::Duration;
//! use vmrig_driver::{Driver, DriverOptions};
//!
//! let mut opts = DriverOptions::new(vec!["result/bin/run-server-vm".into(), "result/bin/run-client-vm".into()]);
//! opts.vlans = vec![1];
//! let driver = Driver::new(opts)?;
//! driver.start_all()?;
//! let (server, client) = (driver.machine("server").unwrap(), driver.machine("client").unwrap());
//! server.wait_for_open_port(8080, "localhost", Duration::from_secs(60))?;
//! client.succeed(&["nc -z server 8080"], None)?;
//! # Ok::<(), vmrig_driver::Error>(())
//! ```
//!
//! Machine methods block (as NixOS's do) on the driver's own tokio runtime:
//! call them from ordinary threads, not from async code.
//!
//! What is here: every `Machine` operation of NixOS's driver (lifecycle, the
//! `execute` family, waits, console, monitor, keys, screenshots and OCR, QMP
//! events, `block`/`unblock`, port forwarding, file copies, systemd, TTY and
//! X11 helpers), [`Driver::create_machine`], polling conditions
//! ([`Driver::polling_condition`]), nested subtests with a JUnit report, the
//! terminal log and NixOS's XML log ([`log`], [`xml_log`]), the global-timeout
//! watchdog, and SIGINT/SIGTERM handling ([`DriverOptions::handle_signals`]).
//! Beyond NixOS: link faults, partitions and pcap capture on the VLANs
//! ([`Machine::set_loss`], [`VLan::partition`], [`VLan::start_capture`], ...),
//! from Rust only. The Python API is `vmrig-pyshim`'s, on top of this crate.

mod console;
mod driver;
mod error;
mod helpers;
mod interact;
mod keys;
pub mod log;
mod machine;
mod network;
mod ocr;
mod polling;

mod report;
mod retry;
pub mod snapshot;
mod systemd;
pub mod xml_log;

pub use console::{Console, TAIL_LINES};
pub use driver::{
    ConditionGuard, Driver, DriverOptions, VLan, EXIT_AFTER_TIMEOUT, PRESERVE_BUDGET,
};
pub use error::{Error, Result};
pub use keys::key_for;
pub use machine::{Machine, MachineConfig, VhostUserPort, BOOT_TIMEOUT, DEFAULT_TIMEOUT};
pub use network::parse_info_network;
pub use polling::{Condition, PollingCondition};
pub use report::{junit_xml, merged_junit_xml, read_junit, SubtestResult, TestResult};
pub use retry::retry;
pub use systemd::{parse_property, parse_show, property_query, show_query, systemctl_command};
