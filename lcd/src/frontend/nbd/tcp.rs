//! NBD over TCP (`lcd --nbd-listen ADDRESS`): one listening socket for
//! every device lcd exports over NBD, the export name choosing the device
//! (`1` or `lc1`, as on the device's own Unix socket; no default export).
//! Off unless configured; bound to loopback unless an address is given;
//! and then either with TLS, clients presenting a certificate signed by
//! the configured authority (`--nbd-tls DIR`, see `tls`), or without any
//! protection, explicitly (`--nbd-insecure`).

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lc_nbd::{Handshake, TlsPolicy};

use super::tls::TlsStarter;
use super::{Closer, DeviceTable, ServedDevice};

/// The NBD port (IANA).
pub const NBD_PORT: u16 = 10809;

/// Longest a client may take over the option haggling before it has
/// chosen an export.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Connections that may be in their handshake at once; more are closed at
/// once (a client that connects and says nothing holds a thread until
/// [`HANDSHAKE_TIMEOUT`]).
const MAX_HANDSHAKES: usize = 32;

/// How NBD over TCP is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdTcpConfig {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// The TLS directory; `None`: no TLS (`--nbd-insecure`).
    pub tls_dir: Option<PathBuf>,
}

impl NbdTcpConfig {
    /// The configuration of lcd's `--nbd-listen`, `--nbd-tls` and
    /// `--nbd-insecure` (`None` when TCP is not asked for).
    pub fn from_flags(
        listen: Option<&str>,
        tls_dir: Option<PathBuf>,
        insecure: bool,
    ) -> Result<Option<NbdTcpConfig>, String> {
        let Some(listen) = listen else {
            if tls_dir.is_some() || insecure {
                return Err("--nbd-tls and --nbd-insecure apply to NBD over TCP: \
                            give --nbd-listen ADDRESS too"
                    .into());
            }
            return Ok(None);
        };
        let listen = parse_listen(listen)?;
        match (tls_dir, insecure) {
            (Some(_), true) => Err("give either --nbd-tls DIR or --nbd-insecure, not both".into()),
            (None, false) => Err(format!(
                "NBD over TCP ({listen}) needs --nbd-tls DIR (clients must then present a \
                 certificate signed by DIR/{}), or --nbd-insecure where every user and host \
                 that can reach {listen} may read and write every NBD device",
                super::tls::CA_CERT
            )),
            (tls_dir, _) => Ok(Some(NbdTcpConfig { listen, tls_dir })),
        }
    }

    /// The URI of the export named `export` for clients on this host.
    fn uri(&self, export: &str) -> String {
        let scheme = if self.tls_dir.is_some() {
            "nbds"
        } else {
            "nbd"
        };
        let host = match self.listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        format!("{scheme}://{host}:{}/{export}", self.listen.port())
    }
}

/// `--nbd-listen`'s value: `PORT` (on loopback, 127.0.0.1), `HOST:PORT`,
/// `[IPV6]:PORT`, or `HOST` alone (the NBD port, 10809).
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let bad = |why: String| {
        format!(
            "--nbd-listen {s:?}: {why}; give PORT (on loopback), HOST:PORT or [IPV6]:PORT, \
             e.g. 10809, 127.0.0.1:10809 or 0.0.0.0:10809 for every address"
        )
    };
    if s.is_empty() {
        return Err(bad("empty".into()));
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let with_port = if s.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{s}]:{NBD_PORT}")
    } else if s
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        s.to_string()
    } else if s.contains(':') {
        return Err(bad("not a port after the colon".into()));
    } else {
        format!("{s}:{NBD_PORT}")
    };
    let mut addrs = with_port
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

/// The TCP listener and its connections' way to the devices.
pub struct TcpExports {
    /// As configured, but with the address bound (the port chosen for
    /// port 0).
    config: NbdTcpConfig,
}

