//! A VDE-compatible virtual Ethernet switch.
//!
//! This crate will hold the libvdeplug-compatible switch (see the
//! `crates/vde-net` issue). It is empty until then.
