//! The IO side of agent dispatch: the `/v1/worker` endpoint (one task per worker
//! connection) and the driver that carries the [`Dispatcher`](crate::dispatch::Dispatcher)'s
//! commands to workers. The decisions are the dispatcher's (sans-IO, in the hub); this file
//! moves frames and keeps time. The protocol is [`parlor_protocol::worker`].
//!
//! Queues: each worker has a bounded queue of [`QUEUE`] frames from the driver. A worker
//! whose queue is full is not reading: it is disconnected and counted gone (its jobs move on),
//! so a stuck worker never holds up the driver or the other workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};

use parlor_protocol::worker::{
    MAX_AGENTS, MAX_CAPACITY, MAX_FRAME, REGISTER_WITHIN_MS, ToServer, ToWorker,
};

use crate::App;
use crate::cluster::wire::JobAnswer;
use crate::dispatch::{Command, Job, WorkerId, valid_agent_name};
use crate::hub::Routed;

/// Frames queued to one worker before it counts as stuck.
pub(crate) const QUEUE: usize = 64;
/// The server pings a worker this often; one silent for three times this is gone.
const PING_EVERY: Duration = Duration::from_secs(10);
/// Frames a worker may send per second (burst: twice that).
const RATE_PER_SEC: f64 = 50.0;

/// The connected workers' queues.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    /// Worker ids are unique across a cluster: 20 bits of the node id above a 32-bit
    /// counter (52 bits: exact in JavaScript numbers too). 0 on a single node.
    prefix: u64,
    next: AtomicU64,
    queues: Mutex<HashMap<WorkerId, mpsc::Sender<ToWorker>>>,
}

impl Workers {
    /// The workers of node `node` (0 outside a cluster).
    pub(crate) fn new(node: u64) -> Workers {
        Workers {
            prefix: (node & 0xF_FFFF) << 32,
            ..Workers::default()
        }
    }

    fn next_id(&self) -> WorkerId {
        self.prefix | ((self.next.fetch_add(1, Ordering::Relaxed) + 1) & 0xFFFF_FFFF)
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, mpsc::Sender<ToWorker>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn count(&self) -> usize {
        self.queues().len()
    }

    /// Queue `frame` to `worker`; false when it is gone or stuck (then it is dropped here,
    /// which ends its connection).
    fn send(&self, worker: WorkerId, frame: ToWorker) -> bool {
        let mut q = self.queues();
        let ok = q.get(&worker).is_some_and(|tx| tx.try_send(frame).is_ok());
        if !ok {
            q.remove(&worker);
        }
        ok
    }
}

/// Resolves once the server is stopping (or gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Carry out the dispatcher's commands until `stopping` turns true: after every wake-up
/// (the hub fed it) and at its deadlines.
pub(crate) async fn drive(app: Arc<App>, wake: Arc<Notify>, mut stopping: watch::Receiver<bool>) {
    loop {
        let now = crate::unix_ms();
        let (commands, deadline) = {
            let mut hub = app.hub();
            (hub.take_dispatch(now), hub.dispatch_deadline())
        };
        for c in commands {
            match c {
                Routed::Local(c, token) => carry_out(&app, c, token),
                Routed::Remote(node, c) => {
                    let token = match &c {
                        Command::Offer { job, .. } => mint(&app, job),
                        _ => None,
                    };
                    app.hub().send_remote(node, &c, token.as_deref());
                }
            }
        }
        let wait = deadline.map_or(Duration::from_secs(60), |d| {
            Duration::from_millis(d.saturating_sub(crate::unix_ms()))
        });
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stopping) => return,
        }
    }
}

fn mint(app: &App, job: &Job) -> Option<String> {
    app.auth.mint_job_token(
        &job.id,
        &job.room.account,
        &job.room.channel,
        crate::unix_ms() / 1000,
    )
}

