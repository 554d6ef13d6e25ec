//! The signalling client (spec §1 from the client side): the Rust equivalent of the Python
//! SDK's `SignallingClient`.
//!
//! One driver task owns the WebSocket, the reconnect ladder, the heartbeat and the inactivity
//! watchdog; [`SignallingClient`] is a cheap, cloneable handle. Requests are correlated with
//! their `ack`/`error` by `requestId` and time out after 15 s; every pending request fails
//! with [`SignallingError::Disconnected`] the moment the socket closes. Tracked subscriptions
//! are replayed after every reconnect (3 retries, 2 s apart). Events arrive on a bounded
//! broadcast stream from [`SignallingClient::events`].

mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::events::EventSender;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use parlor_protocol::client::{self as wire, PresencePeer, ServerEvent, parse_server_frame};
use parlor_protocol::validate;

pub use rules::{
    BaseUrl, Credential, DEFAULT_URL, IceServer, ReconnectOptions, extract_ice_servers, scrub,
};

/// How long to wait for `welcome` after the upgrade.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for its ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(15);
/// Default inactivity timeout (ping after a third of it).
pub const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);
/// The `maxMessageSize` assumed before the first welcome.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 65536;
/// Close code the client uses for its inactivity watchdog.
pub const CLIENT_INACTIVITY: u16 = 4000;

