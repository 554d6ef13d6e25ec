//! A room on a simulated network: several room peers and the real room server between them,
//! on one simulated clock. No socket, no sleep, no runtime.
//!
//! Every part that decides something is the real one, driven through its sans-IO surface:
//! the server is `parlor_server::hub::Hub` behind its `Authenticator` (the same ordering of
//! acks, snapshots and deltas, the same limits and errors as `parlor serve`); each peer is a
//! [`RoomCore`] (membership, reconcile after a reconnect, signal routing) with one
//! [`Conn`] per remote peer (negotiation, ICE, DTLS, media). What the tokio drivers would do
//! between them (parse frames, open a connection on `PeerJoined`, send its signals as
//! `send` requests, resubscribe after a reconnect) is done here in a few lines each.
//!
//! The network: each peer's WebSocket to the server is an in-order `parlor_netsim` stream
//! each way (delay, jitter as head-of-line blocking, outages); datagrams between two peers
//! go through a seeded datagram link per direction (loss, jitter, reordering, duplicates).
//! Time jumps from one deadline to the next; a failing seed is printed. The seed fixes the
//! links' draws and the server's peer ids (which decide who is polite); str0m's own
//! randomness (ICE credentials, DTLS keys) is not seeded and does not steer the flow.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parlor_netsim::{Link, LinkConfig, Loss};
use parlor_protocol::client::{self as wire, ServerEvent, parse_server_frame};
use parlor_protocol::parse_client_frame;
use parlor_server::auth::Authenticator;
use parlor_server::config::Config;
use parlor_server::hub::{ConnId, Hub, Next, Outbox};
use parlor_server::metrics::Metrics;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use super::core::{Output, RoomCore, RoomEvent, RoomState};
use crate::connection::core::Conn;
use crate::connection::relay::Route;
use crate::connection::sim::{delayed, ms};
use crate::connection::{Command, ConnParams, PeerConnectionState};
use crate::events::EventSender;
use crate::rtc::negotiation::is_polite;
use crate::rtc::track_cache::TrackMetaCache;
use crate::track::{EncodedFrame, LocalTrack, RemoteTrack};

/// The hub's clock: Unix milliseconds at the simulation's start.
const EPOCH_MS: u64 = 1_800_000_000_000;
/// The room every peer joins.
const CHANNEL: &str = "support-call-42";
/// How long a peer whose WebSocket broke waits before dialling again.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// What goes up a peer's WebSocket.
#[derive(Debug, Clone)]
enum Up {
    /// The connection is opened (the server accepts it when this arrives).
    Dial,
    /// A text frame.
    Frame(String),
}

/// What comes down it.
#[derive(Debug, Clone)]
enum Down {
    Frame(String),
    /// The server closed (or dropped) the connection.
    Closed(u16),
}

/// One WebRTC connection of a peer, to one remote.
struct Call {
    conn: Conn,
    /// Frames of our tracks, for the connection to send.
    media: mpsc::Receiver<(Arc<str>, EncodedFrame)>,
    states: Vec<PeerConnectionState>,
    remote_tracks: Vec<RemoteTrack>,
    offers: u32,
    answers: u32,
}

struct Peer {
    ip: IpAddr,
    core: RoomCore,
    /// The server's handle on our WebSocket, while it is open.
    server: Option<(ConnId, Arc<Outbox>)>,
    peer_id: Option<String>,
    up: Link<Up>,
    down: Link<Down>,
    /// Calls by remote peer id (ordered, so that a seed replays the same way).
    calls: BTreeMap<String, Call>,
    tracks: Vec<LocalTrack>,
    track_meta: Arc<Mutex<HashMap<String, TrackMetaCache>>>,
    next_port: u16,
    next_request: u64,
    join_request: Option<String>,
    /// Dial again at this time (after the WebSocket broke).
    redial_at: Option<Instant>,
    /// Membership as the app sees it: `+id`, `-id`, `reset id`, `fatal …`.
    log: Vec<String>,
    /// Error codes the server answered with.
    server_errors: Vec<String>,
    /// Signals acked by the server.
    acks: u32,
    /// Connections that started over after a stalled DTLS handshake.
    dtls_stalls: u32,
}

/// The simulated network.
#[derive(Clone)]
pub(crate) struct Net {
    /// Datagrams between two peers, each direction.
    pub(crate) media: LinkConfig,
    /// Each peer's WebSocket to the server, each direction (made in order).
    pub(crate) signalling: LinkConfig,
}

