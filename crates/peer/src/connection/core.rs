//! The sans-IO core of one WebRTC connection: everything a connection decides (str0m's
//! `Rtc`, the offer policy and perfect negotiation, the answer watchdog, the ICE-restart
//! ladder, the TURN clients, pending offers, data channels, tracks) with no socket and no
//! clock. The driver in [`super`] feeds it what happened and when
//! (`handle_datagram`, `handle_command`, `handle_timeout`, …, each with `now`), sends what
//! [`Conn::poll_transmit`] gives, hands [`Conn::poll_signal`] to the signalling client and
//! [`Conn::poll_event`] to the room's event bus, and sleeps until [`Conn::poll_timeout`], as
//! str0m's own `handle_input`/`poll_output` works. Tests drive two of them over a simulated network
//! (`super::sim`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::sync::{Notify, mpsc, oneshot};

use super::data_channel::{
    BUFFERED_AMOUNT_LOW_THRESHOLD, DataChannel, DataMessage, MAX_BUFFERED_AMOUNT,
};
use super::relay::{RelayEvent, Relays, Route, TurnTarget};
use super::{
    ANSWER_TIMEOUT, Command, ConnParams, ConnectionError, HIDDEN_STREAM_BASE, IMPOLITE_OFFER_DELAY,
    MAX_AUTO_OFFERS, MAX_INLINE_TIMEOUTS, MAX_STUN_RETRANSMITS, MAX_STUN_RTO, POLITE_OFFER_DELAY,
    PeerConnectionState,
};
use crate::room::RoomEvent;
use crate::rtc::negotiation::{
    CandidateAction, LadderEvent, Negotiator, REBUILD_COOLDOWN, RemoteAction, RestartLadder,
    SignalingState,
};
use crate::rtc::sdp::{self, Msid};
use crate::rtc::signal::{self, Inbound, SdpKind, TrackMeta};
use crate::track::{
    DEFAULT_FRAME_SAMPLES, EncodedFrame, FrameSink, LocalTrack, RemoteTrack, RemoteTrackSink,
    TrackKind, opus_packet_samples,
};

/// A TURN server ready for an allocation, with the local address of its TCP/TLS stream
/// when it is reached over one (or not usable: `None`).
pub(crate) type ResolvedTarget = Option<(SocketAddr, TurnTarget, Option<SocketAddr>)>;

/// How often str0m reports stats (egress loss from receiver reports among them).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// How long a connection whose ICE is up may wait for its DTLS handshake before it starts
/// over with a fresh connection (the polite side; the impolite side waits 5 s more, so the
/// two do not rebuild at once). A DTLS 1.2 handshake that loses the server's last flight
/// can stall for good: the client resends its flight with a backoff (1, 2, 4, 8, 16 s) and
/// gives up after the fourth, and the server, which already counts itself connected, may
/// leave those resends unanswered (it rate-limits answers to them with a backoff of its
/// own); the room simulator found it in about one 4-peer mesh in a thousand at 10 % loss.
pub(crate) const DTLS_STALL: Duration = Duration::from_secs(10);

fn new_rtc(now: Instant) -> Rtc {
    // No transport-wide congestion control: it exists to feed a sender's bandwidth estimate,
    // which fixed-bitrate voice does not use, and its feedback is an RTCP packet every 50 ms
    // each way (a wake-up and a syscall at both ends). Without the header extension in our
    // map, str0m neither offers nor accepts it.
    let mut exts = ExtensionMap::empty();
    for (id, ext) in [
        (1, Extension::AudioLevel),
        (2, Extension::AbsoluteSendTime),
        (4, Extension::RtpMid),
        (10, Extension::RtpStreamId),
        (11, Extension::RepairedRtpStreamId),
        (13, Extension::VideoOrientation),
    ] {
        exts.set(id, ext);
    }
    // Stats events carry the loss the far end reports in its RTCP receiver reports (one every
    // 5 s for audio), which tunes the sender's in-band FEC (`LocalTrack::reported_loss`).
    // Audio packets are handed on as they arrive, reordered or not: str0m's default holds
    // every packet behind a lost one until 15 more are in (a 300 ms stall per loss), which
    // the receiver's jitter buffer (`parlor_media::jitter`) does better, waiting only as long
    // as the link's jitter says.
    let mut config = Rtc::builder()
        .set_extension_map(exts)
        .set_stats_interval(Some(STATS_INTERVAL))
        .set_reordering_size_audio(0);
    config.set_max_stun_rto(MAX_STUN_RTO);
    config.set_max_stun_retransmits(MAX_STUN_RETRANSMITS);
    config.build(now)
}

struct PendingOffer {
    offer: SdpPendingOffer,
    sent_at: Instant,
    adds: Vec<(Arc<str>, Mid)>,
    has_app: bool,
    ice_restart: bool,
    /// Data channels this offer carries: str0m confirms them only with the answer, so an
    /// offer rolled back takes them along unless they are queued again.
    channels: Vec<ChannelId>,
}

struct Attached {
    track: LocalTrack,
    mid: Option<Mid>,
    pt: Option<Pt>,
    rtp: u64,
}

struct ChanEntry {
    dc: DataChannel,
    inbound: mpsc::Sender<DataMessage>,
}

