//! Runs the tests of a `vmrig run`: builds (or reuses) each test's guests,
//! answers from the result cache, and runs the others as child `vmrig run`
//! processes within the job and memory limits.
//!
//! Children lead their own process groups and die with this process
//! (`PR_SET_PDEATHSIG`); SIGINT or SIGTERM here is passed on to each child,
//! whose driver kills its QEMUs; a child that does not exit within
//! [`GRACE`] (or on a second signal) is killed with its whole group.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::cache::{self, Hit, Inputs};
use crate::progress::{Line, Progress};
use crate::run::shown;

/// How long an interrupted child may take to stop its machines.
const GRACE: Duration = Duration::from_secs(15);

/// How long a child's output may stay open after it exited (a grandchild
/// holding the pipe must not hang the run).
const DRAIN: Duration = Duration::from_secs(2);

/// Console lines kept per test, shown when it fails and its log was not.
const TAIL: usize = 30;

/// One test directory of the run.
#[derive(Debug, Clone)]
pub struct Test {
    /// The directory's name.
    pub name: String,
    /// The directory, canonical.
    pub dir: PathBuf,
    /// The directory as given.
    pub given: PathBuf,
    /// Its output directory as the user named it.
    pub out: PathBuf,
    /// The same, absolute.
    pub out_abs: PathBuf,
}

/// How tests are run.
pub struct Settings {
    /// Tests at once.
    pub jobs: usize,
    /// Memory (MiB) the running tests' nodes may use together; `None`: no bound.
    pub memory_budget: Option<u64>,
    /// Ignore cached results.
    pub rerun: bool,
    /// The guests' accelerator.
    pub accel: vmrig_guest::AccelChoice,
    /// Flags passed on to each child.
    pub child_args: Vec<String>,
}

/// How a test ended.
#[derive(Debug)]
pub enum Outcome {
    /// It ran and passed.
    Passed,
    /// An unchanged test passed before.
    Cached(Box<Hit>),
    /// It ran and failed.
    Failed(String),
    /// It could not run (guests did not build, output not writable).
    Error(String),
    /// SIGINT or SIGTERM stopped it, or it never started.
    Interrupted,
}

impl Outcome {
    /// The summary's word.
    pub fn word(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Cached(_) => "cached",
            Outcome::Failed(_) => "FAILED",
            Outcome::Error(_) => "ERROR",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// Whether it counts as a pass.
    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Cached(_))
    }

    /// Why it did not pass.
    pub fn failure(&self) -> Option<String> {
        match self {
            Outcome::Passed | Outcome::Cached(_) => None,
            Outcome::Failed(why) | Outcome::Error(why) => Some(why.clone()),
            Outcome::Interrupted => Some("interrupted".into()),
        }
    }
}

/// A test's result.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub outcome: Outcome,
    /// Its wall time in this run.
    pub wall: Duration,
    /// Where its result is (the output directory, or a cache entry).
    pub location: PathBuf,
    /// Its JUnit report, if it wrote one.
    pub report: Option<String>,
}

/// SIGINT and SIGTERM, counted, as a background thread sees them.
pub struct Signals {
    count: Arc<AtomicUsize>,
    last: Arc<AtomicI32>,
}

