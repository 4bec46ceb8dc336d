//! Text output: tables (tabled, plain columns as lvs and dmsetup print
//! them, never colour), number formatting, and the escaping of control
//! characters in everything printed that came from the daemon or the user.

use std::borrow::Cow;

use tabled::settings::{Padding, Style};

/// `s` with every control character (C0, DEL, C1: newlines, escape
/// sequences, carriage returns…) written as a Rust escape (`\n`,
/// `\u{1b}`), so that a path or message cannot move the cursor, rewrite
/// the terminal or forge a line. JSON output needs none of this (JSON
/// escapes them itself).
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_but(s, None)
}

/// As [`escape`], but keeps `\n`: for whole outputs whose lines lcctl
/// made itself (the values in them are escaped already).
pub fn escape_lines(s: &str) -> Cow<'_, str> {
    escape_but(s, Some('\n'))
}

fn escape_but(s: &str, keep: Option<char>) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() && Some(c) != keep;
    if !s.chars().any(bad) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if bad(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A table of columns separated by two spaces, with a header row when
/// `header` is given. Cells are escaped ([`escape`]).
pub fn table(header: Option<&[&str]>, rows: Vec<Vec<String>>) -> String {
    let mut b = tabled::builder::Builder::default();
    if let Some(h) = header {
        b.push_record(h.iter().map(|s| s.to_string()));
    }
    for r in rows {
        b.push_record(r.into_iter().map(|c| escape(&c).into_owned()));
    }
    let mut t = b.build();
    t.with(Style::blank()).with(Padding::new(0, 1, 0, 0));
    // the padding leaves trailing blanks at line ends
    t.to_string()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with every line indented by two spaces.
pub fn indent(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("  {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes in binary units, one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A ratio as a percentage, `-` when there was nothing to count.
pub fn percent(part: u64, whole: u64) -> String {
    ratio(part, whole).map_or_else(|| "-".to_string(), |r| format!("{:.1}%", r * 100.0))
}

/// `part / whole`, none when `whole` is 0.
pub fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole != 0).then(|| part as f64 / whole as f64)
}

/// `-` for an empty string.
pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_ratios() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(0, 0), "-");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape("/dev/sda"), Cow::Borrowed("/dev/sda")));
        assert_eq!(escape("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("x\ny\rz\t\x07\x7f"), "x\\ny\\rz\\t\\u{7}\\u{7f}");
        // C1: U+009B is CSI on some terminals
        assert_eq!(escape("a\u{9b}31m"), "a\\u{9b}31m");
        // printable non-ASCII stays
        assert_eq!(escape("/srv/dätä"), "/srv/dätä");
        assert_eq!(escape_lines("one\ntwo\x1b"), "one\ntwo\\u{1b}");
        // a path cannot forge a row or move the cursor in a table
        let t = table(
            Some(&["ID", "PATH"]),
            vec![vec!["1".into(), "/a\n2   /forged\x1b[1A".into()]],
        );
        assert_eq!(t, "ID  PATH\n1   /a\\n2   /forged\\u{1b}[1A");
    }

    #[test]
    fn tables_have_plain_columns() {
        let t = table(
            Some(&["ID", "PATH"]),
            vec![
                vec!["1".into(), "/a".into()],
                vec!["22".into(), "/bb".into()],
            ],
        );
        assert_eq!(t, "ID  PATH\n1   /a\n22  /bb");
    }
}
