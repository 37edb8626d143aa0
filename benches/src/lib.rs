//! Benchmarks for vmrig live in `benches/benches/`, one per layer: criterion
//! groups for the pure layers (`qmp`, `backdoor`), and bench binaries that
//! print a table where real guests or vde2's `vde_switch` are involved
//! (`vde`, `driver`, `guest_boot`). Run one with
//! `cargo bench -p vmrig-benches --bench NAME`; docs/benchmarks.md has the
//! figures measured so far.
