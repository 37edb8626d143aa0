//! `vmrig vde-switch`: a stand-in for vde2's `vde_switch`.

use std::path::PathBuf;
use std::process::ExitCode;

use vmrig_vde_net::SwitchOptions;

mod console;

use console::run_standalone;

/// Run a VDE switch that QEMU (`-netdev vde,sock=DIR`) and `vde_plug` can join, with
/// vde_switch's flags and management console on stdin/stdout.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The switch directory (holds the control socket `ctl`).
    #[arg(short = 's', long = "sock", alias = "unix", value_name = "DIR")]
    pub sock: PathBuf,
    /// Mode of the switch directory, in octal.
    #[arg(long = "dirmode", value_name = "MODE", default_value = "0700", value_parser = parse_octal)]
    pub dirmode: u32,
    /// Hub mode: send every frame to every other port.
    #[arg(short = 'x', long = "hub")]
    pub hub: bool,
    /// Maximum number of ports.
    #[arg(short = 'n', long = "numports", default_value_t = 64)]
    pub numports: u32,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0700"))
}

/// Runs the switch until stdin closes or `shutdown` is typed.
pub fn run(args: Args) -> ExitCode {
    // Rejected clients and port changes are logged to stderr (RUST_LOG to tune).
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let mut opts = SwitchOptions::new(args.sock).hub(args.hub);
    opts.dir_mode = args.dirmode;
    opts.config.max_ports = args.numports;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmrig vde-switch: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let stdin = tokio::io::BufReader::new(tokio::io::stdin());
        tokio::select! {
            r = run_standalone(opts, stdin, tokio::io::stdout()) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    });
    // Stdin reads block a runtime thread; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmrig vde-switch: {e}");
            ExitCode::FAILURE
        }
    }
}
