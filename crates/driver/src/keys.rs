//! Characters to QEMU key names, as NixOS's `CHAR_TO_KEY` maps them for
//! `send_key`/`send_chars` (HMP `sendkey`).

/// The HMP `sendkey` name for one character, or the input unchanged when it
/// already is a key name (`ctrl-alt-delete`, `a`, `ret`).
pub fn key_for(input: &str) -> String {
    let mut chars = input.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return input.to_owned();
    };
    if c.is_ascii_uppercase() {
        return format!("shift-{}", c.to_ascii_lowercase());
    }
    let key = match c {
        '-' => "0x0C",
        '_' => "shift-0x0C",
        '=' => "0x0D",
        '+' => "shift-0x0D",
        '[' => "0x1A",
        '{' => "shift-0x1A",
        ']' => "0x1B",
        '}' => "shift-0x1B",
        ';' => "0x27",
        ':' => "shift-0x27",
        '\'' => "0x28",
        '"' => "shift-0x28",
        '`' => "0x29",
        '~' => "shift-0x29",
        '\\' => "0x2B",
        '|' => "shift-0x2B",
        ',' => "0x33",
        '<' => "shift-0x33",
        '.' => "0x34",
        '>' => "shift-0x34",
        '/' => "0x35",
        '?' => "shift-0x35",
        ' ' => "spc",
        '\n' => "ret",
        '!' => "shift-0x02",
        '@' => "shift-0x03",
        '#' => "shift-0x04",
        '$' => "shift-0x05",
        '%' => "shift-0x06",
        '^' => "shift-0x07",
        '&' => "shift-0x08",
        '*' => "shift-0x09",
        '(' => "shift-0x0A",
        ')' => "shift-0x0B",
        _ => return input.to_owned(),
    };
    key.to_owned()
}

#[cfg(test)]
mod tests {
    use super::key_for;

    #[test]
    fn like_nixos() {
        assert_eq!(key_for("A"), "shift-a");
        assert_eq!(key_for("a"), "a");
        assert_eq!(key_for("\n"), "ret");
        assert_eq!(key_for(" "), "spc");
        assert_eq!(key_for("_"), "shift-0x0C");
        assert_eq!(key_for(")"), "shift-0x0B");
        assert_eq!(key_for("ctrl-alt-delete"), "ctrl-alt-delete");
        assert_eq!(key_for("1"), "1");
    }
}
