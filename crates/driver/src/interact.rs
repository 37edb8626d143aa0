//! Interactive helpers for writing tests: a shell on the guest and the serial
//! console on the terminal. Both end at end of input (Ctrl-D).

use std::io::{BufRead, Write};

use crate::error::Result;
use crate::machine::Machine;

impl Machine {
    /// Reads commands from `input`, runs each in the guest and writes its
    /// output (and a non-zero status) to `output` (NixOS's `shell_interact`,
    /// on stdin/stdout when called with those).
    pub fn shell_interact(&self, input: &mut dyn BufRead, output: &mut dyn Write) -> Result<()> {
        self.connect()?;
        let io = |e: std::io::Error| self.machine_error(format!("shell_interact: {e}"));
        writeln!(
            output,
            "{}: connected to the backdoor shell; end with Ctrl-D",
            self.name()
        )
        .map_err(io)?;
        let mut line = String::new();
        loop {
            write!(output, "{}$ ", self.name()).map_err(io)?;
            output.flush().map_err(io)?;
            line.clear();
            if input.read_line(&mut line).map_err(io)? == 0 {
                return Ok(());
            }
            let command = line.trim_end_matches('\n');
            if command.trim().is_empty() {
                continue;
            }
            let (status, out) = self.execute(command, true, true, None)?;
            write!(output, "{out}").map_err(io)?;
            if status != 0 {
                writeln!(output, "(exit status {status})").map_err(io)?;
            }
        }
    }

    /// Sends `input` to the serial console line by line, with console output
    /// going to the log as always (NixOS's `console_interact`).
    pub fn console_interact(&self, input: &mut dyn BufRead) -> Result<()> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = input
                .read_line(&mut line)
                .map_err(|e| self.machine_error(format!("console_interact: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            self.send_console(&line)?;
        }
    }
}
