//! The room peer: the `MeteredPeer` equivalent. Membership (presence → remote peers,
//! reconcile after reconnects) and data over signalling (`send` = broadcast, `send_to` =
//! direct) come from the sans-IO [`core::RoomCore`]; every remote peer gets a WebRTC
//! connection ([`crate::connection`]) fed by the core's `Signal` outputs, carrying the room's
//! tracks, the remote's tracks and data channels both ways.

pub mod core;
#[cfg(test)]
mod sim;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::events::EventSender;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::connection::data_channel::DataChannel;
use crate::connection::{self as conn, Command, ConnHandle, ConnParams, ConnectionError};
use crate::rtc::negotiation::is_polite;
use crate::rtc::track_cache::TrackMetaCache;
use crate::signalling::{
    self, ClientState, IceServer, PendingAck, SignallingClient, SignallingError, SubscribeOptions,
};
use crate::track::LocalTrack;

pub use self::core::{DataKind, FatalError, RoomEvent, RoomState};
use self::core::{Output, RoomCore};

/// Errors of room-peer calls.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// The call needs a joined room.
    #[error("not joined")]
    NotJoined,
    /// `join` is allowed only once, from `Idle`.
    #[error("{method} not allowed in state {state:?}")]
    InvalidState {
        /// The method.
        method: &'static str,
        /// The state.
        state: RoomState,
    },
    /// `send_to` our own id.
    #[error("cannot send to self")]
    SelfSend,
    /// The target is not a member of the room.
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// A signalling failure (server error, oversized payload, timeout, …).
    #[error(transparent)]
    Signalling(#[from] SignallingError),
    /// A WebRTC connection failure.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Options of a room peer's WebRTC connections.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RoomOptions {
    /// Address the UDP sockets bind to and announce as host candidates. Default: the address
    /// of the interface holding the default route, else loopback.
    pub bind_ip: Option<IpAddr>,
    /// ICE servers used until a welcome brings `metadata.iceServers` (which then replace
    /// them, as in the Python and browser SDKs). `turn:` URLs over UDP give relayed
    /// candidates; other kinds are skipped.
    pub ice_servers: Vec<IceServer>,
    /// Use relayed candidates only (the W3C `iceTransportPolicy: "relay"`): no host
    /// candidate is announced, so every path goes through a TURN server.
    pub relay_only: bool,
    /// Extra CA certificates (PEM) trusted for `turns:` servers, beside the web PKI roots.
    pub turn_tls_roots_pem: Vec<Vec<u8>>,
    /// Fault injection (feature `fault-injection`, for tests): every connection loses its
    /// first this-many offers (never sent), as if the signalling path ate them; the answer
    /// watchdog and glare handling take over.
    #[cfg(feature = "fault-injection")]
    pub simulate_lost_offers: u32,
    /// Descriptions and candidates a connection may have sent and not yet had acked
    /// (`None`: 32). `Some(1)` sends each only after the last one's ack (stop and wait: a
    /// signalling round trip per candidate, how the peer sent them before).
    pub signals_in_flight: Option<usize>,
}

impl RoomOptions {
    /// Start with these ICE servers (see [`RoomOptions::ice_servers`]).
    pub fn ice_servers(mut self, servers: Vec<IceServer>) -> Self {
        self.ice_servers = servers;
        self
    }

    /// Trust the CA certificates in this PEM text for `turns:` servers (repeatable). A PEM
    /// that does not parse is reported in the log and ignored.
    pub fn turn_tls_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.turn_tls_roots_pem.push(pem.as_ref().to_vec());
        self
    }

    /// Relayed candidates only (see [`RoomOptions::relay_only`]).
    pub fn relay_only(mut self, relay_only: bool) -> Self {
        self.relay_only = relay_only;
        self
    }

    /// Fault injection (see [`RoomOptions::simulate_lost_offers`]).
    #[cfg(feature = "fault-injection")]
    pub fn simulate_lost_offers(mut self, n: u32) -> Self {
        self.simulate_lost_offers = n;
        self
    }

    /// Signals in flight per connection (see [`RoomOptions::signals_in_flight`]).
    pub fn signals_in_flight(mut self, n: usize) -> Self {
        self.signals_in_flight = Some(n.max(1));
        self
    }

    /// Bind to (and announce) this address.
    pub fn bind_ip(mut self, ip: IpAddr) -> Self {
        self.bind_ip = Some(ip);
        self
    }
}

