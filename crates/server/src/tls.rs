//! `wss://`: TLS termination with rustls, from PEM certificate and key files.
//!
//! [`TlsAcceptor::from_files`] loads the chain and key once at startup (a clear error names
//! the file that is wrong). Handshakes run in each connection's own task, bounded in time by
//! `limits.tls_handshake_timeout_ms` and counted under the pending-connection caps (see the
//! accept loop in `http`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

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

    /// Run the server side of a handshake on `tcp`.
    pub(crate) async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.0.accept(tcp).await
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
