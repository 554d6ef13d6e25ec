//! Agent dispatch (sans-IO): which rooms get an agent, which worker runs it, and what happens
//! when a worker refuses, stalls, dies or drains. No IO and no clock (the time comes in as
//! milliseconds, as the hub's does): the driver feeds it events (members joining and leaving
//! channels, workers registering, reporting load, accepting or refusing jobs, going away)
//! with the time, drains [`Command`]s (offer a job to a worker, cancel one, evict a stale
//! agent) and calls [`Dispatcher::tick`] at [`Dispatcher::next_deadline`].
//!
//! `parlor serve` runs it when the configuration has an `[agents]` section
//! ([`AgentsConfig`]): the hub feeds it members joining and leaving, workers connect to
//! `/v1/worker` (the `worker` module, which also drives the commands), and each job's
//! agent joins with a job token the server mints ([`crate::auth::Authenticator::mint_job_token`]).
//!
//! In a cluster every node keeps a dispatcher fed with every member (its own and the other
//! nodes', from their presence events) and every worker (its own, and the others' from
//! their nodes' announcements), but only the leader's is [active](Dispatcher::activate):
//! it alone decides, so a room is dispatched once however many nodes its humans are on.
//! A node that takes over adopts the jobs workers hold ([`HeldJob`]) and the job agents it
//! finds in the channels instead of dispatching those rooms again.
//!
//! The rules:
//! * A channel matching a [`DispatchRule`] wants that rule's agent while a human is in it
//!   (an explicit [`Dispatcher::request`] wants it too, without a rule). A member is a human
//!   unless it joined as the agent of a job ([`Role::Agent`], from its join token).
//! * **One job per room and agent at a time** ("nothing is dispatched twice"): a new job
//!   starts only once the previous one is given up, and then the old one is cancelled at
//!   its worker; an agent of a job no longer wanted that joins anyway is evicted.
//! * A job is offered to the least loaded worker that serves the agent, is not draining or
//!   full and has not yet failed this room's current job; it must be accepted within
//!   [`DispatchOptions::offer_timeout`] and its agent must join within
//!   [`DispatchOptions::join_timeout`], else the next worker gets it. With no worker left the
//!   room waits (backoff up to [`DispatchOptions::max_backoff`]), and is served as soon as a
//!   worker registers or reports room.
//! * **Failover**: when a job's worker goes away, a job not yet running goes to another
//!   worker at once; a running agent keeps running (its connections are its own) until it
//!   leaves. When the agent leaves while humans remain, it has
//!   [`DispatchOptions::rejoin_window`] to come back under the same job (a reconnect) unless
//!   its worker is gone too (a killed process), in which case a new job starts at once.
//! * When the last human leaves, the agent stays for the rule's grace period, then its job
//!   is cancelled (the worker tells the agent to leave).
//!
//! Every collection here is bounded by what feeds it: rooms by the hub's channels, workers by
//! connections, commands by two per room per input (the driver drains them after each call).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parlor_protocol::validate::glob_match;
use serde::Deserialize;

/// The `[agents]` section: workers and the rules that give channels an agent.
///
/// ```toml
/// [agents]
/// worker_secret = "ws_change_me_0123456789"   # workers send it as a Bearer token
///
/// [[agents.rules]]
/// channels = ["call-*"]     # a human in a matching channel gets the agent
/// agent = "voice"           # the name workers register
/// grace_secs = 10           # the agent stays this long after the last human left
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// The secret workers present (`Authorization: Bearer …` on `/v1/worker`); it also keys
    /// the job tokens. At least 16 bytes; never logged.
    pub worker_secret: String,
    /// Which channels get which agent.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// A worker must answer an offer within this (ms).
    #[serde(default = "default_offer_ms")]
    pub offer_timeout_ms: u64,
    /// A job's agent must join within this after its worker accepted (ms).
    #[serde(default = "default_join_ms")]
    pub join_timeout_ms: u64,
    /// A running agent that dropped may rejoin under its job within this (ms).
    #[serde(default = "default_rejoin_ms")]
    pub rejoin_window_ms: u64,
    /// A worker reporting at least this load (0..1) gets no new jobs.
    #[serde(default = "default_load_threshold")]
    pub load_threshold: f32,
    /// The most workers connected at once.
    #[serde(default = "default_max_workers")]
    pub max_workers: usize,
}

/// One `[[agents.rules]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Only this tenant's channels (every tenant's when absent).
    #[serde(default)]
    pub account: Option<String>,
    /// Channel globs (`*` = any run of characters).
    pub channels: Vec<String>,
    /// The agent's name, as workers register it.
    pub agent: String,
    /// Seconds the agent stays after the last human left.
    #[serde(default = "default_grace_secs")]
    pub grace_secs: u64,
}

fn default_offer_ms() -> u64 {
    5_000
}
fn default_join_ms() -> u64 {
    15_000
}
fn default_rejoin_ms() -> u64 {
    5_000
}
fn default_load_threshold() -> f32 {
    0.8
}
fn default_max_workers() -> usize {
    1_024
}
fn default_grace_secs() -> u64 {
    10
}

/// The longest agent name a rule or a worker may use.
pub const MAX_AGENT_NAME: usize = 64;

/// Whether `name` is a usable agent name: 1–64 letters, digits, `-`, `_` or `.`.
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_AGENT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl AgentsConfig {
    /// Check ranges (the secret is never echoed).
    pub fn validate(&self) -> Result<(), String> {
        if self.worker_secret.len() < crate::config::MIN_SECRET_LEN {
            return Err(format!(
                "agents.worker_secret must be at least {} bytes",
                crate::config::MIN_SECRET_LEN
            ));
        }
        for (name, v) in [
            ("offer_timeout_ms", self.offer_timeout_ms),
            ("join_timeout_ms", self.join_timeout_ms),
            ("rejoin_window_ms", self.rejoin_window_ms),
        ] {
            if !(100..=600_000).contains(&v) {
                return Err(format!("agents.{name} must be in 100..=600000"));
            }
        }
        if !(self.load_threshold > 0.0 && self.load_threshold <= 1.0) {
            return Err("agents.load_threshold must be in (0, 1]".into());
        }
        if !(1..=100_000).contains(&self.max_workers) {
            return Err("agents.max_workers must be in 1..=100000".into());
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.channels.is_empty() || r.channels.iter().any(|c| c.is_empty() || c.len() > 256) {
                return Err(format!(
                    "agents.rules[{i}].channels must list 1 or more globs of 1-256 bytes"
                ));
            }
            if !valid_agent_name(&r.agent) {
                return Err(format!(
                    "agents.rules[{i}].agent must be 1-{MAX_AGENT_NAME} letters, digits, '-', '_' or '.'"
                ));
            }
            if r.grace_secs > 86_400 {
                return Err(format!(
                    "agents.rules[{i}].grace_secs must be at most 86400"
                ));
            }
        }
        Ok(())
    }

    /// The rules, for [`Dispatcher::new`].
    pub fn rules(&self) -> Vec<DispatchRule> {
        self.rules
            .iter()
            .map(|r| DispatchRule {
                account: r.account.clone(),
                channels: r.channels.clone(),
                agent: r.agent.clone(),
                grace: Duration::from_secs(r.grace_secs),
            })
            .collect()
    }

    /// The timings, for [`Dispatcher::new`].
    pub fn options(&self) -> DispatchOptions {
        DispatchOptions {
            offer_timeout: Duration::from_millis(self.offer_timeout_ms),
            join_timeout: Duration::from_millis(self.join_timeout_ms),
            rejoin_window: Duration::from_millis(self.rejoin_window_ms),
            load_threshold: self.load_threshold,
            ..DispatchOptions::default()
        }
    }
}