/// Signals (descriptions, candidates) sent and not yet acked, per connection, at most
/// (default of [`RoomOptions::signals_in_flight`]).
const SIGNALS_IN_FLIGHT: usize = 32;

/// One connection's signal sender: its descriptions and candidates go out in the order the
/// connection made them, each without waiting for the last one's ack (up to
/// `in_flight`; the server keeps a connection's frames in order), so call setup
/// costs no round trip per candidate. Acks settle afterwards; a refused or lost signal is
/// logged (the connection's answer watchdog and ICE restarts recover a lost description).
async fn send_signals(
    client: SignallingClient,
    to: String,
    mut signals: tokio::sync::mpsc::Receiver<Value>,
    in_flight: usize,
) {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            v = signals.recv(), if acks.len() < in_flight => {
                let Some(v) = v else { break };
                let kind = v.get("type").and_then(Value::as_str).unwrap_or("candidate");
                tracing::debug!(peer = %to, kind, in_flight = acks.len(), "signal sent");
                match client.send_queued(&to, &v).await {
                    Ok(ack) => acks.push(ack.wait()),
                    Err(e) => tracing::debug!(peer = %to, error = %e, "signal not sent"),
                }
            }
            Some(result) = acks.next(), if !acks.is_empty() => {
                if let Err(e) = result {
                    tracing::debug!(peer = %to, error = %e, "signal not delivered");
                }
            }
        }
    }
    while let Some(result) = acks.next().await {
        if let Err(e) = result {
            tracing::debug!(peer = %to, error = %e, "signal not delivered");
        }
    }
}

/// The address of the interface holding the default route (no packet is sent), else loopback.
fn default_bind_ip() -> IpAddr {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return loopback;
    };
    if s.connect("192.0.2.1:9").is_err() {
        return loopback;
    }
    match s.local_addr() {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => loopback,
    }
}

struct RemoteShared {
    peer_id: String,
    metadata: Mutex<Option<Map<String, Value>>>,
    conn: Mutex<Option<ConnHandle>>,
    /// Tracks added to this remote only (survive connection resets).
    tracks: Mutex<Vec<LocalTrack>>,
    events: EventSender<RoomEvent>,
}

/// The events of one remote peer (a filtered view of the room's stream).
#[derive(Debug)]
pub struct RemoteEvents {
    inner: RoomEvents,
    peer_id: String,
}

impl RemoteEvents {
    /// The next event about this remote peer; `None` once the room is gone.
    pub async fn recv(&mut self) -> Option<RoomEvent> {
        loop {
            let e = self.inner.recv().await?;
            if e.peer_id() == Some(self.peer_id.as_str()) {
                return Some(e);
            }
        }
    }
}

/// A remote member of the room. The same object lives across signalling reconnects and
/// connection resets (compare with [`RemotePeer::same_as`]). Cheap to clone.
#[derive(Clone)]
pub struct RemotePeer {
    shared: Arc<RemoteShared>,
}

impl std::fmt::Debug for RemotePeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePeer")
            .field("peer_id", &self.shared.peer_id)
            .finish_non_exhaustive()
    }
}

impl RemotePeer {
    /// Its peer id.
    pub fn id(&self) -> &str {
        &self.shared.peer_id
    }

    /// Its public metadata (from presence).
    pub fn metadata(&self) -> Option<Map<String, Value>> {
        lock(&self.shared.metadata).clone()
    }

    /// Events about this peer only (subscribe before acting to see them all).
    pub fn events(&self) -> RemoteEvents {
        RemoteEvents {
            inner: self.shared.events.subscribe(),
            peer_id: self.shared.peer_id.clone(),
        }
    }

    /// Whether both handles are the same remote peer object.
    pub fn same_as(&self, other: &RemotePeer) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    fn command(&self, c: Command) -> bool {
        lock(&self.shared.conn).as_ref().is_some_and(|h| h.send(c))
    }

