//! # parlor-server
//!
//! The Parlor room server: WebSocket `/v1` compatible with Metered's Realtime Messaging
//! clients, with keys and JWT auth, channels, presence, broadcast and direct messages,
//! quotas and limits, an admin API, `/healthz`, Prometheus `/metrics` and graceful shutdown.
//!
//! Layout (see `docs/architecture.md`):
//!
//! * [`config`]: the TOML configuration and its defaults;
//! * [`auth`]: `?key=` / `?token=` → a [`auth::Grant`], or a close code;
//! * [`hub`]: the sans-IO core (tenants, channels, presence, routing, quotas);
//! * `outbox`: each connection's bounded FIFO queue (the slow-consumer policy);
//! * `http`: the accept loop and each connection's HTTP phase (phase timeouts, the cap on
//!   connections not yet upgraded, the client address);
//! * `conn`: the per-connection IO driver (reader + writer futures, timers);
//! * [`tls`]: `wss://` termination with rustls (the `[tls]` config section);
//! * [`cluster`]: cluster mode, several nodes sharing channels through NATS;
//! * [`dispatch`]: agent dispatch (sans-IO): which rooms get an agent, on which worker;
//! * `worker`: the `/v1/worker` endpoint and the driver of dispatch's commands;
//! * [`turn`]: TURN REST credentials minted into `welcome.metadata.iceServers`;
//! * this file: the HTTP router and [`serve`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), parlor_server::ServerError> {
//! let mut config = parlor_server::config::Config::default();
//! config.add_dev_key("pk_test_x");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7800").await?;
//! parlor_server::serve(listener, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```
#![warn(missing_docs)]

pub mod auth;
pub mod cluster;
pub mod config;
mod conn;
pub mod dispatch;
mod http;
pub mod hub;
pub mod metrics;
mod outbox;
pub mod tls;
pub mod turn;
mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Bytes allowed around a maximal `data` payload in one client frame (channel, ids, keys),
/// so that every payload a client accepted locally also passes the server (spec §1.14).
pub const ENVELOPE_ALLOWANCE: usize = 4096;

/// Initial WebSocket read buffer per connection. Client frames are small (a publish is
/// ~100 bytes), and an idle connection keeps its buffer: 2 KiB here is ~2 KiB less RSS per
/// connection than 4 KiB (`parlor bench connections`); larger frames grow it as they come.
const READ_BUFFER: usize = 2 * 1024;

/// Shared state of a running server.
struct App {
    config: Config,
    auth: Authenticator,
    hub: Mutex<Hub>,
    metrics: Arc<Metrics>,
    /// Upgraded connections still running (axum's graceful shutdown does not track them).
    active: AtomicUsize,
    idle: Notify,
    /// Connected agent workers (`[agents]`).
    workers: worker::Workers,
    /// Turns true when the server shuts down (worker connections and the dispatch driver
    /// end on it).
    stopping: tokio::sync::watch::Sender<bool>,
}

impl App {
    /// The hub lock. Never held across an `.await`.
    fn hub(&self) -> MutexGuard<'_, Hub> {
        // The hub never panics while holding the lock in a way that breaks its invariants
        // more than the panic itself did; keep serving the other connections.
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the server could not start, or stopped with an error. Each variant keeps the typed
/// error of the part that failed (none carries a credential: NATS URLs are scrubbed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] config::ConfigError),
    /// The TLS certificate or key could not be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Cluster mode could not start (NATS unreachable, refused).
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The listening socket failed.
    #[error("listening socket: {0}")]
    Io(#[from] std::io::Error),
    /// The server's task panicked or was cancelled ([`ServerHandle::shutdown`]).
    #[error("server task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Serve until `shutdown` resolves, then drain gracefully: every connection gets
/// `going_away` and close 1001, and this returns once they are gone (or after
/// `limits.shutdown_grace_secs`).
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with(listener, config, Router::new(), shutdown).await
}

/// [`serve`], with `extra` routes beside the server's own (`parlor demo` serves its page
/// this way, on the same port as `/v1`).
pub async fn serve_with(
    listener: TcpListener,
    config: Config,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with_ready(listener, config, extra, shutdown, || {}).await
}

/// [`serve_with`], calling `ready` once the server is about to accept connections (after
/// the TLS files loaded and, in cluster mode, NATS answered): `parlor serve` prints its
/// readiness line there.
pub async fn serve_with_ready(
    listener: TcpListener,
    config: Config,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), ServerError> {
    config.validate()?;
    let metrics = Arc::new(Metrics::new());
    let mut hub = Hub::new(&config, metrics.clone());
    let node = match &config.cluster {
        Some(c) => {
            let node = cluster::Node::start(c).await?;
            hub.enable_cluster(cluster::replica::Replica::new(
                node.me(),
                c.node_timeout_ms,
                c.queue_bytes,
                node.notify.clone(),
            ));
            Some(node)
        }
        None => None,
    };
    let dispatch_wake = Arc::new(Notify::new());
    if let Some(a) = &config.agents {
        hub.enable_dispatch(
            dispatch::Dispatcher::new(a.rules(), a.options()),
            dispatch_wake.clone(),
            unix_ms(),
        );
    }
    let app = Arc::new(App {
        auth: Authenticator::new(&config),
        hub: Mutex::new(hub),
        metrics,
        config,
        active: AtomicUsize::new(0),
        idle: Notify::new(),
        workers: worker::Workers::new(node.as_ref().map_or(0, cluster::Node::me)),
        stopping: tokio::sync::watch::Sender::new(false),
    });
    let dispatcher = app.config.agents.is_some().then(|| {
        tokio::spawn(worker::drive(
            app.clone(),
            dispatch_wake,
            app.stopping.subscribe(),
        ))
    });
    let tls = match &app.config.tls {
        Some(t) => Some(tls::TlsAcceptor::from_config(t)?),
        None => None,
    };
    let stop_cluster = Arc::new(Notify::new());
    let driver = node.map(|n| tokio::spawn(n.run(app.clone(), stop_cluster.clone())));
    let router = router(app.clone()).merge(extra);
    ready();
    let drain = app.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: sending going_away to every connection");
        drain.hub().shutdown();
        drain.stopping.send_replace(true);
    };
    http::serve(
        listener,
        tls,
        router,
        http::Settings::from_config(&app.config),
        app.metrics.clone(),
        shutdown,
    )
    .await;
    let grace = Duration::from_secs(app.config.limits.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        loop {
            let notified = app.idle.notified();
            if app.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = app.active.load(Ordering::SeqCst),
            "grace period over; dropping remaining connections"
        );
    }
    if let Some(d) = dispatcher {
        d.abort();
    }
    if let Some(driver) = driver {
        // Last: the other nodes have had every `left` of ours; now say goodbye.
        stop_cluster.notify_one();
        let _ = tokio::time::timeout(Duration::from_secs(3), driver).await;
    }
    Ok(())
}

