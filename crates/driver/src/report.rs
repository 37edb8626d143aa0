//! Subtests and their JUnit XML report.

use std::fmt::Write as _;
use std::time::Duration;

/// The outcome of one subtest.
#[derive(Debug, Clone, PartialEq)]
pub struct SubtestResult {
    /// Its name, with the names of enclosing subtests (`outer / inner`).
    pub name: String,
    /// How long it ran.
    pub duration: Duration,
    /// The failure message, if it failed.
    pub failure: Option<String>,
}

/// JUnit XML for a run's subtests (one `<testsuite>` named after the run).
pub fn junit_xml(suite: &str, results: &[SubtestResult]) -> String {
    let failures = results.iter().filter(|r| r.failure.is_some()).count();
    let total: f64 = results.iter().map(|r| r.duration.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">",
        escape(suite),
        results.len()
    );
    for r in results {
        let _ = write!(
            x,
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            escape(suite),
            escape(&r.name),
            r.duration.as_secs_f64()
        );
        match &r.failure {
            None => x.push_str("/>\n"),
            Some(msg) => {
                let first = msg.lines().next().unwrap_or("");
                let _ = writeln!(
                    x,
                    "><failure message=\"{}\">{}</failure></testcase>",
                    escape(first),
                    escape(msg)
                );
            }
        }
    }
    x.push_str("</testsuite></testsuites>\n");
    x
}

/// Escapes text or an attribute value for XML; control characters XML 1.0
/// cannot hold become U+FFFD.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let results = vec![
            SubtestResult {
                name: "boots".into(),
                duration: Duration::from_millis(1500),
                failure: None,
            },
            SubtestResult {
                name: "a <b> & \"c\"".into(),
                duration: Duration::from_millis(20),
                failure: Some("command `x` failed\n\u{1b}[31mred".into()),
            },
        ];
        let x = junit_xml("t", &results);
        assert!(x.contains("tests=\"2\" failures=\"1\""), "{x}");
        assert!(x.contains("name=\"boots\" time=\"1.500\"/>"), "{x}");
        assert!(
            x.contains("name=\"a &lt;b&gt; &amp; &quot;c&quot;\""),
            "{x}"
        );
        assert!(x.contains("message=\"command `x` failed\""), "{x}");
        assert!(
            x.contains("\u{fffd}[31mred"),
            "control characters are replaced: {x}"
        );
    }
}
