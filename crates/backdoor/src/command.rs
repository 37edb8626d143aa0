//! Host to guest: turning a command into the line the backdoor shell reads.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use crate::error::{Error, Result, Snippet};

/// Status NixOS's `execute` reports when called with `check_return=False`.
pub const STATUS_UNCHECKED_RETURN: i32 = -1;
/// Status NixOS's `execute` reports when called with `check_output=False`.
pub const STATUS_UNCHECKED_OUTPUT: i32 = -2;

/// A shell command to run in the guest, with NixOS's `execute` options.
///
/// The guest runs it exactly as NixOS's driver does: `bash -c 'set -euo
/// pipefail; SCRIPT'`, under GNU `timeout T` when a timeout is set (status 124
/// on expiry), stdout captured byte for byte, stderr left to the serial
/// console. See the [crate documentation](crate) for the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The shell script (any bytes but NUL; need not be UTF-8).
    pub script: Vec<u8>,
    /// Guest-side timeout (GNU `timeout`); `None` runs without one, like
    /// NixOS's `succeed`. As with GNU `timeout`, a zero duration means none.
    pub timeout: Option<Duration>,
    /// When false the reply's status is reported as
    /// [`STATUS_UNCHECKED_RETURN`] (-1), like NixOS's `check_return=False`.
    pub check_return: bool,
    /// When false the caller does not wait for the reply and gets
    /// [`STATUS_UNCHECKED_OUTPUT`] (-2) and no output, like NixOS's
    /// `check_output=False`; the reply is still framed and is skipped when
    /// it arrives, so it never reaches a later command.
    pub check_output: bool,
}

impl Command {
    /// A command with no timeout that checks both status and output
    /// (NixOS's `succeed`/`fail` defaults).
    pub fn new(script: impl Into<Vec<u8>>) -> Self {
        Command {
            script: script.into(),
            timeout: None,
            check_return: true,
            check_output: true,
        }
    }

    /// Sets the guest-side timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets `check_return`.
    #[must_use]
    pub fn check_return(mut self, check: bool) -> Self {
        self.check_return = check;
        self
    }

    /// Sets `check_output`.
    #[must_use]
    pub fn check_output(mut self, check: bool) -> Self {
        self.check_output = check;
        self
    }

    /// The status NixOS's `execute` would report for a command that exited
    /// with `exit_status`: -1 without `check_return`, -2 without
    /// `check_output`, else the exit status itself.
    pub fn reported_status(&self, exit_status: u8) -> i32 {
        if !self.check_output {
            STATUS_UNCHECKED_OUTPUT
        } else if !self.check_return {
            STATUS_UNCHECKED_RETURN
        } else {
            i32::from(exit_status)
        }
    }

    /// Appends the command line for reply number `nonce` to `dst`.
    ///
    /// The line is
    /// `echo -n '#vmrigN:';[timeout T ]bash -c 'set -euo pipefail; SCRIPT' | base64 -w 0;echo ":${PIPESTATUS[0]}:N#"`
    /// followed by a newline, with the quoted part quoted like Python's
    /// `shlex.quote`. Fails only when the script contains a NUL byte.
    pub fn encode(&self, nonce: u64, dst: &mut BytesMut) -> Result<()> {
        if let Some(offset) = memchr::memchr(0, &self.script) {
            return Err(Error::NulInScript {
                offset,
                script: Snippet::new(&self.script),
            });
        }
        let mut itoa = NumBuf::default();
        let nonce = itoa.format(nonce);
        dst.reserve(self.script.len() + 120);
        dst.put_slice(b"echo -n '#vmrig");
        dst.put_slice(nonce);
        dst.put_slice(b":';");
        if let Some(t) = self.timeout {
            dst.put_slice(b"timeout ");
            dst.put_slice(format_seconds(t).as_bytes());
            dst.put_u8(b' ');
        }
        dst.put_slice(b"bash -c ");
        let mut body = Vec::with_capacity(self.script.len() + 19);
        body.extend_from_slice(b"set -euo pipefail; ");
        body.extend_from_slice(&self.script);
        shell_quote(&body, dst);
        dst.put_slice(b" | base64 -w 0;echo \":${PIPESTATUS[0]}:");
        dst.put_slice(nonce);
        dst.put_slice(b"#\"\n");
        Ok(())
    }
}