pub(crate) struct Conn {
    p: ConnParams,
    rtc: Rtc,
    /// The TURN clients (relayed candidates) on this connection's socket.
    relays: Relays,
    /// TURN servers whose names are still being resolved.
    resolving: usize,
    /// Our candidates as SDP attribute values (host unless relay-only, then relayed ones).
    local_candidates: Vec<String>,
    /// `sdpMid` and ufrag of the last description we sent (for trickled candidates).
    last_description: Option<(Option<String>, Option<String>)>,
    /// A description went out while relays were still allocating: end-of-candidates is
    /// sent when they finish.
    end_of_candidates_owed: bool,
    /// Remote candidate addresses (bounded), for TURN permissions on later allocations.
    remote_ips: Vec<IpAddr>,
    /// This connection's socket address (host candidate, datagram destination).
    local: SocketAddr,
    /// The time of the input being handled (all timing reads this, never the clock).
    now: Instant,
    /// Datagrams (and TURN stream bytes) for the IO driver to send, in order.
    out: VecDeque<(Route, Vec<u8>)>,
    /// Events for the room, and signals (descriptions, candidates, track metadata) for the
    /// remote, in the order made ([`Conn::poll_event`], [`Conn::poll_signal`]). Behind locks: the
    /// policy code that makes them holds `&self` in places (never contended: one owner).
    events_out: Mutex<VecDeque<RoomEvent>>,
    signals_out: Mutex<VecDeque<Value>>,
    /// When str0m next needs a timeout, and the TURN clients a poll.
    rtc_deadline: Instant,
    relay_deadline: Option<Instant>,
    /// A remote description was seen (the remote is negotiating with us).
    had_remote: bool,
    neg: Negotiator,
    pending: Option<PendingOffer>,
    /// `m=application` is negotiated.
    app: bool,
    hidden_channels: Vec<ChannelId>,
    first_offer_at: Option<Instant>,
    /// When this connection started (for the first-offer timing log).
    created: Instant,
    auto_offers: u32,
    /// Changes wait for the current exchange to finish.
    offer_wanted: bool,
    /// The next offer must restart ICE; these wait for its answer.
    restart_wanted: bool,
    restart_waiters: Vec<oneshot::Sender<Result<(), ConnectionError>>>,
    tracks: Vec<Attached>,
    media_tx: FrameSink,
    audio_mids: Vec<Mid>,
    remote_tracks: HashMap<Mid, RemoteTrackSink>,
    /// Stream of each inbound m-line's track, and live tracks per stream (StreamAdded/Removed).
    remote_track_streams: HashMap<Mid, Option<String>>,
    /// The msid we announce on m-lines where a track of a named stream went out on an
    /// m-line the remote's offer created ([`sdp::set_msids`]); kept for the m-line's life.
    msid_overrides: HashMap<String, Msid>,
    remote_msids: HashMap<String, Msid>,
    local_msids: HashMap<String, Msid>,
    channels: HashMap<ChannelId, ChanEntry>,
    waiting_channels: HashMap<
        ChannelId,
        (
            String,
            oneshot::Sender<Result<DataChannel, ConnectionError>>,
        ),
    >,
    queued_channels: Vec<(
        String,
        oneshot::Sender<Result<DataChannel, ConnectionError>>,
    )>,
    flush: Arc<Notify>,
    ladder: RestartLadder,
    /// Since when ICE has been up without DTLS (the stall watchdog, [`DTLS_STALL`]).
    ice_up_since: Option<Instant>,
    /// The last ICE state str0m reported.
    ice_state: IceConnectionState,
    dtls_up: bool,
    state: PeerConnectionState,
    /// Test hook: fraction of outbound RTP dropped, and the error-diffusion accumulator that
    /// spreads the drops evenly.
    drop_rtp: f32,
    drop_acc: f32,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for a in &self.tracks {
            a.track.detach(self.p.id);
        }
        for c in self.channels.values() {
            c.dc.shared.close();
        }
        for (_, (_, reply)) in self.waiting_channels.drain() {
            let _ = reply.send(Err(ConnectionError::Closed));
        }
        for (_, reply) in self.queued_channels.drain(..) {
            let _ = reply.send(Err(ConnectionError::Closed));
        }
        for reply in self.restart_waiters.drain(..) {
            let _ = reply.send(Err(ConnectionError::Closed));
        }
        self.rtc.disconnect();
    }
}

impl Conn {
    fn emit(&self, e: RoomEvent) {
        self.events_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(e);
    }

    fn set_state(&mut self, s: PeerConnectionState) {
        if self.state != s {
            self.state = s;
            self.emit(RoomEvent::ConnectionState {
                peer_id: self.p.remote_id.clone(),
                state: s,
            });
        }
    }

    fn negotiation_error(&self, message: String) {
        tracing::warn!(peer = %self.p.remote_id, %message, "negotiation error");
        self.emit(RoomEvent::NegotiationError {
            peer_id: self.p.remote_id.clone(),
            message,
        });
    }

    fn signal(&self, v: Value) {
        self.signals_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(v);
    }