/// The future a token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
/// An async token provider, called on every connect attempt.
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Errors of the signalling client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SignallingError {
    /// The client is not connected (call `connect` first, or wait for the reconnect).
    #[error("not connected")]
    NotConnected,
    /// The first connect failed (auth, quota, network, welcome timeout). Not retried.
    #[error("connect failed (close code {close_code:?}): {reason}")]
    ConnectFailed {
        /// The close code the server sent, if any.
        close_code: Option<u16>,
        /// The close reason or transport error, scrubbed of credentials.
        reason: String,
    },
    /// The server answered the request with an `error` frame.
    #[error("server error {code}: {}", message.as_deref().unwrap_or(""))]
    ServerRequest {
        /// Protocol error code, e.g. `channel_not_authorized`.
        code: String,
        /// Server detail.
        message: Option<String>,
        /// The request it answers.
        request_id: String,
    },
    /// No ack within the timeout.
    #[error("no ack for request {request_id} within {timeout:?}")]
    AckTimeout {
        /// The request.
        request_id: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The socket closed while the request was pending.
    #[error("disconnected before the request completed")]
    Disconnected,
    /// The payload is larger than the server's `maxMessageSize`.
    #[error("payload of {size} bytes exceeds maxMessageSize {cap}")]
    Oversized {
        /// Serialized size.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// A bad argument (channel name, peer id, options, payload not serializable).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The call is not allowed in the current state.
    #[error("{method} not allowed in state {state:?}")]
    InvalidState {
        /// The method.
        method: &'static str,
        /// The state.
        state: ClientState,
    },
}

/// Client states (spec §3.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Never connected.
    Idle,
    /// First connect in progress.
    Connecting,
    /// Welcome received.
    Connected,
    /// Between connections, waiting out the backoff.
    Reconnecting,
    /// Terminal: closed by the user, a terminal code, or exhausted attempts.
    Closed,
}

/// Events of the signalling client (spec §3.8).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The state changed.
    StateChange {
        /// Previous state.
        from: ClientState,
        /// New state.
        to: ClientState,
    },
    /// A welcome arrived.
    Connected {
        /// Our peer id on this connection.
        peer_id: String,
        /// Server clock (ms).
        server_time: f64,
        /// Token expiry (Unix seconds), `None` for keys.
        expires_at: Option<f64>,
        /// Whether this is a reconnect.
        is_reconnect: bool,
        /// The server's payload cap.
        max_message_size: usize,
        /// ICE servers from `welcome.metadata`, when present and valid.
        ice_servers: Option<Vec<IceServer>>,
    },
    /// The socket closed.
    Disconnected {
        /// Close code, if one was received.
        code: Option<u16>,
        /// Close reason or transport error (scrubbed).
        reason: String,
        /// Whether the client will reconnect.
        will_reconnect: bool,
    },
    /// A channel broadcast.
    Message {
        /// Channel.
        channel: String,
        /// Sender peer id.
        sender_peer_id: String,
        /// Payload, verbatim.
        data: Arc<RawValue>,
        /// Sender's public metadata, when opted in.
        sender_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// A direct message.
    Direct {
        /// Sender peer id.
        sender_peer_id: String,
        /// Payload, verbatim.
        data: Arc<RawValue>,
        /// Sender's public metadata.
        sender_metadata: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// Presence snapshot or delta.
    Presence {
        /// Channel.
        channel: String,
        /// Joined peers.
        joined: Vec<PresencePeer>,
        /// Left peers.
        left: Vec<PresencePeer>,
    },
    /// An error frame not tied to a pending request.
    ServerError {
        /// Error code.
        code: String,
        /// Detail.
        message: Option<String>,
        /// The request id it carried, if any.
        request_id: Option<String>,
    },
    /// The server is going away.
    GoingAway {
        /// Advisory delay.
        retry_after_ms: u64,
    },
    /// The token provider failed (emitted from the 3rd consecutive failure on).
    TokenProviderError {
        /// Consecutive failures.
        consecutive_failures: u32,
        /// What failed.
        error: String,
    },
    /// This reader fell more than the event capacity behind and `dropped` events were lost
    /// before the next one: messages first; state, presence and errors only past twice the
    /// capacity.
    Lagged {
        /// Events lost.
        dropped: u64,
    },
}

impl crate::events::BusEvent for Event {
    /// Everything but messages (which can come in floods) is kept for a slow reader.
    fn is_critical(&self) -> bool {
        !matches!(self, Event::Message { .. } | Event::Direct { .. })
    }

    fn lagged(dropped: u64) -> Self {
        Event::Lagged { dropped }
    }
}

#[derive(Clone)]
enum CredentialSource {
    Key(String),
    Provider(TokenProvider),
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Key(_) => f.write_str("Key(***)"),
            CredentialSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

/// Builds a [`SignallingClient`].
#[derive(Debug, Clone)]
pub struct SignallingClientBuilder {
    url: String,
    credential: Option<CredentialSource>,
    reconnect: Option<ReconnectOptions>,
    inactivity_timeout: Duration,
    token_provider_timeout: Duration,
    welcome_timeout: Duration,
    ack_timeout: Duration,
    event_capacity: usize,
    /// PEM trust anchors added to the built-in web roots for `wss://`.
    extra_roots_pem: Vec<Vec<u8>>,
}

impl Default for SignallingClientBuilder {
    fn default() -> Self {
        SignallingClientBuilder {
            url: DEFAULT_URL.to_owned(),
            credential: None,
            reconnect: Some(ReconnectOptions::default()),
            inactivity_timeout: INACTIVITY_TIMEOUT,
            token_provider_timeout: Duration::from_secs(10),
            welcome_timeout: WELCOME_TIMEOUT,
            ack_timeout: ACK_TIMEOUT,
            event_capacity: 4096,
            extra_roots_pem: Vec::new(),
        }
    }
}

impl SignallingClientBuilder {
    /// The server origin (`wss://host`, or `ws://127.0.0.1:PORT` for local servers).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }
    /// Authenticate with a publishable key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credential = Some(CredentialSource::Key(key.into()));
        self
    }
    /// Authenticate with JWTs from an async provider, called on every connect attempt.
    pub fn token_provider<F, Fut>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.credential = Some(CredentialSource::Provider(Arc::new(move || {
            Box::pin(provider())
        })));
        self
    }
    /// Reconnect options; `None` disables reconnecting.
    pub fn reconnect(mut self, options: Option<ReconnectOptions>) -> Self {
        self.reconnect = options;
        self
    }
    /// Inactivity timeout: ping after a third of it, close 4000 after all of it.
    pub fn inactivity_timeout(mut self, t: Duration) -> Self {
        self.inactivity_timeout = t;
        self
    }
    /// How long the token provider may take.
    pub fn token_provider_timeout(mut self, t: Duration) -> Self {
        self.token_provider_timeout = t;
        self
    }
    /// How long to wait for `welcome` (default 10 s).
    pub fn welcome_timeout(mut self, t: Duration) -> Self {
        self.welcome_timeout = t;
        self
    }
    /// How long a request waits for its ack (default 15 s).
    pub fn ack_timeout(mut self, t: Duration) -> Self {
        self.ack_timeout = t;
        self
    }
    /// Events an [`Events`] stream holds before a slow reader loses messages (default 4096;
    /// at least 16): past it the oldest `Message`/`Direct` go first, and the next read
    /// returns [`Event::Lagged`] with how many; state, connection and presence events are
    /// kept up to twice it.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.event_capacity = n;
        self
    }

    /// Trust the CA certificates in this PEM text for `wss://`, beside the built-in web
    /// roots (a self-hosted server with a private CA). Repeatable.
    pub fn tls_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.extra_roots_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Validate and build.
    pub fn build(self) -> Result<SignallingClient, SignallingError> {
        let base = BaseUrl::parse(&self.url).map_err(SignallingError::InvalidArgument)?;
        let tls = if base.as_str().starts_with("wss://") {
            Some(tls_config(&self.extra_roots_pem).map_err(SignallingError::InvalidArgument)?)
        } else {
            None
        };
        let credential = self.credential.ok_or_else(|| {
            SignallingError::InvalidArgument("exactly one of api_key or token_provider".into())
        })?;
        if let Some(r) = &self.reconnect {
            r.validate().map_err(SignallingError::InvalidArgument)?;
        }
        if self.inactivity_timeout < Duration::from_secs(1) {
            return Err(SignallingError::InvalidArgument(
                "inactivity_timeout must be at least 1 s".into(),
            ));
        }
        let (state, _) = watch::channel(ClientState::Idle);
        let events = EventSender::new(self.event_capacity.max(16));
        Ok(SignallingClient {
            shared: Arc::new(Shared {
                base,
                tls,
                credential,
                reconnect: self.reconnect,
                inactivity_timeout: self.inactivity_timeout,
                token_provider_timeout: self.token_provider_timeout,
                welcome_timeout: self.welcome_timeout,
                ack_timeout: self.ack_timeout,
                state,
                events,
                conn: Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                subs: Mutex::new(Vec::new()),
                peer_id: Mutex::new(None),
                max_message_size: AtomicUsize::new(DEFAULT_MAX_MESSAGE_SIZE),
                generation: AtomicU64::new(0),
                closing: AtomicBool::new(false),
                stop: Notify::new(),
                task: Mutex::new(None),
            }),
        })
    }
}

