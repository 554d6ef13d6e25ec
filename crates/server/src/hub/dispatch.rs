//! Agent dispatch in the hub: the dispatcher is fed every member (local, and remote in a
//! cluster), this node's workers come and go through the `/v1/worker` endpoint, and in a
//! cluster the nodes' workers, offers, cancels and answers travel as cluster events (see
//! [`crate::dispatch`] and [`crate::cluster::dispatch`]).

use std::sync::Arc;

use parlor_protocol::CloseCode;

use super::{ConnId, Hub};
use crate::cluster::dispatch::{ClusterDispatch, Transition, WorkerChange};
use crate::cluster::replica::Effect;
use crate::cluster::wire::{self, Event, JobAnswer, NodeId};
use crate::dispatch::{AgentRoom, Command, Dispatcher, Job, Role, WorkerId};

/// A dispatch command for the driver (`crate::worker`), routed to where its worker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// For a worker connected to this node; `token` is the job token when the leader (on
    /// another node) minted it, `None` when this node mints it.
    Local(Command, Option<String>),
    /// For a worker connected to another node: the driver mints the token (offers) and
    /// sends it there ([`Hub::send_remote`]).
    Remote(NodeId, Command),
}

impl Hub {
    /// Run agent dispatch: `dispatcher` hears every member joining and leaving, and `wake`
    /// is notified whenever it may have commands for the driver ([`Hub::take_dispatch`]).
    /// In cluster mode (call [`Hub::enable_cluster`] first) the dispatcher starts as a
    /// follower; the oldest node's leads ([`crate::cluster::dispatch`]).
    pub fn enable_dispatch(
        &mut self,
        mut dispatcher: Dispatcher,
        wake: Arc<tokio::sync::Notify>,
        now_ms: u64,
    ) {
        if let Some(r) = &self.cluster {
            let me = r.me();
            dispatcher.deactivate();
            dispatcher.set_job_prefix(format!("j_{:08x}_", me >> 32));
            self.cluster_dispatch = Some(ClusterDispatch::new(me, now_ms, r.node_timeout_ms()));
        }
        self.dispatch = Some(dispatcher);
        self.dispatch_wake = Some(wake);
    }

    /// Whether this node decides dispatch (always on one node; the leader in a cluster).
    pub fn dispatch_leads(&self) -> bool {
        self.dispatch.as_ref().is_some_and(Dispatcher::is_active)
    }

    /// The node leading dispatch and this node's id, in cluster mode.
    pub fn dispatch_leader(&self) -> Option<(Option<NodeId>, NodeId)> {
        let cd = self.cluster_dispatch.as_ref()?;
        Some((cd.leader(), self.cluster.as_ref()?.me()))
    }

    /// Workers connected to every node (this one's on a single node).
    pub fn dispatch_workers(&self) -> Option<usize> {
        self.cluster_dispatch
            .as_ref()
            .map(ClusterDispatch::worker_count)
    }

    // ---- this node's workers (the `/v1/worker` endpoint calls these) ----

    /// Worker `id` registered here.
    pub fn worker_up(&mut self, id: WorkerId, agents: Vec<String>, capacity: u32, now_ms: u64) {
        if let Some(cd) = self.cluster_dispatch.as_mut() {
            cd.local_up(id, agents.clone(), capacity);
        }
        self.with_dispatch(now_ms, |d, now| {
            d.worker_registered(id, agents, capacity, now)
        });
        self.announce_workers();
    }

    /// Worker `id` reported its load.
    pub fn worker_status(&mut self, id: WorkerId, load: f32, draining: bool, now_ms: u64) {
        if let Some(cd) = self.cluster_dispatch.as_mut() {
            cd.local_status(id, load, draining);
        }
        self.with_dispatch(now_ms, |d, now| d.worker_status(id, load, draining, now));
        self.announce_workers();
    }

