//! Cluster mode: several `parlor serve` nodes share tenants, channels and presence through
//! NATS (see `docs/cluster.md` for the design and its failure modes).
//!
//! * [`wire`]: the events nodes exchange (JSON batches on NATS subjects);
//! * [`replica`]: what a node knows of the others (pure state → effects, unit tested);
//! * [`dispatch`]: agent dispatch across nodes: who leads it, every node's workers (pure);
//! * this file: the `[cluster]` configuration and the NATS driver, the only IO.
//!
//! Every node owns its connections and tells every other node, in order, about each
//! connect, subscribe, unsubscribe and disconnect; broadcasts go to the nodes that have
//! members of the channel, directs to the node that holds the target. Everything one node
//! sends another travels on that node's own subject from one NATS connection, so it arrives
//! in the order the sender's hub produced it: that is what keeps spec §1.8.3 across nodes.

pub mod dispatch;
pub mod replica;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::App;
use wire::NodeId;

/// The `[cluster]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for several; user and
    /// password or token may be given in the URL and are never logged).
    pub nats_url: String,
    /// Cluster name: the subject prefix `parlor.<name>.`, so clusters sharing a NATS stay
    /// apart. Letters, digits, `-` and `_`.
    #[serde(default = "default_name")]
    pub name: String,
    /// How often a node announces itself.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// A node silent for this long is dead: its peers leave presence everywhere else.
    #[serde(default = "default_node_timeout_ms")]
    pub node_timeout_ms: u64,
    /// Bytes of events waiting for NATS before this node gives up on the backlog and
    /// resynchronizes with the cluster.
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: usize,
}

fn default_name() -> String {
    "default".to_owned()
}
fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_node_timeout_ms() -> u64 {
    3000
}
fn default_queue_bytes() -> usize {
    64 << 20
}

impl ClusterConfig {
    /// A cluster on this NATS with the defaults.
    pub fn new(nats_url: impl Into<String>) -> ClusterConfig {
        ClusterConfig {
            nats_url: nats_url.into(),
            name: default_name(),
            heartbeat_ms: default_heartbeat_ms(),
            node_timeout_ms: default_node_timeout_ms(),
            queue_bytes: default_queue_bytes(),
        }
    }

    /// Check ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("cluster.name must be 1-64 letters, digits, '-' or '_'".into());
        }
        if !(50..=60_000).contains(&self.heartbeat_ms) {
            return Err("cluster.heartbeat_ms must be between 50 and 60000".into());
        }
        if self.node_timeout_ms < 2 * self.heartbeat_ms {
            return Err(
                "cluster.node_timeout_ms must be at least twice cluster.heartbeat_ms".into(),
            );
        }
        if self.queue_bytes < 1 << 20 {
            return Err("cluster.queue_bytes must be at least 1 MiB".into());
        }
        if self.nats_url.trim().is_empty() {
            return Err("cluster.nats_url is empty".into());
        }
        Ok(())
    }

    fn subject_all(&self) -> String {
        format!("parlor.{}.all", self.name)
    }

    fn subject_node(&self, n: NodeId) -> String {
        format!("parlor.{}.node.{}", self.name, wire::node_str(n))
    }
}