enum Outgoing {
    Text(String),
}

struct ConnHandle {
    tx: mpsc::Sender<Outgoing>,
    generation: u64,
}

type Pending = HashMap<String, oneshot::Sender<Result<(), SignallingError>>>;

struct Shared {
    base: BaseUrl,
    /// The TLS client configuration for `wss://` (built once).
    tls: Option<Arc<rustls::ClientConfig>>,
    credential: CredentialSource,
    reconnect: Option<ReconnectOptions>,
    inactivity_timeout: Duration,
    token_provider_timeout: Duration,
    welcome_timeout: Duration,
    ack_timeout: Duration,
    state: watch::Sender<ClientState>,
    events: EventSender<Event>,
    conn: Mutex<Option<ConnHandle>>,
    pending: Mutex<Pending>,
    /// Tracked subscriptions, in subscribe order: (channel, includeSenderMetadata).
    subs: Mutex<Vec<(String, bool)>>,
    peer_id: Mutex<Option<String>>,
    max_message_size: AtomicUsize,
    generation: AtomicU64,
    closing: AtomicBool,
    stop: Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A rustls client configuration: the web PKI roots plus `extra_pem` CA certificates, with
/// ring as the crypto provider (explicit, so no process-wide default is needed).
pub(crate) fn tls_config(extra_pem: &[Vec<u8>]) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for pem in extra_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("tls_root_certificates_pem: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("tls_root_certificates_pem: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("tls_root_certificates_pem: no CERTIFICATE block found".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn emit(&self, e: Event) {
        // No receivers is fine; lagging receivers lose the oldest events.
        self.events.send(e);
    }

    fn set_state(&self, to: ClientState) {
        let from = self.state.send_replace(to);
        if from != to {
            tracing::debug!(?from, ?to, "signalling state");
            self.emit(Event::StateChange { from, to });
        }
    }

    fn fail_pending(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (_, tx) in pending {
            let _ = tx.send(Err(SignallingError::Disconnected));
        }
    }
}

/// Options of a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Ask the server to stamp broadcasts with the sender's `peerMetadata`.
    pub include_sender_metadata: bool,
}

/// A handle on the signalling connection. Cheap to clone.
#[derive(Clone)]
pub struct SignallingClient {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SignallingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignallingClient")
            .field("url", &self.shared.base.as_str())
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// The signalling client's event stream.
pub type Events = crate::events::EventStream<Event>;

impl SignallingClient {
    /// Start building a client.
    pub fn builder() -> SignallingClientBuilder {
        SignallingClientBuilder::default()
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        *self.shared.state.borrow()
    }

