//! Helpers shared by the room-peer integration tests: a real server, room peers with a fast
//! reconnect ladder, and a bounded wait for an event.
#![allow(dead_code)]

use std::time::Duration;

use tokio::net::TcpListener;

use parlor_peer::room::{RoomEvent, RoomEvents, RoomPeer};
use parlor_peer::signalling::{ReconnectOptions, SignallingClient};
use parlor_peer::{EncodedFrame, LocalTrack, RemoteTrack};
use parlor_server::config::Config;

pub(crate) const WAIT: Duration = Duration::from_secs(20);

pub(crate) async fn server_on(addr: &str) -> parlor_server::ServerHandle {
    let mut config = Config::default();
    config.add_dev_key("pk_test_x");
    let listener = TcpListener::bind(addr).await.expect("bind");
    parlor_server::spawn(listener, config).expect("spawn")
}

pub(crate) fn peer(url: &str) -> RoomPeer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RoomPeer::new(
        SignallingClient::builder()
            .url(url)
            .api_key("pk_test_x")
            .reconnect(Some(ReconnectOptions {
                initial_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(300),
                ..ReconnectOptions::default()
            }))
            .build()
            .expect("client"),
    )
}

/// A 20 ms CELT packet (config 31, one frame): enough for the transport, no codec needed.
pub(crate) const OPUS_FRAME: [u8; 3] = [31 << 3, 0xff, 0xfe];

/// The next track `peer` sends.
pub(crate) async fn track_from(ev: &mut RoomEvents, peer: &str) -> RemoteTrack {
    wait_for(ev, |e| match e {
        RoomEvent::Track { peer_id, track } if peer_id == peer => Some(track.clone()),
        _ => None,
    })
    .await
}

/// Push a 20 ms frame every 20 ms until dropped.
pub(crate) fn pace(track: LocalTrack) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            track.push(EncodedFrame::opus(OPUS_FRAME.to_vec()).expect("opus"));
        }
    })
}

pub(crate) async fn frames(track: &RemoteTrack, n: usize) {
    tokio::time::timeout(WAIT, async {
        for _ in 0..n {
            let f = track.recv().await.expect("track ended early");
            assert_eq!(&f.data[..], &OPUS_FRAME[..]);
            assert_eq!(f.samples, 960);
        }
    })
    .await
    .expect("frames did not arrive");
}

pub(crate) async fn wait_for<T>(
    ev: &mut RoomEvents,
    mut f: impl FnMut(&RoomEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = ev.recv().await.expect("open");
            if std::env::var("DEBUG_EVENTS").is_ok() {
                eprintln!("EVENT {e:?}");
            }
            if let Some(t) = f(&e) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for a room event")
}

/// The secret `Coturn` shares with the server in these tests.
pub(crate) const TURN_SECRET: &str = "parlor-test-turn-secret";

/// coturn (Debian package `coturn`) on a free loopback port with REST credentials
/// (`use-auth-secret`) and loopback peers allowed; killed on drop.
pub(crate) struct Coturn {
    child: std::process::Child,
    /// Its UDP/TCP listening port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its TLS listening port and the PEM of the CA that signed its `localhost` certificate
    /// (started with [`Coturn::start_tls`]).
    pub(crate) tls: Option<(u16, String)>,
    _dir: TempDir,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

/// A CA and a `localhost` leaf it signed, written to `dir`: (CA PEM, cert file, key file).
pub(crate) fn test_pki(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    std::fs::create_dir_all(dir).expect("dir");
    let cert = dir.join("server.pem");
    let key = dir.join("server.key");
    std::fs::write(&cert, leaf.pem()).expect("write");
    std::fs::write(&key, leaf_key.serialize_pem()).expect("write");
    (ca_cert.pem(), cert, key)
}

impl Coturn {
    pub(crate) async fn start(secret: &str) -> Coturn {
        Coturn::launch(secret, false).await
    }

    /// Also listen for TLS (`turns:`), with a certificate from a private CA.
    pub(crate) async fn start_tls(secret: &str) -> Coturn {
        Coturn::launch(secret, true).await
    }

    async fn launch(secret: &str, tls: bool) -> Coturn {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("parlor-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut tls_args = vec!["--no-tls".to_owned()];
        let mut tls_info = None;
        if tls {
            let tls_port = free_port();
            let (ca, cert, key) = test_pki(&dir);
            tls_args = vec![
                format!("--tls-listening-port={tls_port}"),
                format!("--cert={}", cert.display()),
                format!("--pkey={}", key.display()),
            ];
            tls_info = Some((tls_port, ca));
        }
        let child = std::process::Command::new("turnserver")
            .args(tls_args)
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=parlor.test",
                "--allow-loopback-peers",
                "--no-dtls",
                "--no-cli",
                "--no-stdout-log",
                &format!("--log-file={}", dir.join("turn.log").display()),
                &format!("--pidfile={}", dir.join("turn.pid").display()),
                &format!("--userdb={}", dir.join("turndb").display()),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("turnserver (Debian package coturn; scripts/system-deps.sh installs it)");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "coturn did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some((tls_port, _)) = &tls_info {
            while tokio::net::TcpStream::connect(("127.0.0.1", *tls_port))
                .await
                .is_err()
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "coturn TLS did not start"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Coturn {
            child,
            port,
            tls: tls_info,
            _dir: TempDir(dir),
        }
    }

    /// Its `turn:` URL (UDP).
    pub(crate) fn url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
    }

    /// Its `turn:` URL over TCP.
    pub(crate) fn tcp_url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=tcp", self.port)
    }

    /// Its `turns:` URL (TLS over TCP, name `localhost`) and the CA PEM to trust.
    pub(crate) fn tls_url(&self) -> (String, String) {
        let (port, ca) = self.tls.clone().expect("started with start_tls");
        (format!("turns:localhost:{port}?transport=tcp"), ca)
    }
}

/// A server that mints TURN credentials for `urls` with `secret`.
pub(crate) async fn server_with_turn(
    urls: Vec<String>,
    secret: &str,
) -> parlor_server::ServerHandle {
    let mut config = Config::default();
    config.add_dev_key("pk_test_x");
    config.turn = Some(parlor_server::turn::TurnConfig {
        urls,
        secret: secret.to_owned(),
        ttl_secs: 600,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    parlor_server::spawn(listener, config).expect("spawn")
}

/// A room peer with options (same client settings as [`peer`]).
pub(crate) fn peer_with(url: &str, options: parlor_peer::room::RoomOptions) -> RoomPeer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    RoomPeer::with_options(
        SignallingClient::builder()
            .url(url)
            .api_key("pk_test_x")
            .build()
            .expect("client"),
        options,
    )
}
