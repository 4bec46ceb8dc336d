//! The committed man page and shell completions are what the code makes
//! (regenerate them with `LC_UPDATE_GENERATED=1 cargo test -p lcctl
//! --test generated`), and the page is clean for `mandoc -Tlint`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lcctl is in the workspace")
        .to_path_buf()
}

#[test]
fn committed_files_are_up_to_date() {
    let update = std::env::var_os("LC_UPDATE_GENERATED").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (rel, content) in lcctl::manual::generated_files() {
        let path = repo_root().join(rel);
        if update {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &content).unwrap();
            continue;
        }
        if std::fs::read(&path).ok().as_deref() != Some(content.as_slice()) {
            stale.push(rel);
        }
    }
    assert!(
        stale.is_empty(),
        "{stale:?} differ from what the code generates: run `LC_UPDATE_GENERATED=1 cargo test -p lcctl --test generated` and commit them"
    );
}

/// README's knob table is the one lc-knobs defines (rewritten between its
/// markers by `LC_UPDATE_GENERATED=1`).
#[test]
fn readme_knob_table_is_the_table() {
    const START: &str = "<!-- knobs: generated from lc-knobs (LC_UPDATE_GENERATED=1 cargo test -p lcctl --test generated) -->\n";
    const END: &str = "<!-- /knobs -->";
    let path = repo_root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme.find(START).expect("README.md has the knobs marker") + START.len();
    let end = start
        + readme[start..]
            .find(END)
            .expect("README.md has the end marker");
    let want = lcctl::manual::readme_knobs();
    if std::env::var_os("LC_UPDATE_GENERATED").is_some_and(|v| v == "1") {
        let new = format!("{}{want}{}", &readme[..start], &readme[end..]);
        std::fs::write(&path, new).unwrap();
        return;
    }
    assert_eq!(
        &readme[start..end],
        want,
        "README.md's knob table differs from lc-knobs: run `LC_UPDATE_GENERATED=1 cargo test -p lcctl --test generated`"
    );
}

#[test]
fn man_page_is_lint_clean() {
    let Ok(out) = Command::new("mandoc")
        .arg("-Tlint")
        .arg(repo_root().join("man/lcctl.8"))
        .output()
    else {
        // tests/run-all installs mandoc; say so rather than pass silently
        panic!("mandoc is not installed (apt-get install mandoc)");
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn man_page_documents_every_command_knob_and_exit_status() {
    let page = lcctl::manual::man_page();
    use clap::CommandFactory;
    for sub in lcctl::cli::Cli::command().get_subcommands() {
        if sub.get_name() != "help" {
            assert!(
                page.contains(&format!(".SS {}\n", sub.get_name())),
                "{}",
                sub.get_name()
            );
        }
    }
    for k in lcctl::knobs::CACHE_KNOBS
        .iter()
        .chain(lcctl::knobs::DEVICE_KNOBS)
    {
        assert!(page.contains(&format!("\\fB{}\\fR", k.name)), "{}", k.name);
    }
    for e in lcctl::error::Exit::ALL {
        assert!(
            page.contains(&format!("\\fB{}\\fR ({})", e.code(), e.name())),
            "exit status {e:?}"
        );
    }
    for s in [
        "DESCRIPTION",
        "KNOBS",
        "JSON OUTPUT",
        "EXIT STATUS",
        "FILES",
        "EXAMPLES",
    ] {
        assert!(
            page.contains(&format!(".SH \"{s}\"")) || page.contains(&format!(".SH {s}")),
            "{s}"
        );
    }
}

/// The knobs lcctl knows (lc-knobs' table, through lc-proto) are the ones
/// the engine validates, with the same ranges and defaults.
#[test]
fn knob_table_matches_the_engine() {
    let engine: Vec<_> = lc_engine::Knob::ALL
        .iter()
        .map(|k| (k.name, k.min, k.max, k.default))
        .collect();
    let ours: Vec<_> = lcctl::knobs::CACHE_KNOBS
        .iter()
        .map(|k| (k.name, k.min, k.max, k.default))
        .collect();
    assert_eq!(ours, engine);
    for k in lcctl::knobs::CACHE_KNOBS {
        assert_eq!(k.is_switch(), k.max == 1, "{}", k.name);
    }
}
