//! One JUnit XML file for all the tests of a `vmrig run` (a CI shard's
//! report): each test's own report, as the driver wrote it, becomes a
//! `<testsuite>` named after the test.

use std::fmt::Write as _;

/// One test's part of the combined report.
pub struct Suite<'a> {
    /// The test's name.
    pub name: &'a str,
    /// The driver's report (`junit.xml` in the output directory), if any.
    pub report: Option<String>,
    /// Why the test failed when its report does not say (a failure outside
    /// any subtest, a build error, an interrupt).
    pub failure: Option<String>,
    /// Wall time of the test in seconds.
    pub time: f64,
}

/// The testcase elements of a driver report (everything inside its `<testsuite>`).
fn cases(report: &str) -> &str {
    let Some(open) = report.find("<testsuite ") else {
        return "";
    };
    let body = &report[open..];
    let Some(start) = body.find('>') else {
        return "";
    };
    let body = &body[start + 1..];
    body.find("</testsuite>").map_or("", |end| &body[..end])
}

/// The combined report.
pub fn combine(suites: &[Suite<'_>]) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n");
    for s in suites {
        let mut body = s.report.as_deref().map(cases).unwrap_or("").to_owned();
        // The driver names its suite and classes "vmrig"; here the test names them.
        body = body.replace(
            "classname=\"vmrig\"",
            &format!("classname=\"{}\"", escape(s.name)),
        );
        let mut failures = body.matches("<failure").count();
        if let (Some(msg), 0) = (&s.failure, failures) {
            let _ = writeln!(
                body,
                "  <testcase classname=\"{0}\" name=\"{0}\" time=\"{1:.3}\"><failure message=\"{2}\">{3}</failure></testcase>",
                escape(s.name),
                s.time,
                escape(msg.lines().next().unwrap_or("")),
                escape(msg)
            );
            failures = 1;
        }
        let tests = body.matches("<testcase").count();
        let _ = write!(
            x,
            "<testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
            escape(s.name),
            s.time
        );
        if !body.starts_with('\n') {
            x.push('\n');
        }
        x.push_str(&body);
        x.push_str("</testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <testsuites><testsuite name=\"vmrig\" tests=\"2\" failures=\"1\" errors=\"0\" time=\"3.000\">\n  \
        <testcase classname=\"vmrig\" name=\"a\" time=\"1.000\"/>\n  \
        <testcase classname=\"vmrig\" name=\"b\" time=\"2.000\"><failure message=\"boom\">boom\nmore</failure></testcase>\n\
        </testsuite></testsuites>\n";

    #[test]
    fn suites_are_renamed_and_counted() {
        let x = combine(&[Suite {
            name: "hello",
            report: Some(REPORT.into()),
            failure: Some("exit status 1".into()),
            time: 4.0,
        }]);
        assert!(
            x.contains("<testsuite name=\"hello\" tests=\"2\" failures=\"1\""),
            "{x}"
        );
        assert!(x.contains("classname=\"hello\" name=\"b\""), "{x}");
        assert!(!x.contains("vmrig\""), "{x}");
        assert!(x.contains("boom\nmore</failure>"), "{x}");
    }

    #[test]
    fn a_failure_outside_subtests_gets_its_own_case() {
        let x = combine(&[
            Suite {
                name: "a<b",
                report: None,
                failure: Some("cannot build guests\nsecond line".into()),
                time: 0.5,
            },
            Suite {
                name: "ok",
                report: None,
                failure: None,
                time: 1.0,
            },
        ]);
        assert!(
            x.contains("<testsuite name=\"a&lt;b\" tests=\"1\" failures=\"1\""),
            "{x}"
        );
        assert!(
            x.contains("<failure message=\"cannot build guests\">cannot build guests\nsecond line</failure>"),
            "{x}"
        );
        assert!(
            x.contains("<testsuite name=\"ok\" tests=\"0\" failures=\"0\""),
            "{x}"
        );
    }
}