    /// Our peer id on the current (or last) connection.
    pub fn peer_id(&self) -> Option<String> {
        lock(&self.shared.peer_id).clone()
    }

    /// The server's `maxMessageSize` (65536 before the first welcome).
    pub fn max_message_size(&self) -> usize {
        self.shared.max_message_size.load(Ordering::Relaxed)
    }

    /// Subscribe to events. Subscribe before `connect` to see every event.
    pub fn events(&self) -> Events {
        self.shared.events.subscribe()
    }

    /// Connect; resolves at the first `welcome`. Allowed from `Idle` or `Closed`. A failure of
    /// this first connect is not retried.
    pub async fn connect(&self) -> Result<(), SignallingError> {
        let state = self.state();
        if !matches!(state, ClientState::Idle | ClientState::Closed) {
            return Err(SignallingError::InvalidState {
                method: "connect",
                state,
            });
        }
        self.shared.closing.store(false, Ordering::SeqCst);
        self.shared.set_state(ClientState::Connecting);
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(run(self.shared.clone(), first_tx));
        *lock(&self.shared.task) = Some(task);
        first_rx.await.unwrap_or(Err(SignallingError::Disconnected))
    }

    /// Close with 1000 and stop reconnecting. Idempotent; waits for the driver to finish.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.stop.notify_waiters();
        self.shared.stop.notify_one();
        let task = lock(&self.shared.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        if self.state() != ClientState::Idle {
            self.shared.set_state(ClientState::Closed);
        }
    }

    /// Subscribe to `channel` (tracked and replayed after reconnects). Idempotent on the
    /// server; a repeat updates `include_sender_metadata` ("last subscribe wins").
    pub async fn subscribe(
        &self,
        channel: &str,
        options: SubscribeOptions,
    ) -> Result<(), SignallingError> {
        check_channel(channel)?;
        let flag = options.include_sender_metadata;
        let was_new = {
            let mut subs = lock(&self.shared.subs);
            match subs.iter_mut().find(|(c, _)| c == channel) {
                Some(entry) => {
                    entry.1 = flag;
                    false
                }
                None => {
                    subs.push((channel.to_owned(), flag));
                    true
                }
            }
        };
        let r = self
            .request(|rid| wire::subscribe(channel, rid, flag))
            .await;
        if matches!(r, Err(SignallingError::NotConnected)) && was_new {
            lock(&self.shared.subs).retain(|(c, _)| c != channel);
        }
        r
    }

    /// Unsubscribe (untracked before sending; idempotent on the server).
    pub async fn unsubscribe(&self, channel: &str) -> Result<(), SignallingError> {
        check_channel(channel)?;
        lock(&self.shared.subs).retain(|(c, _)| c != channel);
        self.request(|rid| wire::unsubscribe(channel, rid)).await
    }

    /// Broadcast `data` to `channel`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), SignallingError> {
        check_channel(channel)?;
        let raw = self.payload(data)?;
        self.request(|rid| wire::publish(channel, &raw, rid)).await
    }

    /// Queue a broadcast to `channel` for the socket without waiting for its ack, as
    /// [`send_queued`](SignallingClient::send_queued) does for a direct message: frames
    /// leave in the order queued, and the [`PendingAck`] settles this one.
    pub async fn publish_queued<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<PendingAck, SignallingError> {
        check_channel(channel)?;
        let raw = self.payload(data)?;
        let tx = self.outgoing()?;
        enqueue(&self.shared, &tx, |rid| wire::publish(channel, &raw, rid)).await
    }

