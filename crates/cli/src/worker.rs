//! `parlor worker`: runs the voice agent for the rooms a Parlor server dispatches to it.
//!
//! It connects to the server's `/v1/worker` (the protocol is `parlor_protocol::worker`) with
//! the secret from `PARLOR_WORKER_SECRET`, registers its agent name and capacity, and for
//! each job offered joins the job's channel with the job's token and serves it with the
//! engines loaded once at start (shared by every job). A job ends when the server cancels it
//! (the room emptied), or on its own (the agent failed: reported as `ended`).
//!
//! The connection to the server is redialled with backoff when it drops; running agents go
//! on meanwhile (their room connections are their own). SIGTERM or Ctrl-C drains: no new
//! jobs, and the process exits once its running jobs have ended (or after `--drain-secs`);
//! a second signal exits at once. Its load, reported every 5 s and whenever a job starts or
//! ends, is the larger of its jobs over `--capacity` and its CPU share of the machine, so a
//! worker whose calls are heavy gets no more offers past the server's `load_threshold`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use parlor_agent::{AgentOptions, Llm};
use parlor_peer::{ReconnectOptions, RoomPeer, SignallingClient};
use parlor_protocol::worker::{PATH, ToServer, ToWorker};

use crate::demo::{Engines, Loaded, SttArgs, SttHints, load_engines, reply_hook};

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    /// The server's base URL (`ws://` or `wss://`, as clients use it).
    #[arg(long, default_value = "ws://127.0.0.1:7800")]
    server: String,
    /// The agent name this worker serves (as `[[agents.rules]] agent` names it).
    #[arg(long, default_value = "voice")]
    agent: String,
    /// Jobs at once; offers beyond it are refused.
    #[arg(long, default_value_t = 4)]
    capacity: u32,
    /// The agent's engines (as in `parlor demo`).
    #[arg(long, value_enum, default_value_t = Engines::Neural)]
    engines: Engines,
    #[command(flatten)]
    stt: SttArgs,
    /// What the agent says when a human's audio arrives.
    #[arg(long)]
    greeting: Option<String>,
    /// On SIGTERM or Ctrl-C, wait at most this long for running jobs to end.
    #[arg(long, default_value_t = 600)]
    drain_secs: u64,
}

/// What the job tasks tell the connection loop.
enum JobNews {
    /// The job's agent stopped on its own (not cancelled): tell the server.
    Ended(String),
    /// The job's task is over (cancelled or ended): forget it.
    Gone(String),
}

struct Worker {
    args: WorkerArgs,
    secret: String,
    engines: Arc<Loaded>,
    llm: Arc<dyn Llm>,
    preemptive: bool,
    /// Running jobs and how to cancel each.
    jobs: HashMap<String, oneshot::Sender<()>>,
    news_tx: mpsc::Sender<JobNews>,
    draining: bool,
    /// The process's CPU share of the machine over the last [`LOAD_EVERY`] (0..1).
    cpu: f32,
}

/// How often the worker measures its CPU and reports its load.
const LOAD_EVERY: Duration = Duration::from_secs(5);

