//! Agent dispatch across a cluster (pure state, no IO): which node leads dispatch, and the
//! directory of every node's workers.
//!
//! Every node with `[agents]` keeps a [`Dispatcher`](crate::dispatch::Dispatcher) fed with
//! every member and every worker of the cluster, but only the leader's decides. The leader
//! is the **oldest** node that announces workers (smallest start time, then node id): a node
//! that joins never takes over from a running leader, so leadership moves only when the
//! leader stops or goes silent. A node waits `settle` after starting before it may lead, so
//! it has heard the others' announcements first.
//!
//! Each node announces its own workers ([`WorkerAd`]: agents, capacity, load, draining and
//! the jobs each holds) to every node when they change and in its full state. From those a
//! node that takes over knows which jobs run where and adopts them
//! ([`ClusterDispatch::held`]) instead of dispatching those rooms again.
//!
//! Offers and cancels travel from the leader to the worker's node, answers back to the
//! leader, on the nodes' own NATS subjects (in order, like every cluster event): no broker
//! besides NATS, no second source of truth (docs/dispatch.md says why not queue groups).

use std::collections::{BTreeMap, HashMap};

use super::wire::{JobAd, NodeId, WorkerAd};
use crate::dispatch::{AgentRoom, HeldJob, WorkerId};

/// What an announcement changed, for the local dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerChange {
    /// A worker appeared.
    Registered {
        /// Its id.
        id: WorkerId,
        /// The agents it runs.
        agents: Vec<String>,
        /// Jobs at once.
        capacity: u32,
    },
    /// A worker's load or draining changed (or it is new).
    Status {
        /// Its id.
        id: WorkerId,
        /// Load 0..1.
        load: f32,
        /// Draining.
        draining: bool,
    },
    /// A worker is gone.
    Gone {
        /// Its id.
        id: WorkerId,
    },
}

/// Leadership changed on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// This node leads now: activate its dispatcher with [`ClusterDispatch::held`].
    Lead,
    /// Another node (or none yet) leads now: deactivate.
    Follow,
}

/// A node's view of dispatch across the cluster.
#[derive(Debug)]
pub struct ClusterDispatch {
    me: NodeId,
    start_ms: u64,
    settle_until: u64,
    leader: Option<NodeId>,
    /// Other nodes: their start time and workers, as last announced.
    nodes: HashMap<NodeId, (u64, Vec<WorkerAd>)>,
    /// This node's workers.
    local: BTreeMap<WorkerId, WorkerAd>,
    dirty: bool,
}

impl ClusterDispatch {
    /// Node `me`, started at `now_ms`; it may lead `settle_ms` later at the earliest.
    pub fn new(me: NodeId, now_ms: u64, settle_ms: u64) -> ClusterDispatch {
        ClusterDispatch {
            me,
            start_ms: now_ms,
            settle_until: now_ms + settle_ms,
            leader: None,
            nodes: HashMap::new(),
            local: BTreeMap::new(),
            dirty: false,
        }
    }

