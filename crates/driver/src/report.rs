//! Results of subtests and whole tests, and the one JUnit XML writer (and
//! reader) of vmrig, on `quick-junit`'s data model.
//!
//! A driver run writes one `<testsuite>` of its subtests ([`junit_xml`]).
//! `vmrig run` reads each test's report back ([`read_junit`]) and writes one
//! file with a `<testsuite>` per test ([`merged_junit_xml`]).

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use crate::error::{Error, Result};

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

/// The outcome of one whole test: a `<testsuite>` of a merged report.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    /// The test's name: the suite's name and its cases' class name.
    pub name: String,
    /// Its wall time.
    pub time: Duration,
    /// Its subtests.
    pub subtests: Vec<SubtestResult>,
    /// Why the test failed, when no subtest says (a failure outside any
    /// subtest, a build error, an interrupt): then the suite gets a case of
    /// its own, named after the test, that carries it.
    pub failure: Option<String>,
}

/// JUnit XML for a run's subtests: one `<testsuite>` named `suite`, whose
/// cases have `suite` as their class name.
pub fn junit_xml(suite: &str, results: &[SubtestResult]) -> String {
    merged_junit_xml(&[TestResult {
        name: suite.to_owned(),
        time: results.iter().map(|r| r.duration).sum(),
        subtests: results.to_vec(),
        failure: None,
    }])
}

/// JUnit XML for several tests: a `<testsuite>` per test, in order.
pub fn merged_junit_xml(tests: &[TestResult]) -> String {
    let mut report = Report::unnamed();
    for test in tests {
        let mut suite = TestSuite::new(test.name.as_str());
        suite.set_time(test.time);
        suite.add_test_cases(
            test.subtests
                .iter()
                .map(|r| case(&test.name, &r.name, r.duration, r.failure.as_deref())),
        );
        if let Some(why) = &test.failure {
            if suite.failures == 0 {
                suite.add_test_case(case(&test.name, &test.name, test.time, Some(why)));
            }
        }
        report.add_test_suite(suite);
    }
    report
        .to_string()
        // Serializing into memory has no I/O to fail, and every string is an XmlString.
        .expect("a JUnit report serializes into a String")
}

fn case(class: &str, name: &str, time: Duration, failure: Option<&str>) -> TestCase {
    let status = match failure {
        None => TestCaseStatus::success(),
        Some(msg) => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status
                .set_message(msg.lines().next().unwrap_or(""))
                .set_description(msg);
            status
        }
    };
    let mut case = TestCase::new(name, status);
    case.set_classname(class).set_time(time);
    case
}