pub(crate) struct RoomSim {
    now: Instant,
    start: Instant,
    seed: u64,
    hub: Hub,
    auth: Authenticator,
    peers: Vec<Peer>,
    net: Net,
    /// Datagram links by (from, to) host.
    media: BTreeMap<(IpAddr, IpAddr), Link<Datagram>>,
}

/// A datagram on the wire: from, to, bytes.
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

impl RoomSim {
    pub(crate) fn new(seed: u64, net: Net) -> RoomSim {
        let mut config = Config::from_toml("").expect("default config");
        config.add_dev_key("pk_sim");
        let now = Instant::now();
        let mut hub = Hub::new(&config, Arc::new(Metrics::new()));
        hub.seed_peer_ids(seed);
        RoomSim {
            now,
            start: now,
            seed,
            hub,
            auth: Authenticator::new(&config),
            peers: Vec::new(),
            net,
            media: BTreeMap::new(),
        }
    }

    fn stream(&self) -> LinkConfig {
        LinkConfig {
            in_order: true,
            ..self.net.signalling.clone()
        }
    }

    /// A peer (sending `tracks` to everyone it meets) dials the server now and joins the
    /// room as soon as it is welcomed. Returns its index.
    pub(crate) fn add_peer(&mut self, tracks: Vec<LocalTrack>) -> usize {
        let i = self.peers.len();
        let seed = self.seed * 1000 + i as u64 * 10;
        let mut peer = Peer {
            ip: IpAddr::from([10, 0, 0, i as u8 + 1]),
            core: RoomCore::new(),
            server: None,
            peer_id: None,
            up: Link::new(self.stream(), seed, self.now),
            down: Link::new(self.stream(), seed + 1, self.now),
            calls: BTreeMap::new(),
            tracks,
            track_meta: Arc::new(Mutex::new(HashMap::new())),
            next_port: 40000,
            next_request: 0,
            join_request: None,
            redial_at: None,
            log: Vec::new(),
            server_errors: Vec::new(),
            acks: 0,
            dtls_stalls: 0,
        };
        peer.up.send(self.now, Up::Dial, 300);
        self.peers.push(peer);
        i
    }

    /// Peer `i`'s WebSocket breaks now (a NAT rebinding, a Wi-Fi handover): both ends see
    /// it close, what was in flight is lost, and the peer dials again after a short delay.
    pub(crate) fn break_signalling(&mut self, i: usize) {
        let seed = self.seed * 1000 + i as u64 * 10 + 5;
        let (up, down) = (
            Link::new(self.stream(), seed, self.now),
            Link::new(self.stream(), seed + 1, self.now),
        );
        let now_ms = self.now_ms();
        let p = &mut self.peers[i];
        if let Some((conn, _)) = p.server.take() {
            self.hub.disconnect(conn, now_ms);
        }
        p.up = up;
        p.down = down;
        p.core
            .handle_disconnected(Some(1006), "connection lost", true);
        p.redial_at = Some(self.now + RECONNECT_DELAY);
        self.act(i);
    }

    /// Peer `i` leaves the room (unsubscribes) and closes its connections.
    pub(crate) fn leave(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let request = format!("r{}", p.next_request);
        p.next_request += 1;
        p.up.send(
            self.now,
            Up::Frame(wire::unsubscribe(CHANNEL, &request)),
            100,
        );
        p.core.leave();
        self.act(i);
    }

    fn peer_id(&self, i: usize) -> &str {
        self.peers[i].peer_id.as_deref().unwrap_or("?")
    }

    fn call(&self, i: usize, j: usize) -> Option<&Call> {
        let remote = self.peers[j].peer_id.as_deref()?;
        self.peers[i].calls.get(remote)
    }

    fn connected(&self, i: usize, j: usize) -> bool {
        self.call(i, j)
            .is_some_and(|c| c.conn.state() == PeerConnectionState::Connected)
    }

    /// Whether every pair among `peers` has a connected call, both ways.
    fn mesh_up(&self, peers: &[usize]) -> bool {
        peers.iter().all(|&i| {
            peers
                .iter()
                .all(|&j| i == j || (self.connected(i, j) && self.connected(j, i)))
        })
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.elapsed().as_millis() as u64
    }

