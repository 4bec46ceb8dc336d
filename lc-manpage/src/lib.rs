//! lc-manpage: what `lcd` and `lcctl` share to make their man pages from
//! their clap definitions — a section renderer without the roff preamble
//! clap_mangen repeats, and a line wrapper that keeps `mandoc -Tlint`
//! quiet. Used only by the tests that keep the committed pages current;
//! no runtime code depends on it.

use clap_mangen::roff::{bold, italic, roman, Inline, Roff};

/// Runs one clap_mangen section renderer (e.g. `Man::render_options_section`)
/// into a string, without the preamble every rendering repeats.
pub fn section(
    man: &clap_mangen::Man,
    f: fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> String {
    let mut buf = Vec::new();
    f(man, &mut buf).expect("rendering into memory works");
    let s = String::from_utf8(buf).expect("clap_mangen writes UTF-8");
    let preamble = Roff::new().render();
    s.strip_prefix(&preamble).unwrap_or(&s).to_string()
}

/// The roff preamble a page starts with.
pub fn preamble() -> String {
    Roff::new().render()
}

/// Breaks text lines longer than 80 bytes at blanks (roff fills them
/// again), so `mandoc -Tlint` has nothing to say; control lines and
/// no-fill examples (`.EX`/`.EE`) are kept as they are.
pub fn wrap(page: &str) -> String {
    let mut out = String::new();
    let mut nofill = false;
    for line in page.lines() {
        if line.starts_with(".EX") {
            nofill = true;
        } else if line.starts_with(".EE") {
            nofill = false;
        }
        if nofill || line.starts_with('.') || line.starts_with('\'') || line.len() <= 80 {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut cur = String::new();
        for word in line.split(' ') {
            if !cur.is_empty() && cur.len() + 1 + word.len() > 80 {
                out.push_str(&cur);
                out.push('\n');
                cur.clear();
            }
            if cur.is_empty() {
                // a text line starting with . or ' would be read as a request
                if word.starts_with('.') || word.starts_with('\'') {
                    cur.push_str("\\&");
                }
            } else {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        out.push_str(&cur);
        out.push('\n');
    }
    out
}

/// `text` ending with a full stop.
pub fn sentence(text: &str) -> String {
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.is_empty() || t.ends_with(['.', '!', '?', ':']) {
        t
    } else {
        format!("{t}.")
    }
}

/// Splits a help text into paragraphs (blank-line separated), each a
/// `.PP` of `roff`.
pub fn paragraphs(roff: &mut Roff, text: &str) {
    for p in text.split("\n\n") {
        let p = sentence(p);
        if !p.is_empty() {
            roff.control("PP", []);
            roff.text([roman(p)]);
        }
    }
}

/// How an argument is written: its value name in italics when positional,
/// else `--long` in bold and its value name if it takes one.
fn arg_inlines(a: &clap::Arg) -> Vec<Inline> {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    if a.is_positional() {
        return vec![italic(value)];
    }
    let Some(long) = a.get_long() else {
        return Vec::new();
    };
    let mut l = vec![bold(format!("--{long}"))];
    if a.get_num_args().is_none_or(|n| n.takes_values()) {
        l.push(roman(" "));
        l.push(italic(value));
    }
    l
}

/// A section `title` (COMMANDS, SUBCOMMANDS) with one subsection per
/// subcommand of `cmd`: its synopsis (`program` and the subcommand in bold),
/// its long help and its arguments, all from the clap definitions — so the
/// page documents every subcommand itself instead of pointing at per-command
/// pages nobody ships.
pub fn commands_section(cmd: &clap::Command, program: &str, title: &str) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        roff.control("SS", [name]);
        let mut line: Vec<Inline> = vec![bold(program), roman(" "), bold(name)];
        let args: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_global_set() && !a.is_hide_set())
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        for a in &args {
            line.push(roman(" "));
            let required = a.is_required_set();
            if !required {
                line.push(roman("["));
            }
            line.extend(arg_inlines(a));
            if !required {
                line.push(roman("]"));
            }
        }
        roff.text(line);
        let about = sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(|s| s.to_string())
            .unwrap_or_default();
        paragraphs(&mut roff, &about);
        for a in &args {
            roff.control("TP", []);
            let inlines = arg_inlines(a);
            if !inlines.is_empty() {
                roff.text(inlines);
            }
            let help = a
                .get_long_help()
                .or_else(|| a.get_help())
                .map(|s| s.to_string())
                .unwrap_or_default();
            roff.text([roman(sentence(&help))]);
        }
    }
    roff
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn long_text_lines_are_wrapped_and_examples_kept() {
        let long = ["word"; 40].join(" ");
        let out = wrap(&format!(".TH X 8\n{long}\n"));
        assert!(out.lines().all(|l| l.len() <= 80), "{out}");
        assert_eq!(out.split_whitespace().filter(|w| *w == "word").count(), 40);
        let example = format!(".EX\n{long}\n.EE\n");
        assert_eq!(wrap(&example), example, "no-fill examples stay as they are");
    }

    #[test]
    fn a_wrapped_line_never_starts_with_a_dot() {
        let line = format!("{} .hidden", ["x"; 40].join(" "));
        let out = wrap(&line);
        assert!(
            out.lines().nth(1).unwrap().starts_with("\\&.hidden"),
            "{out}"
        );
    }
}