pub(crate) async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let secret = std::env::var("PARLOR_WORKER_SECRET")
        .context("set PARLOR_WORKER_SECRET to the server's agents.worker_secret")?;
    cap_malloc_arenas();
    anyhow::ensure!(
        parlor_server::dispatch::valid_agent_name(&args.agent),
        "--agent must be 1-64 letters, digits, '-', '_' or '.'"
    );
    anyhow::ensure!(
        (1..=parlor_protocol::worker::MAX_CAPACITY).contains(&args.capacity),
        "--capacity must be between 1 and {}",
        parlor_protocol::worker::MAX_CAPACITY
    );
    anyhow::ensure!(
        args.server.starts_with("ws://") || args.server.starts_with("wss://"),
        "--server must be a ws:// or wss:// URL"
    );
    let (llm, reply_name, rules) = reply_hook();
    let hints = SttHints::from_args(&args.stt, rules)?;
    let (engines, stt) = (args.engines, args.stt.model.clone());
    let loaded =
        tokio::task::spawn_blocking(move || load_engines(engines, &stt, 0.0, &hints)).await??;
    println!(
        "worker: engines loaded ({}; replies from {reply_name}); serving agent {:?} for {}",
        loaded.names, args.agent, args.server
    );
    let (news_tx, mut news) = mpsc::channel(256);
    let mut w = Worker {
        args,
        secret,
        engines: Arc::new(loaded),
        llm,
        preemptive: rules,
        jobs: HashMap::new(),
        news_tx,
        draining: false,
        cpu: 0.0,
    };
    let mut signals = Signals::new()?;
    let mut backoff = Duration::from_millis(250);
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        match w
            .session(&mut news, &mut signals, &mut drain_deadline)
            .await
        {
            Ok(Some(())) => return Ok(()),
            Ok(None) => backoff = Duration::from_millis(250),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "worker connection failed"),
        }
        if w.draining && w.jobs.is_empty() {
            return Ok(());
        }
        // Redial after a pause; jobs go on meanwhile.
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                Some(n) = news.recv() => w.on_news(n, None).await,
                _ = signals.next() => if w.on_signal(&mut drain_deadline) { return Ok(()) },
            }
            if w.draining && w.jobs.is_empty() {
                return Ok(());
            }
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Worker {
    /// One connection to the server: `Ok(Some(()))` to exit (drained), `Ok(None)` when the
    /// server closed it, `Err` when it failed.
    async fn session(
        &mut self,
        news: &mut mpsc::Receiver<JobNews>,
        signals: &mut Signals,
        drain_deadline: &mut Option<tokio::time::Instant>,
    ) -> anyhow::Result<Option<()>> {
        let url = format!("{}{PATH}", self.args.server.trim_end_matches('/'));
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", self.secret)
                .parse()
                .context("the worker secret is not a valid header value")?,
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {url}: {e}"))?;
        send(
            &mut ws,
            &ToServer::Register {
                agents: vec![self.args.agent.clone()],
                capacity: self.args.capacity,
            },
        )
        .await?;
        self.send_status(&mut ws).await?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut measure = tokio::time::interval(LOAD_EVERY);
        let (mut cpu_at, mut wall_at) = (crate::bench::cpu_seconds(), std::time::Instant::now());
        loop {
            let deadline = async {
                match drain_deadline {
                    Some(d) => tokio::time::sleep_until(*d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = ws.next() => {
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(f))) => {
                            tracing::info!(?f, "the server closed the worker connection");
                            return Ok(None);
                        }
                        None => return Ok(None),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(_)) => continue,
                    };
                    match serde_json::from_str::<ToWorker>(&text) {
                        Ok(m) => self.on_message(m, &mut ws).await?,
                        Err(e) => tracing::warn!(error = %e, "unreadable frame from the server"),
                    }
                }
                Some(n) = news.recv() => {
                    self.on_news(n, Some(&mut ws)).await;
                    if self.draining && self.jobs.is_empty() {
                        let _ = ws.close(None).await;
                        return Ok(Some(()));
                    }
                }
                _ = signals.next() => {
                    if self.on_signal(drain_deadline) {
                        return Ok(Some(()));
                    }
                    self.send_status(&mut ws).await?;
                    if self.jobs.is_empty() {
                        let _ = ws.close(None).await;
                        return Ok(Some(()));
                    }
                }
                _ = measure.tick() => {
                    let (cpu, wall) = (crate::bench::cpu_seconds(), std::time::Instant::now());
                    let span = wall.duration_since(wall_at).as_secs_f64();
                    if span > 0.5 {
                        self.cpu = ((cpu - cpu_at) / (span * cores)).clamp(0.0, 1.0) as f32;
                        (cpu_at, wall_at) = (cpu, wall);
                        self.send_status(&mut ws).await?;
                    }
                }
                _ = deadline => {
                    println!("worker: drain time over with {} jobs running; leaving", self.jobs.len());
                    return Ok(Some(()));
                }
            }
        }
    }

    /// Report the load: the larger of the share of its capacity in use and its CPU share.
    async fn send_status(&self, ws: &mut Socket) -> anyhow::Result<()> {
        let load = (self.jobs.len() as f32 / self.args.capacity as f32).max(self.cpu);
        send(
            ws,
            &ToServer::Status {
                load: load.min(1.0),
                draining: self.draining,
            },
        )
        .await
    }

    /// A signal: true to exit now (the second one).
    fn on_signal(&mut self, drain_deadline: &mut Option<tokio::time::Instant>) -> bool {
        if self.draining {
            println!("worker: second signal; leaving now");
            return true;
        }
        self.draining = true;
        *drain_deadline =
            Some(tokio::time::Instant::now() + Duration::from_secs(self.args.drain_secs));
        println!(
            "worker: draining: no new jobs; {} running (a second signal exits now)",
            self.jobs.len()
        );
        false
    }

    async fn on_news(&mut self, n: JobNews, ws: Option<&mut Socket>) {
        match n {
            JobNews::Ended(job) => {
                if let Some(ws) = ws {
                    let _ = send(ws, &ToServer::Ended { job }).await;
                }
                // A job that ends while disconnected is the server's to notice (its agent
                // left the channel).
            }
            JobNews::Gone(job) => {
                self.jobs.remove(&job);
                if let Some(ws) = ws {
                    let _ = self.send_status(ws).await;
                }
            }
        }
    }

    async fn on_message(&mut self, m: ToWorker, ws: &mut Socket) -> anyhow::Result<()> {
        match m {
            ToWorker::Registered { worker } => {
                println!("worker: registered as worker {worker}");
            }
            ToWorker::Offer {
                job,
                agent,
                account,
                channel,
                attempt,
                token,
            } => {
                let refuse = if self.draining {
                    Some("draining")
                } else if self.jobs.len() >= self.args.capacity as usize {
                    Some("full")
                } else if agent != self.args.agent {
                    Some("not this worker's agent")
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    return send(
                        ws,
                        &ToServer::Refuse {
                            job,
                            reason: Some(reason.into()),
                        },
                    )
                    .await;
                }
                println!(
                    "worker: job {job}: agent {agent} for {account}/{channel} (attempt {attempt})"
                );
                let (cancel, cancelled) = oneshot::channel();
                self.jobs.insert(job.clone(), cancel);
                send(ws, &ToServer::Accept { job: job.clone() }).await?;
                self.send_status(ws).await?;
                tokio::spawn(run_job(
                    self.args.server.clone(),
                    self.engines.clone(),
                    self.llm.clone(),
                    self.options(),
                    job,
                    channel,
                    token,
                    cancelled,
                    self.news_tx.clone(),
                ));
            }
            ToWorker::Cancel { job } => {
                if let Some(cancel) = self.jobs.remove(&job) {
                    match &self.engines.utterances {
                        Some(n) => println!(
                            "worker: job {job} cancelled ({} utterances heard by all jobs so far)",
                            n.load(std::sync::atomic::Ordering::Relaxed)
                        ),
                        None => println!("worker: job {job} cancelled"),
                    }
                    let _ = cancel.send(());
                }
                self.send_status(ws).await?;
            }
            ToWorker::Error { message } => {
                anyhow::bail!("the server refused a frame: {message}");
            }
        }
        Ok(())
    }

    fn options(&self) -> AgentOptions {
        let listening = self.engines.utterances.is_some();
        AgentOptions {
            greeting: self.args.greeting.clone().filter(|_| !listening),
            preemptive: self.preemptive && !listening,
            turn: self.engines.turn_options(),
            ..AgentOptions::default()
        }
    }
}

