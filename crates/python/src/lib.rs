//! # parlor-python: the native core of the `parlor` Python package
//!
//! The Python package (`crates/python/python/parlor`) offers the API of the `metered-realtime`
//! reference SDK: `MeteredPeer`, `SignallingClient`, events as dataclasses, `peer.on(...)`.
//! This crate is the module under it, `parlor._native`: thin handles on Parlor's Rust peer
//! ([`parlor_peer::SignallingClient`], [`parlor_peer::RoomPeer`]) whose async methods are
//! asyncio awaitables (`pyo3-async-runtimes` on one shared tokio runtime). The GIL is taken
//! only to hand a result over; sockets, WebRTC and timers run on the runtime's threads.
//!
//! Events cross as `(kind, json, object)` triples: `kind` names the event, `json` carries its
//! fields (payloads verbatim), `object` a native handle where the event has one. The Python
//! layer turns them into the reference's dataclasses. Errors cross as `NativeError(kind,
//! message, detail)`, which the Python layer maps to the reference's exception classes.
//!
//! Queues: each handle's events come from the peer's bounded event bus (capacity set by the
//! caller); a reader that falls behind gets a `lagged` event with the count, and membership,
//! state and fatal events are kept before application data (see `parlor_peer::events`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use std::borrow::Cow;

use parlor_media::{AudioFrames, AudioSource, AudioSourceOptions, Layout};
use parlor_peer::room::{DataKind, FatalError, RoomState};
use parlor_peer::signalling::{ClientState, Event, SubscribeOptions};
use parlor_peer::{
    ConnectionError, DataChannel, DataChannelError, DataMessage, LocalTrack, PeerConnectionState,
    PendingAck, ReconnectOptions, RemoteTrack, RoomError, RoomEvent, RoomEvents, RoomPeer,
    SignallingClient,
};
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3_async_runtimes::TaskLocals;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// Set by `_shutdown` (an `atexit` hook of the package): the interpreter is about to finalize,
/// and a runtime thread that took the GIL then would abort the process. From then on no
/// native future completes (so none hands a result to Python) and no event is converted.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);
static SHUTDOWN_NOTIFY: LazyLock<tokio::sync::Notify> = LazyLock::new(tokio::sync::Notify::new);

fn shutting_down() -> bool {
    SHUTDOWN.load(Ordering::SeqCst)
}

/// `future` as an asyncio awaitable, which never completes once the interpreter is shutting
/// down (see [`SHUTDOWN`]).
fn py_future<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        let stop = SHUTDOWN_NOTIFY.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        let out = tokio::select! {
            out = future => out,
            () = &mut stop => return std::future::pending().await,
        };
        if shutting_down() {
            return std::future::pending().await;
        }
        out
    })
}

