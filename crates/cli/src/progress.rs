//! What `vmrig run` shows while tests run: on a terminal, a live line per
//! running test (indicatif); otherwise, or with `NO_COLOR` set, plain log
//! lines without any escape code, prefixed with the test's name when several
//! tests share the output.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether stderr gets live progress lines.
pub fn live() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// The display of one `vmrig run`.
pub struct Progress {
    /// `Some` on a terminal.
    multi: Option<MultiProgress>,
    /// Show each test's log lines (one test, or not on a terminal).
    echo: bool,
    /// Prefix log lines with the test's name (several tests, plain output).
    prefix: bool,
}

/// One test's line.
pub struct Line {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A display for `tests` tests.
    pub fn new(tests: usize) -> Self {
        let multi = live().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Progress {
            echo: multi.is_none() || tests == 1,
            prefix: multi.is_none() && tests > 1,
            multi,
        }
    }

    /// Starts a test's line (shown on a terminal only).
    pub fn start(&self, name: &str, what: &str) -> Line {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} {elapsed:>4} {wide_msg}")
                    .expect("the template is valid"),
            );
            bar.set_prefix(name.to_owned());
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Line { bar }
    }

    /// What a test is doing, for its live line only.
    pub fn status(&self, line: &Line, text: &str) {
        if let Some(bar) = &line.bar {
            bar.set_message(text.to_owned());
        }
    }

    /// A line of a test's log.
    pub fn log(&self, name: &str, line: &Line, text: &str) {
        let text = printable(text);
        if let Some(bar) = &line.bar {
            bar.set_message(text.clone());
        }
        if !self.echo {
            return;
        }
        match (&self.multi, self.prefix) {
            (Some(m), _) => {
                let _ = m.println(text);
            }
            (None, true) => eprintln!("[{name}] {text}"),
            (None, false) => eprintln!("{text}"),
        }
    }

    /// Ends a test's line with a message that stays.
    pub fn finish(&self, line: Line, message: &str) {
        match (&self.multi, line.bar) {
            (Some(m), Some(bar)) => {
                bar.finish_and_clear();
                m.remove(&bar);
                let _ = m.println(message);
            }
            _ => eprintln!("{message}"),
        }
    }

    /// A message above the live lines.
    pub fn note(&self, message: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(message);
            }
            None => eprintln!("{message}"),
        }
    }

    /// Whether each test's log is shown as it comes.
    pub fn echoes(&self) -> bool {
        self.echo
    }
}

/// The text without escape sequences and control characters: guests' consoles
/// print some (SeaBIOS clears the screen), and neither a live line nor a
/// plain log should carry them.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI (ESC [ params final) or a two-character sequence (ESC c).
                if chars.next_if_eq(&'[').is_some() {
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_blanked() {
        assert_eq!(printable("a\x1b[2Jb\rc\td"), "abc d");
        assert_eq!(
            printable("machine # \x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)"),
            "machine # SeaBIOS (version 1.16.2)"
        );
    }
}