    /// Worker `id` answered about `job`; in a cluster the answer also goes to the leader.
    pub fn worker_answer(&mut self, id: WorkerId, job: &str, answer: JobAnswer, now_ms: u64) {
        if let Some(cd) = self.cluster_dispatch.as_mut()
            && answer != JobAnswer::Accept
        {
            cd.local_job_done(id, job);
        }
        self.apply_answer(id, job, answer, now_ms);
        let leader = self
            .cluster_dispatch
            .as_ref()
            .and_then(ClusterDispatch::leader);
        if let (Some(leader), Some(r)) = (leader, self.cluster.as_mut())
            && leader != r.me()
        {
            r.to_node(
                leader,
                &Event::Answer {
                    w: id,
                    j: job.into(),
                    r: answer,
                },
            );
        }
        self.announce_workers();
    }

    fn apply_answer(&mut self, id: WorkerId, job: &str, answer: JobAnswer, now_ms: u64) {
        self.with_dispatch(now_ms, |d, now| match answer {
            JobAnswer::Accept => d.accepted(id, job, now),
            JobAnswer::Refuse => d.refused(id, job, now),
            JobAnswer::Ended => d.job_ended(id, job, now),
        });
    }

    /// Worker `id` is gone.
    pub fn worker_down(&mut self, id: WorkerId, now_ms: u64) {
        if let Some(cd) = self.cluster_dispatch.as_mut() {
            cd.local_down(id);
        }
        self.with_dispatch(now_ms, |d, now| d.worker_gone(id, now));
        self.announce_workers();
    }

    /// The driver offered `job` to this node's worker `id`: it holds the job (announced in
    /// a cluster, so a leader that takes over adopts it).
    pub fn worker_job(&mut self, id: WorkerId, job: &Job) {
        if let Some(cd) = self.cluster_dispatch.as_mut() {
            cd.local_job(id, &job.id, &job.room);
        }
        self.announce_workers();
    }

    /// The driver cancelled `job` at this node's worker `id`.
    pub fn worker_job_done(&mut self, id: WorkerId, job: &str) {
        if let Some(cd) = self.cluster_dispatch.as_mut() {
            cd.local_job_done(id, job);
        }
        self.announce_workers();
    }

    /// Tell the other nodes about this node's workers, if they changed.
    pub(super) fn announce_workers(&mut self) {
        let (Some(cd), Some(r)) = (self.cluster_dispatch.as_mut(), self.cluster.as_mut()) else {
            return;
        };
        if let Some((s, w)) = cd.take_announcement() {
            r.to_all(&Event::Dispatch { s, w });
        }
    }

    /// Send a dispatch command to another node's worker (offers carry the token the driver
    /// minted).
    pub fn send_remote(&mut self, node: NodeId, command: &Command, token: Option<&str>) {
        let Some(r) = self.cluster.as_mut() else {
            return;
        };
        match command {
            Command::Offer { worker, job } => r.to_node(
                node,
                &Event::Offer {
                    w: *worker,
                    j: (*job.id).into(),
                    t: (*job.room.account).into(),
                    c: (*job.room.channel).into(),
                    a: (*job.room.agent).into(),
                    n: job.attempt,
                    k: token.unwrap_or_default().into(),
                },
            ),
            Command::Cancel { worker, job } => r.to_node(
                node,
                &Event::Cancel {
                    w: *worker,
                    j: (**job).into(),
                },
            ),
            Command::Evict { .. } => {}
        }
    }

    /// An explicit request for `agent` in `channel` (the admin API), on every node.
    pub fn dispatch_request(&mut self, account: &str, channel: &str, agent: &str, now_ms: u64) {
        if let Some(r) = self.cluster.as_mut() {
            r.to_all(&Event::Request {
                t: account.into(),
                c: channel.into(),
                a: agent.into(),
            });
        }
        self.request_here(account, channel, agent, now_ms);
    }

    pub(super) fn request_here(&mut self, account: &str, channel: &str, agent: &str, now_ms: u64) {
        let humans = self.humans(account, channel);
        self.with_dispatch(now_ms, |d, now| {
            d.request(account, channel, agent, humans.iter().map(|h| &**h), now)
        });
    }

