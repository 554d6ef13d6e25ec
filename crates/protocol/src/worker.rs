//! The agent-worker protocol (`/v1/worker`, Parlor's own; no Metered client speaks it).
//!
//! A worker is a process that runs agents (e.g. `parlor worker`). It opens a WebSocket to
//! `/v1/worker` with `Authorization: Bearer <agents.worker_secret>` and exchanges JSON text
//! frames, one message each:
//!
//! 1. worker → server, first, within [`REGISTER_WITHIN_MS`]: [`ToServer::Register`] (the
//!    agents it runs, how many jobs at once); server → worker: [`ToWorker::Registered`].
//! 2. server → worker: [`ToWorker::Offer`] (a job: which agent, which channel, and a token
//!    the agent joins with); the worker answers [`ToServer::Accept`] or
//!    [`ToServer::Refuse`] within the server's offer timeout, and after accepting, its agent
//!    joins the channel with the token within the join timeout.
//! 3. server → worker: [`ToWorker::Cancel`] (the room no longer wants the agent: it leaves);
//!    worker → server: [`ToServer::Ended`] when a job ends on the worker's side (the agent
//!    finished or failed), [`ToServer::Status`] with its load, and `draining: true` to take
//!    no new jobs (a rolling restart).
//!
//! A frame that does not parse, or breaks the rules above, gets [`ToWorker::Error`] and the
//! connection is closed (1008).
//!
//! ```
//! use parlor_protocol::worker::{ToServer, ToWorker};
//!
//! let reg: ToServer = serde_json::from_str(r#"{"type":"register","agents":["voice"],"capacity":4}"#)?;
//! assert_eq!(reg, ToServer::Register { agents: vec!["voice".into()], capacity: 4 });
//! let cancel = serde_json::to_string(&ToWorker::Cancel { job: "j_1".into() })?;
//! assert_eq!(cancel, r#"{"type":"cancel","job":"j_1"}"#);
//! # Ok::<(), serde_json::Error>(())
//! ```

use serde::{Deserialize, Serialize};

/// The path workers connect to.
pub const PATH: &str = "/v1/worker";
/// A worker must register within this after the upgrade.
pub const REGISTER_WITHIN_MS: u64 = 10_000;
/// The largest frame either side sends.
pub const MAX_FRAME: usize = 16 * 1024;
/// The most agent names one worker registers.
pub const MAX_AGENTS: usize = 32;
/// The most jobs one worker may say it runs at once.
pub const MAX_CAPACITY: u32 = 10_000;

/// What a worker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ToServer {
    /// First frame: the agents this worker runs and how many jobs it takes at once.
    Register {
        /// Agent names (1–[`MAX_AGENTS`]), as rules name them.
        agents: Vec<String>,
        /// Jobs at once (1–[`MAX_CAPACITY`]).
        capacity: u32,
    },
    /// Its load (0..1, e.g. CPU share) and whether it takes new jobs.
    Status {
        /// 0 (idle) to 1 (full); at the server's threshold or above it gets no offers.
        load: f32,
        /// No new jobs; running ones go on.
        #[serde(default)]
        draining: bool,
    },
    /// It takes the job offered: its agent will join.
    Accept {
        /// The job's id.
        job: String,
    },
    /// It does not take the job offered (another worker gets it).
    Refuse {
        /// The job's id.
        job: String,
        /// Why, for the server's log (at most 200 characters are kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A job it ran ended on its side (the agent finished or failed).
    Ended {
        /// The job's id.
        job: String,
    },
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ToWorker {
    /// Registration accepted.
    Registered {
        /// This connection's worker id (for logs).
        worker: u64,
    },
    /// Run an agent.
    Offer {
        /// The job's id (answer with it).
        job: String,
        /// The agent to run.
        agent: String,
        /// The tenant.
        account: String,
        /// The channel the agent joins.
        channel: String,
        /// Earlier jobs this room had since it last had an agent running (0 for the first).
        attempt: u32,
        /// The credential the agent connects to `/v1` with (`?token=`): all actions on this
        /// channel only, marking it as the job's agent. A secret: never log it.
        token: String,
    },
    /// End a job: its agent leaves.
    Cancel {
        /// The job's id.
        job: String,
    },
    /// The last frame broke the protocol; the connection closes.
    Error {
        /// What was wrong.
        message: String,
    },
}
