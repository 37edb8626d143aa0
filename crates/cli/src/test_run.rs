//! Running test scripts: NixOS's driver command line (both generations), and
//! the one test a child of `vmrig run` runs ([`execute`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vmrig_driver::{Driver, DriverOptions};

/// NixOS's `nixos-test-driver` flags, current (`-c CONFIG`) and older
/// (`--start-scripts`, `--vlans`, `--global-timeout`, positional script).
#[derive(clap::Args, Debug, Default)]
pub struct CompatArgs {
    /// The JSON config the current NixOS driver takes (vms, vlans, test_script, ...).
    #[arg(short = 'c', long = "config")]
    pub config: Option<PathBuf>,
    /// The test script (overrides the config's and the positional one).
    #[arg(long = "test-script")]
    pub test_script_flag: Option<PathBuf>,
    /// Keep the machines' state directories.
    #[arg(short = 'K', long = "keep-machine-state", alias = "keep-vm-state")]
    pub keep_machine_state: bool,
    /// Interactive mode (a Python prompt); not supported yet.
    #[arg(short = 'I', long)]
    pub interactive: bool,
    /// Command to run when a breakpoint is hit; not supported yet.
    #[arg(long = "debug-hook-attach")]
    pub debug_hook_attach: Option<String>,
    /// Output directory (screenshots, copied files); must be writable.
    #[arg(short = 'o', long = "output_directory", alias = "output-directory")]
    pub output_directory: Option<PathBuf>,
    /// Write a JUnit XML report of the subtests here.
    #[arg(long = "junit-xml")]
    pub junit_xml: Option<PathBuf>,
    /// debug, info, warning or error.
    #[arg(long = "log-level", env = "logLevel", default_value = "info", value_parser = ["debug", "info", "warning", "error"])]
    pub log_level: String,
    /// Older generation: the start scripts (`run-<name>-vm`).
    #[arg(long = "start-scripts", num_args = 1.., env = "startScripts", value_delimiter = ' ')]
    pub start_scripts: Vec<PathBuf>,
    /// Older generation: the VLAN numbers.
    #[arg(long = "vlans", num_args = 1.., env = "vlans", value_delimiter = ' ')]
    pub vlans: Vec<String>,
    /// Older generation: the global timeout in seconds.
    #[arg(long = "global-timeout", env = "globalTimeout")]
    pub global_timeout: Option<u64>,
    /// Older generation: the test script.
    #[arg(env = "testScript")]
    pub test_script: Option<PathBuf>,
}

/// What a run is made of, from either generation's flags or `vmrig run`.
pub(crate) struct Plan {
    /// The machines' start scripts.
    pub scripts: Vec<PathBuf>,
    /// VLAN numbers.
    pub vlans: Vec<u8>,
    /// Seconds.
    pub global_timeout: u64,
    /// The Python test script.
    pub test_script: PathBuf,
    /// The `nodes` global (vmrig.toml's nodes), for `vmrig run`.
    pub nodes: Option<serde_json::Value>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmrig: error: {message}");
    ExitCode::FAILURE
}

fn level(name: &str) -> tracing::Level {
    match name {
        "debug" => tracing::Level::DEBUG,
        "warning" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        _ => tracing::Level::INFO,
    }
}