    /// Call `f` on the dispatcher (if dispatch is on) with `now_ms`, then wake the driver.
    pub fn with_dispatch<R>(
        &mut self,
        now_ms: u64,
        f: impl FnOnce(&mut Dispatcher, u64) -> R,
    ) -> Option<R> {
        self.now_ms = self.now_ms.max(now_ms);
        let r = self.dispatch.as_mut().map(|d| f(d, now_ms));
        self.wake_dispatch();
        r
    }

    pub(super) fn wake_dispatch(&self) {
        if let Some(w) = &self.dispatch_wake {
            w.notify_one();
        }
    }

    /// Run the dispatcher's deadlines up to `now_ms`, carry out its evictions (a job's agent
    /// no longer wanted is closed with 4020), and return the commands for workers (offers
    /// and cancels), in order. Empty when dispatch is off.
    pub fn take_dispatch(&mut self, now_ms: u64) -> Vec<Routed> {
        self.now_ms = self.now_ms.max(now_ms);
        let Some(d) = self.dispatch.as_mut() else {
            return Vec::new();
        };
        d.tick(now_ms);
        let mut commands = Vec::new();
        while let Some(c) = d.poll_command() {
            commands.push(c);
        }
        let mut out = std::mem::take(&mut self.dispatch_inbox);
        let mut gone = Vec::new();
        for c in commands {
            match c {
                Command::Evict { account, peer } => self.evict(&account, &peer),
                Command::Offer { worker, .. } | Command::Cancel { worker, .. } => {
                    match self.cluster_dispatch.as_ref().map(|cd| cd.node_of(worker)) {
                        None | Some(Some(None)) => out.push(Routed::Local(c, None)),
                        Some(Some(Some(node))) => out.push(Routed::Remote(node, c)),
                        // Gone from the directory since: its jobs move on.
                        Some(None) => gone.push(worker),
                    }
                }
            }
        }
        for w in gone {
            if let Some(d) = self.dispatch.as_mut() {
                d.worker_gone(w, now_ms);
                self.wake_dispatch();
            }
        }
        out
    }

    /// Close a job agent no longer wanted (4020), wherever in the cluster it is.
    fn evict(&mut self, account: &str, peer: &str) {
        let conn = self
            .tenants
            .get(account)
            .and_then(|t| t.peers.get(peer))
            .copied();
        if let Some(conn) = conn {
            tracing::info!(%peer, "evicting the agent of a job no longer wanted");
            self.close(conn, CloseCode::ADMIN_DISCONNECT, "agent job ended");
        } else if let Some(r) = self.cluster.as_mut()
            && let Some(node) = r.peer_node(account, peer)
        {
            tracing::info!(%peer, "evicting the agent of a job no longer wanted (on another node)");
            r.to_node(node, &Event::Kick { p: peer.into() });
        }
    }

    /// When the dispatcher next needs [`Hub::take_dispatch`] (`None`: only on input).
    pub fn dispatch_deadline(&self) -> Option<u64> {
        self.dispatch.as_ref().and_then(Dispatcher::next_deadline)
    }