    /// Send `data` directly to `peer_id`.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        peer_id: &str,
        data: &T,
    ) -> Result<(), SignallingError> {
        check_peer_id(peer_id)?;
        let raw = self.payload(data)?;
        self.request(|rid| wire::send(peer_id, &raw, rid)).await
    }

    /// Queue a direct message to `peer_id` for the socket without waiting for its ack:
    /// returns once the frame is in the connection's outgoing queue (frames leave in the
    /// order queued, and the server keeps that order), with a [`PendingAck`] that settles
    /// it. Several can be in flight at once (the peer's descriptions and ICE candidates go
    /// out this way, so call setup does not pay a round trip per candidate). Errors as
    /// [`send`](SignallingClient::send), the server's ones through the [`PendingAck`].
    pub async fn send_queued<T: Serialize + ?Sized>(
        &self,
        peer_id: &str,
        data: &T,
    ) -> Result<PendingAck, SignallingError> {
        check_peer_id(peer_id)?;
        let raw = self.payload(data)?;
        let tx = self.outgoing()?;
        enqueue(&self.shared, &tx, |rid| wire::send(peer_id, &raw, rid)).await
    }

    /// The current connection's outgoing queue.
    fn outgoing(&self) -> Result<mpsc::Sender<Outgoing>, SignallingError> {
        lock(&self.shared.conn)
            .as_ref()
            .map(|c| c.tx.clone())
            .ok_or(SignallingError::NotConnected)
    }

    fn payload<T: Serialize + ?Sized>(&self, data: &T) -> Result<Box<RawValue>, SignallingError> {
        let raw = serde_json::value::to_raw_value(data)
            .map_err(|e| SignallingError::InvalidArgument(format!("payload: {e}")))?;
        let cap = self.max_message_size();
        if raw.get().len() > cap {
            return Err(SignallingError::Oversized {
                size: raw.get().len(),
                cap,
            });
        }
        Ok(raw)
    }

    async fn request(&self, build: impl FnOnce(&str) -> String) -> Result<(), SignallingError> {
        let tx = self.outgoing()?;
        request_on(&self.shared, &tx, build).await
    }
}

fn check_peer_id(peer_id: &str) -> Result<(), SignallingError> {
    if validate::is_valid_peer_id(peer_id) {
        Ok(())
    } else {
        Err(SignallingError::InvalidArgument(
            "peer id must be 1-128 characters without control characters".into(),
        ))
    }
}

async fn request_on(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Outgoing>,
    build: impl FnOnce(&str) -> String,
) -> Result<(), SignallingError> {
    enqueue(shared, tx, build).await?.wait().await
}

/// Put a request on the connection's outgoing queue; its ack is waited for separately.
async fn enqueue(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Outgoing>,
    build: impl FnOnce(&str) -> String,
) -> Result<PendingAck, SignallingError> {
    let rid = new_request_id();
    let (otx, orx) = oneshot::channel();
    lock(&shared.pending).insert(rid.clone(), otx);
    if tx.send(Outgoing::Text(build(&rid))).await.is_err() {
        lock(&shared.pending).remove(&rid);
        return Err(SignallingError::Disconnected);
    }
    Ok(PendingAck {
        rid,
        rx: Some(orx),
        shared: Arc::clone(shared),
    })
}

/// The ack of a request sent with [`SignallingClient::send_queued`], not yet received.
/// Dropping it forgets the request (its ack, when it comes, is ignored).
#[must_use = "the ack carries the server's error, if any"]
pub struct PendingAck {
    rid: String,
    rx: Option<oneshot::Receiver<Result<(), SignallingError>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck")
            .field("request_id", &self.rid)
            .finish_non_exhaustive()
    }
}

impl PendingAck {
    /// The request's id (`requestId` on the wire).
    pub fn request_id(&self) -> &str {
        &self.rid
    }

    /// Wait for the ack (at most the client's ack timeout): `Ok` when the server took the
    /// request, its error otherwise.
    pub async fn wait(mut self) -> Result<(), SignallingError> {
        let Some(rx) = self.rx.take() else {
            return Err(SignallingError::Disconnected);
        };
        match timeout(self.shared.ack_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(SignallingError::Disconnected),
            Err(_) => Err(SignallingError::AckTimeout {
                request_id: self.rid.clone(),
                timeout: self.shared.ack_timeout,
            }),
        }
    }
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        // Waited for or not, the request's slot goes with it (a late ack finds none).
        lock(&self.shared.pending).remove(&self.rid);
    }
}