impl TcpExports {
    /// Binds `config.listen`, loads the TLS configuration and starts
    /// accepting connections for the devices in `devices`.
    pub fn start(config: &NbdTcpConfig, devices: Arc<DeviceTable>) -> Result<TcpExports, String> {
        let tls = match &config.tls_dir {
            Some(dir) => Some(Arc::new(TlsStarter::load(dir)?)),
            None => None,
        };
        let listener = TcpListener::bind(config.listen).map_err(|e| {
            format!(
                "--nbd-listen {}: cannot listen there: {e}; choose a free port and an \
                 address of this host",
                config.listen
            )
        })?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("--nbd-listen {}: {e}", config.listen))?;
        match &config.tls_dir {
            Some(dir) => tracing::info!(
                "NBD over TCP on {bound} with TLS: clients need a certificate signed by {}",
                dir.join(super::tls::CA_CERT).display()
            ),
            None => tracing::warn!(
                "NBD over TCP on {bound} WITHOUT TLS (--nbd-insecure): whoever can connect \
                 to {bound} can read and write every NBD device"
            ),
        }
        let handshakes = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("nbd-tcp-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(s) => admit(s, &devices, tls.clone(), &handshakes),
                        Err(e) => {
                            tracing::warn!("accepting an NBD connection on {bound}: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })
            .map_err(|e| format!("starting the NBD TCP thread: {e}"))?;
        let mut config = config.clone();
        config.listen = bound;
        Ok(TcpExports { config })
    }

    /// What the frontend's description adds: where and how TCP is served.
    pub fn describe(&self) -> String {
        let how = match &self.config.tls_dir {
            Some(dir) => format!(
                "TLS, client certificates signed by {}",
                dir.join(super::tls::CA_CERT).display()
            ),
            None => "no TLS: --nbd-insecure".into(),
        };
        format!(
            "and over TCP on {} ({how}) as {}",
            self.config.listen,
            self.config.uri("<id>")
        )
    }
}

/// Counts a connection in its handshake while alive.
struct HandshakeSlot(Arc<AtomicUsize>);

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one accepted connection on a thread of its own.
fn admit(
    stream: TcpStream,
    devices: &Arc<DeviceTable>,
    tls: Option<Arc<TlsStarter>>,
    handshakes: &Arc<AtomicUsize>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    if handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
        handshakes.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!("NBD connection from {peer} closed: {MAX_HANDSHAKES} handshakes already");
        return;
    }
    let slot = HandshakeSlot(handshakes.clone());
    let devices = devices.clone();
    let spawned = std::thread::Builder::new()
        .name("nbd-tcp-conn".into())
        .spawn(move || {
            if let Err(e) = serve(stream, &devices, tls.as_deref(), slot, &peer) {
                tracing::info!("NBD connection from {peer} ended: {e}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("starting an NBD connection thread: {e}");
    }
}

/// One TCP connection: the handshake (TLS first where required), then the
/// chosen device's requests, the connection counted among the device's so
/// that stopping the device ends it.
fn serve(
    tcp: TcpStream,
    devices: &DeviceTable,
    tls: Option<&TlsStarter>,
    slot: HandshakeSlot,
    peer: &str,
) -> std::io::Result<()> {
    let _ = tcp.set_nodelay(true);
    // a socket option: it holds for every descriptor of the socket
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let exports = devices.exports();
    let policy = match tls {
        Some(_) => TlsPolicy::Required,
        None => TlsPolicy::Off,
    };
    let (mut r, mut w) = (tcp.try_clone()?, tcp);
    match lc_nbd::handshake(&mut r, &mut w, &exports, policy)? {
        Handshake::Ended => Ok(()),
        Handshake::Export(n) => {
            w.set_read_timeout(None)?;
            let closers = vec![Closer::Tcp(w.try_clone()?)];
            run(n, exports.chosen(), closers, slot, r, w)
        }
        Handshake::StartTls(started) => {
            let Some(tls) = tls else {
                return Err(std::io::Error::other("STARTTLS where TLS is off"));
            };
            let tcp_closer = w.try_clone()?;
            drop(r);
            let plain = tls.start(w, peer.to_string())?;
            plain.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            let (mut r, mut w) = (plain.try_clone()?, plain);
            match lc_nbd::negotiate_in_tls(&mut r, &mut w, &exports, started)? {
                Handshake::Export(n) => {
                    w.set_read_timeout(None)?;
                    let closers = vec![Closer::Unix(w.try_clone()?), Closer::Tcp(tcp_closer)];
                    run(n, exports.chosen(), closers, slot, r, w)
                }
                Handshake::Ended | Handshake::StartTls(_) => Ok(()),
            }
        }
    }
}

/// Serves the requests of a connection that chose `device`, counted among
/// the device's connections (closed by `closers`) while it lasts.
fn run<R: std::io::Read + Send, W: std::io::Write + Send>(
    n: lc_nbd::Negotiated,
    device: Option<Arc<ServedDevice>>,
    closers: Vec<Closer>,
    slot: HandshakeSlot,
    r: R,
    w: W,
) -> std::io::Result<()> {
    drop(slot);
    let Some(device) = device else {
        return Err(std::io::Error::other("the export chosen is gone"));
    };
    let Some(_serving) = device.admit(closers)? else {
        return Ok(()); // the device stopped meanwhile
    };
    lc_nbd::transmit(r, w, &n).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback_and_the_nbd_port() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("10809"), "127.0.0.1:10809", "a port alone is loopback");
        assert_eq!(ok("0"), "127.0.0.1:0");
        assert_eq!(ok("0.0.0.0:7000"), "0.0.0.0:7000");
        assert_eq!(ok("[::1]:7000"), "[::1]:7000");
        assert_eq!(ok("::1"), "[::1]:10809");
        assert_eq!(ok("127.0.0.1"), "127.0.0.1:10809");
        assert_eq!(ok("localhost:7000").rsplit_once(':').unwrap().1, "7000");
        for bad in ["", "1.2.3.4:x", "65536x", "[::1]:99999"] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("give PORT"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn tcp_needs_tls_or_an_explicit_insecure_and_nothing_else_asks_for_it() {
        let tls = Some(PathBuf::from("/etc/lc/tls"));
        assert_eq!(NbdTcpConfig::from_flags(None, None, false), Ok(None));
        let c = NbdTcpConfig::from_flags(Some("10809"), tls.clone(), false)
            .unwrap()
            .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:10809");
        assert_eq!(c.uri("3"), "nbds://127.0.0.1:10809/3");
        let c = NbdTcpConfig::from_flags(Some("0.0.0.0:1"), None, true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.uri("1"), c.tls_dir),
            ("nbd://127.0.0.1:1/1".into(), None)
        );
        let e = NbdTcpConfig::from_flags(Some("10809"), None, false).unwrap_err();
        assert!(
            e.contains("--nbd-tls DIR") && e.contains("--nbd-insecure"),
            "{e}"
        );
        let e = NbdTcpConfig::from_flags(Some("10809"), tls.clone(), true).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        for (tls, insecure) in [(tls, false), (None, true)] {
            let e = NbdTcpConfig::from_flags(None, tls, insecure).unwrap_err();
            assert!(e.contains("--nbd-listen"), "{e}");
        }
    }
}
