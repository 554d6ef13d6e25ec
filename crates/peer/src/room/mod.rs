//! The room peer: the `MeteredPeer` equivalent. Today it carries membership (presence →
//! remote peers, reconcile after reconnects) and data over signalling (`send` = broadcast,
//! `send_to` = direct). WebRTC connections per remote peer attach to the core's `Signal`,
//! `Rebuild` and `TrackMeta` outputs (issue #3, next step).

pub mod core;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::rtc::track_cache::TrackMetaCache;
use crate::signalling::{self, ClientState, SignallingClient, SignallingError, SubscribeOptions};

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
}

struct Inner {
    client: SignallingClient,
    core: Mutex<RoomCore>,
    events: broadcast::Sender<RoomEvent>,
    track_meta: Mutex<HashMap<String, TrackMetaCache>>,
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
        let (events, _) = broadcast::channel(4096);
        RoomPeer {
            inner: Arc::new(Inner {
                client,
                core: Mutex::new(RoomCore::new()),
                events,
                track_meta: Mutex::new(HashMap::new()),
                include_sender_metadata: Mutex::new(false),
                pump: Mutex::new(None),
            }),
        }
    }

    /// Subscribe to events (before `join` to see them all).
    pub fn events(&self) -> RoomEvents {
        RoomEvents::new(self.inner.events.subscribe())
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

    /// Send `data` to one remote peer of the room.
    pub async fn send_to<T: Serialize + ?Sized>(
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
        Ok(self.inner.client.send(peer_id, data).await?)
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
            let _ = self.inner.events.send(RoomEvent::Left);
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
                    RoomEvent::PeerLeft { peer_id } => {
                        lock(&self.inner.track_meta).remove(peer_id);
                    }
                    RoomEvent::Fatal(err) => tracing::error!(error = %err, "room peer failed"),
                    _ => {}
                }
                let _ = self.inner.events.send(e);
            }
            Output::TrackMeta { peer_id, meta } => {
                lock(&self.inner.track_meta)
                    .entry(peer_id)
                    .or_default()
                    .apply(meta);
            }
            Output::Signal { peer_id, .. } => {
                tracing::debug!(peer = %peer_id, "rtc signal received (no WebRTC engine attached yet)");
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
            E::Connected { peer_id, .. } => {
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
