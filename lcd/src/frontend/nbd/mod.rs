//! The NBD frontend (`--frontend nbd`): each device is an NBD export on a
//! Unix socket of its own, `<run-dir>/nbd/<id>.sock`, in a directory only
//! lcd's user (root) may enter, for any NBD client: `nbd-client` (the
//! kernel's nbd driver), qemu (`nbd+unix:///?socket=…`), `nbdfuse`,
//! `nbdcopy`, `nbdinfo`, fio's nbd engine. The protocol is lc-nbd's; this
//! module binds the sockets, accepts connections (a thread each) and maps
//! NBD commands onto the device's engine calls. The export name may be
//! empty, the device id (`1`) or `lc<id>`.
//!
//! Where configured (`--nbd-listen`), every NBD device is also served over
//! TCP, with TLS or explicitly without (`tcp`, `tls`). Each device keeps
//! the connections serving it, over its socket and over TCP, and ends
//! them all when it stops.

mod tcp;
mod tls;

pub use tcp::NbdTcpConfig;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use lc_engine::format::SECTOR_SIZE;
use lc_engine::Cache;
use lc_nbd::{Errno, Export, Exports};

use super::{BlockFrontend, Exposed, NotExposed};

/// Serves each device as an NBD export on a Unix socket, and over TCP
/// where configured.
pub struct NbdFrontend {
    run_dir: PathBuf,
    dir: PathBuf,
    devices: Arc<DeviceTable>,
    tcp: Option<tcp::TcpExports>,
}

impl NbdFrontend {
    /// Sockets go to `<run_dir>/nbd`; with `tcp`, its listener is bound
    /// (and its TLS files loaded) now.
    pub fn new(run_dir: &Path, tcp: Option<&NbdTcpConfig>) -> Result<NbdFrontend, String> {
        let devices = Arc::new(DeviceTable::default());
        let tcp = match tcp {
            Some(config) => Some(tcp::TcpExports::start(config, devices.clone())?),
            None => None,
        };
        Ok(NbdFrontend {
            run_dir: run_dir.to_path_buf(),
            dir: run_dir.join(crate::rundir::names::NBD_DIR),
            devices,
            tcp,
        })
    }

    /// The socket directory, made lcd's user's alone (mode 0700), in the
    /// run directory (made lcd's, see `rundir`).
    fn socket_dir(&self) -> Result<&Path, String> {
        crate::rundir::Dir::open(&self.run_dir, crate::rundir::Owner::current())
            .map_err(|e| lc_engine::error::describe(&e))?;
        let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", self.dir.display());
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail("creating", e)),
        }
        let m = std::fs::symlink_metadata(&self.dir).map_err(|e| fail("looking at", e))?;
        if !m.is_dir() {
            return Err(format!(
                "{} is not a directory; remove it and attach the device again",
                self.dir.display()
            ));
        }
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail("changing the mode of", e))?;
        Ok(&self.dir)
    }
}

/// The socket of device `id` in `dir`.
fn socket_path(dir: &Path, id: u8) -> PathBuf {
    dir.join(format!("{id}.sock"))
}

/// The URI NBD clients open for the socket at `path`.
pub fn uri(path: &Path) -> String {
    format!("nbd+unix:///?socket={}", path.display())
}

impl BlockFrontend for NbdFrontend {
    fn describe(&self) -> String {
        let unix = format!(
            "nbd: each device is an NBD export on a Unix socket in {}",
            self.dir.display()
        );
        match &self.tcp {
            Some(tcp) => format!("{unix}, {}", tcp.describe()),
            None => unix,
        }
    }

    fn refuses_new_devices(&self) -> Option<String> {
        None
    }

    fn check_id_free(&self, _id: u8) -> Result<(), String> {
        Ok(()) // the sockets are lcd's alone
    }

    fn before_restore(&self, _saved: &[u8]) {
        // sockets an earlier lcd left are replaced when their device comes back
    }

    fn expose(
        &self,
        cache: &Arc<Cache>,
        id: u8,
        size_bytes: u64,
    ) -> Result<Box<dyn Exposed>, NotExposed> {
        let dir = self.socket_dir().map_err(NotExposed::Failed)?;
        let export = Arc::new(DeviceExport {
            cache: cache.clone(),
            id,
            size_bytes,
        });
        NbdServer::start(export, socket_path(dir, id), self.devices.clone())
            .map(|s| Box::new(s) as Box<dyn Exposed>)
            .map_err(NotExposed::Failed)
    }
}

/// Device `id` of its cache as an NBD export.
struct DeviceExport {
    cache: Arc<Cache>,
    id: u8,
    size_bytes: u64,
}

/// The NBD errno of an engine error.
fn errno(e: &lc_engine::Error) -> Errno {
    Errno::from_os(e.errno())
}

