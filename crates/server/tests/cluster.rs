//! Cluster mode against a real nats-server (Debian `nats-server`, started here): three
//! in-process nodes, raw protocol clients on different nodes.

mod common;

use std::time::Duration;

use serde_json::json;

use common::*;

/// Follow `c`'s presence for `channel` from its snapshot until its roster is `want`
/// (a member that subscribed on another node a moment ago arrives as a delta instead).
async fn settle(c: &mut Client, snapshot: &serde_json::Value, want: &[&String]) {
    let mut roster: std::collections::BTreeSet<String> =
        ids(&snapshot["joined"]).into_iter().collect();
    let want: std::collections::BTreeSet<String> = want.iter().map(|s| (*s).clone()).collect();
    while roster != want {
        let f = c.expect("presence").await;
        for j in ids(&f["joined"]) {
            assert!(roster.insert(j), "joined twice: {f}");
        }
        for l in ids(&f["left"]) {
            roster.remove(&l);
        }
    }
}

#[tokio::test]
async fn three_nodes_share_presence_broadcasts_and_directs() {
    let nats = Nats::start().await;
    let s = nodes(&nats, 3, "echo_publisher = false", 1000).await;
    let mut x = Client::dev(&s[0]).await;
    let mut y = Client::dev(&s[1]).await;
    let mut z = Client::dev(&s[2]).await;

    let snap = x.subscribe("room").await;
    assert_eq!(ids(&snap["joined"]), Vec::<String>::new());
    let snap = y.subscribe("room").await;
    let (xi, yi) = (x.peer_id.clone(), y.peer_id.clone());
    settle(&mut y, &snap, &[&xi]).await;
    settle(&mut x, &json!({"joined":[]}), &[&yi]).await;

    // z joins and at once signals x: x sees joined(z) before the direct (spec §1.8.3).
    z.send_json(json!({"type":"subscribe","channel":"room","requestId":"s"}))
        .await;
    z.send_json(json!({"type":"send","to":x.peer_id,"data":{"type":"rtc-ice","candidate":null}}))
        .await;
    let mut want = vec![x.peer_id.clone(), y.peer_id.clone()];
    want.sort();
    assert_eq!(z.expect("ack").await["requestId"], "s");
    assert_eq!(ids(&z.expect("presence").await["joined"]), want);
    let f = x.next().await;
    assert_eq!(f["type"], "presence", "{f}");
    assert_eq!(ids(&f["joined"]), [z.peer_id.clone()]);
    let f = x.next().await;
    assert_eq!(f["type"], "direct", "{f}");
    assert_eq!(f["from"], json!(z.peer_id));
    assert_eq!(
        ids(&y.expect("presence").await["joined"]),
        [z.peer_id.clone()]
    );

    // Broadcasts: every other member, once, in order.
    for i in 0..20 {
        y.send_json(json!({"type":"publish","channel":"room","data":{"i":i}}))
            .await;
    }
    for c in [&mut x, &mut z] {
        for i in 0..20 {
            let m = c.expect("message").await;
            assert_eq!(m["data"]["i"], i);
            assert_eq!(m["from"], json!(y.peer_id));
        }
    }
    // Directs across nodes, acked; unknown peers refused.
    let ack = x
        .request(json!({"type":"send","to":z.peer_id,"data":"hello"}))
        .await;
    assert_eq!(ack["type"], "ack");
    let d = z.expect("direct").await;
    assert_eq!(
        (d["from"].clone(), d["data"].clone()),
        (json!(x.peer_id), json!("hello"))
    );
    let e = x
        .request(json!({"type":"send","to":"p_0000000000000000000000","data":1}))
        .await;
    assert_eq!(e["code"], "peer_not_found");

    // A disconnect on one node is a `left` on the others.
    let z_id = z.peer_id.clone();
    drop(z);
    assert_eq!(
        ids(&x.expect("presence").await["left"]),
        std::slice::from_ref(&z_id)
    );
    assert_eq!(ids(&y.expect("presence").await["left"]), [z_id]);
    for server in s {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_stopping_node_leaves_at_once_and_limits_span_nodes() {
    let nats = Nats::start().await;
    let extra = r#"
[[accounts]]
id = "dev"
max_connections = 2
"#;
    // A node timeout far beyond the test: every `left` seen here came from the node itself.
    let mut s = nodes(&nats, 2, extra, 60_000).await;
    let mut x = Client::dev(&s[0]).await;
    let mut y = Client::dev(&s[1]).await;
    x.subscribe("r").await;
    let snap = y.subscribe("r").await;
    let (xi, yi) = (x.peer_id.clone(), y.peer_id.clone());
    settle(&mut y, &snap, &[&xi]).await;
    settle(&mut x, &json!({"joined":[]}), &[&yi]).await;

    // The account's two connections are on two nodes: a third is refused on either.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = common::raw(&s[0].url(&format!("key={DEV_KEY}"))).await;
    expect_close(&mut third, 4010).await;

    // Graceful stop of node 1: y gets going_away (and goes, as SDKs do); x sees y leave
    // long before the node timeout could have said so.
    let node1 = s.pop().expect("node");
    let stopping = tokio::spawn(node1.shutdown());
    y.expect("going_away").await;
    drop(y);
    let left = x.expect("presence").await;
    assert_eq!(ids(&left["left"]), [yi]);
    stopping.await.expect("stopped");
    s.pop().expect("node").shutdown().await;
}

#[tokio::test]
async fn an_unreachable_nats_fails_startup_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut config = parlor_server::config::Config::from_toml(&format!(
        "[cluster]\nnats_url = \"nats://admin:hunter2@127.0.0.1:{port}\"\n"
    ))
    .expect("config");
    config.add_dev_key(DEV_KEY);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = parlor_server::serve(listener, config, std::future::pending())
        .await
        .expect_err("no NATS there");
    let msg = err.to_string();
    assert!(msg.contains("cannot connect to NATS"), "{msg}");
    assert!(!msg.contains("hunter2"), "credentials leaked: {msg}");
}
