//! Running test scripts: NixOS's driver command line (both generations), and
//! the one test a child of `vmrig run` runs ([`execute`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vmrig_driver::snapshot::Store;
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
    /// Interactive mode: a Python prompt with the test's globals instead of
    /// running the script (`test_script()` runs it); history in ./.nixos-test-history.
    #[arg(short = 'I', long)]
    pub interactive: bool,
    /// At a failure or `debug.breakpoint()`: print `sudo CMD PATTERN` and wait
    /// for a debugger (pdb) on TCP 127.0.0.1:4444.
    #[arg(long = "debug-hook-attach", value_name = "CMD")]
    pub debug_hook_attach: Option<String>,
    /// Output directory (screenshots, copied files); must be writable.
    #[arg(short = 'o', long = "output_directory", alias = "output-directory")]
    pub output_directory: Option<PathBuf>,
    /// Write a JUnit XML report of the subtests here (a relative path is
    /// under the output directory, as in NixOS).
    #[arg(long = "junit-xml")]
    pub junit_xml: Option<PathBuf>,
    /// debug, info, warning or error.
    #[arg(long = "log-level", env = "logLevel", default_value = "info", value_parser = ["debug", "info", "warning", "error"])]
    pub log_level: String,
    /// Save each machine when it is first ready and restore it in later runs
    /// instead of booting (vmrig's; off by default with NixOS's command lines).
    #[arg(long = "snapshots")]
    pub snapshots: bool,
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
    /// The Python test script; missing only in interactive mode.
    pub test_script: Option<PathBuf>,
    /// The `nodes` global (vmrig.toml's nodes), for `vmrig run`.
    pub nodes: Option<serde_json::Value>,
    /// Whether OCR is allowed (NixOS's `enableOCR`).
    pub ocr: bool,
    /// Where machines are saved when ready and restored from in later runs
    /// (or, for `vmrig resume`, a failed test's saved machines).
    pub snapshots: Option<Store>,
    /// Machines that always boot (`snapshot = false`).
    pub no_snapshot: Vec<String>,
    /// Where a failed test's machines are saved (`vmrig run`).
    pub forensics: Option<Store>,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("vmrig: error: {message}");
    ExitCode::FAILURE
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
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| format!("--vlans: `{v}` is not a VLAN number (1-255)"))
        })
        .collect();
    let vlans = match vlans {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if let Some(dir) = &args.output_directory {
        if let Err(e) = crate::checks::writable_dir(dir) {
            // argparse's type check in NixOS: a usage error.
            eprintln!("vmrig: error: argument -o/--output_directory: {e}");
            return ExitCode::from(2);
        }
    }
    let plan = match &args.config {
        Some(config) => match from_config(config, &args) {
            Ok(p) => p,
            Err(e) => return fail(e),
        },
        None => {
            let test_script = args
                .test_script_flag
                .clone()
                .or_else(|| args.test_script.clone());
            if test_script.is_none() && !args.interactive {
                return fail("no test script: give one as an argument, with --test-script, or in a -c config");
            }
            if args.start_scripts.is_empty() {
                return fail("no machines: give --start-scripts run-NAME-vm ... or a -c config");
            }
            Plan {
                scripts: args.start_scripts.clone(),
                vlans,
                global_timeout: args.global_timeout.unwrap_or(3600),
                test_script,
                nodes: None,
                ocr: true,
                snapshots: args.snapshots.then(Store::default_store),
                no_snapshot: Vec::new(),
                forensics: None,
            }
        }
    };
    execute(plan, &args)
}

fn from_config(path: &Path, args: &CompatArgs) -> Result<Plan, String> {
    let config = crate::config::Config::load(path)?;
    let test_script = args.test_script_flag.clone().or(config.test_script);
    if test_script.is_none() && !args.interactive {
        return Err(format!(
            "{}: no `test_script` (and no --test-script)",
            path.display()
        ));
    }
    Ok(Plan {
        scripts: config.vms.into_values().map(|vm| vm.start_script).collect(),
        vlans: config.vlans.iter().map(|v| v.0).collect(),
        global_timeout: config.global_timeout.map_or(3600, |t| t.ceil() as u64),
        test_script,
        nodes: None,
        ocr: config.enable_ocr.unwrap_or(true),
        snapshots: args.snapshots.then(Store::default_store),
        no_snapshot: Vec::new(),
        forensics: None,
    })
}

/// `vmrig run DIR`: builds DIR/vmrig.toml's guests (cached), runs DIR/test.py.
pub fn run_dir(dir: &Path, args: &CompatArgs) -> ExitCode {
    let definition = dir.join("vmrig.toml");
    let test_script = args
        .test_script_flag
        .clone()
        .unwrap_or_else(|| dir.join("test.py"));
    if !test_script.is_file() {
        return fail(format!("{} does not exist", test_script.display()));
    }
    let result = match tempfile::Builder::new().prefix("vmrig-result-").tempdir() {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot create a temporary directory: {e}")),
    };
    let built = match vmrig_guest::build(
        &definition,
        result.path(),
        &vmrig_guest::BuildOptions::default(),
    ) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let nodes = serde_json::to_value(&built.definition.nodes).ok();
    let plan = Plan {
        scripts: built.nodes.iter().map(|n| n.start_script.clone()).collect(),
        vlans: built.definition.vlans(),
        global_timeout: args.global_timeout.unwrap_or(3600),
        test_script: Some(test_script),
        ocr: built.definition.enable_ocr,
        snapshots: Some(Store::default_store()),
        forensics: None,
        no_snapshot: built.definition.unsnapshotted(),
        nodes,
    };
    execute(plan, args)
}

/// Runs a test script against its machines; exit status 0 when it passes.
pub(crate) fn execute(plan: Plan, args: &CompatArgs) -> ExitCode {
    let xml_log = match vmrig_pyshim::init_logging(&args.log_level) {
        Ok(log) => log,
        Err(e) => return fail(e),
    };
    if let Some(script) = plan.test_script.as_ref().filter(|s| !s.is_file()) {
        return fail(format!("test script {} does not exist", script.display()));
    }
    let mut opts = DriverOptions::new(plan.scripts);
    opts.vlans = plan.vlans;
    opts.keep_state = args.keep_machine_state;
    opts.global_timeout = Duration::from_secs(plan.global_timeout);
    opts.ocr = plan.ocr;
    let resuming = plan.snapshots.as_ref().is_some_and(Store::is_forensic);
    opts.snapshots = plan.snapshots;
    opts.no_snapshot = plan.no_snapshot;
    opts.forensics = plan.forensics;
    // A script blocked in a machine call fails as soon as the machines are killed;
    // one that never calls the driver again ends here, as under NixOS.
    opts.exit_after_timeout = Some(vmrig_driver::EXIT_AFTER_TIMEOUT);
    opts.out_dir = args
        .output_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    crate::interactive::adjust(&mut opts, args);
    let out_dir = opts.out_dir.clone();
    let driver = match Driver::new(opts) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if resuming {
        if let Err(e) = crate::resume::restore_saved(&driver) {
            return fail(e);
        }
    }
    let status = vmrig_pyshim::run(
        driver,
        &vmrig_pyshim::ScriptOptions {
            script: plan.test_script,
            nodes: plan.nodes,
            // NixOS writes a relative --junit-xml path under the output directory.
            junit_xml: args.junit_xml.as_ref().map(|p| out_dir.join(p)),
            debug_hook_attach: args.debug_hook_attach.clone(),
            interactive: args.interactive,
            history: None,
        },
    );
    if let Some(log) = xml_log {
        log.finish();
    }
    if status == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
