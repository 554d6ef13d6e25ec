//! Server load with real WebSocket clients speaking the protocol, against a `parlor serve`
//! child process (so its memory and CPU are its own), from many loopback source addresses
//! (127.0.0.1, .2, …) so ephemeral ports are not the limit.
//!
//! * `connections`: hold N idle connections; server RSS per connection, connect rate,
//!   connect → `welcome` latency.
//! * `fanout`: K channels × P publishers × S subscribers; delivered messages/s, publish →
//!   delivery latency, loss and order checks; then the same shape against nats-server.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{percentile, rss_bytes_of, stat_cpu};

const BENCH_KEY: &str = "pk_bench";
const QUIET_KEY: &str = "pk_bench_quiet";

#[derive(Args, Debug)]
pub(crate) struct ConnectionsArgs {
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// Loopback source addresses to spread connections over (127.0.0.1 … 127.0.0.N).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Connection handshakes in flight at once (over all client processes).
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds to hold every connection before measuring memory.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Parlor nodes: 1 = one server; more = a cluster on a nats-server, connections spread
    /// round-robin (each process holds one descriptor per connection, so a per-process
    /// open-file limit below `--count` needs more nodes).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    nodes: u8,
    /// Client processes holding the connections (default: as few as the open-file limit
    /// allows).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    clients: Option<u16>,
    /// The nats-server program (with `--nodes` > 1).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One client process of `parlor bench connections` (spawned by it; not for direct use).
#[derive(Args, Debug)]
pub(crate) struct ConnectionsWorkerArgs {
    /// Server addresses, comma-separated; connection `i` goes to `targets[i % len]`.
    #[arg(long, value_delimiter = ',', required = true)]
    targets: Vec<SocketAddr>,
    /// Connections this process opens.
    #[arg(long)]
    count: usize,
    /// Global index of this process's first connection (spreads sources and targets).
    #[arg(long, default_value_t = 0)]
    first: usize,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct FanoutArgs {
    /// Channels.
    #[arg(long, default_value_t = 10)]
    channels: usize,
    /// Publishers per channel.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers per channel.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Messages per second per publisher; 0 = as fast as the subscribers keep up (each
    /// publisher stays at most `--window` messages ahead of its slowest subscriber).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// In-flight messages per publisher when `--rate 0`.
    #[arg(long, default_value_t = 256)]
    window: u64,
    /// Measured seconds of publishing.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Extra payload bytes per message (beyond the ~40-byte timestamp/sequence body).
    #[arg(long, default_value_t = 0)]
    payload: usize,
    /// Loopback source addresses for the clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Parlor nodes: 1 = one server; more = a cluster sharing channels through a
    /// nats-server, with subscribers and publishers spread over the nodes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    nodes: u8,
    /// Skip the nats-server run.
    #[arg(long)]
    no_nats: bool,
    /// The nats-server program.
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct DirectArgs {
    /// Sender → receiver pairs.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Direct messages per second per sender.
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Loopback source addresses for the clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ChurnArgs {
    /// Members who stay and watch presence.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Members who join and leave in a loop.
    #[arg(long, default_value_t = 50)]
    churners: usize,
    /// Join + leave cycles per second per churner.
    #[arg(long, default_value_t = 5)]
    rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Loopback source addresses for the clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ReconnectStormArgs {
    /// Clients, each subscribed to one shared channel.
    #[arg(long, default_value_t = 5000)]
    clients: usize,
    /// First reconnect delay in ms (the SDKs' default ladder starts at 500 ms), ±20 %
    /// jitter, doubling per failed attempt up to 5 s.
    #[arg(long, default_value_t = 500)]
    initial_delay_ms: u64,
    /// Restart gracefully (SIGTERM: going_away, close 1001) instead of killing the server.
    #[arg(long)]
    graceful: bool,
    /// Loopback source addresses for the clients.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u8).range(1..=250))]
    sources: u8,
    /// Connection handshakes in flight at once, for the initial connect only.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

// ---------------------------------------------------------------------------------------
// Shared plumbing

/// Raise this process's open-file limit to at least `want` (children inherit it): the soft
/// limit up to the hard one, and the hard one too where permitted (root).
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let soft = cur.current.unwrap_or(u64::MAX);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    if soft >= want {
        return Ok(soft);
    }
    let raised = Rlimit {
        current: Some(want),
        maximum: Some(hard.max(want)),
    };
    if setrlimit(Resource::Nofile, raised).is_ok() {
        return Ok(want);
    }
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    );
    bail!(
        "need {want} open files but the hard limit is {hard}: run as root or raise it \
         (`ulimit -Hn {want}`)"
    )
}

/// `parlor serve` as a child process with limits opened up for load.
struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    _config: TempFile,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl ServerProcess {
    fn spawn() -> anyhow::Result<ServerProcess> {
        Self::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    fn spawn_on(listen: SocketAddr) -> anyhow::Result<ServerProcess> {
        Self::spawn_with(listen, "")
    }

    /// A node of a cluster on this NATS.
    fn spawn_node(nats_url: &str) -> anyhow::Result<ServerProcess> {
        Self::spawn_with(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &format!(
                "[cluster]\nnats_url = \"{nats_url}\"\nname = \"bench\"\n\
                 heartbeat_ms = 200\nnode_timeout_ms = 2000\n"
            ),
        )
    }

    /// Other cluster nodes this one is in sync with (its `/metrics`).
    async fn synced_nodes(&self) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = TcpStream::connect(self.addr).await else {
            return 0;
        };
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let mut body = String::new();
        if s.write_all(req.as_bytes()).await.is_err() || s.read_to_string(&mut body).await.is_err()
        {
            return 0;
        }
        body.lines()
            .find_map(|l| l.strip_prefix("parlor_cluster_nodes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn spawn_with(listen: SocketAddr, extra: &str) -> anyhow::Result<ServerProcess> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "parlor-bench-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        // `pk_quiet` may not see presence: thousands of members of one channel would
        // otherwise each get a roster of thousands.
        std::fs::write(
            &path,
            format!(
                "[limits]\nrate_per_sec = 1000000\nrate_burst = 1000000\n\
                 max_channel_members = 1000000\noutbound_queue_bytes = 16777216\n\
                 [[keys]]\nkey = \"{QUIET_KEY}\"\naccount = \"dev\"\n\
                 actions = [\"subscribe\", \"publish\", \"send\"]\n{extra}"
            ),
        )?;
        let config = TempFile(path);
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--dev-key", BENCH_KEY])
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--config")
            .arg(&config.0)
            .env("PARLOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start `parlor serve`")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ws://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected readiness line {line:?}"))?;
        Ok(ServerProcess {
            child,
            addr,
            _config: config,
        })
    }

    fn rss_bytes(&self) -> u64 {
        rss_bytes_of(&self.child.id().to_string())
    }

    fn cpu_seconds(&self) -> f64 {
        stat_cpu(&format!("/proc/{}/stat", self.child.id()))
    }

    fn url(&self) -> String {
        format!("ws://{}/v1?key={BENCH_KEY}", self.addr)
    }

    fn quiet_url(&self) -> String {
        format!("ws://{}/v1?key={QUIET_KEY}", self.addr)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `parlor serve` (`nodes` = 1), or a cluster of `nodes` synced through a fresh
/// nats-server (kept alive by the returned handle).
async fn spawn_servers(
    nodes: usize,
    nats_server: &PathBuf,
) -> anyhow::Result<(Option<NatsProcess>, Vec<ServerProcess>)> {
    if nodes <= 1 {
        return Ok((None, vec![ServerProcess::spawn()?]));
    }
    let nats = NatsProcess::spawn(nats_server)?;
    nats.ready().await?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let servers = (0..nodes)
        .map(|_| ServerProcess::spawn_node(&url))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in &servers {
        while node.synced_nodes().await != (nodes - 1) as u64 {
            if Instant::now() > deadline {
                bail!("cluster nodes did not sync within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok((Some(nats), servers))
}

fn source(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (i % usize::from(sources)) as u8,
    ))
}

type Ws = WebSocketStream<TcpStream>;

async fn ws_connect(addr: SocketAddr, src: IpAddr, url: &str) -> anyhow::Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))
        .with_context(|| format!("bind {src}"))?;
    let tcp = sock.connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
        .await
        .context("upgrade")?;
    Ok(ws)
}

/// The next text frame as JSON, skipping control frames.
async fn next_json(ws: &mut Ws) -> anyhow::Result<serde_json::Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

/// The next text frame's `type`.
async fn next_type(ws: &mut Ws) -> anyhow::Result<String> {
    let frame = next_json(ws).await?;
    Ok(frame["type"].as_str().unwrap_or_default().to_owned())
}

/// A progress line on stderr (only when it is a terminal).
struct Progress {
    done: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Progress {
    fn start(label: &'static str, total: usize) -> Progress {
        let done = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        if std::io::stderr().is_terminal() {
            let done = done.clone();
            tokio::spawn(async move {
                let t0 = Instant::now();
                loop {
                    let n = done.load(Ordering::Relaxed);
                    let filled = (n * 30).checked_div(total).unwrap_or(30);
                    let rate = n as f64 / t0.elapsed().as_secs_f64().max(1e-3);
                    eprint!(
                        "\r{label} [{}{}] {n}/{total} ({rate:.0}/s)  ",
                        "#".repeat(filled.min(30)),
                        ".".repeat(30 - filled.min(30))
                    );
                    let _ = std::io::stderr().flush();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = &mut stopped => break,
                    }
                }
                eprintln!();
            });
        }
        Progress {
            done,
            stop: Some(stop),
        }
    }

    fn tick(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn ms(d: f64) -> String {
    format!("{d:.2} ms")
}

// ---------------------------------------------------------------------------------------
// connections

/// What a client process reports once every connection attempt has finished.
#[derive(serde::Serialize, Deserialize, Default)]
struct WorkerReport {
    latencies_ms: Vec<f64>,
    failed: usize,
    first_error: Option<String>,
    connect_secs: f64,
}

/// The hard open-file limit of this process.
fn hard_nofile() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX)
}

pub(super) async fn connections(args: ConnectionsArgs) -> anyhow::Result<()> {
    let nodes = usize::from(args.nodes);
    // Every process holds one descriptor per connection it serves or opens, plus its own.
    let spare = 512u64;
    let per_node = args.count.div_ceil(nodes) as u64 + spare;
    let hard = hard_nofile();
    if per_node > hard {
        bail!(
            "{} connections over {nodes} node(s) need {per_node} open files per node, but the \
             hard limit is {hard}: pass --nodes {} (or raise `ulimit -Hn`)",
            args.count,
            (args.count as u64).div_ceil(hard.saturating_sub(spare).max(1))
        );
    }
    raise_nofile(per_node.max(spare))?;
    let per_client = hard.saturating_sub(spare).clamp(1, 1 << 20) as usize;
    let clients = args
        .clients
        .map(usize::from)
        .unwrap_or_else(|| args.count.div_ceil(per_client).max(1));
    if args.count.div_ceil(clients) as u64 + spare > hard {
        bail!(
            "--clients {clients} leaves more connections per client process than the open-file limit {hard}"
        );
    }

    let (_bus, servers) = spawn_servers(nodes, &args.nats_server).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_all = || servers.iter().map(ServerProcess::rss_bytes).sum::<u64>();
    let rss_before = rss_all();
    let targets = servers
        .iter()
        .map(|s| s.addr.to_string())
        .collect::<Vec<_>>()
        .join(",");

    let progress = Progress::start("connecting", args.count);
    let mut workers = Vec::new();
    let mut first = 0;
    for w in 0..clients {
        let count = args.count / clients + usize::from(w < args.count % clients);
        workers.push(ClientProcess::spawn(
            &targets,
            count,
            first,
            args.sources,
            args.concurrency.div_ceil(clients).max(1),
            progress.done.clone(),
        )?);
        first += count;
    }
    let mut report = WorkerReport::default();
    for w in &mut workers {
        let r = w.report().await?;
        report.latencies_ms.extend(r.latencies_ms);
        report.failed += r.failed;
        report.first_error = report.first_error.or(r.first_error);
        report.connect_secs = report.connect_secs.max(r.connect_secs);
    }
    drop(progress);
    tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    let mut held = 0;
    for w in &mut workers {
        held += w.held().await?;
    }
    let rss_after = rss_all();
    let server_cpu = servers.iter().map(ServerProcess::cpu_seconds).sum::<f64>();
    let per_conn = rss_after.saturating_sub(rss_before) as f64 / held.max(1) as f64;
    drop(workers);

    let mut latencies = report.latencies_ms;
    let (p50, p99, max) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
        percentile(&mut latencies, 1.0),
    );
    let rate = latencies.len() as f64 / report.connect_secs.max(1e-9);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "connections",
                "requested": args.count,
                "held": held,
                "failed": report.failed,
                "sources": args.sources,
                "nodes": nodes,
                "client_processes": clients,
                "connect_per_sec": rate,
                "welcome_ms": {"p50": p50, "p99": p99, "max": max},
                "server_rss_before_bytes": rss_before,
                "server_rss_after_bytes": rss_after,
                "server_rss_per_connection_bytes": per_conn,
                "server_cpu_seconds": server_cpu,
            })
        );
    } else {
        println!(
            "parlor bench connections: {} connections from {} loopback addresses and {clients} \
             client process(es), {} handshakes in flight, {}",
            args.count,
            args.sources,
            args.concurrency,
            if nodes == 1 {
                "one server".to_owned()
            } else {
                format!("{nodes} cluster nodes on nats-server (RSS summed over the nodes)")
            }
        );
        println!(
            "| held | failed | connect rate | connect→welcome p50 / p99 / max | server RSS before → after | per connection |"
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| {held} | {} | {rate:.0}/s | {} / {} / {} | {:.1} → {:.1} MiB | {:.2} KiB |",
            report.failed,
            ms(p50),
            ms(p99),
            ms(max),
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0,
            per_conn / 1024.0
        );
    }
    if let Some(e) = report.first_error {
        eprintln!("first connect error: {e}");
    }
    Ok(())
}

/// A `parlor bench connections-worker` child. Its stdout carries `p <n>` progress lines,
/// then one [`WorkerReport`] line, then a held count per `held` line on its stdin; closing
/// its stdin closes its connections.
struct ClientProcess {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ClientProcess {
    fn spawn(
        targets: &str,
        count: usize,
        first: usize,
        sources: u8,
        concurrency: usize,
        done: Arc<AtomicUsize>,
    ) -> anyhow::Result<ClientProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "connections-worker", "--targets", targets])
            .args(["--count", &count.to_string(), "--first", &first.to_string()])
            .args(["--sources", &sources.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a bench client process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut last = 0;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line
                    .strip_prefix("p ")
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    done.fetch_add(n.saturating_sub(last), Ordering::Relaxed);
                    last = n;
                } else if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ClientProcess {
            child,
            stdin,
            lines,
        })
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        self.lines
            .recv()
            .await
            .context("a bench client process exited early")
    }

