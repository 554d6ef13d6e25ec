//! `parlor demo`: the embedded server, a voice agent (PocketSphinx, rules, eSpeak NG) in one
//! room, and the browser page (`web/`), all on one port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use parlor_agent::offline::{EspeakTts, RuleReply, SphinxStt};
use parlor_agent::openai::OpenAiLlm;
use parlor_agent::{Agent, AgentOptions, Llm};
use parlor_peer::{ReconnectOptions, RoomPeer, SignallingClient};

#[derive(Args, Debug)]
pub(crate) struct DemoArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7800")]
    listen: SocketAddr,
    /// The room the agent waits in.
    #[arg(long, default_value = "demo")]
    room: String,
    /// The development key the page and the agent use.
    #[arg(long, default_value = "pk_demo")]
    key: String,
    /// The page's directory (default: the repository's `web/`). The browser SDK is served
    /// from its `node_modules/@metered-ca/realtime` (`npm ci --prefix web`).
    #[arg(long)]
    web: Option<PathBuf>,
    /// What the agent says when a human's audio arrives.
    #[arg(long)]
    greeting: Option<String>,
}

struct Site {
    web: PathBuf,
    sdk: PathBuf,
    config: String,
}

fn default_web() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    if repo.join("index.html").exists() {
        repo
    } else {
        PathBuf::from("web")
    }
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let web = args.web.clone().unwrap_or_else(default_web);
    anyhow::ensure!(
        web.join("index.html").exists(),
        "no demo page at {} (pass --web DIR)",
        web.display()
    );
    let sdk = web.join("node_modules/@metered-ca/realtime/dist/index.mjs");
    anyhow::ensure!(
        sdk.exists(),
        "the browser SDK is not installed at {}: run `npm ci --prefix {}` (scripts/demo.sh does)",
        sdk.display(),
        web.display()
    );
    // The hooks load first, so a missing package fails before anything listens.
    let stt = SphinxStt::new().context("speech-to-text (PocketSphinx)")?;
    let tts = EspeakTts::new().context("text-to-speech (eSpeak NG)")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut config = parlor_server::config::Config::default();
    config.add_dev_key(&args.key);
    let site = Arc::new(Site {
        web,
        sdk,
        config: serde_json::json!({
            "url": format!("ws://{addr}"),
            "apiKey": args.key,
            "room": args.room,
        })
        .to_string(),
    });
    let pages = Router::new()
        .route("/", get(index))
        .route("/config.json", get(config_json))
        .route("/sdk/index.mjs", get(sdk_bundle))
        .route("/{file}", get(file))
        .with_state(site);
    let server = parlor_server::spawn_with(listener, config, pages)?;

    let client = SignallingClient::builder()
        .url(server.url())
        .api_key(args.key.clone())
        // A daemon: retry forever, at most a minute apart.
        .reconnect(Some(ReconnectOptions {
            max_attempts: None,
            max_delay: Duration::from_secs(60),
            ..ReconnectOptions::default()
        }))
        .build()?;
    let options = AgentOptions {
        greeting: args.greeting.clone(),
        ..AgentOptions::default()
    };
    // An OpenAI-compatible model when PARLOR_LLM_BASE_URL is set, else the rules.
    let llm: Box<dyn Llm> = match OpenAiLlm::from_env() {
        Some(llm) => {
            tracing::info!(?llm, "replies from an OpenAI-compatible endpoint");
            Box::new(llm)
        }
        None => Box::new(RuleReply),
    };
    let agent = Agent::new(RoomPeer::new(client), stt, llm, tts, options);
    let events = agent
        .join(&args.room)
        .await
        .context("the agent cannot join")?;
    println!(
        "demo: agent joined room {} as {}",
        args.room,
        agent.peer().peer_id().unwrap_or_default()
    );
    println!("demo: open http://{addr}/");
    let result = tokio::select! {
        r = agent.serve(events) => r.context("the agent stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    server.shutdown().await.ok();
    result
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

async fn send_file(path: &Path, name: &str) -> Response {
    let path = path.to_owned();
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => (
            [
                (header::CONTENT_TYPE, content_type(name)),
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn index(State(site): State<Arc<Site>>) -> Response {
    send_file(&site.web.join("index.html"), "index.html").await
}

async fn config_json(State(site): State<Arc<Site>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        site.config.clone(),
    )
        .into_response()
}

async fn sdk_bundle(State(site): State<Arc<Site>>) -> Response {
    send_file(&site.sdk, "index.mjs").await
}

/// Files directly in the page's directory; nothing else (no dot files, no subdirectories).
async fn file(State(site): State<Arc<Site>>, UrlPath(name): UrlPath<String>) -> Response {
    let plain = !name.starts_with('.')
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !plain {
        return StatusCode::NOT_FOUND.into_response();
    }
    send_file(&site.web.join(&name), &name).await
}
