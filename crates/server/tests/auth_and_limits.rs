//! Credentials, close codes (spec §1.2, §1.12) and limits (spec §1.14) over real sockets.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Auth failures are close frames after a successful upgrade, with no welcome before them.
#[tokio::test]
async fn bad_credentials_close_after_upgrade() {
    let server = Server::start(&jwt_config(
        r#"
[[accounts]]
id = "gone"
suspended = true
[[keys]]
key = "pk_gone"
account = "gone"
"#,
    ))
    .await;
    let expired = mint(json!({"exp": now_secs() - 5}));
    let wrong_sig = {
        let claims: parlor_server::auth::Claims =
            serde_json::from_value(json!({"exp": now_secs() + 60})).expect("claims");
        parlor_server::auth::mint_token("sk_other_0123456789abcdef", "main", &claims).expect("m")
    };
    let cases = [
        ("key=nope".to_string(), 4001),
        (String::new(), 4001),
        ("token=garbage".to_string(), 4001),
        (format!("token={wrong_sig}"), 4001),
        (format!("token={expired}"), 4002),
        ("key=pk_gone".to_string(), 4012),
    ];
    for (query, code) in cases {
        let mut ws = raw(&server.url(&query)).await;
        let reason = expect_close(&mut ws, code).await;
        assert!(!reason.is_empty() && reason.len() <= 123 && reason.is_ascii());
        // Never echo the credential.
        assert!(!query.is_empty() || reason.contains("missing"));
        if let Some(cred) = query.split('=').nth(1) {
            assert!(!cred.is_empty() && !reason.contains(cred), "{reason}");
        }
    }
}

#[tokio::test]
async fn token_claims_scope_channels_and_actions_and_echo_metadata() {
    let server = Server::start(&jwt_config("")).await;
    let token = mint(json!({
        "exp": now_secs() + 600,
        "channels": ["team-*"],
        "permissions": ["subscribe", "presence"],
        "metadata": {"iceServers": [{"urls": "turn:turn.example:443?transport=tcp", "username": "u", "credential": "c"}]},
    }));
    let mut c = Client::connect(&server.url(&format!("token={token}"))).await;
    assert_eq!(
        c.welcome["metadata"]["iceServers"][0]["urls"],
        "turn:turn.example:443?transport=tcp"
    );
    assert_eq!(c.subscribe("team-a").await["joined"], json!([]));
    let e = c
        .request(json!({"type":"subscribe","channel":"room"}))
        .await;
    assert_eq!(e["code"], "channel_not_authorized");
    let e = c
        .request(json!({"type":"publish","channel":"team-a","data":1}))
        .await;
    assert_eq!(e["code"], "action_not_permitted");
    let e = c
        .request(json!({"type":"send","to":c.peer_id,"data":1}))
        .await;
    assert_eq!(e["code"], "action_not_permitted");
    // Pattern is checked before the action (spec §1.10 order).
    let e = c
        .request(json!({"type":"publish","channel":"room","data":1}))
        .await;
    assert_eq!(e["code"], "channel_not_authorized");
    // ... and both before the size limit: an oversized payload the token may not send is
    // refused with the error, and the connection stays.
    let big = "x".repeat(65_536); // over maxMessageSize, under the WebSocket frame cap
    let e = c
        .request(json!({"type":"publish","channel":"room","data":big}))
        .await;
    assert_eq!(e["code"], "channel_not_authorized");
    let e = c
        .request(json!({"type":"send","to":c.peer_id,"data":big}))
        .await;
    assert_eq!(e["code"], "action_not_permitted");
    c.ping_pong().await;
}

