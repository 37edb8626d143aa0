//! `vmrig run DIR...`: test directories in, reports and a summary out.
//!
//! This module plans a run (which tests, where their output goes, how many
//! at once, which share of a partitioned suite) and prints the summary;
//! [`crate::runner`] runs the tests, each as a child `vmrig` process so that
//! every test has its own Python interpreter and signal handling.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::runner::{Outcome, Settings, Test};
use crate::signals::Signals;

/// The flags of `vmrig run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Test directories, each holding vmrig.toml (the nodes) and test.py (the script).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Output directory. With one DIR, the test's reports go there (default
    /// ./vmrig-out/<name>, name being the directory's name); with several,
    /// each test's go to OUTPUT/<name> (default ./vmrig-out/<name>).
    #[arg(
        short = 'o',
        long = "output",
        alias = "output_directory",
        alias = "output-directory"
    )]
    pub output: Option<PathBuf>,
    /// How many tests run at once (default: as many as the cores and the
    /// available memory allow, counting each test's node memory).
    #[arg(short = 'j', long = "jobs", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Run share K of N (1-based) for a CI matrix: the tests sorted by name,
    /// the i-th of them (from 0) belongs to share i % N + 1.
    #[arg(long, value_name = "K/N", value_parser = parse_partition)]
    pub partition: Option<Partition>,
    /// Run tests even when an unchanged test already passed (ignore the result cache).
    #[arg(long)]
    pub rerun: bool,
    /// Also write one JUnit XML report of every test of this run (one
    /// testsuite per test); each test's own is OUTPUT/<name>/junit.xml.
    #[arg(long = "junit-xml")]
    pub junit_xml: Option<PathBuf>,
    /// Keep the machines' state directories.
    #[arg(short = 'K', long = "keep-machine-state", alias = "keep-vm-state")]
    pub keep_machine_state: bool,
    /// debug, info, warning or error.
    #[arg(long = "log-level", env = "logLevel", default_value = "info", value_parser = ["debug", "info", "warning", "error"])]
    pub log_level: String,
    /// Bound for each test, in seconds (default 3600).
    #[arg(long = "global-timeout")]
    pub global_timeout: Option<u64>,
    /// Accelerator of the guests: auto probes KVM with a bounded boot and
    /// falls back to TCG.
    #[arg(long, default_value = "tcg", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Boot every machine instead of restoring snapshots, and save none
    /// (tests of the boot itself; `snapshot = false` does it for one node).
    #[arg(long = "no-snapshots")]
    pub no_snapshots: bool,
    /// Do not save a failed test's machines into OUTPUT/<name>/machines (for
    /// `vmrig resume`).
    #[arg(long = "no-forensics")]
    pub no_forensics: bool,
    /// Internal: run the one DIR in this process with its guests built in this directory.
    #[arg(long, hide = true)]
    pub child_guests: Option<PathBuf>,
    /// Internal: the pid of the `vmrig run` that started this one.
    #[arg(long, hide = true)]
    pub child_of: Option<i32>,
}

/// `--partition K/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based share.
    pub k: usize,
    /// Number of shares.
    pub n: usize,
}

fn parse_partition(s: &str) -> Result<Partition, String> {
    let bad = || format!("`{s}` is not K/N with 1 <= K <= N (e.g. 2/4)");
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok(Partition { k, n })
}

impl Partition {
    /// The tests of this share, from tests sorted by name.
    pub fn select<T>(self, sorted: Vec<T>) -> Vec<T> {
        sorted
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.n == self.k - 1)
            .map(|(_, t)| t)
            .collect()
    }
}

