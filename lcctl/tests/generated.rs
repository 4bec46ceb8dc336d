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
        .chain(&lcctl::knobs::DEVICE_KNOBS)
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

/// lcctl's knob table (names, ranges, defaults) is the engine's: lcctl
/// itself cannot use the engine, so a test keeps them in step.
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
    for k in &lcctl::knobs::CACHE_KNOBS {
        assert_eq!(k.switch, k.max == 1, "{}", k.name);
    }
}
