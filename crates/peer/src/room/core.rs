//! The room peer's membership logic as a sans-IO state machine (spec §2.2, §2.7, §3.2):
//! presence → remote peers (cap 256), data classification, own-broadcast filtering, and the
//! reconcile after a signalling reconnect (snapshot diff, 10 s deadline, up to 2 forced
//! resubscribes, then `ReconcileTimeout`). Inputs are signalling events; outputs are app
//! events and commands for the driver. Time is passed in.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use parlor_protocol::client::PresencePeer;

use crate::rtc::signal::{self, Inbound, TrackMeta};

/// Remote peers tracked per channel.
pub const MAX_PEERS_PER_CHANNEL: usize = 256;
/// How long to wait for the post-reconnect snapshot before forcing a resubscribe.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(10);
/// Forced resubscribes before giving up with `ReconcileTimeout`.
pub const MAX_FORCED_RESUBSCRIBES: u8 = 2;

/// Uncorrelated server errors that are fatal to a room peer (spec §1.11).
pub const FATAL_SERVER_ERRORS: [&str; 5] = [
    "account_suspended",
    "channel_not_authorized",
    "action_not_permitted",
    "invalid_token",
    "token_expired",
];

/// Room peer states (spec §3.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomState {
    /// Not joined yet.
    Idle,
    /// Subscribe in flight.
    Joining,
    /// In the room.
    Joined,
    /// Signalling is reconnecting; remote peers are kept.
    Reconnecting,
    /// Leaving.
    Leaving,
    /// Terminal.
    Closed,
}

/// Whether data came from a channel broadcast or a direct send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// `send` (publish to the channel).
    Broadcast,
    /// `send_to` (direct).
    Direct,
}

/// Why the room peer failed for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FatalError {
    /// The server sent an uncorrelated fatal error code.
    #[error("server error {0}")]
    Server(String),
    /// The signalling connection closed for good (terminal close code or attempts exhausted).
    #[error("signalling closed (code {code:?}): {reason}")]
    SignallingClosed {
        /// Close code.
        code: Option<u16>,
        /// Reason.
        reason: String,
    },
    /// No snapshot after a reconnect despite forced resubscribes.
    #[error("no presence snapshot after reconnect (ReconcileTimeout)")]
    ReconcileTimeout,
}

/// Room events (spec §3.2).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RoomEvent {
    /// The room state changed.
    StateChange(RoomState),
    /// Joined the channel (the subscribe was acked).
    Joined {
        /// Our peer id.
        peer_id: String,
        /// The channel.
        channel: String,
    },
    /// A remote peer appeared.
    PeerJoined {
        /// Its id.
        peer_id: String,
        /// Its public metadata.
        metadata: Option<Map<String, Value>>,
    },
    /// A remote peer left (its connection is closed).
    PeerLeft {
        /// Its id.
        peer_id: String,
    },
    /// A surviving remote peer gets a fresh connection after a signalling reconnect: track
    /// metadata is re-sent, tracks re-attached, app data channels must be re-created
    /// (`connection-reset`, spec §2.7 step 3).
    ConnectionReset {
        /// Its id.
        peer_id: String,
    },
    /// Application data from the channel (broadcast) or a known member (direct).
    Data {
        /// Sender.
        sender_peer_id: String,
        /// Payload, verbatim.
        data: Arc<RawValue>,
        /// Broadcast or direct.
        kind: DataKind,
        /// Sender's public metadata, when the server stamped it.
        sender_metadata: Option<Map<String, Value>>,
    },
    /// A remote peer's media track arrived (the first frame on it). Read it with
    /// [`RemoteTrack::recv`](crate::track::RemoteTrack::recv); it ends with the track or peer.
    Track {
        /// The sender.
        peer_id: String,
        /// The track.
        track: crate::track::RemoteTrack,
    },
    /// A remote peer's first track of a stream (MediaStream) arrived; its `Track` follows.
    StreamAdded {
        /// The sender.
        peer_id: String,
        /// The sender's stream id.
        stream_id: String,
    },
    /// The last track of a remote stream ended.
    StreamRemoved {
        /// The sender.
        peer_id: String,
        /// The sender's stream id.
        stream_id: String,
    },
    /// A remote peer opened a data channel to us.
    DataChannelOpened {
        /// The remote peer.
        peer_id: String,
        /// The channel.
        channel: crate::connection::data_channel::DataChannel,
    },
    /// A remote peer's WebRTC connection changed state.
    ConnectionState {
        /// The remote peer.
        peer_id: String,
        /// The new state.
        state: crate::connection::PeerConnectionState,
    },
    /// Negotiation with a remote peer failed (bad SDP, ICE restarts exhausted, …); the
    /// connection may recover on the next exchange.
    NegotiationError {
        /// The remote peer.
        peer_id: String,
        /// What went wrong.
        message: String,
    },
    /// The ICE-restart ladder ran out (9 attempts) for a remote peer: its connection is
    /// `Failed` until the remote rebuilds it or the room reconnects (`IceRestartExhausted`).
    IceRestartExhausted {
        /// The remote peer.
        peer_id: String,
    },
    /// We left the room.
    Left,
    /// The room peer failed for good and is closed.
    Fatal(FatalError),
    /// This reader fell more than the event capacity behind and `dropped` events were lost
    /// before the next one: application data first; terminal and membership events only
    /// past twice the capacity.
    Lagged {
        /// Events lost.
        dropped: u64,
    },
}

