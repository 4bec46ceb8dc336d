//! TLS for NBD over TCP (`lcd --nbd-tls DIR`): the server's certificate
//! and key, and the certificate authority every client's certificate must
//! be signed by, loaded from DIR at start (qemu-nbd's layout:
//! `ca-cert.pem`, `server-cert.pem`, `server-key.pem`); and the TLS of one
//! connection after its `NBD_OPT_STARTTLS`, run by rustls on a small async
//! runtime of its own, its plaintext handed to lc-nbd over a socket pair.
//!
//! A client without a certificate signed by `ca-cert.pem` is refused in
//! the TLS handshake: on a port any local user can reach, encryption alone
//! would let anyone read and write the devices.

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate authority clients' certificates must be signed by.
pub const CA_CERT: &str = "ca-cert.pem";
/// The server's certificate (chain), as clients verify it.
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server certificate's private key.
pub const SERVER_KEY: &str = "server-key.pem";

/// Longest a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts TLS on NBD connections: the configuration loaded from a
/// directory, and the runtime the TLS of every connection runs on.
pub struct TlsStarter {
    acceptor: tokio_rustls::TlsAcceptor,
    runtime: tokio::runtime::Handle,
}

/// What is wrong with a TLS directory, as lcd says it at start.
fn unusable(dir: &Path, what: String) -> String {
    format!(
        "--nbd-tls {}: {what}; the directory holds {CA_CERT} (the authority \
         that signs clients' certificates), {SERVER_CERT} and {SERVER_KEY} \
         (PEM), as qemu-nbd's tls-creds-x509 directory does",
        dir.display()
    )
}

fn certificates(dir: &Path, name: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let path: PathBuf = dir.join(name);
    let certs = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unusable(dir, format!("reading {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(unusable(
            dir,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

impl TlsStarter {
    /// Loads the certificates and key from `dir` and starts the TLS
    /// runtime (one thread).
    pub fn load(dir: &Path) -> Result<TlsStarter, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in certificates(dir, CA_CERT)? {
            roots
                .add(ca)
                .map_err(|e| unusable(dir, format!("{CA_CERT}: {e}")))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| unusable(dir, format!("{CA_CERT}: {e}")))?;
        let chain = certificates(dir, SERVER_CERT)?;
        let key_path = dir.join(SERVER_KEY);
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| unusable(dir, format!("reading {}: {e}", key_path.display())))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable(dir, e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| unusable(dir, format!("{SERVER_CERT} and {SERVER_KEY}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| format!("starting the NBD TLS runtime: {e}"))?;
        let handle = runtime.handle().clone();
        // the runtime lives as long as lcd: its thread only drives it
        std::thread::Builder::new()
            .name("nbd-tls".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .map_err(|e| format!("starting the NBD TLS thread: {e}"))?;
        Ok(TlsStarter {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            runtime: handle,
        })
    }

    /// Runs TLS as the server on `tcp` (the client has just been told yes
    /// to its STARTTLS): returns the stream its plaintext comes and goes
    /// on. A failed TLS handshake (no certificate, one not signed by the
    /// authority, a timeout) closes that stream; `peer` names the client
    /// in the log.
    pub fn start(&self, tcp: TcpStream, peer: String) -> io::Result<UnixStream> {
        let (plain, pump) = UnixStream::pair()?;
        tcp.set_nonblocking(true)?;
        pump.set_nonblocking(true)?;
        let acceptor = self.acceptor.clone();
        self.runtime.spawn(async move {
            let accepted = async {
                let tcp = tokio::net::TcpStream::from_std(tcp)?;
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
            };
            let mut tls = match accepted.await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::info!("NBD TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            let copied = async {
                let mut pump = tokio::net::UnixStream::from_std(pump)?;
                tokio::io::copy_bidirectional(&mut tls, &mut pump).await
            };
            if let Err(e) = copied.await {
                // the usual end of a connection one side closes
                tracing::debug!("NBD TLS connection with {peer} ended: {e}");
            }
        });
        Ok(plain)
    }
}
