//! The man page `lcd(8)` (made by the tests only): name, synopsis, options and subcommands from the
//! clap definitions in [`crate::cli`] (clap_mangen), the rest hand-written
//! in `src/man/*.roff`. The page is committed as `man/lcd.8`; a test
//! compares it with what this module makes and rewrites it when
//! `LC_UPDATE_GENERATED=1` is set.

use clap::CommandFactory;
use lc_manpage::{preamble, section, wrap};

use crate::cli::Cli;

/// Date on the page's title line; change it when the page changes.
const DATE: &str = "2026-12-03";

/// The man page, roff source.
pub fn man_page() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let man = clap_mangen::Man::new(cmd)
        .section("8")
        .date(DATE)
        .title("LCD")
        .manual("System Manager's Manual");
    let mut page = preamble();
    page.push_str(&section(&man, clap_mangen::Man::render_title));
    page.push_str(&section(&man, clap_mangen::Man::render_name_section));
    page.push_str(&section(&man, clap_mangen::Man::render_synopsis_section));
    page.push_str(include_str!("man/description.roff"));
    page.push_str(&section(&man, clap_mangen::Man::render_options_section));
    page.push_str(&section(&man, clap_mangen::Man::render_subcommands_section));
    page.push_str(include_str!("man/reference.roff"));
    wrap(&page)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn committed_man_page_is_what_the_code_generates() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../man/lcd.8");
        let page = super::man_page();
        if std::env::var_os("LC_UPDATE_GENERATED").is_some_and(|v| v == "1") {
            std::fs::write(&path, &page).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == page,
            "man/lcd.8 differs from what the code generates: run \
             `LC_UPDATE_GENERATED=1 cargo test -p lcd manual` and commit it"
        );
    }
}
