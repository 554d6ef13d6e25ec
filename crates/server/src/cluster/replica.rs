//! What this node knows about the other nodes: their peers, channel memberships, quota
//! usage and liveness, kept from their events. Pure state: [`Replica::apply`] turns a
//! received batch into [`Effect`]s for the hub to deliver locally; the hub queues outgoing
//! events here ([`Replica::to_all`], [`Replica::to_node`]) and the NATS driver drains them.
//!
//! Every node is the authority for its own connections. Nothing here is ever *decided*
//! from remote state except routing, snapshots and the cluster-wide limits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;

use super::wire::{Event, JobAnswer, NodeId, WorkerAd};

/// What a received event asks the hub to do for its local connections.
#[derive(Debug)]
pub enum Effect<'a> {
    /// Deliver a `joined` delta for `entry` to the local members of `t`/`c`.
    Joined {
        /// Tenant.
        t: Arc<str>,
        /// Channel.
        c: String,
        /// The peer.
        p: Arc<str>,
        /// The presence entry, `{"peerId":…,"metadata":…}`.
        entry: Arc<str>,
        /// The job it is the agent of (dispatch).
        job: Option<Arc<str>>,
        /// The agent its token asks for (dispatch).
        asks: Option<Arc<str>>,
    },
    /// Deliver a `left` delta for peer `p` to the local members of `t`/`c`.
    Left {
        /// Tenant.
        t: Arc<str>,
        /// Channel.
        c: String,
        /// The peer that left.
        p: Arc<str>,
    },
    /// Deliver a broadcast to the local members of `t`/`c`.
    Message {
        /// Tenant.
        t: &'a str,
        /// Channel.
        c: &'a str,
        /// Sender.
        p: &'a str,
        /// Sender metadata (stamped for subscribers that asked for it).
        m: Option<&'a serde_json::value::RawValue>,
        /// Payload.
        d: &'a serde_json::value::RawValue,
    },
    /// Deliver a direct to the local peer `to`.
    Direct {
        /// Tenant.
        t: &'a str,
        /// Recipient.
        to: &'a str,
        /// Sender.
        p: &'a str,
        /// Sender metadata.
        m: Option<&'a serde_json::value::RawValue>,
        /// Payload.
        d: &'a serde_json::value::RawValue,
    },
    /// Close the local peer `p` with 4020.
    Kick {
        /// Peer id.
        p: &'a str,
    },
    /// Queue this node's full state to `to`.
    SendDump {
        /// Destination node.
        to: NodeId,
    },
    /// Dispatch: node `from` (started at `start`) has these workers now.
    Workers {
        /// The node.
        from: NodeId,
        /// When it started (ms).
        start: u64,
        /// Its workers, the whole list.
        workers: &'a [WorkerAd],
    },
    /// Dispatch: node `from` and its workers are gone.
    NodeGone {
        /// The node.
        node: NodeId,
    },
    /// Dispatch: offer a job to the local worker `w` (from the leader).
    Offer {
        /// The worker.
        w: u64,
        /// Job id.
        j: &'a str,
        /// Tenant.
        t: &'a str,
        /// Channel.
        c: &'a str,
        /// Agent.
        a: &'a str,
        /// Attempt.
        n: u32,
        /// Job token.
        k: &'a str,
    },
    /// Dispatch: the local worker `w` ends job `j` (from the leader).
    Cancel {
        /// The worker.
        w: u64,
        /// Job id.
        j: &'a str,
    },
    /// Dispatch: node `from`'s worker `w` answered about job `j` (to the leader).
    Answer {
        /// The worker.
        w: u64,
        /// Job id.
        j: &'a str,
        /// What it said.
        r: JobAnswer,
    },
    /// Dispatch: an explicit request for agent `a` in `t`/`c`.
    Request {
        /// Tenant.
        t: &'a str,
        /// Channel.
        c: &'a str,
        /// Agent.
        a: &'a str,
    },
}