/// Send a command to one of this node's workers (`token`: already minted by the leader).
fn carry_out(app: &App, c: Command, token: Option<String>) {
    let (worker, frame, job) = match c {
        Command::Offer { worker, job } => {
            let Some(token) = token.or_else(|| mint(app, &job)) else {
                return;
            };
            tracing::info!(
                worker,
                job = %job.id,
                account = %job.room.account,
                channel = %job.room.channel,
                agent = %job.room.agent,
                attempt = job.attempt,
                "offering a job"
            );
            let frame = ToWorker::Offer {
                job: job.id.to_string(),
                agent: job.room.agent.to_string(),
                account: job.room.account.to_string(),
                channel: job.room.channel.to_string(),
                attempt: job.attempt,
                token,
            };
            (worker, frame, Some(job))
        }
        Command::Cancel { worker, job } => {
            tracing::info!(worker, %job, "cancelling a job");
            app.hub().worker_job_done(worker, &job);
            (
                worker,
                ToWorker::Cancel {
                    job: job.to_string(),
                },
                None,
            )
        }
        // The hub carries out evictions itself.
        Command::Evict { .. } => return,
    };
    if !app.workers.send(worker, frame) {
        tracing::warn!(worker, "worker gone or not reading its queue: counted gone");
        app.hub().worker_down(worker, crate::unix_ms());
    } else if let Some(job) = job {
        app.hub().worker_job(worker, &job);
    }
}

/// Whether `frame` is valid registration, as (agents, capacity).
fn registration(text: &str) -> Result<(Vec<String>, u32), String> {
    match serde_json::from_str::<ToServer>(text) {
        Ok(ToServer::Register { agents, capacity }) => {
            if agents.is_empty() || agents.len() > MAX_AGENTS {
                return Err(format!("register: 1-{MAX_AGENTS} agents"));
            }
            if let Some(bad) = agents.iter().find(|a| !valid_agent_name(a)) {
                let shown: String = bad.chars().take(64).collect();
                return Err(format!("register: bad agent name {shown:?}"));
            }
            if !(1..=MAX_CAPACITY).contains(&capacity) {
                return Err(format!("register: capacity must be 1-{MAX_CAPACITY}"));
            }
            Ok((agents, capacity))
        }
        Ok(_) => Err("the first frame must be register".into()),
        Err(e) => Err(format!("bad frame: {e}")),
    }
}

async fn close(socket: &mut futures_util::stream::SplitSink<WebSocket, Message>, message: String) {
    if let Ok(text) = serde_json::to_string(&ToWorker::Error { message }) {
        let _ = socket.send(Message::Text(text.into())).await;
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: 1008,
            reason: "worker protocol error".into(),
        })))
        .await;
}