impl Signals {
    /// Takes over SIGINT and SIGTERM for this process.
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Registered before any child exists, so no signal can slip past.
        let (mut int, mut term) = {
            let _guard = rt.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        let count = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(AtomicI32::new(0));
        let (c, l) = (count.clone(), last.clone());
        std::thread::spawn(move || {
            rt.block_on(async move {
                loop {
                    let sig = tokio::select! {
                        _ = int.recv() => libc::SIGINT,
                        _ = term.recv() => libc::SIGTERM,
                    };
                    l.store(sig, Ordering::SeqCst);
                    c.fetch_add(1, Ordering::SeqCst);
                }
            });
        });
        Ok(Signals { count, last })
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn last(&self) -> Option<Signal> {
        match self.last.load(Ordering::SeqCst) {
            libc::SIGINT => Some(Signal::INT),
            libc::SIGTERM => Some(Signal::TERM),
            _ => None,
        }
    }

    /// 130 after SIGINT, 143 after SIGTERM, as the driver exits.
    pub fn exit_code(&self) -> Option<u8> {
        match self.last.load(Ordering::SeqCst) {
            libc::SIGINT => Some(130),
            libc::SIGTERM => Some(143),
            _ => None,
        }
    }
}

/// In a child: be sent SIGTERM when the `vmrig run` that started us dies,
/// even by SIGKILL, so its driver still kills the QEMUs; exit at once if it
/// is already gone.
pub fn die_with_parent(parent: i32) {
    if let Err(e) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        tracing::warn!("cannot tie this test to its vmrig run: {e}");
    }
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) != Some(parent) {
        eprintln!("vmrig: error: the vmrig run that started this test is gone");
        std::process::exit(143);
    }
}

/// What the guest build and the cache say about a test.
struct Prepared {
    /// Holds the start scripts the child runs.
    guests: tempfile::TempDir,
    inputs: Inputs,
    key: String,
    memory: u64,
}

enum Event {
    Preparing(usize),
    Prepared(usize, Result<Result<Prepared, Box<Hit>>, String>),
    Line(usize, String),
    Eof(usize),
}

struct Running {
    child: Child,
    prepared: Prepared,
    log: std::fs::File,
    eof: bool,
    exited: Option<(ExitStatus, Instant)>,
    tail: VecDeque<String>,
}

enum State {
    Queued,
    Preparing,
    Ready(Prepared),
    Running(Box<Running>),
    Done(Finished),
}

/// Builds the guests of `test` and looks its inputs up in the result cache.
fn prepare(
    test: &Test,
    accel: vmrig_guest::AccelChoice,
    rerun: bool,
) -> Result<Result<Prepared, Box<Hit>>, String> {
    let guests = tempfile::Builder::new()
        .prefix("vmrig-guests-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let opts = vmrig_guest::BuildOptions {
        accel,
        ..Default::default()
    };
    let definition = test.dir.join("vmrig.toml");
    let built = vmrig_guest::build(&definition, guests.path(), &opts).map_err(|e| e.to_string())?;
    let inputs = Inputs::read(&definition, &test.dir.join("test.py"), guests.path())
        .map_err(|e| format!("{e:#}"))?;
    let key = inputs.key();
    if !rerun {
        if let Some(hit) = cache::lookup(&key) {
            return Ok(Err(Box::new(hit)));
        }
    }
    let memory = built
        .definition
        .nodes
        .values()
        .map(|n| u64::from(n.memory))
        .sum();
    Ok(Ok(Prepared {
        guests,
        inputs,
        key,
        memory,
    }))
}