    /// Drain str0m's output: transmits into the out queue (wrapped for a TURN server when
    /// their source is a relayed address), events acted on, the next timeout kept.
    ///
    /// A timeout that is already due (str0m asks for one right after every media write, to
    /// packetize it) is handled here at once, instead of costing the driver a trip through
    /// the reactor and the timer wheel per packet.
    fn pump_rtc(&mut self) {
        let mut due_now = 0;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    if t > self.now || due_now == MAX_INLINE_TIMEOUTS {
                        self.rtc_deadline = t;
                        return;
                    }
                    due_now += 1;
                    if let Err(e) = self.rtc.handle_input(Input::Timeout(self.now)) {
                        tracing::warn!(peer = %self.p.remote_id, error = %e, "webrtc timeout handling failed");
                        self.rtc_deadline = self.now + Duration::from_millis(50);
                        return;
                    }
                }
                Ok(Output::Transmit(t)) => {
                    if self.drop_simulated(&t.contents) {
                        continue;
                    }
                    if self
                        .relays
                        .send(t.source, t.destination, &t.contents, self.now)
                    {
                        self.queue_relay_transmits();
                        continue;
                    }
                    self.out
                        .push_back((Route::Udp(t.destination), t.contents.into()));
                }
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    tracing::warn!(peer = %self.p.remote_id, error = %e, "webrtc poll failed");
                    self.rtc_deadline = self.now + Duration::from_millis(50);
                    return;
                }
            }
        }
    }

    /// Drive the TURN clients: queue what they send, act on allocations, keep when they
    /// next need a poll.
    fn pump_relays(&mut self) {
        self.relay_deadline = self.relays.poll(self.now);
        while let Some(ev) = self.relays.poll_event() {
            match ev {
                RelayEvent::Allocated { server, relayed } => {
                    tracing::debug!(peer = %self.p.remote_id, %server, %relayed, "TURN allocation ready");
                    if let Some(line) = self.add_relayed_candidate(relayed) {
                        self.trickle(&line);
                    }
                    for ip in self.remote_ips.clone() {
                        self.relays.permit(ip, self.now);
                    }
                }
                RelayEvent::Failed { server } => {
                    tracing::warn!(peer = %self.p.remote_id, %server, "TURN allocation failed");
                }
            }
        }
        self.maybe_end_candidates();
        self.queue_relay_transmits();
    }

    /// Move what the TURN clients queued into the out queue.
    fn queue_relay_transmits(&mut self) {
        while let Some(t) = self.relays.poll_transmit() {
            self.out.push_back(t);
        }
    }

    fn on_turn_resolved(&mut self, target: ResolvedTarget) {
        self.resolving = self.resolving.saturating_sub(1);
        let now = self.now;
        match target {
            Some((addr, t, None)) => self.relays.add(addr, &t.username, &t.credential, now),
            Some((addr, t, Some(local))) => {
                self.relays
                    .add_stream(addr, local, &t.username, &t.credential, now);
            }
            None => {}
        }
        self.maybe_end_candidates();
    }

    /// Whether relayed candidates may still come.
    fn gathering(&self) -> bool {
        self.resolving > 0 || self.relays.gathering()
    }

    fn maybe_end_candidates(&mut self) {
        if self.end_of_candidates_owed && !self.gathering() {
            self.end_of_candidates_owed = false;
            self.signal(signal::candidate(None));
        }
    }

    /// Add our local candidates to a fresh `Rtc`: the host one (unless relay-only) and
    /// every relayed one already allocated.
    fn add_local_candidates(&mut self) {
        self.local_candidates.clear();
        if !self.p.relay_only {
            match Candidate::host(self.local, "udp") {
                Ok(c) => {
                    if let Some(c) = self.rtc.add_local_candidate(c) {
                        let line = c.to_sdp_string();
                        self.local_candidates
                            .push(line.trim_start_matches("a=").to_owned());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no host candidate"),
            }
        }
        let relayed: Vec<SocketAddr> = self.relays.relayed().collect();
        for r in relayed {
            self.add_relayed_candidate(r);
        }
    }

    /// Add a relayed local candidate; returns its SDP attribute value.
    fn add_relayed_candidate(&mut self, relayed: SocketAddr) -> Option<String> {
        let c = match Candidate::relayed(relayed, self.local, "udp") {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unusable relayed candidate");
                return None;
            }
        };
        let line = self.rtc.add_local_candidate(c)?.to_sdp_string();
        let line = line.trim_start_matches("a=").to_owned();
        self.local_candidates.push(line.clone());
        Some(line)
    }

    /// Send one of our candidates on its own, after the description it belongs to.
    fn trickle(&self, line: &str) {
        let Some((mid, ufrag)) = &self.last_description else {
            return;
        };
        let init = signal::CandidateInit {
            candidate: line.to_owned(),
            sdp_mid: mid.clone(),
            sdp_m_line_index: Some(0),
            username_fragment: ufrag.clone(),
        };
        self.signal(signal::candidate(Some(&init)));
    }

    /// Test hook ([`Command::DropRtp`]): whether to drop this outbound datagram. Only RTP
    /// is dropped (RFC 7983 demultiplexing; RTCP packet types 192–223), never STUN, DTLS
    /// or RTCP, so the link stays up and the far end's receiver reports count the loss.
    fn drop_simulated(&mut self, datagram: &[u8]) -> bool {
        if self.drop_rtp <= 0.0 {
            return false;
        }
        let rtp = matches!(datagram, [b0, b1, ..] if (128..=191).contains(b0) && !(192..=223).contains(b1));
        if !rtp {
            return false;
        }
        self.drop_acc += self.drop_rtp;
        if self.drop_acc >= 1.0 {
            self.drop_acc -= 1.0;
            return true;
        }
        false
    }

    fn answer_deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.sent_at + ANSWER_TIMEOUT)
    }

    /// When a DTLS handshake still missing after ICE came up counts as stalled.
    fn dtls_deadline(&self) -> Option<Instant> {
        let wait = if self.p.polite {
            DTLS_STALL
        } else {
            DTLS_STALL + Duration::from_secs(5)
        };
        self.ice_up_since.map(|t| t + wait)
    }

    fn on_timers(&mut self, now: Instant) {
        if self.first_offer_at.is_some_and(|t| t <= now) {
            self.first_offer_at = None;
            if self.pending.is_none() && !self.had_remote {
                self.make_offer("initial", false);
            }
        }
        if self.answer_deadline().is_some_and(|t| t <= now) {
            tracing::debug!(peer = %self.p.remote_id, "answer watchdog: rolling back our offer");
            self.rollback_pending();
            self.make_offer("answer watchdog", false);
        }
        if let (Some(since), Some(deadline)) = (self.ice_up_since, self.dtls_deadline())
            && deadline <= now
        {
            // ICE restarts keep the DTLS session, so they cannot help: start over. The remote
            // sees a new fingerprint in our offer and rebuilds too (both sides report
            // `ConnectionReset`).
            self.negotiation_error(format!(
                "DTLS handshake not done {:.1} s after ICE connected; rebuilding the connection",
                (now - since).as_secs_f64()
            ));
            self.rollback_pending();
            self.rebuild();
            self.make_offer("dtls stall", false);
        }
        match self.ladder.handle_timeout(now) {
            Some(LadderEvent::Restart(k)) => {
                tracing::info!(peer = %self.p.remote_id, attempt = k, "ICE restart");
                self.rollback_pending();
                self.make_offer("ice restart", true);
            }
            Some(LadderEvent::Exhausted) => {
                tracing::warn!(peer = %self.p.remote_id, "ICE restart attempts exhausted");
                self.set_state(PeerConnectionState::Failed);
                self.emit(RoomEvent::IceRestartExhausted {
                    peer_id: self.p.remote_id.clone(),
                });
            }
            None => {}
        }
    }

    fn rollback_pending(&mut self) {
        // Dropping the pending offer is str0m's rollback.
        if let Some(p) = self.pending.take() {
            self.restart_wanted |= p.ice_restart;
            self.requeue_channels(&p.channels);
            self.neg.local_offer_rolled_back();
        }
    }

    /// Data channels whose offer was rolled back (or whose `Rtc` was replaced) wait for the
    /// next offer instead of timing out: the caller's `create_data_channel` is still waiting.
    fn requeue_channels(&mut self, cids: &[ChannelId]) {
        for cid in cids {
            if let Some(waiting) = self.waiting_channels.remove(cid) {
                self.queued_channels.push(waiting);
            }
        }
    }

    /// Whether our side still lacks something only an offer can bring.
    fn needs_offer(&self) -> bool {
        self.tracks.iter().any(|a| a.mid.is_none()) || !self.queued_channels.is_empty()
    }

    fn make_offer(&mut self, why: &str, ice_restart: bool) {
        if self.pending.is_some() || self.neg.state() != SignalingState::Stable {
            self.offer_wanted = true;
            self.restart_wanted |= ice_restart;
            return;
        }
        let ice_restart = ice_restart || self.restart_wanted;
        if self.auto_offers >= MAX_AUTO_OFFERS && !ice_restart {
            self.negotiation_error(format!("gave up offering after {MAX_AUTO_OFFERS} offers"));
            return;
        }
        self.offer_wanted = false;
        self.restart_wanted = false;
        let mut api = self.rtc.sdp_api();
        if ice_restart {
            api.ice_restart(true);
        }
        let mut adds = Vec::new();
        for a in self.tracks.iter().filter(|a| a.mid.is_none()) {
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendRecv,
                Some(a.track.stream_id().to_owned()),
                Some(a.track.id().to_owned()),
                None,
            );
            adds.push((Arc::<str>::from(a.track.id()), mid));
        }
        if adds.is_empty() && self.audio_mids.is_empty() {
            // Always offer one audio m-line, so the remote's microphone has somewhere to go
            // and a later local track can reuse it without another exchange.
            api.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        }
        let has_app = !self.app;
        if has_app {
            let n = u16::try_from(self.hidden_channels.len()).unwrap_or(u16::MAX);
            let cid = api.add_channel_with_config(ChannelConfig {
                label: "parlor-sctp".into(),
                negotiated: Some(HIDDEN_STREAM_BASE.saturating_sub(n)),
                ..Default::default()
            });
            self.hidden_channels.push(cid);
        }
        let mut channels = Vec::new();
        for (label, reply) in self.queued_channels.drain(..) {
            let cid = api.add_channel(label.clone());
            self.waiting_channels.insert(cid, (label, reply));
            channels.push(cid);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        // ICE restarts are bounded by the restart ladder, not by this budget.
        if !ice_restart {
            self.auto_offers += 1;
        }
        self.neg.local_offer_started();
        let sdp_text = sdp::set_msids(&offer.to_sdp_string(), &self.msid_overrides);
        self.local_msids = sdp::msids_by_mid(&sdp_text);
        // Spec §2.3: a track's metadata precedes the offer that carries it, so the remote
        // has it when its `track` event fires (the Python SDK reads it only then).
        for (id, _) in &adds {
            if let Some(i) = self.tracks.iter().position(|a| *a.track.id() == **id) {
                self.announce_track(i);
            }
        }
        self.neg.local_offer_sent();
        self.pending = Some(PendingOffer {
            offer: pending,
            sent_at: self.now,
            adds,
            has_app,
            ice_restart,
            channels,
        });
        tracing::debug!(peer = %self.p.remote_id, why, "sending offer");
        self.send_description(SdpKind::Offer, &sdp_text);
    }

    /// Send a description, then our candidates, then end-of-candidates (or, while TURN
    /// allocations are still in progress, later: relayed candidates trickle as they come).
    fn send_description(&mut self, kind: SdpKind, sdp_text: &str) {
        if kind == SdpKind::Offer && self.p.lost_offers > 0 {
            self.p.lost_offers -= 1;
            tracing::debug!(peer = %self.p.remote_id, "test hook: offer lost");
            return;
        }
        let sdp_text = &sdp::set_msids(sdp_text, &self.msid_overrides);
        self.signal(signal::description(kind, sdp_text));
        self.last_description = Some((sdp::first_mid(sdp_text), sdp::ice_ufrag(sdp_text)));
        for line in &self.local_candidates {
            self.trickle(line);
        }
        if self.gathering() {
            self.end_of_candidates_owed = true;
        } else {
            self.end_of_candidates_owed = false;
            self.signal(signal::candidate(None));
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Signal(s) => self.on_signal(s),
            Command::AddTrack(t) => {
                self.add_track(t);
                if self.first_offer_at.is_none() {
                    self.make_offer("track added", false);
                }
            }
            Command::RemoveTrack(id) => {
                if let Some(i) = self.tracks.iter().position(|a| a.track.id() == id) {
                    let a = self.tracks.remove(i);
                    a.track.detach(self.p.id);
                    if let Some(mid) = a.mid {
                        // The m-line stays (reusable by a later track); it just goes quiet.
                        self.audio_mids.retain(|m| *m != mid);
                        self.audio_mids.push(mid);
                    }
                    if a.track.metadata().is_some() {
                        self.signal(signal::track_meta(&TrackMeta {
                            track_id: self.wire_track_id(&a),
                            metadata: None,
                            kind: None,
                            stream_id: None,
                        }));
                    }
                }
            }
            Command::CreateChannel { label, reply } => self.create_channel(label, reply),
            // Network faults: the IO driver drops or delays the datagrams.
            Command::Blackhole(_) => {}
            #[cfg(feature = "fault-injection")]
            Command::Impair(..) => {}
            Command::DropRtp(fraction) => {
                self.drop_rtp = if fraction.is_finite() {
                    fraction.clamp(0.0, 1.0)
                } else {
                    0.0
                };
            }
            Command::RestartIce { reply } => {
                self.restart_waiters.push(reply);
                self.make_offer("ice restart (requested)", true);
            }
        }
    }

    fn add_track(&mut self, t: LocalTrack) {
        if self.tracks.iter().any(|a| a.track.same(&t)) {
            return;
        }
        t.attach(self.p.id, self.media_tx.clone());
        self.tracks.push(Attached {
            track: t,
            mid: None,
            pt: None,
            rtp: 0,
        });
        self.assign_mids(false);
    }

    /// Record the audio m-lines a description established (before str0m's `MediaAdded`).
    fn learn_audio_mids(&mut self, sdp_text: &str) {
        for m in sdp::audio_mids(sdp_text) {
            let mid = Mid::from(m.as_str());
            if self.rtc.media(mid).is_some() && !self.audio_mids.contains(&mid) {
                self.audio_mids.push(mid);
            }
        }
    }

    /// Give tracks without an m-line a free sending audio m-line (e.g. one the remote offered).
    /// Tracks whose own m-line is in our pending offer wait for its answer.
    fn assign_mids(&mut self, answering: bool) {
        for i in 0..self.tracks.len() {
            let in_offer = self.pending.as_ref().is_some_and(|p| {
                p.adds
                    .iter()
                    .any(|(id, _)| **id == *self.tracks[i].track.id())
            });
            if self.tracks[i].mid.is_some() || in_offer {
                continue;
            }
            // A track of a named stream must reach receivers under its stream id (they group
            // tracks by the msid of the description that first announces the m-line). In an
            // answer being written it may take any offered m-line: the answer announces it
            // with our msid. Later, it takes only an m-line that already announces its
            // stream (one it replaces, say); otherwise it gets an m-line of its own in a
            // follow-up offer.
            let track = &self.tracks[i].track;
            let free = self.audio_mids.iter().copied().find(|m| {
                !self.tracks.iter().any(|a| a.mid == Some(*m))
                    && self
                        .rtc
                        .media(*m)
                        .is_some_and(|md| md.direction().is_sending())
                    && (answering
                        || !track.has_named_stream()
                        || self
                            .local_msids
                            .get(&m.to_string())
                            .and_then(|x| x.stream_id.as_deref())
                            == Some(track.stream_id()))
            });
            if let Some(mid) = free {
                if answering && track.has_named_stream() {
                    // The answer being written announces it: with our stream and track id.
                    let msid = Msid {
                        stream_id: Some(track.stream_id().to_owned()),
                        track_id: track.id().to_owned(),
                    };
                    self.local_msids.insert(mid.to_string(), msid.clone());
                    self.msid_overrides.insert(mid.to_string(), msid);
                }
                self.tracks[i].mid = Some(mid);
                self.tracks[i].pt = None;
                self.announce_track(i);
            }
        }
    }

    fn wire_track_id(&self, a: &Attached) -> String {
        a.mid
            .and_then(|m| self.local_msids.get(&m.to_string()))
            .map(|m| m.track_id.clone())
            .unwrap_or_else(|| a.track.id().to_owned())
    }

    fn announce_track(&self, i: usize) {
        let a = &self.tracks[i];
        if let Some(meta) = a.track.metadata() {
            let stream_id = a
                .mid
                .and_then(|m| self.local_msids.get(&m.to_string()))
                .and_then(|m| m.stream_id.clone())
                .or_else(|| Some(a.track.stream_id().to_owned()));
            self.signal(signal::track_meta(&TrackMeta {
                track_id: self.wire_track_id(a),
                metadata: Some(meta.clone()),
                kind: Some(a.track.kind().as_str().to_owned()),
                stream_id,
            }));
        }
    }

    fn create_channel(
        &mut self,
        label: String,
        reply: oneshot::Sender<Result<DataChannel, ConnectionError>>,
    ) {
        if !self.app || self.pending.is_some() || self.neg.state() != SignalingState::Stable {
            // Needs (or waits for) an offer with m=application.
            self.queued_channels.push((label, reply));
            if self.first_offer_at.is_none() {
                self.make_offer("data channel", false);
            }
            return;
        }
        let mut api = self.rtc.sdp_api();
        let cid = api.add_channel(label.clone());
        if let Some((offer, pending)) = api.apply() {
            // Not expected once m=application exists, but handle it as any offer.
            let sdp_text = offer.to_sdp_string();
            self.neg.local_offer_started();
            self.neg.local_offer_sent();
            self.pending = Some(PendingOffer {
                offer: pending,
                sent_at: self.now,
                adds: Vec::new(),
                has_app: true,
                ice_restart: false,
                channels: vec![cid],
            });
            self.send_description(SdpKind::Offer, &sdp_text);
        }
        self.waiting_channels.insert(cid, (label, reply));
    }

    fn on_signal(&mut self, s: Inbound) {
        match s {
            Inbound::Description { kind, sdp } => self.on_description(kind, &sdp),
            Inbound::Candidate(c) => match self.neg.remote_candidate(c.map(Ok)) {
                CandidateAction::Add(c) => {
                    let line = c.candidate.trim_start_matches("a=");
                    match Candidate::from_sdp_string(line) {
                        Ok(cand) => {
                            let ip = cand.addr().ip();
                            if !self.remote_ips.contains(&ip) && self.remote_ips.len() < 32 {
                                self.remote_ips.push(ip);
                            }
                            self.relays.permit(ip, self.now);
                            self.rtc.add_remote_candidate(cand);
                        }
                        Err(e) => tracing::debug!(error = %e, "unusable remote candidate"),
                    }
                }
                CandidateAction::EndOfCandidates | CandidateAction::Drop => {}
            },
            Inbound::Malformed => {
                let _ = self.neg.remote_candidate(Some(Err(())));
            }
            Inbound::TrackMeta(_) | Inbound::Data => {}
        }
    }

    fn on_description(&mut self, kind: SdpKind, sdp_text: &str) {
        self.had_remote = true;
        match self.neg.remote_description(kind, sdp_text, self.now) {
            RemoteAction::Ignore => {
                tracing::debug!(peer = %self.p.remote_id, ?kind, "ignoring remote description");
            }
            RemoteAction::RebuildThenOffer => {
                tracing::info!(
                    peer = %self.p.remote_id,
                    "the answer comes from a rebuilt remote connection (new DTLS fingerprint); rebuilding ours"
                );
                let restart = self.pending.as_ref().is_some_and(|p| p.ice_restart);
                self.rebuild();
                if restart {
                    // The remote took the restart (as a rebuild); the call resumes on the
                    // fresh connection.
                    for w in self.restart_waiters.drain(..) {
                        let _ = w.send(Ok(()));
                    }
                }
                // Offer from the fresh connection once the remote's rebuild cooldown (it
                // drops offers inside it) has passed, unless it offers first.
                self.had_remote = false;
                self.first_offer_at =
                    Some(self.now + REBUILD_COOLDOWN + Duration::from_millis(200));
            }
            RemoteAction::ApplyAnswer => {
                let Some(p) = self.pending.take() else { return };
                let answer = match SdpAnswer::from_sdp_string(sdp_text) {
                    Ok(a) => a,
                    Err(e) => return self.negotiation_error(format!("bad answer SDP: {e}")),
                };
                match self.rtc.sdp_api().accept_answer(p.offer, answer) {
                    Ok(()) => {
                        self.ladder.answered();
                        if p.ice_restart {
                            for w in self.restart_waiters.drain(..) {
                                let _ = w.send(Ok(()));
                            }
                        }
                        self.remote_msids = sdp::msids_by_mid(sdp_text);
                        self.app |= p.has_app;
                        self.learn_audio_mids(sdp_text);
                        for (id, mid) in p.adds {
                            if !self.audio_mids.contains(&mid) {
                                self.audio_mids.push(mid);
                            }
                            // Its metadata went out before the offer.
                            if let Some(i) = self.tracks.iter().position(|a| *a.track.id() == *id) {
                                self.tracks[i].mid = Some(mid);
                                self.tracks[i].pt = None;
                            }
                        }
                        self.after_exchange();
                    }
                    Err(e) => self.negotiation_error(format!("accept answer: {e}")),
                }
            }
            action @ (RemoteAction::AcceptOffer | RemoteAction::RebuildThenAcceptOffer) => {
                if action == RemoteAction::RebuildThenAcceptOffer {
                    self.rebuild();
                }
                if let Some(p) = self.pending.take() {
                    // Glare, polite side: accepting the remote offer rolls ours back. What it
                    // carried is offered again after this exchange.
                    self.restart_wanted |= p.ice_restart;
                    self.requeue_channels(&p.channels);
                    self.offer_wanted = true;
                }
                let offer = match SdpOffer::from_sdp_string(sdp_text) {
                    Ok(o) => o,
                    Err(e) => return self.negotiation_error(format!("bad offer SDP: {e}")),
                };
                self.remote_msids = sdp::msids_by_mid(sdp_text);
                match self.rtc.sdp_api().accept_offer(offer) {
                    Ok(answer) => {
                        if self.first_offer_at.take().is_some() {
                            tracing::debug!(
                                peer = %self.p.remote_id,
                                after_ms = self.now.saturating_duration_since(self.created).as_millis() as u64,
                                "the remote offered first"
                            );
                        }
                        self.app |= sdp_text.contains("m=application");
                        self.learn_audio_mids(sdp_text);
                        let (answer_text, video) =
                            sdp::answer_video_receive_only(&answer.to_sdp_string());
                        if !video.is_empty() {
                            // We never send video: the answer says receive-only, and str0m's
                            // own state follows it (no `apply()`: the answer carries the
                            // change, and our later offers then agree with it).
                            let mut api = self.rtc.sdp_api();
                            for (mid, receiving) in &video {
                                let dir = if *receiving {
                                    Direction::RecvOnly
                                } else {
                                    Direction::Inactive
                                };
                                api.set_direction(Mid::from(mid.as_str()), dir);
                            }
                        }
                        self.local_msids = sdp::msids_by_mid(&answer_text);
                        // Tracks that take one of the offered m-lines announce their
                        // metadata before the answer that carries them (spec §2.3).
                        self.assign_mids(true);
                        self.send_description(SdpKind::Answer, &answer_text);
                        self.after_exchange();
                    }
                    Err(e) => self.negotiation_error(format!("accept offer: {e}")),
                }
            }
        }
    }

    /// An offer/answer exchange finished: pick up what waited for it.
    fn after_exchange(&mut self) {
        for a in &mut self.tracks {
            a.pt = None;
        }
        self.assign_mids(false);
        if self.offer_wanted || self.needs_offer() {
            self.make_offer("follow-up", false);
        } else {
            // Settled: the budget guards against offer loops, not against a long call's
            // later tracks and channels.
            self.auto_offers = 0;
        }
    }

    /// Start over with a fresh `Rtc` on the same socket: the remote rebuilt its connection,
    /// or our DTLS handshake stalled.
    fn rebuild(&mut self) {
        tracing::info!(peer = %self.p.remote_id, "rebuilding the connection");
        self.rtc.disconnect();
        self.rtc = new_rtc(self.now);
        self.add_local_candidates();
        self.pending = None;
        // Channels not yet open belonged to the old `Rtc`: offer them again on the new one.
        let waiting: Vec<ChannelId> = self.waiting_channels.keys().copied().collect();
        self.requeue_channels(&waiting);
        self.app = false;
        self.hidden_channels.clear();
        self.audio_mids.clear();
        self.end_all_remote_tracks();
        for (_, c) in self.channels.drain() {
            c.dc.shared.close();
        }
        for a in &mut self.tracks {
            a.mid = None;
            a.pt = None;
            a.rtp = 0;
        }
        self.dtls_up = false;
        self.ice_up_since = None;
        self.msid_overrides.clear();
        self.auto_offers = 0;
        self.restart_wanted = false;
        self.ladder = RestartLadder::default();
        self.set_state(PeerConnectionState::Connecting);
        self.emit(RoomEvent::ConnectionReset {
            peer_id: self.p.remote_id.clone(),
        });
    }

    fn on_ice_state(&mut self, s: IceConnectionState) {
        tracing::debug!(peer = %self.p.remote_id, state = ?s, "ICE state");
        self.ice_state = s;
        match s {
            IceConnectionState::Connected | IceConnectionState::Completed => {
                self.ladder.connected();
                if !self.dtls_up && self.ice_up_since.is_none() {
                    self.ice_up_since = Some(self.now);
                }
                if self.dtls_up {
                    self.set_state(PeerConnectionState::Connected);
                }
            }
            IceConnectionState::Disconnected => {
                self.ice_up_since = None;
                self.set_state(PeerConnectionState::Disconnected);
                self.ladder.ice_failed(self.now);
            }
            _ => {}
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::IceConnectionStateChange(s) => self.on_ice_state(s),
            Event::Connected => {
                self.dtls_up = true;
                self.ice_up_since = None;
                self.set_state(PeerConnectionState::Connected);
            }
            Event::MediaAdded(m) => {
                if m.kind == MediaKind::Audio && !self.audio_mids.contains(&m.mid) {
                    self.audio_mids.push(m.mid);
                }
                self.assign_mids(false);
            }
            Event::MediaChanged(m) => {
                if !m.direction.is_receiving() {
                    // The remote stopped sending on it: that track ended.
                    self.end_remote_track(m.mid);
                }
                self.assign_mids(false);
            }
            Event::MediaData(d) => self.on_media(d),
            Event::ChannelOpen(cid, label) => self.on_channel_open(cid, label),
            Event::ChannelData(d) => {
                if let Some(c) = self.channels.get(&d.id) {
                    let msg = DataMessage::from_wire(d.binary, d.data);
                    if c.inbound.try_send(msg).is_err() {
                        c.dc.shared
                            .dropped_inbound
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
            Event::ChannelClose(cid) => {
                if let Some(c) = self.channels.remove(&cid) {
                    c.dc.shared.close();
                }
            }
            Event::ChannelBufferedAmountLow(cid) => self.flush_channel(cid),
            Event::MediaEgressStats(st) => {
                // The far end's RTCP receiver reports: how much of what we send it loses.
                if let Some(loss) = st.loss {
                    for a in self.tracks.iter().filter(|a| a.mid == Some(st.mid)) {
                        a.track.report_loss(self.p.id, loss);
                    }
                }
            }
            _ => {}
        }
    }

    fn end_remote_track(&mut self, mid: Mid) {
        self.remote_tracks.remove(&mid);
        if let Some(Some(sid)) = self.remote_track_streams.remove(&mid)
            && !self.stream_live(&sid)
        {
            self.emit(RoomEvent::StreamRemoved {
                peer_id: self.p.remote_id.clone(),
                stream_id: sid,
            });
        }
    }

    /// Whether a live remote track belongs to stream `sid`.
    fn stream_live(&self, sid: &str) -> bool {
        self.remote_track_streams
            .values()
            .any(|s| s.as_deref() == Some(sid))
    }

    fn end_all_remote_tracks(&mut self) {
        let mids: Vec<Mid> = self.remote_tracks.keys().copied().collect();
        for mid in mids {
            self.end_remote_track(mid);
        }
    }

    fn on_media(&mut self, d: str0m::media::MediaData) {
        if !self.remote_tracks.contains_key(&d.mid) {
            let kind = match self.rtc.media(d.mid).map(|m| m.kind()) {
                Some(MediaKind::Video) => TrackKind::Video,
                _ => TrackKind::Audio,
            };
            let mid = d.mid.to_string();
            let msid = self.remote_msids.get(&mid).cloned();
            let track_id = msid
                .as_ref()
                .map(|m| m.track_id.clone())
                .unwrap_or_else(|| mid.clone());
            let stream_id = msid.and_then(|m| m.stream_id);
            if let Some(sid) = &stream_id
                && !self.stream_live(sid)
            {
                self.emit(RoomEvent::StreamAdded {
                    peer_id: self.p.remote_id.clone(),
                    stream_id: sid.clone(),
                });
            }
            let (track, sink) = RemoteTrack::new(
                self.p.remote_id.clone(),
                track_id,
                stream_id.clone(),
                kind,
                Some(self.p.track_meta.clone()),
            );
            self.remote_track_streams.insert(d.mid, stream_id);
            self.remote_tracks.insert(d.mid, sink);
            self.emit(RoomEvent::Track {
                peer_id: self.p.remote_id.clone(),
                track,
            });
        }
        if let Some(sink) = self.remote_tracks.get(&d.mid) {
            let samples = opus_packet_samples(&d.data).unwrap_or(DEFAULT_FRAME_SAMPLES);
            sink.deliver(EncodedFrame {
                data: d.data,
                samples,
                rtp_time: d.time.numer(),
            });
        }
    }

    fn write_frame(&mut self, track_id: &str, frame: EncodedFrame) {
        if !self.dtls_up {
            return;
        }
        let Some(a) = self.tracks.iter_mut().find(|a| a.track.id() == track_id) else {
            return;
        };
        let Some(mid) = a.mid else { return };
        let Some(w) = self.rtc.writer(mid) else {
            return;
        };
        if a.pt.is_none() {
            a.pt = w
                .payload_params()
                .find(|p| p.spec().codec == Codec::Opus)
                .map(|p| p.pt());
        }
        let Some(pt) = a.pt else { return };
        let ts = MediaTime::new(a.rtp, Frequency::FORTY_EIGHT_KHZ);
        a.rtp += u64::from(frame.samples);
        if let Err(e) = w.write(pt, self.now, ts, frame.data) {
            tracing::debug!(error = %e, "media write failed");
        }
    }

    fn on_channel_open(&mut self, cid: ChannelId, label: String) {
        if self.hidden_channels.contains(&cid) {
            return;
        }
        let flush = self.flush.clone();
        let (dc, inbound) = DataChannel::new(
            label,
            self.p.remote_id.clone(),
            Box::new(move || flush.notify_one()),
        );
        if let Some(mut ch) = self.rtc.channel(cid) {
            ch.set_buffered_amount_low_threshold(BUFFERED_AMOUNT_LOW_THRESHOLD);
        }
        self.channels.insert(
            cid,
            ChanEntry {
                dc: dc.clone(),
                inbound,
            },
        );
        match self.waiting_channels.remove(&cid) {
            Some((_, reply)) => {
                let _ = reply.send(Ok(dc));
            }
            None => self.emit(RoomEvent::DataChannelOpened {
                peer_id: self.p.remote_id.clone(),
                channel: dc,
            }),
        }
    }

    fn flush_channels(&mut self) {
        let ids: Vec<ChannelId> = self.channels.keys().copied().collect();
        for id in ids {
            self.flush_channel(id);
        }
    }

    fn flush_channel(&mut self, cid: ChannelId) {
        let Some(entry) = self.channels.get(&cid) else {
            return;
        };
        let shared = entry.dc.shared.clone();
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            // Closed by the application (`DataChannel::close`): close it on the wire too;
            // dropping the entry ends the channel's `recv`.
            self.rtc.direct_api().close_data_channel(cid);
            self.channels.remove(&cid);
            return;
        }
        let Some(mut ch) = self.rtc.channel(cid) else {
            return;
        };
        let mut sent = false;
        loop {
            if ch.buffered_amount() >= MAX_BUFFERED_AMOUNT {
                break; // resumes on ChannelBufferedAmountLow
            }
            let Some((binary, data)) = shared.queue().pop_front() else {
                break;
            };
            match ch.write(binary, &data) {
                Ok(true) => sent = true,
                Ok(false) => {
                    // The association's send buffer is full: put it back, retry on low.
                    shared.queue().push_front((binary, data));
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "data channel write failed");
                    shared.close();
                    break;
                }
            }
        }
        if sent {
            shared.space.notify_waiters();
        }
    }
}