/// A server running on a background task (tests, and embedding in `parlor demo`).
#[derive(Debug)]
pub struct ServerHandle {
    addr: std::net::SocketAddr,
    tls: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The base URL clients connect to (`ws://HOST:PORT`, or `wss://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// Begin a graceful shutdown (going_away, close 1001) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shut down gracefully and wait until the server has stopped.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.begin_shutdown();
        (&mut self.task).await?
    }
}

/// Serve on a background task until [`ServerHandle::shutdown`] (or the handle's drop, which
/// also triggers a graceful shutdown).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), parlor_server::ServerError> {
/// let mut config = parlor_server::config::Config::default();
/// config.add_dev_key("pk_test_x");
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = parlor_server::spawn(listener, config)?;
/// assert!(server.url().starts_with("ws://127.0.0.1:"));
/// server.shutdown().await
/// # }
/// ```
pub fn spawn(listener: TcpListener, config: Config) -> Result<ServerHandle, ServerError> {
    spawn_with(listener, config, Router::new())
}

/// [`spawn`], with `extra` routes beside the server's own (see [`serve_with`]).
pub fn spawn_with(
    listener: TcpListener,
    config: Config,
    extra: Router,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    if let Some(t) = &config.tls {
        // Report a bad certificate or key here rather than from the background task.
        tls::TlsAcceptor::from_config(t)?;
    }
    let tls = config.tls.is_some();
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, config, extra, async move {
        // A dropped handle also stops the server.
        let _ = stopped.await;
    }));
    Ok(ServerHandle {
        addr,
        tls,
        stop: Some(stop),
        task,
    })
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1", get(upgrade))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics_text))
        .route("/admin/peers", get(admin_peers))
        .route("/admin/channels", get(admin_channels))
        .route("/admin/peers/{peer_id}/disconnect", post(admin_disconnect))
        .route(parlor_protocol::worker::PATH, get(worker_upgrade))
        .route(
            "/admin/dispatch",
            get(admin_dispatch).post(admin_dispatch_request),
        )
        .with_state(app)
}

/// Counts a running connection task; wakes the shutdown drain when the last one ends.
struct Active(Arc<App>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    ws: WebSocketUpgrade,
) -> Response {
    let client = http::client_address(peer, &headers, &app.config.trusted_proxies);
    let cap = app.config.limits.max_message_size + ENVELOPE_ALLOWANCE;
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| async move {
            app.active.fetch_add(1, Ordering::SeqCst);
            let guard = Active(app.clone());
            conn::run(app, client, query, socket).await;
            drop(guard);
        })
}