/// Runs `tests` (in their order) and returns how each ended, in the same order.
pub fn run_all(tests: &[Test], settings: &Settings, signals: &Signals) -> Vec<Finished> {
    let progress = Progress::new(tests.len());
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    spawn_preparers(tests, settings, &tx, &stop);
    let mut states: Vec<State> = tests.iter().map(|_| State::Queued).collect();
    let mut lines: Vec<Option<Line>> = tests.iter().map(|_| None).collect();
    let mut started: Vec<Instant> = vec![Instant::now(); tests.len()];
    let mut seen_signals = 0;
    let mut interrupted_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        // Signals: pass the first on, kill on the second or after the grace time.
        let n = signals.count();
        if n > seen_signals {
            if seen_signals == 0 {
                interrupted_at = Some(Instant::now());
                stop.store(true, Ordering::SeqCst);
                progress.note("vmrig: interrupted: stopping every test");
                for (i, state) in states.iter_mut().enumerate() {
                    match state {
                        State::Running(r) => signal_child(&r.child, signals.last()),
                        State::Done(_) => {}
                        _ => {
                            let f = finish_unstarted(&tests[i], started[i]);
                            end_line(&progress, &mut lines[i], &tests[i], &f);
                            *state = State::Done(f);
                        }
                    }
                }
            } else {
                killed = true;
            }
            seen_signals = n;
        }
        if !killed && interrupted_at.is_some_and(|t| t.elapsed() > GRACE) {
            killed = true;
        }
        if killed {
            for state in &states {
                if let State::Running(r) = state {
                    kill_group(&r.child);
                }
            }
        }

        if interrupted_at.is_none() {
            start_ready(tests, settings, &mut states, &tx, &progress, &mut lines);
        }

        for i in 0..states.len() {
            let State::Running(r) = &mut states[i] else {
                continue;
            };
            if r.exited.is_none() {
                if let Ok(Some(status)) = r.child.try_wait() {
                    r.exited = Some((status, Instant::now()));
                }
            }
            let done = r
                .exited
                .is_some_and(|(_, at)| r.eof || at.elapsed() > DRAIN);
            if done {
                let State::Running(r) = std::mem::replace(&mut states[i], State::Queued) else {
                    unreachable!("matched above");
                };
                let f = finish_child(
                    &tests[i],
                    *r,
                    started[i],
                    interrupted_at.is_some(),
                    &progress,
                );
                end_line(&progress, &mut lines[i], &tests[i], &f);
                states[i] = State::Done(f);
            }
        }
        if states.iter().all(|s| matches!(s, State::Done(_))) {
            break;
        }

        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Event::Preparing(i)) => {
                if matches!(states[i], State::Queued) {
                    started[i] = Instant::now();
                    states[i] = State::Preparing;
                    lines[i] = Some(progress.start(&tests[i].name, "building guests"));
                }
            }
            Ok(Event::Prepared(i, result)) => {
                if !matches!(states[i], State::Preparing) {
                    continue; // interrupted meanwhile
                }
                states[i] = match result {
                    Ok(Ok(p)) => {
                        if let Some(l) = &lines[i] {
                            progress.status(l, "guests ready, waiting for a free slot");
                        }
                        State::Ready(p)
                    }
                    Ok(Err(hit)) => {
                        let f = Finished {
                            location: hit.location(),
                            outcome: Outcome::Cached(hit),
                            wall: started[i].elapsed(),
                            report: None,
                        };
                        let f = Finished {
                            report: cached_report(&f),
                            ..f
                        };
                        end_line(&progress, &mut lines[i], &tests[i], &f);
                        State::Done(f)
                    }
                    Err(why) => {
                        let f = Finished {
                            outcome: Outcome::Error(why),
                            wall: started[i].elapsed(),
                            location: tests[i].out.clone(),
                            report: None,
                        };
                        end_line(&progress, &mut lines[i], &tests[i], &f);
                        State::Done(f)
                    }
                };
            }
            Ok(Event::Line(i, text)) => {
                if let State::Running(r) = &mut states[i] {
                    let _ = writeln!(r.log, "{text}");
                    if r.tail.len() == TAIL {
                        r.tail.pop_front();
                    }
                    r.tail.push_back(text.clone());
                    if let Some(l) = &lines[i] {
                        progress.log(&tests[i].name, l, &text);
                    }
                }
            }
            Ok(Event::Eof(i)) => {
                if let State::Running(r) = &mut states[i] {
                    r.eof = true;
                }
            }
            Err(_) => {}
        }
    }
    states
        .into_iter()
        .map(|s| match s {
            State::Done(f) => f,
            _ => unreachable!("the loop ends when every test is done"),
        })
        .collect()
}

/// Guest builds and cache look-ups, a few at a time (they are quick when
/// cached and CPU-bound when not).
fn spawn_preparers(
    tests: &[Test],
    settings: &Settings,
    tx: &mpsc::Sender<Event>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(tests.len());
    let shared = Arc::new((tests.to_vec(), settings.accel, settings.rerun));
    for _ in 0..workers {
        let (next, tx, stop, shared) = (next.clone(), tx.clone(), stop.clone(), shared.clone());
        std::thread::spawn(move || {
            let (tests, accel, rerun) = &*shared;
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= tests.len() || stop.load(Ordering::SeqCst) {
                    break;
                }
                if tx.send(Event::Preparing(i)).is_err() {
                    break;
                }
                let result = prepare(&tests[i], *accel, *rerun);
                if tx.send(Event::Prepared(i, result)).is_err() {
                    break;
                }
            }
        });
    }
}

