//! The Python API of NixOS test scripts (`Machine`, `start_all`, `subtest`, ...)
//! over the Rust driver, through PyO3.
//!
//! This crate is filled by the cli + pyshim issue. It is empty until then.
