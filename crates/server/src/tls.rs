//! `wss://`: TLS termination with rustls, from PEM certificate and key files.
//!
//! [`TlsAcceptor::from_files`] loads the chain and key once at startup (a clear error names
//! the file that is wrong); [`TlsListener`] runs handshakes off the accept loop, each bounded
//! in time, and hands finished streams to axum. A client that never finishes its handshake
//! costs one task for [`HANDSHAKE_TIMEOUT`]; at most [`MAX_PENDING_HANDSHAKES`] run at once,
//! beyond which new TCP connections wait in the kernel's backlog.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The `[tls]` section of the configuration (or `--tls-cert` / `--tls-key`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("TLS {what} file {path}: {reason}")]
    File {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: String,
        /// Why (never the key material).
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A loaded TLS server configuration.
#[derive(Clone)]
pub struct TlsAcceptor(tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptor")
    }
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl TlsAcceptor {
    /// Load a certificate chain and key from PEM files.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
            .map_err(|e| file_error("certificate", cert_file, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_error("certificate", cert_file, e))?;
        if certs.is_empty() {
            return Err(file_error(
                "certificate",
                cert_file,
                "no CERTIFICATE block found",
            ));
        }
        // The error of a key parse never includes the key bytes.
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            file_error(
                "key",
                key_file,
                match e {
                    rustls::pki_types::pem::Error::NoItemsFound => {
                        "no PRIVATE KEY block found".to_owned()
                    }
                    rustls::pki_types::pem::Error::Io(io) => io.to_string(),
                    _ => "not a valid PEM private key".to_owned(),
                },
            )
        })?;
        Self::from_der(certs, key)
    }

    /// Build from DER certificates and key.
    pub fn from_der(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        // WebSocket upgrades are HTTP/1.1 requests.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor(tokio_rustls::TlsAcceptor::from(Arc::new(
            config,
        ))))
    }

    /// Load from a [`TlsConfig`].
    pub fn from_config(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
        Self::from_files(&config.cert_file, &config.key_file)
    }
}

/// A TCP listener that yields TLS streams (an [`axum::serve::Listener`]).
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accept on `listener`, handshaking with `acceptor`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener {
            local,
            ready,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning (as axum's listener does).
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.0.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, addr)).await;
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(pair) => pair,
            // The accept loop never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = std::env::temp_dir().join(format!("parlor-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nope.pem");
        let e = TlsAcceptor::from_files(&missing, &missing).unwrap_err();
        assert!(e.to_string().contains("certificate file"), "{e}");
        assert!(e.to_string().contains("nope.pem"), "{e}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem\n").unwrap();
        let e = TlsAcceptor::from_files(&empty, &empty).unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