    /// Send `track` to this peer only (renegotiating as needed). It stays attached across
    /// connection resets until [`remove_track`](RemotePeer::remove_track).
    pub fn add_track(&self, track: &LocalTrack) {
        // Held while the command goes out: a connection being opened takes its tracks under
        // this lock (`connect_remote`), so the track is either in its list or commanded to it.
        let mut tracks = lock(&self.shared.tracks);
        if tracks.iter().any(|t| t.same(track)) {
            return;
        }
        tracks.push(track.clone());
        self.command(Command::AddTrack(track.clone()));
    }

    /// Stop sending `track` to this peer.
    pub fn remove_track(&self, track: &LocalTrack) {
        let mut tracks = lock(&self.shared.tracks);
        tracks.retain(|t| !t.same(track));
        self.command(Command::RemoveTrack(track.id().to_owned()));
    }

    /// Fault injection (feature `fault-injection`, for tests): simulate a network outage on
    /// the connection to this peer (every datagram in and out is dropped for `duration`).
    #[cfg(feature = "fault-injection")]
    pub fn simulate_network_outage(&self, duration: std::time::Duration) {
        self.command(Command::Blackhole(Instant::now() + duration));
    }

    /// Fault injection (feature `fault-injection`, for tests and benchmarks): every datagram
    /// sent to this peer goes through a simulated link (`parlor_netsim`: loss, bursts, jitter
    /// and reordering, duplication, a rate cap), random draws seeded with `seed`, for the
    /// current connection. The far end receives the impaired stream as it would over a bad
    /// network (its jitter buffer, FEC and RTCP see it all).
    #[cfg(feature = "fault-injection")]
    pub fn simulate_link(&self, config: parlor_netsim::LinkConfig, seed: u64) {
        self.command(Command::Impair(config, seed));
    }

    /// Fault injection (feature `fault-injection`, for tests): drop `fraction` (0.0–1.0) of
    /// the RTP packets sent to this peer, evenly spread, until called again with 0.0 (STUN,
    /// DTLS and RTCP still pass, so the far end's receiver reports count the loss). Lasts for
    /// the current connection.
    #[cfg(feature = "fault-injection")]
    pub fn simulate_packet_loss(&self, fraction: f32) {
        self.command(Command::DropRtp(fraction));
    }

    /// Restart ICE on the connection to this peer in place (new ufrag/password, same DTLS
    /// session, media keeps its m-lines); resolves when the remote has answered. The
    /// connection also does this by itself when connectivity is lost (the restart ladder).
    pub async fn restart_ice(&self) -> Result<(), ConnectionError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if !self.command(Command::RestartIce { reply }) {
            return Err(ConnectionError::Closed);
        }
        match tokio::time::timeout(crate::rtc::negotiation::RESTART_ANSWER_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ConnectionError::Closed),
            Err(_) => Err(ConnectionError::RestartTimeout),
        }
    }

    /// Open a data channel to this peer; resolves once it is open (within
    /// [`conn::CHANNEL_OPEN_TIMEOUT`]).
    pub async fn create_data_channel(&self, label: &str) -> Result<DataChannel, ConnectionError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if !self.command(Command::CreateChannel {
            label: label.to_owned(),
            reply,
        }) {
            return Err(ConnectionError::Closed);
        }
        match tokio::time::timeout(conn::CHANNEL_OPEN_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ConnectionError::Closed),
            Err(_) => Err(ConnectionError::ChannelTimeout),
        }
    }
}

struct Inner {
    client: SignallingClient,
    core: Mutex<RoomCore>,
    events: EventSender<RoomEvent>,
    track_meta: Arc<Mutex<HashMap<String, TrackMetaCache>>>,
    remotes: Mutex<HashMap<String, RemotePeer>>,
    /// Tracks sent to every current and future remote peer.
    tracks: Mutex<Vec<LocalTrack>>,
    bind_ip: IpAddr,
    /// The current ICE servers (the last valid welcome list, else the options').
    ice_servers: Mutex<Vec<IceServer>>,
    relay_only: bool,
    /// TLS client configuration for `turns:` servers.
    turn_tls: Option<Arc<rustls::ClientConfig>>,
    lost_offers: u32,
    signals_in_flight: usize,
    next_conn: AtomicU64,
    include_sender_metadata: Mutex<bool>,
    pump: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A peer in one room. Cheap to clone.
#[derive(Clone)]
pub struct RoomPeer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RoomPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomPeer")
            .field("state", &self.state())
            .field("channel", &self.channel())
            .finish_non_exhaustive()
    }
}