/// The subtests of a report [`junit_xml`] wrote (of every `<testsuite>` in
/// it, in order): what `vmrig run` merges.
pub fn read_junit(xml: &str) -> Result<Vec<SubtestResult>> {
    let report = Report::deserialize_from_str(xml)
        .map_err(|e| Error::Report(format!("cannot read a JUnit report: {e}")))?;
    Ok(report
        .test_suites
        .into_iter()
        .flat_map(|s| s.test_cases)
        .map(|c| SubtestResult {
            name: c.name.into_string(),
            duration: c.time.unwrap_or_default(),
            failure: match c.status {
                TestCaseStatus::NonSuccess {
                    message,
                    description,
                    ..
                } => Some(
                    description
                        .or(message)
                        .map(|m| m.into_string())
                        .unwrap_or_default(),
                ),
                TestCaseStatus::Success { .. } | TestCaseStatus::Skipped { .. } => None,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subtests() -> Vec<SubtestResult> {
        vec![
            SubtestResult {
                name: "boots".into(),
                duration: Duration::from_millis(1500),
                failure: None,
            },
            SubtestResult {
                name: "a <b> & \"c\"".into(),
                duration: Duration::from_millis(20),
                failure: Some("command `x` failed\n\u{1b}[31mred\u{7}".into()),
            },
        ]
    }

    #[test]
    fn junit_escapes_and_counts() {
        let x = junit_xml("t", &subtests());
        assert!(
            x.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
            "{x}"
        );
        assert!(
            x.contains("<testsuite name=\"t\" tests=\"2\" skipped=\"0\" errors=\"0\" failures=\"1\" time=\"1.520\">"),
            "{x}"
        );
        assert!(
            x.contains("<testcase name=\"boots\" classname=\"t\" time=\"1.500\"/>"),
            "{x}"
        );
        assert!(
            x.contains("name=\"a &lt;b&gt; &amp; &quot;c&quot;\""),
            "{x}"
        );
        assert!(x.contains("message=\"command `x` failed\""), "{x}");
        // Terminal colours and control characters XML cannot hold are dropped.
        assert!(x.contains("failed\nred</failure>"), "{x}");
    }

    #[test]
    fn reports_read_back_as_written() {
        let mut want = subtests();
        want[1].failure = Some("command `x` failed\nred".into());
        assert_eq!(read_junit(&junit_xml("t", &subtests())).unwrap(), want);
        let e = read_junit("<testsuites><oops").unwrap_err().to_string();
        assert!(e.starts_with("cannot read a JUnit report"), "{e}");
    }

    #[test]
    fn reports_of_earlier_vmrig_versions_read_too() {
        // As the hand-written writer before quick-junit wrote them (cached results).
        let old = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
            <testsuites><testsuite name=\"vmrig\" tests=\"2\" failures=\"1\" errors=\"0\" time=\"3.000\">\n  \
            <testcase classname=\"vmrig\" name=\"a\" time=\"1.000\"/>\n  \
            <testcase classname=\"vmrig\" name=\"b\" time=\"2.000\"><failure message=\"boom\">boom\nmore</failure></testcase>\n\
            </testsuite></testsuites>\n";
        let read = read_junit(old).unwrap();
        assert_eq!(
            read,
            [
                SubtestResult {
                    name: "a".into(),
                    duration: Duration::from_secs(1),
                    failure: None
                },
                SubtestResult {
                    name: "b".into(),
                    duration: Duration::from_secs(2),
                    failure: Some("boom\nmore".into())
                }
            ]
        );
    }

    #[test]
    fn merging_gives_a_suite_per_test() {
        let from_file = read_junit(&junit_xml("vmrig", &subtests())).unwrap();
        let x = merged_junit_xml(&[
            TestResult {
                name: "hello".into(),
                time: Duration::from_secs(4),
                subtests: from_file,
                // The subtest's failure says it: no extra case.
                failure: Some("the test exited with status 1".into()),
            },
            TestResult {
                name: "a<b".into(),
                time: Duration::from_millis(500),
                subtests: vec![],
                failure: Some("cannot build guests\nsecond line".into()),
            },
            TestResult {
                name: "ok".into(),
                time: Duration::from_secs(1),
                subtests: vec![],
                failure: None,
            },
        ]);
        assert!(
            x.contains("<testsuites tests=\"3\" skipped=\"0\" failures=\"2\" errors=\"0\">"),
            "{x}"
        );
        assert!(
            x.contains("<testsuite name=\"hello\" tests=\"2\" skipped=\"0\" errors=\"0\" failures=\"1\" time=\"4.000\">"),
            "{x}"
        );
        assert!(x.contains("name=\"boots\" classname=\"hello\""), "{x}");
        assert!(!x.contains("vmrig"), "the driver's suite name is gone: {x}");
        assert!(!x.contains("status 1"), "{x}");
        assert!(
            x.contains(
                "<testsuite name=\"a&lt;b\" tests=\"1\" skipped=\"0\" errors=\"0\" failures=\"1\""
            ),
            "{x}"
        );
        assert!(
            x.contains("<testcase name=\"a&lt;b\" classname=\"a&lt;b\" time=\"0.500\">"),
            "{x}"
        );
        assert!(
            x.contains("<failure message=\"cannot build guests\">cannot build guests\nsecond line</failure>"),
            "{x}"
        );
        assert!(
            x.contains("<testsuite name=\"ok\" tests=\"0\" skipped=\"0\" errors=\"0\" failures=\"0\" time=\"1.000\"/>"),
            "{x}"
        );
        // And the merged file reads back: every case, in order.
        let names: Vec<String> = read_junit(&x)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["boots", "a <b> & \"c\"", "a<b"]);
    }
}
