//! `shell_interact` and `console_interact` from Python, on the terminal.
//!
//! The driver's interact loops read lines; here they read the terminal in
//! cooked mode (line editing, echo, Ctrl-C as SIGINT, Ctrl-D as end of input),
//! whatever mode the REPL left it in, and put the previous mode back after.
//! Reads wait with `poll(2)` and run Python's signal handlers in between, so
//! Ctrl-C ends the session (as NixOS's does) instead of waiting for a line.
//! `shell_interact(address)` talks to a socat address instead, like NixOS's.

use std::io::{BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{Command, Stdio};

use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use rustix::termios::{self, InputModes, LocalModes, OptionalActions, OutputModes, Termios};
use vmrig_driver::Machine;

use crate::native::to_py;

/// How often a waiting read runs Python's signal handlers.
const POLL_MS: i64 = 100;

/// Puts a terminal in cooked mode until dropped, then restores its mode.
struct CookedTerminal<'a> {
    fd: BorrowedFd<'a>,
    saved: Option<Termios>,
}

impl<'a> CookedTerminal<'a> {
    /// Does nothing when `fd` is not a terminal.
    fn enter(fd: BorrowedFd<'a>) -> Self {
        let saved = termios::isatty(fd)
            .then(|| termios::tcgetattr(fd).ok())
            .flatten();
        if let Some(saved) = &saved {
            let mut t = saved.clone();
            t.local_modes |= LocalModes::ICANON
                | LocalModes::ECHO
                | LocalModes::ECHOE
                | LocalModes::ECHOK
                | LocalModes::ISIG
                | LocalModes::IEXTEN;
            t.input_modes |= InputModes::ICRNL;
            t.output_modes |= OutputModes::OPOST | OutputModes::ONLCR;
            let _ = termios::tcsetattr(fd, OptionalActions::Now, &t);
        }
        CookedTerminal { fd, saved }
    }
}

impl Drop for CookedTerminal<'_> {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(self.fd, OptionalActions::Now, saved);
        }
    }
}

/// Reads a file descriptor, running Python's signal handlers while it waits;
/// an exception they raise ends the read and is kept in `raised`.
struct PollReader<'a> {
    fd: BorrowedFd<'a>,
    raised: Option<PyErr>,
}

impl<'a> PollReader<'a> {
    fn new(fd: BorrowedFd<'a>) -> Self {
        PollReader { fd, raised: None }
    }

    fn signals(&mut self) -> std::io::Result<()> {
        match Python::with_gil(|py| py.check_signals()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.raised = Some(e);
                Err(std::io::Error::other("interrupted"))
            }
        }
    }
}

impl Read for PollReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let wait = Timespec {
            tv_sec: 0,
            tv_nsec: POLL_MS * 1_000_000,
        };
        loop {
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match poll(&mut fds, Some(&wait)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => self.signals()?,
                Ok(_) => match rustix::io::read(self.fd, &mut *buf) {
                    Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {
                        self.signals()?
                    }
                    other => return other.map_err(Into::into),
                },
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The outcome of a session: Ctrl-C ends it quietly (the test goes on, as in
/// NixOS); another exception from a signal handler goes to Python.
fn ended(py: Python<'_>, result: vmrig_driver::Result<()>, raised: Option<PyErr>) -> PyResult<()> {
    // The session ended mid-line (Ctrl-D after a prompt, ^C): end that line.
    println!();
    match raised {
        Some(e) if e.is_instance_of::<PyKeyboardInterrupt>(py) => Ok(()),
        Some(e) => Err(e),
        None => result.map_err(|e| to_py(py, e)),
    }
}

/// NixOS's `shell_interact`: commands typed on the terminal (or read from the
/// socat `address`) run in the guest, their output comes back; Ctrl-D or
/// Ctrl-C ends the session.
pub(crate) fn shell_interact(py: Python<'_>, m: &Machine, address: Option<&str>) -> PyResult<()> {
    let Some(address) = address else {
        let stdin = std::io::stdin();
        let _cooked = CookedTerminal::enter(stdin.as_fd());
        let mut reader = PollReader::new(stdin.as_fd());
        let result = py.allow_threads(|| {
            let mut input = BufReader::new(&mut reader);
            m.shell_interact(&mut input, &mut std::io::stdout())
        });
        return ended(py, result, reader.raised);
    };
    // socat connects the address to our pipes: lines in, output back out.
    let mut socat = Command::new("socat")
        .arg(address)
        .arg("STDIO")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| {
            to_py(
                py,
                vmrig_driver::Error::Setup(format!(
                    "shell_interact({address:?}): cannot run socat (install it): {e}"
                )),
            )
        })?;
    let (Some(mut to_socat), Some(from_socat)) = (socat.stdin.take(), socat.stdout.take()) else {
        unreachable!("both pipes were asked for");
    };
    let mut reader = PollReader::new(from_socat.as_fd());
    let result = py.allow_threads(|| {
        let mut input = BufReader::new(&mut reader);
        m.shell_interact(&mut input, &mut to_socat)
    });
    let raised = reader.raised.take();
    drop(to_socat);
    let _ = socat.kill();
    let _ = socat.wait();
    ended(py, result, raised)
}

/// NixOS's `console_interact`: lines typed on the terminal go to the serial
/// console (QEMU's stdin); its output shows in the log. Ctrl-D or Ctrl-C ends it.
pub(crate) fn console_interact(py: Python<'_>, m: &Machine) -> PyResult<()> {
    let stdin = std::io::stdin();
    let _cooked = CookedTerminal::enter(stdin.as_fd());
    let mut reader = PollReader::new(stdin.as_fd());
    let result = py.allow_threads(|| {
        let mut input = BufReader::new(&mut reader);
        m.console_interact(&mut input)
    });
    if result.is_ok() && reader.raised.is_none() {
        tracing::info!(machine = %m.name(), "Closing connection to the console");
    }
    ended(py, result, reader.raised)
}
