//! Spec §1 over real sockets: welcome, requests, acks, errors, presence ordering, routing.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_is_first_and_complete() {
    let server = Server::dev().await;
    let c = Client::dev(&server).await;
    let w = &c.welcome;
    assert!(
        w["peerId"]
            .as_str()
            .is_some_and(|p| p.starts_with("p_") && p.is_ascii())
    );
    assert!(w.get("expiresAt").is_some_and(|e| e.is_null()), "{w}");
    assert_eq!(w["maxMessageSize"], 65536);
    let t = w["serverTime"].as_u64().expect("serverTime");
    let now_ms = now_secs() * 1000;
    assert!(t.abs_diff(now_ms) < 5_000, "serverTime is ms: {t}");
    assert!(w.get("metadata").is_none());
    // Unique ids.
    let d = Client::dev(&server).await;
    assert_ne!(c.peer_id, d.peer_id);
}

#[tokio::test]
async fn ping_gets_pong_and_is_never_acked() {
    let server = Server::dev().await;
    let mut c = Client::dev(&server).await;
    c.send_json(json!({"type":"ping","requestId":"x"})).await;
    c.expect("pong").await;
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn malformed_input_gets_errors_and_keeps_the_connection() {
    let server = Server::dev().await;
    let mut c = Client::dev(&server).await;
    for bad in [
        "not json",
        "[1,2]",
        "42",
        "{\"type\":",
        "{\"no\":\"type\"}",
        "{\"type\":7}",
    ] {
        c.send_text(bad).await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], "malformed_message", "{bad}: {e}");
        assert!(e.get("requestId").is_none(), "{bad}: {e}");
    }
    // Unknown type: correlated when the requestId is valid.
    c.send_json(json!({"type":"shout","requestId":"u1"})).await;
    let e = c.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["requestId"].as_str()),
        (Some("unknown_type"), Some("u1"))
    );
    // Bad requestIds: uncorrelated malformed, and the request is not processed.
    for rid in [json!(""), json!(5), json!("r".repeat(129)), json!(null)] {
        c.send_json(json!({"type":"subscribe","channel":"room","requestId":rid}))
            .await;
        let e = c.expect("error").await;
        assert_eq!(e["code"], "malformed_message");
        assert!(e.get("requestId").is_none());
    }
    // Nothing was subscribed: a fresh peer's snapshot of "room" is empty.
    let mut d = Client::dev(&server).await;
    assert_eq!(d.subscribe("room").await["joined"], json!([]));
    // Still alive.
    c.ping_pong().await;
}

#[tokio::test]
async fn field_validation_codes() {
    let server = Server::dev().await;
    let mut c = Client::dev(&server).await;
    let long = "c".repeat(257);
    let cases = [
        (json!({"type":"subscribe"}), "invalid_channel"),
        (json!({"type":"subscribe","channel":""}), "invalid_channel"),
        (
            json!({"type":"subscribe","channel":long}),
            "invalid_channel",
        ),
        (
            json!({"type":"subscribe","channel":"a\u{7}b"}),
            "invalid_channel",
        ),
        (
            json!({"type":"publish","channel":5,"data":1}),
            "invalid_channel",
        ),
        (
            json!({"type":"unsubscribe","channel":"\u{85}"}),
            "invalid_channel",
        ),
        (
            json!({"type":"subscribe","channel":"_metered/x"}),
            "channel_reserved",
        ),
        (
            json!({"type":"publish","channel":"_SYSTEM/x","data":1}),
            "channel_reserved",
        ),
        (
            json!({"type":"unsubscribe","channel":"_internal/x"}),
            "channel_reserved",
        ),
        (json!({"type":"publish","channel":"room"}), "missing_data"),
        (json!({"type":"send","to":"p_x"}), "missing_data"),
        (json!({"type":"send","data":1}), "invalid_peer_id"),
        (json!({"type":"send","to":"","data":1}), "invalid_peer_id"),
        (
            json!({"type":"send","to":"p".repeat(129),"data":1}),
            "invalid_peer_id",
        ),
        (
            json!({"type":"send","to":"p_nobody","data":1}),
            "peer_not_found",
        ),
    ];
    for (req, code) in cases {
        let e = c.request(req.clone()).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some(code)),
            "{req}: {e}"
        );
    }
    // `_meteredx` is not reserved; 256 astral characters are a valid channel.
    assert_eq!(
        c.request(json!({"type":"publish","channel":"_meteredx","data":1}))
            .await["type"],
        "ack"
    );
    assert_eq!(
        c.request(json!({"type":"publish","channel":"😀".repeat(256),"data":1}))
            .await["type"],
        "ack"
    );
}