fn check_channel(channel: &str) -> Result<(), SignallingError> {
    if !validate::is_valid_channel(channel) {
        return Err(SignallingError::InvalidArgument(
            "channel must be 1-256 characters without control characters".into(),
        ));
    }
    if validate::is_reserved_channel(channel) {
        return Err(SignallingError::InvalidArgument(
            "channel prefix is reserved".into(),
        ));
    }
    Ok(())
}

fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    // getrandom failing means the OS has no entropy source; fall back to the clock so the
    // client still works (ids only need uniqueness here, not secrecy).
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return t ^ (std::process::id() as u128) << 64;
    }
    u128::from_le_bytes(b)
}

/// An RFC 4122 v4 UUID, as the SDKs use for request ids.
fn new_request_id() -> String {
    let mut b = random_u128().to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn unit_random() -> f64 {
    (random_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// How one connection ended.
struct Ended {
    welcomed: bool,
    code: Option<u16>,
    reason: String,
}

/// The driver: connects, runs connections, and walks the reconnect ladder.
async fn run(shared: Arc<Shared>, first: oneshot::Sender<Result<(), SignallingError>>) {
    let mut first = Some(first);
    let mut ever_welcomed = false;
    let mut attempt: u32 = 0;
    let mut token_failures: u32 = 0;
    loop {
        if shared.closing.load(Ordering::SeqCst) {
            break;
        }
        let ended = match resolve_credential(&shared).await {
            Ok(url) => {
                token_failures = 0;
                connection(&shared, &url, &mut first, ever_welcomed).await
            }
            Err(e) => {
                token_failures += 1;
                if token_failures >= 3 {
                    shared.emit(Event::TokenProviderError {
                        consecutive_failures: token_failures,
                        error: e.clone(),
                    });
                }
                Ended {
                    welcomed: false,
                    code: None,
                    reason: format!("token provider failed: {e}"),
                }
            }
        };
        *lock(&shared.conn) = None;
        shared.fail_pending();
        if ended.welcomed {
            ever_welcomed = true;
            attempt = 0;
        }
        let closing = shared.closing.load(Ordering::SeqCst);
        if !ever_welcomed && !closing {
            // A failure of the very first connect is reported, never retried.
            if let Some(f) = first.take() {
                let _ = f.send(Err(SignallingError::ConnectFailed {
                    close_code: ended.code,
                    reason: ended.reason.clone(),
                }));
            }
            shared.set_state(ClientState::Closed);
            return;
        }
        attempt += 1;
        let terminal = ended.code.is_some_and(rules::is_terminal);
        let reconnect = shared.reconnect.as_ref().filter(|r| r.allows(attempt));
        let will_reconnect = !closing && !terminal && reconnect.is_some();
        shared.emit(Event::Disconnected {
            code: ended.code,
            reason: ended.reason.clone(),
            will_reconnect,
        });
        let Some(opts) = reconnect.filter(|_| will_reconnect) else {
            break;
        };
        shared.set_state(ClientState::Reconnecting);
        let delay = opts.delay(attempt, rules::backoff_floor(ended.code), unit_random());
        tracing::info!(
            attempt,
            delay_ms = delay.as_millis() as u64,
            code = ?ended.code,
            "signalling reconnect scheduled"
        );
        tokio::select! {
            _ = sleep(delay) => {}
            _ = shared.stop.notified() => {}
        }
    }
    if let Some(f) = first.take() {
        let _ = f.send(Err(SignallingError::Disconnected));
    }
    shared.set_state(ClientState::Closed);
}

async fn resolve_credential(shared: &Shared) -> Result<String, String> {
    match &shared.credential {
        CredentialSource::Key(k) => Ok(shared.base.connect_url(&Credential::Key(k))),
        CredentialSource::Provider(p) => {
            let token = timeout(shared.token_provider_timeout, p())
                .await
                .map_err(|_| "token provider timed out".to_owned())??;
            Ok(shared.base.connect_url(&Credential::Token(&token)))
        }
    }
}

/// One WebSocket connection, from upgrade to close.
async fn connection(
    shared: &Arc<Shared>,
    url: &str,
    first: &mut Option<oneshot::Sender<Result<(), SignallingError>>>,
    is_reconnect: bool,
) -> Ended {
    let mut ended = Ended {
        welcomed: false,
        code: None,
        reason: String::new(),
    };
    let (ws, _) = match timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true,
            Some(match &shared.tls {
                Some(config) => tokio_tungstenite::Connector::Rustls(config.clone()),
                None => tokio_tungstenite::Connector::Plain,
            }),
        ),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            if let tokio_tungstenite::tungstenite::Error::Http(resp) = &e {
                ended.code = Some(resp.status().as_u16());
                ended.reason = "handshake rejected".into();
            } else {
                ended.reason = scrub(&e.to_string());
            }
            return ended;
        }
        Err(_) => {
            ended.reason = "connect timed out".into();
            return ended;
        }
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Outgoing>(256);
    let generation = shared.generation.fetch_add(1, Ordering::SeqCst) + 1;
    let welcome_deadline = Instant::now() + shared.welcome_timeout;
    let ping_after = (shared.inactivity_timeout / 3).max(Duration::from_secs(1));
    let mut last_inbound = Instant::now();
    let mut last_ping = Instant::now();
    loop {
        let heartbeat = if ended.welcomed {
            last_inbound.max(last_ping) + ping_after
        } else {
            welcome_deadline
        };
        let watchdog = last_inbound + shared.inactivity_timeout;
        tokio::select! {
            msg = stream.next() => {
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        if ended.reason.is_empty() {
                            ended.reason = scrub(&e.to_string());
                        }
                        break;
                    }
                    None => break,
                };
                match msg {
                    Message::Text(text) => {
                        last_inbound = Instant::now();
                        match parse_server_frame(&text) {
                            Ok(ServerEvent::Welcome { peer_id, expires_at, server_time, max_message_size, metadata }) => {
                                if ended.welcomed {
                                    tracing::warn!("second welcome ignored");
                                    continue;
                                }
                                ended.welcomed = true;
                                *lock(&shared.peer_id) = Some(peer_id.clone());
                                shared.max_message_size.store(max_message_size, Ordering::Relaxed);
                                *lock(&shared.conn) = Some(ConnHandle { tx: tx.clone(), generation });
                                shared.set_state(ClientState::Connected);
                                shared.emit(Event::Connected {
                                    peer_id,
                                    server_time,
                                    expires_at,
                                    is_reconnect,
                                    max_message_size,
                                    ice_servers: extract_ice_servers(metadata.as_ref()),
                                });
                                if let Some(f) = first.take() {
                                    let _ = f.send(Ok(()));
                                }
                                if is_reconnect {
                                    replay_subscriptions(shared, &tx, generation);
                                }
                            }
                            Ok(ev) => dispatch(shared, ev),
                            Err(e) => tracing::warn!(error = %e, "dropping malformed server frame"),
                        }
                    }
                    Message::Binary(_) => tracing::warn!("dropping binary frame from server"),
                    Message::Close(frame) => {
                        if let Some(f) = frame {
                            ended.code = Some(u16::from(f.code));
                            ended.reason = scrub(&f.reason);
                        } else {
                            ended.code = Some(1005);
                        }
                        // tungstenite answers the close; keep reading until the stream ends.
                    }
                    _ => {}
                }
            }
            out = rx.recv() => {
                if let Some(Outgoing::Text(t)) = out
                    && sink.send(Message::text(t)).await.is_err()
                {
                    break;
                }
            }
            _ = sleep_until(heartbeat) => {
                if !ended.welcomed {
                    // PY closes with 1000 "no welcome"; JS with 4000 "welcome timeout".
                    ended.reason = "welcome timeout".into();
                    let _ = close_with(&mut sink, 1000, "no welcome").await;
                    break;
                }
                last_ping = Instant::now();
                if sink.send(Message::text(wire::PING)).await.is_err() {
                    break;
                }
            }
            _ = sleep_until(watchdog), if ended.welcomed => {
                ended.code = Some(CLIENT_INACTIVITY);
                ended.reason = "inactivity timeout".into();
                let _ = close_with(&mut sink, CLIENT_INACTIVITY, "inactivity timeout").await;
                // Wait briefly for the server's close answer.
                let _ = timeout(Duration::from_secs(1), async { while stream.next().await.is_some() {} }).await;
                break;
            }
            _ = shared.stop.notified() => {
                let _ = close_with(&mut sink, 1000, "client requested close").await;
                ended.code.get_or_insert(1000);
                ended.reason = "client requested close".into();
                let _ = timeout(Duration::from_secs(1), async { while stream.next().await.is_some() {} }).await;
                break;
            }
        }
    }
    ended
}

