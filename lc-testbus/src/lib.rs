//! lc-testbus: the real `lcd` on a private `dbus-daemon`, for lc's tests,
//! benchmarks and fuzz targets, so they run the daemon as it ships without
//! touching the machine's buses.
//!
//! A [`Rig`] is a directory (a temporary one unless the caller names it), a
//! bus listening on `DIR/bus` that lets every user connect, own names and
//! call anything (refusals are lcd's own, or a policy's under test), and an
//! `lcd` binary (the caller says which) serving on it with its run files in
//! `DIR/run`, its state in `DIR/state` unless told otherwise, and its
//! output in `DIR/lcd.log`. The rig starts lcd, waits until it serves its
//! name ([`Rig::client`], [`Rig::wait_ready`]), stops it with SIGTERM,
//! kills it with SIGKILL, restarts it, and kills both processes when it is
//! dropped (or, if asked, when the thread that started them ends). [`as_nobody`] runs a
//! command as user nobody, for the tests of what non-root callers may do.
//!
//! Used only by test code: where something the rig needs does not work
//! (the bus does not start, lcd exits or does not come up), it panics with
//! a message that says so, with the end of lcd's log.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lc_proto::{CacheProxy, DeviceProxy, ManagerProxy};

/// How long [`Rig::client`] waits for lcd to answer on the bus before it
/// panics (a bound against hanging, not a speed requirement).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The uid and gid of user nobody, whom [`as_nobody`] runs commands as.
pub const NOBODY: u32 = 65534;
/// How many lines of lcd's log a panic message shows.
const LOG_TAIL_LINES: usize = 40;

/// How to start lcd, and where the rig lives: made by [`Rig::builder`].
#[derive(Debug, Clone)]
pub struct RigBuilder {
    lcd: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    state_dir: Option<PathBuf>,
    current_dir: Option<PathBuf>,
    dir: Option<PathBuf>,
    die_with_parent: bool,
}

impl RigBuilder {
    /// lcd keeps its state in `dir` (default: `DIR/state`); a directory
    /// outside the rig outlives it, for the next rig's lcd to restore.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// `--frontend NAME` (`none`: devices get no block node).
    pub fn frontend(self, name: &str) -> Self {
        self.args(["--frontend", name])
    }

    /// One more argument for lcd, after the rig's `--address`,
    /// `--state-dir` and `--run-dir`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// More arguments for lcd (see [`RigBuilder::arg`]).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// An environment variable for lcd (`RUST_LOG` is `warn` unless set).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// lcd's working directory (relative paths in calls resolve there).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The rig lives in `dir` (created if missing) instead of a temporary
    /// directory, and leaves it in place when dropped: for a process that
    /// ends without running destructors (libFuzzer) and cleans up itself.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// The bus and lcd get SIGKILL when the thread that started them
    /// ends (`PR_SET_PDEATHSIG`), so a process that exits without running
    /// destructors (libFuzzer) leaves none behind. Not the default: the
    /// hook makes std fork instead of posix_spawn, and until the child's
    /// exec it holds a copy of every descriptor of the test process, with
    /// the flocks of the devices other tests' threads have open.
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// The rig with nothing started yet: start the bus and lcd with
    /// [`Rig::start_bus`] and [`Rig::start_lcd`], in either order.
    pub fn build(mut self) -> Rig {
        let dir = match self.dir.take() {
            Some(path) => {
                std::fs::create_dir_all(&path)
                    .unwrap_or_else(|e| panic!("creating the rig's directory {path:?}: {e}"));
                RigDir::Kept(path)
            }
            None => {
                RigDir::Temp(tempfile::tempdir().expect("creating the rig's temporary directory"))
            }
        };
        // user nobody must reach the bus socket inside
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("opening the rig's directory to every user");
        let address = format!("unix:path={}", dir.path().join("bus").display());
        Rig {
            dir,
            launch: self,
            bus: None,
            address,
            lcd: Mutex::new(None),
        }
    }

    /// The rig with its bus and lcd started ([`RigBuilder::build`], then
    /// [`Rig::start_bus`] and [`Rig::start_lcd`]); lcd may not serve yet:
    /// [`Rig::client`] waits for it.
    pub fn start(self) -> Rig {
        let mut rig = self.build();
        rig.start_bus();
        rig.start_lcd();
        rig
    }
}

/// Where a rig's files are.
#[derive(Debug)]
enum RigDir {
    /// Removed with the rig.
    Temp(tempfile::TempDir),
    /// Named by the caller, left in place.
    Kept(PathBuf),
}

impl RigDir {
    fn path(&self) -> &Path {
        match self {
            RigDir::Temp(t) => t.path(),
            RigDir::Kept(p) => p,
        }
    }
}

/// A private bus and the real lcd on it; both are killed (SIGKILL) when the
/// rig is dropped. See the crate documentation.
#[derive(Debug)]
pub struct Rig {
    dir: RigDir,
    launch: RigBuilder,
    bus: Option<Child>,
    /// `unix:path=DIR/bus`, then the address the bus printed.
    address: String,
    /// lcd, while it runs; behind a mutex so that `&self` methods can see
    /// whether it exited.
    lcd: Mutex<Option<Child>>,
}

