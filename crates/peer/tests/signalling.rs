//! The Rust signalling client against the real `parlor_server` over loopback sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

mod common;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpListener;

use parlor_peer::signalling::{
    ClientState, Event, Events, ReconnectOptions, SignallingClient, SignallingError,
    SubscribeOptions,
};
use parlor_server::config::Config;

const KEY: &str = "pk_test_x";
const SECRET: &str = "sk_test_0123456789abcdef";
const WAIT: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    handle: parlor_server::ServerHandle,
}

impl Server {
    async fn start_on(addr: &str, toml: &str) -> Server {
        let mut config = Config::from_toml(toml).expect("config");
        config.add_dev_key(KEY);
        let listener = TcpListener::bind(addr).await.expect("bind");
        let handle = parlor_server::spawn(listener, config).expect("spawn");
        Server {
            addr: handle.local_addr(),
            handle,
        }
    }

    async fn start(toml: &str) -> Server {
        Server::start_on("127.0.0.1:0", toml).await
    }

    fn url(&self) -> String {
        self.handle.url()
    }

    async fn stop(self) {
        let _ = tokio::time::timeout(WAIT, self.handle.shutdown()).await;
    }
}

fn fast_reconnect() -> ReconnectOptions {
    ReconnectOptions {
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(400),
        ..ReconnectOptions::default()
    }
}

fn client(url: &str) -> SignallingClient {
    SignallingClient::builder()
        .url(url)
        .api_key(KEY)
        .reconnect(Some(fast_reconnect()))
        .build()
        .expect("client")
}

/// Wait for the first event matching `pred`.
async fn wait_for<T>(events: &mut Events, mut pred: impl FnMut(&Event) -> Option<T>) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = events.recv().await.expect("events open");
            if let Some(t) = pred(&e) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

