//! The backdoor shell protocol spoken between the vmrig driver and a guest's
//! root shell on `/dev/hvc0`.
//!
//! This crate will hold the command encoding and the streaming decoder (see the
//! `crates/backdoor` issue). It is empty until then.