    fn send_frame(&mut self, i: usize, text: String) {
        let size = text.len();
        self.peers[i].up.send(self.now, Up::Frame(text), size);
    }

    fn subscribe(&mut self, i: usize) {
        let p = &mut self.peers[i];
        let request = format!("r{}", p.next_request);
        p.next_request += 1;
        p.join_request = Some(request.clone());
        self.send_frame(i, wire::subscribe(CHANNEL, &request, false));
    }

    /// Open (or re-open, after a reset) the call from peer `i` to `remote`.
    fn open_call(&mut self, i: usize, remote: &str) {
        let now = self.now;
        let p = &mut self.peers[i];
        let Some(local) = p.peer_id.clone() else {
            return;
        };
        let addr = SocketAddr::new(p.ip, p.next_port);
        p.next_port += 1;
        let (signals, _) = mpsc::channel(1);
        let (media_tx, media_rx) = mpsc::channel(256);
        let params = ConnParams {
            id: u64::from(p.next_port),
            remote_id: remote.to_owned(),
            polite: is_polite(&local, remote),
            bind_ip: p.ip,
            events: EventSender::new(16),
            signals,
            track_meta: p.track_meta.clone(),
            turn: Vec::new(),
            relay_only: false,
            turn_tls: None,
            lost_offers: 0,
        };
        let conn = Conn::new(
            params,
            addr,
            media_tx,
            Arc::new(Notify::new()),
            p.tracks.clone(),
            now,
        );
        p.calls.insert(
            remote.to_owned(),
            Call {
                conn,
                media: media_rx,
                states: Vec::new(),
                remote_tracks: Vec::new(),
                offers: 0,
                answers: 0,
            },
        );
    }

    /// Act on what peer `i`'s room core decided, as the room driver does.
    fn act(&mut self, i: usize) {
        while let Some(o) = self.peers[i].core.poll_output() {
            match o {
                Output::Event(e) => {
                    let p = &mut self.peers[i];
                    match e {
                        RoomEvent::PeerJoined { peer_id, .. } => {
                            p.log.push(format!("+{peer_id}"));
                            self.open_call(i, &peer_id);
                        }
                        RoomEvent::ConnectionReset { peer_id } => {
                            p.log.push(format!("reset {peer_id}"));
                            lock(&p.track_meta).remove(&peer_id);
                            self.open_call(i, &peer_id);
                        }
                        RoomEvent::PeerLeft { peer_id } => {
                            p.log.push(format!("-{peer_id}"));
                            lock(&p.track_meta).remove(&peer_id);
                            p.calls.remove(&peer_id);
                        }
                        RoomEvent::Fatal(err) => p.log.push(format!("fatal {err}")),
                        _ => {}
                    }
                }
                Output::Signal { peer_id, signal } => {
                    let now = self.now;
                    if let Some(call) = self.peers[i].calls.get_mut(&peer_id) {
                        call.conn.handle_command(now, Command::Signal(signal));
                    }
                }
                Output::TrackMeta { peer_id, meta } => {
                    lock(&self.peers[i].track_meta)
                        .entry(peer_id)
                        .or_default()
                        .apply(meta);
                }
                Output::Resubscribe => self.subscribe(i),
            }
        }
    }

    /// A frame from the server reaches peer `i`, as the signalling client parses it.
    fn on_server_frame(&mut self, i: usize, frame: Down) {
        let now = self.now;
        let text = match frame {
            Down::Frame(text) => text,
            Down::Closed(code) => {
                let p = &mut self.peers[i];
                if p.server.take().is_some() || p.redial_at.is_none() {
                    p.core.handle_disconnected(Some(code), "closed", true);
                    p.redial_at = Some(now + RECONNECT_DELAY);
                }
                self.act(i);
                return;
            }
        };
        let event = match parse_server_frame(&text) {
            Ok(e) => e,
            Err(e) => panic!("seed {}: the server sent a malformed frame: {e}", self.seed),
        };
        let p = &mut self.peers[i];
        match event {
            ServerEvent::Welcome { peer_id, .. } => {
                p.peer_id = Some(peer_id.clone());
                let rejoin = p.core.state() == RoomState::Reconnecting;
                p.core.handle_connected(&peer_id, now);
                if rejoin {
                    // The signalling client re-subscribes its channels after a reconnect.
                    self.subscribe(i);
                } else if p.core.state() == RoomState::Idle {
                    p.core.join_started(CHANNEL);
                    self.subscribe(i);
                }
            }
            ServerEvent::Ack { request_id } => {
                if p.join_request.as_deref() == Some(request_id.as_str()) {
                    p.join_request = None;
                    p.core.join_acked();
                } else {
                    p.acks += 1;
                }
            }
            ServerEvent::Error {
                code, request_id, ..
            } => {
                p.server_errors.push(code.clone());
                match request_id {
                    Some(r) if p.join_request.as_deref() == Some(r.as_str()) => {
                        p.join_request = None;
                        p.core.join_failed();
                    }
                    Some(_) => {}
                    None => p.core.handle_server_error(&code),
                }
            }
            ServerEvent::Presence {
                channel,
                joined,
                left,
            } => p.core.handle_presence(&channel, &joined, &left),
            ServerEvent::Message {
                channel,
                from,
                data,
                from_metadata,
            } => p
                .core
                .handle_message(&channel, &from, Arc::from(data), from_metadata),
            ServerEvent::Direct {
                from,
                data,
                from_metadata,
            } => p.core.handle_direct(&from, Arc::from(data), from_metadata),
            _ => {}
        }
        self.act(i);
    }