/// `vmrig [FLAGS] [TESTSCRIPT]`: the NixOS driver's command line.
pub fn compat(mut args: CompatArgs) -> ExitCode {
    // argparse leaves the last word of a greedy `--vlans`/`--start-scripts`
    // list to the positional test script; clap does not: do it here.
    if args.test_script.is_none() && args.test_script_flag.is_none() && args.config.is_none() {
        if args.vlans.last().is_some_and(|v| v.parse::<u8>().is_err()) {
            args.test_script = args.vlans.pop().map(PathBuf::from);
        } else if args.start_scripts.len() > 1
            && !args
                .start_scripts
                .last()
                .is_some_and(|s| s.to_string_lossy().ends_with("-vm"))
        {
            args.test_script = args.start_scripts.pop();
        }
    }
    let vlans: Result<Vec<u8>, String> = args
        .vlans
        .iter()
        .map(|v| {
            v.parse()
                .map_err(|_| format!("--vlans: `{v}` is not a VLAN number (1-255)"))
        })
        .collect();
    let vlans = match vlans {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if args.interactive {
        return fail("interactive mode (-I) is not supported by vmrig yet");
    }
    let plan = match &args.config {
        Some(config) => match from_config(config, &args) {
            Ok(p) => p,
            Err(e) => return fail(e),
        },
        None => {
            let Some(test_script) = args
                .test_script_flag
                .clone()
                .or_else(|| args.test_script.clone())
            else {
                return fail("no test script: give one as an argument, with --test-script, or in a -c config");
            };
            if args.start_scripts.is_empty() {
                return fail("no machines: give --start-scripts run-NAME-vm ... or a -c config");
            }
            Plan {
                scripts: args.start_scripts.clone(),
                vlans,
                global_timeout: args.global_timeout.unwrap_or(3600),
                test_script,
                nodes: None,
            }
        }
    };
    execute(plan, &args)
}

fn from_config(path: &Path, args: &CompatArgs) -> Result<Plan, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let at = |what: &str| format!("{}: {what}", path.display());
    if v.get("containers")
        .and_then(|c| c.as_object())
        .is_some_and(|c| !c.is_empty())
    {
        return Err(at(
            "`containers` (systemd-nspawn machines) are not supported by vmrig",
        ));
    }
    if v.get("enable_ssh_backdoor").and_then(|b| b.as_bool()) == Some(true) {
        return Err(at("`enable_ssh_backdoor` is not supported by vmrig yet"));
    }
    let mut scripts = Vec::new();
    if let Some(vms) = v.get("vms").and_then(|v| v.as_object()) {
        for (name, vm) in vms {
            let script = vm
                .get("start_script")
                .and_then(|s| s.as_str())
                .ok_or_else(|| at(&format!("vms.{name}.start_script is missing")))?;
            scripts.push(PathBuf::from(script));
        }
    }
    let vlans = v
        .get("vlans")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default();
    let test_script = args
        .test_script_flag
        .clone()
        .or_else(|| {
            v.get("test_script")
                .and_then(|s| s.as_str())
                .map(PathBuf::from)
        })
        .ok_or_else(|| at("no test_script (and no --test-script)"))?;
    Ok(Plan {
        scripts,
        vlans,
        global_timeout: v
            .get("global_timeout")
            .and_then(|t| t.as_u64())
            .unwrap_or(3600),
        test_script,
        nodes: None,
    })
}

/// Runs a test script against its machines; exit status 0 when it passes.
pub(crate) fn execute(plan: Plan, args: &CompatArgs) -> ExitCode {
    vmrig_driver::log::init(level(&args.log_level));
    if args.debug_hook_attach.is_some() {
        tracing::warn!(
            "--debug-hook-attach is accepted but breakpoints are not supported by vmrig yet"
        );
    }
    if std::env::var_os("LOGFILE").is_some() {
        tracing::warn!("LOGFILE (the XML log) is not supported by vmrig yet; use --junit-xml");
    }
    if !plan.test_script.is_file() {
        return fail(format!(
            "test script {} does not exist",
            plan.test_script.display()
        ));
    }
    let mut opts = DriverOptions::new(plan.scripts);
    opts.vlans = plan.vlans;
    opts.keep_state = args.keep_machine_state;
    opts.global_timeout = Duration::from_secs(plan.global_timeout);
    opts.out_dir = args
        .output_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let driver = match Driver::new(opts) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let status = vmrig_pyshim::run_test_script(
        driver,
        &plan.test_script,
        plan.nodes.as_ref(),
        args.junit_xml.as_deref(),
    );
    if status == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