impl crate::events::BusEvent for RoomEvent {
    /// Everything but application data (which can come in floods) is kept for a slow reader.
    fn is_critical(&self) -> bool {
        !matches!(self, RoomEvent::Data { .. })
    }

    fn lagged(dropped: u64) -> Self {
        RoomEvent::Lagged { dropped }
    }
}

impl RoomEvent {
    /// The remote peer the event is about, if any.
    pub fn peer_id(&self) -> Option<&str> {
        match self {
            RoomEvent::PeerJoined { peer_id, .. }
            | RoomEvent::PeerLeft { peer_id }
            | RoomEvent::ConnectionReset { peer_id }
            | RoomEvent::Track { peer_id, .. }
            | RoomEvent::StreamAdded { peer_id, .. }
            | RoomEvent::StreamRemoved { peer_id, .. }
            | RoomEvent::DataChannelOpened { peer_id, .. }
            | RoomEvent::ConnectionState { peer_id, .. }
            | RoomEvent::NegotiationError { peer_id, .. }
            | RoomEvent::IceRestartExhausted { peer_id } => Some(peer_id),
            RoomEvent::Data { sender_peer_id, .. } => Some(sender_peer_id),
            _ => None,
        }
    }
}

/// What the core reports: app events, and commands for the driver.
#[derive(Debug, Clone)]
pub enum Output {
    /// For the application.
    Event(RoomEvent),
    /// A WebRTC signal for a known peer's connection.
    Signal {
        /// From.
        peer_id: String,
        /// The classified signal (`Description`, `Candidate` or `Malformed`).
        signal: Inbound,
    },
    /// Track metadata for a known peer.
    TrackMeta {
        /// From.
        peer_id: String,
        /// The message.
        meta: TrackMeta,
    },
    /// Re-issue the channel subscribe (reconcile watchdog).
    Resubscribe,
}

/// What the core remembers of a remote peer.
#[derive(Debug, Clone)]
pub struct RemoteInfo {
    /// Public metadata (refreshed from snapshots).
    pub metadata: Option<Map<String, Value>>,
}

/// The room state machine.
#[derive(Debug)]
pub struct RoomCore {
    state: RoomState,
    channel: Option<String>,
    local_id: Option<String>,
    peers: HashMap<String, RemoteInfo>,
    /// Reconcile watchdog: (deadline, forced resubscribes so far).
    reconcile: Option<(Instant, u8)>,
    /// After a (re)subscribe, the next presence for our channel is a full snapshot.
    expect_snapshot: bool,
    out: VecDeque<Output>,
}