/// The room peer's event stream.
pub type RoomEvents = crate::events::EventStream<RoomEvent>;

impl RoomPeer {
    /// A room peer over a (not yet connected) signalling client.
    pub fn new(client: SignallingClient) -> RoomPeer {
        RoomPeer::with_options(client, RoomOptions::default())
    }

    /// A room peer with connection options.
    pub fn with_options(client: SignallingClient, options: RoomOptions) -> RoomPeer {
        let events = EventSender::new(4096);
        RoomPeer {
            inner: Arc::new(Inner {
                client,
                core: Mutex::new(RoomCore::new()),
                events,
                track_meta: Arc::new(Mutex::new(HashMap::new())),
                remotes: Mutex::new(HashMap::new()),
                tracks: Mutex::new(Vec::new()),
                bind_ip: options.bind_ip.unwrap_or_else(default_bind_ip),
                ice_servers: Mutex::new(options.ice_servers),
                relay_only: options.relay_only,
                #[cfg(feature = "fault-injection")]
                lost_offers: options.simulate_lost_offers,
                #[cfg(not(feature = "fault-injection"))]
                lost_offers: 0,
                signals_in_flight: options
                    .signals_in_flight
                    .unwrap_or(SIGNALS_IN_FLIGHT)
                    .max(1),
                turn_tls: match signalling::tls_config(&options.turn_tls_roots_pem) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "turns: TLS roots unusable; using the web PKI roots");
                        signalling::tls_config(&[]).ok()
                    }
                },
                next_conn: AtomicU64::new(1),
                include_sender_metadata: Mutex::new(false),
                pump: Mutex::new(None),
            }),
        }
    }

    /// Subscribe to events (before `join` to see them all).
    pub fn events(&self) -> RoomEvents {
        self.inner.events.subscribe()
    }

    /// Current state.
    pub fn state(&self) -> RoomState {
        lock(&self.inner.core).state()
    }

    /// The joined channel.
    pub fn channel(&self) -> Option<String> {
        lock(&self.inner.core).channel().map(str::to_owned)
    }

    /// Our peer id.
    pub fn peer_id(&self) -> Option<String> {
        self.inner.client.peer_id()
    }

    /// Ids of the remote peers in the room.
    pub fn remote_peers(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.inner.core).peers().keys().cloned().collect();
        v.sort();
        v
    }

    /// The remote peer `peer_id`, while it is in the room.
    pub fn remote(&self, peer_id: &str) -> Option<RemotePeer> {
        lock(&self.inner.remotes).get(peer_id).cloned()
    }

    /// Send `track` to every current and future remote peer (renegotiating as needed).
    pub fn add_track(&self, track: &LocalTrack) {
        // Held while the commands go out: a connection being opened takes the room's tracks
        // under this lock and is installed before it is released (`connect_remote`), so each
        // connection either starts with the track or is commanded to add it, never neither.
        let mut tracks = lock(&self.inner.tracks);
        if tracks.iter().any(|t| t.same(track)) {
            return;
        }
        tracks.push(track.clone());
        for r in lock(&self.inner.remotes).values() {
            r.command(Command::AddTrack(track.clone()));
        }
    }

    /// Stop sending `track` to the room.
    pub fn remove_track(&self, track: &LocalTrack) {
        let mut tracks = lock(&self.inner.tracks);
        tracks.retain(|t| !t.same(track));
        for r in lock(&self.inner.remotes).values() {
            r.command(Command::RemoveTrack(track.id().to_owned()));
        }
    }

    /// Replace `old` with `new` on every connection (the same as removing one and adding the
    /// other; the freed m-line is reused, so no extra renegotiation round trip is needed).
    pub fn replace_track(&self, old: &LocalTrack, new: &LocalTrack) {
        self.remove_track(old);
        self.add_track(new);
    }

    /// Open a data channel to `peer_id`; resolves once it is open.
    pub async fn create_data_channel(
        &self,
        peer_id: &str,
        label: &str,
    ) -> Result<DataChannel, RoomError> {
        let remote = self
            .remote(peer_id)
            .ok_or_else(|| RoomError::UnknownPeer(peer_id.to_owned()))?;
        Ok(remote.create_data_channel(label).await?)
    }

    /// The signalling client underneath.
    pub fn signalling(&self) -> &SignallingClient {
        &self.inner.client
    }

    /// Join `channel` (connecting the signalling client if needed). Resolves after the
    /// subscribe ack; remote peers arrive as events.
    pub async fn join(
        &self,
        channel: &str,
        include_sender_metadata: bool,
    ) -> Result<(), RoomError> {
        let state = self.state();
        if state != RoomState::Idle {
            return Err(RoomError::InvalidState {
                method: "join",
                state,
            });
        }
        if parlor_protocol::validate::is_reserved_channel(channel) {
            return Err(RoomError::Signalling(SignallingError::InvalidArgument(
                "reserved_channel".into(),
            )));
        }
        *lock(&self.inner.include_sender_metadata) = include_sender_metadata;
        self.start_pump();
        if matches!(
            self.inner.client.state(),
            ClientState::Idle | ClientState::Closed
        ) {
            self.inner.client.connect().await?;
        }
        if let Some(id) = self.inner.client.peer_id() {
            self.apply(|c| c.handle_connected(&id, Instant::now()));
        }
        self.apply(|c| c.join_started(channel));
        let opts = SubscribeOptions {
            include_sender_metadata,
        };
        match self.inner.client.subscribe(channel, opts).await {
            Ok(()) => {
                self.apply(RoomCore::join_acked);
                Ok(())
            }
            Err(e) => {
                self.apply(RoomCore::join_failed);
                // Release the subscription slot and the connection (spec §4 #42).
                let _ = self.inner.client.unsubscribe(channel).await;
                Err(e.into())
            }
        }
    }

    /// Broadcast `data` to the room (not echoed locally).
    pub async fn send<T: Serialize + ?Sized>(&self, data: &T) -> Result<(), RoomError> {
        let channel = self.joined_channel()?;
        Ok(self.inner.client.publish(&channel, data).await?)
    }

    /// Queue a broadcast to the room without waiting for its ack: once this returns, the
    /// message is on the socket's outgoing queue, ahead of anything queued later (so
    /// messages queued one after another reach the room in that order); the
    /// [`PendingAck`] carries the server's answer.
    pub async fn send_queued<T: Serialize + ?Sized>(
        &self,
        data: &T,
    ) -> Result<PendingAck, RoomError> {
        let channel = self.joined_channel()?;
        Ok(self.inner.client.publish_queued(&channel, data).await?)
    }

    /// Send `data` to one remote peer of the room.
    pub async fn send_to<T: Serialize + ?Sized>(
        &self,
        peer_id: &str,
        data: &T,
    ) -> Result<(), RoomError> {
        self.check_send_to(peer_id, data)?;
        Ok(self.inner.client.send(peer_id, data).await?)
    }

    /// [`send_to`](Self::send_to) without waiting for the ack, in the order of
    /// [`send_queued`](Self::send_queued).
    pub async fn send_to_queued<T: Serialize + ?Sized>(
        &self,
        peer_id: &str,
        data: &T,
    ) -> Result<PendingAck, RoomError> {
        self.check_send_to(peer_id, data)?;
        Ok(self.inner.client.send_queued(peer_id, data).await?)
    }

    fn check_send_to<T: Serialize + ?Sized>(
        &self,
        peer_id: &str,
        data: &T,
    ) -> Result<(), RoomError> {
        self.joined_channel()?;
        if Some(peer_id) == self.peer_id().as_deref() {
            return Err(RoomError::SelfSend);
        }
        if let Ok(v) = serde_json::to_value(data)
            && v.get(crate::rtc::signal::TRACK_META_KEY).is_some()
        {
            tracing::warn!("send_to payload uses the reserved key __meteredTrackMeta");
        }
        Ok(())
    }

    /// Leave the room and close the signalling connection. Idempotent.
    pub async fn close(&self) {
        let channel = self.channel();
        let state = self.state();
        if state == RoomState::Closed {
            return;
        }
        if let Some(ch) = channel
            && state == RoomState::Joined
        {
            let _ = self.inner.client.unsubscribe(&ch).await;
        }
        self.apply(RoomCore::leave);
        self.inner.client.close().await;
        if state != RoomState::Idle {
            self.inner.events.send(RoomEvent::Left);
        }
        if let Some(p) = lock(&self.inner.pump).take() {
            p.abort();
        }
    }

    /// Track metadata a remote peer announced for its track id.
    pub fn remote_track_metadata(
        &self,
        peer_id: &str,
        track_id: &str,
    ) -> Option<Map<String, Value>> {
        lock(&self.inner.track_meta).get(peer_id).and_then(|c| {
            c.lookup(None, track_id, None, "", &Default::default())
                .cloned()
        })
    }

    fn joined_channel(&self) -> Result<String, RoomError> {
        let core = lock(&self.inner.core);
        match (core.state(), core.channel()) {
            (RoomState::Joined | RoomState::Reconnecting, Some(c)) => Ok(c.to_owned()),
            _ => Err(RoomError::NotJoined),
        }
    }

    /// Run `f` on the core, then act on its outputs.
    fn apply(&self, f: impl FnOnce(&mut RoomCore)) {
        let outputs: Vec<Output> = {
            let mut core = lock(&self.inner.core);
            f(&mut core);
            std::iter::from_fn(|| core.poll_output()).collect()
        };
        for o in outputs {
            self.act(o);
        }
    }

    fn act(&self, o: Output) {
        match o {
            Output::Event(e) => {
                match &e {
                    RoomEvent::PeerJoined { peer_id, metadata } => {
                        let remote = RemotePeer {
                            shared: Arc::new(RemoteShared {
                                peer_id: peer_id.clone(),
                                metadata: Mutex::new(metadata.clone()),
                                conn: Mutex::new(None),
                                tracks: Mutex::new(Vec::new()),
                                events: self.inner.events.clone(),
                            }),
                        };
                        lock(&self.inner.remotes).insert(peer_id.clone(), remote.clone());
                        self.connect_remote(&remote);
                    }
                    RoomEvent::ConnectionReset { peer_id } => {
                        lock(&self.inner.track_meta).remove(peer_id);
                        if let Some(remote) = self.remote(peer_id) {
                            if let Some(info) = lock(&self.inner.core).peers().get(peer_id) {
                                *lock(&remote.shared.metadata) = info.metadata.clone();
                            }
                            self.connect_remote(&remote);
                        }
                    }
                    RoomEvent::PeerLeft { peer_id } => {
                        lock(&self.inner.track_meta).remove(peer_id);
                        let gone = lock(&self.inner.remotes).remove(peer_id);
                        if let Some(r) = gone {
                            lock(&r.shared.conn).take();
                        }
                    }
                    RoomEvent::Fatal(err) => tracing::error!(error = %err, "room peer failed"),
                    _ => {}
                }
                self.inner.events.send(e);
            }
            Output::TrackMeta { peer_id, meta } => {
                lock(&self.inner.track_meta)
                    .entry(peer_id)
                    .or_default()
                    .apply(meta);
            }
            Output::Signal { peer_id, signal } => {
                if let Some(r) = self.remote(&peer_id) {
                    r.command(Command::Signal(signal));
                }
            }
            Output::Resubscribe => {
                if let Some(channel) = self.channel() {
                    let client = self.inner.client.clone();
                    let include = *lock(&self.inner.include_sender_metadata);
                    tokio::spawn(async move {
                        let opts = SubscribeOptions {
                            include_sender_metadata: include,
                        };
                        if let Err(e) = client.subscribe(&channel, opts).await {
                            tracing::warn!(error = %e, "forced resubscribe failed");
                        }
                    });
                }
            }
        }
    }

    /// Start (or restart, after a reset) the WebRTC connection to `remote`.
    fn connect_remote(&self, remote: &RemotePeer) {
        let Some(local_id) = self.peer_id() else {
            return;
        };
        // Close the old connection first (its socket and tracks go with it).
        lock(&remote.shared.conn).take();
        let (signals, signal_rx) = tokio::sync::mpsc::channel::<Value>(conn::SIGNAL_QUEUE);
        tokio::spawn(send_signals(
            self.inner.client.clone(),
            remote.id().to_owned(),
            signal_rx,
            self.inner.signals_in_flight,
        ));
        // The room's tracks and this remote's, locked until the connection is installed (lock
        // order: room tracks, remote tracks, connection): an `add_track` or `remove_track`
        // racing with this either lands in the list taken here or reaches the connection.
        let room_tracks = lock(&self.inner.tracks);
        let own_tracks = lock(&remote.shared.tracks);
        let mut tracks = room_tracks.clone();
        tracks.extend(own_tracks.iter().cloned());
        let params = ConnParams {
            id: self.inner.next_conn.fetch_add(1, Ordering::Relaxed),
            remote_id: remote.id().to_owned(),
            polite: is_polite(&local_id, remote.id()),
            bind_ip: self.inner.bind_ip,
            events: self.inner.events.clone(),
            signals,
            track_meta: self.inner.track_meta.clone(),
            turn: conn::relay::turn_targets(&lock(&self.inner.ice_servers)),
            relay_only: self.inner.relay_only,
            turn_tls: self.inner.turn_tls.clone(),
            lost_offers: self.inner.lost_offers,
        };
        if params.relay_only && params.turn.is_empty() {
            tracing::warn!(peer = %remote.id(), "relay-only, but no usable TURN server: this connection cannot connect");
        }
        let failed = match conn::spawn(params, tracks) {
            Ok(h) => {
                *lock(&remote.shared.conn) = Some(h);
                None
            }
            Err(e) => Some(e),
        };
        drop(own_tracks);
        drop(room_tracks);
        match failed {
            None => {}
            Some(e) => {
                tracing::error!(peer = %remote.id(), error = %e, "cannot open a WebRTC connection");
                self.inner.events.send(RoomEvent::NegotiationError {
                    peer_id: remote.id().to_owned(),
                    message: format!("socket: {e}"),
                });
            }
        }
    }

    /// Pump signalling events (and the reconcile timer) into the core.
    fn start_pump(&self) {
        let mut slot = lock(&self.inner.pump);
        if slot.is_some() {
            return;
        }
        let mut events = self.inner.client.events();
        let weak = Arc::downgrade(&self.inner);
        *slot = Some(tokio::spawn(async move {
            loop {
                let deadline = weak.upgrade().and_then(|i| lock(&i.core).poll_timeout());
                let event = match deadline {
                    Some(at) => {
                        tokio::select! {
                            e = events.recv() => e,
                            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {
                                let Some(inner) = weak.upgrade() else { return };
                                RoomPeer { inner }.apply(|c| c.handle_timeout(Instant::now()));
                                continue;
                            }
                        }
                    }
                    None => events.recv().await,
                };
                let (Some(event), Some(inner)) = (event, weak.upgrade()) else {
                    return;
                };
                let peer = RoomPeer { inner };
                peer.on_signalling(event);
            }
        }));
    }

    fn on_signalling(&self, event: signalling::Event) {
        use signalling::Event as E;
        match event {
            E::Connected {
                peer_id,
                ice_servers,
                ..
            } => {
                // Any valid list (even `[]`) replaces the old one; an absent or invalid one
                // keeps it (spec §1.6.1). It applies to connections made from now on.
                if let Some(list) = ice_servers {
                    *lock(&self.inner.ice_servers) = list;
                }
                self.apply(|c| c.handle_connected(&peer_id, Instant::now()))
            }
            E::Disconnected {
                code,
                reason,
                will_reconnect,
            } => self.apply(|c| c.handle_disconnected(code, &reason, will_reconnect)),
            E::Presence {
                channel,
                joined,
                left,
            } => self.apply(|c| c.handle_presence(&channel, &joined, &left)),
            E::Message {
                channel,
                sender_peer_id,
                data,
                sender_metadata,
            } => self.apply(|c| c.handle_message(&channel, &sender_peer_id, data, sender_metadata)),
            E::Direct {
                sender_peer_id,
                data,
                sender_metadata,
            } => self.apply(|c| c.handle_direct(&sender_peer_id, data, sender_metadata)),
            E::ServerError { code, .. } => self.apply(|c| c.handle_server_error(&code)),
            _ => {}
        }
    }
}
