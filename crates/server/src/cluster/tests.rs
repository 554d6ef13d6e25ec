//! Several hubs wired together by hand: every event one node queues is delivered to its
//! destination in order, exactly as the NATS driver does, but deterministically.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::Notify;

use parlor_protocol::parse_client_frame;

use super::replica::Replica;
use super::wire::{self, Event, NodeId};
use crate::auth::{Actions, Grant};
use crate::config::Config;
use crate::hub::{Connected, Hub, Next};
use crate::metrics::Metrics;

const TIMEOUT_MS: u64 = 3000;

struct Cluster {
    nodes: Vec<(NodeId, Hub)>,
    now: u64,
}

struct Client {
    node: usize,
    c: Connected,
}

fn config() -> Config {
    Config::from_toml(
        r#"
echo_publisher = false
[[accounts]]
id = "small"
max_connections = 2
message_quota = 3
quota_window_secs = 3600
"#,
    )
    .expect("config")
}

fn grant(account: &str, meta: Option<&str>) -> Grant {
    Grant {
        account: Arc::from(account),
        channels: vec!["*".to_owned()].into(),
        actions: Actions::ALL,
        peer_metadata: meta.map(|m| RawValue::from_string(m.to_owned()).expect("json")),
        welcome_metadata: None,
        turn: true,
        job: None,
        agent: None,
        expires_at: None,
    }
}

impl Cluster {
    /// `n` nodes that have discovered each other through heartbeats.
    fn new(n: usize) -> Cluster {
        let mut cl = Cluster {
            nodes: (0..n)
                .map(|i| {
                    let id = 0x1000 + i as NodeId;
                    let mut hub = Hub::new(&config(), Arc::new(Metrics::new()));
                    hub.enable_cluster(Replica::new(
                        id,
                        TIMEOUT_MS,
                        1 << 20,
                        Arc::new(Notify::new()),
                    ));
                    (id, hub)
                })
                .collect(),
            now: 1_000_000,
        };
        cl.heartbeats();
        cl
    }

    fn heartbeats(&mut self) {
        let ids: Vec<NodeId> = self.nodes.iter().map(|(id, _)| *id).collect();
        for from in &ids {
            self.heartbeat_from(*from);
        }
    }

    fn heartbeat_from(&mut self, from: NodeId) {
        let beat = wire::batches(from, [Event::Heartbeat.to_json().as_str()], usize::MAX);
        for (_, hub) in &mut self.nodes {
            hub.apply_cluster(&beat[0], self.now).expect("apply");
        }
        self.pump();
    }

