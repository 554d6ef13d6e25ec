//! Issue #23: what an attacker found, tried again as one would, over real sockets. Each test
//! failed before the fix it names.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// A TCP connection from `source` (any 127.0.0.0/8 address on Linux).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source"))
        .expect("bind source");
    socket.connect(to).await.expect("connect")
}

/// Read and discard until the server closes the socket; `None` if it is still open after
/// `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(within.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// How many of `sockets` the server closed at once (the pending cap) rather than holding.
async fn refused_at_once(sockets: &mut [TcpStream]) -> usize {
    let closed = futures_util::future::join_all(
        sockets
            .iter_mut()
            .map(|s| closed_within(s, Duration::from_millis(300))),
    )
    .await;
    closed.iter().filter(|c| c.is_some()).count()
}

/// A WebSocket upgrade by hand: the socket right after the server's 101.
async fn upgrade_raw(addr: SocketAddr, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /v1?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// One client frame: `first` is FIN/RSV/opcode; masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Read server frames until a close frame: its code (`None` if the socket ended without one).
async fn close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let mut head = [0u8; 2];
        timeout(WAIT, s.read_exact(&mut head)).await.ok()?.ok()?;
        let len = match head[1] & 0x7f {
            126 => u64::from(s.read_u16().await.ok()?),
            127 => s.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await.ok()?;
        if head[0] & 0x0f == 0x8 {
            return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
}

/// Finding 1: sockets that stall at each phase are closed when that phase's time is up.
#[tokio::test]
async fn every_connection_phase_has_a_deadline() {
    let server = Server::start(
        "[limits]\nheader_timeout_ms = 500\nhttp_idle_timeout_ms = 2500\nfirst_frame_timeout_ms = 500",
    )
    .await;
    let slack = Duration::from_secs(4);

    // Connected, sent nothing.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    // Trickling a header a byte at a time: the bytes do not extend the deadline.
    let mut slow = TcpStream::connect(server.addr).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("w");
    let trickle = tokio::spawn(async move {
        for _ in 0..60 {
            if slow.write_all(b"X").await.is_err() {
                return Some(slow);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    // One keep-alive request, then nothing.
    let mut kept = TcpStream::connect(server.addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("w");
    let mut buf = [0u8; 512];
    let n = timeout(WAIT, kept.read(&mut buf))
        .await
        .expect("response")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    // Upgraded with a valid key, then never reads nor answers the server's ping.
    let mut mute = upgrade_raw(server.addr, &format!("key={DEV_KEY}")).await;

    assert!(closed_within(&mut silent, slack).await.is_some(), "silent");
    let slow = timeout(slack, trickle).await.expect("trickle ended");
    assert!(slow.expect("join").is_some(), "slowloris was not closed");
    assert!(closed_within(&mut mute, slack).await.is_some(), "mute ws");
    // The idle deadline is its own: past the header deadline the kept-alive socket is open.
    closed_within(&mut kept, slack + Duration::from_secs(3))
        .await
        .expect("idle keep-alive closed");
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1000),
        "idle closed after {idle:?}"
    );

    // A real client answers the first ping and stays, past every deadline above.
    let mut c = Client::dev(&server).await;
    c.expect_silence(Duration::from_millis(1200)).await;
    c.ping_pong().await;
    let metrics = reqwest_metrics(server.addr).await;
    assert!(
        metric(&metrics, "parlor_phase_timeouts_total") >= 4.0,
        "{metrics}"
    );
}

async fn reqwest_metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("w");
    let mut out = String::new();
    timeout(WAIT, s.read_to_string(&mut out))
        .await
        .expect("metrics")
        .expect("read");
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Finding 1: one address cannot hold more than its share of connections that have not
/// upgraded; another client connects while it tries.
#[tokio::test]
async fn one_address_cannot_exhaust_pending_connections() {
    let server =
        Server::start("[limits]\nmax_pending_per_address = 8\nheader_timeout_ms = 20000").await;
    let mut attack = Vec::new();
    for _ in 0..30 {
        attack.push(connect_from("127.0.0.2", server.addr).await);
    }
    let refused = refused_at_once(&mut attack).await;
    assert_eq!(refused, 22, "8 of 30 held, the rest closed at accept");
    // Others are unaffected, over HTTP and WebSocket alike.
    let mut c = Client::dev(&server).await;
    c.ping_pong().await;
    let metrics = reqwest_metrics(server.addr).await;
    assert_eq!(
        metric(&metrics, "parlor_pending_refused_total"),
        22.0,
        "{metrics}"
    );
    // The 8 held, and the metrics request itself.
    assert_eq!(
        metric(&metrics, "parlor_pending_connections"),
        9.0,
        "{metrics}"
    );
    drop(attack);
}

/// Finding 1: the total cap bounds descriptors held by connections that have not upgraded;
/// the slots come back when their header deadline passes.
#[tokio::test]
async fn the_total_pending_cap_holds_and_recovers() {
    let server = Server::start(
        "[limits]\nmax_pending_connections = 10\nmax_pending_per_address = 8\nheader_timeout_ms = 1000",
    )
    .await;
    let mut attack = Vec::new();
    for source in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..8 {
            attack.push(connect_from(source, server.addr).await);
        }
    }
    let refused = refused_at_once(&mut attack).await;
    assert_eq!(refused, 6, "10 of 16 held");
    // When the stalled ones time out, a client gets in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = Client::dev(&server).await;
    c.ping_pong().await;
}

/// Findings 2 and 3: a far-future `exp` that overflows milliseconds stays connected; `nbf`
/// in the future is refused.
#[tokio::test]
async fn far_future_exp_stays_and_nbf_is_honoured() {
    let server = Server::start(&jwt_config("")).await;
    for exp in [u64::MAX / 1000 + 1, u64::MAX] {
        let token = mint(json!({ "exp": exp }));
        let mut c = Client::connect(&server.url(&format!("token={token}"))).await;
        assert_eq!(c.welcome["expiresAt"], json!(exp));
        c.expect_silence(Duration::from_millis(700)).await;
        c.ping_pong().await;
    }
    let early = mint(json!({ "exp": now_secs() + 600, "nbf": now_secs() + 300 }));
    let mut ws = raw(&server.url(&format!("token={early}"))).await;
    assert_eq!(expect_close(&mut ws, 4001).await, "token not yet valid");
    let ok = mint(json!({ "exp": now_secs() + 600, "nbf": now_secs() - 1 }));
    Client::connect(&server.url(&format!("token={ok}")))
        .await
        .ping_pong()
        .await;
}

/// Finding 4: WebSocket protocol violations get the close frame RFC 6455 names, on the
/// wire, and nobody else notices.
#[tokio::test]
async fn protocol_violations_get_close_frames() {
    let server = Server::start("[limits]\nmax_message_size = 1024").await;
    let mut bystander = Client::dev(&server).await;
    let cases: [(&str, Vec<u8>, u16); 8] = [
        ("invalid UTF-8", frame(0x81, &[0xc3, 0x28], true), 1007),
        (
            "unmasked frame",
            frame(0x81, b"{\"type\":\"ping\"}", false),
            1002,
        ),
        ("RSV1 without an extension", frame(0xc1, b"{}", true), 1002),
        ("reserved data opcode", frame(0x83, b"{}", true), 1002),
        ("reserved control opcode", frame(0x8b, b"", true), 1002),
        (
            "control frame over 125 bytes",
            frame(0x89, &[0u8; 126], true),
            1002,
        ),
        ("fragmented control frame", frame(0x09, b"x", true), 1002),
        ("frame over the cap", frame(0x81, &[b' '; 8000], true), 1009),
    ];
    for (what, bytes, code) in cases {
        let mut s = upgrade_raw(server.addr, &format!("key={DEV_KEY}")).await;
        s.write_all(&bytes).await.expect("send");
        assert_eq!(close_code(&mut s).await, Some(code), "{what}");
    }
    bystander.ping_pong().await;
}

/// Finding 5: pings have a bucket of their own: a flood of either kind is closed with 4011,
/// the clients' heartbeats are not.
#[tokio::test]
async fn ping_floods_are_rate_limited() {
    let server = Server::start("").await;
    let mut app = Client::dev(&server).await;
    for _ in 0..1000 {
        app.send_json(json!({"type":"ping"})).await;
    }
    let mut pongs = 0;
    loop {
        match next_inbound(&mut app.ws).await {
            Inbound::Frame(f) if f["type"] == "pong" => pongs += 1,
            Inbound::Closed(Some(4011), reason) => {
                assert_eq!(reason, "ping rate exceeded");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(pongs < 100, "{pongs} pongs");

    let mut ws = Client::dev(&server).await;
    for _ in 0..1000 {
        if ws.ws.send(Message::Ping(Default::default())).await.is_err() {
            break;
        }
    }
    ws.expect_close(4011).await;

    // A heartbeat well above the clients' pace (one a second at the fastest) stays.
    let mut steady = Client::dev(&server).await;
    for _ in 0..8 {
        steady.ping_pong().await;
        steady
            .ws
            .send(Message::Ping(Default::default()))
            .await
            .expect("ws ping");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    steady.send_json(json!({"type":"ping"})).await;
    steady.expect("pong").await;
}