impl Conn {
    /// A connection for `p` on a socket bound at `local`, sending `tracks`. `media_tx` is
    /// the queue the tracks' frames come in on (the driver reads it: [`Conn::handle_frame`]);
    /// `flush` wakes the driver when a data channel has something to send
    /// ([`Conn::handle_flush`]).
    pub(crate) fn new(
        p: ConnParams,
        local: SocketAddr,
        media_tx: FrameSink,
        flush: Arc<Notify>,
        tracks: Vec<LocalTrack>,
        now: Instant,
    ) -> Conn {
        let delay = if p.polite {
            POLITE_OFFER_DELAY
        } else {
            IMPOLITE_OFFER_DELAY
        };
        let mut conn = Conn {
            rtc: new_rtc(now),
            relays: Relays::new(local, now),
            resolving: p.turn.len(),
            local_candidates: Vec::new(),
            last_description: None,
            end_of_candidates_owed: false,
            remote_ips: Vec::new(),
            neg: Negotiator::new(p.polite),
            p,
            local,
            now,
            out: VecDeque::new(),
            events_out: Mutex::new(VecDeque::new()),
            signals_out: Mutex::new(VecDeque::new()),
            rtc_deadline: now,
            relay_deadline: None,
            had_remote: false,
            pending: None,
            app: false,
            hidden_channels: Vec::new(),
            first_offer_at: Some(now + delay),
            created: now,
            auto_offers: 0,
            offer_wanted: false,
            restart_wanted: false,
            restart_waiters: Vec::new(),
            tracks: Vec::new(),
            media_tx,
            audio_mids: Vec::new(),
            remote_tracks: HashMap::new(),
            remote_track_streams: HashMap::new(),
            msid_overrides: HashMap::new(),
            remote_msids: HashMap::new(),
            local_msids: HashMap::new(),
            channels: HashMap::new(),
            waiting_channels: HashMap::new(),
            queued_channels: Vec::new(),
            flush,
            ladder: RestartLadder::default(),
            ice_up_since: None,
            ice_state: IceConnectionState::New,
            dtls_up: false,
            state: PeerConnectionState::Connecting,
            drop_rtp: 0.0,
            drop_acc: 0.0,
        };
        conn.add_local_candidates();
        for t in tracks {
            conn.add_track(t);
        }
        conn.settle();
        conn
    }

