//! Agent dispatch across a cluster: two in-process nodes on a real nats-server (Debian
//! `nats-server`, started here), workers and humans on different nodes over real sockets.
//! The oldest node leads dispatch; the others follow and take over when it goes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use common::*;

const ADMIN: &str = "admin_secret_0123456789";

/// A two-node cluster with `[agents]`, started one after the other so the first is the
/// oldest (the leader once settled).
async fn two_nodes(nats: &Nats) -> (Server, Server) {
    let extra =
        agents_config("").replace("[agents]", &format!("admin_secret = \"{ADMIN}\"\n[agents]"));
    let config = node_config(nats, &extra, 600);
    let a = Server::start(&config).await;
    // Start times are in ms: keep them apart so the first is the oldest.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = Server::start(&config).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    for s in [&a, &b] {
        while cluster_nodes(s.addr).await != 1 {
            assert!(tokio::time::Instant::now() < deadline, "nodes never synced");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (a, b)
}

async fn dispatch_state(addr: SocketAddr) -> Value {
    let (status, text) = http_body(addr, "GET", "/admin/dispatch", ADMIN, "").await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).expect("json")
}

/// Wait until `leader` leads and every node in `all` knows `workers` workers.
async fn settled(leader: &Server, all: &[&Server], workers: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let l = dispatch_state(leader.addr).await;
        let mut ok = l["leads"] == true;
        for s in all {
            let v = dispatch_state(s.addr).await;
            ok &= v["workers"] == workers && v["leader"] == l["node"];
        }
        if ok {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dispatch never settled: {l}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_human_on_one_node_gets_one_agent_from_a_worker_on_another() {
    let nats = Nats::start().await;
    let (a, b) = two_nodes(&nats).await;
    // The worker is on the follower; the human too: the leader decides from what the
    // cluster tells it, and its offer and cancel travel over NATS.
    let mut worker = Worker::register(&b, 2).await;
    settled(&a, &[&a, &b], 1).await;
    let follower = dispatch_state(b.addr).await;
    assert_eq!(follower["leads"], false);

    let mut human = Client::dev(&b).await;
    let joined_at = std::time::Instant::now();
    human.subscribe("call-1").await;
    let offer = worker.expect("offer").await;
    // Measured, not asserted: follower → leader → follower → worker, two NATS hops.
    println!(
        "cross-node dispatch: subscribe to offer at the worker: {:.1} ms",
        joined_at.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(
        (&offer["channel"], &offer["attempt"]),
        (&json!("call-1"), &json!(0))
    );
    let job = offer["job"].as_str().expect("job").to_owned();
    worker.send(json!({"type":"accept","job":job})).await;
    // The agent joins the other node with the token the leader minted.
    let agent = agent_joins(&a, &offer).await;
    let joined = human.expect("presence").await;
    assert_eq!(ids(&joined["joined"]), vec![agent.peer_id.clone()]);
    assert_eq!(joined["joined"][0]["metadata"]["agentJob"], job);
    // Nothing dispatched twice.
    worker.expect_silence(Duration::from_millis(800)).await;
    let rooms = dispatch_state(a.addr).await["rooms"].clone();
    assert_eq!(rooms[0]["job"], job);
    assert_eq!(rooms[0]["phase"], "running");

    // A second human on the leader's node: still one agent.
    let mut human2 = Client::dev(&a).await;
    human2.subscribe("call-1").await;
    worker.expect_silence(Duration::from_millis(400)).await;

    // Both leave: after the grace (1 s) the job is cancelled at the worker.
    drop(human);
    drop(human2);
    let cancel = worker.expect("cancel").await;
    assert_eq!(cancel["job"], job);
}

#[tokio::test]
async fn the_leader_stopping_hands_dispatch_over_and_nothing_is_dispatched_twice() {
    let nats = Nats::start().await;
    let (a, b) = two_nodes(&nats).await;
    let mut worker = Worker::register(&b, 2).await;
    settled(&a, &[&a, &b], 1).await;
    let leader_id = dispatch_state(a.addr).await["node"].clone();

    let mut human = Client::dev(&b).await;
    human.subscribe("call-2").await;
    let offer = worker.expect("offer").await;
    let job = offer["job"].as_str().expect("job").to_owned();
    worker.send(json!({"type":"accept","job":job})).await;
    let _agent = agent_joins(&b, &offer).await;
    human.expect("presence").await;

    // The leader stops (a redeploy): the follower takes over and adopts the running job.
    a.shutdown().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let state = loop {
        let v = dispatch_state(b.addr).await;
        if v["leads"] == true {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "no takeover: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(state["leader"], leader_id);
    assert_eq!(state["rooms"][0]["job"], job, "{state}");
    assert_eq!(state["rooms"][0]["phase"], "running", "{state}");
    worker.expect_silence(Duration::from_millis(800)).await;

    // The new leader ends it as the old one would have.
    drop(human);
    let cancel = worker.expect("cancel").await;
    assert_eq!(cancel["job"], job);
}

#[tokio::test]
async fn a_worker_lost_on_one_node_fails_over_to_a_worker_on_the_other() {
    let nats = Nats::start().await;
    let (a, b) = two_nodes(&nats).await;
    let mut wa = Worker::register(&a, 2).await;
    let mut wb = Worker::register(&b, 2).await;
    settled(&a, &[&a, &b], 2).await;

    let mut human = Client::dev(&b).await;
    human.subscribe("call-3").await;
    // One of the two gets the offer (the least loaded; ties to the lower id).
    let (first, offer, other, other_node) = tokio::select! {
        f = wa.next() => (wa, f, wb, &b),
        f = wb.next() => (wb, f, wa, &a),
    };
    assert_eq!(offer["type"], "offer", "{offer}");
    let job = offer["job"].as_str().expect("job").to_owned();
    let mut first = first;
    first.send(json!({"type":"accept","job":job})).await;
    let agent = agent_joins(&a, &offer).await;
    human.expect("presence").await;

    // Its process dies: the worker link and its agent's connection drop together.
    drop(first);
    drop(agent);
    let mut other = other;
    let offer2 = other.expect("offer").await;
    assert_eq!(offer2["channel"], "call-3");
    assert_eq!(offer2["attempt"], 1);
    assert_ne!(offer2["job"], job);
    let job2 = offer2["job"].as_str().expect("job").to_owned();
    other.send(json!({"type":"accept","job":job2})).await;
    let agent2 = agent_joins(other_node, &offer2).await;
    // The human sees the old agent leave and the new one join.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let f = human.expect("presence").await;
        if ids(&f["joined"]).contains(&agent2.peer_id) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
    other.expect_silence(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn an_explicit_request_on_a_follower_is_served_by_the_leader() {
    let nats = Nats::start().await;
    let (a, b) = two_nodes(&nats).await;
    let mut worker = Worker::register(&a, 2).await;
    settled(&a, &[&a, &b], 1).await;
    let body = r#"{"account":"dev","channel":"lobby","agent":"voice"}"#;
    let (status, _) = http_body(b.addr, "POST", "/admin/dispatch", ADMIN, body).await;
    assert_eq!(status, 202);
    let offer = worker.expect("offer").await;
    assert_eq!(offer["channel"], "lobby");
    worker.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_draining_worker_on_a_follower_gets_no_new_rooms_and_keeps_its_calls() {
    let nats = Nats::start().await;
    let (a, b) = two_nodes(&nats).await;
    let mut wb = Worker::register(&b, 4).await;
    settled(&a, &[&a, &b], 1).await;
    let mut human = Client::dev(&b).await;
    human.subscribe("call-5").await;
    let offer = wb.expect("offer").await;
    let job = offer["job"].as_str().expect("job").to_owned();
    wb.send(json!({"type":"accept","job":job})).await;
    let _agent = agent_joins(&b, &offer).await;

    // It drains (SIGTERM in `parlor worker`): the leader learns it through b's announcement.
    wb.send(json!({"type":"status","load":0.1,"draining":true}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut human2 = Client::dev(&a).await;
    human2.subscribe("call-6").await;
    // No offer to the draining worker, and its running call is left alone; the new room
    // waits for a worker.
    wb.expect_silence(Duration::from_millis(800)).await;
    let mut wa = Worker::register(&a, 4).await;
    let offer2 = wa.expect("offer").await;
    assert_eq!(
        offer2["channel"], "call-6",
        "the new room goes to the new worker"
    );
    drop(human);
    let cancel = wb.expect("cancel").await;
    assert_eq!(cancel["job"], job);
    drop(human2);
}
