//! Parsing of `systemctl show` output (`Key=Value` lines).

use std::collections::BTreeMap;

/// The command line NixOS's `systemctl(q, user)` runs: `systemctl Q`, or for a
/// user `systemctl --user Q` in a login shell of that user.
pub fn systemctl_command(query: &str, user: Option<&str>) -> String {
    match user {
        None => format!("systemctl {query}"),
        Some(user) => {
            let q = query.replace('\'', "\\'");
            format!("su -l {user} --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user {q}'")
        }
    }
}

/// `systemctl show` of one unit, as `get_unit_info` runs it.
pub fn show_query(unit: &str) -> String {
    format!("--no-pager show \"{unit}\"")
}

/// `systemctl show` of one property, as `get_unit_property` runs it.
pub fn property_query(unit: &str, property: &str) -> String {
    format!("--no-pager show \"{unit}\" --property=\"{property}\"")
}

/// The properties in `systemctl show` output; lines without `=` are skipped.
pub fn parse_show(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The value of `property` in `systemctl show --property=P` output, if the
/// first line is `P=...`.
pub fn parse_property(output: &str, property: &str) -> Option<String> {
    let (key, value) = output.lines().next()?.split_once('=')?;
    (key == property).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACTIVE: &str = include_str!("../tests/data/systemctl-show-active.txt");
    const FAILED: &str = include_str!("../tests/data/systemctl-show-failed.txt");
    const INACTIVE: &str = include_str!("../tests/data/systemctl-show-inactive.txt");
    const NOT_FOUND: &str = include_str!("../tests/data/systemctl-show-not-found.txt");
    const PROPERTY: &str = include_str!("../tests/data/systemctl-show-property.txt");
    const JOBS: &str = include_str!("../tests/data/systemctl-list-jobs.txt");

    #[test]
    fn command_strings_are_nixos_s() {
        assert_eq!(
            systemctl_command(&show_query("nginx.service"), None),
            "systemctl --no-pager show \"nginx.service\""
        );
        assert_eq!(
            systemctl_command(&property_query("a.service", "ActiveState"), None),
            "systemctl --no-pager show \"a.service\" --property=\"ActiveState\""
        );
        assert_eq!(
            systemctl_command("list-jobs --full 2>&1", Some("alice")),
            "su -l alice --shell /bin/sh -c $'XDG_RUNTIME_DIR=/run/user/`id -u` systemctl --user list-jobs --full 2>&1'"
        );
        // A quote in the query is escaped for bash's $'...'.
        assert!(
            systemctl_command("start 'x'", Some("bob")).contains("systemctl --user start \\'x\\''")
        );
    }

    #[test]
    fn captured_show_output_from_systemd_252() {
        // Captured from Debian 12's systemd (tests/data): a running, a failed,
        // a never started and a nonexistent unit.
        for (text, load, active, sub) in [
            (ACTIVE, "loaded", "active", "running"),
            (FAILED, "loaded", "failed", "failed"),
            (INACTIVE, "loaded", "inactive", "dead"),
            (NOT_FOUND, "not-found", "inactive", "dead"),
        ] {
            let info = parse_show(text);
            assert!(info.len() > 200, "every property line is kept");
            assert_eq!(
                (
                    info["LoadState"].as_str(),
                    info["ActiveState"].as_str(),
                    info["SubState"].as_str()
                ),
                (load, active, sub)
            );
        }
        assert_eq!(parse_show(FAILED)["Result"], "exit-code");
        assert_eq!(parse_show(ACTIVE)["Id"], "systemd-journald.service");
        assert_eq!(
            parse_property(PROPERTY, "ActiveState").as_deref(),
            Some("active")
        );
        // wait_for_unit only gives up on an inactive unit when no job is pending.
        assert!(!JOBS.contains("No jobs"));
    }

    #[test]
    fn show_output() {
        let out = "Type=simple\nActiveState=active\nExecStart={ path=/bin/x ; argv[]=/bin/x -a=b }\nweird line\n";
        let info = parse_show(out);
        assert_eq!(info["ActiveState"], "active");
        assert_eq!(info["ExecStart"], "{ path=/bin/x ; argv[]=/bin/x -a=b }");
        assert_eq!(info.len(), 3);
        assert_eq!(
            parse_property("ActiveState=failed\n", "ActiveState").as_deref(),
            Some("failed")
        );
        assert_eq!(parse_property("SubState=dead\n", "ActiveState"), None);
        assert_eq!(parse_property("", "ActiveState"), None);
    }
}