/// Drive one worker connection to its end.
pub(crate) async fn run(app: Arc<App>, socket: WebSocket, mut stopping: watch::Receiver<bool>) {
    let (mut sink, mut stream) = socket.split();
    let first = tokio::time::timeout(Duration::from_millis(REGISTER_WITHIN_MS), stream.next());
    let text = match first.await {
        Ok(Some(Ok(Message::Text(t)))) if t.len() <= MAX_FRAME => t,
        Ok(Some(Ok(Message::Text(_)))) => return close(&mut sink, "frame too large".into()).await,
        Err(_) => return close(&mut sink, "no register frame in time".into()).await,
        _ => return,
    };
    let (agents, capacity) = match registration(&text) {
        Ok(r) => r,
        Err(e) => return close(&mut sink, e).await,
    };
    let id = app.workers.next_id();
    let (tx, mut rx) = mpsc::channel(QUEUE);
    app.workers.queues().insert(id, tx);
    let registered = serde_json::to_string(&ToWorker::Registered { worker: id });
    if let Ok(t) = registered
        && sink.send(Message::Text(t.into())).await.is_err()
    {
        app.workers.queues().remove(&id);
        return;
    }
    tracing::info!(worker = id, ?agents, capacity, "worker registered");
    app.hub().worker_up(id, agents, capacity, crate::unix_ms());

    let mut ping = tokio::time::interval(PING_EVERY);
    let mut last_heard = tokio::time::Instant::now();
    let mut tokens = 2.0 * RATE_PER_SEC;
    let mut refilled = tokio::time::Instant::now();
    let why: String = loop {
        tokio::select! {
            msg = stream.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break "closed".into(),
                    Some(Ok(Message::Binary(_))) => {
                        close(&mut sink, "binary frames are not supported".into()).await;
                        break "binary frame".into();
                    }
                    Some(Ok(_)) => { last_heard = tokio::time::Instant::now(); continue; }
                };
                last_heard = tokio::time::Instant::now();
                let dt = last_heard.duration_since(refilled).as_secs_f64();
                refilled = last_heard;
                tokens = (tokens + dt * RATE_PER_SEC).min(2.0 * RATE_PER_SEC);
                if tokens < 1.0 {
                    close(&mut sink, "frame rate exceeded".into()).await;
                    break "frame rate exceeded".into();
                }
                tokens -= 1.0;
                if text.len() > MAX_FRAME {
                    close(&mut sink, "frame too large".into()).await;
                    break "frame too large".into();
                }
                let now = crate::unix_ms();
                match serde_json::from_str::<ToServer>(&text) {
                    Ok(ToServer::Status { load, draining }) => {
                        app.hub().worker_status(id, load, draining, now);
                    }
                    Ok(ToServer::Accept { job }) => {
                        tracing::info!(worker = id, %job, "job accepted");
                        app.hub().worker_answer(id, &job, JobAnswer::Accept, now);
                    }
                    Ok(ToServer::Refuse { job, reason }) => {
                        let reason: String = reason.unwrap_or_default().chars().take(200).collect();
                        tracing::info!(worker = id, %job, reason, "job refused");
                        app.hub().worker_answer(id, &job, JobAnswer::Refuse, now);
                    }
                    Ok(ToServer::Ended { job }) => {
                        tracing::info!(worker = id, %job, "job ended at the worker");
                        app.hub().worker_answer(id, &job, JobAnswer::Ended, now);
                    }
                    Ok(ToServer::Register { .. }) => {
                        close(&mut sink, "already registered".into()).await;
                        break "registered twice".into();
                    }
                    Err(e) => {
                        close(&mut sink, format!("bad frame: {e}")).await;
                        break "bad frame".into();
                    }
                }
            }
            out = rx.recv() => {
                let Some(frame) = out else {
                    // Dropped by the driver: the worker did not keep up.
                    close(&mut sink, "not reading its frames".into()).await;
                    break "queue full".into();
                };
                let Ok(text) = serde_json::to_string(&frame) else { continue };
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break "send failed".into();
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > 3 * PING_EVERY {
                    break "silent".into();
                }
                if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break "send failed".into();
                }
            }
            _ = stopped(&mut stopping) => {
                let _ = sink.send(Message::Close(Some(CloseFrame {
                    code: 1001,
                    reason: "server shutting down".into(),
                }))).await;
                break "server shutting down".into();
            }
        }
    };
    app.workers.queues().remove(&id);
    tracing::info!(worker = id, why, "worker gone");
    app.hub().worker_down(id, crate::unix_ms());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_is_checked() {
        assert_eq!(
            registration(r#"{"type":"register","agents":["voice"],"capacity":2}"#),
            Ok((vec!["voice".to_owned()], 2))
        );
        for bad in [
            r#"{"type":"register","agents":[],"capacity":2}"#,
            r#"{"type":"register","agents":["no spaces"],"capacity":2}"#,
            r#"{"type":"register","agents":["voice"],"capacity":0}"#,
            r#"{"type":"status","load":0.1}"#,
            r#"{"type":"register","agents":["voice"],"capacity":2,"extra":1}"#,
            "not json",
        ] {
            assert!(registration(bad).is_err(), "{bad}");
        }
    }
}