    async fn report(&mut self) -> anyhow::Result<WorkerReport> {
        Ok(serde_json::from_str(&self.line().await?)?)
    }

    async fn held(&mut self) -> anyhow::Result<usize> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(b"held\n")?;
        stdin.flush()?;
        Ok(self.line().await?.trim().parse()?)
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client side of `connections`, in its own process: open `count` connections, report,
/// answer the server's pings and `held` queries until stdin closes.
pub(super) async fn connections_worker(args: ConnectionsWorkerArgs) -> anyhow::Result<()> {
    raise_nofile(args.count as u64 + 512)?;
    let live = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Result<f64, String>>();
    let ticker = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                println!("p {}", done.load(Ordering::Relaxed));
            }
        })
    };
    let t0 = Instant::now();
    for g in args.first..args.first + args.count {
        let permit = gate.clone().acquire_owned().await?;
        let addr = args.targets[g % args.targets.len()];
        let url = format!("ws://{addr}/v1?key={BENCH_KEY}");
        let src = source(g, args.sources);
        let (live, lat_tx, mut stop_rx) = (live.clone(), lat_tx.clone(), stop_rx.clone());
        let done = done.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let ws = async {
                let mut ws = ws_connect(addr, src, &url).await?;
                match next_type(&mut ws).await?.as_str() {
                    "welcome" => Ok(ws),
                    other => bail!("first frame {other}"),
                }
            }
            .await;
            drop(permit);
            done.fetch_add(1, Ordering::Relaxed);
            let mut ws = match ws {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = lat_tx.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let _ = lat_tx.send(Ok(start.elapsed().as_secs_f64() * 1e3));
            drop(lat_tx);
            live.fetch_add(1, Ordering::Relaxed);
            // Idle: answer the server's pings until told to stop.
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = stop_rx.changed() => break,
                }
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(lat_tx);
    let mut report = WorkerReport::default();
    while let Some(r) = lat_rx.recv().await {
        match r {
            Ok(l) => report.latencies_ms.push(l),
            Err(e) => {
                report.failed += 1;
                report.first_error.get_or_insert(e);
            }
        }
    }
    report.connect_secs = t0.elapsed().as_secs_f64();
    ticker.abort();
    println!("p {}", done.load(Ordering::Relaxed));
    println!("{}", serde_json::to_string(&report)?);
    // `held` queries until the parent closes stdin.
    let (q_tx, mut q_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "held" => {
                    if q_tx.send(()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    while q_rx.recv().await.is_some() {
        println!("{}", live.load(Ordering::Relaxed));
    }
    let _ = stop_tx.send(true);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fanout

/// One delivery's body: publish time (µs since the bench epoch), publisher, sequence.
#[derive(serde::Serialize, Deserialize)]
struct Body<'a> {
    t: u64,
    p: u32,
    s: u64,
    #[serde(borrow, default)]
    x: &'a str,
}

/// What every subscriber and publisher of one run shares.
struct Tally {
    epoch: Instant,
    /// `received[p * subscribers_per_channel + k]`: messages of publisher `p` that its
    /// channel's `k`-th subscriber received.
    received: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    out_of_order: AtomicU64,
    subscribers: usize,
}

impl Tally {
    fn new(publishers: usize, subscribers: usize) -> Tally {
        Tally {
            epoch: Instant::now(),
            received: (0..publishers * subscribers)
                .map(|_| AtomicU64::new(0))
                .collect(),
            sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
            out_of_order: AtomicU64::new(0),
            subscribers,
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Record a delivery of `(p, s)` to subscriber `k`; returns its latency in µs.
    fn deliver(&self, k: usize, body: &Body<'_>) -> u64 {
        let slot = &self.received[body.p as usize * self.subscribers + k];
        let before = slot.fetch_add(1, Ordering::Relaxed);
        if before != body.s {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.now_us().saturating_sub(body.t)
    }

    /// How far publisher `p` is ahead of its slowest subscriber.
    fn lead(&self, p: usize) -> u64 {
        let sent = self.sent[p].load(Ordering::Relaxed);
        let slowest = (0..self.subscribers)
            .map(|k| self.received[p * self.subscribers + k].load(Ordering::Relaxed))
            .min()
            .unwrap_or(sent);
        sent.saturating_sub(slowest)
    }
}

/// Pace publisher `p`: wait for its `i`-th slot (fixed rate) or for room in the window.
async fn pace(tally: &Tally, p: usize, i: u64, args: &FanoutArgs, start: Instant) {
    if args.rate > 0 {
        let at = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
        tokio::time::sleep_until(at.into()).await;
    } else if i.is_multiple_of(16) {
        while tally.lead(p) >= args.window {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
}

#[derive(Debug, Default)]
struct FanoutResult {
    published: u64,
    expected: u64,
    delivered: u64,
    out_of_order: u64,
    seconds: f64,
    latency_us: Vec<u64>,
    server_cpu: f64,
    server_rss: u64,
}

impl FanoutResult {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
    fn pct(&mut self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.latency_us.iter().map(|u| *u as f64 / 1e3).collect();
        percentile(&mut v, p)
    }
    fn json(&mut self) -> serde_json::Value {
        serde_json::json!({
            "published": self.published,
            "expected_deliveries": self.expected,
            "delivered": self.delivered,
            "lost": self.expected.saturating_sub(self.delivered),
            "out_of_order": self.out_of_order,
            "seconds": self.seconds,
            "delivered_per_sec": self.rate(),
            "latency_ms": {"p50": self.pct(0.5), "p99": self.pct(0.99), "max": self.pct(1.0)},
            "server_cpu_seconds": self.server_cpu,
            "server_rss_bytes": self.server_rss,
        })
    }
}

fn body_text(tally: &Tally, p: usize, s: u64, pad: &str) -> String {
    serde_json::to_string(&Body {
        t: tally.now_us(),
        p: p as u32,
        s,
        x: pad,
    })
    .unwrap_or_default()
}

async fn fanout_parlor(args: &FanoutArgs) -> anyhow::Result<FanoutResult> {
    let n_nodes = usize::from(args.nodes);
    let (_bus, servers) = spawn_servers(n_nodes, &args.nats_server).await?;
    let node = |i: usize| &servers[i % servers.len()];
    let (k_ch, n_pub, n_sub) = (args.channels, args.publishers, args.subscribers);
    let tally = Arc::new(Tally::new(k_ch * n_pub, n_sub));
    let pad = "x".repeat(args.payload);

    // Subscribers: subscribe, wait for the ack, then record every `message`.
    let progress = Progress::start("subscribing", k_ch * n_sub);
    let mut subs = Vec::new();
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    let (stop_tx, stop_rx) = watch::channel(false);
    for c in 0..k_ch {
        for k in 0..n_sub {
            let server = node(subs.len());
            let mut ws =
                ws_connect(server.addr, source(subs.len(), args.sources), &server.url()).await?;
            ws.send(Message::text(format!(
                r#"{{"type":"subscribe","channel":"bench-{c}","requestId":"s"}}"#
            )))
            .await?;
            loop {
                if next_type(&mut ws).await? == "ack" {
                    break;
                }
            }
            progress.tick();
            let (tally, lat_tx, mut stop_rx) = (tally.clone(), lat_tx.clone(), stop_rx.clone());
            subs.push(tokio::spawn(async move {
                #[derive(Deserialize)]
                struct Frame<'a> {
                    #[serde(rename = "type")]
                    ty: &'a str,
                    #[serde(borrow)]
                    data: Option<Body<'a>>,
                }
                let mut lat = Vec::new();
                loop {
                    let m = tokio::select! {
                        m = ws.next() => m,
                        _ = stop_rx.changed() => break,
                    };
                    match m {
                        Some(Ok(Message::Text(t))) => {
                            if let Ok(Frame {
                                ty: "message",
                                data: Some(body),
                            }) = serde_json::from_str::<Frame<'_>>(&t)
                            {
                                lat.push(tally.deliver(k, &body));
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
                let _ = lat_tx.send(lat);
            }));
        }
    }
    drop(progress);
    drop(lat_tx);
    if n_nodes > 1 {
        // Let every node learn every subscription before the first publish.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Publishers.
    let mut pubs = Vec::new();
    for c in 0..k_ch {
        for j in 0..n_pub {
            let server = node(c * n_pub + j);
            let ws = ws_connect(
                server.addr,
                source(c * n_pub + j, args.sources),
                &server.url(),
            )
            .await?;
            pubs.push((c, c * n_pub + j, ws));
        }
    }
    let cpu_all = || servers.iter().map(ServerProcess::cpu_seconds).sum::<f64>();
    let cpu0 = cpu_all();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (c, p, mut ws) in pubs {
        let (tally, pad) = (tally.clone(), pad.clone());
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                pace(&tally, p, i, &args, start).await;
                let frame = format!(
                    r#"{{"type":"publish","channel":"bench-{c}","data":{}}}"#,
                    body_text(&tally, p, i, &pad)
                );
                tally.sent[p].fetch_add(1, Ordering::Relaxed);
                if ws.send(Message::text(frame)).await.is_err() {
                    break;
                }
                i += 1;
            }
            // Keep the socket open until the deliveries drain.
            ws
        }));
    }
    let mut publishers = Vec::new();
    for t in tasks {
        publishers.push(t.await?);
    }
    let result = drain_and_collect(&tally, k_ch * n_pub, n_sub, start).await;
    let server_cpu = cpu_all() - cpu0;
    let server_rss = servers.iter().map(ServerProcess::rss_bytes).sum();
    let _ = stop_tx.send(true);
    let mut latency_us = Vec::new();
    while let Some(l) = lat_rx.recv().await {
        latency_us.extend(l);
    }
    drop(publishers);
    Ok(FanoutResult {
        latency_us,
        server_cpu,
        server_rss,
        ..result
    })
}

/// Wait (≤ 5 s) until every subscriber has every message, then tally.
async fn drain_and_collect(
    tally: &Tally,
    publishers: usize,
    subscribers: usize,
    start: Instant,
) -> FanoutResult {
    let published: u64 = tally.sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let expected = published * subscribers as u64;
    let delivered = || -> u64 {
        tally
            .received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = delivered();
    let mut last_change = Instant::now();
    while last < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = delivered();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    let _ = publishers;
    FanoutResult {
        published,
        expected,
        delivered: last,
        out_of_order: tally.out_of_order.load(Ordering::Relaxed),
        seconds: last_change.duration_since(start).as_secs_f64(),
        ..FanoutResult::default()
    }
}

/// nats-server as a child process on a free loopback port.
struct NatsProcess {
    child: Child,
    port: u16,
}

impl NatsProcess {
    fn spawn(program: &PathBuf) -> anyhow::Result<NatsProcess> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (Debian: apt install nats-server; or pass --no-nats)",
                    program.display()
                )
            })?;
        Ok(NatsProcess { child, port })
    }

    async fn ready(&self) -> anyhow::Result<()> {
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("nats-server did not listen on port {}", self.port)
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn fanout_nats(args: &FanoutArgs) -> anyhow::Result<FanoutResult> {
    let nats = NatsProcess::spawn(&args.nats_server)?;
    nats.ready().await?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let (k_ch, n_pub, n_sub) = (args.channels, args.publishers, args.subscribers);
    let tally = Arc::new(Tally::new(k_ch * n_pub, n_sub));
    let pad = "x".repeat(args.payload);
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u64>>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Progress::start("nats subscribing", k_ch * n_sub);
    let mut clients = Vec::new();
    for c in 0..k_ch {
        for k in 0..n_sub {
            let client = async_nats::connect(&url).await?;
            let mut sub = client.subscribe(format!("bench-{c}")).await?;
            client.flush().await?;
            clients.push(client);
            progress.tick();
            let (tally, lat_tx, mut stop_rx) = (tally.clone(), lat_tx.clone(), stop_rx.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let m = tokio::select! {
                        m = sub.next() => m,
                        _ = stop_rx.changed() => break,
                    };
                    let Some(m) = m else { break };
                    if let Ok(body) = serde_json::from_slice::<Body<'_>>(&m.payload) {
                        lat.push(tally.deliver(k, &body));
                    }
                }
                let _ = lat_tx.send(lat);
            });
        }
    }
    drop(progress);
    drop(lat_tx);
    let mut pubs = Vec::new();
    for c in 0..k_ch {
        for j in 0..n_pub {
            pubs.push((c, c * n_pub + j, async_nats::connect(&url).await?));
        }
    }
    let cpu0 = stat_cpu(&format!("/proc/{}/stat", nats.child.id()));
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for (c, p, client) in pubs {
        let (tally, pad) = (tally.clone(), pad.clone());
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let subject = format!("bench-{c}");
            let mut i = 0u64;
            while Instant::now() < end {
                pace(&tally, p, i, &args, start).await;
                let body = body_text(&tally, p, i, &pad);
                tally.sent[p].fetch_add(1, Ordering::Relaxed);
                if client.publish(subject.clone(), body.into()).await.is_err() {
                    break;
                }
                i += 1;
            }
            let _ = client.flush().await;
            client
        }));
    }
    let mut publishers = Vec::new();
    for t in tasks {
        publishers.push(t.await?);
    }
    let result = drain_and_collect(&tally, k_ch * n_pub, n_sub, start).await;
    let server_cpu = stat_cpu(&format!("/proc/{}/stat", nats.child.id())) - cpu0;
    let server_rss = rss_bytes_of(&nats.child.id().to_string());
    let _ = stop_tx.send(true);
    let mut latency_us = Vec::new();
    while let Some(l) = lat_rx.recv().await {
        latency_us.extend(l);
    }
    drop(publishers);
    drop(clients);
    Ok(FanoutResult {
        latency_us,
        server_cpu,
        server_rss,
        ..result
    })
}

pub(super) async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if args.channels == 0 || args.publishers == 0 || args.subscribers == 0 {
        bail!("--channels, --publishers and --subscribers must be at least 1");
    }
    let conns = args.channels * (args.publishers + args.subscribers);
    raise_nofile(conns as u64 + 512)?;
    let mut parlor = fanout_parlor(&args).await?;
    let mut nats = if args.no_nats {
        None
    } else {
        Some(fanout_nats(&args).await?)
    };
    let shape = format!(
        "{} channels × {} publishers × {} subscribers, {}, {} s, {}-byte padding",
        args.channels,
        args.publishers,
        args.subscribers,
        if args.rate == 0 {
            format!("as fast as delivered (window {})", args.window)
        } else {
            format!("{} msg/s per publisher", args.rate)
        },
        args.seconds,
        args.payload
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "fanout",
                "shape": shape,
                "parlor_nodes": args.nodes,
                "parlor": parlor.json(),
                "nats": nats.as_mut().map(FanoutResult::json),
            })
        );
        return Ok(());
    }
    println!("parlor bench fanout: {shape}");
    println!(
        "| server | delivered msg/s | latency p50 / p99 / max | published | lost | out of order | server CPU-s | server RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let row = |name: &str, r: &mut FanoutResult| {
        let (p50, p99, max) = (r.pct(0.5), r.pct(0.99), r.pct(1.0));
        println!(
            "| {name} | {:.0} | {} / {} / {} | {} | {} | {} | {:.2} | {:.1} MiB |",
            r.rate(),
            ms(p50),
            ms(p99),
            ms(max),
            r.published,
            r.expected.saturating_sub(r.delivered),
            r.out_of_order,
            r.server_cpu,
            r.server_rss as f64 / 1048576.0
        );
    };
    let label = if args.nodes > 1 {
        format!("parlor, {} nodes + nats-server", args.nodes)
    } else {
        "parlor".to_owned()
    };
    row(&label, &mut parlor);
    if let Some(n) = nats.as_mut() {
        row("nats-server", n);
        println!(
            "parlor ÷ nats-server delivered msg/s: {:.2}",
            parlor.rate() / n.rate()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// direct

/// Set in a sender's published count once it has stopped sending.
const DONE: u64 = 1 << 63;

pub(super) async fn direct(args: DirectArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.rate == 0 {
        bail!("--pairs and --rate must be at least 1");
    }
    raise_nofile(args.pairs as u64 * 2 + 512)?;
    let server = ServerProcess::spawn()?;
    let url = server.quiet_url();
    let epoch = Instant::now();
    let progress = Progress::start("connecting", args.pairs * 2);
    let mut pairs = Vec::new();
    for i in 0..args.pairs {
        let mut rx = ws_connect(server.addr, source(2 * i, args.sources), &url).await?;
        let welcome = next_json(&mut rx).await?;
        let to = welcome["peerId"].as_str().context("peerId")?.to_owned();
        let tx = ws_connect(server.addr, source(2 * i + 1, args.sources), &url).await?;
        progress.tick();
        progress.tick();
        pairs.push((tx, rx, to));
    }
    drop(progress);
    let cpu0 = server.cpu_seconds();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (mut tx, mut rx, to) in pairs {
        let rate = args.rate;
        let sent = Arc::new(AtomicU64::new(0));
        let sent_by_sender = sent.clone();
        senders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < end {
                let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(at.into()).await;
                let t = epoch.elapsed().as_micros() as u64;
                let frame =
                    format!(r#"{{"type":"send","to":"{to}","data":{{"t":{t},"p":0,"s":{i}}}}}"#);
                if tx.send(Message::text(frame)).await.is_err() {
                    break;
                }
                i += 1;
                sent_by_sender.store(i, Ordering::Relaxed);
            }
            // The final count, marked final: the receiver may stop once it has them all.
            sent_by_sender.store(i | DONE, Ordering::Release);
            (i, tx)
        }));
        receivers.push(tokio::spawn(async move {
            #[derive(Deserialize)]
            struct Frame<'a> {
                #[serde(rename = "type")]
                ty: &'a str,
                #[serde(borrow)]
                data: Option<Body<'a>>,
            }
            let mut lat = Vec::new();
            let mut next_seq = 0u64;
            let mut out_of_order = 0u64;
            // Until the window is over and everything sent has arrived (or 5 s more).
            let deadline = end + Duration::from_secs(5);
            loop {
                let total = sent.load(Ordering::Acquire);
                if total & DONE != 0 && lat.len() as u64 >= total & !DONE {
                    break;
                }
                let wait = (Instant::now() + Duration::from_millis(50)).min(deadline);
                match tokio::time::timeout_at(wait.into(), rx.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        if let Ok(Frame {
                            ty: "direct",
                            data: Some(b),
                        }) = serde_json::from_str::<Frame<'_>>(&t)
                        {
                            if b.s != next_seq {
                                out_of_order += 1;
                            }
                            next_seq = b.s + 1;
                            lat.push((epoch.elapsed().as_micros() as u64).saturating_sub(b.t));
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(_) => break,
                    Err(_) if Instant::now() >= deadline => break,
                    Err(_) => {}
                }
            }
            (lat, out_of_order)
        }));
    }
    let mut sent = 0u64;
    let mut keep = Vec::new();
    for s in senders {
        let (n, tx) = s.await?;
        sent += n;
        keep.push(tx);
    }
    let mut lat_us = Vec::new();
    let mut out_of_order = 0;
    for r in receivers {
        let (l, o) = r.await?;
        lat_us.extend(l);
        out_of_order += o;
    }
    let server_cpu = server.cpu_seconds() - cpu0;
    drop(keep);
    let mut lat: Vec<f64> = lat_us.iter().map(|u| *u as f64 / 1e3).collect();
    let received = lat.len() as u64;
    let (p50, p99, max) = (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "direct", "pairs": args.pairs, "rate_per_sender": args.rate,
                "sent": sent, "received": received, "lost": sent.saturating_sub(received),
                "out_of_order": out_of_order,
                "latency_ms": {"p50": p50, "p99": p99, "max": max},
                "server_cpu_seconds": server_cpu,
            })
        );
    } else {
        println!(
            "parlor bench direct: {} pairs × {} msg/s for {} s",
            args.pairs, args.rate, args.seconds
        );
        println!(
            "| sent | received | lost | out of order | send→direct p50 / p99 / max | server CPU-s |"
        );
        println!("|---|---|---|---|---|---|");
        println!(
            "| {sent} | {received} | {} | {out_of_order} | {} / {} / {} | {server_cpu:.2} |",
            sent.saturating_sub(received),
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// reconnect-storm

/// One client of the storm: connect + subscribe, hold, and after a drop reconnect with the
/// SDKs' ladder; reports each (re)join's instant.
async fn storm_client(
    i: usize,
    addr: SocketAddr,
    url: String,
    src: IpAddr,
    initial: Duration,
    joined: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
    mut stop: watch::Receiver<bool>,
) {
    let mut attempt = 0u32;
    loop {
        let session = async {
            let mut ws = ws_connect(addr, src, &url).await?;
            if next_type(&mut ws).await? != "welcome" {
                bail!("no welcome");
            }
            ws.send(Message::text(
                r#"{"type":"subscribe","channel":"storm","requestId":"s"}"#,
            ))
            .await?;
            while next_type(&mut ws).await? != "ack" {}
            Ok(ws)
        };
        match session.await {
            Ok(mut ws) => {
                attempt = 0;
                let _ = joined.send((i, Instant::now()));
                loop {
                    tokio::select! {
                        m = ws.next() => match m {
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }
            Err(_) => attempt += 1,
        }
        // The ladder: initial × 2^attempt (≤ 5 s), ±20 % jitter.
        let base = initial
            .saturating_mul(1 << attempt.min(4))
            .min(Duration::from_secs(5));
        let jitter = 0.8 + 0.4 * (fastrand_unit(i as u64 ^ u64::from(attempt) << 32));
        tokio::select! {
            _ = tokio::time::sleep(base.mul_f64(jitter)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A uniform number in [0, 1) from a seed (splitmix64), for jitter without an RNG crate.
fn fastrand_unit(seed: u64) -> f64 {
    let nanos = Instant::now().elapsed().as_nanos() as u64;
    let mut z = seed
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(nanos)
        .wrapping_add(std::process::id() as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

pub(super) async fn reconnect_storm(args: ReconnectStormArgs) -> anyhow::Result<()> {
    raise_nofile(args.clients as u64 + 512)?;
    let mut server = ServerProcess::spawn()?;
    let (addr, url) = (server.addr, server.quiet_url());
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = Progress::start("connecting", args.clients);
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let initial = Duration::from_millis(args.initial_delay_ms);
    for i in 0..args.clients {
        let permit = gate.clone().acquire_owned().await?;
        let (url, joined, stop) = (url.clone(), joined_tx.clone(), stop_rx.clone());
        let src = source(i, args.sources);
        // Hold the permit until the first join is reported.
        let (first_tx, mut first_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(storm_client(i, addr, url, src, initial, first_tx, stop));
        let gate_joined = joined.clone();
        tokio::spawn(async move {
            let mut permit = Some(permit);
            while let Some(j) = first_rx.recv().await {
                permit.take();
                let _ = gate_joined.send(j);
            }
        });
    }
    let mut seen = vec![false; args.clients];
    let mut count = 0;
    while count < args.clients {
        let Some((i, _)) = tokio::time::timeout(Duration::from_secs(60), joined_rx.recv()).await?
        else {
            bail!("clients stopped");
        };
        if !std::mem::replace(&mut seen[i], true) {
            count += 1;
            progress.tick();
        }
    }
    drop(progress);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The restart.
    let down = Instant::now();
    if args.graceful {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(server.child.id().to_string())
            .status();
        let _ = server.child.wait();
    } else {
        let _ = server.child.kill();
        let _ = server.child.wait();
    }
    let stopped = down.elapsed();
    drop(server);
    let _restarted = ServerProcess::spawn_on(addr)?;
    let up = Instant::now();
    let progress = Progress::start("rejoining", args.clients);
    let mut rejoin: Vec<Option<Instant>> = vec![None; args.clients];
    let mut count = 0;
    let deadline = up + Duration::from_secs(60);
    while count < args.clients {
        match tokio::time::timeout_at(deadline.into(), joined_rx.recv()).await {
            Ok(Some((i, t))) if t > down && rejoin[i].is_none() => {
                rejoin[i] = Some(t);
                count += 1;
                progress.tick();
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    drop(progress);
    let _ = stop_tx.send(true);
    let mut since_up: Vec<f64> = rejoin
        .iter()
        .flatten()
        .map(|t| t.saturating_duration_since(up).as_secs_f64())
        .collect();
    let all = since_up.iter().cloned().fold(0.0, f64::max);
    let (p50, p99) = (
        percentile(&mut since_up, 0.5),
        percentile(&mut since_up, 0.99),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "reconnect-storm", "clients": args.clients, "rejoined": count,
                "graceful": args.graceful, "stop_seconds": stopped.as_secs_f64(),
                "initial_delay_ms": args.initial_delay_ms,
                "rejoin_after_restart_seconds": {"p50": p50, "p99": p99, "all": all},
            })
        );
    } else {
        println!(
            "parlor bench reconnect-storm: {} clients subscribed to one channel, server {} and restarted on the same port; reconnect ladder from {} ms ±20 %",
            args.clients,
            if args.graceful {
                "stopped with SIGTERM"
            } else {
                "killed"
            },
            args.initial_delay_ms
        );
        println!("| rejoined | stop took | new server listening → rejoined p50 / p99 / all |");
        println!("|---|---|---|");
        println!(
            "| {count} / {} | {:.2} s | {p50:.2} / {p99:.2} / {all:.2} s |",
            args.clients,
            stopped.as_secs_f64()
        );
    }
    if count < args.clients {
        bail!(
            "{} clients did not rejoin within 60 s",
            args.clients - count
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// churn

pub(super) async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    if args.watchers == 0 || args.churners == 0 || args.rate == 0 {
        bail!("--watchers, --churners and --rate must be at least 1");
    }
    raise_nofile((args.watchers + args.churners) as u64 + 512)?;
    let server = ServerProcess::spawn()?;
    let epoch = Instant::now();
    // Churners first (they are not members yet), so their peer ids are known to watchers.
    let mut churners = Vec::new();
    let mut ids = std::collections::HashMap::new();
    for i in 0..args.churners {
        let mut ws = ws_connect(server.addr, source(i, args.sources), &server.quiet_url()).await?;
        let welcome = next_json(&mut ws).await?;
        ids.insert(welcome["peerId"].as_str().context("peerId")?.to_owned(), i);
        churners.push(ws);
    }
    let ids = Arc::new(ids);
    // `sent[2 * i]`: µs of churner i's last subscribe, `sent[2 * i + 1]`: of its last unsubscribe.
    let sent: Arc<Vec<AtomicU64>> =
        Arc::new((0..2 * args.churners).map(|_| AtomicU64::new(0)).collect());
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    let progress = Progress::start("watchers", args.watchers);
    for w in 0..args.watchers {
        let mut ws = ws_connect(
            server.addr,
            source(args.churners + w, args.sources),
            &server.url(),
        )
        .await?;
        ws.send(Message::text(
            r#"{"type":"subscribe","channel":"churn","requestId":"s"}"#,
        ))
        .await?;
        while next_type(&mut ws).await? != "ack" {}
        progress.tick();
        let (ids, sent, seen, mut stop) =
            (ids.clone(), sent.clone(), seen.clone(), stop_rx.clone());
        watchers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut member = std::collections::HashMap::<usize, bool>::new();
            let (mut events, mut disorder) = (0u64, 0u64);
            loop {
                let m = tokio::select! {
                    m = ws.next() => m,
                    _ = stop.changed() => break,
                };
                let Some(Ok(Message::Text(t))) = m else {
                    if matches!(m, Some(Ok(_))) {
                        continue;
                    } else {
                        break;
                    }
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                    continue;
                };
                if v["type"] != "presence" {
                    continue;
                }
                let now = epoch.elapsed().as_micros() as u64;
                for (key, joined) in [("joined", true), ("left", false)] {
                    for p in v[key].as_array().into_iter().flatten() {
                        let Some(&i) = p["peerId"].as_str().and_then(|id| ids.get(id)) else {
                            continue;
                        };
                        events += 1;
                        seen.fetch_add(1, Ordering::Relaxed);
                        if member.insert(i, joined).unwrap_or(false) == joined {
                            disorder += 1;
                        }
                        let at = sent[2 * i + usize::from(!joined)].load(Ordering::Relaxed);
                        lat.push(now.saturating_sub(at));
                    }
                }
            }
            (lat, events, disorder)
        }));
    }
    drop(progress);
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let half = Duration::from_secs_f64(0.5 / args.rate as f64);
    let mut tasks = Vec::new();
    for (i, mut ws) in churners.into_iter().enumerate() {
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            // Spread the churners over one period.
            tokio::time::sleep(half.mul_f64(2.0 * i as f64 / 64.0 % 2.0)).await;
            let mut cycles = 0u64;
            while Instant::now() < end {
                for (slot, frame) in [
                    (
                        2 * i,
                        r#"{"type":"subscribe","channel":"churn","requestId":"j"}"#,
                    ),
                    (
                        2 * i + 1,
                        r#"{"type":"unsubscribe","channel":"churn","requestId":"l"}"#,
                    ),
                ] {
                    sent[slot].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
                    ws.send(Message::text(frame)).await?;
                    while next_type(&mut ws).await? != "ack" {}
                    tokio::time::sleep(half).await;
                }
                cycles += 1;
            }
            anyhow::Ok((cycles, ws))
        }));
    }
    let mut cycles = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (c, ws) = t.await??;
        cycles += c;
        keep.push(ws);
    }
    // Every delta of every cycle, or 5 s more.
    let expected = 2 * cycles * args.watchers as u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let (mut lat_us, mut events, mut disorder) = (Vec::new(), 0, 0);
    for w in watchers {
        let (l, e, d) = w.await?;
        lat_us.extend(l);
        events += e;
        disorder += d;
    }
    let mut lat: Vec<f64> = lat_us.iter().map(|u| *u as f64 / 1e3).collect();
    let (p50, p99, max) = (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0),
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "churn", "watchers": args.watchers, "churners": args.churners,
                "cycles": cycles, "expected_events": expected, "events": events,
                "out_of_order": disorder,
                "latency_ms": {"p50": p50, "p99": p99, "max": max},
            })
        );
    } else {
        println!(
            "parlor bench churn: {} watchers, {} churners × {} join+leave/s for {} s",
            args.watchers, args.churners, args.rate, args.seconds
        );
        println!(
            "| join+leave cycles | presence deltas expected / seen | out of order | request → delta p50 / p99 / max |"
        );
        println!("|---|---|---|---|");
        println!(
            "| {cycles} | {expected} / {events} | {disorder} | {} / {} / {} |",
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    Ok(())
}