impl Rig {
    /// A rig running the lcd binary at `lcd` (`env!("CARGO_BIN_EXE_lcd")`
    /// in lcd's own tests, a built `target/…/lcd` elsewhere).
    pub fn builder(lcd: impl Into<PathBuf>) -> RigBuilder {
        RigBuilder {
            lcd: lcd.into(),
            args: Vec::new(),
            envs: Vec::new(),
            state_dir: None,
            current_dir: None,
            dir: None,
            die_with_parent: false,
        }
    }

    /// The rig's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// lcd's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.launch
            .state_dir
            .clone()
            .unwrap_or_else(|| self.dir().join("state"))
    }

    /// The bus address for clients and lcd: `unix:path=DIR/bus` (valid
    /// before the bus starts), or the one the bus printed once it did.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The file lcd's standard output and error go to, appended to by
    /// each start.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("lcd.log")
    }

    /// Everything lcd has logged so far (empty before it started).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last lines of lcd's log, for panic messages.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Starts the private dbus-daemon in the rig's directory and waits
    /// until it listens. lcd started before it (as early in boot) connects
    /// by itself.
    ///
    /// # Panics
    /// If the bus runs already, or dbus-daemon does not start.
    pub fn start_bus(&mut self) {
        assert!(self.bus.is_none(), "the rig's bus runs already");
        let (bus, address) = spawn_bus(self.dir(), self.launch.die_with_parent)
            .unwrap_or_else(|e| panic!("starting a private dbus-daemon: {e}"));
        self.bus = Some(bus);
        self.address = address;
    }

    fn lcd(&self) -> MutexGuard<'_, Option<Child>> {
        self.lcd.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an lcd started by this rig has not been stopped or killed
    /// (it may have exited by itself: see [`Rig::assert_lcd_running`]).
    pub fn has_lcd(&self) -> bool {
        self.lcd().is_some()
    }

    /// lcd's process id.
    ///
    /// # Panics
    /// If lcd is not started.
    pub fn lcd_pid(&self) -> u32 {
        self.lcd().as_ref().expect("lcd is not started").id()
    }

    /// Starts lcd (`--address`, `--state-dir`, `--run-dir DIR/run`, then
    /// the builder's arguments); does not wait for it to serve.
    ///
    /// # Panics
    /// If lcd runs already, or its binary does not start.
    pub fn start_lcd(&mut self) {
        assert!(!self.has_lcd(), "lcd runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening lcd's log in the rig's directory");
        let mut cmd = Command::new(&self.launch.lcd);
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--run-dir")
            .arg(self.dir().join("run"))
            .args(&self.launch.args)
            .env("RUST_LOG", "warn")
            .envs(self.launch.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("lcd's log"))
            .stderr(log);
        if let Some(dir) = &self.launch.current_dir {
            cmd.current_dir(dir);
        }
        if self.launch.die_with_parent {
            die_with_parent(&mut cmd);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start lcd ({}): {e}; build it first (cargo build -p lcd)",
                self.launch.lcd.display()
            )
        });
        *self.lcd() = Some(child);
    }

    /// Panics, with the end of lcd's log, if lcd has exited.
    pub fn assert_lcd_running(&self) {
        let exited = match self.lcd().as_mut() {
            Some(lcd) => lcd.try_wait().expect("waiting for lcd"),
            None => panic!("lcd is not started"),
        };
        if let Some(status) = exited {
            panic!("lcd exited ({status}); its log ends:\n{}", self.log_tail());
        }
    }

    /// A new client of the bus and a Manager proxy on it, once lcd answers
    /// there (its `Version` property reads).
    ///
    /// # Panics
    /// If the bus is not started, or lcd exits or does not answer within
    /// [`READY_TIMEOUT`] (with the end of its log).
    pub async fn client(&self) -> (zbus::Connection, ManagerProxy<'static>) {
        assert!(self.bus.is_some(), "the rig's bus is not started");
        let conn = zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .unwrap_or_else(|e| panic!("connecting to the private bus {}: {e}", self.address));
        let proxy = ManagerProxy::new(&conn).await.expect("a Manager proxy");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if proxy.version().await.is_ok() {
                return (conn, proxy);
            }
            self.assert_lcd_running();
            if Instant::now() > deadline {
                panic!(
                    "lcd did not come up on the private bus within {READY_TIMEOUT:?}; its log \
                     ends:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// [`Rig::client`] for code without a tokio runtime: waits (on a
    /// thread of its own) until lcd answers on the bus.
    ///
    /// # Panics
    /// As [`Rig::client`].
    pub fn wait_ready(&self) {
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime")
                    .block_on(async { drop(self.client().await) })
            });
            if let Err(panic) = waiter.join() {
                std::panic::resume_unwind(panic);
            }
        });
    }

    /// Stops lcd with SIGTERM (a clean stop) and returns how it exited.
    ///
    /// # Panics
    /// If lcd is not started.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut lcd = self.lcd().take().expect("lcd is not started");
        signal(&lcd, libc::SIGTERM);
        lcd.wait().expect("waiting for lcd")
    }

    /// Kills lcd with SIGKILL (no clean stop: a crash) and reaps it.
    ///
    /// # Panics
    /// If lcd is not started.
    pub fn kill(&mut self) {
        let mut lcd = self.lcd().take().expect("lcd is not started");
        signal(&lcd, libc::SIGKILL);
        lcd.wait().expect("waiting for lcd");
    }

    /// Stops lcd with SIGTERM, asserts that it exited 0, and starts it
    /// again (with the same arguments, restoring its saved state).
    pub fn restart(&mut self) {
        self.stop_lcd_cleanly();
        self.start_lcd();
    }

    /// Stops lcd with SIGTERM, asserts that it exited 0, then stops the
    /// bus.
    pub fn stop(mut self) {
        self.stop_lcd_cleanly();
    }

    fn stop_lcd_cleanly(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "lcd stopped with {status} on SIGTERM; its log ends:\n{}",
            self.log_tail()
        );
    }

    /// `busctl` on the rig's bus (add its verb and arguments).
    pub fn busctl(&self) -> Command {
        let mut c = Command::new("busctl");
        c.arg(format!("--address={}", self.address));
        c
    }

    /// [`Rig::busctl`] as user nobody (see [`as_nobody`]).
    pub fn busctl_as_nobody(&self) -> Command {
        let mut c = as_nobody("busctl");
        c.arg(format!("--address={}", self.address));
        c
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let lcd = self.lcd().take();
        if let Some(mut lcd) = lcd {
            if std::thread::panicking() {
                eprintln!(
                    "lcd's log ({}) ends:\n{}",
                    self.log_path().display(),
                    self.log_tail()
                );
            }
            let _ = lcd.kill();
            let _ = lcd.wait();
        }
        if let Some(mut bus) = self.bus.take() {
            let _ = bus.kill();
            let _ = bus.wait();
        }
    }
}

