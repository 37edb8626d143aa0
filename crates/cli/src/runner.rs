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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::cache::{self, Hit, Inputs};
use crate::progress::{Line, Progress};
use crate::run::shown;
use crate::signals::{self, Signals};
use vmrig_driver::SubtestResult;

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
    /// Its subtests, from the JUnit report it wrote (none if it wrote none).
    pub subtests: Vec<SubtestResult>,
}

/// What the guest build and the cache say about a test that must run.
struct Prepared {
    /// Holds the start scripts the child runs.
    guests: tempfile::TempDir,
    inputs: Inputs,
    key: String,
    memory: u64,
}

/// The answer of [`prepare`].
enum Prep {
    Ready(Prepared),
    Cached(Box<Hit>),
    Failed(String),
}

enum Event {
    Preparing(usize),
    Prepared(usize, Prep),
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
fn prepare(test: &Test, accel: vmrig_guest::AccelChoice, rerun: bool) -> Prep {
    let guests = match tempfile::Builder::new().prefix("vmrig-guests-").tempdir() {
        Ok(g) => g,
        Err(e) => return Prep::Failed(format!("cannot create a temporary directory: {e}")),
    };
    let opts = vmrig_guest::BuildOptions {
        accel,
        ..Default::default()
    };
    let definition = test.dir.join("vmrig.toml");
    let built = match vmrig_guest::build(&definition, guests.path(), &opts) {
        Ok(b) => b,
        Err(e) => return Prep::Failed(e.to_string()),
    };
    let inputs = match Inputs::read(&definition, &test.dir.join("test.py"), guests.path()) {
        Ok(i) => i,
        Err(e) => return Prep::Failed(format!("{e:#}")),
    };
    let key = inputs.key();
    if !rerun {
        if let Some(hit) = cache::lookup(&key) {
            return Prep::Cached(Box::new(hit));
        }
    }
    let memory = built
        .definition
        .nodes
        .values()
        .map(|n| u64::from(n.memory))
        .sum();
    Prep::Ready(Prepared {
        guests,
        inputs,
        key,
        memory,
    })
}

/// Runs `tests` (in their order) and returns how each ended, in the same order.
pub fn run_all(tests: &[Test], settings: &Settings, signals: &Signals) -> Vec<Finished> {
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_preparers(tests, settings, &tx, &stop);
    let mut run = Scheduler {
        tests,
        settings,
        progress: Progress::new(tests.len()),
        tx,
        states: tests.iter().map(|_| State::Queued).collect(),
        lines: tests.iter().map(|_| None).collect(),
        started: vec![Instant::now(); tests.len()],
        ready_at: vec![None; tests.len()],
        interrupted_at: None,
        killed: false,
    };
    let mut seen_signals = 0;
    while !run.states.iter().all(|s| matches!(s, State::Done(_))) {
        let n = signals.count();
        if n > seen_signals {
            stop.store(true, Ordering::SeqCst);
            run.interrupt(signals.last(), seen_signals > 0);
            seen_signals = n;
        }
        if run.interrupted_at.is_some_and(|t| t.elapsed() > GRACE) {
            run.interrupt(None, true);
        }
        if run.interrupted_at.is_none() {
            run.start_ready();
        }
        run.reap();
        if let Ok(event) = rx.recv_timeout(Duration::from_millis(50)) {
            run.on(event);
        }
    }
    run.states
        .into_iter()
        .map(|s| match s {
            State::Done(f) => f,
            _ => unreachable!("the loop ends when every test is done"),
        })
        .collect()
}

/// The state of every test of a run, changed by events, signals and exits.
struct Scheduler<'a> {
    tests: &'a [Test],
    settings: &'a Settings,
    progress: Progress,
    tx: mpsc::Sender<Event>,
    states: Vec<State>,
    lines: Vec<Option<Line>>,
    started: Vec<Instant>,
    /// When each test's guests were ready, while it waits for a free slot (the wait
    /// is not part of its time: `started` moves on by it when the test starts).
    ready_at: Vec<Option<Instant>>,
    interrupted_at: Option<Instant>,
    killed: bool,
}