    /// A frame from peer `i` reaches the server.
    fn on_client_frame(&mut self, i: usize, up: Up) {
        let now_ms = self.now_ms();
        match up {
            Up::Dial => {
                let grant = self
                    .auth
                    .authenticate(Some("key=pk_sim"), now_ms / 1000)
                    .expect("the dev key authenticates");
                let c = self.hub.connect(grant, now_ms).expect("the server accepts");
                self.peers[i].server = Some((c.conn, c.outbox));
            }
            Up::Frame(text) => {
                let Some((conn, _)) = self.peers[i].server.clone() else {
                    return; // the socket is gone
                };
                match parse_client_frame(&text) {
                    Ok(f) => self.hub.handle(conn, f, now_ms),
                    Err(e) => self.hub.reject(conn, &e),
                }
            }
        }
    }

    /// Move what every outbox holds onto the peers' down streams.
    fn drain_outboxes(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.peers.len() {
            let Some((conn, outbox)) = self.peers[i].server.clone() else {
                continue;
            };
            let now = self.now;
            match outbox.next().now_or_never() {
                None => {}
                Some(Next::Frames(frames)) => {
                    moved = true;
                    for f in frames {
                        let text = f.to_string();
                        let size = text.len();
                        self.peers[i].down.send(now, Down::Frame(text), size);
                    }
                }
                Some(Next::Close(code, _)) => {
                    moved = true;
                    self.hub.disconnect(conn, self.now_ms());
                    self.peers[i].server = None;
                    self.peers[i].down.send(now, Down::Closed(code.0), 10);
                }
                Some(Next::Kill) => {
                    moved = true;
                    self.hub.disconnect(conn, self.now_ms());
                    self.peers[i].server = None;
                    self.peers[i].down.send(now, Down::Closed(1006), 10);
                }
            }
        }
        moved
    }

    fn media_link(&mut self, from: IpAddr, to: IpAddr) -> &mut Link<Datagram> {
        let (config, seed, now) = (self.net.media.clone(), self.seed, self.now);
        let salt = u64::from(octet(from)) * 256 + u64::from(octet(to));
        self.media
            .entry((from, to))
            .or_insert_with(|| Link::new(config, seed * 100_000 + salt, now))
    }