/// (tenant, peer id): a peer anywhere in the cluster.
type PeerKey = (Arc<str>, Arc<str>);

/// What a peer is for dispatch: the job it runs as an agent, the agent its token asks for.
type Dispatchy = (Option<Arc<str>>, Option<Arc<str>>);

#[derive(Debug, Default)]
struct Dump {
    /// (tenant, peer) → (entry, channels, dispatch role).
    peers: HashMap<PeerKey, (Arc<str>, Vec<String>, Dispatchy)>,
    usage: Vec<(Arc<str>, u64, u64)>,
}

#[derive(Debug)]
struct NodeState {
    last_seen_ms: u64,
    /// Its full state has arrived; until then its live events are dropped.
    synced: bool,
    /// A full state being received.
    dump: Option<Dump>,
    /// (tenant, peer) of its connections.
    peers: HashSet<PeerKey>,
}

#[derive(Debug)]
struct RemotePeer {
    id: Arc<str>,
    node: NodeId,
    entry: Arc<str>,
    channels: HashSet<String>,
    role: Dispatchy,
}

#[derive(Debug, Default)]
struct RemoteChannel {
    /// Member peer → its node.
    members: HashMap<Arc<str>, NodeId>,
    /// Bytes of the members' entries plus separators (bounds snapshots, like local ones).
    roster_bytes: usize,
    /// Node → members there (where broadcasts must go).
    nodes: HashMap<NodeId, u32>,
}

#[derive(Debug)]
struct RemoteTenant {
    name: Arc<str>,
    peers: HashMap<Arc<str>, RemotePeer>,
    channels: HashMap<String, RemoteChannel>,
    /// Node → (quota window, messages counted there).
    usage: HashMap<NodeId, (u64, u64)>,
}

impl RemoteTenant {
    fn new(name: Arc<str>) -> RemoteTenant {
        RemoteTenant {
            name,
            peers: HashMap::new(),
            channels: HashMap::new(),
            usage: HashMap::new(),
        }
    }
}

/// The other nodes, as this node knows them, plus this node's outgoing event queue.
#[derive(Debug)]
pub struct Replica {
    me: NodeId,
    node_timeout_ms: u64,
    nodes: HashMap<NodeId, NodeState>,
    tenants: HashMap<Arc<str>, RemoteTenant>,
    out: Vec<(NodeId, Arc<str>)>,
    out_bytes: usize,
    out_cap: usize,
    overflowed: bool,
    notify: Arc<Notify>,
    /// Tenants whose local quota usage changed since the last [`Replica::take_dirty_usage`].
    usage_dirty: HashSet<Arc<str>>,
}

