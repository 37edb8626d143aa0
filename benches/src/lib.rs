//! Benchmarks for vmrig live in `benches/benches/`, one criterion group per
//! layer (`qmp`, `backdoor`, `vde`, `driver`). Run them with
//! `cargo bench -p vmrig-benches`.
