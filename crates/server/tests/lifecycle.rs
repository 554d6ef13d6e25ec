//! Liveness, graceful shutdown, admin API, metrics and isolation over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn sigterm_style_shutdown_sends_going_away_then_1001() {
    let mut server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    a.subscribe("room").await;
    server.stop_signal();
    let g = a.expect("going_away").await;
    assert_eq!(g["retryAfterMs"], 1000);
    a.expect_close(1001).await;
    b.expect("going_away").await;
    b.expect_close(1001).await;
    server.shutdown().await;
}

/// A shutdown in the middle of a stream of publishes: every publish the server acknowledged
/// reached the subscriber before its close (an ack is a promise of delivery).
#[tokio::test]
async fn shutdown_loses_no_acknowledged_message() {
    use futures_util::{SinkExt, StreamExt};
    use std::collections::HashSet;
    use tokio_tungstenite::tungstenite::Message;

    let mut server = Server::start("[limits]\nrate_per_sec = 100000\nrate_burst = 100000").await;
    let mut sub = Client::dev(&server).await;
    sub.subscribe("room").await;
    let publisher = Client::dev(&server).await;
    let (mut tx, mut rx) = publisher.ws.split();
    let writer = tokio::spawn(async move {
        let mut i = 0u64;
        loop {
            let frame =
                json!({"type":"publish","channel":"room","data":i,"requestId":format!("m{i}")});
            if tx.send(Message::text(frame.to_string())).await.is_err() {
                return i;
            }
            i += 1;
            if i.is_multiple_of(8) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let reader = tokio::spawn(async move {
        let mut acked = HashSet::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, rx.next()).await {
            if let Message::Text(t) = m {
                let f: Value = serde_json::from_str(&t).expect("json");
                if f["type"] == "ack" {
                    let rid = f["requestId"].as_str().unwrap_or_default();
                    acked.insert(rid.trim_start_matches('m').parse::<u64>().expect("id"));
                }
            }
        }
        acked
    });
    let mut delivered = HashSet::new();
    let start = Instant::now();
    let mut stopped = false;
    loop {
        if !stopped && start.elapsed() > Duration::from_millis(300) {
            server.stop_signal();
            stopped = true;
        }
        match next_inbound(&mut sub.ws).await {
            Inbound::Frame(f) if f["type"] == "message" => {
                delivered.insert(f["data"].as_u64().expect("data"));
            }
            Inbound::Frame(_) => {}
            Inbound::Closed(code, _) => {
                assert_eq!(code, Some(1001));
                break;
            }
        }
    }
    let sent = writer.await.expect("writer");
    let acked = reader.await.expect("reader");
    assert!(acked.len() > 10, "only {} acked of {sent}", acked.len());
    let lost: Vec<_> = acked.difference(&delivered).collect();
    assert!(lost.is_empty(), "acked but never delivered: {lost:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn dead_peers_leave_presence_within_two_ping_intervals() {
    let server = Server::start("[limits]\nping_interval_secs = 1").await;
    let mut watcher = Client::dev(&server).await;
    watcher.subscribe("room").await;
    let mut dead = Client::dev(&server).await;
    dead.subscribe("room").await;
    watcher.expect("presence").await;
    // `dead` never reads again, so it never answers the server's pings.
    let started = Instant::now();
    let mut left = None;
    // The watcher keeps reading (and so auto-pongs) while waiting.
    while started.elapsed() < Duration::from_secs(8) {
        let f = watcher.next().await;
        if f["type"] == "presence" && f["left"].as_array().is_some_and(|l| !l.is_empty()) {
            left = Some(f);
            break;
        }
    }
    let left = left.expect("left presence for the dead peer");
    assert_eq!(ids(&left["left"]), vec![dead.peer_id.clone()]);
    let took = started.elapsed();
    assert!(took <= Duration::from_secs(4), "took {took:?}");
    drop(dead);
}

#[tokio::test]
async fn idle_clients_that_answer_pings_stay() {
    let server = Server::start("[limits]\nping_interval_secs = 1").await;
    let mut c = Client::dev(&server).await;
    // Reading the socket answers WS pings; nothing else is sent for 3.5 intervals.
    c.expect_silence(Duration::from_millis(3500)).await;
    c.ping_pong().await;
}

#[tokio::test]
async fn admin_api_lists_and_disconnects_with_4020() {
    let server = Server::start("admin_secret = \"adm_0123456789\"").await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.expect("presence").await;
    let auth = ("Authorization", "Bearer adm_0123456789");
    let (status, _) = http(server.addr, "GET", "/admin/peers", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = http(
        server.addr,
        "GET",
        "/admin/peers",
        &[("Authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(server.addr, "GET", "/admin/peers", &[auth]).await;
    assert_eq!(status, 200);
    let peers: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(peers.as_array().map(Vec::len), Some(2));
    let (status, body) = http(server.addr, "GET", "/admin/channels", &[auth]).await;
    assert_eq!(status, 200);
    let chans: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(chans[0]["channel"], "room");
    assert_eq!(chans[0]["members"].as_array().map(Vec::len), Some(2));

    let path = format!("/admin/peers/{}/disconnect", b.peer_id);
    let (status, _) = http(server.addr, "POST", &path, &[auth]).await;
    assert_eq!(status, 204);
    b.expect_close(4020).await;
    assert_eq!(
        ids(&a.expect("presence").await["left"]),
        vec![b.peer_id.clone()]
    );
    let (status, _) = http(
        server.addr,
        "POST",
        "/admin/peers/p_nobody/disconnect",
        &[auth],
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn admin_api_is_absent_without_a_secret() {
    let server = Server::dev().await;
    let (status, _) = http(
        server.addr,
        "GET",
        "/admin/peers",
        &[("Authorization", "Bearer ")],
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_count_connections_frames_and_errors() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    a.request(json!({"type":"send","to":"p_nobody","data":1}))
        .await;
    let mut bad = raw(&server.url("key=wrong")).await;
    expect_close(&mut bad, 4001).await;
    let (status, body) = http(server.addr, "GET", "/metrics", &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("parlor_connections 1"), "{body}");
    assert!(
        body.contains(r#"parlor_errors_total{code="peer_not_found"} 1"#),
        "{body}"
    );
    assert!(
        body.contains(r#"parlor_closes_total{code="4001"} 1"#),
        "{body}"
    );
    assert!(body.contains("parlor_frames_in_total 1"), "{body}");
}

/// A client that stops reading is cut off once its queue passes the cap; nobody else waits.
#[tokio::test]
async fn slow_consumer_is_dropped_without_delaying_others() {
    let server = Server::start(
        "[limits]\noutbound_queue_bytes = 1048576\nrate_per_sec = 1000\nrate_burst = 1000",
    )
    .await;
    let mut publisher = Client::dev(&server).await;
    let mut fast = Client::dev(&server).await;
    let mut slow = Client::dev(&server).await;
    publisher.subscribe("room").await;
    fast.subscribe("room").await;
    slow.subscribe("room").await;
    publisher.expect("presence").await;
    publisher.expect("presence").await;
    fast.expect("presence").await;
    // ~30 MB through the channel; `slow` never reads.
    let chunk = "z".repeat(60_000);
    let started = Instant::now();
    let (mut fast_saw_left, mut publisher_saw_left) = (false, false);
    for i in 0..500 {
        publisher
            .send_json(json!({"type":"publish","channel":"room","data":chunk}))
            .await;
        for (client, saw_left) in [
            (&mut fast, &mut fast_saw_left),
            (&mut publisher, &mut publisher_saw_left),
        ] {
            loop {
                let f = client.next().await;
                if f["type"] == "message" {
                    assert_eq!(
                        f["data"].as_str().map(str::len),
                        Some(60_000),
                        "message {i}"
                    );
                    break;
                }
                assert_eq!(f["type"], "presence", "{f}");
                assert_eq!(ids(&f["left"]), vec![slow.peer_id.clone()]);
                *saw_left = true;
            }
        }
        if fast_saw_left && publisher_saw_left {
            break;
        }
    }
    assert!(
        fast_saw_left && publisher_saw_left,
        "slow consumer should have been dropped"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(slow);
    fast.ping_pong().await;
}

#[tokio::test]
async fn many_clients_with_bad_input_do_not_disturb_a_conversation() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.expect("presence").await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let url = server.url("key=pk_test_x");
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.subscribe("room").await;
            for bad in ["{", "[]", "\u{0}", r#"{"type":"send","to":"","data":1}"#] {
                c.send_text(bad).await;
            }
            if i % 2 == 0 {
                c.send_text("x".repeat(80_000)).await;
            } else {
                futures_util::SinkExt::send(
                    &mut c.ws,
                    tokio_tungstenite::tungstenite::Message::binary(vec![0u8; 10]),
                )
                .await
                .expect("send");
            }
        }));
    }
    for t in tasks {
        t.await.expect("bad client task");
    }
    for n in 0..50 {
        a.send_json(json!({"type":"send","to":b.peer_id,"data":n}))
            .await;
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let f = b.next().await;
        if f["type"] == "direct" {
            got.push(f["data"].as_i64().expect("n"));
        }
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}
