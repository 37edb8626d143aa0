//! Parsing of `systemctl show` output (`Key=Value` lines).

use std::collections::BTreeMap;

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