async fn close_with<S>(sink: &mut S, code: u16, reason: &str) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    sink.send(Message::Close(Some(CloseFrame {
        code: WsCloseCode::from(code),
        reason: reason.to_owned().into(),
    })))
    .await
}

fn dispatch(shared: &Shared, ev: ServerEvent) {
    match ev {
        ServerEvent::Ack { request_id } => {
            if let Some(tx) = lock(&shared.pending).remove(&request_id) {
                let _ = tx.send(Ok(()));
            }
        }
        ServerEvent::Error {
            code,
            request_id,
            message,
        } => {
            let waiter = request_id
                .as_ref()
                .and_then(|r| lock(&shared.pending).remove(r));
            match waiter {
                Some(tx) => {
                    let _ = tx.send(Err(SignallingError::ServerRequest {
                        code,
                        message,
                        request_id: request_id.unwrap_or_default(),
                    }));
                }
                // Legacy servers answered pings this way; swallow it (spec §1.6.3).
                None if code == "unknown_type" && request_id.is_none() => {}
                None => shared.emit(Event::ServerError {
                    code,
                    message,
                    request_id,
                }),
            }
        }
        ServerEvent::Message {
            channel,
            from,
            data,
            from_metadata,
        } => shared.emit(Event::Message {
            channel,
            sender_peer_id: from,
            data: Arc::from(data),
            sender_metadata: from_metadata,
        }),
        ServerEvent::Direct {
            from,
            data,
            from_metadata,
        } => shared.emit(Event::Direct {
            sender_peer_id: from,
            data: Arc::from(data),
            sender_metadata: from_metadata,
        }),
        ServerEvent::Presence {
            channel,
            joined,
            left,
        } => shared.emit(Event::Presence {
            channel,
            joined,
            left,
        }),
        ServerEvent::GoingAway { retry_after_ms } => {
            shared.emit(Event::GoingAway { retry_after_ms })
        }
        // Pong only feeds the watchdog (already done); welcome is handled by the caller.
        _ => {}
    }
}

