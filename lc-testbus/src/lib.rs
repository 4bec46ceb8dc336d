//! lc-testbus: a private `dbus-daemon` for lc's tests, benchmarks and fuzz
//! targets, so they run the real `lcd` without touching the machine's
//! buses. The bus listens on `DIR/bus`, lets every user connect, own names
//! and call anything (refusals are lcd's own, or a policy's under test),
//! and prints its address on start. Used only by test code.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Writes the bus configuration to `dir/bus.conf` and returns the
/// `dbus-daemon` command that serves it, its address printed on stdout;
/// callers may adjust it (stderr, pre-exec hooks) before [`spawn`].
pub fn command(dir: &Path) -> std::io::Result<Command> {
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
        .stdout(Stdio::piped());
    Ok(cmd)
}

/// Spawns `cmd` (from [`command`]) and returns the bus and its address.
pub fn spawn(mut cmd: Command) -> std::io::Result<(Child, String)> {
    let mut bus = cmd.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("starting dbus-daemon (install the package dbus): {e}"),
        )
    })?;
    let mut address = String::new();
    let out = bus.stdout.take().expect("stdout is piped by command()");
    BufReader::new(out).read_line(&mut address)?;
    let address = address.trim().to_string();
    if address.is_empty() {
        let _ = bus.kill();
        let _ = bus.wait();
        return Err(std::io::Error::other("dbus-daemon printed no address"));
    }
    Ok((bus, address))
}

/// A private bus in `dir`: [`command`] then [`spawn`].
pub fn start(dir: &Path) -> std::io::Result<(Child, String)> {
    spawn(command(dir)?)
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
        let dir = tempfile::tempdir().unwrap();
        let (mut bus, address) = super::start(dir.path()).unwrap();
        assert!(address.starts_with("unix:path="), "{address}");
        assert!(dir.path().join("bus").exists(), "the socket is in dir");
        bus.kill().unwrap();
        bus.wait().unwrap();
    }
}