/// Keeps messages in the order Python asked for them. Each `send` / `publish` takes a ticket
/// when it is called (synchronously, on the caller's thread); its task on the runtime puts
/// the message on the socket's queue only at its ticket's turn, and waits for the ack after
/// that, so awaitables started together (`asyncio.gather`) leave in call order without
/// waiting for each other's acks, as with the reference SDK. A ticket whose awaitable is
/// dropped or cancelled gives its turn away.
#[derive(Debug, Default)]
struct Sequencer {
    state: std::sync::Mutex<SeqState>,
    turn: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct SeqState {
    next: u64,
    serving: u64,
    /// Tickets given up or finished before their turn came.
    done_early: std::collections::BTreeSet<u64>,
}

impl Sequencer {
    fn ticket(self: &Arc<Self>) -> Ticket {
        let mut st = self.lock();
        let n = st.next;
        st.next += 1;
        Ticket {
            seq: Arc::clone(self),
            n,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SeqState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// At `ticket`'s turn, put a message on the socket's queue (`enqueue`, not polled before),
/// end the turn, then wait for the server's ack.
async fn in_turn<E>(
    ticket: Ticket,
    enqueue: impl Future<Output = Result<PendingAck, E>>,
) -> Result<(), E>
where
    E: From<parlor_peer::signalling::SignallingError>,
{
    ticket.turn().await;
    let ack = enqueue.await;
    drop(ticket);
    Ok(ack?.wait().await?)
}

/// A place in a [`Sequencer`]'s order; dropping it ends its turn (or gives it away).
struct Ticket {
    seq: Arc<Sequencer>,
    n: u64,
}

impl Ticket {
    /// Wait for this ticket's turn.
    async fn turn(&self) {
        loop {
            let notified = self.seq.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.seq.lock().serving == self.n {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut guard = self.seq.lock();
        let st = &mut *guard;
        if st.serving == self.n {
            st.serving += 1;
            while st.done_early.remove(&st.serving) {
                st.serving += 1;
            }
            drop(guard);
            self.seq.turn.notify_waiters();
        } else {
            st.done_early.insert(self.n);
        }
    }
}

/// Called at interpreter exit: stop handing anything to Python, then give results already
/// on their way a moment to land (with the GIL released).
#[pyfunction]
fn _shutdown(py: Python<'_>) {
    SHUTDOWN.store(true, Ordering::SeqCst);
    SHUTDOWN_NOTIFY.notify_waiters();
    py.detach(|| std::thread::sleep(Duration::from_millis(20)));
}

pyo3::create_exception!(
    _native,
    NativeError,
    PyException,
    "An error of the native core: args are (kind, message, detail)."
);

fn native_err(kind: &str, message: impl Into<String>, detail: Value) -> PyErr {
    NativeError::new_err((kind.to_owned(), message.into(), detail.to_string()))
}

fn signalling_err(e: parlor_peer::signalling::SignallingError) -> PyErr {
    use parlor_peer::signalling::SignallingError as E;
    let message = e.to_string();
    match e {
        E::NotConnected => native_err("not_connected", message, Value::Null),
        E::ConnectFailed { close_code, reason } => native_err(
            "connect_failed",
            message,
            json!({"close_code": close_code, "reason": reason}),
        ),
        E::ServerRequest {
            code,
            message: detail,
            request_id,
        } => native_err(
            "server_request",
            message,
            json!({"code": code, "message": detail, "request_id": request_id}),
        ),
        E::AckTimeout {
            request_id,
            timeout,
        } => native_err(
            "ack_timeout",
            message,
            json!({"request_id": request_id, "timeout": timeout.as_secs_f64()}),
        ),
        E::Disconnected => native_err("disconnected", message, Value::Null),
        E::Oversized { size, cap } => {
            native_err("oversized", message, json!({"size": size, "cap": cap}))
        }
        E::InvalidArgument(what) => native_err("invalid_argument", message, json!(what)),
        E::InvalidState { method, state } => native_err(
            "invalid_state",
            message,
            json!({"method": method, "state": client_state(state)}),
        ),
        _ => native_err("other", message, Value::Null),
    }
}

fn room_err(e: RoomError) -> PyErr {
    let message = e.to_string();
    match e {
        RoomError::Signalling(s) => signalling_err(s),
        RoomError::NotJoined => native_err("not_joined", message, Value::Null),
        RoomError::InvalidState { method, state } => native_err(
            "room_state",
            message,
            json!({"method": method, "state": room_state(state)}),
        ),
        RoomError::SelfSend => native_err("self_send", message, Value::Null),
        RoomError::UnknownPeer(id) => native_err("unknown_peer", message, json!(id)),
        RoomError::Connection(c) => connection_err(c),
        _ => native_err("other", message, Value::Null),
    }
}

fn connection_err(e: ConnectionError) -> PyErr {
    native_err("connection", e.to_string(), Value::Null)
}

fn client_state(s: ClientState) -> &'static str {
    match s {
        ClientState::Idle => "idle",
        ClientState::Connecting => "connecting",
        ClientState::Connected => "connected",
        ClientState::Reconnecting => "reconnecting",
        ClientState::Closed => "closed",
    }
}

fn room_state(s: RoomState) -> &'static str {
    match s {
        RoomState::Idle => "idle",
        RoomState::Joining => "joining",
        RoomState::Joined => "joined",
        RoomState::Reconnecting => "reconnecting",
        RoomState::Leaving => "leaving",
        RoomState::Closed => "closed",
    }
}

fn connection_state(s: PeerConnectionState) -> &'static str {
    match s {
        PeerConnectionState::Connecting => "connecting",
        PeerConnectionState::Connected => "connected",
        PeerConnectionState::Disconnected => "reconnecting",
        PeerConnectionState::Failed | PeerConnectionState::Closed => "closed",
    }
}

/// A JSON payload from Python (`json.dumps` output), checked before it goes anywhere.
fn payload(text: &str) -> PyResult<Box<RawValue>> {
    RawValue::from_string(text.to_owned())
        .map_err(|e| PyValueError::new_err(format!("data is not valid JSON: {e}")))
}

fn raw(data: &RawValue) -> Value {
    serde_json::from_str(data.get()).unwrap_or(Value::Null)
}

/// One event as it crosses to Python.
type Crossing = (String, String, Option<Py<PyAny>>);

fn crossing(kind: &str, fields: Value) -> Crossing {
    (kind.to_owned(), fields.to_string(), None)
}

fn signalling_event(e: Event) -> Crossing {
    match e {
        Event::StateChange { from, to } => crossing(
            "state_change",
            json!({"from": client_state(from), "to": client_state(to)}),
        ),
        Event::Connected {
            peer_id,
            server_time,
            expires_at,
            is_reconnect,
            max_message_size,
            ice_servers,
        } => crossing(
            "connected",
            json!({
                "peer_id": peer_id,
                "server_time": server_time,
                "expires_at": expires_at,
                "is_reconnect": is_reconnect,
                "max_message_size": max_message_size,
                "ice_servers": ice_servers.map(|list| list.iter().map(|s| json!({
                    "urls": s.urls,
                    "username": s.username,
                    "credential": s.credential,
                })).collect::<Vec<_>>()),
            }),
        ),
        Event::Disconnected {
            code,
            reason,
            will_reconnect,
        } => crossing(
            "disconnected",
            json!({"code": code.unwrap_or(1006), "reason": reason, "will_reconnect": will_reconnect}),
        ),
        Event::Message {
            channel,
            sender_peer_id,
            data,
            sender_metadata,
        } => crossing(
            "message",
            json!({"channel": channel, "sender_peer_id": sender_peer_id, "data": raw(&data),
                   "sender_metadata": sender_metadata}),
        ),
        Event::Direct {
            sender_peer_id,
            data,
            sender_metadata,
        } => crossing(
            "direct",
            json!({"sender_peer_id": sender_peer_id, "data": raw(&data),
                   "sender_metadata": sender_metadata}),
        ),
        Event::Presence {
            channel,
            joined,
            left,
        } => {
            let peers = |list: Vec<parlor_protocol::client::PresencePeer>| {
                list.into_iter()
                    .map(|p| json!({"peer_id": p.peer_id, "metadata": p.metadata}))
                    .collect::<Vec<_>>()
            };
            crossing(
                "presence",
                json!({"channel": channel, "joined": peers(joined), "left": peers(left)}),
            )
        }
        Event::ServerError {
            code,
            message,
            request_id,
        } => crossing(
            "server_error",
            json!({"code": code, "message": message, "request_id": request_id}),
        ),
        Event::GoingAway { retry_after_ms } => {
            crossing("going_away", json!({"retry_after_ms": retry_after_ms}))
        }
        Event::TokenProviderError {
            consecutive_failures,
            error,
        } => crossing(
            "token_provider_error",
            json!({"consecutive_failures": consecutive_failures, "error": error}),
        ),
        Event::Lagged { dropped } => crossing("lagged", json!({"dropped": dropped})),
        other => crossing("unknown", json!({"debug": format!("{other:?}")})),
    }
}

/// The event loop a token provider's coroutine runs on (captured at the first connect).
type LoopSlot = Arc<Mutex<Option<TaskLocals>>>;

fn remember_loop(slot: &LoopSlot, py: Python<'_>) {
    if let Ok(locals) = pyo3_async_runtimes::tokio::get_current_locals(py)
        && let Ok(mut s) = slot.lock()
    {
        *s = Some(locals);
    }
}

/// Calls a Python token provider (sync or async, returning a `str`) from the client's task.
async fn call_provider(provider: Arc<Py<PyAny>>, slot: LoopSlot) -> Result<String, String> {
    if shutting_down() {
        return Err("the interpreter is shutting down".to_owned());
    }
    let pending = Python::attach(|py| -> PyResult<Result<String, _>> {
        let result = provider.bind(py).call0()?;
        if let Ok(s) = result.cast::<PyString>() {
            return Ok(Ok(s.to_string()));
        }
        let locals =
            slot.lock().ok().and_then(|s| s.clone()).ok_or_else(|| {
                PyValueError::new_err("no running event loop for the token provider")
            })?;
        Ok(Err(pyo3_async_runtimes::into_future_with_locals(
            &locals, result,
        )?))
    })
    .map_err(|e| format!("token provider failed: {e}"))?;
    match pending {
        Ok(token) => Ok(token),
        Err(future) => {
            let value = future
                .await
                .map_err(|e| format!("token provider failed: {e}"))?;
            Python::attach(|py| value.bind(py).extract::<String>())
                .map_err(|_| "the token provider must return a str".to_owned())
        }
    }
}

/// The signalling client (`SignallingClient` in Python).
#[pyclass(module = "parlor._native", frozen)]
struct NativeClient {
    client: SignallingClient,
    events: Arc<tokio::sync::Mutex<parlor_peer::signalling::Events>>,
    event_loop: LoopSlot,
    /// The order of messages sent over this client and its room.
    order: Arc<Sequencer>,
}

impl std::fmt::Debug for NativeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeClient").finish_non_exhaustive()
    }
}

fn secs(name: &str, v: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        PyValueError::new_err(format!("{name} must be a non-negative number of seconds"))
    })
}