    /// After every input: the timers that came due, then the TURN clients, then str0m.
    fn settle(&mut self) {
        self.on_timers(self.now);
        self.pump_relays();
        self.pump_rtc();
    }

    fn advance(&mut self, now: Instant) {
        // Time never runs backwards for str0m, whatever the caller passes.
        self.now = self.now.max(now);
    }

    /// Time passed (the driver's timer fired at [`Conn::poll_timeout`], or any time).
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if let Err(e) = self.rtc.handle_input(Input::Timeout(self.now)) {
            tracing::warn!(peer = %self.p.remote_id, error = %e, "webrtc timeout handling failed");
        }
        self.settle();
    }

    /// A datagram arrived on the connection's socket from `source` (a TURN server's are
    /// unwrapped first).
    pub(crate) fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.advance(now);
        let relayed;
        let (source, destination, data) = if self.relays.is_server(source) {
            match self.relays.recv(source, data, self.now) {
                Some((peer, to, d)) => {
                    relayed = d;
                    (peer, to, &relayed[..])
                }
                None => return self.settle(),
            }
        } else {
            (source, self.local, data)
        };
        if let Ok(contents) = data.try_into() {
            let input = Input::Receive(
                self.now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination,
                    contents,
                },
            );
            if let Err(e) = self.rtc.handle_input(input) {
                tracing::debug!(peer = %self.p.remote_id, error = %e, "dropped a datagram");
            }
        }
        self.settle();
    }

    /// Bytes arrived on the TCP/TLS stream to TURN server `server` (empty: it closed).
    pub(crate) fn handle_stream_bytes(&mut self, now: Instant, server: SocketAddr, bytes: &[u8]) {
        self.advance(now);
        for (peer, relayed, data) in self.relays.recv_stream(server, bytes, self.now) {
            let Ok(contents) = data[..].try_into() else {
                continue;
            };
            let input = Input::Receive(
                self.now,
                Receive {
                    proto: Protocol::Udp,
                    source: peer,
                    destination: relayed,
                    contents,
                },
            );
            if let Err(e) = self.rtc.handle_input(input) {
                tracing::debug!(peer = %self.p.remote_id, error = %e, "dropped a relayed datagram");
            }
        }
        self.settle();
    }

    /// A command from the room peer.
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.advance(now);
        self.on_command(cmd);
        self.settle();
    }

    /// A frame of one of our tracks, to send.
    pub(crate) fn handle_frame(&mut self, now: Instant, track_id: &str, frame: EncodedFrame) {
        self.advance(now);
        self.write_frame(track_id, frame);
        self.settle();
    }

    /// A TURN server's name resolved (or its stream connected), or it failed (`None`).
    pub(crate) fn handle_turn_resolved(&mut self, now: Instant, target: ResolvedTarget) {
        self.advance(now);
        self.on_turn_resolved(target);
        self.settle();
    }

    /// A data channel has queued messages.
    pub(crate) fn handle_flush(&mut self, now: Instant) {
        self.advance(now);
        self.flush_channels();
        self.settle();
    }

    /// The next datagram (or TURN stream bytes) to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<(Route, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next event for the room (connection state, tracks, channels, errors…).
    pub(crate) fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events_out
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// The next signal to send the remote through the signalling server.
    pub(crate) fn poll_signal(&mut self) -> Option<Value> {
        self.signals_out
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// When [`Conn::handle_timeout`] is next needed.
    pub(crate) fn poll_timeout(&self) -> Instant {
        [
            Some(self.rtc_deadline),
            self.relay_deadline,
            self.first_offer_at,
            self.answer_deadline(),
            self.dtls_deadline(),
            self.ladder.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.rtc_deadline)
    }

    /// Closing: release the TURN allocations (their datagrams come out of
    /// [`Conn::poll_transmit`]; best effort, not retried), end the remote tracks and report
    /// `Closed` ([`Conn::poll_event`]).
    pub(crate) fn close(&mut self, now: Instant) {
        self.advance(now);
        self.relays.close(self.now);
        self.queue_relay_transmits();
        self.end_all_remote_tracks();
        self.set_state(PeerConnectionState::Closed);
    }

    /// The connection's state as last reported.
    #[cfg(test)]
    pub(crate) fn state(&self) -> PeerConnectionState {
        self.state
    }

    /// What a failing simulation prints about this connection.
    #[cfg(test)]
    pub(crate) fn describe(&self) -> String {
        format!(
            "{:?}, signaling {:?}, ICE {:?}, DTLS up {}, offer pending {}, remote seen {}, auto offers {}",
            self.state,
            self.neg.state(),
            self.ice_state,
            self.dtls_up,
            self.pending.is_some(),
            self.had_remote,
            self.auto_offers,
        )
    }

    /// The socket address datagrams for this connection go to.
    #[cfg(test)]
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}
