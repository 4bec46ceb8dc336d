//! Test rig: lc-testbus's private bus with the real `lcd` serving on it,
//! and the real `lcctl` binary run against it, as root or as user nobody.
//!
//! lcd is another package's binary, so cargo does not build it for these
//! tests: the rig runs `cargo build -p lcd` once (a no-op when it is up to
//! date) with the profile these tests were built with, and uses
//! `target/<profile>/lcd`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The directory holding this test's executable's profile output
/// (`target/debug` or `target/release`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The lcd binary, built on first use.
pub fn lcd_binary() -> &'static Path {
    static LCD: OnceLock<PathBuf> = OnceLock::new();
    LCD.get_or_init(|| {
        let dir = profile_dir();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "-p", "lcd", "--locked", "--profile"])
            .arg(if release { "release" } else { "test" });
        // the features the tests were built with (tests/knob-table/run)
        if let Some(f) = std::env::var_os("LC_TEST_CARGO_FEATURES") {
            cargo.arg("--features").arg(f);
        }
        let status = cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo to build lcd");
        assert!(status.success(), "cargo build -p lcd failed");
        let lcd = dir.join("lcd");
        assert!(lcd.exists(), "{} was not built", lcd.display());
        lcd
    })
}

/// Whether the test runs as root (needed to call lcd as another user).
pub use lc_testbus::is_root;

/// A private bus, optionally an lcd on it, and a runtime directory for
/// lcctl's selection; lcd is stopped cleanly (SIGTERM), the bus killed and
/// everything removed on drop.
pub struct Rig {
    lcd: lc_testbus::Rig,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop_lcd();
    }
}

/// What one lcctl run did.
#[derive(Debug)]
pub struct Run {
    /// Exit status.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().expect("lcctl exited, not killed"),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "lcctl failed: {self:?}");
        &self.stdout
    }

    /// Asserts success and parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts failure with `code`, a one-line message on stderr containing
    /// `text`, and nothing on stdout.
    #[track_caller]
    pub fn fails(&self, code: i32, text: &str) {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
        assert_eq!(self.stderr.lines().count(), 1, "one line: {self:?}");
        assert!(self.stderr.starts_with("lcctl: "), "{self:?}");
        assert!(self.stderr.contains(text), "wanted {text:?}: {self:?}");
    }
}

impl Rig {
    /// A bus with lcd serving on it, ready. lcd runs with `--frontend
    /// none`: devices are attached to their cache but get no block node
    /// (this host may have no ublk), and lcd touches nothing outside the
    /// rig's directory.
    pub fn start() -> Rig {
        let mut rig = Rig::bus_only();
        rig.start_lcd();
        rig
    }

    /// A bus with no lcd on it (the directory is open to user nobody, who
    /// must reach the bus socket and run lcctl there).
    pub fn bus_only() -> Rig {
        let mut lcd = lc_testbus::Rig::builder(lcd_binary())
            .frontend("none")
            .build();
        lcd.start_bus();
        Rig { lcd }
    }

    /// The bus address (`unix:path=…`).
    pub fn address(&self) -> &str {
        self.lcd.address()
    }

    /// Scratch directory: bus socket, lcd state (`state`), lcctl runtime
    /// dir.
    pub fn dir(&self) -> &Path {
        self.lcd.dir()
    }

    /// Starts lcd on the bus, keeping its state in the rig's directory,
    /// and waits until it answers.
    pub fn start_lcd(&mut self) {
        self.lcd.start_lcd();
        self.lcd.wait_ready();
    }

    /// Stops lcd cleanly (SIGTERM), if it runs.
    pub fn stop_lcd(&mut self) {
        if self.lcd.has_lcd() {
            self.lcd.terminate();
        }
    }

    /// What lcctl run as root sees as `/run`: root's selection is always
    /// `/run/lcctl/selected-cache`, so each rig gives its root lcctl a
    /// `/run` of its own (a bind mount in a private mount namespace).
    pub fn root_run_dir(&self) -> PathBuf {
        self.dir().join("root-run")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = if is_root() {
            let run = self.root_run_dir();
            std::fs::create_dir_all(&run).unwrap();
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount --bind "$0" /run && exec "$@""#)
                .arg(&run)
                .arg(env!("CARGO_BIN_EXE_lcctl"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_lcctl"))
        };
        c.args(["--bus", self.address()])
            .args(args)
            // honoured for other users; root ignores it
            .env("LCCTL_RUNTIME_DIR", self.dir().join("lcctl"))
            .stdin(Stdio::null());
        c
    }

    /// Runs lcctl (as the test's user, root in CI) on the rig's bus.
    pub fn lcctl(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    /// Runs lcctl as user nobody (uid 65534) on the rig's bus.
    pub fn lcctl_as_nobody(&self, args: &[&str]) -> Run {
        let mut c = lc_testbus::as_nobody(env!("CARGO_BIN_EXE_lcctl"));
        c.args(["--bus", self.address()])
            .args(args)
            .env("LCCTL_RUNTIME_DIR", self.dir().join("nobody"))
            .stdin(Stdio::null());
        Run::from(c.output().expect("setpriv (util-linux) must be installed"))
    }
}

/// A sparse file of `size` bytes; returns its path as a string.
pub fn sparse(dir: &Path, name: &str, size: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p.display().to_string()
}

/// Size of the test caches: 64 MiB (63 segments).
pub const CACHE_BYTES: u64 = 64 << 20;
