//! The man page `lcctl(8)` and the shell completions, generated from the
//! clap definitions in [`crate::cli`] (clap_mangen, clap_complete) plus the
//! hand-written sections in `src/man/*.roff`; lc-manpage has the helpers
//! lcd(8) is made with too.
//!
//! The generated files are committed (`man/lcctl.8`, `completions/`); a
//! test compares them with what this module makes, and rewrites them when
//! `LC_UPDATE_GENERATED=1` is set.

use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use lc_manpage::{commands_section, preamble, section, wrap};

use crate::cli::Cli;
use crate::error::Exit;
use crate::knobs::{KnobSpec, CACHE_KNOBS, DEVICE_KNOBS};

/// Date on the page's title line; change it when the page changes.
const DATE: &str = "2026-12-04";

/// Every generated file: its path relative to the repository root and
/// its content.
pub fn generated_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("man/lcctl.8", man_page().into_bytes()),
        ("completions/lcctl.bash", completion(Shell::Bash)),
        ("completions/_lcctl", completion(Shell::Zsh)),
        ("completions/lcctl.fish", completion(Shell::Fish)),
    ]
}

/// The completion script for `shell`.
pub fn completion(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lcctl", &mut out);
    out
}

/// The man page `lcctl(8)`, roff source.
pub fn man_page() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone())
        .title("LCCTL")
        .section("8")
        .date(DATE)
        .manual("System Manager's Manual");
    let mut page = preamble();
    page.push_str(&section(&man, clap_mangen::Man::render_title));
    page.push_str(&section(&man, clap_mangen::Man::render_name_section));
    page.push_str(&section(&man, clap_mangen::Man::render_synopsis_section));
    page.push_str(include_str!("man/description.roff"));
    page.push_str(&section(&man, clap_mangen::Man::render_options_section));
    page.push_str(&commands_section(&cmd, "lcctl", "COMMANDS").to_roff());
    page.push_str(&knobs_section().to_roff());
    page.push_str(include_str!("man/json.roff"));
    page.push_str(&exit_section().to_roff());
    page.push_str(include_str!("man/tail.roff"));
    wrap(&page)
}

fn knob_entries(roff: &mut Roff, knobs: &[KnobSpec]) {
    for k in knobs {
        roff.control("TP", []);
        roff.text([bold(k.name)]);
        roff.text([roman(format!(
            "{}. Range {}, default {}. D-Bus property {}.",
            upper_first(k.help),
            k.range_text(),
            k.default,
            k.property
        ))]);
    }
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// KNOBS: the cache and device knobs with their ranges.
fn knobs_section() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["KNOBS"]);
    roff.text([roman(
        "Knobs keep the names of dm-lc's sysfs files. Anyone may read them with get or status; \
         only root may set them. lcd checks every value against the range below and records \
         the knobs of each cache, so they survive a restart of lcd.",
    )]);
    roff.control("SS", ["Cache knobs (--cache ID)"]);
    knob_entries(&mut roff, CACHE_KNOBS);
    roff.control("SS", ["Device knobs (--device ID)"]);
    knob_entries(&mut roff, DEVICE_KNOBS);
    roff
}

/// README's knob table (between the `knobs` markers), in Markdown.
pub fn readme_knobs() -> String {
    let mut md = String::from(
        "| knob | of | range | default | unit | D-Bus property | what it does |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for k in CACHE_KNOBS.iter().chain(DEVICE_KNOBS) {
        let owner = match k.owner {
            crate::knobs::Owner::Cache => "cache",
            crate::knobs::Owner::Device => "device",
        };
        md.push_str(&format!(
            "| `{}` | {owner} | {} | {} | {} | `{}` | {} |\n",
            k.name,
            k.range_text(),
            k.default,
            k.unit,
            k.property,
            k.help
        ));
    }
    md
}

/// EXIT STATUS: every status of [`Exit`].
fn exit_section() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    roff.text([roman(
        "lcctl prints one line on standard error saying what went wrong and what to do, and \
         exits with one of these statuses; with --json it also prints an error object on \
         standard output (see JSON OUTPUT). The name in parentheses is the error's kind.",
    )]);
    for e in Exit::ALL {
        roff.control("TP", []);
        roff.text([
            bold(e.code().to_string()),
            roman(format!(" ({})", e.name())),
        ]);
        roff.text([roman(e.meaning())]);
    }
    roff
}