/// `nats://user:pass@host` → `nats://***@host`, for errors and logs.
pub fn scrub_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            (None, Some(at)) => format!("***{}", &u[at..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` with every user-info part of `urls` (`user:pass@`) masked.
fn scrub_secrets(text: &str, urls: &str) -> String {
    let mut out = text.to_owned();
    for u in urls.split(',') {
        let start = u.find("://").map_or(0, |s| s + 3);
        if let Some(at) = u.rfind('@')
            && at > start
        {
            out = out.replace(&u[start..at], "***");
        }
    }
    out
}

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS was unreachable or refused us.
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect {
        /// The URL, credentials scrubbed.
        url: String,
        /// Why.
        reason: String,
    },
    /// Subscribing failed.
    #[error("NATS subscribe failed: {0}")]
    Subscribe(String),
}

/// A node connected to NATS and subscribed, ready to run.
pub(crate) struct Node {
    config: ClusterConfig,
    client: async_nats::Client,
    me: NodeId,
    all: async_nats::Subscriber,
    inbox: async_nats::Subscriber,
    pub(crate) notify: Arc<Notify>,
}

impl Node {
    /// Connect and subscribe. Fails (rather than retrying forever) when NATS is not there at
    /// startup, so a misconfigured node says so at once.
    pub(crate) async fn start(config: &ClusterConfig) -> Result<Node, ClusterError> {
        let mut bytes = [0u8; 8];
        let me = match getrandom::fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(e) => {
                return Err(ClusterError::Connect {
                    url: scrub_url(&config.nats_url),
                    reason: format!("no randomness for a node id: {e}"),
                });
            }
        };
        let options = async_nats::ConnectOptions::new()
            .name(format!("parlor-{}", wire::node_str(me)))
            .connection_timeout(Duration::from_secs(5))
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((attempt as u64 * 250).min(2000))
            });
        let client = async_nats::connect_with_options(config.nats_url.as_str(), options)
            .await
            .map_err(|e| ClusterError::Connect {
                url: scrub_url(&config.nats_url),
                reason: scrub_secrets(&e.to_string(), &config.nats_url),
            })?;
        let all = client
            .subscribe(config.subject_all())
            .await
            .map_err(|e| ClusterError::Subscribe(e.to_string()))?;
        let inbox = client
            .subscribe(config.subject_node(me))
            .await
            .map_err(|e| ClusterError::Subscribe(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| ClusterError::Subscribe(e.to_string()))?;
        tracing::info!(
            node = %wire::node_str(me),
            cluster = %config.name,
            nats = %scrub_url(&config.nats_url),
            "cluster mode: connected to NATS"
        );
        Ok(Node {
            config: config.clone(),
            client,
            me,
            all,
            inbox,
            notify: Arc::new(Notify::new()),
        })
    }

    pub(crate) fn me(&self) -> NodeId {
        self.me
    }

    /// Move events between NATS and the hub until `stop` fires, then say goodbye.
    pub(crate) async fn run(mut self, app: Arc<App>, stop: Arc<Notify>) {
        let heartbeat = wire::batches(
            self.me,
            [wire::Event::Heartbeat.to_json().as_str()],
            usize::MAX,
        )
        .pop()
        .unwrap_or_default();
        let all_subject = self.config.subject_all();
        let mut beat = tokio::time::interval(Duration::from_millis(self.config.heartbeat_ms));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = stop.notified();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                m = self.inbox.next() => match m {
                    Some(m) => self.apply(&app, &m.payload),
                    None => break,
                },
                m = self.all.next() => match m {
                    Some(m) => self.apply(&app, &m.payload),
                    None => break,
                },
                _ = self.notify.notified() => {
                    let out = app.hub().take_cluster_out();
                    self.publish(out).await;
                }
                _ = beat.tick() => {
                    if let Err(e) = self.client.publish(all_subject.clone(), heartbeat.clone().into()).await {
                        tracing::warn!(error = %e, "cluster heartbeat not sent");
                    }
                }
                _ = tick.tick() => app.hub().cluster_tick(crate::unix_ms()),
                _ = &mut stopped => break,
            }
        }
        let out = {
            let mut hub = app.hub();
            hub.cluster_bye();
            hub.take_cluster_out()
        };
        self.publish(out).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
        tracing::info!(node = %wire::node_str(self.me), "left the cluster");
    }

    fn apply(&self, app: &App, payload: &[u8]) {
        if let Err(e) = app.hub().apply_cluster(payload, crate::unix_ms()) {
            tracing::warn!(bytes = payload.len(), "{e}: ignored");
        }
    }

    /// Publish queued events: one subject per destination node, batches of ≤ 256 KiB, in
    /// the order the hub queued them.
    async fn publish(&self, out: Vec<(NodeId, Arc<str>)>) {
        let mut per_node: BTreeMap<NodeId, Vec<Arc<str>>> = BTreeMap::new();
        for (n, ev) in out {
            per_node.entry(n).or_default().push(ev);
        }
        for (n, events) in per_node {
            let subject = self.config.subject_node(n);
            for payload in wire::batches(self.me, events.iter().map(|e| &**e), 256 << 10) {
                if let Err(e) = self.client.publish(subject.clone(), payload.into()).await {
                    tracing::warn!(error = %e, "cluster event not sent");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn credentials_never_leave_the_url() {
        assert_eq!(
            scrub_url("nats://user:pw@h1:4222,nats://tok@h2"),
            "nats://***@h1:4222,nats://***@h2"
        );
        assert_eq!(scrub_url("nats://h:4222"), "nats://h:4222");
        assert_eq!(
            scrub_secrets("failed for user:pw at h1", "nats://user:pw@h1"),
            "failed for *** at h1"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = ClusterConfig::new("nats://127.0.0.1:4222");
        assert!(c.validate().is_ok());
        c.name = "a.b".into();
        assert!(c.validate().unwrap_err().contains("cluster.name"));
        c.name = "ok".into();
        c.node_timeout_ms = c.heartbeat_ms;
        assert!(c.validate().unwrap_err().contains("node_timeout_ms"));
    }
}