/// `/v1/worker`: agent workers, with `Authorization: Bearer <agents.worker_secret>`. 404
/// without `[agents]`, 401 for a wrong secret, 503 at `agents.max_workers`.
async fn worker_upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(agents) = &app.config.agents else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !bearer_is(headers.get(header::AUTHORIZATION), &agents.worker_secret) {
        let client = http::client_address(peer, &headers, &app.config.trusted_proxies);
        tracing::info!(%client, "worker refused: wrong or missing secret");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if app.workers.count() >= agents.max_workers {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let cap = parlor_protocol::worker::MAX_FRAME + 1024;
    ws.max_message_size(cap)
        .max_frame_size(cap)
        .on_upgrade(move |socket| async move {
            app.active.fetch_add(1, Ordering::SeqCst);
            let guard = Active(app.clone());
            let stopping = app.stopping.subscribe();
            worker::run(app, socket, stopping).await;
            drop(guard);
        })
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

/// Constant-time comparison, so the admin secret cannot be guessed byte by byte.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether an `Authorization` header is `Bearer <secret>` (compared in constant time).
fn bearer_is(authorization: Option<&axum::http::HeaderValue>, secret: &str) -> bool {
    let given = authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    ct_eq(given.as_bytes(), secret.as_bytes())
}

/// `Authorization: Bearer <admin_secret>`; the API does not exist without a secret.
fn admin_check(app: &App, headers: &HeaderMap) -> Result<(), StatusCode> {
    let Some(secret) = app.config.admin_secret.as_deref() else {
        return Err(StatusCode::NOT_FOUND);
    };
    if bearer_is(headers.get(header::AUTHORIZATION), secret) {
        Ok(())
    } else {
        Err(StatusCode::UNAUTHORIZED)
    }
}

async fn admin_peers(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match admin_check(&app, &headers) {
        Ok(()) => axum::Json(app.hub().peers()).into_response(),
        Err(s) => s.into_response(),
    }
}

async fn admin_channels(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match admin_check(&app, &headers) {
        Ok(()) => axum::Json(app.hub().channels()).into_response(),
        Err(s) => s.into_response(),
    }
}

/// `GET /admin/dispatch`: connected workers and each room's agent job (404 without
/// `[agents]`).
async fn admin_dispatch(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(s) = admin_check(&app, &headers) {
        return s.into_response();
    }
    if app.config.agents.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let rooms = app
        .hub()
        .with_dispatch(unix_ms(), |d, _| d.rooms())
        .unwrap_or_default();
    let rooms: Vec<serde_json::Value> = rooms
        .into_iter()
        .map(|r| {
            let (job, worker, phase) = match r.job {
                Some((job, worker, phase)) => (Some(job.to_string()), worker, Some(phase)),
                None => (None, None, None),
            };
            serde_json::json!({
                "account": &*r.room.account,
                "channel": &*r.room.channel,
                "agent": &*r.room.agent,
                "humans": r.humans,
                "job": job,
                "worker": worker,
                "phase": phase,
            })
        })
        .collect();
    let hub = app.hub();
    let mut body = serde_json::json!({
        "workers": hub.dispatch_workers().unwrap_or_else(|| app.workers.count()),
        "leads": hub.dispatch_leads(),
        "rooms": rooms,
    });
    if let Some((leader, me)) = hub.dispatch_leader() {
        body["node"] = cluster::wire::node_str(me).into();
        body["leader"] = leader.map(cluster::wire::node_str).into();
    }
    axum::Json(body).into_response()
}

/// An explicit dispatch request: an agent for a channel no rule names (or before anyone
/// joined it).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchRequest {
    account: String,
    channel: String,
    agent: String,
}

/// `POST /admin/dispatch` with `{"account","channel","agent"}`: that agent joins the channel
/// (202); it stays while humans are there and `request_grace` after (30 s).
async fn admin_dispatch_request(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(s) = admin_check(&app, &headers) {
        return s.into_response();
    }
    if app.config.agents.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let req: DispatchRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    if req.account.is_empty()
        || req.account.len() > 128
        || !parlor_protocol::validate::is_valid_channel(&req.channel)
        || !dispatch::valid_agent_name(&req.agent)
    {
        return (
            StatusCode::BAD_REQUEST,
            "account (1-128 bytes), channel and agent (1-64 letters, digits, '-', '_', '.') must be valid\n",
        )
            .into_response();
    }
    app.hub()
        .dispatch_request(&req.account, &req.channel, &req.agent, unix_ms());
    StatusCode::ACCEPTED.into_response()
}

async fn admin_disconnect(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(peer_id): Path<String>,
) -> Response {
    if let Err(s) = admin_check(&app, &headers) {
        return s.into_response();
    }
    if app.hub().admin_disconnect(&peer_id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_up_errors_are_typed() {
        let listener = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let mut config = Config::default();
        config.add_dev_key("pk_test_x");
        config.limits.ping_interval_secs = 0;
        let e = spawn(listener().await, config).expect_err("a bad limit");
        assert!(matches!(e, ServerError::Config(_)), "{e:?}");
        assert!(e.to_string().contains("ping_interval_secs"), "{e}");

        let mut config = Config::default();
        config.add_dev_key("pk_test_x");
        config.tls = Some(tls::TlsConfig {
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
        });
        let e = spawn(listener().await, config).expect_err("no certificate");
        assert!(matches!(e, ServerError::Tls(_)), "{e:?}");
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