impl Replica {
    /// A node with no known peers yet. `out_cap` bounds the bytes of queued outgoing events;
    /// beyond it the node drops its view of the cluster and resynchronizes.
    pub fn new(me: NodeId, node_timeout_ms: u64, out_cap: usize, notify: Arc<Notify>) -> Replica {
        Replica {
            me,
            node_timeout_ms,
            nodes: HashMap::new(),
            tenants: HashMap::new(),
            out: Vec::new(),
            out_bytes: 0,
            out_cap,
            overflowed: false,
            notify,
            usage_dirty: HashSet::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// How long a silent node is still counted alive (ms).
    pub fn node_timeout_ms(&self) -> u64 {
        self.node_timeout_ms
    }

    /// Nodes whose full state this node holds.
    pub fn synced_nodes(&self) -> usize {
        self.nodes.values().filter(|n| n.synced).count()
    }

    // ---- outgoing ----

    fn push_out(&mut self, to: NodeId, ev: Arc<str>) {
        if self.overflowed {
            return;
        }
        self.out_bytes += ev.len();
        if self.out_bytes > self.out_cap {
            // NATS is not keeping up (or is down): stop queueing; `expire` drops every node
            // and rediscovery resends full state both ways.
            tracing::warn!(
                bytes = self.out_bytes,
                "cluster queue over its cap: resynchronizing"
            );
            self.overflowed = true;
            self.out.clear();
            self.out_bytes = 0;
            self.notify.notify_one();
            return;
        }
        self.out.push((to, ev));
        self.notify.notify_one();
    }

    /// Queue an event to every known node.
    pub fn to_all(&mut self, ev: &Event<'_>) {
        if self.nodes.is_empty() {
            return;
        }
        let json: Arc<str> = ev.to_json().into();
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        for n in nodes {
            self.push_out(n, json.clone());
        }
    }

    /// Queue an event to one node.
    pub fn to_node(&mut self, to: NodeId, ev: &Event<'_>) {
        if self.nodes.contains_key(&to) {
            self.push_out(to, ev.to_json().into());
        }
    }

    /// Queue a broadcast to every node with members of `t`/`c`.
    pub fn to_channel(&mut self, t: &str, c: &str, ev: &Event<'_>) {
        let Some(ch) = self.tenants.get(t).and_then(|rt| rt.channels.get(c)) else {
            return;
        };
        let nodes: Vec<NodeId> = ch.nodes.keys().copied().collect();
        if nodes.is_empty() {
            return;
        }
        let json: Arc<str> = ev.to_json().into();
        for n in nodes {
            self.push_out(n, json.clone());
        }
    }

    /// Everything queued since the last call, in order, per destination node.
    pub fn take_out(&mut self) -> Vec<(NodeId, Arc<str>)> {
        self.out_bytes = 0;
        std::mem::take(&mut self.out)
    }

    /// Note that this node's usage for `t` changed.
    pub fn usage_changed(&mut self, t: &Arc<str>) {
        if !self.nodes.is_empty() && !self.usage_dirty.contains(t) {
            self.usage_dirty.insert(t.clone());
        }
    }

    /// Tenants whose usage must be announced.
    pub fn take_dirty_usage(&mut self) -> Vec<Arc<str>> {
        self.usage_dirty.drain().collect()
    }

    // ---- queries ----

    /// The node holding peer `p` of tenant `t`.
    pub fn peer_node(&self, t: &str, p: &str) -> Option<NodeId> {
        self.tenants.get(t)?.peers.get(p).map(|rp| rp.node)
    }

    /// The node holding peer `p`, whatever its tenant (operator kicks).
    pub fn find_peer(&self, p: &str) -> Option<NodeId> {
        self.tenants
            .values()
            .find_map(|rt| rt.peers.get(p).map(|rp| rp.node))
    }

    /// Connections of tenant `t` on other nodes.
    pub fn connections(&self, t: &str) -> usize {
        self.tenants.get(t).map_or(0, |rt| rt.peers.len())
    }

    /// Messages counted on other nodes for tenant `t` in quota window `w`.
    pub fn usage(&self, t: &str, w: u64) -> u64 {
        self.tenants.get(t).map_or(0, |rt| {
            rt.usage
                .values()
                .filter(|(win, _)| *win == w)
                .map(|(_, n)| *n)
                .sum()
        })
    }

    /// Remote members of `t`/`c` and the bytes of their entries.
    pub fn channel_size(&self, t: &str, c: &str) -> (usize, usize) {
        self.tenants
            .get(t)
            .and_then(|rt| rt.channels.get(c))
            .map_or((0, 0), |ch| (ch.members.len(), ch.roster_bytes))
    }

    /// Presence entries of the remote members of `t`/`c`.
    pub fn entries<'s>(&'s self, t: &str, c: &str) -> impl Iterator<Item = &'s str> + 's {
        let rt = self.tenants.get(t);
        let ch = rt.and_then(|rt| rt.channels.get(c));
        ch.into_iter().flat_map(move |ch| {
            ch.members
                .keys()
                .filter_map(move |p| rt.and_then(|rt| rt.peers.get(p)).map(|rp| &*rp.entry))
        })
    }

    /// The remote members of `t`/`c` with the job each runs as an agent (dispatch).
    pub fn members_with_jobs(&self, t: &str, c: &str) -> Vec<(Arc<str>, Option<Arc<str>>)> {
        let Some(rt) = self.tenants.get(t) else {
            return Vec::new();
        };
        rt.channels.get(c).map_or_else(Vec::new, |ch| {
            ch.members
                .keys()
                .filter_map(|p| rt.peers.get(p).map(|rp| (p.clone(), rp.role.0.clone())))
                .collect()
        })
    }

    /// Remote channels of every tenant with their member peer ids (admin API).
    pub fn channel_members(&self) -> Vec<(Arc<str>, String, Vec<Arc<str>>)> {
        self.tenants
            .iter()
            .flat_map(|(t, rt)| {
                rt.channels.iter().map(move |(c, ch)| {
                    (t.clone(), c.clone(), ch.members.keys().cloned().collect())
                })
            })
            .collect()
    }

    // ---- incoming ----

    /// Apply one received batch from `from`, appending what the hub must do to `effects`.
    pub fn apply<'a>(
        &mut self,
        from: NodeId,
        events: &'a [Event<'a>],
        now_ms: u64,
        effects: &mut Vec<Effect<'a>>,
    ) {
        if from == self.me {
            return; // our own heartbeat on the shared subject
        }
        let new = !self.nodes.contains_key(&from);
        if new {
            if matches!(events.first(), Some(Event::Bye)) {
                return;
            }
            tracing::info!(node = %super::wire::node_str(from), "cluster node discovered");
            self.nodes.insert(
                from,
                NodeState {
                    last_seen_ms: now_ms,
                    synced: false,
                    dump: None,
                    peers: HashSet::new(),
                },
            );
            effects.push(Effect::SendDump { to: from });
            if !matches!(events.first(), Some(Event::DumpStart)) {
                self.to_node(from, &Event::Resync);
            }
        }
        if let Some(n) = self.nodes.get_mut(&from) {
            n.last_seen_ms = now_ms;
        }
        for ev in events {
            self.apply_one(from, new, ev, effects);
            if !self.nodes.contains_key(&from) {
                return; // Bye
            }
        }
    }

    fn apply_one<'a>(
        &mut self,
        from: NodeId,
        discovery: bool,
        ev: &'a Event<'a>,
        effects: &mut Vec<Effect<'a>>,
    ) {
        let Some(node) = self.nodes.get_mut(&from) else {
            return;
        };
        // A full state being received collects its events instead of applying them.
        if let Some(dump) = node.dump.as_mut() {
            match ev {
                Event::Up { t, p, e, j, g } => {
                    dump.peers.insert(
                        (Arc::from(&**t), Arc::from(&**p)),
                        (Arc::from(e.get()), Vec::new(), role(j, g)),
                    );
                    return;
                }
                Event::Join { t, c, p } => {
                    if let Some((_, chans, _)) =
                        dump.peers.get_mut(&(Arc::from(&**t), Arc::from(&**p)))
                    {
                        chans.push(c.to_string());
                    }
                    return;
                }
                Event::Usage { t, w, n } => {
                    dump.usage.push((Arc::from(&**t), *w, *n));
                    return;
                }
                _ => {}
            }
        }
        match ev {
            Event::Heartbeat => {}
            Event::Bye => {
                tracing::info!(node = %super::wire::node_str(from), "cluster node said goodbye");
                self.remove_node(from, effects);
            }
            Event::Resync => {
                if !discovery {
                    effects.push(Effect::SendDump { to: from });
                }
            }
            Event::DumpStart => node.dump = Some(Dump::default()),
            // Dispatch commands go point to point, synced or not.
            Event::Offer {
                w,
                j,
                t,
                c,
                a,
                n,
                k,
            } => effects.push(Effect::Offer {
                w: *w,
                j,
                t,
                c,
                a,
                n: *n,
                k,
            }),
            Event::Cancel { w, j } => effects.push(Effect::Cancel { w: *w, j }),
            Event::Answer { w, j, r } => effects.push(Effect::Answer { w: *w, j, r: *r }),
            Event::Request { t, c, a } => effects.push(Effect::Request { t, c, a }),
            Event::DumpEnd => {
                if let Some(dump) = node.dump.take() {
                    node.synced = true;
                    self.replace_node(from, dump, effects);
                }
            }
            _ if !node.synced => {} // live events before its full state: superseded by it
            Event::Up { t, p, e, j, g } => {
                self.add_peer(from, t, p, Arc::from(e.get()), role(j, g))
            }
            Event::Down { t, p } => self.remove_peer(t, p, effects),
            Event::Join { t, c, p } => self.join(t, c, p, effects),
            Event::Leave { t, c, p } => self.leave(t, c, p, effects),
            Event::Msg { t, c, p, m, d } => effects.push(Effect::Message { t, c, p, m: *m, d }),
            Event::Dm { t, to, p, m, d } => effects.push(Effect::Direct { t, to, p, m: *m, d }),
            Event::Usage { t, w, n } => {
                self.tenant_mut(t).usage.insert(from, (*w, *n));
            }
            Event::Kick { p } => effects.push(Effect::Kick { p }),
            Event::Dispatch { s, w } => effects.push(Effect::Workers {
                from,
                start: *s,
                workers: w,
            }),
        }
    }

    fn tenant_mut(&mut self, t: &str) -> &mut RemoteTenant {
        self.tenants
            .entry(Arc::from(t))
            .or_insert_with_key(|k| RemoteTenant::new(k.clone()))
    }

    fn add_peer(&mut self, node: NodeId, t: &str, p: &str, entry: Arc<str>, role: Dispatchy) {
        let rt = self.tenant_mut(t);
        if rt.peers.contains_key(p) {
            return; // a peer id is never reused; a duplicate announcement changes nothing
        }
        let p: Arc<str> = Arc::from(p);
        let tenant = rt.name.clone();
        rt.peers.insert(
            p.clone(),
            RemotePeer {
                id: p.clone(),
                node,
                entry,
                channels: HashSet::new(),
                role,
            },
        );
        if let Some(n) = self.nodes.get_mut(&node) {
            n.peers.insert((tenant, p));
        }
    }

    fn join(&mut self, t: &str, c: &str, p: &str, effects: &mut Vec<Effect<'_>>) {
        let Some(rt) = self.tenants.get_mut(t) else {
            return;
        };
        let Some(peer) = rt.peers.get_mut(p) else {
            return;
        };
        if !peer.channels.insert(c.to_owned()) {
            return; // already a member
        }
        let (pk, node, entry) = (peer.id.clone(), peer.node, peer.entry.clone());
        let (job, asks) = peer.role.clone();
        let ch = rt.channels.entry(c.to_owned()).or_default();
        ch.members.insert(pk.clone(), node);
        ch.roster_bytes += entry.len() + 1;
        *ch.nodes.entry(node).or_default() += 1;
        effects.push(Effect::Joined {
            t: rt.name.clone(),
            c: c.to_owned(),
            p: pk,
            entry,
            job,
            asks,
        });
    }

    fn leave(&mut self, t: &str, c: &str, p: &str, effects: &mut Vec<Effect<'_>>) {
        let Some(rt) = self.tenants.get_mut(t) else {
            return;
        };
        let Some(peer) = rt.peers.get_mut(p) else {
            return;
        };
        if !peer.channels.remove(c) {
            return;
        }
        let (pk, entry_len) = (peer.id.clone(), peer.entry.len());
        if let Some(ch) = rt.channels.get_mut(c)
            && let Some(node) = ch.members.remove(p)
        {
            ch.roster_bytes -= entry_len + 1;
            if let Some(k) = ch.nodes.get_mut(&node) {
                *k -= 1;
                if *k == 0 {
                    ch.nodes.remove(&node);
                }
            }
            if ch.members.is_empty() {
                rt.channels.remove(c);
            }
            effects.push(Effect::Left {
                t: rt.name.clone(),
                c: c.to_owned(),
                p: pk,
            });
        }
    }

    fn remove_peer(&mut self, t: &str, p: &str, effects: &mut Vec<Effect<'_>>) {
        let chans: Vec<String> = match self.tenants.get(t).and_then(|rt| rt.peers.get(p)) {
            Some(peer) => peer.channels.iter().cloned().collect(),
            None => return,
        };
        for c in chans {
            self.leave(t, &c, p, effects);
        }
        if let Some(rt) = self.tenants.get_mut(t)
            && let Some((pk, peer)) = rt.peers.remove_entry(p)
        {
            if let Some(n) = self.nodes.get_mut(&peer.node) {
                n.peers.remove(&(Arc::from(t), pk));
            }
            if rt.peers.is_empty() && rt.channels.is_empty() && rt.usage.is_empty() {
                self.tenants.remove(t);
            }
        }
    }

    /// Replace everything known about `node` with its full state, as deltas.
    fn replace_node(&mut self, node: NodeId, dump: Dump, effects: &mut Vec<Effect<'_>>) {
        let current: Vec<PeerKey> = self
            .nodes
            .get(&node)
            .map(|n| n.peers.iter().cloned().collect())
            .unwrap_or_default();
        for (t, p) in current {
            match dump.peers.get(&(t.clone(), p.clone())) {
                None => self.remove_peer(&t, &p, effects),
                Some((_, chans, _)) => {
                    let held: Vec<String> = self
                        .tenants
                        .get(&t)
                        .and_then(|rt| rt.peers.get(&p))
                        .map(|rp| rp.channels.iter().cloned().collect())
                        .unwrap_or_default();
                    for c in held.iter().filter(|c| !chans.contains(c)) {
                        self.leave(&t, c, &p, effects);
                    }
                }
            }
        }
        for ((t, p), (entry, chans, role)) in dump.peers {
            self.add_peer(node, &t, &p, entry, role);
            for c in chans {
                self.join(&t, &c, &p, effects);
            }
        }
        for rt in self.tenants.values_mut() {
            rt.usage.remove(&node);
        }
        for (t, w, n) in dump.usage {
            self.tenant_mut(&t).usage.insert(node, (w, n));
        }
    }

    /// Forget `node` and everything on it (`left` for each of its memberships).
    pub fn remove_node(&mut self, node: NodeId, effects: &mut Vec<Effect<'_>>) {
        let Some(state) = self.nodes.remove(&node) else {
            return;
        };
        for (t, p) in state.peers {
            self.remove_peer(&t, &p, effects);
        }
        effects.push(Effect::NodeGone { node });
        self.tenants.retain(|_, rt| {
            rt.usage.remove(&node);
            !(rt.peers.is_empty() && rt.channels.is_empty() && rt.usage.is_empty())
        });
        self.out.retain(|(n, _)| *n != node);
    }

    /// Nodes silent for longer than the timeout (or all of them after an overflow).
    pub fn expired(&mut self, now_ms: u64) -> Vec<NodeId> {
        if std::mem::take(&mut self.overflowed) {
            return self.nodes.keys().copied().collect();
        }
        self.nodes
            .iter()
            .filter(|(_, n)| now_ms.saturating_sub(n.last_seen_ms) > self.node_timeout_ms)
            .map(|(id, _)| *id)
            .collect()
    }
}

fn role(j: &Option<std::borrow::Cow<'_, str>>, g: &Option<std::borrow::Cow<'_, str>>) -> Dispatchy {
    (j.as_deref().map(Arc::from), g.as_deref().map(Arc::from))
}