#[pymethods]
impl NativeClient {
    /// `reconnect`: `None` for no reconnecting, else `(initial_delay, multiplier, max_delay,
    /// jitter_ratio, max_attempts)` with `max_attempts` `inf` for forever.
    #[new]
    #[pyo3(signature = (url, api_key=None, token=None, token_provider=None, reconnect=None,
        inactivity_timeout=60.0, token_provider_timeout=10.0, event_capacity=4096))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        url: String,
        api_key: Option<String>,
        token: Option<String>,
        token_provider: Option<Py<PyAny>>,
        reconnect: Option<(f64, f64, f64, f64, f64)>,
        inactivity_timeout: f64,
        token_provider_timeout: f64,
        event_capacity: usize,
    ) -> PyResult<NativeClient> {
        let event_loop: LoopSlot = Arc::new(Mutex::new(None));
        let mut b = SignallingClient::builder()
            .url(url)
            .inactivity_timeout(secs("inactivity_timeout", inactivity_timeout)?)
            .token_provider_timeout(secs("token_provider_timeout", token_provider_timeout)?)
            .event_capacity(event_capacity.max(1));
        match (api_key, token, token_provider) {
            (Some(key), None, None) => b = b.api_key(key),
            (None, Some(token), None) => {
                let token = Arc::new(token);
                b = b.token_provider(move || {
                    let token = token.clone();
                    async move { Ok(token.as_str().to_owned()) }
                });
            }
            (None, None, Some(provider)) => {
                let provider = Arc::new(provider);
                let slot = event_loop.clone();
                b = b.token_provider(move || call_provider(provider.clone(), slot.clone()));
            }
            _ => {
                return Err(PyValueError::new_err(
                    "pass exactly one of api_key, token or token_provider",
                ));
            }
        }
        let options = match reconnect {
            None => None,
            Some((initial, multiplier, max, jitter, attempts)) => {
                let o = ReconnectOptions {
                    initial_delay: secs("initial_delay", initial)?,
                    multiplier,
                    max_delay: secs("max_delay", max)?,
                    jitter_ratio: jitter,
                    max_attempts: if attempts.is_finite() {
                        Some(attempts.clamp(0.0, f64::from(u32::MAX)) as u32)
                    } else {
                        None
                    },
                };
                o.validate().map_err(PyValueError::new_err)?;
                Some(o)
            }
        };
        b = b.reconnect(options);
        let client = b.build().map_err(signalling_err)?;
        let events = Arc::new(tokio::sync::Mutex::new(client.events()));
        Ok(NativeClient {
            client,
            events,
            event_loop,
            order: Arc::default(),
        })
    }

    #[getter]
    fn state(&self) -> &'static str {
        client_state(self.client.state())
    }

    #[getter]
    fn peer_id(&self) -> Option<String> {
        self.client.peer_id()
    }

    #[getter]
    fn max_message_size(&self) -> usize {
        self.client.max_message_size()
    }

    fn connect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        remember_loop(&self.event_loop, py);
        let c = self.client.clone();
        py_future(py, async move { c.connect().await.map_err(signalling_err) })
    }

    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let c = self.client.clone();
        py_future(py, async move {
            c.close().await;
            Ok(())
        })
    }

    #[pyo3(signature = (channel, include_sender_metadata=false))]
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        channel: String,
        include_sender_metadata: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let c = self.client.clone();
        py_future(py, async move {
            let opts = SubscribeOptions {
                include_sender_metadata,
            };
            c.subscribe(&channel, opts).await.map_err(signalling_err)
        })
    }

    fn unsubscribe<'py>(&self, py: Python<'py>, channel: String) -> PyResult<Bound<'py, PyAny>> {
        let c = self.client.clone();
        py_future(py, async move {
            c.unsubscribe(&channel).await.map_err(signalling_err)
        })
    }

    /// Broadcast `data` (JSON text) to `channel`.
    fn publish<'py>(
        &self,
        py: Python<'py>,
        channel: String,
        data: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let c = self.client.clone();
        let ticket = self.order.ticket();
        py_future(py, async move {
            in_turn(ticket, c.publish_queued(&channel, &*data))
                .await
                .map_err(signalling_err)
        })
    }

    /// Send `data` (JSON text) to one peer.
    fn send<'py>(&self, py: Python<'py>, to: String, data: &str) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let c = self.client.clone();
        let ticket = self.order.ticket();
        py_future(py, async move {
            in_turn(ticket, c.send_queued(&to, &*data))
                .await
                .map_err(signalling_err)
        })
    }

    /// The next event, `None` once the client is closed and every event was read.
    fn next_event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = self.events.clone();
        py_future(py, async move {
            let next = events.lock().await.recv().await;
            Ok(next.map(signalling_event))
        })
    }
}