/// Sends `sig` to `child`.
fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes no pointers; `child` is not reaped yet, so its
    // pid names no other process.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Has the child get SIGKILL when the thread that spawned it ends (see
/// [`RigBuilder::die_with_parent`]).
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec; prctl(2) is
    // async-signal-safe and takes no pointers.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Writes the bus configuration to `dir/bus.conf`, starts dbus-daemon on
/// it (its stderr in `dir/bus.log`; killed with the spawning thread if
/// `die_with_parent`) and returns it and the address it printed once
/// listening.
fn spawn_bus(dir: &Path, die_with_parent: bool) -> std::io::Result<(Child, String)> {
    let conf = dir.join("bus.conf");
    std::fs::write(
        &conf,
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>"#,
            dir.display()
        ),
    )?;
    let mut cmd = Command::new("dbus-daemon");
    cmd.arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("bus.log"))?);
    if die_with_parent {
        self::die_with_parent(&mut cmd);
    }
    let mut bus = cmd.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("starting dbus-daemon (install the package dbus-daemon): {e}"),
        )
    })?;
    let mut address = String::new();
    let out = bus.stdout.take().expect("stdout is piped");
    BufReader::new(out).read_line(&mut address)?;
    let address = address.trim().to_string();
    if address.is_empty() {
        let _ = bus.kill();
        let _ = bus.wait();
        let log = std::fs::read_to_string(dir.join("bus.log")).unwrap_or_default();
        return Err(std::io::Error::other(format!(
            "dbus-daemon printed no address: {log}"
        )));
    }
    Ok((bus, address))
}

/// `program` run as user nobody ([`NOBODY`], no supplementary groups)
/// through `setpriv` (util-linux); the test must run as root.
pub fn as_nobody(program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(program);
    c
}

/// Whether this process runs as root (needed to run commands as another
/// user).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A proxy of cache `id`'s object that reads every property afresh.
pub async fn cache_proxy(conn: &zbus::Connection, id: u8) -> CacheProxy<'static> {
    CacheProxy::builder(conn)
        .path(lc_proto::cache_path(id))
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("a cache proxy")
}

/// A proxy of device `id`'s object that reads every property afresh.
pub async fn device_proxy(conn: &zbus::Connection, id: u8) -> DeviceProxy<'static> {
    DeviceProxy::builder(conn)
        .path(lc_proto::device_path(id))
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("a device proxy")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bus_starts_and_answers_at_its_address() {
        if std::process::Command::new("dbus-daemon")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: dbus-daemon is not installed");
            return;
        }
        let mut rig = super::Rig::builder("/nonexistent/lcd").build();
        let before = rig.address().to_string();
        rig.start_bus();
        assert!(rig.address().starts_with(&before), "{}", rig.address());
        assert!(rig.dir().join("bus").exists(), "the socket is in dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt.block_on(zbus::connection::Builder::address(rig.address()).build());
        assert!(conn.is_ok(), "a client connects: {conn:?}");
    }
}