/// Starts ready tests, in order, while the job and memory limits allow.
fn start_ready(
    tests: &[Test],
    settings: &Settings,
    states: &mut [State],
    tx: &mpsc::Sender<Event>,
    progress: &Progress,
    lines: &mut [Option<Line>],
) {
    loop {
        let (mut running, mut memory) = (0, 0);
        for s in states.iter() {
            if let State::Running(r) = s {
                running += 1;
                memory += r.prepared.memory;
            }
        }
        if running >= settings.jobs {
            return;
        }
        let Some(i) = states.iter().position(|s| matches!(s, State::Ready(_))) else {
            return;
        };
        let State::Ready(p) = &states[i] else {
            unreachable!("found above");
        };
        // Within memory, but one test always runs, however big.
        if running > 0
            && settings
                .memory_budget
                .is_some_and(|b| memory + p.memory > b)
        {
            return;
        }
        let State::Ready(p) = std::mem::replace(&mut states[i], State::Queued) else {
            unreachable!("found above");
        };
        states[i] = match spawn_child(i, &tests[i], p, settings, tx) {
            Ok(r) => {
                if let Some(l) = &lines[i] {
                    progress.log(&tests[i].name, l, "vmrig: running the test");
                }
                State::Running(Box::new(r))
            }
            Err(why) => {
                let f = Finished {
                    outcome: Outcome::Error(why),
                    wall: Duration::ZERO,
                    location: tests[i].out.clone(),
                    report: None,
                };
                end_line(progress, &mut lines[i], &tests[i], &f);
                State::Done(f)
            }
        };
    }
}

fn spawn_child(
    i: usize,
    test: &Test,
    prepared: Prepared,
    settings: &Settings,
    tx: &mpsc::Sender<Event>,
) -> Result<Running, String> {
    let out = &test.out_abs;
    std::fs::create_dir_all(out)
        .map_err(|e| format!("cannot create the output directory {}: {e}", out.display()))?;
    // This directory no longer holds a cached result once a new run starts in it.
    let _ = std::fs::remove_file(out.join(cache::STAMP));
    let log_path = out.join("log.txt");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let _ = std::fs::remove_file(out.join("junit.xml"));
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the vmrig binary to run the test: {e}"))?;
    // Close-on-exec, so the tests started next do not hold this test's pipe open.
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| format!("cannot create a pipe for the test's log: {e}"))?;
    let reader = std::fs::File::from(reader);
    let child = {
        // One pipe for stdout and stderr keeps the script's prints in order
        // with the log; `cmd` (holding the write end) is dropped right after.
        let mut cmd = Command::new(&exe);
        cmd.arg("run")
            .arg(&test.dir)
            .arg("--child-guests")
            .arg(prepared.guests.path())
            .arg("--child-of")
            .arg(std::process::id().to_string())
            .arg("-o")
            .arg(out)
            .args(&settings.child_args)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(
                writer
                    .try_clone()
                    .map_err(|e| format!("cannot duplicate a pipe: {e}"))?,
            )
            .stderr(writer)
            .process_group(0);
        cmd.spawn()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?
    };
    let tx = tx.clone();
    std::thread::spawn(move || {
        let mut reader = std::io::BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\n', '\r']).to_owned();
                    if tx.send(Event::Line(i, text)).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof(i));
    });
    Ok(Running {
        child,
        prepared,
        log,
        eof: false,
        exited: None,
        tail: VecDeque::new(),
    })
}