/// Appends `s` quoted for a POSIX shell, exactly as Python's `shlex.quote`
/// does: unchanged when it is non-empty and made only of
/// `[A-Za-z0-9@%+=:,./_-]`, else in single quotes with each `'` written as
/// `'"'"'`.
pub fn shell_quote(s: &[u8], dst: &mut BytesMut) {
    let safe = |b: &u8| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(b);
    if !s.is_empty() && s.iter().all(safe) {
        dst.put_slice(s);
        return;
    }
    dst.reserve(s.len() + 2);
    dst.put_u8(b'\'');
    let mut rest = s;
    while let Some(i) = memchr::memchr(b'\'', rest) {
        dst.put_slice(&rest[..i]);
        dst.put_slice(b"'\"'\"'");
        rest = &rest[i + 1..];
    }
    dst.put_slice(rest);
    dst.put_u8(b'\'');
}

/// Seconds as GNU `timeout` reads them: `900`, `0.5`, `1.000000001`.
pub(crate) fn format_seconds(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return d.as_secs().to_string();
    }
    let frac = format!("{nanos:09}");
    format!("{}.{}", d.as_secs(), frac.trim_end_matches('0'))
}

/// A stack buffer for formatting a `u64` in decimal without allocating.
#[derive(Default)]
pub(crate) struct NumBuf([u8; 20]);

impl NumBuf {
    pub(crate) fn format(&mut self, mut n: u64) -> &[u8] {
        let mut i = self.0.len();
        loop {
            i -= 1;
            // n % 10 < 10, so the sum is an ASCII digit
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        &self.0[i..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        shell_quote(s, &mut b);
        b.to_vec()
    }

    #[test]
    fn quote_matches_shlex() {
        // Expected values from Python 3's shlex.quote.
        assert_eq!(quoted(b""), b"''");
        assert_eq!(quoted(b"abc-1.2/x_y@%+=:,"), b"abc-1.2/x_y@%+=:,");
        assert_eq!(quoted(b"a b"), b"'a b'");
        assert_eq!(quoted(b"it's"), b"'it'\"'\"'s'");
        assert_eq!(quoted(b"$HOME \\ \n"), b"'$HOME \\ \n'");
        assert_eq!(quoted(b"\xff"), b"'\xff'");
    }

    #[test]
    fn encodes_like_nixos_plus_frame() {
        let mut b = BytesMut::new();
        Command::new("echo 'hi'").encode(7, &mut b).unwrap();
        assert_eq!(
            &b[..],
            &b"echo -n '#vmrig7:';bash -c 'set -euo pipefail; echo '\"'\"'hi'\"'\"'' | base64 -w 0;echo \":${PIPESTATUS[0]}:7#\"\n"[..]
        );
        let mut b = BytesMut::new();
        Command::new("true")
            .timeout(Some(Duration::from_millis(1500)))
            .encode(u64::MAX, &mut b)
            .unwrap();
        let s = String::from_utf8(b.to_vec()).unwrap();
        assert!(
            s.starts_with("echo -n '#vmrig18446744073709551615:';timeout 1.5 bash -c "),
            "{s}"
        );
    }

    #[test]
    fn rejects_nul() {
        let mut b = BytesMut::new();
        let err = Command::new(&b"echo a\0b"[..])
            .encode(1, &mut b)
            .unwrap_err();
        assert!(matches!(err, Error::NulInScript { offset: 6, .. }), "{err}");
        assert!(b.is_empty());
    }

    #[test]
    fn seconds() {
        assert_eq!(format_seconds(Duration::from_secs(900)), "900");
        assert_eq!(format_seconds(Duration::from_millis(500)), "0.5");
        assert_eq!(format_seconds(Duration::new(1, 1)), "1.000000001");
        assert_eq!(format_seconds(Duration::ZERO), "0");
    }

    #[test]
    fn reported_status() {
        let c = Command::new("x");
        assert_eq!(c.reported_status(3), 3);
        assert_eq!(c.clone().check_return(false).reported_status(3), -1);
        assert_eq!(c.check_output(false).reported_status(3), -2);
    }
}