/// The room peer (`MeteredPeer` in Python), on a [`NativeClient`].
#[pyclass(module = "parlor._native", frozen)]
struct NativeRoom {
    room: RoomPeer,
    events: Arc<tokio::sync::Mutex<RoomEvents>>,
    event_loop: LoopSlot,
    order: Arc<Sequencer>,
}

impl std::fmt::Debug for NativeRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRoom").finish_non_exhaustive()
    }
}

fn room_event(e: RoomEvent) -> Crossing {
    match e {
        RoomEvent::StateChange(s) => crossing("state_change", json!({"to": room_state(s)})),
        RoomEvent::Joined { peer_id, channel } => {
            crossing("joined", json!({"peer_id": peer_id, "channel": channel}))
        }
        RoomEvent::PeerJoined { peer_id, metadata } => crossing(
            "peer_joined",
            json!({"peer_id": peer_id, "metadata": metadata}),
        ),
        RoomEvent::PeerLeft { peer_id } => crossing("peer_left", json!({"peer_id": peer_id})),
        RoomEvent::ConnectionReset { peer_id } => {
            crossing("connection_reset", json!({"peer_id": peer_id}))
        }
        RoomEvent::Data {
            sender_peer_id,
            data,
            kind,
            sender_metadata,
        } => crossing(
            "data",
            json!({
                "sender_peer_id": sender_peer_id,
                "data": raw(&data),
                "kind": match kind { DataKind::Broadcast => "broadcast", DataKind::Direct => "direct" },
                "sender_metadata": sender_metadata,
            }),
        ),
        RoomEvent::ConnectionState { peer_id, state } => crossing(
            "connection_state",
            json!({"peer_id": peer_id, "state": connection_state(state)}),
        ),
        RoomEvent::NegotiationError { peer_id, message } => crossing(
            "negotiation_error",
            json!({"peer_id": peer_id, "message": message}),
        ),
        RoomEvent::IceRestartExhausted { peer_id } => {
            crossing("ice_restart_exhausted", json!({"peer_id": peer_id}))
        }
        RoomEvent::StreamAdded { peer_id, stream_id } => crossing(
            "stream_added",
            json!({"peer_id": peer_id, "stream_id": stream_id}),
        ),
        RoomEvent::StreamRemoved { peer_id, stream_id } => crossing(
            "stream_removed",
            json!({"peer_id": peer_id, "stream_id": stream_id}),
        ),
        RoomEvent::Track { peer_id, track } => {
            let fields = json!({
                "peer_id": peer_id,
                "track_id": track.id(),
                "stream_id": track.stream_id(),
                "kind": track.kind().as_str(),
                "metadata": track.metadata(),
            });
            let handle = (!shutting_down())
                .then(|| {
                    Python::attach(|py| {
                        Py::new(py, NativeRemoteTrack::new(track)).map(|h| h.into_any())
                    })
                    .ok()
                })
                .flatten();
            ("track".to_owned(), fields.to_string(), handle)
        }
        RoomEvent::DataChannelOpened { peer_id, channel } => {
            let fields = json!({"peer_id": peer_id, "label": channel.label()});
            let handle = (!shutting_down())
                .then(|| {
                    Python::attach(|py| {
                        Py::new(py, NativeDataChannel { dc: channel }).map(|h| h.into_any())
                    })
                    .ok()
                })
                .flatten();
            ("data_channel_opened".to_owned(), fields.to_string(), handle)
        }
        RoomEvent::Left => crossing("left", json!({})),
        RoomEvent::Fatal(err) => {
            let (code, close_code) = match &err {
                FatalError::Server(code) => (Some(code.clone()), None),
                FatalError::SignallingClosed { code, .. } => (None, *code),
                FatalError::ReconcileTimeout => (Some("reconcile_timeout".to_owned()), None),
                _ => (None, None),
            };
            crossing(
                "fatal",
                json!({"message": err.to_string(), "code": code, "close_code": close_code}),
            )
        }
        RoomEvent::Lagged { dropped } => crossing("lagged", json!({"dropped": dropped})),
        other => crossing("unknown", json!({"debug": format!("{other:?}")})),
    }
}