/// Re-subscribe every tracked channel on a new connection, unawaited; each failed replay is
/// retried 3 times, 2 s apart, while the connection lasts (spec §1.8.4).
fn replay_subscriptions(shared: &Arc<Shared>, tx: &mpsc::Sender<Outgoing>, generation: u64) {
    let subs = lock(&shared.subs).clone();
    for (channel, flag) in subs {
        let shared = shared.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for attempt in 0..4 {
                if attempt > 0 {
                    sleep(Duration::from_secs(2)).await;
                }
                let current = lock(&shared.conn)
                    .as_ref()
                    .is_some_and(|c| c.generation == generation);
                let still_tracked = lock(&shared.subs).iter().any(|(c, _)| *c == channel);
                if !current || !still_tracked {
                    return;
                }
                match request_on(&shared, &tx, |rid| wire::subscribe(&channel, rid, flag)).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(%channel, error = %e, "subscription replay failed"),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert!((0.0..1.0).contains(&unit_random()));
    }

    #[test]
    fn builder_validates() {
        assert!(matches!(
            SignallingClient::builder().url("ws://127.0.0.1:1").build(),
            Err(SignallingError::InvalidArgument(_))
        ));
        assert!(
            SignallingClient::builder()
                .url("ws://example.org")
                .api_key("k")
                .build()
                .is_err()
        );
        let c = SignallingClient::builder()
            .url("ws://127.0.0.1:1")
            .api_key("pk_secret")
            .build()
            .expect("valid");
        assert_eq!(c.state(), ClientState::Idle);
        assert!(!format!("{c:?}").contains("pk_secret"));
    }
}