#[tokio::test]
async fn requests_without_request_id_are_not_acked_and_errors_are_uncorrelated() {
    let server = Server::dev().await;
    let mut c = Client::dev(&server).await;
    c.send_json(json!({"type":"publish","channel":"room","data":1}))
        .await;
    c.send_json(json!({"type":"send","to":"p_nobody","data":1}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "peer_not_found");
    assert!(e.get("requestId").is_none());
    c.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn presence_snapshot_follows_ack_and_deltas_precede_it() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    let snap = a.subscribe("room").await;
    assert_eq!(snap["joined"], json!([]));
    assert_eq!(snap["left"], json!([]));

    // B joins and immediately sends A a direct as soon as it has its ack: A must see B's
    // `joined` delta before that direct (spec §1.8.3).
    let rid = b.rid();
    b.send_json(json!({"type":"subscribe","channel":"room","requestId":rid}))
        .await;
    assert_eq!(b.expect("ack").await["requestId"], json!(rid));
    b.send_json(json!({"type":"send","to":a.peer_id,"data":{"hello":1}}))
        .await;
    let snap = b.expect("presence").await;
    assert_eq!(ids(&snap["joined"]), vec![a.peer_id.clone()]);
    let delta = a.expect("presence").await;
    assert_eq!(ids(&delta["joined"]), vec![b.peer_id.clone()]);
    assert_eq!(delta["left"], json!([]));
    let d = a.expect("direct").await;
    assert_eq!(d["from"], json!(b.peer_id));

    // A reacts to the delta with a direct to B: B sees it after its snapshot (already read).
    a.send_json(json!({"type":"send","to":b.peer_id,"data":"hi"}))
        .await;
    assert_eq!(b.expect("direct").await["data"], "hi");

    // Repeat subscribe: ack + full snapshot again, no delta to A.
    let again = b.subscribe("room").await;
    assert_eq!(ids(&again["joined"]), vec![a.peer_id.clone()]);
    a.expect_silence(Duration::from_millis(200)).await;

    // Unsubscribe: idempotent; A sees `left` once.
    for _ in 0..2 {
        let ack = b
            .request(json!({"type":"unsubscribe","channel":"room"}))
            .await;
        assert_eq!(ack["type"], "ack");
    }
    let left = a.expect("presence").await;
    assert_eq!(ids(&left["left"]), vec![b.peer_id.clone()]);
    assert_eq!(left["joined"], json!([]));
    a.expect_silence(Duration::from_millis(200)).await;

    // Disconnect delivers `left` for every channel held.
    let mut c = Client::dev(&server).await;
    c.subscribe("room").await;
    a.expect("presence").await;
    drop(c);
    let left = a.expect("presence").await;
    assert_eq!(left["left"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn publish_fans_out_with_echo_and_null_data() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.expect("presence").await;
    let raw = r#"{"type":"publish","channel":"room","data":{"n":123456789012345678901234567890,"s":"\u00e9\ud83d\ude00"},"requestId":"p1"}"#;
    a.send_text(raw).await;
    // Echo to the subscribed publisher, then its ack.
    let echo = a.expect("message").await;
    assert_eq!(echo["from"], json!(a.peer_id));
    assert_eq!(a.expect("ack").await["requestId"], "p1");
    let m = b.expect("message").await;
    assert_eq!(m["channel"], "room");
    assert_eq!(m["data"]["s"], "é😀");
    assert!(m["data"]["n"].is_number());
    assert!(m.get("fromMetadata").is_none());

    b.send_json(json!({"type":"publish","channel":"room","data":null,"requestId":"p2"}))
        .await;
    b.expect("message").await;
    assert_eq!(b.expect("ack").await["requestId"], "p2");
    let m = a.expect("message").await;
    assert!(m.get("data").is_some_and(|d| d.is_null()), "{m}");
    // Publishing does not require a subscription.
    let mut c = Client::dev(&server).await;
    assert_eq!(
        c.request(json!({"type":"publish","channel":"room","data":3}))
            .await["type"],
        "ack"
    );
    assert_eq!(a.expect("message").await["data"], 3);
}

#[tokio::test]
async fn payload_bytes_are_forwarded_verbatim() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    let payload = r#"{"big":123456789012345678901234567890.5e-3,"esc":"\u00e9\n","raw":"é"}"#;
    a.send_text(format!(
        r#"{{"type":"send","to":"{}","data":{payload}}}"#,
        b.peer_id
    ))
    .await;
    // The server pings a fresh connection at once: skip control frames.
    let text = loop {
        let msg = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut b.ws))
            .await
            .expect("frame")
            .expect("open")
            .expect("ok");
        match msg {
            Message::Text(text) => break text,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("text expected, got {other:?}"),
        }
    };
    assert!(text.contains(payload), "{text}");
}

