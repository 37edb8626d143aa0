//! Interactive mode: `-I/--interactive` in the NixOS command line and
//! `vmrig repl`. The REPL itself lives in the Python shim; here the run is
//! set up for a person at a prompt.

use std::process::ExitCode;
use std::time::Duration;

use vmrig_driver::DriverOptions;

use crate::test_run::{self, CompatArgs};

/// NixOS's driver has no global timer in interactive mode; a week (its
/// default) still bounds every wait.
const INTERACTIVE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// In interactive mode: no global timeout to speak of, and Ctrl-C is the
/// REPL's (it interrupts the current command) instead of ending the run.
pub fn adjust(opts: &mut DriverOptions, args: &CompatArgs) {
    if args.interactive {
        opts.global_timeout = INTERACTIVE_TIMEOUT;
        opts.handle_signals = false;
    }
}

/// `vmrig repl [DIR | FLAGS]`: the REPL for a test directory (its
/// vmrig.toml and test.py) or for the NixOS driver's flags.
pub fn repl(mut flags: CompatArgs) -> ExitCode {
    flags.interactive = true;
    match flags.test_script.take() {
        Some(dir) if dir.is_dir() && flags.start_scripts.is_empty() && flags.config.is_none() => {
            test_run::run_dir(&dir, &flags)
        }
        script => {
            flags.test_script = script;
            test_run::compat(flags)
        }
    }
}