/// A worker connection, for its whole life (never reused).
pub type WorkerId = u64;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Which agent a channel gets.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchRule {
    /// The tenant the rule applies to (every tenant when `None`).
    pub account: Option<String>,
    /// Channel globs (`*` = any run of characters), e.g. `support-*`.
    pub channels: Vec<String>,
    /// The agent's name, as workers register it (e.g. `voice`).
    pub agent: String,
    /// How long the agent stays after the last human left.
    pub grace: Duration,
}

impl DispatchRule {
    fn matches(&self, account: &str, channel: &str) -> bool {
        self.account.as_deref().is_none_or(|a| a == account)
            && self.channels.iter().any(|p| glob_match(p, channel))
    }
}

/// Timing and limits of a [`Dispatcher`].
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchOptions {
    /// A worker must accept or refuse an offer within this.
    pub offer_timeout: Duration,
    /// After accepting, the job's agent must join the channel within this.
    pub join_timeout: Duration,
    /// A running agent that left (humans remaining) may rejoin under its job within this.
    pub rejoin_window: Duration,
    /// A worker at or above this load (0..1, as it reports it) gets no new jobs.
    pub load_threshold: f32,
    /// The longest wait between tries when no worker could take a room's job.
    pub max_backoff: Duration,
    /// The grace period of an explicit [`Dispatcher::request`].
    pub request_grace: Duration,
}

impl Default for DispatchOptions {
    fn default() -> Self {
        DispatchOptions {
            offer_timeout: Duration::from_secs(5),
            join_timeout: Duration::from_secs(15),
            rejoin_window: Duration::from_secs(5),
            load_threshold: 0.8,
            max_backoff: Duration::from_secs(30),
            request_grace: Duration::from_secs(30),
        }
    }
}

/// What a member of a channel is, for dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Anyone who did not join as a job's agent.
    Human,
    /// The agent of the job with this id (its join token says so).
    Agent {
        /// The job.
        job: Arc<str>,
    },
}

/// Which agent, in which channel of which tenant: what a [`Dispatcher`] keeps one job for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentRoom {
    /// The tenant.
    pub account: Arc<str>,
    /// The channel the agent joins.
    pub channel: Arc<str>,
    /// The agent's name.
    pub agent: Arc<str>,
}

/// A room's agent, as offered to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Unique for the dispatcher's life (`j_1`, `j_2`, …).
    pub id: Arc<str>,
    /// Where.
    pub room: AgentRoom,
    /// How many jobs this room had before this one since it last had none (0 for the first).
    pub attempt: u32,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Offer `job` to `worker` (it answers with [`Dispatcher::accepted`] or
    /// [`Dispatcher::refused`]).
    Offer {
        /// The worker.
        worker: WorkerId,
        /// The job.
        job: Job,
    },
    /// Tell `worker` to end `job` (its agent leaves the channel).
    Cancel {
        /// The worker.
        worker: WorkerId,
        /// The job's id.
        job: Arc<str>,
    },
    /// Disconnect `peer`: it joined as the agent of a job that is no longer wanted.
    Evict {
        /// The tenant.
        account: Arc<str>,
        /// The peer id.
        peer: Arc<str>,
    },
}

#[derive(Debug)]
struct Worker {
    agents: HashSet<String>,
    capacity: u32,
    load: f32,
    draining: bool,
    jobs: HashSet<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Offered to the worker; waiting for its answer until the deadline.
    Offered,
    /// Accepted; waiting for the agent to join until the deadline.
    Starting,
    /// The agent is in the channel.
    Running,
    /// The agent left with humans remaining; it may rejoin until the deadline.
    Rejoining,
}

#[derive(Debug)]
struct Current {
    job: Job,
    /// `None` once the worker went away.
    worker: Option<WorkerId>,
    phase: Phase,
    deadline: Option<u64>,
    /// The job's agent's peers in the channel (a reconnect may overlap).
    agents: HashSet<Arc<str>>,
}

#[derive(Debug)]
struct Room {
    humans: HashSet<Arc<str>>,
    grace: Duration,
    /// Set while no human is in the room: the job ends then.
    leave_at: Option<u64>,
    current: Option<Current>,
    /// Workers that failed this room (refused, timed out, went away) since its last running
    /// job: not offered it again until every candidate has failed and the backoff is over.
    tried: HashSet<WorkerId>,
    /// No worker could take it: try again at this time (or when a worker frees up).
    retry_at: Option<u64>,
    failures: u32,
    jobs_started: u32,
}

/// (tenant, channel).
type ChannelKey = (Arc<str>, Arc<str>);

/// The dispatch state of one server (see the module docs).
#[derive(Debug)]
pub struct Dispatcher {
    rules: Vec<DispatchRule>,
    opts: DispatchOptions,
    workers: HashMap<WorkerId, Worker>,
    /// Ordered by tenant, channel, agent: a channel's rooms are one range
    /// ([`Dispatcher::rooms_of`]), so a member joining or leaving costs O(log rooms).
    rooms: BTreeMap<AgentRoom, Room>,
    /// Job id → its room.
    jobs: HashMap<Arc<str>, AgentRoom>,
    next_job: u64,
    /// Job ids are this plus a counter (`j_` alone on one node; a cluster's nodes add their
    /// id so a dispatcher that takes over never reuses one).
    job_prefix: String,
    /// Whether this dispatcher decides (offers, cancels, evicts). In a cluster only the
    /// leader's does; the others keep the rooms and workers up to date, ready to take over.
    active: bool,
    /// Every job agent in every channel: (tenant, channel) → peer → job. What a dispatcher
    /// that takes over adopts.
    agents_in: HashMap<ChannelKey, HashMap<Arc<str>, Arc<str>>>,
    out: VecDeque<Command>,
}

