//! The `vmrig` command line (work in progress).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod vde_switch;

/// Run NixOS-style integration tests against real QEMU virtual machines.
#[derive(Debug, Parser)]
#[command(name = "vmrig", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a VDE switch (a stand-in for vde2's vde_switch).
    VdeSwitch(vde_switch::Args),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::VdeSwitch(args) => vde_switch::run(args),
    }
}