    /// Deliver queued events until the cluster is quiet.
    fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let from = self.nodes[i].0;
                let out = self.nodes[i].1.take_cluster_out();
                let mut per: BTreeMap<NodeId, Vec<Arc<str>>> = BTreeMap::new();
                for (to, ev) in out {
                    per.entry(to).or_default().push(ev);
                }
                for (to, evs) in per {
                    moved = true;
                    for b in wire::batches(from, evs.iter().map(|e| &**e), 4096) {
                        if let Some((_, hub)) = self.nodes.iter_mut().find(|(id, _)| *id == to) {
                            hub.apply_cluster(&b, self.now).expect("apply");
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("cluster never went quiet");
    }

    fn join(&mut self, node: usize, account: &str, meta: Option<&str>) -> Client {
        let c = self.nodes[node]
            .1
            .connect(grant(account, meta), self.now)
            .expect("connect");
        let cl = Client { node, c };
        assert_eq!(cl.drain()[0]["type"], "welcome");
        self.pump();
        cl
    }

    fn req(&mut self, c: &Client, text: &str) {
        let f = parse_client_frame(text).expect("valid frame");
        self.nodes[c.node].1.handle(c.c.conn, f, self.now);
        self.pump();
    }

    fn tick(&mut self) {
        for (_, hub) in &mut self.nodes {
            hub.cluster_tick(self.now);
        }
        self.pump();
    }
}

impl Client {
    fn drain(&self) -> Vec<Value> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(self.c.outbox.next());
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(Next::Frames(frames)) => frames
                .iter()
                .map(|f| serde_json::from_str(f).expect("json"))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn id(&self) -> &str {
        &self.c.peer_id
    }
}

fn types(v: &[Value]) -> Vec<&str> {
    v.iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect()
}

fn joined(v: &Value) -> Vec<&str> {
    v["joined"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["peerId"].as_str())
        .collect()
}

fn left(v: &Value) -> Vec<&str> {
    v["left"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["peerId"].as_str())
        .collect()
}

#[test]
fn presence_spans_nodes_with_state_from_before_discovery() {
    // x subscribes on a node that is alone; the others appear later and get its state.
    let mut cl = Cluster {
        nodes: Vec::new(),
        now: 1_000_000,
    };
    let mut first = Hub::new(&config(), Arc::new(Metrics::new()));
    first.enable_cluster(Replica::new(
        1,
        TIMEOUT_MS,
        1 << 20,
        Arc::new(Notify::new()),
    ));
    cl.nodes.push((1, first));
    let x = cl.join(0, "dev", Some(r#"{"name":"x"}"#));
    cl.req(
        &x,
        r#"{"type":"subscribe","channel":"room","requestId":"1"}"#,
    );
    assert_eq!(types(&x.drain()), ["ack", "presence"]);
    for id in [2, 3] {
        let mut hub = Hub::new(&config(), Arc::new(Metrics::new()));
        hub.enable_cluster(Replica::new(
            id,
            TIMEOUT_MS,
            1 << 20,
            Arc::new(Notify::new()),
        ));
        cl.nodes.push((id, hub));
    }
    cl.heartbeats();

    let y = cl.join(1, "dev", None);
    cl.req(
        &y,
        r#"{"type":"subscribe","channel":"room","requestId":"2"}"#,
    );
    let fy = y.drain();
    assert_eq!(types(&fy), ["ack", "presence"]);
    assert_eq!(joined(&fy[1]), [x.id()]);
    assert_eq!(fy[1]["joined"][0]["metadata"]["name"], "x");
    let fx = x.drain();
    assert_eq!(types(&fx), ["presence"]);
    assert_eq!(joined(&fx[0]), [y.id()]);

    let z = cl.join(2, "dev", None);
    cl.req(
        &z,
        r#"{"type":"subscribe","channel":"room","requestId":"3"}"#,
    );
    let fz = z.drain();
    let mut roster = joined(&fz[1]);
    roster.sort();
    let mut want = vec![x.id(), y.id()];
    want.sort();
    assert_eq!(roster, want);
    assert_eq!(joined(&x.drain()[0]), [z.id()]);
    assert_eq!(joined(&y.drain()[0]), [z.id()]);

    // Unsubscribe and disconnect are seen everywhere, once.
    cl.req(&z, r#"{"type":"unsubscribe","channel":"room"}"#);
    assert_eq!(left(&x.drain()[0]), [z.id()]);
    assert_eq!(left(&y.drain()[0]), [z.id()]);
    let y_id = y.id().to_owned();
    cl.nodes[1].1.disconnect(y.c.conn, 0);
    cl.pump();
    let fx = x.drain();
    assert_eq!(fx.len(), 1);
    assert_eq!(left(&fx[0]), [y_id.as_str()]);
    assert!(z.drain().is_empty(), "z left the channel");
}

#[test]
fn broadcasts_and_directs_cross_nodes_once_in_order() {
    let mut cl = Cluster::new(3);
    let x = cl.join(0, "dev", Some(r#"{"n":1}"#));
    let y = cl.join(1, "dev", None);
    let z = cl.join(2, "dev", None);
    cl.req(&x, r#"{"type":"subscribe","channel":"r"}"#);
    cl.req(
        &y,
        r#"{"type":"subscribe","channel":"r","includeSenderMetadata":true}"#,
    );
    cl.req(&z, r#"{"type":"subscribe","channel":"r"}"#);
    for c in [&x, &y, &z] {
        c.drain();
    }
    for i in 0..5 {
        cl.req(
            &x,
            &format!(r#"{{"type":"publish","channel":"r","data":{{"i":{i}}},"requestId":"p{i}"}}"#),
        );
    }
    assert_eq!(types(&x.drain()), ["ack"; 5], "no echo, acks only");
    for (c, stamped) in [(&y, true), (&z, false)] {
        let f = c.drain();
        assert_eq!(f.len(), 5);
        for (i, m) in f.iter().enumerate() {
            assert_eq!(m["type"], "message");
            assert_eq!(m["from"], x.id());
            assert_eq!(m["data"]["i"], i);
            assert_eq!(m.get("fromMetadata").is_some(), stamped);
        }
    }

    // A direct to a peer on another node; fromMetadata because y asked for it on a channel.
    cl.req(
        &x,
        &format!(
            r#"{{"type":"send","to":"{}","data":"hi","requestId":"d"}}"#,
            y.id()
        ),
    );
    assert_eq!(types(&x.drain()), ["ack"]);
    let fy = y.drain();
    assert_eq!(types(&fy), ["direct"]);
    assert_eq!(fy[0]["from"], x.id());
    assert_eq!(fy[0]["fromMetadata"]["n"], 1);
    cl.req(
        &y,
        r#"{"type":"send","to":"p_nobody","data":1,"requestId":"e"}"#,
    );
    let fy = y.drain();
    assert_eq!(fy[0]["code"], "peer_not_found");
    // Another tenant cannot reach it.
    let other = cl.join(2, "small", None);
    cl.req(
        &other,
        &format!(
            r#"{{"type":"send","to":"{}","data":1,"requestId":"t"}}"#,
            x.id()
        ),
    );
    assert_eq!(other.drain()[0]["code"], "peer_not_found");
}

#[test]
fn joiner_signals_reach_members_after_its_joined_delta() {
    // Spec §1.8.3 across nodes: y joins on node 1 and at once sends x (node 0) a direct;
    // x must see joined(y) first. x answers; y must have its snapshot first.
    let mut cl = Cluster::new(2);
    let x = cl.join(0, "dev", None);
    cl.req(&x, r#"{"type":"subscribe","channel":"r"}"#);
    x.drain();
    let y = cl.join(1, "dev", None);
    let sub =
        parse_client_frame(r#"{"type":"subscribe","channel":"r","requestId":"1"}"#).expect("frame");
    let send_text = format!(r#"{{"type":"send","to":"{}","data":"offer"}}"#, x.id());
    let send = parse_client_frame(&send_text).expect("frame");
    cl.nodes[1].1.handle(y.c.conn, sub, cl.now);
    cl.nodes[1].1.handle(y.c.conn, send, cl.now);
    cl.pump();
    let fx = x.drain();
    assert_eq!(types(&fx), ["presence", "direct"]);
    assert_eq!(joined(&fx[0]), [y.id()]);
    cl.req(
        &x,
        &format!(r#"{{"type":"send","to":"{}","data":"answer"}}"#, y.id()),
    );
    assert_eq!(types(&y.drain()), ["ack", "presence", "direct"]);
}

#[test]
fn a_silent_node_leaves_presence_after_the_timeout_and_comes_back() {
    let mut cl = Cluster::new(2);
    let x = cl.join(0, "dev", None);
    let y = cl.join(1, "dev", None);
    cl.req(&x, r#"{"type":"subscribe","channel":"r"}"#);
    cl.req(&y, r#"{"type":"subscribe","channel":"r"}"#);
    x.drain();
    y.drain();

    cl.now += TIMEOUT_MS / 2;
    cl.heartbeat_from(0x1001);
    cl.now += TIMEOUT_MS / 2 + 1;
    cl.tick();
    assert!(x.drain().is_empty(), "node 1 beat recently");
    let fy = y.drain();
    assert_eq!(left(&fy[0]), [x.id()], "node 0 went silent");

    // Node 0 is back: node 1 rediscovers it and gets its full state again.
    cl.heartbeat_from(0x1000);
    assert_eq!(joined(&y.drain()[0]), [x.id()]);
    assert!(
        x.drain().is_empty(),
        "node 0 never lost node 1: no duplicate joined"
    );
    cl.req(&x, r#"{"type":"publish","channel":"r","data":1}"#);
    assert_eq!(types(&y.drain()), ["message"]);
}

#[test]
fn goodbye_removes_a_node_at_once() {
    let mut cl = Cluster::new(2);
    let x = cl.join(0, "dev", None);
    let y = cl.join(1, "dev", None);
    cl.req(&x, r#"{"type":"subscribe","channel":"r"}"#);
    cl.req(&y, r#"{"type":"subscribe","channel":"r"}"#);
    y.drain();
    cl.nodes[0].1.cluster_bye();
    cl.pump();
    assert_eq!(left(&y.drain()[0]), [x.id()]);
    cl.req(
        &y,
        &format!(
            r#"{{"type":"send","to":"{}","data":1,"requestId":"s"}}"#,
            x.id()
        ),
    );
    assert_eq!(y.drain()[0]["code"], "peer_not_found");
}

#[test]
fn limits_and_quotas_count_across_nodes() {
    let mut cl = Cluster::new(2);
    // max_connections = 2 for "small", one on each node: the third is refused anywhere.
    let a = cl.join(0, "small", None);
    let _b = cl.join(1, "small", None);
    let refused = cl.nodes[0].1.connect(grant("small", None), cl.now);
    assert_eq!(refused.err().map(|e| e.code.0), Some(4010));
    // message_quota = 3 per window: two on node 0, announced, then node 1 has one left.
    cl.req(&a, r#"{"type":"publish","channel":"q","data":1}"#);
    cl.req(&a, r#"{"type":"publish","channel":"q","data":1}"#);
    cl.tick();
    let b = &_b;
    cl.req(
        b,
        r#"{"type":"publish","channel":"q","data":1,"requestId":"1"}"#,
    );
    cl.req(
        b,
        r#"{"type":"publish","channel":"q","data":1,"requestId":"2"}"#,
    );
    let fb = b.drain();
    assert_eq!(fb[0]["type"], "ack");
    assert_eq!(fb[1]["code"], "over_message_quota");
}

#[test]
fn a_roster_that_overshoots_the_cap_across_nodes_still_gets_one_snapshot() {
    // Each node checks the roster cap against its own view; joins on two nodes at once
    // (nothing delivered between them) overshoot it together: 2 × 80 members with 8 KB of
    // metadata is over the 1 MiB frame cap. A repeat subscribe still gets its snapshot:
    // one frame within the cap, every other member's id in it.
    let mut cl = Cluster::new(2);
    let meta = format!(r#"{{"pad":"{}"}}"#, "m".repeat(8000));
    let clients: Vec<Client> = (0..160)
        .map(|i| cl.join(i % 2, "dev", Some(&meta)))
        .collect();
    for c in &clients {
        let f = parse_client_frame(r#"{"type":"subscribe","channel":"big","requestId":"s"}"#)
            .expect("frame");
        cl.nodes[c.node].1.handle(c.c.conn, f, cl.now);
    }
    cl.pump();
    let c = &clients[0];
    for c in &clients {
        let _ = c.drain();
    }
    cl.req(
        c,
        r#"{"type":"subscribe","channel":"big","requestId":"again"}"#,
    );
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut next = std::pin::pin!(c.c.outbox.next());
    let std::task::Poll::Ready(Next::Frames(frames)) = next.as_mut().poll(&mut cx) else {
        panic!("nothing queued");
    };
    assert_eq!(frames.len(), 2, "ack and one snapshot");
    assert!(frames[1].len() <= parlor_protocol::event::MAX_OUTBOUND_FRAME);
    let snap: Value = serde_json::from_str(&frames[1]).expect("json");
    let mut ids = joined(&snap);
    ids.sort_unstable();
    let mut want: Vec<&str> = clients[1..].iter().map(Client::id).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    let with_meta = snap["joined"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e.get("metadata").is_some())
        .count();
    assert!((100..159).contains(&with_meta), "{with_meta} with metadata");
}

#[test]
fn an_admin_kick_reaches_the_peer_on_its_node() {
    let mut cl = Cluster::new(2);
    let y = cl.join(1, "dev", None);
    assert!(cl.nodes[0].1.admin_disconnect(y.id()));
    cl.pump();
    assert!(y.c.outbox.is_closing());
    assert!(!cl.nodes[0].1.admin_disconnect("p_unknown"));
}

#[test]
fn garbage_from_the_bus_is_refused_without_effect() {
    let mut cl = Cluster::new(2);
    let x = cl.join(0, "dev", None);
    cl.req(&x, r#"{"type":"subscribe","channel":"r"}"#);
    x.drain();
    let hub = &mut cl.nodes[0].1;
    for bad in [
        &b"not json"[..],
        br#"{"from":"zz","ev":[]}"#,
        br#"{"from":"0000000000001001","ev":[{"msg":{"t":"dev"}}]}"#,
        br#"{"from":"0000000000001001","ev":"hb"}"#,
    ] {
        assert!(hub.apply_cluster(bad, cl.now).is_err());
    }
    assert!(x.drain().is_empty());
}
