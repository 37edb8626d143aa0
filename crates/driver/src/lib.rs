//! Orchestration of a vmrig test run: the `Driver`, its `Machine`s and `VLan`s.
//!
//! This crate is filled by the driver issue; it builds on `vmrig-qmp`,
//! `vmrig-backdoor` and `vmrig-vde-net`. It is empty until then.
