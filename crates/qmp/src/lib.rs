//! QEMU Machine Protocol (QMP) for vmrig.
//!
//! This crate will hold a sans-IO QMP codec and a thin tokio client (see the
//! `crates/qmp` issue). It is empty until then.