async fn send(ws: &mut Socket, m: &ToServer) -> anyhow::Result<()> {
    let text = serde_json::to_string(m)?;
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// One job: join `channel` as its agent and serve it until cancelled or failed.
#[allow(clippy::too_many_arguments)]
async fn run_job(
    server: String,
    engines: Arc<Loaded>,
    llm: Arc<dyn Llm>,
    options: AgentOptions,
    job: String,
    channel: String,
    token: String,
    cancelled: oneshot::Receiver<()>,
    news: mpsc::Sender<JobNews>,
) {
    let ended_alone =
        match serve_job(server, &engines, llm, options, &channel, token, cancelled).await {
            Ok(cancelled) => !cancelled,
            Err(e) => {
                tracing::warn!(%job, error = %format!("{e:#}"), "job failed");
                true
            }
        };
    if ended_alone {
        println!("worker: job {job} ended");
        let _ = news.send(JobNews::Ended(job.clone())).await;
    }
    let _ = news.send(JobNews::Gone(job)).await;
}

/// `Ok(true)` when cancelled, `Ok(false)` when the agent's room ended by itself.
async fn serve_job(
    server: String,
    engines: &Loaded,
    llm: Arc<dyn Llm>,
    options: AgentOptions,
    channel: &str,
    token: String,
    mut cancelled: oneshot::Receiver<()>,
) -> anyhow::Result<bool> {
    let client = SignallingClient::builder()
        .url(server)
        .token_provider(move || {
            let t = token.clone();
            async move { Ok(t) }
        })
        .reconnect(Some(ReconnectOptions {
            max_attempts: Some(20),
            max_delay: Duration::from_secs(10),
            ..ReconnectOptions::default()
        }))
        .build()?;
    let peer = RoomPeer::new(client);
    let agent = engines.agent(peer.clone(), llm, options);
    let events = tokio::select! {
        r = agent.join(channel) => r.context("the agent cannot join")?,
        _ = &mut cancelled => {
            peer.close().await;
            return Ok(true);
        }
    };
    let serve = agent.serve(events);
    tokio::pin!(serve);
    tokio::select! {
        r = &mut serve => {
            r.context("the agent stopped")?;
            Ok(false)
        }
        _ = &mut cancelled => {
            peer.close().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), serve).await;
            Ok(true)
        }
    }
}

/// Run with at most two glibc malloc arenas unless `MALLOC_ARENA_MAX` says otherwise: when
/// it is unset, the worker executes itself again (same process id, same arguments) with
/// `MALLOC_ARENA_MAX=2`, which glibc reads only at start.
///
/// glibc gives a thread that allocates an arena of its own (up to 8 per core) and keeps it
/// after the thread goes idle; the engines' and tokio's blocking threads come and go, so a
/// worker's resident memory grew in steps of tens of MB as threads appeared (docs/
/// performance.md, "Calls through a real worker"). Two arenas held 58 MB less at the same
/// speed. If the re-execution fails (the binary was replaced), the worker goes on as it is.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        use std::os::unix::process::CommandExt;
        let err = match std::env::current_exe() {
            Ok(exe) => std::process::Command::new(exe)
                .args(std::env::args_os().skip(1))
                .env("MALLOC_ARENA_MAX", "2")
                .exec(),
            Err(e) => e,
        };
        tracing::warn!(error = %err, "could not restart with MALLOC_ARENA_MAX=2; going on");
    }
}

/// SIGTERM and Ctrl-C as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
