//! A knob written only in lc-knobs' table, of a cache or of a device,
//! reaches everything that shows or sets knobs: lcd's D-Bus property (read,
//! set, range checked by the engine, kept across a restart of lcd),
//! lcctl's `get`/`set`, its help, man page, bash and zsh completions and
//! README's table.
//!
//! Only the build with lc-knobs' `probe-knob` feature has such knobs
//! (`probe_knob`, `probe_device_knob`), so the tests are ignored in the normal build and
//! `tests/knob-table/run` (run by `tests/run-all`) builds lcd and lcctl with
//! the feature and runs it.

mod common;

use common::{sparse, Rig, CACHE_BYTES};

#[test]
#[ignore = "needs the probe-knob build: bash tests/knob-table/run"]
fn a_knob_added_to_the_table_alone_reaches_lcd_lcctl_help_man_page_and_completions() {
    let spec = lcctl::knobs::CACHE_KNOBS
        .iter()
        .find(|k| k.name == "probe_knob")
        .expect("this build has no probe knob: run `bash tests/knob-table/run`");
    assert_eq!((spec.default, spec.min, spec.max), (5, 2, 9));

    // help, man page, completions
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_lcctl"))
        .args(["get", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("probe_knob"), "lcctl get --help:\n{help}");
    assert!(
        lcctl::manual::man_page().contains("\\fBprobe_knob\\fR"),
        "the man page's KNOBS"
    );
    // (clap_complete's fish script completes no positional values at all)
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
        let script = String::from_utf8(lcctl::manual::completion(shell)).unwrap();
        assert!(script.contains("probe_knob"), "{shell} completion");
    }
    assert!(lcctl::manual::readme_knobs().contains("`ProbeKnob`"));

    // lcd serves it as a property, the engine checks its range, lcd keeps it
    let mut rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "1"]).ok();
    assert_eq!(
        rig.lcctl(&["get", "probe_knob", "--cache", "1"])
            .ok()
            .trim(),
        "5"
    );
    let j = rig.lcctl(&["--json", "get", "--cache", "1"]).json();
    assert_eq!(j["knobs"]["probe_knob"], 5, "{j}");
    rig.lcctl(&["set", "probe_knob", "7", "--cache", "1"]).ok();
    rig.lcctl(&["set", "probe_knob", "10", "--cache", "1"])
        .fails(2, "probe_knob must be in 2..=9");
    assert_eq!(
        rig.lcctl(&["get", "probe_knob", "--cache", "1"])
            .ok()
            .trim(),
        "7"
    );
    rig.stop_lcd();
    rig.start_lcd();
    assert_eq!(
        rig.lcctl(&["get", "probe_knob", "--cache", "1"])
            .ok()
            .trim(),
        "7",
        "kept across a restart of lcd"
    );
    let status = rig.lcctl(&["status", "1"]);
    assert!(status.ok().contains("probe_knob"), "{status:?}");
}

#[test]
#[ignore = "needs the probe-knob build: bash tests/knob-table/run"]
fn a_device_knob_added_to_the_table_alone_reaches_lcd_lcctl_help_man_page_and_completions() {
    let spec = lcctl::knobs::DEVICE_KNOBS
        .iter()
        .find(|k| k.name == "probe_device_knob")
        .expect("this build has no probe device knob: run `bash tests/knob-table/run`");
    assert_eq!((spec.default, spec.min, spec.max), (4, 1, 8));

    let help = std::process::Command::new(env!("CARGO_BIN_EXE_lcctl"))
        .args(["set", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("probe_device_knob"),
        "lcctl set --help:\n{help}"
    );
    assert!(
        lcctl::manual::man_page().contains("\\fBprobe_device_knob\\fR"),
        "the man page's KNOBS"
    );
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
        let script = String::from_utf8(lcctl::manual::completion(shell)).unwrap();
        assert!(script.contains("probe_device_knob"), "{shell} completion");
    }
    assert!(lcctl::manual::readme_knobs().contains("`ProbeDeviceKnob`"));

    // lcd serves it on the device object, checks its range, keeps it with
    // the device (attached or not) and puts it back on the engine's device
    let mut rig = Rig::start();
    let files = tempfile::tempdir().unwrap();
    let cache = sparse(files.path(), "cache.img", CACHE_BYTES);
    let disk = sparse(files.path(), "disk.img", 16 << 20);
    rig.lcctl(&["format", &cache]).ok();
    rig.lcctl(&["resume", &cache, "--id", "1"]).ok();
    rig.lcctl(&["attach", &disk, "--cache", "1", "--id", "3"])
        .ok();
    let get = |rig: &Rig| {
        rig.lcctl(&["get", "probe_device_knob", "--device", "3"])
            .ok()
            .trim()
            .to_string()
    };
    assert_eq!(get(&rig), "4", "the table's default");
    let j = rig.lcctl(&["--json", "get", "--device", "3"]).json();
    assert_eq!(j["knobs"]["probe_device_knob"], 4, "{j}");
    assert_eq!(j["knobs"]["migrate_threshold"], 70, "{j}");
    rig.lcctl(&["set", "probe_device_knob", "6", "--device", "3"])
        .ok();
    rig.lcctl(&["set", "probe_device_knob", "9", "--device", "3"])
        .fails(2, "probe_device_knob must be in 1..=8");
    rig.lcctl(&["set", "probe_device_knob", "0", "--device", "3"])
        .fails(2, "probe_device_knob must be in 1..=8");
    assert_eq!(get(&rig), "6", "refused values changed nothing");
    rig.stop_lcd();
    rig.start_lcd();
    assert_eq!(get(&rig), "6", "kept across a restart of lcd");
}