impl Export for DeviceExport {
    fn size(&self) -> u64 {
        self.size_bytes - self.size_bytes % SECTOR_SIZE as u64
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        // lc-nbd gives `buf` at a 4 KiB boundary, so misses read straight
        // into it with O_DIRECT (no bounce buffer); the engine's read plan
        // measured slower here (BENCHMARKS.md, NBD exports)
        self.cache
            .read(self.id, offset / SECTOR_SIZE as u64, buf)
            .map_err(|e| errno(&e))
    }

    fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), Errno> {
        let sector = offset / SECTOR_SIZE as u64;
        if !fua {
            return self
                .cache
                .write(self.id, sector, data)
                .map_err(|e| errno(&e));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        self.cache
            .write_fua(
                self.id,
                sector,
                data,
                Box::new(move |res| {
                    let _ = tx.send(res);
                }),
            )
            .map_err(|e| errno(&e))?;
        match rx.recv() {
            Ok(res) => res.map_err(|e| errno(&e)),
            Err(_) => Err(Errno::Io), // the cache stopped without an answer
        }
    }

    fn flush(&self) -> Result<(), Errno> {
        self.cache.flush_sync().map_err(|e| errno(&e))
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let s = SECTOR_SIZE as u64;
        self.cache
            .discard(self.id, offset / s, len / s)
            .map_err(|e| errno(&e))
    }

    fn flush_covers_all_connections(&self) -> bool {
        true // a FLUSH covers every write the cache completed
    }
}

/// The device id an export name names: `1` or `lc1`.
fn device_id_of(name: &str) -> Option<u8> {
    let digits = name.strip_prefix("lc").unwrap_or(name);
    let id: u8 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// The one export of a device's socket, under the names a client may use.
struct DeviceExports(Arc<DeviceExport>);

impl Exports for DeviceExports {
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        let ok = name.is_empty() || device_id_of(name) == Some(self.0.id);
        ok.then(|| self.0.clone() as Arc<dyn Export>)
    }

    fn names(&self) -> Vec<String> {
        vec![self.0.id.to_string()]
    }
}

/// How a connection is ended from outside: a descriptor of its stream(s).
pub(super) enum Closer {
    /// A Unix stream (a device's socket, or the plaintext side of TLS).
    Unix(UnixStream),
    /// A TCP stream.
    Tcp(TcpStream),
}

impl Closer {
    fn try_clone(&self) -> std::io::Result<Closer> {
        Ok(match self {
            Closer::Unix(s) => Closer::Unix(s.try_clone()?),
            Closer::Tcp(s) => Closer::Tcp(s.try_clone()?),
        })
    }

    fn close(&self) {
        let _ = match self {
            Closer::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Closer::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

/// A connection a device serves: how to end it, and word of its end (the
/// sender is dropped when its thread is done with the device).
struct Connection {
    closers: Vec<Closer>,
    finished: mpsc::Receiver<()>,
}

impl Connection {
    fn is_finished(&self) -> bool {
        matches!(
            self.finished.try_recv(),
            Err(mpsc::TryRecvError::Disconnected)
        )
    }
}

/// Held while a connection serves its device: at its end the connection's
/// streams are closed (the client waits for that) and the device hears it
/// is done.
pub(super) struct Serving {
    closers: Vec<Closer>,
    _finished: mpsc::Sender<()>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.closers.iter().for_each(Closer::close);
    }
}

/// A device's export and the connections serving it, over its socket and
/// over TCP; `None` once the device stopped.
pub(super) struct ServedDevice {
    export: Arc<DeviceExport>,
    connections: Mutex<Option<Vec<Connection>>>,
}

impl ServedDevice {
    /// Counts a connection (ended by `closers`) among the device's; `None`
    /// if the device stopped (the connection is closed then).
    fn admit(&self, closers: Vec<Closer>) -> std::io::Result<Option<Serving>> {
        let own = closers
            .iter()
            .map(Closer::try_clone)
            .collect::<std::io::Result<Vec<_>>>()?;
        let (tx, rx) = mpsc::channel();
        let mut c = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let Some(list) = c.as_mut() else {
            own.iter().for_each(Closer::close);
            return Ok(None);
        };
        list.retain(|c| !c.is_finished());
        list.push(Connection {
            closers,
            finished: rx,
        });
        Ok(Some(Serving {
            closers: own,
            _finished: tx,
        }))
    }

    /// Ends every connection and waits until each is done with the device
    /// (requests being served finish first); admits none after.
    fn stop(&self) {
        let conns = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        for c in &conns {
            c.closers.iter().for_each(Closer::close);
        }
        for c in conns {
            let _ = c.finished.recv();
        }
    }
}

/// The devices served, by id: how TCP connections find theirs.
#[derive(Default)]
pub(super) struct DeviceTable {
    devices: Mutex<BTreeMap<u8, Arc<ServedDevice>>>,
}

impl DeviceTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u8, Arc<ServedDevice>>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exports of a TCP connection's handshake.
    pub(super) fn exports(&self) -> TableExports<'_> {
        TableExports {
            table: self,
            chosen: Mutex::new(None),
        }
    }
}

