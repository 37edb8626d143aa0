//! The `vmrig` command line: NixOS's driver command lines (`-c CONFIG`, or
//! `--start-scripts`/`--vlans` and a test script), `vmrig run` (test
//! directories run in parallel as child processes, with a result cache and CI
//! partitions), `repl`, `cache`, `doctor`, `guest build` and `vde-switch`.
//! Guests, machines, the Python API and the switch come from the library
//! crates; this crate parses arguments, plans runs and reports on them.
//! docs/cli.md in the repository is the reference.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cache;
mod checks;
mod config;
mod doctor;
mod interactive;
mod progress;
mod resume;
mod run;
mod runner;
mod signals;
mod test_run;
mod vde_switch;

#[derive(Parser)]
#[command(
    name = "vmrig",
    version,
    about = "Run NixOS-style integration tests against real QEMU virtual machines"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The NixOS driver's flags (used when no subcommand is given).
    #[command(flatten)]
    compat: test_run::CompatArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run test directories (DIR/vmrig.toml and DIR/test.py), in parallel,
    /// skipping those that passed unchanged before.
    Run(run::RunArgs),
    /// The result cache of `vmrig run` and its machine snapshots (`vmrig cache list`, `vmrig cache clear`).
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Restore a failed `vmrig run` test's machines as they were when it
    /// failed (OUTPUT/machines) and open a Python prompt with its globals.
    Resume(resume::ResumeArgs),
    /// Check the host: QEMU, kernel, KVM, vde2, Python, tesseract, debootstrap.
    Doctor(doctor::Args),
    /// A Python prompt with a test's globals: `vmrig repl DIR` (its vmrig.toml
    /// and test.py) or `vmrig repl` with the NixOS driver's flags (`-I`).
    Repl(test_run::CompatArgs),
    /// Build test guests and their start scripts.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Run a VDE switch (a stand-in for vde2's vde_switch).
    VdeSwitch(vde_switch::Args),
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build every node of a vmrig.toml: OUT/bin/run-<node>-vm, like a Nix result.
    Build {
        /// The test definition (vmrig.toml), or a directory holding one.
        definition: PathBuf,
        /// Output directory.
        #[arg(short, long, default_value = "result")]
        out: PathBuf,
        /// Accelerator the start scripts use: auto probes KVM with a bounded
        /// boot and falls back to TCG.
        #[arg(long, default_value = "tcg", value_parser = ["auto", "kvm", "tcg"])]
        accel: String,
        /// Kernel image to boot (default: the newest /boot/vmlinuz-* with modules).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Cache directory (default: $VMRIG_CACHE_DIR, $XDG_CACHE_HOME/vmrig or ~/.cache/vmrig).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => test_run::compat(cli.compat),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::Cache(cmd)) => match cache::command(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmrig: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Resume(args)) => resume::resume(args),
        Some(Command::Doctor(args)) => doctor::run(&args),
        Some(Command::Repl(flags)) => interactive::repl(flags),
        Some(Command::Guest(GuestCommand::Build {
            definition,
            out,
            accel,
            kernel,
            cache_dir,
        })) => guest_build(definition, out, &accel, kernel, cache_dir),
        Some(Command::VdeSwitch(args)) => vde_switch::run(args),
    }
}

fn guest_build(
    definition: PathBuf,
    out: PathBuf,
    accel: &str,
    kernel: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
) -> ExitCode {
    // The kit reports long steps (a debian image's first build) as log lines.
    vmrig_driver::log::init(tracing::Level::INFO);
    let definition = if definition.is_dir() {
        definition.join("vmrig.toml")
    } else {
        definition
    };
    let mut opts = vmrig_guest::BuildOptions {
        accel: accel.parse().expect("clap checked the value"),
        kernel,
        ..Default::default()
    };
    if let Some(dir) = cache_dir {
        opts.cache_dir = dir;
    }
    match vmrig_guest::build(&definition, &out, &opts) {
        Ok(built) => {
            for node in &built.nodes {
                println!("{}", node.start_script.display());
            }
            eprintln!(
                "vmrig: {} node(s) {} in {:.2} s (kernel {}, accel {}: {})",
                built.nodes.len(),
                if built.cached {
                    "from the cache"
                } else {
                    "built"
                },
                built.elapsed.as_secs_f64(),
                built.kernel_release,
                built.accel.as_str(),
                built.accel_reason,
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmrig: error: {e}");
            ExitCode::FAILURE
        }
    }
}