/// A job a worker holds (offered or accepted and not ended), as the worker's node announces
/// it in a cluster: what a dispatcher taking over ([`Dispatcher::activate`]) adopts instead
/// of dispatching the room a second time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldJob {
    /// The job's id.
    pub job: Arc<str>,
    /// The worker holding it.
    pub worker: WorkerId,
    /// Its room.
    pub room: AgentRoom,
}

/// One room's dispatch state, for the admin API and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomStatus {
    /// Which.
    pub room: AgentRoom,
    /// Humans in the channel.
    pub humans: usize,
    /// The current job: id, worker and phase (`offered`, `starting`, `running`,
    /// `rejoining`), or `None` while waiting for a worker.
    pub job: Option<(Arc<str>, Option<WorkerId>, &'static str)>,
}

impl Dispatcher {
    /// A dispatcher with these rules.
    pub fn new(rules: Vec<DispatchRule>, opts: DispatchOptions) -> Dispatcher {
        Dispatcher {
            rules,
            opts,
            workers: HashMap::new(),
            rooms: BTreeMap::new(),
            jobs: HashMap::new(),
            next_job: 0,
            job_prefix: "j_".into(),
            active: true,
            agents_in: HashMap::new(),
            out: VecDeque::new(),
        }
    }

    /// Job ids start with `prefix` (default `j_`); a cluster node makes it unique to itself.
    pub fn set_job_prefix(&mut self, prefix: impl Into<String>) {
        self.job_prefix = prefix.into();
    }

    /// Whether this dispatcher decides (see [`activate`](Self::activate)).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Stop deciding (another node leads now): forget every job without cancelling it (the
    /// new leader adopts them) and drop commands not yet taken. Rooms, members and workers
    /// stay tracked.
    pub fn deactivate(&mut self) {
        self.active = false;
        for room in self.rooms.values_mut() {
            room.current = None;
            room.retry_at = None;
            room.tried.clear();
            room.failures = 0;
        }
        self.jobs.clear();
        for w in self.workers.values_mut() {
            w.jobs.clear();
        }
        self.out.clear();
    }