    /// The node leading dispatch, as this node sees it (`None` while settling).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Whether this node leads.
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.me)
    }

    /// Where `worker` is: `Some(None)` here, `Some(Some(node))` on another node, `None`
    /// unknown (gone).
    pub fn node_of(&self, worker: WorkerId) -> Option<Option<NodeId>> {
        if self.local.contains_key(&worker) {
            return Some(None);
        }
        self.nodes
            .iter()
            .find(|(_, (_, ws))| ws.iter().any(|w| w.id == worker))
            .map(|(n, _)| Some(*n))
    }

    /// Workers of every node (this one's included).
    pub fn worker_count(&self) -> usize {
        self.local.len() + self.nodes.values().map(|(_, w)| w.len()).sum::<usize>()
    }

    /// Node `from`'s announcement: what changed for the dispatcher.
    pub fn node_workers(
        &mut self,
        from: NodeId,
        start_ms: u64,
        workers: &[WorkerAd],
    ) -> Vec<WorkerChange> {
        if from == self.me {
            return Vec::new();
        }
        let old = self
            .nodes
            .insert(from, (start_ms, workers.to_vec()))
            .map(|(_, w)| w)
            .unwrap_or_default();
        let mut out = Vec::new();
        for w in workers {
            if self.local.contains_key(&w.id) {
                tracing::error!(
                    worker = w.id,
                    node = %super::wire::node_str(from),
                    "two nodes announce the same worker id: ignored"
                );
                continue;
            }
            match old.iter().find(|o| o.id == w.id) {
                None => {
                    out.push(WorkerChange::Registered {
                        id: w.id,
                        agents: w.a.clone(),
                        capacity: w.c,
                    });
                    out.push(WorkerChange::Status {
                        id: w.id,
                        load: w.l,
                        draining: w.d,
                    });
                }
                Some(o) if o.l != w.l || o.d != w.d => out.push(WorkerChange::Status {
                    id: w.id,
                    load: w.l,
                    draining: w.d,
                }),
                Some(_) => {}
            }
        }
        for o in old {
            if !workers.iter().any(|w| w.id == o.id) {
                out.push(WorkerChange::Gone { id: o.id });
            }
        }
        out
    }

    /// Node `node` is gone: its workers with it.
    pub fn node_gone(&mut self, node: NodeId) -> Vec<WorkerId> {
        self.nodes
            .remove(&node)
            .map(|(_, ws)| ws.into_iter().map(|w| w.id).collect())
            .unwrap_or_default()
    }

    /// Decide who leads at `now_ms`; `Some` when it changed for this node.
    pub fn elect(&mut self, now_ms: u64) -> Option<Transition> {
        let leader = (now_ms >= self.settle_until).then(|| {
            self.nodes
                .iter()
                .map(|(n, (s, _))| (*s, *n))
                .chain([(self.start_ms, self.me)])
                .min()
                .map_or(self.me, |(_, n)| n)
        });
        if leader == self.leader {
            return None;
        }
        let was = self.is_leader();
        self.leader = leader;
        match (was, self.is_leader()) {
            (false, true) => Some(Transition::Lead),
            (true, false) => Some(Transition::Follow),
            _ => None,
        }
    }

    /// The jobs every node's workers hold (what a new leader adopts).
    pub fn held(&self) -> Vec<HeldJob> {
        self.local
            .values()
            .chain(self.nodes.values().flat_map(|(_, ws)| ws.iter()))
            .flat_map(|w| {
                w.j.iter().map(move |j| HeldJob {
                    job: j.j.as_str().into(),
                    worker: w.id,
                    room: AgentRoom {
                        account: j.t.as_str().into(),
                        channel: j.c.as_str().into(),
                        agent: j.a.as_str().into(),
                    },
                })
            })
            .collect()
    }

    // ---- this node's workers ----

    /// A worker registered here.
    pub fn local_up(&mut self, id: WorkerId, agents: Vec<String>, capacity: u32) {
        self.local.insert(
            id,
            WorkerAd {
                id,
                a: agents,
                c: capacity,
                l: 0.0,
                d: false,
                j: Vec::new(),
            },
        );
        self.dirty = true;
    }

    /// A worker here reported its load.
    pub fn local_status(&mut self, id: WorkerId, load: f32, draining: bool) {
        if let Some(w) = self.local.get_mut(&id)
            && (w.l != load || w.d != draining)
        {
            w.l = load;
            w.d = draining;
            self.dirty = true;
        }
    }

    /// A worker here is gone.
    pub fn local_down(&mut self, id: WorkerId) {
        self.dirty |= self.local.remove(&id).is_some();
    }

    /// A worker here was offered `job` in `room`.
    pub fn local_job(&mut self, id: WorkerId, job: &str, room: &AgentRoom) {
        if let Some(w) = self.local.get_mut(&id)
            && !w.j.iter().any(|j| j.j == job)
        {
            w.j.push(JobAd {
                j: job.to_owned(),
                t: room.account.to_string(),
                c: room.channel.to_string(),
                a: room.agent.to_string(),
            });
            self.dirty = true;
        }
    }

    /// A worker here no longer holds `job` (refused, ended or cancelled).
    pub fn local_job_done(&mut self, id: WorkerId, job: &str) {
        if let Some(w) = self.local.get_mut(&id) {
            let before = w.j.len();
            w.j.retain(|j| j.j != job);
            self.dirty |= w.j.len() != before;
        }
    }

    /// This node's announcement, when it changed since the last call.
    pub fn take_announcement(&mut self) -> Option<(u64, Vec<WorkerAd>)> {
        std::mem::take(&mut self.dirty).then(|| self.announcement())
    }

    /// This node's announcement: its start time and workers.
    pub fn announcement(&self) -> (u64, Vec<WorkerAd>) {
        (self.start_ms, self.local.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(t: &str, c: &str, a: &str) -> AgentRoom {
        AgentRoom {
            account: t.into(),
            channel: c.into(),
            agent: a.into(),
        }
    }

    fn ad(id: u64, load: f32, jobs: &[&str]) -> WorkerAd {
        WorkerAd {
            id,
            a: vec!["voice".into()],
            c: 4,
            l: load,
            d: false,
            j: jobs
                .iter()
                .map(|j| JobAd {
                    j: (*j).into(),
                    t: "acct".into(),
                    c: "call-1".into(),
                    a: "voice".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn the_oldest_node_leads_once_settled_and_a_newcomer_never_takes_over() {
        let mut b = ClusterDispatch::new(2, 5_000, 3_000);
        assert_eq!(b.elect(5_000), None, "settling: nobody leads yet");
        assert_eq!(b.leader(), None);
        // Node 9 started earlier: it leads, although its id is larger.
        b.node_workers(9, 1_000, &[]);
        assert_eq!(b.elect(8_000), None);
        assert_eq!(b.leader(), Some(9));
        // A newer node with a smaller id changes nothing.
        b.node_workers(1, 7_000, &[]);
        assert_eq!(b.elect(8_100), None);
        assert_eq!(b.leader(), Some(9));
        // The leader goes: the next oldest (this node) leads.
        b.node_gone(9);
        assert_eq!(b.elect(8_200), Some(Transition::Lead));
        assert!(b.is_leader());
        // Equal start times: the smaller id.
        let mut c = ClusterDispatch::new(5, 0, 0);
        c.node_workers(3, 0, &[]);
        assert_eq!(c.elect(0), None);
        assert_eq!(c.leader(), Some(3));
        c.node_gone(3);
        assert_eq!(c.elect(1), Some(Transition::Lead));
        c.node_workers(4, 0, &[]);
        assert_eq!(c.elect(2), Some(Transition::Follow));
    }

    #[test]
    fn announcements_become_worker_changes_and_held_jobs() {
        let mut a = ClusterDispatch::new(1, 0, 0);
        let ch = a.node_workers(2, 0, &[ad(10, 0.1, &[]), ad(11, 0.2, &["j_x_1"])]);
        assert_eq!(ch.len(), 4, "{ch:?}");
        assert!(matches!(ch[0], WorkerChange::Registered { id: 10, .. }));
        // Same load: nothing; new load: status; missing: gone.
        let ch = a.node_workers(2, 0, &[ad(10, 0.5, &[])]);
        assert_eq!(
            ch,
            vec![
                WorkerChange::Status {
                    id: 10,
                    load: 0.5,
                    draining: false
                },
                WorkerChange::Gone { id: 11 }
            ]
        );
        a.node_workers(2, 0, &[ad(10, 0.5, &["j_x_2"])]);
        a.local_up(20, vec!["voice".into()], 2);
        a.local_job(20, "j_a_1", &room("acct", "call-2", "voice"));
        let held = a.held();
        assert_eq!(held.len(), 2);
        assert_eq!((&*held[0].job, held[0].worker), ("j_a_1", 20));
        assert_eq!((&*held[1].job, held[1].worker), ("j_x_2", 10));
        assert_eq!(a.node_of(20), Some(None));
        assert_eq!(a.node_of(10), Some(Some(2)));
        assert_eq!(a.node_of(99), None);
        assert_eq!(a.node_gone(2), vec![10]);
        assert_eq!(a.node_of(10), None);
    }

    #[test]
    fn the_local_announcement_changes_only_when_something_did() {
        let mut a = ClusterDispatch::new(1, 100, 0);
        assert!(a.take_announcement().is_none());
        a.local_up(5, vec!["voice".into()], 2);
        let (start, ws) = a.take_announcement().expect("changed");
        assert_eq!((start, ws.len()), (100, 1));
        a.local_status(5, 0.0, false);
        assert!(a.take_announcement().is_none(), "same status");
        a.local_job(5, "j_1", &room("t", "c", "voice"));
        a.local_job(5, "j_1", &room("t", "c", "voice"));
        assert_eq!(a.take_announcement().expect("job").1[0].j.len(), 1);
        a.local_job_done(5, "j_1");
        assert!(a.take_announcement().expect("done").1[0].j.is_empty());
        a.local_down(5);
        assert!(a.take_announcement().expect("gone").1.is_empty());
    }
}
