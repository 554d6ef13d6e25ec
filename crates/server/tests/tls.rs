//! `wss://`: the server terminates TLS with a certificate signed by a test CA; clients that
//! trust the CA get `welcome`, others fail the handshake, and neither a plain-text client nor
//! a client that never says hello stops anyone else from connecting.
#![allow(clippy::unwrap_used)] // test helpers, not only #[test] fns

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use parlor_server::config::Config;
use parlor_server::tls::TlsConfig;

const KEY: &str = "pk_test_tls";

/// A CA, and a leaf for `localhost` / 127.0.0.1 signed by it, written as PEM files.
struct Pki {
    dir: PathBuf,
    ca_der: CertificateDer<'static>,
    tls: TlsConfig,
}

fn pki(name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("parlor-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Parlor test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    // The chain, leaf first.
    std::fs::write(&cert_file, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    Pki {
        dir,
        ca_der: ca_cert.der().clone(),
        tls: TlsConfig {
            cert_file,
            key_file,
        },
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_server(tls: &TlsConfig) -> parlor_server::ServerHandle {
    tls_server_with(tls, Config::default()).await
}

async fn tls_server_with(tls: &TlsConfig, mut config: Config) -> parlor_server::ServerHandle {
    config.add_dev_key(KEY);
    config.tls = Some(tls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    parlor_server::spawn(listener, config).expect("spawn with TLS")
}

fn client_config(roots: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth(),
    )
}

/// TLS, then the WebSocket upgrade; returns the first frame's JSON.
async fn wss_welcome(
    server: &parlor_server::ServerHandle,
    config: Arc<rustls::ClientConfig>,
    host: &'static str,
) -> Result<Value, String> {
    let tcp = TcpStream::connect(server.local_addr())
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("tls: {e}"))?;
    let url = format!("wss://{host}:{}/v1?key={KEY}", server.local_addr().port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    // The server pings a fresh connection at once, possibly before the welcome.
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| "no frame".to_owned())?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(&t).map_err(|e| e.to_string());
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

#[tokio::test]
async fn wss_with_a_private_ca() {
    let pki = pki("ca");
    let server = tls_server(&pki.tls).await;
    assert!(
        server.url().starts_with("wss://127.0.0.1:"),
        "{}",
        server.url()
    );

    // A client that trusts the CA: welcome, by name and by IP.
    let trusted = client_config(std::slice::from_ref(&pki.ca_der));
    for host in ["localhost", "127.0.0.1"] {
        let welcome = wss_welcome(&server, trusted.clone(), host).await.unwrap();
        assert_eq!(welcome["type"], "welcome", "{welcome}");
    }

    // A client that does not: the handshake fails on the certificate.
    let e = wss_welcome(&server, client_config(&[]), "localhost")
        .await
        .unwrap_err();
    assert!(e.contains("tls:") && e.contains("certificate"), "{e}");

    // A name the certificate does not cover.
    let e = wss_welcome(&server, trusted.clone(), "example.org")
        .await
        .unwrap_err();
    assert!(e.contains("tls:"), "{e}");

    // Plain ws:// to the TLS port fails, a client that opens TCP and never says hello
    // holds nothing up, and the next TLS client is served.
    let plain = format!("ws://{}/v1?key={KEY}", server.local_addr());
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(plain),
    )
    .await
    .expect("plain client is refused promptly, not left hanging");
    assert!(r.is_err());
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut garbage = TcpStream::connect(server.local_addr()).await.unwrap();
    garbage
        .write_all(b"\x16\x03\x01\xff\xffnot tls")
        .await
        .unwrap();
    let welcome = wss_welcome(&server, trusted, "localhost").await.unwrap();
    assert_eq!(welcome["type"], "welcome");
    let _ = silent.flush().await;

    server.shutdown().await.unwrap();
}

/// Issue #23: a client that opens TCP and never finishes its TLS handshake is closed when
/// `limits.tls_handshake_timeout_ms` is up, and holds a pending slot only until then.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed() {
    use tokio::io::AsyncReadExt;
    let pki = pki("stall");
    let config =
        Config::from_toml("[limits]\ntls_handshake_timeout_ms = 400\nmax_pending_per_address = 2")
            .unwrap();
    let server = tls_server_with(&pki.tls, config).await;
    let trusted = client_config(std::slice::from_ref(&pki.ca_der));
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
        // Half a ClientHello record header, then nothing.
        s.write_all(b"\x16\x03\x01").await.unwrap();
        stalled.push(s);
    }
    for s in &mut stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("closed within the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    // Their slots are free again: a client from the same address gets in.
    let welcome = wss_welcome(&server, trusted, "localhost").await.unwrap();
    assert_eq!(welcome["type"], "welcome");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_tls_files_are_clear_startup_errors() {
    let pki = pki("bad");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = Config::default();
    config.add_dev_key(KEY);

    // The key file holds a certificate, not a key.
    config.tls = Some(TlsConfig {
        cert_file: pki.tls.cert_file.clone(),
        key_file: pki.tls.cert_file.clone(),
    });
    let e = parlor_server::spawn(listener, config.clone()).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("key file") && text.contains("server.pem"),
        "{text}"
    );

    // A key that does not match the certificate.
    let other = rcgen::KeyPair::generate().unwrap();
    let wrong = pki.dir.join("wrong.key");
    std::fs::write(&wrong, other.serialize_pem()).unwrap();
    config.tls = Some(TlsConfig {
        cert_file: pki.tls.cert_file.clone(),
        key_file: wrong,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = parlor_server::spawn(listener, config).unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    // No key material in the message.
    assert!(!e.to_string().contains("BEGIN"), "{e}");
}

#[test]
fn tls_section_paths_are_relative_to_the_config_file() {
    let dir = std::env::temp_dir().join(format!("parlor-tls-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("parlor.toml");
    std::fs::write(
        &file,
        "[tls]\ncert_file = \"certs/server.pem\"\nkey_file = \"/abs/server.key\"\n",
    )
    .unwrap();
    let config = Config::from_file(&file).unwrap();
    let tls = config.tls.unwrap();
    assert_eq!(tls.cert_file, dir.join("certs/server.pem"));
    assert_eq!(tls.key_file, PathBuf::from("/abs/server.key"));
    let _ = std::fs::remove_dir_all(&dir);
}