#[pymethods]
impl NativeRoom {
    #[new]
    fn new(client: &NativeClient) -> NativeRoom {
        let room = RoomPeer::new(client.client.clone());
        let events = Arc::new(tokio::sync::Mutex::new(room.events()));
        NativeRoom {
            room,
            events,
            event_loop: client.event_loop.clone(),
            order: Arc::clone(&client.order),
        }
    }

    #[getter]
    fn state(&self) -> &'static str {
        room_state(self.room.state())
    }

    #[getter]
    fn peer_id(&self) -> Option<String> {
        self.room.peer_id()
    }

    #[getter]
    fn channel(&self) -> Option<String> {
        self.room.channel()
    }

    fn remote_peers(&self) -> Vec<String> {
        self.room.remote_peers()
    }

    /// The remote's public metadata as JSON text (`null` when it has none or is unknown).
    fn remote_metadata(&self, peer_id: &str) -> String {
        self.room
            .remote(peer_id)
            .and_then(|r| r.metadata())
            .map_or_else(|| "null".to_owned(), |m| Value::Object(m).to_string())
    }

    #[pyo3(signature = (channel, include_sender_metadata=false))]
    fn join<'py>(
        &self,
        py: Python<'py>,
        channel: String,
        include_sender_metadata: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        remember_loop(&self.event_loop, py);
        let room = self.room.clone();
        py_future(py, async move {
            room.join(&channel, include_sender_metadata)
                .await
                .map_err(room_err)
        })
    }

    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let room = self.room.clone();
        py_future(py, async move {
            room.close().await;
            Ok(())
        })
    }

    /// Broadcast `data` (JSON text) to the room.
    fn send<'py>(&self, py: Python<'py>, data: &str) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let room = self.room.clone();
        let ticket = self.order.ticket();
        py_future(py, async move {
            in_turn(ticket, room.send_queued(&*data))
                .await
                .map_err(room_err)
        })
    }

    /// Send `data` (JSON text) to one member.
    fn send_to<'py>(
        &self,
        py: Python<'py>,
        peer_id: String,
        data: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let data = payload(data)?;
        let room = self.room.clone();
        let ticket = self.order.ticket();
        py_future(py, async move {
            in_turn(ticket, room.send_to_queued(&peer_id, &*data))
                .await
                .map_err(room_err)
        })
    }

    /// Open a data channel to a member; resolves to the channel once it is open.
    fn create_data_channel<'py>(
        &self,
        py: Python<'py>,
        peer_id: String,
        label: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let room = self.room.clone();
        py_future(py, async move {
            let dc = room
                .create_data_channel(&peer_id, &label)
                .await
                .map_err(room_err)?;
            Ok(NativeDataChannel { dc })
        })
    }

    /// Send `source`'s track to every current and future member.
    fn add_track(&self, source: &NativeAudioSource) -> PyResult<()> {
        let source = source.bound()?;
        self.room.add_track(source.track());
        Ok(())
    }

    /// Stop sending `source`'s track.
    fn remove_track(&self, source: &NativeAudioSource) {
        if let Some(source) = source.current() {
            self.room.remove_track(source.track());
        }
    }

    /// The next event, `None` once the room is closed and every event was read.
    fn next_event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = self.events.clone();
        py_future(py, async move {
            let next = events.lock().await.recv().await;
            Ok(next.map(room_event))
        })
    }
}