impl Scheduler<'_> {
    /// A test's own time so far: building its guests and running, not waiting for a
    /// free slot.
    fn took(&self, i: usize) -> Duration {
        let waiting = self.ready_at[i].map_or(Duration::ZERO, |t| t.elapsed());
        self.started[i].elapsed().saturating_sub(waiting)
    }

    /// The first signal is passed on to running tests and ends the others;
    /// a second (or the end of the grace time) kills what still runs.
    fn interrupt(&mut self, sig: Option<rustix::process::Signal>, kill: bool) {
        if self.interrupted_at.is_none() {
            self.interrupted_at = Some(Instant::now());
            self.progress
                .note("vmrig: interrupted: stopping every test");
            for i in 0..self.states.len() {
                match &self.states[i] {
                    State::Running(r) => signals::forward(&r.child, sig),
                    State::Done(_) => {}
                    _ => self.done(i, Outcome::Interrupted, Vec::new()),
                }
            }
        } else if kill && !self.killed {
            self.killed = true;
            for state in &self.states {
                if let State::Running(r) = state {
                    vmrig_guest::process::kill_group(r.child.id());
                }
            }
        }
    }

    /// Ends test `i` and its live line.
    fn done(&mut self, i: usize, outcome: Outcome, subtests: Vec<SubtestResult>) {
        let test = &self.tests[i];
        let location = match &outcome {
            Outcome::Cached(hit) => hit.location(),
            _ => test.out.clone(),
        };
        let f = Finished {
            outcome,
            wall: self.took(i),
            location,
            subtests,
        };
        let secs = f.wall.as_secs_f64();
        let at = shown(&f.location);
        let name = &test.name;
        let message = match &f.outcome {
            Outcome::Passed => {
                format!("vmrig: {name}: passed in {secs:.1} s (output in {})", at.display())
            }
            Outcome::Cached(hit) => format!(
                "vmrig: {name}: cached: {}; nothing changed, so it was not run again (--rerun runs it); result in {}",
                hit.describe(),
                at.display()
            ),
            Outcome::Failed(why) => format!(
                "vmrig: {name}: FAILED in {secs:.1} s: {why}; log in {}",
                at.join("log.txt").display()
            ),
            Outcome::Error(why) => format!("vmrig: {name}: error: {why}"),
            Outcome::Interrupted => format!("vmrig: {name}: interrupted"),
        };
        match self.lines[i].take() {
            Some(l) => self.progress.finish(l, &message),
            None => self.progress.note(&message),
        }
        self.states[i] = State::Done(f);
    }

    fn on(&mut self, event: Event) {
        match event {
            Event::Preparing(i) => {
                if matches!(self.states[i], State::Queued) {
                    self.started[i] = Instant::now();
                    self.states[i] = State::Preparing;
                    self.lines[i] =
                        Some(self.progress.start(&self.tests[i].name, "building guests"));
                }
            }
            // Not Preparing: interrupted meanwhile.
            Event::Prepared(i, _) if !matches!(self.states[i], State::Preparing) => {}
            Event::Prepared(i, Prep::Ready(p)) => {
                if let Some(l) = &self.lines[i] {
                    self.progress
                        .status(l, "guests ready, waiting for a free slot");
                }
                self.ready_at[i] = Some(Instant::now());
                self.states[i] = State::Ready(p);
            }
            Event::Prepared(i, Prep::Cached(hit)) => {
                let subtests = read_subtests(&hit.entry.join("junit.xml"));
                self.done(i, Outcome::Cached(hit), subtests);
            }
            Event::Prepared(i, Prep::Failed(why)) => self.done(i, Outcome::Error(why), Vec::new()),
            Event::Line(i, text) => {
                if let State::Running(r) = &mut self.states[i] {
                    let _ = writeln!(r.log, "{text}");
                    if r.tail.len() == TAIL {
                        r.tail.pop_front();
                    }
                    r.tail.push_back(text.clone());
                    if let Some(l) = &self.lines[i] {
                        self.progress.log(&self.tests[i].name, l, &text);
                    }
                }
            }
            Event::Eof(i) => {
                if let State::Running(r) = &mut self.states[i] {
                    r.eof = true;
                }
            }
        }
    }

    /// Starts ready tests, in order, while the job and memory limits allow.
    fn start_ready(&mut self) {
        loop {
            let (mut running, mut memory) = (0, 0);
            for s in &self.states {
                if let State::Running(r) = s {
                    running += 1;
                    memory += r.prepared.memory;
                }
            }
            if running >= self.settings.jobs {
                return;
            }
            let Some(i) = self
                .states
                .iter()
                .position(|s| matches!(s, State::Ready(_)))
            else {
                return;
            };
            let State::Ready(p) = &self.states[i] else {
                unreachable!("found above");
            };
            // Within memory, but one test always runs, however big.
            let over = self
                .settings
                .memory_budget
                .is_some_and(|b| memory + p.memory > b);
            if running > 0 && over {
                return;
            }
            let State::Ready(p) = std::mem::replace(&mut self.states[i], State::Queued) else {
                unreachable!("found above");
            };
            if let Some(ready) = self.ready_at[i].take() {
                self.started[i] += ready.elapsed();
            }
            match spawn_child(i, &self.tests[i], p, self.settings, &self.tx) {
                Ok(r) => {
                    if let Some(l) = &self.lines[i] {
                        self.progress
                            .log(&self.tests[i].name, l, "vmrig: running the test");
                    }
                    self.states[i] = State::Running(Box::new(r));
                }
                Err(why) => self.done(i, Outcome::Error(why), Vec::new()),
            }
        }
    }

    /// Ends the tests whose process exited and whose output is read.
    fn reap(&mut self) {
        for i in 0..self.states.len() {
            let State::Running(r) = &mut self.states[i] else {
                continue;
            };
            if r.exited.is_none() {
                if let Ok(Some(status)) = r.child.try_wait() {
                    r.exited = Some((status, Instant::now()));
                }
            }
            if !r
                .exited
                .is_some_and(|(_, at)| r.eof || at.elapsed() > DRAIN)
            {
                continue;
            }
            let State::Running(r) = std::mem::replace(&mut self.states[i], State::Queued) else {
                unreachable!("matched above");
            };
            let (outcome, subtests) = self.finish_child(i, *r);
            self.done(i, outcome, subtests);
        }
    }

    fn finish_child(&self, i: usize, r: Running) -> (Outcome, Vec<SubtestResult>) {
        let test = &self.tests[i];
        let Running {
            mut child,
            prepared,
            tail,
            exited,
            ..
        } = r;
        let status = exited.map(|(s, _)| s).or_else(|| child.wait().ok());
        let subtests = read_subtests(&test.out_abs.join("junit.xml"));
        let outcome = match status {
            Some(s) if s.success() => Outcome::Passed,
            _ if self.interrupted_at.is_some() => Outcome::Interrupted,
            Some(s) => Outcome::Failed(match s.code() {
                Some(code) => format!("the test exited with status {code}"),
                None => format!("the test was killed ({s})"),
            }),
            None => Outcome::Failed("the test's process was lost".into()),
        };
        if matches!(outcome, Outcome::Passed) {
            remember(test, &prepared, self.took(i), &self.progress);
        }
        if let (Outcome::Failed(_), false) = (&outcome, self.progress.echoes()) {
            let mut text = format!("{}: last lines of its log:", test.name);
            for l in &tail {
                text.push_str("\n    ");
                text.push_str(l);
            }
            self.progress.note(&text);
        }
        (outcome, subtests)
    }
}

/// Guest builds and cache look-ups, a few at a time (they are quick when
/// cached and CPU-bound when not).
/// The subtests in a test's JUnit report; none if it wrote none. A report
/// that cannot be read is said, and counts as none.
fn read_subtests(path: &Path) -> Vec<SubtestResult> {
    let Ok(xml) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    vmrig_driver::read_junit(&xml).unwrap_or_else(|e| {
        tracing::warn!("{}: {e}", path.display());
        Vec::new()
    })
}

fn spawn_preparers(
    tests: &[Test],
    settings: &Settings,
    tx: &mpsc::Sender<Event>,
    stop: &Arc<AtomicBool>,
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
                // A panic must end this test, not leave the run waiting for it.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    prepare(&tests[i], *accel, *rerun)
                }))
                .unwrap_or_else(|panic| {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Prep::Failed(format!(
                        "vmrig bug: preparing the test panicked ({why}); please report it"
                    ))
                });
                if tx.send(Event::Prepared(i, result)).is_err() {
                    break;
                }
            }
        });
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
            // As in a Nix build of a NixOS test, `$out` is the output directory
            // (scripts write `Path(os.environ["out"]) / ...`).
            .env("out", out)
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