#[tokio::test]
async fn sender_metadata_is_opt_in() {
    let server = Server::start(&jwt_config("")).await;
    let token = mint(json!({"exp": now_secs() + 600, "peerMetadata": {"name":"alice"}}));
    let mut alice = Client::connect(&server.url(&format!("token={token}"))).await;
    let mut plain = Client::dev(&server).await; // other tenant: must not see alice
    let mut opted =
        Client::connect(&server.url(&format!("token={}", mint(json!({"exp": now_secs() + 600})))))
            .await;
    let mut not_opted =
        Client::connect(&server.url(&format!("token={}", mint(json!({"exp": now_secs() + 600})))))
            .await;
    assert_eq!(
        alice.welcome["expiresAt"].as_u64().map(|e| e > now_secs()),
        Some(true)
    );
    alice.subscribe("room").await;
    let ack = opted
        .request(json!({"type":"subscribe","channel":"room","includeSenderMetadata":true}))
        .await;
    assert_eq!(ack["type"], "ack");
    let snap = opted.expect("presence").await;
    // Presence carries alice's public metadata.
    assert_eq!(snap["joined"][0]["metadata"], json!({"name":"alice"}));
    not_opted.subscribe("room").await;
    plain.subscribe("room").await;
    assert_eq!(
        alice.expect("presence").await["joined"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        alice.expect("presence").await["joined"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    opted.expect("presence").await;

    alice
        .send_json(json!({"type":"publish","channel":"room","data":"x"}))
        .await;
    assert_eq!(
        opted.expect("message").await["fromMetadata"],
        json!({"name":"alice"})
    );
    assert!(
        not_opted
            .expect("message")
            .await
            .get("fromMetadata")
            .is_none()
    );
    // Directs carry fromMetadata iff the recipient opted in on some subscription.
    alice
        .send_json(json!({"type":"send","to":opted.peer_id,"data":1}))
        .await;
    assert_eq!(
        opted.expect("direct").await["fromMetadata"],
        json!({"name":"alice"})
    );
    alice
        .send_json(json!({"type":"send","to":not_opted.peer_id,"data":1}))
        .await;
    assert!(
        not_opted
            .expect("direct")
            .await
            .get("fromMetadata")
            .is_none()
    );
    // A sender without metadata: an opted-in recipient gets no `fromMetadata` key at all.
    not_opted
        .send_json(json!({"type":"publish","channel":"room","data":"z"}))
        .await;
    assert!(opted.expect("message").await.get("fromMetadata").is_none());
    not_opted
        .send_json(json!({"type":"send","to":opted.peer_id,"data":2}))
        .await;
    assert!(opted.expect("direct").await.get("fromMetadata").is_none());
    // Tenants are isolated: the dev-key peer saw nothing from alice and cannot reach her.
    plain.expect_silence(Duration::from_millis(200)).await;
    let e = plain
        .request(json!({"type":"send","to":alice.peer_id,"data":1}))
        .await;
    assert_eq!(e["code"], "peer_not_found");
    // Last subscribe wins: opting out removes the stamp.
    let ack = opted
        .request(json!({"type":"subscribe","channel":"room"}))
        .await;
    assert_eq!(ack["type"], "ack");
    opted.expect("presence").await;
    alice
        .send_json(json!({"type":"publish","channel":"room","data":"y"}))
        .await;
    assert!(opted.expect("message").await.get("fromMetadata").is_none());
}

#[tokio::test]
async fn per_connection_fifo_for_directs() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    for i in 0..200 {
        a.send_json(json!({"type":"send","to":b.peer_id,"data":i}))
            .await;
    }
    for i in 0..200 {
        assert_eq!(b.expect("direct").await["data"], i);
    }
}

#[tokio::test]
async fn extra_fields_and_key_order_are_ignored() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    a.send_text(r#"{"requestId":"k","channel":"room","extra":{"x":[1]},"type":"subscribe"}"#)
        .await;
    assert_eq!(a.expect("ack").await["requestId"], "k");
    a.expect("presence").await;
}

#[tokio::test]
async fn binary_frames_close_1008_without_affecting_others() {
    let server = Server::dev().await;
    let mut a = Client::dev(&server).await;
    let mut b = Client::dev(&server).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    a.expect("presence").await;
    let mut bad = Client::dev(&server).await;
    bad.subscribe("room").await;
    a.expect("presence").await;
    b.expect("presence").await;
    bad.ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    bad.expect_close(1008).await;
    // Others got its `left`, and still talk.
    assert_eq!(
        a.expect("presence").await["left"].as_array().map(Vec::len),
        Some(1)
    );
    b.expect("presence").await;
    a.send_json(json!({"type":"publish","channel":"room","data":"still here"}))
        .await;
    assert_eq!(b.expect("message").await["data"], "still here");
}

#[tokio::test]
async fn oversized_payloads_close_1009() {
    let server = Server::dev().await;
    let mut other = Client::dev(&server).await;
    // data over maxMessageSize in a frame under the WS cap → 1009 from the hub.
    let mut a = Client::dev(&server).await;
    let data = "x".repeat(65536); // serialized with quotes: 65538 bytes
    a.send_json(json!({"type":"publish","channel":"room","data":data}))
        .await;
    a.expect_close(1009).await;
    // Exactly at the cap passes, with a maximal envelope.
    let mut b = Client::dev(&server).await;
    let ok = "y".repeat(65534);
    let ack = b
        .request(json!({"type":"publish","channel":"é".repeat(256),"data":ok}))
        .await;
    assert_eq!(ack["type"], "ack");
    // The worst envelope a client writes: Python's json.dumps escapes every non-ASCII
    // character, so a channel of 256 astral characters is 256 surrogate pairs of `\uXXXX`
    // (3 KB); with a payload exactly at the cap and a long requestId it still passes.
    let channel = "\\ud83d\\ude00".repeat(256);
    let data = format!("\"{}\"", "z".repeat(65534));
    let rid = "r".repeat(128);
    b.send_text(format!(
        r#"{{"type":"publish","channel":"{channel}","data":{data},"requestId":"{rid}"}}"#
    ))
    .await;
    let ack = b.next().await;
    assert_eq!(
        (&ack["type"], &ack["requestId"]),
        (&json!("ack"), &json!(rid))
    );
    // A frame over the WebSocket cap → 1009 from the transport layer.
    let mut c = Client::dev(&server).await;
    c.send_text("x".repeat(65536 + 8192)).await;
    c.expect_close(1009).await;
    other.ping_pong().await;
}

#[tokio::test]
async fn plain_http_on_v1_and_unknown_paths_are_4xx() {
    let server = Server::dev().await;
    let (status, _) = http(server.addr, "GET", "/v1?key=pk_test_x", &[]).await;
    assert!((400..500).contains(&status), "{status}");
    let (status, _) = http(server.addr, "GET", "/v2", &[]).await;
    assert_eq!(status, 404);
    let (status, body) = http(server.addr, "GET", "/healthz", &[]).await;
    assert_eq!((status, body.trim()), (200, "ok"));
}

#[tokio::test]
async fn client_close_is_answered_with_a_close_frame() {
    let server = Server::dev().await;
    let mut c = Client::dev(&server).await;
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "client requested close".into(),
    }))
    .await
    .expect("send close");
    let started = std::time::Instant::now();
    // The server's answer arrives (tungstenite surfaces it as the end of the stream).
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
            .await
            .expect("server answered the close")
        {
            // A clean end after our close means the server's close frame arrived.
            None | Some(Ok(Message::Close(_))) => break,
            Some(Err(e)) => panic!("connection dropped without a close reply: {e}"),
            Some(Ok(_)) => continue,
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn every_client_close_code_is_an_ordinary_leave() {
    // The SDKs close with 1000 (`close()`), 4000 (their heartbeat gave up), 1001 (a page
    // going away) and 1009 (a frame too big for them): each is a plain disconnect that the
    // room sees as `left` and that frees the connection's slot at once.
    let server = Server::start(
        r#"
[[accounts]]
id = "pair"
max_connections = 2
[[keys]]
key = "pk_pair"
account = "pair"
"#,
    )
    .await;
    let mut watcher = Client::connect(&server.url("key=pk_pair")).await;
    watcher.subscribe("room").await;
    for code in [4000u16, 1001, 1009, 1000] {
        // The second slot is free again: a connection refused here would close 4010.
        let mut c = Client::connect(&server.url("key=pk_pair")).await;
        c.subscribe("room").await;
        assert_eq!(
            ids(&watcher.expect("presence").await["joined"]),
            vec![c.peer_id.clone()]
        );
        c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        }))
        .await
        .expect("send close");
        assert_eq!(
            ids(&watcher.expect("presence").await["left"]),
            vec![c.peer_id.clone()],
            "after a client close {code}"
        );
    }
}