fn signal_child(child: &Child, sig: Option<Signal>) {
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    if let (Some(pid), Some(sig)) = (pid, sig) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// SIGKILL to the group a child leads (never our own group, nor init's).
fn kill_group(child: &Child) {
    let pid = i32::try_from(child.id())
        .ok()
        .filter(|&p| p > 1)
        .and_then(Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
    }
}

fn finish_unstarted(test: &Test, started: Instant) -> Finished {
    Finished {
        outcome: Outcome::Interrupted,
        wall: started.elapsed(),
        location: test.out.clone(),
        report: None,
    }
}

fn finish_child(
    test: &Test,
    r: Running,
    started: Instant,
    interrupted: bool,
    progress: &Progress,
) -> Finished {
    let Running {
        mut child,
        prepared,
        tail,
        exited,
        ..
    } = r;
    let status = exited.map(|(s, _)| s).or_else(|| child.wait().ok());
    let report = std::fs::read_to_string(test.out_abs.join("junit.xml")).ok();
    let outcome = match status {
        Some(s) if s.success() => Outcome::Passed,
        _ if interrupted => Outcome::Interrupted,
        Some(s) => Outcome::Failed(match s.code() {
            Some(code) => format!("the test exited with status {code}"),
            None => format!("the test was killed ({s})"),
        }),
        None => Outcome::Failed("the test's process was lost".into()),
    };
    let wall = started.elapsed();
    if matches!(outcome, Outcome::Passed) {
        remember(test, &prepared, wall, progress);
    }
    if let (Outcome::Failed(_), false) = (&outcome, progress.echoes()) {
        let mut text = format!("{}: last lines of its log:", test.name);
        for l in &tail {
            text.push_str("\n    ");
            text.push_str(l);
        }
        progress.note(&text);
    }
    Finished {
        outcome,
        wall,
        location: test.out.clone(),
        report,
    }
}

/// Records a pass in the result cache, unless its inputs changed while it ran.
fn remember(test: &Test, prepared: &Prepared, wall: Duration, progress: &Progress) {
    let now = Inputs::read(
        &test.dir.join("vmrig.toml"),
        &test.dir.join("test.py"),
        prepared.guests.path(),
    );
    if now.as_ref().ok() != Some(&prepared.inputs) {
        progress.note(&format!(
            "vmrig: {}: not cached: vmrig.toml or test.py changed while it ran",
            test.name
        ));
        return;
    }
    let record = cache::Record {
        name: test.name.clone(),
        dir: test.dir.clone(),
        out_dir: test.out_abs.clone(),
        passed_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        wall_secs: wall.as_secs_f64(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    if let Err(e) = cache::store(&prepared.key, &record) {
        progress.note(&format!("vmrig: {}: not cached: {e:#}", test.name));
    }
}

fn cached_report(f: &Finished) -> Option<String> {
    let Outcome::Cached(hit) = &f.outcome else {
        return None;
    };
    std::fs::read_to_string(hit.entry.join("junit.xml")).ok()
}

fn end_line(progress: &Progress, line: &mut Option<Line>, test: &Test, f: &Finished) {
    let secs = f.wall.as_secs_f64();
    let message = match &f.outcome {
        Outcome::Passed => format!(
            "vmrig: {}: passed in {secs:.1} s (output in {})",
            test.name,
            shown(&f.location).display()
        ),
        Outcome::Cached(hit) => format!(
            "vmrig: {}: cached: {}; nothing changed, so it was not run again (--rerun runs it); result in {}",
            test.name,
            hit.describe(),
            shown(&f.location).display()
        ),
        Outcome::Failed(why) => format!(
            "vmrig: {}: FAILED in {secs:.1} s: {why}; log in {}",
            test.name,
            shown(&f.location.join("log.txt")).display()
        ),
        Outcome::Error(why) => format!("vmrig: {}: error: {why}", test.name),
        Outcome::Interrupted => format!("vmrig: {}: interrupted", test.name),
    };
    match line.take() {
        Some(l) => progress.finish(l, &message),
        None => progress.note(&message),
    }
}