impl Default for RoomCore {
    fn default() -> Self {
        Self::new()
    }
}

impl RoomCore {
    /// A fresh, idle room peer.
    pub fn new() -> RoomCore {
        RoomCore {
            state: RoomState::Idle,
            channel: None,
            local_id: None,
            peers: HashMap::new(),
            reconcile: None,
            expect_snapshot: false,
            out: VecDeque::new(),
        }
    }

    /// Current state.
    pub fn state(&self) -> RoomState {
        self.state
    }

    /// The joined channel.
    pub fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    /// Known remote peers.
    pub fn peers(&self) -> &HashMap<String, RemoteInfo> {
        &self.peers
    }

    /// Whether `peer_id` is a known member.
    pub fn is_member(&self, peer_id: &str) -> bool {
        self.peers.contains_key(peer_id)
    }

    fn emit(&mut self, e: RoomEvent) {
        self.out.push_back(Output::Event(e));
    }

    fn set_state(&mut self, s: RoomState) {
        if self.state != s {
            self.state = s;
            self.emit(RoomEvent::StateChange(s));
        }
    }

    /// Next output; call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`RoomCore::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.reconcile.map(|(at, _)| at)
    }

    /// The signalling client connected (first welcome or reconnect).
    pub fn handle_connected(&mut self, peer_id: &str, now: Instant) {
        self.local_id = Some(peer_id.to_owned());
        if self.state == RoomState::Reconnecting {
            self.expect_snapshot = true;
            if self.peers.is_empty() {
                // Solo peer: joined at once, no snapshot wait (spec §4 #28).
                self.set_state(RoomState::Joined);
            } else {
                self.reconcile = Some((now + RECONCILE_DEADLINE, 0));
            }
        }
    }

    /// A join starts (the subscribe is about to be sent). The channel is set first so that a
    /// snapshot racing the ack is not lost.
    pub fn join_started(&mut self, channel: &str) {
        self.channel = Some(channel.to_owned());
        self.expect_snapshot = true;
        self.set_state(RoomState::Joining);
    }

    /// The subscribe was acked.
    pub fn join_acked(&mut self) {
        if self.state == RoomState::Joining {
            self.set_state(RoomState::Joined);
            if let (Some(peer_id), Some(channel)) = (self.local_id.clone(), self.channel.clone()) {
                self.emit(RoomEvent::Joined { peer_id, channel });
            }
        }
    }

    /// The subscribe failed: back to idle so the join can be retried.
    pub fn join_failed(&mut self) {
        self.channel = None;
        self.expect_snapshot = false;
        self.set_state(RoomState::Idle);
    }

    /// Leave: every remote peer leaves, the state ends `Closed`.
    pub fn leave(&mut self) {
        self.set_state(RoomState::Leaving);
        self.drop_all_peers();
        self.reconcile = None;
        self.set_state(RoomState::Closed);
    }

    fn drop_all_peers(&mut self) {
        let mut ids: Vec<String> = self.peers.keys().cloned().collect();
        ids.sort();
        for peer_id in ids {
            self.peers.remove(&peer_id);
            self.emit(RoomEvent::PeerLeft { peer_id });
        }
    }

    /// The signalling socket closed.
    pub fn handle_disconnected(&mut self, code: Option<u16>, reason: &str, will_reconnect: bool) {
        match self.state {
            RoomState::Closed | RoomState::Idle | RoomState::Leaving => {}
            _ if will_reconnect => {
                if matches!(self.state, RoomState::Joined | RoomState::Reconnecting) {
                    self.set_state(RoomState::Reconnecting);
                } else {
                    // A drop while joining: back to idle, the join can be retried (JS).
                    self.join_failed();
                }
            }
            _ => {
                self.drop_all_peers();
                self.reconcile = None;
                self.set_state(RoomState::Closed);
                self.emit(RoomEvent::Fatal(FatalError::SignallingClosed {
                    code,
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    /// An uncorrelated server error.
    pub fn handle_server_error(&mut self, code: &str) {
        if FATAL_SERVER_ERRORS.contains(&code)
            && !matches!(self.state, RoomState::Closed | RoomState::Idle)
        {
            self.drop_all_peers();
            self.reconcile = None;
            self.set_state(RoomState::Closed);
            self.emit(RoomEvent::Fatal(FatalError::Server(code.to_owned())));
        }
    }

    fn add_peer(&mut self, p: &PresencePeer) {
        if Some(&p.peer_id) == self.local_id.as_ref() || self.peers.contains_key(&p.peer_id) {
            return;
        }
        if self.peers.len() >= MAX_PEERS_PER_CHANNEL {
            tracing::warn!(
                cap = MAX_PEERS_PER_CHANNEL,
                "peer cap reached; ignoring a joiner"
            );
            return;
        }
        self.peers.insert(
            p.peer_id.clone(),
            RemoteInfo {
                metadata: p.metadata.clone(),
            },
        );
        self.emit(RoomEvent::PeerJoined {
            peer_id: p.peer_id.clone(),
            metadata: p.metadata.clone(),
        });
    }

    /// A presence frame.
    pub fn handle_presence(
        &mut self,
        channel: &str,
        joined: &[PresencePeer],
        left: &[PresencePeer],
    ) {
        if self.channel.as_deref() != Some(channel)
            || matches!(
                self.state,
                RoomState::Closed | RoomState::Idle | RoomState::Leaving
            )
        {
            return;
        }
        if self.reconcile.is_some() {
            // The first presence after a reconnect is the full roster: diff it.
            self.reconcile = None;
            self.expect_snapshot = false;
            let mut seen = std::collections::HashSet::new();
            let roster: Vec<&PresencePeer> = joined
                .iter()
                .filter(|p| Some(&p.peer_id) != self.local_id.as_ref() && seen.insert(&p.peer_id))
                .collect();
            let mut departed: Vec<String> = self
                .peers
                .keys()
                .filter(|id| !roster.iter().any(|p| &p.peer_id == *id))
                .cloned()
                .collect();
            departed.sort();
            for peer_id in departed {
                self.peers.remove(&peer_id);
                self.emit(RoomEvent::PeerLeft { peer_id });
            }
            for p in roster {
                if let Some(info) = self.peers.get_mut(&p.peer_id) {
                    info.metadata = p.metadata.clone();
                    self.emit(RoomEvent::ConnectionReset {
                        peer_id: p.peer_id.clone(),
                    });
                } else {
                    self.add_peer(p);
                }
            }
            self.set_state(RoomState::Joined);
            return;
        }
        self.expect_snapshot = false;
        for p in left {
            if self.peers.remove(&p.peer_id).is_some() {
                self.emit(RoomEvent::PeerLeft {
                    peer_id: p.peer_id.clone(),
                });
            }
        }
        for p in joined {
            self.add_peer(p);
        }
    }

    /// A channel broadcast.
    pub fn handle_message(
        &mut self,
        channel: &str,
        from: &str,
        data: Arc<RawValue>,
        sender_metadata: Option<Map<String, Value>>,
    ) {
        if self.channel.as_deref() != Some(channel) || Some(from) == self.local_id.as_deref() {
            return; // another channel, or our own echo
        }
        self.emit(RoomEvent::Data {
            sender_peer_id: from.to_owned(),
            data,
            kind: DataKind::Broadcast,
            sender_metadata,
        });
    }

    /// A direct message, classified by spec §2.2. Signals and metadata from unknown senders
    /// are dropped ("presence racing SDP"); so is data, as defence in depth.
    pub fn handle_direct(
        &mut self,
        from: &str,
        data: Arc<RawValue>,
        sender_metadata: Option<Map<String, Value>>,
    ) {
        let known = self.peers.contains_key(from);
        let value: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
        match signal::classify(&value) {
            Inbound::Data => {
                if known {
                    self.emit(RoomEvent::Data {
                        sender_peer_id: from.to_owned(),
                        data,
                        kind: DataKind::Direct,
                        sender_metadata,
                    });
                }
            }
            Inbound::TrackMeta(meta) => {
                if known {
                    self.out.push_back(Output::TrackMeta {
                        peer_id: from.to_owned(),
                        meta,
                    });
                }
            }
            signal => {
                if known {
                    self.out.push_back(Output::Signal {
                        peer_id: from.to_owned(),
                        signal,
                    });
                } else {
                    tracing::debug!("dropping rtc signal from an unknown sender");
                }
            }
        }
    }

    /// Advance time: the reconcile watchdog.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some((at, forced)) = self.reconcile else {
            return;
        };
        if now < at {
            return;
        }
        if forced < MAX_FORCED_RESUBSCRIBES {
            self.reconcile = Some((now + RECONCILE_DEADLINE, forced + 1));
            self.out.push_back(Output::Resubscribe);
        } else {
            self.reconcile = None;
            self.drop_all_peers();
            self.set_state(RoomState::Closed);
            self.emit(RoomEvent::Fatal(FatalError::ReconcileTimeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(id: &str) -> PresencePeer {
        PresencePeer {
            peer_id: id.into(),
            metadata: None,
        }
    }

    fn raw(v: Value) -> Arc<RawValue> {
        Arc::from(serde_json::value::to_raw_value(&v).expect("json"))
    }

    fn drain(c: &mut RoomCore) -> Vec<String> {
        std::iter::from_fn(|| c.poll_output())
            .map(|o| match o {
                Output::Event(RoomEvent::StateChange(s)) => format!("state:{s:?}"),
                Output::Event(RoomEvent::Joined { .. }) => "joined".into(),
                Output::Event(RoomEvent::PeerJoined { peer_id, .. }) => format!("+{peer_id}"),
                Output::Event(RoomEvent::PeerLeft { peer_id }) => format!("-{peer_id}"),
                Output::Event(RoomEvent::ConnectionReset { peer_id }) => {
                    format!("rebuild:{peer_id}")
                }
                Output::Event(RoomEvent::Data {
                    sender_peer_id,
                    kind,
                    ..
                }) => format!("data:{kind:?}:{sender_peer_id}"),
                Output::Event(RoomEvent::Left) => "left".into(),
                Output::Event(RoomEvent::Fatal(e)) => format!("fatal:{e}"),
                Output::Event(e) => format!("other:{e:?}"),
                Output::Signal { peer_id, .. } => format!("signal:{peer_id}"),
                Output::TrackMeta { peer_id, .. } => format!("meta:{peer_id}"),
                Output::Resubscribe => "resubscribe".into(),
            })
            .collect()
    }

    fn joined_core(now: Instant) -> RoomCore {
        let mut c = RoomCore::new();
        c.handle_connected("p_me", now);
        c.join_started("room");
        c.join_acked();
        c.handle_presence("room", &[p("p_a"), p("p_me")], &[]);
        assert_eq!(
            drain(&mut c),
            ["state:Joining", "state:Joined", "joined", "+p_a"]
        );
        c
    }

    #[test]
    fn join_snapshot_and_deltas() {
        let now = Instant::now();
        let mut c = joined_core(now);
        c.handle_presence("room", &[p("p_b"), p("p_a")], &[]);
        c.handle_presence("other", &[p("p_x")], &[]);
        c.handle_presence("room", &[], &[p("p_a"), p("p_zz")]);
        assert_eq!(drain(&mut c), ["+p_b", "-p_a"]);
    }

    #[test]
    fn data_rules() {
        let now = Instant::now();
        let mut c = joined_core(now);
        c.handle_message("room", "p_me", raw(json!(1)), None);
        c.handle_message("other", "p_a", raw(json!(1)), None);
        c.handle_message("room", "p_stranger", raw(json!(1)), None);
        c.handle_direct("p_a", raw(json!({"hi": 1})), None);
        c.handle_direct("p_stranger", raw(json!({"hi": 1})), None);
        c.handle_direct("p_a", raw(json!({"type":"rtc-ice","candidate":null})), None);
        c.handle_direct(
            "p_stranger",
            raw(json!({"type":"rtc-ice","candidate":null})),
            None,
        );
        c.handle_direct(
            "p_a",
            raw(json!({"__meteredTrackMeta":{"trackId":"t"}})),
            None,
        );
        c.handle_direct(
            "p_stranger",
            raw(json!({"__meteredTrackMeta":{"trackId":"t"}})),
            None,
        );
        assert_eq!(
            drain(&mut c),
            [
                // Broadcasts have no membership check; own echoes are dropped.
                "data:Broadcast:p_stranger",
                "data:Direct:p_a",
                "signal:p_a",
                "meta:p_a"
            ]
        );
    }

    #[test]
    fn reconcile_diffs_the_snapshot() {
        let t0 = Instant::now();
        let mut c = joined_core(t0);
        c.handle_presence("room", &[p("p_b")], &[]);
        drain(&mut c);
        c.handle_disconnected(Some(1006), "network", true);
        assert_eq!(c.state(), RoomState::Reconnecting);
        assert_eq!(c.peers().len(), 2, "peers are kept while reconnecting");
        c.handle_connected("p_me2", t0);
        assert_eq!(c.poll_timeout(), Some(t0 + RECONCILE_DEADLINE));
        c.handle_presence("room", &[p("p_b"), p("p_c"), p("p_c"), p("p_me2")], &[]);
        assert_eq!(
            drain(&mut c),
            [
                "state:Reconnecting",
                "-p_a",
                "rebuild:p_b",
                "+p_c",
                "state:Joined"
            ]
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn solo_peer_rejoins_without_waiting() {
        let t0 = Instant::now();
        let mut c = RoomCore::new();
        c.handle_connected("p_me", t0);
        c.join_started("room");
        c.join_acked();
        c.handle_presence("room", &[], &[]);
        c.handle_disconnected(None, "x", true);
        c.handle_connected("p_me2", t0);
        assert_eq!(c.state(), RoomState::Joined);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn reconcile_watchdog_resubscribes_twice_then_fails() {
        let t0 = Instant::now();
        let mut c = joined_core(t0);
        c.handle_disconnected(None, "x", true);
        c.handle_connected("p_me2", t0);
        drain(&mut c);
        let mut t = t0;
        for _ in 0..3 {
            t = c.poll_timeout().expect("armed");
            c.handle_timeout(t);
        }
        assert_eq!(
            drain(&mut c),
            [
                "resubscribe",
                "resubscribe",
                "-p_a",
                "state:Closed",
                "fatal:no presence snapshot after reconnect (ReconcileTimeout)"
            ]
        );
        assert_eq!(c.poll_timeout(), None);
        let _ = t;
    }

    #[test]
    fn fatal_paths() {
        let t0 = Instant::now();
        let mut c = joined_core(t0);
        c.handle_server_error("over_message_quota");
        assert!(drain(&mut c).is_empty(), "quota codes are not fatal");
        c.handle_server_error("token_expired");
        assert_eq!(
            drain(&mut c),
            ["-p_a", "state:Closed", "fatal:server error token_expired"]
        );

        let mut c = joined_core(t0);
        c.handle_disconnected(Some(4020), "disconnected by admin", false);
        let out = drain(&mut c);
        assert_eq!(out[..2], ["-p_a", "state:Closed"]);
        assert!(out[2].starts_with("fatal:signalling closed (code Some(4020))"));
    }

    #[test]
    fn peer_cap() {
        let t0 = Instant::now();
        let mut c = joined_core(t0);
        let many: Vec<PresencePeer> = (0..300).map(|i| p(&format!("p_{i:03}"))).collect();
        c.handle_presence("room", &many, &[]);
        assert_eq!(c.peers().len(), MAX_PEERS_PER_CHANNEL);
    }

    #[test]
    fn drop_while_joining_returns_to_idle() {
        let mut c = RoomCore::new();
        c.handle_connected("p_me", Instant::now());
        c.join_started("room");
        c.handle_disconnected(None, "x", true);
        assert_eq!(c.state(), RoomState::Idle);
        assert_eq!(c.channel(), None);
    }
}
