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