/// Every served device as an export named by its id (`1` or `lc1`; no
/// default export), remembering the device found last.
pub(super) struct TableExports<'a> {
    table: &'a DeviceTable,
    chosen: Mutex<Option<Arc<ServedDevice>>>,
}

impl TableExports<'_> {
    /// The device of the export the handshake ended with (the one found
    /// last: `NBD_OPT_GO` and `NBD_OPT_EXPORT_NAME` end it at once).
    pub(super) fn chosen(&self) -> Option<Arc<ServedDevice>> {
        self.chosen.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Exports for TableExports<'_> {
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        let device = self.table.lock().get(&device_id_of(name)?).cloned()?;
        let export = device.export.clone() as Arc<dyn Export>;
        *self.chosen.lock().unwrap_or_else(|e| e.into_inner()) = Some(device);
        Some(export)
    }

    fn names(&self) -> Vec<String> {
        self.table.lock().keys().map(u8::to_string).collect()
    }
}

/// A device's listening socket, its entry in the device table and its
/// connections.
struct NbdServer {
    node: String,
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    device: Arc<ServedDevice>,
    table: Arc<DeviceTable>,
}

impl NbdServer {
    fn start(
        export: Arc<DeviceExport>,
        path: PathBuf,
        table: Arc<DeviceTable>,
    ) -> Result<Self, String> {
        let id = export.id;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing the old socket {}: {e}", path.display())),
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("binding the NBD socket {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("changing the mode of {}: {e}", path.display()))?;
        let device = Arc::new(ServedDevice {
            export: export.clone(),
            connections: Mutex::new(Some(Vec::new())),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (stopping, device) = (stopping.clone(), device.clone());
            let exports = Arc::new(DeviceExports(export));
            std::thread::Builder::new()
                .name(format!("nbd{id}-accept"))
                .spawn(move || accept(listener, id, exports, &stopping, &device))
                .map_err(|e| format!("starting the NBD thread of device {id}: {e}"))?
        };
        table.lock().insert(id, device.clone());
        tracing::info!(device = id, "NBD export on {}", path.display());
        Ok(NbdServer {
            node: uri(&path),
            path,
            stopping,
            acceptor: Some(acceptor),
            device,
            table,
        })
    }
}

/// Accepts connections until `stopping`, each served on a thread of its own.
fn accept(
    listener: UnixListener,
    id: u8,
    exports: Arc<DeviceExports>,
    stopping: &AtomicBool,
    device: &ServedDevice,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let serving = stream.and_then(|s| {
            let serving = device.admit(vec![Closer::Unix(s.try_clone()?)])?;
            Ok((s.try_clone()?, s, serving))
        });
        let (reader, writer, serving) = match serving {
            Ok((r, w, Some(serving))) => (r, w, serving),
            Ok((_, _, None)) => return, // the device stopped
            Err(e) => {
                tracing::warn!(device = id, "accepting an NBD connection: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let exports = exports.clone();
        let served = std::thread::Builder::new()
            .name(format!("nbd{id}-conn"))
            .spawn(move || {
                let _serving = serving;
                if let Err(e) = lc_nbd::serve(reader, writer, &*exports) {
                    tracing::info!(
                        device = id,
                        "NBD connection ended: {}",
                        lc_engine::error::describe(&e)
                    );
                }
            });
        if let Err(e) = served {
            tracing::warn!(device = id, "starting an NBD connection thread: {e}");
        }
    }
}

impl Exposed for NbdServer {
    fn node(&self) -> &str {
        &self.node
    }

    fn stop(mut self: Box<Self>) {
        self.stopping.store(true, Ordering::SeqCst);
        // wake the acceptor with a connection of its own
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        {
            let mut table = self.table.lock();
            if table
                .get(&self.device.export.id)
                .is_some_and(|d| Arc::ptr_eq(d, &self.device))
            {
                table.remove(&self.device.export.id);
            }
        }
        // end every connection, over the socket and over TCP: requests
        // being served finish first
        self.device.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::device_id_of;

    #[test]
    fn export_names_are_the_device_id_with_or_without_lc() {
        assert_eq!(device_id_of("1"), Some(1));
        assert_eq!(device_id_of("lc200"), Some(200));
        for bad in ["", "lc", "01", "+1", "256", "lc-1", "1 ", "x1", "lclc1"] {
            assert_eq!(device_id_of(bad), None, "{bad:?}");
        }
    }
}
