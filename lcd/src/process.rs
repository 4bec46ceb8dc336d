//! The process life cycle of the daemon: start (logging, the mount
//! namespace, the frontend), early boot without D-Bus (the saved caches and
//! devices come back before lcd looks for the bus), readiness (systemd hears
//! READY=1 once all of it is back), serving on the bus, and the clean stop
//! on SIGTERM or SIGINT.

use anyhow::Context;

use crate::bus::{self, Bus};
use crate::frontend::{FrontendKind, Frontends};
use crate::registry::state::StateStore;
use crate::registry::Registry;

/// Gives lcd a mount namespace of its own (mounts still propagate in, none
/// propagate out), so a file system mounted on one of its own block
/// devices is never in lcd's namespace and cannot hold it at exit. Must run
/// while the process has one thread.
fn private_mount_namespace() {
    // SAFETY: unshare and mount take no pointers but the static strings
    // below; both results are checked.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            tracing::warn!(
                "cannot get a mount namespace of lcd's own ({}); run lcd as root, \
                 or under systemd with PrivateMounts=yes",
                std::io::Error::last_os_error()
            );
            return;
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            tracing::warn!(
                "cannot make lcd's mounts private: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// How lcd runs: where it serves, keeps its state and exposes devices.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bus to serve on.
    pub bus: Bus,
    /// Where caches, devices and knobs are recorded.
    pub state_dir: std::path::PathBuf,
    /// How devices are exposed unless their attach names a frontend
    /// (`None`: ublk where the kernel offers it, else NBD).
    pub frontend: Option<FrontendKind>,
    /// Where the udev markers of lc's block devices go.
    pub run_dir: std::path::PathBuf,
    /// Queues of each new ublk device (0: one per CPU).
    pub queues: u16,
    /// NBD over TCP, where configured.
    pub nbd_tcp: Option<crate::frontend::nbd::NbdTcpConfig>,
    /// How long to wait at start for saved devices that do not exist yet.
    pub wait_for_devices: std::time::Duration,
}

/// Runs the daemon until SIGTERM or SIGINT, then removes its block devices
/// and stops every cache cleanly.
///
/// Start-up works without D-Bus, so that lcd can start early in boot
/// (before `local-fs-pre.target`, long before the system bus): saved caches
/// are resumed and saved devices re-created first, then systemd hears
/// READY=1, then lcd connects to the bus (waiting for it to appear),
/// publishes its objects and takes its name.
pub fn run(opts: Options) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if crate::frontend::ublk::unavailable_reason().is_none() {
        // before libublk touches /run/ublksrvd (the ublk frontend makes it
        // lcd's own)
        private_mount_namespace();
    }
    let frontends = Frontends::new(
        &opts.run_dir,
        opts.queues,
        opts.frontend,
        opts.nbd_tcp.as_ref(),
    )
    .map_err(anyhow::Error::msg)?;
    tracing::info!(
        default = %frontends.default_kind(),
        "devices get the {} frontend unless their attach names another",
        frontends.default_kind()
    );
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let store = StateStore::open(&opts.state_dir)?;
        let saved = store.load()?;
        let registry = Registry::new(store, frontends);
        let paths = saved
            .caches
            .iter()
            .map(|c| c.path.clone())
            .chain(saved.devices.iter().map(|d| d.backing.clone()))
            .collect();
        tokio::select! {
            () = wait_for_paths(paths, opts.wait_for_devices) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        registry.restore(saved).await;
        // systemd readiness: every saved cache and device is back
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!("cannot notify systemd of readiness: {e}");
        }
        let serving = tokio::select! {
            served = bus::serve(&registry, &opts.bus) => Some(served?),
            _ = term.recv() => None,
            _ = int.recv() => None,
        };
        if let Some(_conn) = serving {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        tracing::info!("stopping: removing block devices, flushing and stopping every cache");
        registry.stop().await;
        Ok(())
    })
}

/// Waits until every path exists or `timeout` has passed (disks still
/// appearing during boot); what is still missing then is brought back as
/// failed.
async fn wait_for_paths(paths: Vec<String>, timeout: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut waited = false;
    loop {
        let missing: Vec<&str> = paths
            .iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            if waited {
                tracing::info!("every saved cache and backing device is there");
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            if waited {
                tracing::warn!(
                    "still missing after {} s: {}; they are listed as failed",
                    timeout.as_secs(),
                    missing.join(", ")
                );
            }
            return;
        }
        if !waited {
            tracing::info!(
                "waiting up to {} s for {} (--wait-for-devices)",
                timeout.as_secs(),
                missing.join(", ")
            );
            waited = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