/// Pushed PCM becomes a paced Opus track ([`parlor_media::AudioSource`]); the track and its
/// stream id are made when it is first sent or pushed to (`bind`).
#[pyclass(module = "parlor._native", frozen)]
struct NativeAudioSource {
    options: AudioSourceOptions,
    source: Mutex<Option<Arc<AudioSource>>>,
}

impl std::fmt::Debug for NativeAudioSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeAudioSource").finish_non_exhaustive()
    }
}

impl NativeAudioSource {
    fn current(&self) -> Option<Arc<AudioSource>> {
        self.source.lock().ok().and_then(|s| s.clone())
    }

    /// The source, made with random ids if it was never bound.
    fn bound(&self) -> PyResult<Arc<AudioSource>> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        self.bind_with(LocalTrack::audio())
    }

    fn bind_with(&self, track: LocalTrack) -> PyResult<Arc<AudioSource>> {
        let mut slot = self
            .source
            .lock()
            .map_err(|_| native_err("other", "audio source lock poisoned", Value::Null))?;
        if let Some(s) = slot.as_ref() {
            return Ok(s.clone());
        }
        // The pacer is a task on the shared runtime.
        let _guard = pyo3_async_runtimes::tokio::get_runtime().enter();
        let source = AudioSource::with_track(self.options.clone(), track)
            .map_err(|e| native_err("media", e.to_string(), Value::Null))?;
        let source = Arc::new(source);
        *slot = Some(source.clone());
        Ok(source)
    }
}

#[pymethods]
impl NativeAudioSource {
    #[new]
    #[pyo3(signature = (input_rate=16_000, input_layout="mono", max_buffered_seconds=5.0))]
    fn new(input_rate: u32, input_layout: &str, max_buffered_seconds: f64) -> PyResult<Self> {
        let layout = Layout::parse(input_layout).map_err(|_| {
            PyValueError::new_err(format!(
                "input_layout must be 'mono' or 'stereo', got {input_layout:?}"
            ))
        })?;
        if !(8_000..=192_000).contains(&input_rate) {
            return Err(PyValueError::new_err(format!(
                "input_rate must be between 8000 and 192000 Hz, got {input_rate}"
            )));
        }
        let cap = secs("max_buffered_seconds", max_buffered_seconds)?;
        Ok(NativeAudioSource {
            options: AudioSourceOptions::new(input_rate, layout).max_buffered(cap),
            source: Mutex::new(None),
        })
    }

    /// Make the track now, with these ids and metadata (JSON object text); `False` if it was
    /// already made (with the ids it has).
    #[pyo3(signature = (track_id, stream_id, metadata=None))]
    fn bind(&self, track_id: String, stream_id: String, metadata: Option<&str>) -> PyResult<bool> {
        if self.current().is_some() {
            return Ok(false);
        }
        let metadata = match metadata {
            None => None,
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Some(m),
                _ => return Err(PyValueError::new_err("metadata must be a JSON object")),
            },
        };
        self.bind_with(LocalTrack::audio_with(track_id, stream_id, metadata))?;
        Ok(true)
    }

    /// `(track_id, stream_id)` once bound.
    fn ids(&self) -> Option<(String, String)> {
        self.current()
            .map(|s| (s.track().id().to_owned(), s.track().stream_id().to_owned()))
    }

    #[getter]
    fn buffered_seconds(&self) -> f64 {
        self.current().map_or(0.0, |s| s.buffered_seconds())
    }

    #[getter]
    fn underruns(&self) -> u64 {
        self.current().map_or(0, |s| s.underruns())
    }

    #[getter]
    fn frames_sent(&self) -> u64 {
        self.current().map_or(0, |s| s.frames_sent())
    }

    /// Take s16 PCM now if it fits under the buffering cap (`True`); `False` if `push` must
    /// wait for room (nothing was taken). No awaitable: the common case costs no wake-up.
    fn try_push(&self, pcm: &[u8]) -> PyResult<bool> {
        self.bound()?
            .try_push(pcm)
            .map_err(|e| native_err("media", e.to_string(), Value::Null))
    }

    /// Queue s16 PCM in the input format; suspends at the buffering cap.
    fn push<'py>(&self, py: Python<'py>, pcm: Vec<u8>) -> PyResult<Bound<'py, PyAny>> {
        let source = self.bound()?;
        py_future(py, async move {
            source
                .push(&pcm)
                .await
                .map_err(|e| native_err("media", e.to_string(), Value::Null))
        })
    }

    /// Finish: what is buffered is sent, then the track goes quiet. Returns at once; the
    /// awaitable of `drained` resolves when the last frame is out.
    fn end(&self) {
        if let Some(source) = self.current() {
            pyo3_async_runtimes::tokio::get_runtime().spawn(async move { source.end().await });
        }
    }

    /// Resolves once an ended source has sent everything.
    fn drained<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let source = self.current();
        py_future(py, async move {
            if let Some(source) = source {
                source.end().await;
            }
            Ok(())
        })
    }

    /// Stop at once, dropping what is buffered (barge-in).
    fn stop(&self) {
        if let Some(source) = self.current() {
            source.stop();
        }
    }
}