/// Wait for the next `Disconnected`: (close code, will_reconnect).
async fn disconnected(events: &mut Events) -> (Option<u16>, bool) {
    wait_for(events, |e| match e {
        Event::Disconnected {
            code,
            will_reconnect,
            ..
        } => Some((*code, *will_reconnect)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn pubsub_presence_direct_and_errors() {
    let server = Server::start("").await;
    let a = client(&server.url());
    let b = client(&server.url());
    let mut ea = a.events();
    let mut eb = b.events();
    assert!(matches!(
        a.publish("room", &1).await,
        Err(SignallingError::NotConnected)
    ));
    a.connect().await.expect("connect a");
    b.connect().await.expect("connect b");
    let (pid, max, is_re) = wait_for(&mut ea, |e| match e {
        Event::Connected {
            peer_id,
            max_message_size,
            is_reconnect,
            expires_at: None,
            ..
        } => Some((peer_id.clone(), *max_message_size, *is_reconnect)),
        _ => None,
    })
    .await;
    assert_eq!(Some(pid), a.peer_id());
    assert_eq!((max, is_re), (65536, false));
    assert_eq!(a.state(), ClientState::Connected);

    a.subscribe("room", SubscribeOptions::default())
        .await
        .expect("sub a");
    let snap = wait_for(&mut ea, |e| match e {
        Event::Presence { joined, .. } => Some(joined.len()),
        _ => None,
    })
    .await;
    assert_eq!(snap, 0);
    b.subscribe("room", SubscribeOptions::default())
        .await
        .expect("sub b");
    let b_id = b.peer_id().expect("b id");
    let joined = wait_for(&mut ea, |e| match e {
        Event::Presence { joined, .. } if !joined.is_empty() => Some(joined[0].peer_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(joined, b_id);

    b.publish("room", &json!({"n": 1})).await.expect("publish");
    let (from, data) = wait_for(&mut ea, |e| match e {
        Event::Message {
            sender_peer_id,
            data,
            ..
        } => Some((sender_peer_id.clone(), data.get().to_owned())),
        _ => None,
    })
    .await;
    assert_eq!(
        (from.as_str(), data.as_str()),
        (b_id.as_str(), r#"{"n":1}"#)
    );

    let a_id = a.peer_id().expect("a id");
    b.send(&a_id, &serde_json::Value::Null).await.expect("send");
    let data = wait_for(&mut ea, |e| match e {
        Event::Direct { data, .. } => Some(data.get().to_owned()),
        _ => None,
    })
    .await;
    assert_eq!(data, "null");

    match a.send("p_nobody", &1).await {
        Err(SignallingError::ServerRequest { code, .. }) => assert_eq!(code, "peer_not_found"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.subscribe("_metered/x", SubscribeOptions::default()).await,
        Err(SignallingError::InvalidArgument(_))
    ));
    let big = "x".repeat(70_000);
    assert!(matches!(
        a.publish("room", &big).await,
        Err(SignallingError::Oversized { cap: 65536, .. })
    ));
    a.unsubscribe("room").await.expect("unsub");
    a.unsubscribe("room").await.expect("idempotent unsub");
    let _ = wait_for(&mut eb, |e| match e {
        Event::Presence { left, .. } if !left.is_empty() => Some(()),
        _ => None,
    })
    .await;
    a.close().await;
    assert_eq!(a.state(), ClientState::Closed);
    a.close().await; // idempotent
    b.close().await;
    server.stop().await;
}

/// A reader that falls behind, over real sockets: it loses messages, oldest first, is told
/// how many (`Lagged`, before the rest), and loses no presence event.
#[tokio::test]
async fn a_slow_reader_is_told_what_it_lost_and_keeps_presence() {
    let server = Server::start("[limits]\nrate_per_sec = 10000.0\nrate_burst = 10000.0\n").await;
    let a = client(&server.url());
    let b = SignallingClient::builder()
        .url(server.url())
        .api_key(KEY)
        .event_capacity(16)
        .build()
        .expect("b");
    let mut eb = b.events();
    // A second reader that keeps up: once it has a's `left`, everything b got is in `eb`.
    let mut fast = b.events();
    a.connect().await.expect("connect a");
    b.connect().await.expect("connect b");
    b.subscribe("room", SubscribeOptions::default())
        .await
        .expect("sub b");
    a.subscribe("room", SubscribeOptions::default())
        .await
        .expect("sub a");
    // 200 messages while b reads nothing, then a leaves.
    const N: u64 = 200;
    for n in 0..N {
        a.publish("room", &json!({ "n": n }))
            .await
            .expect("publish");
    }
    let a_id = a.peer_id().expect("a id");
    a.close().await;
    wait_for(&mut fast, |e| match e {
        Event::Presence { left, .. } if left.iter().any(|p| p.peer_id == a_id) => Some(()),
        _ => None,
    })
    .await;
    let (mut lagged, mut got, mut first_lag_at) = (0u64, Vec::new(), None);
    let mut seen = 0usize;
    let (mut joined, mut left) = (false, false);
    while !left {
        let e = tokio::time::timeout(WAIT, eb.recv())
            .await
            .expect("an event in time")
            .expect("the stream open");
        seen += 1;
        match e {
            Event::Lagged { dropped } => {
                first_lag_at.get_or_insert(seen);
                lagged += dropped;
            }
            Event::Message { data, .. } => {
                let v: serde_json::Value = serde_json::from_str(data.get()).expect("json");
                got.push(v["n"].as_u64().expect("n"));
            }
            Event::Presence {
                joined: j, left: l, ..
            } => {
                joined |= j.iter().any(|p| p.peer_id == a_id);
                left |= l.iter().any(|p| p.peer_id == a_id);
            }
            _ => {}
        }
    }
    assert!(joined, "a's join was kept");
    assert!(lagged > 0, "nothing lost, with 16 slots for 200 messages?");
    assert_eq!(
        lagged + got.len() as u64,
        N,
        "every message kept or counted"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(got.last(), Some(&(N - 1)), "the newest kept: {got:?}");
    assert!(got.len() <= 16, "{} kept", got.len());
    assert_eq!(first_lag_at, Some(1), "the loss is the first thing read");
    b.close().await;
    server.stop().await;
}

#[tokio::test]
async fn first_connect_failures_are_reported_not_retried() {
    let server = Server::start("").await;
    let c = SignallingClient::builder()
        .url(server.url())
        .api_key("pk_wrong")
        .build()
        .expect("client");
    match c.connect().await {
        Err(SignallingError::ConnectFailed {
            close_code: Some(4001),
            reason,
        }) => assert!(!reason.contains("pk_wrong"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.state(), ClientState::Closed);
    // Nothing listening: a transport error, also reported at once.
    let gone = client("ws://127.0.0.1:1");
    assert!(matches!(
        gone.connect().await,
        Err(SignallingError::ConnectFailed {
            close_code: None,
            ..
        })
    ));
}

#[tokio::test]
async fn reconnects_after_server_restart_and_replays_subscriptions() {
    let server = Server::start("").await;
    let addr = server.addr;
    let a = client(&server.url());
    let mut ea = a.events();
    a.connect().await.expect("connect");
    a.subscribe(
        "room",
        SubscribeOptions {
            include_sender_metadata: true,
        },
    )
    .await
    .expect("sub");
    let old_id = a.peer_id().expect("id");
    server.stop().await;
    let ga = wait_for(&mut ea, |e| match e {
        Event::GoingAway { retry_after_ms } => Some(*retry_after_ms),
        _ => None,
    })
    .await;
    assert_eq!(ga, 1000);
    let (code, will) = disconnected(&mut ea).await;
    assert_eq!((code, will), (Some(1001), true));

    // Same port, new process state.
    let server = Server::start_on(&addr.to_string(), "").await;
    let watcher = client(&server.url());
    watcher.connect().await.expect("watcher");
    let mut ew = watcher.events();
    watcher
        .subscribe("room", SubscribeOptions::default())
        .await
        .expect("watch");
    let re = wait_for(&mut ea, |e| match e {
        Event::Connected { is_reconnect, .. } => Some(*is_reconnect),
        _ => None,
    })
    .await;
    assert!(re);
    let new_id = a.peer_id().expect("id");
    assert_ne!(new_id, old_id);
    // The replayed subscription makes the reconnected client visible in the room.
    let seen = wait_for(&mut ew, |e| match e {
        Event::Presence { joined, .. } => joined
            .iter()
            .find(|p| p.peer_id == new_id)
            .map(|p| p.peer_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(seen, new_id);
    a.close().await;
    watcher.close().await;
    server.stop().await;
}

#[tokio::test]
async fn terminal_close_codes_stop_reconnecting() {
    let server = Server::start("admin_secret = \"adm_0123456789\"").await;
    let a = client(&server.url());
    let mut ea = a.events();
    a.connect().await.expect("connect");
    let id = a.peer_id().expect("id");
    // Admin disconnect (4020) through the real HTTP API.
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let req = format!(
        "POST /admin/peers/{id}/disconnect HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer adm_0123456789\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .expect("write");
    let (code, will) = disconnected(&mut ea).await;
    assert_eq!((code, will), (Some(4020), false));
    wait_for(&mut ea, |e| match e {
        Event::StateChange {
            to: ClientState::Closed,
            ..
        } => Some(()),
        _ => None,
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn token_provider_is_called_on_every_connect() {
    let toml = format!("[[secrets]]\nkid = \"main\"\nsecret = \"{SECRET}\"\naccount = \"acme\"\n");
    let server = Server::start(&toml).await;
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let c = SignallingClient::builder()
        .url(server.url())
        .token_provider(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let claims: parlor_server::auth::Claims = serde_json::from_value(json!({
                    "exp": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs() + 600,
                    "peerMetadata": {"name": "rusty"},
                }))
                .map_err(|e| e.to_string())?;
                parlor_server::auth::mint_token(SECRET, "main", &claims)
            }
        })
        .reconnect(Some(fast_reconnect()))
        .build()
        .expect("client");
    let mut ev = c.events();
    c.connect().await.expect("connect with token");
    let exp = wait_for(&mut ev, |e| match e {
        Event::Connected { expires_at, .. } => Some(*expires_at),
        _ => None,
    })
    .await;
    assert!(exp.is_some());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    c.close().await;
    server.stop().await;
}

/// A WebSocket server that upgrades and then says nothing (optionally a welcome first), and
/// never answers application pings.
async fn silent_server(send_welcome: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                if send_welcome {
                    let w = r#"{"type":"welcome","peerId":"p_silent","expiresAt":null,"serverTime":1,"maxMessageSize":65536}"#;
                    let _ = ws
                        .send(tokio_tungstenite::tungstenite::Message::text(w))
                        .await;
                }
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn welcome_timeout_fails_the_first_connect() {
    let addr = silent_server(false).await;
    let c = SignallingClient::builder()
        .url(format!("ws://{addr}"))
        .api_key(KEY)
        .welcome_timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    match c.connect().await {
        Err(SignallingError::ConnectFailed { reason, .. }) => {
            assert!(reason.contains("welcome"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn inactivity_watchdog_closes_4000_and_reconnects() {
    let addr = silent_server(true).await;
    let c = SignallingClient::builder()
        .url(format!("ws://{addr}"))
        .api_key(KEY)
        .inactivity_timeout(Duration::from_secs(3))
        .reconnect(Some(fast_reconnect()))
        .build()
        .expect("client");
    let mut ev = c.events();
    c.connect().await.expect("welcome from the silent server");
    let started = std::time::Instant::now();
    let (code, will) = disconnected(&mut ev).await;
    assert_eq!((code, will), (Some(4000), true));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    c.close().await;
}

/// A CA and a `localhost` leaf it signed: (CA PEM, server TLS config). Files live in `dir`.
fn test_pki(dir: &std::path::Path) -> (String, parlor_server::tls::TlsConfig) {
    let (ca, cert_file, key_file) = common::test_pki(dir);
    (
        ca,
        parlor_server::tls::TlsConfig {
            cert_file,
            key_file,
        },
    )
}

#[tokio::test]
async fn wss_to_a_server_with_a_private_ca() {
    let dir = std::env::temp_dir().join(format!("parlor-peer-wss-{}", std::process::id()));
    let (ca_pem, tls) = test_pki(&dir);
    let mut config = Config::default();
    config.add_dev_key(KEY);
    config.tls = Some(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let handle = parlor_server::spawn(listener, config).expect("spawn");
    let url = format!("wss://localhost:{}", handle.local_addr().port());

    // Trusting the CA: connected, and a publish round-trips over TLS.
    let client = SignallingClient::builder()
        .url(&url)
        .api_key(KEY)
        .tls_root_certificates_pem(&ca_pem)
        .reconnect(None)
        .build()
        .expect("build");
    let mut events = client.events();
    client.connect().await.expect("connect over wss");
    client
        .subscribe("tls-room", SubscribeOptions::default())
        .await
        .expect("subscribe");
    client
        .publish("tls-room", &json!({"over": "tls"}))
        .await
        .expect("publish");
    let data = wait_for(&mut events, |e| match e {
        Event::Message { data, .. } => Some(data.clone()),
        _ => None,
    })
    .await;
    assert_eq!(data.get(), r#"{"over":"tls"}"#);
    client.close().await;

    // Web roots only: the connect fails on the certificate, without the key in the reason.
    let client = SignallingClient::builder()
        .url(&url)
        .api_key(KEY)
        .reconnect(None)
        .build()
        .expect("build");
    match client.connect().await {
        Err(SignallingError::ConnectFailed { reason, .. }) => {
            assert!(reason.contains("certificate"), "{reason}");
            assert!(!reason.contains(KEY), "{reason}");
        }
        other => panic!("expected ConnectFailed, got {other:?}"),
    }

    // Bad PEM is a build-time InvalidArgument.
    let e = SignallingClient::builder()
        .url(&url)
        .api_key(KEY)
        .tls_root_certificates_pem("not a certificate")
        .build()
        .expect_err("bad pem");
    assert!(matches!(e, SignallingError::InvalidArgument(_)), "{e:?}");

    handle.shutdown().await.expect("shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP proxy to `upstream` that delays each direction by `one_way` (order kept).
async fn delay_proxy(upstream: SocketAddr, one_way: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let outbound = tokio::net::TcpStream::connect(upstream)
                .await
                .expect("upstream");
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            for (mut from, mut to) in [(ri, wo), (ro, wi)] {
                let (tx, mut rx) =
                    tokio::sync::mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(64);
                tokio::spawn(async move {
                    while let Some((at, bytes)) = rx.recv().await {
                        tokio::time::sleep_until(at).await;
                        if to.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from.read(&mut buf).await {
                        let at = tokio::time::Instant::now() + one_way;
                        if tx.send((at, buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    format!("ws://{addr}")
}

#[tokio::test]
async fn queued_sends_do_not_wait_for_each_others_acks_and_keep_their_order() {
    let server = Server::start("").await;
    // 200 ms of signalling round trip: 20 sends one ack after another would take 4 s.
    let url = delay_proxy(server.addr, Duration::from_millis(100)).await;
    let a = client(&url);
    let b = client(&server.url());
    let mut eb = b.events();
    a.connect().await.expect("connect a");
    b.connect().await.expect("connect b");
    let to = b.peer_id().expect("b id");
    let started = tokio::time::Instant::now();
    let mut acks = Vec::new();
    for n in 0..20 {
        acks.push(
            a.send_queued(&to, &json!({ "n": n }))
                .await
                .expect("queued"),
        );
    }
    // All are on their way before the first ack could have come back.
    assert!(started.elapsed() < Duration::from_millis(200));
    for ack in acks {
        ack.wait().await.expect("acked");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "20 acks took {:?}: the sends waited for each other",
        started.elapsed()
    );
    for n in 0..20 {
        let got = wait_for(&mut eb, |e| match e {
            Event::Direct { data, .. } => serde_json::from_str::<serde_json::Value>(data.get())
                .ok()?
                .get("n")
                .and_then(serde_json::Value::as_u64),
            _ => None,
        })
        .await;
        assert_eq!(got, n, "out of order");
    }
    // A server error still comes back through the ack.
    let err = a
        .send_queued("p_nobody_here", &json!({ "n": 0 }))
        .await
        .expect("queued")
        .wait()
        .await;
    assert!(err.is_err(), "{err:?}");
    server.stop().await;
}
