//! Helpers shared by the room-peer integration tests: a real server, room peers with a fast
//! reconnect ladder, and a bounded wait for an event.
#![allow(dead_code)]

use std::time::Duration;

use tokio::net::TcpListener;

use parlor_peer::room::{RoomEvent, RoomEvents, RoomPeer};
use parlor_peer::signalling::{ReconnectOptions, SignallingClient};
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

impl Coturn {
    pub(crate) async fn start(secret: &str) -> Coturn {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("parlor-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let child = std::process::Command::new("turnserver")
            .args([
                "-n",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                "--use-auth-secret",
                &format!("--static-auth-secret={secret}"),
                "--realm=parlor.test",
                "--allow-loopback-peers",
                "--no-tls",
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
        Coturn {
            child,
            port,
            _dir: TempDir(dir),
        }
    }

    /// Its `turn:` URL (UDP).
    pub(crate) fn url(&self) -> String {
        format!("turn:127.0.0.1:{}?transport=udp", self.port)
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