    /// Start deciding (this node leads now). The jobs workers hold (`held`, from their
    /// nodes' announcements) are adopted where their room still wants its agent, and
    /// cancelled where it does not (or where the room already adopted another); a job agent
    /// in a channel whose job no worker holds any more (its worker's link is gone, the
    /// process lives) is adopted as running without a worker when its channel has one
    /// waiting room, else evicted. Then every room still waiting is served.
    pub fn activate(&mut self, held: impl IntoIterator<Item = HeldJob>, now_ms: u64) {
        if self.active {
            return;
        }
        self.active = true;
        let join = ms(self.opts.join_timeout);
        let mut adopted: HashSet<Arc<str>> = HashSet::new();
        for h in held {
            let wants = self.rooms.get(&h.room).is_some_and(|r| {
                r.current.is_none() && (!r.humans.is_empty() || r.leave_at.is_some())
            });
            if !self.workers.contains_key(&h.worker) {
                continue;
            }
            if !wants {
                self.out.push_back(Command::Cancel {
                    worker: h.worker,
                    job: h.job,
                });
                continue;
            }
            let present = self.present_agents(&h.room, &h.job);
            self.adopt(
                &h.room,
                h.job.clone(),
                Some(h.worker),
                present,
                now_ms + join,
            );
            adopted.insert(h.job);
        }
        let mut orphans: Vec<(ChannelKey, Arc<str>, Arc<str>)> = self
            .agents_in
            .iter()
            .flat_map(|(k, peers)| {
                peers
                    .iter()
                    .filter(|(_, job)| !adopted.contains(*job))
                    .map(move |(p, job)| (k.clone(), p.clone(), job.clone()))
            })
            .collect();
        orphans.sort();
        for ((account, channel), peer, job) in orphans {
            if adopted.contains(&job) {
                continue; // another peer of the same job: adopted with it (`present_agents`)
            }
            let waiting = self.rooms_of(&account, &channel).into_iter().find(|k| {
                self.rooms.get(k).is_some_and(|r| {
                    r.current.is_none() && (!r.humans.is_empty() || r.leave_at.is_some())
                })
            });
            match waiting {
                Some(key) => {
                    let present = self.present_agents(&key, &job);
                    self.adopt(&key, job.clone(), None, present, now_ms + join);
                    adopted.insert(job);
                }
                None => self.out.push_back(Command::Evict {
                    account: account.clone(),
                    peer,
                }),
            }
        }
        let waiting: Vec<AgentRoom> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.current.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.serve(&key, now_ms);
        }
    }

    /// The peers in `room`'s channel that joined as the agent of `job`.
    fn present_agents(&self, room: &AgentRoom, job: &Arc<str>) -> HashSet<Arc<str>> {
        self.agents_in
            .get(&(room.account.clone(), room.channel.clone()))
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(_, j)| *j == job)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Make `job` the current job of `key`: running if its agent is there, else starting
    /// (its agent must join by `join_by`).
    fn adopt(
        &mut self,
        key: &AgentRoom,
        job: Arc<str>,
        worker: Option<WorkerId>,
        agents: HashSet<Arc<str>>,
        join_by: u64,
    ) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let (phase, deadline) = if agents.is_empty() {
            (Phase::Starting, Some(join_by))
        } else {
            (Phase::Running, None)
        };
        room.current = Some(Current {
            job: Job {
                id: job.clone(),
                room: key.clone(),
                attempt: room.jobs_started,
            },
            worker,
            phase,
            deadline,
            agents,
        });
        room.jobs_started += 1;
        room.retry_at = None;
        self.jobs.insert(job.clone(), key.clone());
        if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
            w.jobs.insert(job);
        }
    }

    /// The next command for the driver.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.out.pop_front()
    }

    /// When [`tick`](Self::tick) must next be called (`None`: only on input).
    pub fn next_deadline(&self) -> Option<u64> {
        self.rooms
            .values()
            .flat_map(|r| {
                [
                    r.leave_at,
                    r.retry_at,
                    r.current.as_ref().and_then(|c| c.deadline),
                ]
            })
            .flatten()
            .min()
    }

    /// Each room's state, sorted by tenant, channel and agent.
    pub fn rooms(&self) -> Vec<RoomStatus> {
        self.rooms
            .iter()
            .map(|(k, r)| RoomStatus {
                room: k.clone(),
                humans: r.humans.len(),
                job: r.current.as_ref().map(|c| {
                    let phase = match c.phase {
                        Phase::Offered => "offered",
                        Phase::Starting => "starting",
                        Phase::Running => "running",
                        Phase::Rejoining => "rejoining",
                    };
                    (c.job.id.clone(), c.worker, phase)
                }),
            })
            .collect()
    }

    // ------------------------------------------------------------------ members

    /// `peer` joined `channel` of `account` as `role`.
    pub fn member_joined(
        &mut self,
        account: &str,
        channel: &str,
        peer: &str,
        role: Role,
        now_ms: u64,
    ) {
        match role {
            Role::Human => {
                let rules: Vec<(Arc<str>, Duration)> = self
                    .rules
                    .iter()
                    .filter(|r| r.matches(account, channel))
                    .map(|r| (Arc::from(r.agent.as_str()), r.grace))
                    .collect();
                for (agent, grace) in rules {
                    let key = AgentRoom {
                        account: account.into(),
                        channel: channel.into(),
                        agent,
                    };
                    let room = self.room_mut(&key, grace);
                    room.humans.insert(peer.into());
                    room.leave_at = None;
                    self.serve(&key, now_ms);
                }
                // Explicitly requested rooms of this channel count the human too.
                let requested = self.rooms_of(account, channel);
                for key in requested {
                    if let Some(room) = self.rooms.get_mut(&key)
                        && room.humans.insert(peer.into())
                    {
                        room.leave_at = None;
                        self.serve(&key, now_ms);
                    }
                }
            }
            Role::Agent { job } => {
                self.agents_in
                    .entry((account.into(), channel.into()))
                    .or_default()
                    .insert(peer.into(), job.clone());
                if !self.active {
                    return;
                }
                let key = self
                    .jobs
                    .get(&job)
                    .filter(|k| &*k.account == account && &*k.channel == channel)
                    .cloned();
                match key.and_then(|k| self.rooms.get_mut(&k)) {
                    Some(room) if room.current.as_ref().is_some_and(|c| c.job.id == job) => {
                        room.tried.clear();
                        room.failures = 0;
                        if let Some(c) = room.current.as_mut() {
                            c.agents.insert(peer.into());
                            c.phase = Phase::Running;
                            c.deadline = None;
                        }
                    }
                    // Not (or no longer) this channel's job: out with it.
                    _ => self.out.push_back(Command::Evict {
                        account: account.into(),
                        peer: peer.into(),
                    }),
                }
            }
        }
    }

    /// `peer` left `channel` of `account` (or its connection closed).
    pub fn member_left(&mut self, account: &str, channel: &str, peer: &str, now_ms: u64) {
        let ch: ChannelKey = (account.into(), channel.into());
        if let Some(m) = self.agents_in.get_mut(&ch)
            && m.remove(peer).is_some()
            && m.is_empty()
        {
            self.agents_in.remove(&ch);
        }
        let keys = self.rooms_of(account, channel);
        for key in keys {
            let Some(room) = self.rooms.get_mut(&key) else {
                continue;
            };
            if room.humans.remove(peer) && room.humans.is_empty() {
                room.leave_at = Some(now_ms + ms(room.grace));
            }
            let mut lost_agent = false;
            if let Some(c) = room.current.as_mut()
                && c.agents.remove(peer)
                && c.agents.is_empty()
                && c.phase == Phase::Running
            {
                lost_agent = true;
            }
            if lost_agent {
                let gone = room.current.as_ref().is_some_and(|c| c.worker.is_none());
                if room.humans.is_empty() {
                    // Nobody to serve: the job is over.
                    self.end_job(&key, true);
                } else if gone {
                    // Its worker is gone too (a killed process): start over now.
                    self.fail_job(&key, now_ms);
                } else if let Some(c) = self.rooms.get_mut(&key).and_then(|r| r.current.as_mut()) {
                    c.phase = Phase::Rejoining;
                    c.deadline = Some(now_ms + ms(self.opts.rejoin_window));
                }
            }
        }
    }

    /// Ask for `agent` in `channel` now (the admin API, or a token that asks for one),
    /// whether or not a rule matches; it stays while humans are there, and for the grace
    /// of [`DispatchOptions::request_grace`] when none comes or after the last one left.
    /// `humans` are the channel's human members now (later ones come through
    /// [`member_joined`](Self::member_joined)).
    pub fn request<'a>(
        &mut self,
        account: &str,
        channel: &str,
        agent: &str,
        humans: impl IntoIterator<Item = &'a str>,
        now_ms: u64,
    ) {
        let key = AgentRoom {
            account: account.into(),
            channel: channel.into(),
            agent: agent.into(),
        };
        let grace = self.opts.request_grace;
        let room = self.room_mut(&key, grace);
        room.humans.extend(humans.into_iter().map(Arc::from));
        if room.humans.is_empty() {
            room.leave_at.get_or_insert(now_ms + ms(grace));
        } else {
            room.leave_at = None;
        }
        self.serve(&key, now_ms);
    }

    // ------------------------------------------------------------------ workers

    /// A worker registered: it runs these agents, up to `capacity` jobs at once.
    pub fn worker_registered(
        &mut self,
        worker: WorkerId,
        agents: impl IntoIterator<Item = String>,
        capacity: u32,
        now_ms: u64,
    ) {
        self.workers.insert(
            worker,
            Worker {
                agents: agents.into_iter().collect(),
                capacity,
                load: 0.0,
                draining: false,
                jobs: HashSet::new(),
            },
        );
        self.serve_waiting(now_ms);
    }

    /// A worker's load report (0..1, e.g. its CPU share) and whether it is draining (no new
    /// jobs; its running ones go on).
    pub fn worker_status(&mut self, worker: WorkerId, load: f32, draining: bool, now_ms: u64) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.load = if load.is_finite() {
                load.clamp(0.0, 1.0)
            } else {
                1.0
            };
            w.draining = draining;
        }
        self.serve_waiting(now_ms);
    }

    /// The worker's connection closed (or it was killed).
    pub fn worker_gone(&mut self, worker: WorkerId, now_ms: u64) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        for job in w.jobs {
            let Some(key) = self.jobs.get(&job).cloned() else {
                continue;
            };
            let Some(room) = self.rooms.get_mut(&key) else {
                continue;
            };
            room.tried.insert(worker);
            let Some(c) = room.current.as_mut() else {
                continue;
            };
            c.worker = None;
            match c.phase {
                // Its agent is in the room on connections of its own: let it be.
                Phase::Running => {}
                Phase::Offered | Phase::Starting | Phase::Rejoining => self.fail_job(&key, now_ms),
            }
        }
    }

    /// `worker` took `job`: its agent should join within the join timeout.
    pub fn accepted(&mut self, worker: WorkerId, job: &str, now_ms: u64) {
        let join = self.opts.join_timeout;
        if let Some(c) = self.current_of(job, worker)
            && c.phase == Phase::Offered
        {
            c.phase = Phase::Starting;
            c.deadline = Some(now_ms + ms(join));
        }
    }

    /// `worker` turned `job` down (full, draining, cannot run that agent): the next worker
    /// gets it.
    pub fn refused(&mut self, worker: WorkerId, job: &str, now_ms: u64) {
        let offered = self
            .current_of(job, worker)
            .is_some_and(|c| matches!(c.phase, Phase::Offered | Phase::Starting));
        if offered && let Some(key) = self.jobs.get(job).cloned() {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.jobs.remove(job);
            }
            if let Some(room) = self.rooms.get_mut(&key) {
                room.tried.insert(worker);
                if let Some(c) = room.current.as_mut() {
                    c.worker = None; // nothing to cancel there
                }
            }
            self.fail_job(&key, now_ms);
        }
    }

    /// `worker` says `job` ended on its own (the agent finished or crashed). A room with
    /// humans in it gets a new job.
    pub fn job_ended(&mut self, worker: WorkerId, job: &str, now_ms: u64) {
        if self.current_of(job, worker).is_none() {
            return;
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.jobs.remove(job);
        }
        let Some(key) = self.jobs.get(job).cloned() else {
            return;
        };
        if let Some(c) = self.rooms.get_mut(&key).and_then(|r| r.current.as_mut()) {
            c.worker = None;
        }
        let humans = self.rooms.get(&key).is_some_and(|r| !r.humans.is_empty());
        if humans {
            self.fail_job(&key, now_ms);
        } else {
            self.end_job(&key, false);
        }
    }

    // ------------------------------------------------------------------ time

    /// Act on every deadline at or before `now_ms`.
    pub fn tick(&mut self, now_ms: u64) {
        let keys: Vec<AgentRoom> = self.rooms.keys().cloned().collect();
        for key in keys {
            let Some(room) = self.rooms.get(&key) else {
                continue;
            };
            if room.leave_at.is_some_and(|t| t <= now_ms) {
                self.end_job(&key, true);
                self.rooms.remove(&key);
                continue;
            }
            if room
                .current
                .as_ref()
                .and_then(|c| c.deadline)
                .is_some_and(|t| t <= now_ms)
            {
                let worker = room.current.as_ref().and_then(|c| c.worker);
                if let (Some(w), Some(room)) = (worker, self.rooms.get_mut(&key)) {
                    room.tried.insert(w);
                }
                self.fail_job(&key, now_ms);
                continue;
            }
            if room.current.is_none() && room.retry_at.is_some_and(|t| t <= now_ms) {
                // A new round: every worker is a candidate again.
                if let Some(room) = self.rooms.get_mut(&key) {
                    room.tried.clear();
                }
                self.serve(&key, now_ms);
            }
        }
    }

    // ------------------------------------------------------------------ inside

    /// The rooms (one per agent) of `channel` of `account`.
    fn rooms_of(&self, account: &str, channel: &str) -> Vec<AgentRoom> {
        let from = AgentRoom {
            account: account.into(),
            channel: channel.into(),
            agent: "".into(),
        };
        self.rooms
            .range(from..)
            .map(|(k, _)| k)
            .take_while(|k| &*k.account == account && &*k.channel == channel)
            .cloned()
            .collect()
    }

    fn room_mut(&mut self, key: &AgentRoom, grace: Duration) -> &mut Room {
        self.rooms.entry(key.clone()).or_insert_with(|| Room {
            humans: HashSet::new(),
            grace,
            leave_at: None,
            current: None,
            tried: HashSet::new(),
            retry_at: None,
            failures: 0,
            jobs_started: 0,
        })
    }

    fn current_of(&mut self, job: &str, worker: WorkerId) -> Option<&mut Current> {
        let key = self.jobs.get(job)?;
        self.rooms
            .get_mut(key)?
            .current
            .as_mut()
            .filter(|c| &*c.job.id == job && c.worker == Some(worker))
    }

    /// The job of `key` is given up: cancel it at its worker (if any) and offer a new one.
    fn fail_job(&mut self, key: &AgentRoom, now_ms: u64) {
        self.end_job(key, true);
        if let Some(room) = self.rooms.get_mut(key) {
            room.failures += 1;
        }
        self.serve(key, now_ms);
    }

    /// Forget the room's current job, cancelling it at its worker when `cancel`.
    fn end_job(&mut self, key: &AgentRoom, cancel: bool) {
        let Some(c) = self.rooms.get_mut(key).and_then(|r| r.current.take()) else {
            return;
        };
        self.jobs.remove(&c.job.id);
        match c.worker {
            Some(w) => {
                if let Some(worker) = self.workers.get_mut(&w) {
                    worker.jobs.remove(&c.job.id);
                }
                if cancel {
                    self.out.push_back(Command::Cancel {
                        worker: w,
                        job: c.job.id,
                    });
                }
            }
            // Its worker cannot be told (its link dropped while the agent ran on): the
            // agent itself is shown out, so it never stays in an empty room.
            None if cancel => {
                let mut agents: Vec<Arc<str>> = c.agents.into_iter().collect();
                agents.sort();
                for peer in agents {
                    self.out.push_back(Command::Evict {
                        account: key.account.clone(),
                        peer,
                    });
                }
            }
            None => {}
        }
    }

    fn serve_waiting(&mut self, now_ms: u64) {
        let waiting: Vec<AgentRoom> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.current.is_none() && r.retry_at.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.serve(&key, now_ms);
        }
    }

    /// Offer the room a job if it wants one and has none.
    fn serve(&mut self, key: &AgentRoom, now_ms: u64) {
        if !self.active {
            return;
        }
        let Some(room) = self.rooms.get(key) else {
            return;
        };
        if room.current.is_some() || (room.humans.is_empty() && room.leave_at.is_none()) {
            return;
        }
        let pick = |tried: &HashSet<WorkerId>| {
            self.workers
                .iter()
                .filter(|(id, w)| {
                    !tried.contains(id)
                        && w.agents.contains(&*key.agent)
                        && !w.draining
                        && (w.jobs.len() as u32) < w.capacity
                        && w.load < self.opts.load_threshold
                })
                .min_by(|(a, x), (b, y)| {
                    let fx = x.jobs.len() as f32 / x.capacity.max(1) as f32 + x.load;
                    let fy = y.jobs.len() as f32 / y.capacity.max(1) as f32 + y.load;
                    fx.total_cmp(&fy).then(a.cmp(b))
                })
                .map(|(id, _)| *id)
        };
        let Some(worker) = pick(&room.tried) else {
            // No worker, or every candidate failed this room once: wait. A worker that has
            // not failed it (a new one, or one that reports room) ends the wait; the ones
            // that failed get it again only in the next round, after the backoff (`tick`).
            let backoff = Duration::from_millis(500 * 2u64.pow(room.failures.min(16)))
                .min(self.opts.max_backoff);
            if let Some(room) = self.rooms.get_mut(key) {
                room.retry_at = Some(now_ms + ms(backoff));
            }
            return;
        };
        self.next_job += 1;
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let job = Job {
            id: format!("{}{}", self.job_prefix, self.next_job).into(),
            room: key.clone(),
            attempt: room.jobs_started,
        };
        room.jobs_started += 1;
        room.retry_at = None;
        room.current = Some(Current {
            job: job.clone(),
            worker: Some(worker),
            phase: Phase::Offered,
            deadline: Some(now_ms + ms(self.opts.offer_timeout)),
            agents: HashSet::new(),
        });
        self.jobs.insert(job.id.clone(), key.clone());
        if let Some(w) = self.workers.get_mut(&worker) {
            w.jobs.insert(job.id.clone());
        }
        self.out.push_back(Command::Offer { worker, job });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(glob: &str, agent: &str, grace_s: u64) -> DispatchRule {
        DispatchRule {
            account: None,
            channels: vec![glob.into()],
            agent: agent.into(),
            grace: Duration::from_secs(grace_s),
        }
    }

    fn agent_of(job: &Job) -> Role {
        Role::Agent {
            job: job.id.clone(),
        }
    }

    fn cancel(worker: WorkerId, job: &Job) -> Vec<Command> {
        vec![Command::Cancel {
            worker,
            job: job.id.clone(),
        }]
    }

    fn drain(d: &mut Dispatcher) -> Vec<Command> {
        std::iter::from_fn(|| d.poll_command()).collect()
    }

    fn offer(cmds: &[Command]) -> (WorkerId, Job) {
        match cmds {
            [Command::Offer { worker, job }] => (*worker, job.clone()),
            other => panic!("want one offer, got {other:?}"),
        }
    }

    fn setup() -> (Dispatcher, u64) {
        let mut d = Dispatcher::new(
            vec![rule("support-*", "voice", 10)],
            DispatchOptions::default(),
        );
        let t: u64 = 1_000_000;
        d.worker_registered(1, ["voice".to_string()], 4, t);
        (d, t)
    }

    /// `n` seconds in milliseconds.
    fn s(n: u64) -> u64 {
        n * 1000
    }

    #[test]
    fn a_human_in_a_matching_channel_gets_one_agent_and_it_leaves_after_the_grace() {
        let (mut d, t) = setup();
        d.member_joined("acct", "lobby", "h0", Role::Human, t);
        assert!(drain(&mut d).is_empty(), "no rule for lobby");
        d.member_joined("acct", "support-42", "h1", Role::Human, t);
        let (w, job) = offer(&drain(&mut d));
        assert_eq!(
            (w, &*job.room.channel, &*job.room.agent, job.attempt),
            (1, "support-42", "voice", 0)
        );
        // A second human: still one job.
        d.member_joined("acct", "support-42", "h2", Role::Human, t);
        assert!(drain(&mut d).is_empty());
        d.accepted(1, &job.id, t);
        d.member_joined("acct", "support-42", "a1", agent_of(&job), t + s(1));
        assert_eq!(d.rooms()[0].job.as_ref().map(|j| j.2), Some("running"));
        assert_eq!(d.next_deadline(), None, "nothing timed while running");
        // Both humans leave: the agent stays for the grace, then its job is cancelled.
        d.member_left("acct", "support-42", "h1", t + s(60));
        d.member_left("acct", "support-42", "h2", t + s(61));
        assert_eq!(d.next_deadline(), Some(t + s(71)));
        d.tick(t + s(70));
        assert!(drain(&mut d).is_empty());
        d.tick(t + s(71));
        assert_eq!(drain(&mut d), cancel(1, &job));
        assert!(d.rooms().is_empty());
        // The agent leaving afterwards changes nothing.
        d.member_left("acct", "support-42", "a1", t + s(72));
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn a_human_back_within_the_grace_keeps_the_agent() {
        let (mut d, t) = setup();
        d.member_joined("acct", "support-1", "h1", Role::Human, t);
        let (_, job) = offer(&drain(&mut d));
        d.accepted(1, &job.id, t);
        d.member_joined("acct", "support-1", "a", agent_of(&job), t);
        d.member_left("acct", "support-1", "h1", t + s(5));
        d.member_joined("acct", "support-1", "h1b", Role::Human, t + s(8));
        d.tick(t + s(30));
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.rooms()[0].job.as_ref().map(|j| j.2), Some("running"));
    }

    #[test]
    fn a_refusal_or_a_silent_worker_passes_the_job_on_and_the_old_one_is_cancelled() {
        let (mut d, t) = setup();
        d.worker_registered(2, ["voice".to_string()], 4, t);
        d.member_joined("acct", "support-1", "h", Role::Human, t);
        let (w1, j1) = offer(&drain(&mut d));
        assert_eq!(w1, 1, "ties go to the lower id");
        d.refused(1, &j1.id, t);
        let (w2, j2) = offer(&drain(&mut d));
        assert_eq!((w2, j2.attempt), (2, 1));
        assert_ne!(j1.id, j2.id);
        // Worker 2 accepts but its agent never joins: after the join timeout the job is
        // cancelled there and worker 1 gets a new one (every candidate has failed once).
        d.accepted(2, &j2.id, t);
        assert_eq!(d.next_deadline(), Some(t + s(15)));
        d.tick(t + s(15));
        assert_eq!(drain(&mut d), cancel(2, &j2));
        // Every candidate failed once: a new round after a backoff (no hot loop of offers
        // with workers that refuse at once).
        assert_eq!(d.next_deadline(), Some(t + s(17)));
        d.tick(t + s(17));
        let (w3, j3) = offer(&drain(&mut d));
        assert_eq!(w3, 1);
        // The late agent of j2 joins anyway: evicted, and j3 is untouched.
        d.member_joined("acct", "support-1", "late", agent_of(&j2), t + s(16));
        assert_eq!(
            drain(&mut d),
            vec![Command::Evict {
                account: "acct".into(),
                peer: "late".into()
            }]
        );
        assert_eq!(d.rooms()[0].job.as_ref().map(|j| j.0.clone()), Some(j3.id));
    }

    #[test]
    fn with_no_worker_the_room_waits_and_is_served_when_one_registers() {
        let mut d = Dispatcher::new(vec![rule("*", "voice", 5)], DispatchOptions::default());
        let t: u64 = 1_000_000;
        d.worker_registered(7, ["other".to_string()], 4, t);
        d.member_joined("acct", "c", "h", Role::Human, t);
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.rooms()[0].job, None);
        assert_eq!(d.next_deadline(), Some(t + 500));
        d.tick(t + s(1));
        assert!(drain(&mut d).is_empty());
        d.worker_registered(8, ["voice".to_string()], 1, t + s(2));
        let (w, _) = offer(&drain(&mut d));
        assert_eq!(w, 8);
    }

    #[test]
    fn full_draining_and_loaded_workers_get_no_jobs() {
        let mut d = Dispatcher::new(vec![rule("*", "voice", 5)], DispatchOptions::default());
        let t: u64 = 1_000_000;
        d.worker_registered(1, ["voice".to_string()], 1, t);
        d.worker_registered(2, ["voice".to_string()], 8, t);
        d.worker_registered(3, ["voice".to_string()], 8, t);
        d.worker_status(2, 0.95, false, t);
        d.worker_status(3, 0.1, true, t);
        d.member_joined("acct", "a", "h1", Role::Human, t);
        let (w, _) = offer(&drain(&mut d));
        assert_eq!(w, 1);
        d.member_joined("acct", "b", "h2", Role::Human, t);
        assert!(drain(&mut d).is_empty(), "1 is full, 2 loaded, 3 draining");
        d.worker_status(2, 0.2, false, t + s(1));
        let (w, _) = offer(&drain(&mut d));
        assert_eq!(w, 2);
    }

    #[test]
    fn a_killed_worker_fails_over_at_once_and_a_reconnecting_agent_keeps_its_job() {
        let (mut d, t) = setup();
        d.worker_registered(2, ["voice".to_string()], 4, t);
        d.member_joined("acct", "support-1", "h", Role::Human, t);
        let (w, job) = offer(&drain(&mut d));
        d.accepted(w, &job.id, t);
        d.member_joined("acct", "support-1", "a1", agent_of(&job), t);

        // The agent's connection drops and comes back under the same job: no new job.
        d.member_left("acct", "support-1", "a1", t + s(10));
        assert_eq!(d.rooms()[0].job.as_ref().map(|j| j.2), Some("rejoining"));
        d.member_joined("acct", "support-1", "a1b", agent_of(&job), t + s(11));
        assert!(drain(&mut d).is_empty());
        assert_eq!(d.rooms()[0].job.as_ref().map(|j| j.2), Some("running"));

        // SIGKILL: the worker's link and its agent's connection close together (either
        // order): a new job on the other worker at once, never a second one.
        d.worker_gone(w, t + s(20));
        assert!(drain(&mut d).is_empty(), "the agent is still in the room");
        d.member_left("acct", "support-1", "a1b", t + s(20));
        let (w2, job2) = offer(&drain(&mut d));
        assert_ne!(w2, w);
        assert_eq!(job2.attempt, 1);
        // The other order: agent first, then the worker.
        d.accepted(w2, &job2.id, t + s(20));
        d.member_joined("acct", "support-1", "a2", agent_of(&job2), t + s(21));
        d.worker_registered(3, ["voice".to_string()], 4, t + s(21));
        d.member_left("acct", "support-1", "a2", t + s(30));
        assert!(drain(&mut d).is_empty(), "rejoin window");
        d.worker_gone(w2, t + s(30));
        let (w3, _) = offer(&drain(&mut d));
        assert_eq!(w3, 3);
    }

    #[test]
    fn an_agent_whose_worker_cannot_be_told_is_evicted_when_its_room_ends() {
        let (mut d, t) = setup();
        d.member_joined("acct", "support-1", "h", Role::Human, t);
        let (w, job) = offer(&drain(&mut d));
        d.accepted(w, &job.id, t);
        d.member_joined("acct", "support-1", "a1", agent_of(&job), t);
        // The worker's link drops (its process lives on, and so does its agent).
        d.worker_gone(w, t + s(1));
        assert!(drain(&mut d).is_empty());
        // The human leaves: after the grace, the agent is shown out by the server.
        d.member_left("acct", "support-1", "h", t + s(2));
        d.tick(t + s(12));
        assert_eq!(
            drain(&mut d),
            vec![Command::Evict {
                account: "acct".into(),
                peer: "a1".into()
            }]
        );
        assert!(d.rooms().is_empty());
    }

    #[test]
    fn an_agent_that_does_not_rejoin_is_replaced_after_the_window() {
        let (mut d, t) = setup();
        d.member_joined("acct", "support-1", "h", Role::Human, t);
        let (w, job) = offer(&drain(&mut d));
        d.accepted(w, &job.id, t);
        d.member_joined("acct", "support-1", "a", agent_of(&job), t);
        d.member_left("acct", "support-1", "a", t + s(10));
        d.tick(t + s(14));
        assert!(drain(&mut d).is_empty());
        d.tick(t + s(15));
        assert_eq!(drain(&mut d), cancel(1, &job));
        d.tick(t + s(16));
        let (w2, _) = offer(&drain(&mut d));
        assert_eq!(w2, 1, "the only worker, in a new round after 1 s");
    }

    #[test]
    fn an_explicit_request_without_a_rule_is_served_and_ends_when_nobody_comes() {
        let (mut d, t) = setup();
        d.request("acct", "meeting-7", "voice", [], t);
        let (_, job) = offer(&drain(&mut d));
        assert_eq!(&*job.room.channel, "meeting-7");
        d.accepted(1, &job.id, t);
        d.member_joined("acct", "meeting-7", "a", agent_of(&job), t);
        d.tick(t + s(30));
        assert_eq!(drain(&mut d), cancel(1, &job));
        // With a human it stays.
        d.member_joined("acct", "meeting-8", "h", Role::Human, t + s(31));
        d.request("acct", "meeting-8", "voice", ["h"], t + s(31));
        let (_, job) = offer(&drain(&mut d));
        d.accepted(1, &job.id, t + s(32));
        d.member_joined("acct", "meeting-8", "a", agent_of(&job), t + s(33));
        d.tick(t + s(120));
        assert!(drain(&mut d).is_empty());
    }

    #[test]
    fn rules_are_per_tenant_and_an_agent_of_another_channel_is_evicted() {
        let mut d = Dispatcher::new(
            vec![DispatchRule {
                account: Some("a".into()),
                ..rule("*", "voice", 5)
            }],
            DispatchOptions::default(),
        );
        let t: u64 = 1_000_000;
        d.worker_registered(1, ["voice".to_string()], 4, t);
        d.member_joined("b", "x", "h", Role::Human, t);
        assert!(drain(&mut d).is_empty());
        d.member_joined("a", "x", "h", Role::Human, t);
        let (_, job) = offer(&drain(&mut d));
        d.member_joined("a", "y", "intruder", agent_of(&job), t);
        assert_eq!(
            drain(&mut d),
            vec![Command::Evict {
                account: "a".into(),
                peer: "intruder".into()
            }]
        );
    }

    #[test]
    fn an_inactive_dispatcher_tracks_but_never_commands_and_a_takeover_adopts_what_runs() {
        // Two nodes' dispatchers fed the same members and workers; only the leader acts.
        let (mut leader, t) = setup();
        let (mut standby, _) = setup();
        standby.deactivate();
        standby.set_job_prefix("j_b_");
        for d in [&mut leader, &mut standby] {
            d.worker_registered(2, ["voice".to_string()], 4, t);
            d.member_joined("acct", "support-1", "h1", Role::Human, t);
            d.member_joined("acct", "support-2", "h2", Role::Human, t);
            d.member_joined("acct", "support-3", "h3", Role::Human, t);
        }
        assert!(
            drain(&mut standby).is_empty(),
            "the standby decides nothing"
        );
        let offers = drain(&mut leader);
        assert_eq!(offers.len(), 3);
        let jobs: Vec<(WorkerId, Job)> = offers
            .iter()
            .map(|c| offer(std::slice::from_ref(c)))
            .collect();
        // Room 1 runs (agent in the channel), room 2's job is accepted but its agent has
        // not joined, room 3's offer is unanswered and its human left.
        for (w, j) in &jobs[..2] {
            leader.accepted(*w, &j.id, t);
        }
        for d in [&mut leader, &mut standby] {
            d.member_joined("acct", "support-1", "a1", agent_of(&jobs[0].1), t + 10);
        }
        for d in [&mut leader, &mut standby] {
            d.member_left("acct", "support-3", "h3", t + 20);
        }
        assert!(
            drain(&mut standby).is_empty(),
            "no eviction of agents it does not know"
        );
        // The leader dies; the standby takes over with what the workers' nodes announce.
        let held: Vec<HeldJob> = jobs
            .iter()
            .map(|(w, j)| HeldJob {
                job: j.id.clone(),
                worker: *w,
                room: j.room.clone(),
            })
            .collect();
        standby.activate(held, t + 100);
        assert!(standby.is_active());
        assert!(
            drain(&mut standby).is_empty(),
            "nothing dispatched twice: every held job adopted"
        );
        let phases: Vec<Option<&str>> = standby
            .rooms()
            .iter()
            .map(|r| r.job.as_ref().map(|j| j.2))
            .collect();
        assert_eq!(
            phases,
            [Some("running"), Some("starting"), Some("starting")]
        );
        // Room 3 had nobody left: its job ends with the grace, cancelled at its worker.
        standby.tick(t + 20 + s(10));
        assert!(drain(&mut standby).contains(&Command::Cancel {
            worker: jobs[2].0,
            job: jobs[2].1.id.clone()
        }));
        // Room 2's agent never joins: the join timeout moves it on, with the new prefix.
        standby.tick(t + 100 + s(15));
        let cmds = drain(&mut standby);
        assert!(
            cmds.contains(&Command::Cancel {
                worker: jobs[1].0,
                job: jobs[1].1.id.clone()
            }),
            "{cmds:?}"
        );
        assert!(
            cmds.iter().any(|c| matches!(c, Command::Offer { job, .. } if job.id.starts_with("j_b_") && &*job.room.channel == "support-2")),
            "{cmds:?}"
        );
        // Room 1 ends normally under the new leader: cancelled at the worker that runs it.
        standby.member_left("acct", "support-1", "h1", t + s(60));
        standby.tick(t + s(70));
        let cmds = drain(&mut standby);
        assert!(cmds.contains(&cancel(jobs[0].0, &jobs[0].1)[0]), "{cmds:?}");
    }

    #[test]
    fn a_takeover_cancels_unwanted_and_duplicate_jobs_and_adopts_an_orphaned_agent() {
        let (mut d, t) = setup();
        d.deactivate();
        d.member_joined("acct", "support-1", "h1", Role::Human, t);
        d.member_joined("acct", "support-2", "h2", Role::Human, t);
        // An agent whose worker's link is gone (no node announces its job) runs in room 2.
        d.member_joined(
            "acct",
            "support-2",
            "a2",
            Role::Agent {
                job: "j_x_7".into(),
            },
            t,
        );
        // And a stray agent in a channel that wants none.
        d.member_joined(
            "acct",
            "lobby",
            "a9",
            Role::Agent {
                job: "j_x_9".into(),
            },
            t,
        );
        let room = |c: &str| AgentRoom {
            account: "acct".into(),
            channel: c.into(),
            agent: "voice".into(),
        };
        let held = vec![
            HeldJob {
                job: "j_x_1".into(),
                worker: 1,
                room: room("support-1"),
            },
            HeldJob {
                job: "j_x_2".into(),
                worker: 1,
                room: room("support-1"),
            },
            HeldJob {
                job: "j_x_3".into(),
                worker: 1,
                room: room("support-9"),
            },
            HeldJob {
                job: "j_x_4".into(),
                worker: 77,
                room: room("support-1"),
            },
        ];
        d.activate(held, t + 1);
        let cmds = drain(&mut d);
        assert_eq!(
            cmds,
            vec![
                Command::Cancel {
                    worker: 1,
                    job: "j_x_2".into()
                },
                Command::Cancel {
                    worker: 1,
                    job: "j_x_3".into()
                },
                Command::Evict {
                    account: "acct".into(),
                    peer: "a9".into()
                },
            ]
        );
        let jobs: Vec<_> = d.rooms().into_iter().map(|r| r.job).collect();
        assert_eq!(
            jobs,
            vec![
                Some(("j_x_1".into(), Some(1), "starting")),
                Some(("j_x_7".into(), None, "running")),
            ]
        );
        // The orphaned agent's room empties: the agent is shown out (no worker to tell).
        d.member_left("acct", "support-2", "h2", t + 2);
        d.tick(t + 2 + s(10));
        assert_eq!(
            drain(&mut d),
            vec![Command::Evict {
                account: "acct".into(),
                peer: "a2".into()
            }]
        );
    }
}
