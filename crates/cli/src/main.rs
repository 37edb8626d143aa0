//! The `vmrig` command line (work in progress).
fn main() {}
