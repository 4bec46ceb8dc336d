//! The NBD frontend (`--frontend nbd`): each device is an NBD export on a
//! Unix socket of its own, `<run-dir>/nbd/<id>.sock`, in a directory only
//! lcd's user (root) may enter, for any NBD client: `nbd-client` (the
//! kernel's nbd driver), qemu (`nbd+unix:///?socket=…`), `nbdfuse`,
//! `nbdcopy`, `nbdinfo`, fio's nbd engine. The protocol is lc-nbd's; this
//! module binds the sockets, accepts connections (a thread each) and maps
//! NBD commands onto the device's engine calls. The export name may be
//! empty, the device id (`1`) or `lc<id>`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use lc_engine::format::SECTOR_SIZE;
use lc_engine::Cache;
use lc_nbd::{Errno, Export, Exports};

use super::{BlockFrontend, Exposed, NotExposed};

/// Serves each device as an NBD export on a Unix socket.
pub struct NbdFrontend {
    run_dir: PathBuf,
    dir: PathBuf,
}

impl NbdFrontend {
    /// Sockets go to `<run_dir>/nbd`.
    pub fn new(run_dir: &Path) -> NbdFrontend {
        NbdFrontend {
            run_dir: run_dir.to_path_buf(),
            dir: run_dir.join(crate::rundir::names::NBD_DIR),
        }
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
        format!(
            "nbd: each device is an NBD export on a Unix socket in {}",
            self.dir.display()
        )
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
        NbdServer::start(cache.clone(), id, size_bytes, socket_path(dir, id))
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

/// The one export of a device's socket, under the names a client may use.
struct DeviceExports(Arc<DeviceExport>);

impl Exports for DeviceExports {
    fn find(&self, name: &str) -> Option<Arc<dyn Export>> {
        let id = self.0.id.to_string();
        let ok = name.is_empty() || name == id || name.strip_prefix("lc") == Some(id.as_str());
        ok.then(|| self.0.clone() as Arc<dyn Export>)
    }

    fn names(&self) -> Vec<String> {
        vec![self.0.id.to_string()]
    }
}

/// The connections of a device's socket: each stream (to end it at stop)
/// and the thread serving it.
type Connections = Mutex<Vec<(UnixStream, JoinHandle<()>)>>;

/// A device's listening socket and its connections.
struct NbdServer {
    node: String,
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    connections: Arc<Connections>,
}

impl NbdServer {
    fn start(cache: Arc<Cache>, id: u8, size_bytes: u64, path: PathBuf) -> Result<Self, String> {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing the old socket {}: {e}", path.display())),
        }
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("binding the NBD socket {}: {e}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("changing the mode of {}: {e}", path.display()))?;
        let exports = Arc::new(DeviceExports(Arc::new(DeviceExport {
            cache,
            id,
            size_bytes,
        })));
        let stopping = Arc::new(AtomicBool::new(false));
        let connections: Arc<Connections> = Default::default();
        let acceptor = {
            let (stopping, connections) = (stopping.clone(), connections.clone());
            std::thread::Builder::new()
                .name(format!("nbd{id}-accept"))
                .spawn(move || accept(listener, id, exports, &stopping, &connections))
                .map_err(|e| format!("starting the NBD thread of device {id}: {e}"))?
        };
        tracing::info!(device = id, "NBD export on {}", path.display());
        Ok(NbdServer {
            node: uri(&path),
            path,
            stopping,
            acceptor: Some(acceptor),
            connections,
        })
    }
}

/// Accepts connections until `stopping`, each served on a thread of its own.
fn accept(
    listener: UnixListener,
    id: u8,
    exports: Arc<DeviceExports>,
    stopping: &AtomicBool,
    connections: &Connections,
) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(device = id, "accepting an NBD connection: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let (reader, writer, handle) = match (stream.try_clone(), stream.try_clone()) {
            (Ok(r), Ok(w)) => (r, w, stream),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(device = id, "serving an NBD connection: {e}");
                continue;
            }
        };
        let exports = exports.clone();
        let served = std::thread::Builder::new()
            .name(format!("nbd{id}-conn"))
            .spawn(move || {
                let closer = writer.try_clone();
                if let Err(e) = lc_nbd::serve(reader, writer, &*exports) {
                    tracing::info!(
                        device = id,
                        "NBD connection ended: {}",
                        lc_engine::error::describe(&e)
                    );
                }
                // the acceptor holds the socket too (to end it at stop):
                // close the connection now, as the client waits for that
                if let Ok(s) = closer {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            });
        match served {
            Ok(t) => {
                let mut c = connections.lock().unwrap_or_else(|e| e.into_inner());
                c.retain(|(_, t)| !t.is_finished());
                c.push((handle, t));
            }
            Err(e) => tracing::warn!(device = id, "starting an NBD connection thread: {e}"),
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
        // end every connection: requests being served finish first
        let conns =
            std::mem::take(&mut *self.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for (stream, _) in &conns {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
    }
}