#[tokio::test]
async fn publishable_key_patterns_actions_and_welcome_metadata() {
    let server = Server::start(
        r#"
[[keys]]
key = "pk_live_rooms"
account = "acme"
channels = ["room-*"]
actions = ["subscribe", "presence", "send"]
metadata = { iceServers = [{ urls = "stun:stun.example.org:3478" }] }
"#,
    )
    .await;
    let mut c = Client::connect(&server.url("key=pk_live_rooms")).await;
    assert!(c.welcome["expiresAt"].is_null());
    assert_eq!(
        c.welcome["metadata"],
        json!({"iceServers":[{"urls":"stun:stun.example.org:3478"}]})
    );
    c.subscribe("room-1").await;
    let e = c
        .request(json!({"type":"subscribe","channel":"lobby"}))
        .await;
    assert_eq!(e["code"], "channel_not_authorized");
    let e = c
        .request(json!({"type":"publish","channel":"room-1","data":1}))
        .await;
    assert_eq!(e["code"], "action_not_permitted");
}

/// `[turn]`: each welcome gets its own short-lived TURN REST credential, for keys and token
/// secrets that allow it, and never over an `iceServers` list the issuer chose.
#[tokio::test]
async fn turn_credentials_are_minted_per_connection() {
    let server = Server::start(&jwt_config(
        r#"
[turn]
urls = ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"]
secret = "turn-shared-secret-0123"
ttl_secs = 600
[[keys]]
key = "pk_turn"
account = "acme"
metadata = { room = "lobby" }
[[keys]]
key = "pk_noturn"
account = "acme"
turn = false
[[keys]]
key = "pk_own"
account = "acme"
metadata = { iceServers = [{ urls = "stun:stun.example.org:3478" }] }
"#,
    ))
    .await;
    let check = |c: &Client| {
        let list = &c.welcome["metadata"]["iceServers"];
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{}", c.welcome);
        assert_eq!(list[0]["urls"].as_array().map(Vec::len), Some(2));
        let user = list[0]["username"].as_str().expect("username");
        let (exp, peer) = user.split_once(':').expect("<expiry>:<peer>");
        assert_eq!(peer, c.peer_id);
        let exp: u64 = exp.parse().expect("expiry");
        assert!(
            (now_secs() + 590..=now_secs() + 610).contains(&exp),
            "{exp}"
        );
        let cred = list[0]["credential"].as_str().expect("credential");
        assert_eq!(cred.len(), 28, "base64 of a 20-byte HMAC-SHA1");
        cred.to_owned()
    };
    let a = Client::connect(&server.url("key=pk_turn")).await;
    let b = Client::connect(&server.url("key=pk_turn")).await;
    assert_eq!(a.welcome["metadata"]["room"], "lobby");
    assert_ne!(check(&a), check(&b), "one credential per connection");

    let token = mint(json!({"exp": now_secs() + 600, "metadata": {"plan": "pro"}}));
    let t = Client::connect(&server.url(&format!("token={token}"))).await;
    check(&t);
    assert_eq!(t.welcome["metadata"]["plan"], "pro");

    let none = Client::connect(&server.url("key=pk_noturn")).await;
    assert!(none.welcome.get("metadata").is_none(), "{}", none.welcome);
    let own = Client::connect(&server.url("key=pk_own")).await;
    assert_eq!(
        own.welcome["metadata"],
        json!({"iceServers":[{"urls":"stun:stun.example.org:3478"}]})
    );
    // Other peers never see a credential: presence carries only public metadata.
    let mut a = a;
    let snap = a.subscribe("room").await;
    assert!(!snap.to_string().contains("credential"));
}

#[tokio::test]
async fn presence_permission_controls_roster_delivery() {
    let server = Server::start(
        r#"
[[keys]]
key = "pk_blind"
account = "dev"
actions = ["subscribe", "publish"]
"#,
    )
    .await;
    let mut blind = Client::connect(&server.url("key=pk_blind")).await;
    let mut seer = Client::dev(&server).await;
    seer.subscribe("room").await;
    let ack = blind
        .request(json!({"type":"subscribe","channel":"room"}))
        .await;
    assert_eq!(ack["type"], "ack");
    // No snapshot for a credential without presence, but others still see it join.
    assert_eq!(
        ids(&seer.expect("presence").await["joined"]),
        vec![blind.peer_id.clone()]
    );
    seer.send_json(json!({"type":"publish","channel":"room","data":"m"}))
        .await;
    assert_eq!(blind.expect("message").await["data"], "m");
}