/// Decoded frames a track's reader task has made and Python has not taken yet: at most this
/// many (5 s); past it the oldest is dropped and counted (a live stream nobody reads).
const FRAME_QUEUE: usize = 250;

#[derive(Default)]
struct FrameQueue {
    frames: std::collections::VecDeque<parlor_media::AudioFrame>,
    ended: bool,
    dropped: u64,
}

/// A remote audio track, decoded (jitter buffer, FEC, concealment) to 48 kHz stereo s16.
///
/// Frames reach Python in batches, not one awaitable each (an awaitable crossing from the
/// runtime costs ~100 µs of CPU here): a reader task on the runtime decodes into a bounded
/// queue and, when the queue goes from empty to not empty, writes a byte to a socket pair;
/// the event loop watches the other end (`loop.add_reader(start())`) and takes every frame
/// there is with `drain()`. The runtime's threads never take the GIL for frames.
#[pyclass(module = "parlor._native", frozen)]
struct NativeRemoteTrack {
    id: String,
    stream_id: Option<String>,
    frames: Mutex<Option<AudioFrames>>,
    queue: Arc<Mutex<FrameQueue>>,
    /// The end the event loop watches, once started.
    wake: Mutex<Option<std::os::unix::net::UnixStream>>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for NativeRemoteTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeRemoteTrack")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl NativeRemoteTrack {
    fn new(track: RemoteTrack) -> NativeRemoteTrack {
        let id = track.id().to_owned();
        let stream_id = track.stream_id().map(str::to_owned);
        // Video (never sent by this SDK) has no decoder: its frames read as ended.
        let frames = AudioFrames::new(track).ok();
        NativeRemoteTrack {
            id,
            stream_id,
            frames: Mutex::new(frames),
            queue: Arc::new(Mutex::new(FrameQueue::default())),
            wake: Mutex::new(None),
            reader: Mutex::new(None),
        }
    }
}

impl Drop for NativeRemoteTrack {
    fn drop(&mut self) {
        if let Ok(mut r) = self.reader.lock()
            && let Some(task) = r.take()
        {
            task.abort();
        }
    }
}

fn lock_queue(q: &Mutex<FrameQueue>) -> std::sync::MutexGuard<'_, FrameQueue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decode `frames` into `queue` until the track ends, waking the event loop through `wake`
/// each time the queue stops being empty.
async fn read_frames(
    mut frames: Option<AudioFrames>,
    queue: Arc<Mutex<FrameQueue>>,
    wake: std::os::unix::net::UnixStream,
) {
    use std::io::Write;
    let ping = || {
        // Non-blocking: a full socket buffer means a wake-up is already pending.
        let _ = (&wake).write(&[1]);
    };
    loop {
        let next = match frames.as_mut() {
            Some(f) => f.next().await,
            None => None,
        };
        let mut q = lock_queue(&queue);
        match next {
            Some(frame) => {
                let was_empty = q.frames.is_empty();
                if q.frames.len() >= FRAME_QUEUE {
                    q.frames.pop_front();
                    q.dropped += 1;
                }
                q.frames.push_back(frame);
                drop(q);
                if was_empty {
                    ping();
                }
            }
            None => {
                q.ended = true;
                drop(q);
                ping();
                return;
            }
        }
    }
}

