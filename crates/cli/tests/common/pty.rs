//! A program on a pseudo-terminal, driven like a person at a keyboard:
//! type text, wait for text. The program is a session leader with the pty as
//! its controlling terminal (`setsid --ctty`), so Ctrl-C typed into it is a
//! SIGINT, as in a real terminal.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};

/// A terminal's "device status report" request for the cursor position.
const CURSOR_QUERY: &[u8] = b"\x1b[6n";

/// A child on a pty, with everything it printed so far.
pub struct Terminal {
    master: std::fs::File,
    child: super::Stopped,
    seen: Arc<Mutex<Vec<u8>>>,
    /// What `expect` already matched: the next match starts after it.
    cursor: usize,
}

impl Terminal {
    /// Starts `program args...` (with `cmd`'s environment and directory) on a new pty.
    pub fn spawn(cmd: Command) -> Terminal {
        let master =
            openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let slave = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(name.to_str().unwrap())
                .unwrap()
        };
        let mut size = rustix::termios::tcgetwinsize(&slave).unwrap();
        size.ws_row = 50;
        size.ws_col = 200;
        rustix::termios::tcsetwinsize(&slave, size).unwrap();
        let program = cmd.get_program().to_owned();
        let mut wrapped = Command::new("setsid");
        wrapped.arg("--ctty").arg(program).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        let fd: OwnedFd = slave.into();
        wrapped
            .stdin(Stdio::from(fd.try_clone().unwrap()))
            .stdout(Stdio::from(fd.try_clone().unwrap()))
            .stderr(Stdio::from(fd));
        let child = wrapped.spawn().unwrap();
        let master = std::fs::File::from(master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), seen.clone());
        let mut answer = master.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last program on the pty has closed it.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                // Full-screen prompts (ptpython's) ask where the cursor is and
                // wait for the answer, as a real terminal gives it.
                for _ in buf[..n]
                    .windows(CURSOR_QUERY.len())
                    .filter(|w| *w == CURSOR_QUERY)
                {
                    let _ = answer.write_all(b"\x1b[1;1R");
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            master,
            child: super::Stopped(child),
            seen,
            cursor: 0,
        }
    }

    /// Types `text`.
    pub fn send(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).unwrap();
    }

    /// Waits until `needle` appears after the last match; returns what came
    /// before it. Panics with the screen so far after `timeout`.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        match self.try_expect(needle, timeout) {
            Some(before) => before,
            None => panic!(
                "no {needle:?} within {timeout:?}; the terminal shows:\n{}",
                self.screen()
            ),
        }
    }

    /// As [`Terminal::expect`], but `None` after `timeout`.
    pub fn try_expect(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let seen = self.seen.lock().unwrap();
                let text = String::from_utf8_lossy(&seen[self.cursor..]).into_owned();
                if let Some(at) = text.find(needle) {
                    self.cursor += text[..at + needle.len()].len();
                    return Some(text[..at].to_owned());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed so far.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits for the program to exit.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "still running after {timeout:?}; the terminal shows:\n{}",
                    self.screen()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