/// `vmrig run`.
pub fn run(args: RunArgs) -> ExitCode {
    if let Some(guests) = &args.child_guests {
        return child(&args, guests);
    }
    let started = Instant::now();
    // The guest kit reports long steps (a debian image's first build) as log lines.
    vmrig_driver::log::init(tracing::Level::INFO);
    let mut tests = match plan(&args) {
        Ok(t) => t,
        Err(errors) => {
            for e in errors {
                eprintln!("vmrig: error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let total = tests.len();
    if let Some(p) = args.partition {
        tests = p.select(tests);
        eprintln!(
            "vmrig: partition {}/{}: {} of {total} test(s): {}",
            p.k,
            p.n,
            tests.len(),
            tests
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vmrig: error: cannot handle SIGINT/SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings {
        jobs: args.jobs.map_or_else(cores, usize::from),
        memory_budget: args.jobs.is_none().then(available_memory_mib).flatten(),
        rerun: args.rerun,
        accel: args.accel.parse().expect("clap checked the value"),
        child_args: child_args(&args),
    };
    let finished = crate::runner::run_all(&tests, &settings, &signals);
    print_summary(&tests, &finished, started.elapsed());
    if let Some(path) = &args.junit_xml {
        let results: Vec<vmrig_driver::TestResult> = tests
            .iter()
            .zip(&finished)
            .map(|(t, f)| vmrig_driver::TestResult {
                name: t.name.clone(),
                time: f.wall,
                subtests: f.subtests.clone(),
                failure: f.outcome.failure(),
            })
            .collect();
        if let Err(e) = std::fs::write(path, vmrig_driver::merged_junit_xml(&results)) {
            eprintln!(
                "vmrig: error: cannot write the JUnit report {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    if let Some(code) = signals.exit_code() {
        return ExitCode::from(code);
    }
    if finished.iter().all(|f| f.outcome.is_pass()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The tests of the run, sorted by name, or every problem with the arguments.
fn plan(args: &RunArgs) -> Result<Vec<Test>, Vec<String>> {
    let mut errors = Vec::new();
    let mut tests: Vec<Test> = Vec::new();
    let hint = "a test directory holds vmrig.toml (the nodes) and test.py (the test script)";
    for dir in &args.dirs {
        if !dir.exists() {
            errors.push(format!("test directory {} does not exist", dir.display()));
            continue;
        }
        if !dir.is_dir() {
            errors.push(format!("{} is not a directory ({hint})", dir.display()));
            continue;
        }
        let missing: Vec<&str> = ["vmrig.toml", "test.py"]
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            errors.push(format!(
                "{} has no {} ({hint})",
                dir.display(),
                missing.join(" and no ")
            ));
            continue;
        }
        let canonical = match std::fs::canonicalize(dir) {
            Ok(c) => c,
            Err(e) => {
                errors.push(format!("{}: {e}", dir.display()));
                continue;
            }
        };
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        if let Some(other) = tests.iter().find(|t| t.dir == canonical) {
            errors.push(format!(
                "{} is given twice (also as {})",
                dir.display(),
                other.given.display()
            ));
            continue;
        }
        if args.dirs.len() > 1 {
            if let Some(other) = tests.iter().find(|t| t.name == name) {
                errors.push(format!(
                    "two tests are named `{name}` ({} and {}): their output directories would clash",
                    other.given.display(),
                    dir.display()
                ));
                continue;
            }
        }
        let out = match (&args.output, args.dirs.len()) {
            (Some(o), 1) => o.clone(),
            (Some(o), _) => o.join(&name),
            (None, _) => Path::new("vmrig-out").join(&name),
        };
        tests.push(Test {
            name,
            dir: canonical,
            given: dir.clone(),
            out_abs: std::path::absolute(&out).unwrap_or_else(|_| out.clone()),
            out,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    tests.sort_by(|a, b| (&a.name, &a.dir).cmp(&(&b.name, &b.dir)));
    Ok(tests)
}

/// The flags a child `vmrig run` gets from ours.
fn child_args(args: &RunArgs) -> Vec<String> {
    let mut v = vec!["--log-level".to_owned(), args.log_level.clone()];
    if let Some(t) = args.global_timeout {
        v.extend(["--global-timeout".to_owned(), t.to_string()]);
    }
    if args.keep_machine_state {
        v.push("--keep-machine-state".to_owned());
    }
    if args.no_snapshots {
        v.push("--no-snapshots".to_owned());
    }
    if args.no_forensics {
        v.push("--no-forensics".to_owned());
    }
    v
}

/// One test run in this process: the child side of [`crate::runner`].
fn child(args: &RunArgs, guests: &Path) -> ExitCode {
    if let Some(parent) = args.child_of {
        crate::signals::die_with_parent(parent);
    }
    let fail = |msg: String| {
        eprintln!("vmrig: error: {msg}");
        ExitCode::FAILURE
    };
    let ([dir], Some(out)) = (args.dirs.as_slice(), &args.output) else {
        return fail("--child-guests takes one DIR and -o".into());
    };
    let def = match vmrig_guest::Definition::load(&dir.join("vmrig.toml")) {
        Ok(d) => d,
        Err(e) => return fail(e.to_string()),
    };
    let scripts: Vec<PathBuf> = def
        .nodes
        .keys()
        .map(|n| guests.join("bin").join(format!("run-{n}-vm")))
        .collect();
    let nodes = serde_json::to_value(&def.nodes).ok();
    let forensics = if args.no_forensics {
        let _ = std::fs::remove_dir_all(out.join(crate::resume::MACHINES));
        None
    } else {
        let info = crate::resume::Saved {
            test: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
            vlans: def.vlans(),
            nodes: nodes.clone(),
            ocr: def.enable_ocr,
        };
        match crate::resume::prepare(out, &info, &scripts, &dir.join("test.py")) {
            Ok(store) => Some(store),
            Err(e) => return fail(e),
        }
    };
    let plan = crate::test_run::Plan {
        scripts,
        vlans: def.vlans(),
        global_timeout: args.global_timeout.unwrap_or(3600),
        test_script: Some(dir.join("test.py")),
        nodes,
        ocr: def.enable_ocr,
        snapshots: (!args.no_snapshots).then(vmrig_driver::snapshot::Store::default_store),
        no_snapshot: def.unsnapshotted(),
        forensics,
    };
    let flags = crate::test_run::CompatArgs {
        keep_machine_state: args.keep_machine_state,
        output_directory: Some(out.clone()),
        junit_xml: Some(out.join("junit.xml")),
        log_level: args.log_level.clone(),
        ..Default::default()
    };
    let status = crate::test_run::execute(plan, &flags);
    crate::resume::tidy(out);
    status
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `MemAvailable` of /proc/meminfo, in MiB.
fn available_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// A path as the user sees it: relative to the working directory when under it.
pub fn shown(path: &Path) -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_owned))
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| path.to_owned())
}

fn print_summary(tests: &[Test], finished: &[crate::runner::Finished], wall: Duration) {
    let rows: Vec<[String; 4]> = tests
        .iter()
        .zip(finished)
        .map(|(t, f)| {
            [
                t.name.clone(),
                f.outcome.word().to_owned(),
                format!("{:.2} s", f.wall.as_secs_f64()),
                shown(&f.location).display().to_string(),
            ]
        })
        .collect();
    let header = [
        "TEST".to_owned(),
        "RESULT".to_owned(),
        "TIME".to_owned(),
        "OUTPUT".to_owned(),
    ];
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    println!();
    for row in std::iter::once(&header).chain(&rows) {
        println!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    let count = |f: fn(&Outcome) -> bool| finished.iter().filter(|x| f(&x.outcome)).count();
    println!(
        "{} test(s): {} passed, {} cached, {} failed, {} interrupted, in {:.2} s",
        finished.len(),
        count(|o| matches!(o, Outcome::Passed)),
        count(|o| matches!(o, Outcome::Cached(_))),
        count(|o| matches!(o, Outcome::Failed(_) | Outcome::Error(_))),
        count(|o| matches!(o, Outcome::Interrupted)),
        wall.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_one_based_and_cover_everything_once() {
        assert_eq!(parse_partition("2/3"), Ok(Partition { k: 2, n: 3 }));
        for bad in ["0/3", "4/3", "1", "a/b", "1/0", ""] {
            assert!(parse_partition(bad).is_err(), "{bad}");
        }
        let all: Vec<u32> = (0..7).collect();
        let shares: Vec<Vec<u32>> = (1..=3)
            .map(|k| Partition { k, n: 3 }.select(all.clone()))
            .collect();
        assert_eq!(shares[0], [0, 3, 6]);
        assert_eq!(shares[1], [1, 4]);
        assert_eq!(shares[2], [2, 5]);
    }
}