/// One decoded frame as it crosses: (s16 bytes, sample rate, channels, samples per channel,
/// RTP time of the first sample).
type FrameCrossing = (Cow<'static, [u8]>, u32, u16, usize, u64);

#[pymethods]
impl NativeRemoteTrack {
    #[getter]
    fn id(&self) -> &str {
        &self.id
    }

    #[getter]
    fn stream_id(&self) -> Option<&str> {
        self.stream_id.as_deref()
    }

    /// Frames dropped because nobody took them (the queue holds 5 s).
    #[getter]
    fn frames_dropped(&self) -> u64 {
        lock_queue(&self.queue).dropped
    }

    /// Start decoding (once); returns the file descriptor to watch for readability.
    fn start(&self) -> PyResult<i32> {
        use std::os::fd::AsRawFd;
        let mut wake = self
            .wake
            .lock()
            .map_err(|_| native_err("other", "track lock poisoned", Value::Null))?;
        if let Some(w) = wake.as_ref() {
            return Ok(w.as_raw_fd());
        }
        let io = |e: std::io::Error| native_err("other", format!("socket pair: {e}"), Value::Null);
        let (writer, watched) = std::os::unix::net::UnixStream::pair().map_err(io)?;
        writer.set_nonblocking(true).map_err(io)?;
        watched.set_nonblocking(true).map_err(io)?;
        let fd = watched.as_raw_fd();
        let frames = self.frames.lock().ok().and_then(|mut f| f.take());
        let task = pyo3_async_runtimes::tokio::get_runtime().spawn(read_frames(
            frames,
            self.queue.clone(),
            writer,
        ));
        if let Ok(mut r) = self.reader.lock() {
            *r = Some(task);
        }
        *wake = Some(watched);
        Ok(fd)
    }

    /// Every frame decoded so far, and whether the track has ended (after them).
    fn drain(&self) -> (Vec<FrameCrossing>, bool) {
        use std::io::Read;
        if let Ok(w) = self.wake.lock()
            && let Some(w) = w.as_ref()
        {
            let mut sink = [0u8; 64];
            while matches!((&*w).read(&mut sink), Ok(n) if n > 0) {}
        }
        let mut q = lock_queue(&self.queue);
        let frames = q
            .frames
            .drain(..)
            .map(|f| {
                let samples = f.len();
                let bytes: Vec<u8> = f.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                (
                    Cow::Owned(bytes),
                    f.sample_rate,
                    f.channels,
                    samples,
                    f.rtp_time,
                )
            })
            .collect();
        (frames, q.ended)
    }

    /// Stop decoding (the reader task ends; later frames are not read).
    fn stop(&self) {
        if let Ok(mut r) = self.reader.lock()
            && let Some(task) = r.take()
        {
            task.abort();
        }
        lock_queue(&self.queue).ended = true;
    }
}

/// One data channel to a remote member (either side opened it).
#[pyclass(module = "parlor._native", frozen)]
struct NativeDataChannel {
    dc: DataChannel,
}

impl std::fmt::Debug for NativeDataChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.dc.fmt(f)
    }
}

fn dc_err(e: DataChannelError) -> PyErr {
    let message = e.to_string();
    match e {
        DataChannelError::Closed => native_err("dc_closed", message, Value::Null),
        DataChannelError::Overflow => native_err(
            "dc_overflow",
            message,
            json!({"cap": parlor_peer::connection::data_channel::MAX_QUEUED_SENDS}),
        ),
        DataChannelError::TooLarge(size) => native_err(
            "dc_too_large",
            message,
            json!({"size": size, "cap": parlor_peer::connection::data_channel::MAX_MESSAGE_SIZE}),
        ),
        _ => native_err("other", message, Value::Null),
    }
}

/// A message from Python: `str` is text, `bytes`-like is binary.
fn dc_message(data: &Bound<'_, PyAny>) -> PyResult<DataMessage> {
    if let Ok(s) = data.extract::<String>() {
        return Ok(DataMessage::Text(s));
    }
    data.extract::<Vec<u8>>()
        .map(DataMessage::Binary)
        .map_err(|_| pyo3::exceptions::PyTypeError::new_err("data must be str or bytes"))
}

/// A received message as it crosses: (is text, UTF-8 or raw bytes).
type MessageCrossing = (bool, Cow<'static, [u8]>);

#[pymethods]
impl NativeDataChannel {
    #[getter]
    fn label(&self) -> &str {
        self.dc.label()
    }

    #[getter]
    fn peer_id(&self) -> &str {
        self.dc.peer_id()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.dc.is_closed()
    }

    /// Messages queued and not yet handed to the transport.
    #[getter]
    fn queued(&self) -> usize {
        self.dc.queued()
    }

    /// Queue `data`, waiting while the send queue is full.
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let msg = dc_message(data)?;
        let dc = self.dc.clone();
        py_future(py, async move { dc.send(msg).await.map_err(dc_err) })
    }

    /// Queue `data` without waiting (raises when the queue is full).
    fn try_send(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        self.dc.try_send(dc_message(data)?).map_err(dc_err)
    }

    /// The next message, `None` once the channel closed.
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let dc = self.dc.clone();
        py_future(py, async move {
            let m: Option<MessageCrossing> = dc.recv().await.map(|m| match m {
                DataMessage::Text(s) => (true, Cow::Owned(s.into_bytes())),
                DataMessage::Binary(b) => (false, Cow::Owned(b)),
            });
            Ok(m)
        })
    }

    fn close(&self) {
        self.dc.close();
    }
}

/// Whether `channel` uses a reserved prefix (`_metered/`, `_internal/`, `_system/`, any case):
/// the protocol crate's rule, so Python refuses exactly what the server and the Rust peer do.
#[pyfunction]
fn is_reserved_channel(channel: &str) -> bool {
    parlor_protocol::validate::is_reserved_channel(channel)
}

/// The extension module `parlor._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The core's own log lines (connections, negotiation, reconnects) go to stderr when
    // RUST_LOG asks for them (e.g. `RUST_LOG=parlor_peer=debug`); nothing is printed otherwise.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    m.add_class::<NativeClient>()?;
    m.add_class::<NativeRoom>()?;
    m.add_class::<NativeAudioSource>()?;
    m.add_class::<NativeRemoteTrack>()?;
    m.add_class::<NativeDataChannel>()?;
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add_function(wrap_pyfunction!(_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(is_reserved_channel, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