    /// Settle this instant: move everything that is ready until nothing moves.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            let now = self.now;
            for i in 0..self.peers.len() {
                // The calls: datagrams out, frames in, signals up, events.
                let remotes: Vec<String> = self.peers[i].calls.keys().cloned().collect();
                for remote in remotes {
                    let from_ip = self.peers[i].ip;
                    let mut datagrams = Vec::new();
                    let mut signals = Vec::new();
                    let mut stalls = 0;
                    if let Some(call) = self.peers[i].calls.get_mut(&remote) {
                        let local = call.conn_addr();
                        while let Some((route, data)) = call.conn.poll_transmit() {
                            moved = true;
                            if let Route::Udp(to) = route {
                                datagrams.push((local, to, data));
                            }
                        }
                        while let Ok((id, frame)) = call.media.try_recv() {
                            moved = true;
                            call.conn.handle_frame(now, &id, frame);
                        }
                        while let Some(v) = call.conn.poll_signal() {
                            moved = true;
                            if v.get("type").and_then(Value::as_str) == Some("rtc-description") {
                                match v.pointer("/description/type") {
                                    Some(t) if t == "offer" => call.offers += 1,
                                    _ => call.answers += 1,
                                }
                            }
                            signals.push(v);
                        }
                        while let Some(e) = call.conn.poll_event() {
                            match e {
                                RoomEvent::NegotiationError { message, .. }
                                    if message.starts_with("DTLS handshake") =>
                                {
                                    stalls += 1;
                                }
                                RoomEvent::ConnectionState { state, .. } => call.states.push(state),
                                RoomEvent::Track { track, .. } => call.remote_tracks.push(track),
                                _ => {}
                            }
                        }
                    }
                    self.peers[i].dtls_stalls += stalls;
                    for (local, to, data) in datagrams {
                        let size = data.len();
                        self.media_link(from_ip, to.ip())
                            .send(now, (local, to, data), size);
                    }
                    for v in signals {
                        let p = &mut self.peers[i];
                        let request = format!("s{}", p.next_request);
                        p.next_request += 1;
                        let raw = serde_json::value::to_raw_value(&v).expect("json");
                        let text = wire::send(&remote, &raw, &request);
                        self.send_frame(i, text);
                    }
                }
                // Up the WebSocket to the server.
                while let Some((_, up)) = self.peers[i].up.poll(now) {
                    moved = true;
                    self.on_client_frame(i, up);
                }
            }
            moved |= self.drain_outboxes();
            for i in 0..self.peers.len() {
                while let Some((_, down)) = self.peers[i].down.poll(now) {
                    moved = true;
                    self.on_server_frame(i, down);
                }
            }
            // Datagrams that have arrived, to the call bound to their address.
            let keys: Vec<(IpAddr, IpAddr)> = self.media.keys().copied().collect();
            for key in keys {
                while let Some((_, (from, to, data))) =
                    self.media.get_mut(&key).and_then(|l| l.poll(now))
                {
                    moved = true;
                    if let Some(p) = self.peers.iter_mut().find(|p| p.ip == to.ip())
                        && let Some(call) = p.calls.values_mut().find(|c| c.conn_addr() == to)
                    {
                        call.conn.handle_datagram(now, from, &data);
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// One step: settle this instant, jump to the next deadline, fire what is due.
    fn step(&mut self) {
        self.exchange();
        let mut next: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for p in &self.peers {
            at(p.up.poll_timeout());
            at(p.down.poll_timeout());
            at(p.core.poll_timeout());
            at(p.redial_at);
            for c in p.calls.values() {
                at(Some(c.conn.poll_timeout()));
            }
        }
        for l in self.media.values() {
            at(l.poll_timeout());
        }
        self.now = next.map_or(self.now + Duration::from_millis(10), |t| {
            t.max(self.now + Duration::from_micros(100))
        });
        let now = self.now;
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            for c in p.calls.values_mut() {
                if c.conn.poll_timeout() <= now {
                    c.conn.handle_timeout(now);
                }
            }
            if p.core.poll_timeout().is_some_and(|t| t <= now) {
                p.core.handle_timeout(now);
                self.act(i);
            }
            let p = &mut self.peers[i];
            if p.redial_at.is_some_and(|t| t <= now) {
                p.redial_at = None;
                p.up.send(now, Up::Dial, 300);
            }
        }
    }

    /// Run until `done` holds or `limit` of simulated time has passed; whether it held.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&RoomSim) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn explain(&self) -> String {
        let mut s = format!("seed {} at {:?}:", self.seed, self.elapsed());
        for (i, p) in self.peers.iter().enumerate() {
            s.push_str(&format!(
                "\n  peer {i} {} {:?}, log {:?}, errors {:?}",
                self.peer_id(i),
                p.core.state(),
                p.log,
                p.server_errors
            ));
            let mut calls: Vec<_> = p.calls.iter().collect();
            calls.sort_by(|a, b| a.0.cmp(b.0));
            for (remote, c) in calls {
                s.push_str(&format!(
                    "\n    → {remote}: {:?}, offers {} answers {}; {}",
                    c.states,
                    c.offers,
                    c.answers,
                    c.conn.describe()
                ));
            }
        }
        s
    }
}

impl Call {
    fn conn_addr(&self) -> SocketAddr {
        self.conn.local_addr()
    }
}

fn octet(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Offers (and answers) each peer made on its calls, summed over every pair.
fn descriptions(sim: &RoomSim) -> (u32, u32) {
    sim.peers
        .iter()
        .flat_map(|p| p.calls.values())
        .fold((0, 0), |(o, a), c| (o + c.offers, a + c.answers))
}

#[test]
fn three_peers_meet_through_the_server_and_every_pair_connects_once() {
    for rtt in [0u64, 100, 200] {
        let mut sim = RoomSim::new(
            1,
            Net {
                media: delayed(10),
                signalling: delayed(rtt / 2),
            },
        );
        for _ in 0..3 {
            sim.add_peer(Vec::new());
        }
        let up = sim.run_until(Duration::from_secs(10), |s| s.mesh_up(&[0, 1, 2]));
        assert!(up, "rtt {rtt}: {}", sim.explain());
        // The protocol's minimum: dial + welcome, subscribe + snapshot, an offer and an
        // answer each relayed by the server (four signalling round trips), then ICE and
        // DTLS over the 20 ms media round trip (70 ms here): 470 ms at 100 ms RTT.
        assert!(
            sim.elapsed() <= ms(4 * rtt + 100),
            "rtt {rtt}: {}",
            sim.explain()
        );
        // One offer and one answer per pair; nothing refused by the server.
        assert_eq!(descriptions(&sim), (3, 3), "rtt {rtt}: {}", sim.explain());
        for p in &sim.peers {
            assert!(p.server_errors.is_empty(), "{}", sim.explain());
            assert_eq!(p.log.len(), 2, "{}", sim.explain());
        }
    }
}

#[test]
fn a_late_joiner_meets_everyone_from_the_snapshot() {
    let mut sim = RoomSim::new(
        2,
        Net {
            media: delayed(10),
            signalling: delayed(40),
        },
    );
    sim.add_peer(Vec::new());
    sim.add_peer(Vec::new());
    assert!(sim.run_until(Duration::from_secs(5), |s| s.mesh_up(&[0, 1])));
    let joined_at = sim.now;
    sim.add_peer(Vec::new());
    let up = sim.run_until(Duration::from_secs(10), |s| s.mesh_up(&[0, 1, 2]));
    assert!(up, "{}", sim.explain());
    assert!(sim.now - joined_at < ms(800), "{}", sim.explain());
    assert_eq!(descriptions(&sim), (3, 3), "{}", sim.explain());
}

#[test]
fn audio_from_one_peer_reaches_everyone_over_lossy_links() {
    for seed in 1..=3 {
        let track = LocalTrack::audio();
        let mut sim = RoomSim::new(
            seed,
            Net {
                media: LinkConfig {
                    delay: ms(30),
                    jitter: ms(30),
                    loss: Loss::Random(0.05),
                    ..LinkConfig::default()
                },
                signalling: LinkConfig {
                    delay: ms(50),
                    jitter: ms(30),
                    ..LinkConfig::default()
                },
            },
        );
        sim.add_peer(vec![track.clone()]);
        sim.add_peer(Vec::new());
        sim.add_peer(Vec::new());
        let up = sim.run_until(Duration::from_secs(20), |s| s.mesh_up(&[0, 1, 2]));
        assert!(up, "{}", sim.explain());
        let mut got = [0usize; 3];
        for _ in 0..250 {
            track.push(EncodedFrame::opus(vec![0xf8, 0xff, 0xfe]).expect("opus"));
            sim.run_until(ms(20), |_| false);
            for (j, n) in got.iter_mut().enumerate().skip(1) {
                if let Some(t) = sim.call(j, 0).and_then(|c| c.remote_tracks.first()) {
                    while let Some(Some(_)) = t.recv().now_or_never() {
                        *n += 1;
                    }
                }
            }
        }
        // Each listener gets the frames its own lossy link delivered (5 % lost, give or
        // take), through the jitter buffer.
        for (j, n) in got.iter().enumerate().skip(1) {
            assert!(
                (200..=250).contains(n),
                "seed {seed}: listener {j} got {n} of 250 frames; {}",
                sim.explain()
            );
        }
    }
}

#[test]
fn a_peer_that_leaves_is_gone_for_everyone_and_the_others_stay_up() {
    let mut sim = RoomSim::new(
        4,
        Net {
            media: delayed(10),
            signalling: delayed(30),
        },
    );
    for _ in 0..3 {
        sim.add_peer(Vec::new());
    }
    assert!(sim.run_until(Duration::from_secs(10), |s| s.mesh_up(&[0, 1, 2])));
    let gone = sim.peer_id(2).to_owned();
    sim.leave(2);
    let left = sim.run_until(Duration::from_secs(2), |s| {
        (0..2).all(|i| s.peers[i].calls.len() == 1)
    });
    assert!(left, "{}", sim.explain());
    for i in 0..2 {
        assert_eq!(sim.peers[i].log.last(), Some(&format!("-{gone}")));
    }
    // The remaining call was never touched.
    sim.run_until(Duration::from_secs(5), |_| false);
    assert!(sim.mesh_up(&[0, 1]), "{}", sim.explain());
    assert_eq!(
        sim.call(0, 1).map(|c| c.states.clone()),
        Some(vec![PeerConnectionState::Connected])
    );
}

#[test]
fn a_broken_websocket_rejoins_and_every_call_is_rebuilt_once() {
    for seed in 1..=3 {
        let mut sim = RoomSim::new(
            seed,
            Net {
                media: delayed(20),
                signalling: LinkConfig {
                    delay: ms(40),
                    jitter: ms(20),
                    ..LinkConfig::default()
                },
            },
        );
        for _ in 0..3 {
            sim.add_peer(Vec::new());
        }
        assert!(sim.run_until(Duration::from_secs(10), |s| s.mesh_up(&[0, 1, 2])));
        let old = sim.peer_id(0).to_owned();
        sim.break_signalling(0);
        // Peer 0 dials again and gets a new id; the others see the old one leave and the
        // new one join, and call it afresh. Peer 0 keeps its remote peers (Reconnecting),
        // finds them in the snapshot and rebuilds each connection exactly once.
        let back = sim.run_until(Duration::from_secs(15), |s| {
            s.peer_id(0) != old && s.mesh_up(&[0, 1, 2])
        });
        assert!(back, "seed {seed}: {}", sim.explain());
        let p0 = &sim.peers[0];
        let resets = p0.log.iter().filter(|l| l.starts_with("reset")).count();
        assert_eq!(resets, 2, "seed {seed}: {}", sim.explain());
        assert!(
            !p0.log.iter().any(|l| l.starts_with('-')),
            "{}",
            sim.explain()
        );
        for i in 1..3 {
            let log = &sim.peers[i].log;
            assert!(log.contains(&format!("-{old}")), "{}", sim.explain());
            assert!(
                log.contains(&format!("+{}", sim.peer_id(0))),
                "{}",
                sim.explain()
            );
        }
        // The call between the two others never noticed.
        assert_eq!(
            sim.call(1, 2).map(|c| c.states.clone()),
            Some(vec![PeerConnectionState::Connected])
        );
        assert!(sim.elapsed() < Duration::from_secs(8), "{}", sim.explain());
    }
}

#[test]
fn meshes_come_up_for_every_seed_over_lossy_links() {
    let seeds: Vec<u64> = std::env::var("SIM_SEEDS")
        .ok()
        .map_or((1..=10).collect(), |v| {
            let (a, b) = v.split_once("..").expect("a..b");
            (a.parse().expect("seed")..b.parse().expect("seed")).collect()
        });
    for seed in seeds {
        let mut sim = RoomSim::new(
            seed,
            Net {
                media: LinkConfig {
                    delay: ms(30),
                    jitter: ms(40),
                    loss: Loss::Random(0.1),
                    duplicate: 0.02,
                    ..LinkConfig::default()
                },
                signalling: LinkConfig {
                    delay: ms(60),
                    jitter: ms(40),
                    ..LinkConfig::default()
                },
            },
        );
        for _ in 0..4 {
            sim.add_peer(Vec::new());
        }
        let up = sim.run_until(Duration::from_secs(30), |s| s.mesh_up(&[0, 1, 2, 3]));
        assert!(up, "{}", sim.explain());
        if std::env::var_os("SIM_REPORT").is_some() {
            let stalls: u32 = sim.peers.iter().map(|p| p.dtls_stalls).sum();
            eprintln!(
                "mesh seed {seed}: up at {} ms, {stalls} DTLS stalls",
                sim.elapsed().as_millis()
            );
        }
        for p in &sim.peers {
            assert!(p.server_errors.is_empty(), "{}", sim.explain());
        }
    }
}