    /// The human members of `channel` of `account` (for an explicit dispatch request).
    pub fn humans(&self, account: &str, channel: &str) -> Vec<Arc<str>> {
        let remote = self
            .cluster
            .as_ref()
            .map(|r| r.members_with_jobs(account, channel))
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, job)| job.is_none())
            .map(|(p, _)| p);
        self.tenants
            .get(account)
            .and_then(|t| t.channels.get(channel))
            .into_iter()
            .flat_map(|ch| ch.members.keys())
            .filter_map(|id| self.conns.get(id))
            .filter(|c| c.grant.job.is_none())
            .map(|c| c.peer_id.clone())
            .chain(remote)
            .collect()
    }

    /// Tell the dispatcher (if on) that `conn` joined `channel`; a token that asks for an
    /// agent gets it in this channel, rule or no rule.
    pub(super) fn dispatch_joined(&mut self, conn: ConnId, channel: &str) {
        let (Some(c), true) = (self.conns.get(&conn), self.dispatch.is_some()) else {
            return;
        };
        let (account, peer) = (c.grant.account.clone(), c.peer_id.clone());
        let (role, asks) = match (&c.grant.job, &c.grant.agent) {
            (Some(job), _) => (Role::Agent { job: job.clone() }, None),
            (None, agent) => (Role::Human, agent.clone()),
        };
        let humans = match asks {
            Some(_) => self.humans(&account, channel),
            None => Vec::new(),
        };
        let now = self.now_ms;
        if let Some(d) = self.dispatch.as_mut() {
            d.member_joined(&account, channel, &peer, role, now);
            if let Some(agent) = asks {
                d.request(&account, channel, &agent, humans.iter().map(|h| &**h), now);
            }
        }
        self.wake_dispatch();
    }

    /// Who leads dispatch now; take over (adopting what runs) or stand down.
    pub(super) fn elect(&mut self, now_ms: u64) {
        let Some(cd) = self.cluster_dispatch.as_mut() else {
            return;
        };
        let Some(t) = cd.elect(now_ms) else {
            return;
        };
        let held = cd.held();
        let leader = cd.leader().map(wire::node_str);
        match t {
            Transition::Lead => {
                tracing::info!(adopting = held.len(), "this node leads agent dispatch now");
                self.with_dispatch(now_ms, |d, now| d.activate(held, now));
            }
            Transition::Follow => {
                tracing::info!(leader = ?leader, "another node leads agent dispatch now");
                self.with_dispatch(now_ms, |d, _| d.deactivate());
            }
        }
    }

    /// The dispatch side of a cluster event (the hub's own part, presence, is done).
    pub(super) fn apply_dispatch_effect(&mut self, effect: Effect<'_>) {
        match effect {
            Effect::Workers {
                from,
                start,
                workers,
            } => {
                let changes = match self.cluster_dispatch.as_mut() {
                    Some(cd) => cd.node_workers(from, start, workers),
                    None => return,
                };
                for ch in changes {
                    self.with_dispatch(self.now_ms, |d, now| match ch {
                        WorkerChange::Registered {
                            id,
                            agents,
                            capacity,
                        } => d.worker_registered(id, agents, capacity, now),
                        WorkerChange::Status { id, load, draining } => {
                            d.worker_status(id, load, draining, now)
                        }
                        WorkerChange::Gone { id } => d.worker_gone(id, now),
                    });
                }
                self.elect(self.now_ms);
            }
            Effect::NodeGone { node } => {
                let gone = match self.cluster_dispatch.as_mut() {
                    Some(cd) => cd.node_gone(node),
                    None => return,
                };
                for id in gone {
                    self.with_dispatch(self.now_ms, |d, now| d.worker_gone(id, now));
                }
                self.elect(self.now_ms);
            }
            Effect::Offer {
                w,
                j,
                t,
                c,
                a,
                n,
                k,
            } => {
                if self.cluster_dispatch.is_none() {
                    return;
                }
                let job = Job {
                    id: j.into(),
                    room: AgentRoom {
                        account: t.into(),
                        channel: c.into(),
                        agent: a.into(),
                    },
                    attempt: n,
                };
                self.dispatch_inbox.push(Routed::Local(
                    Command::Offer { worker: w, job },
                    Some(k.to_owned()),
                ));
                self.wake_dispatch();
            }
            Effect::Cancel { w, j } => {
                if self.cluster_dispatch.is_none() {
                    return;
                }
                self.dispatch_inbox.push(Routed::Local(
                    Command::Cancel {
                        worker: w,
                        job: j.into(),
                    },
                    None,
                ));
                self.wake_dispatch();
            }
            Effect::Answer { w, j, r }
                if self
                    .cluster_dispatch
                    .as_ref()
                    .is_some_and(ClusterDispatch::is_leader) =>
            {
                self.apply_answer(w, j, r, self.now_ms);
            }
            Effect::Request { t, c, a } if self.dispatch.is_some() => {
                self.request_here(t, c, a, self.now_ms);
            }
            // Presence and messages are the hub's (`apply_effect`); an answer reaching a
            // node that no longer leads, or a request without `[agents]`: nothing to do.
            _ => {}
        }
    }
}