#[tokio::test]
async fn concurrent_connection_cap_closes_4010() {
    let server = Server::start(
        r#"
[[accounts]]
id = "tiny"
max_connections = 1
[[keys]]
key = "pk_tiny"
account = "tiny"
"#,
    )
    .await;
    let first = Client::connect(&server.url("key=pk_tiny")).await;
    let mut ws = raw(&server.url("key=pk_tiny")).await;
    expect_close(&mut ws, 4010).await;
    drop(first);
    // The slot frees once the first socket is gone.
    let mut ok = None;
    for _ in 0..50 {
        let mut ws = raw(&server.url("key=pk_tiny")).await;
        if let Inbound::Frame(f) = next_inbound(&mut ws).await {
            ok = Some(f);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok.expect("slot freed")["type"], "welcome");
}

#[tokio::test]
async fn message_rate_bucket_closes_4011_but_pings_are_free() {
    let server = Server::start("[limits]\nrate_per_sec = 1\nrate_burst = 5").await;
    let mut c = Client::dev(&server).await;
    for _ in 0..20 {
        c.send_json(json!({"type":"ping"})).await;
    }
    for _ in 0..20 {
        c.expect("pong").await;
    }
    for i in 0..10 {
        c.send_json(json!({"type":"publish","channel":"r","data":i,"requestId":format!("p{i}")}))
            .await;
    }
    for _ in 0..5 {
        c.expect("ack").await;
    }
    c.expect_close(4011).await;
}

#[tokio::test]
async fn message_quota_errors_correlated_and_uncorrelated() {
    let server = Server::start(
        r#"
[[accounts]]
id = "metered"
message_quota = 2
quota_window_secs = 3600
[[keys]]
key = "pk_m"
account = "metered"
"#,
    )
    .await;
    let mut c = Client::connect(&server.url("key=pk_m")).await;
    for _ in 0..2 {
        assert_eq!(
            c.request(json!({"type":"publish","channel":"r","data":1}))
                .await["type"],
            "ack"
        );
    }
    let e = c
        .request(json!({"type":"publish","channel":"r","data":1}))
        .await;
    assert_eq!(e["code"], "over_message_quota");
    c.send_json(json!({"type":"send","to":c.peer_id,"data":1}))
        .await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "over_message_quota");
    assert!(e.get("requestId").is_none());
    // Not fatal: the connection stays.
    c.ping_pong().await;
}

#[tokio::test]
async fn subscription_cap_is_channel_limit_exceeded() {
    let server =
        Server::start("[limits]\nmax_subscriptions_per_connection = 3\nmax_channel_members = 2")
            .await;
    let mut c = Client::dev(&server).await;
    for ch in ["a", "b", "c"] {
        c.subscribe(ch).await;
    }
    let e = c.request(json!({"type":"subscribe","channel":"d"})).await;
    assert_eq!(e["code"], "channel_limit_exceeded");
    // A repeat subscribe at the cap is still fine (idempotent).
    c.subscribe("a").await;
    // Channel member cap.
    let mut d = Client::dev(&server).await;
    d.subscribe("a").await;
    c.expect("presence").await;
    let mut e2 = Client::dev(&server).await;
    let e = e2.request(json!({"type":"subscribe","channel":"a"})).await;
    assert_eq!(e["code"], "channel_limit_exceeded");
}

#[tokio::test]
async fn token_expiry_mid_session_closes_4002() {
    let server = Server::start(&jwt_config("")).await;
    let token = mint(json!({"exp": now_secs() + 2}));
    let mut c = Client::connect(&server.url(&format!("token={token}"))).await;
    c.ping_pong().await;
    c.expect_close(4002).await;
}
