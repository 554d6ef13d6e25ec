//! One WebRTC connection to one remote peer: `core::Conn`, a sans-IO state machine that
//! owns the str0m `Rtc`, the negotiation, the ICE-restart ladder, TURN clients, tracks and
//! channels (time and input passed in, datagrams polled out), and a thin tokio task here
//! that drives it with a UDP socket, TURN streams, the room's commands and one timer.
//! Every negotiation decision comes from the pure rules in [`crate::rtc`].
//!
//! Offer timing: the polite side offers at once ([`POLITE_OFFER_DELAY`]); if the remote
//! offers too, the polite side rolls its own back, which str0m does cleanly. The impolite side
//! waits [`IMPOLITE_OFFER_DELAY`] for the remote's offer before offering itself: a polite
//! browser offers 40–250 ms after `peer-joined`, and offering into it would make the browser
//! roll back an offer carrying a data channel, which Chromium does not survive (see
//! `docs/decisions/webrtc-stack.md`).

pub(crate) mod core;
pub mod data_channel;
pub(crate) mod relay;
#[cfg(test)]
pub(crate) mod sim;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::events::EventSender;

use self::core::{Conn, ResolvedTarget};
use self::data_channel::DataChannel;
use self::relay::{Link, Route, TurnTarget};
use crate::room::RoomEvent;
use crate::rtc::signal::Inbound;
use crate::rtc::track_cache::TrackMetaCache;
use crate::track::{EncodedFrame, LocalTrack, OUTBOUND_BUFFER};

/// How long the impolite side waits for the remote's first offer before offering itself.
/// Polite Chromium pages offered 85–216 ms after the connection started in the interop
/// suite, and once ~250 ms (relay-only, on a loaded machine), which a 250 ms wait lost.
pub const IMPOLITE_OFFER_DELAY: Duration = Duration::from_millis(500);
/// How long the polite side waits before its first offer: none (glare costs it only a
/// rollback).
pub const POLITE_OFFER_DELAY: Duration = Duration::from_millis(0);
/// An offer unanswered this long is rolled back and made again.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Offers a connection makes on its own (initial, follow-ups, retries) without the
/// negotiation settling before it gives up (ICE restarts are bounded by their ladder).
pub const MAX_AUTO_OFFERS: u32 = 8;
/// How long `create_data_channel` waits for the channel to open.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// First SCTP stream id used for the hidden out-of-band channel that puts `m=application` in
/// our offers (no DCEP is sent for it, so the remote application never sees it).
const HIDDEN_STREAM_BASE: u16 = 1023;

/// A connection's state, as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerConnectionState {
    /// Negotiating / checking connectivity.
    Connecting,
    /// ICE and DTLS are up; media and data flow.
    Connected,
    /// Connectivity was lost; the ICE-restart ladder is running.
    Disconnected,
    /// The ICE-restart ladder is exhausted.
    Failed,
    /// Closed (the peer left, or the room closed).
    Closed,
}

/// Errors of connection calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The connection is closed (or being replaced after a reset).
    #[error("connection closed")]
    Closed,
    /// The data channel did not open within [`CHANNEL_OPEN_TIMEOUT`].
    #[error("data channel did not open in time")]
    ChannelTimeout,
    /// An ICE-restart offer was not answered within the restart answer timeout (15 s).
    #[error("ICE restart not answered in time")]
    RestartTimeout,
    /// The WebRTC stack refused the operation.
    #[error("webrtc: {0}")]
    Rtc(String),
}

pub(crate) struct ConnParams {
    pub(crate) id: u64,
    pub(crate) remote_id: String,
    pub(crate) polite: bool,
    pub(crate) bind_ip: IpAddr,
    /// Where the driver forwards the connection's events ([`Conn::poll_event`]) and signals
    /// ([`Conn::poll_signal`]); the core itself never touches them.
    pub(crate) events: EventSender<RoomEvent>,
    pub(crate) signals: mpsc::Sender<Value>,
    pub(crate) track_meta: Arc<Mutex<HashMap<String, TrackMetaCache>>>,
    /// TURN servers to allocate relayed candidates on.
    pub(crate) turn: Vec<TurnTarget>,
    /// Announce and use relayed candidates only (`iceTransportPolicy: "relay"`).
    pub(crate) relay_only: bool,
    /// TLS client configuration for `turns:` servers.
    pub(crate) turn_tls: Option<Arc<rustls::ClientConfig>>,
    /// Test hook: the first this-many offers are never sent.
    pub(crate) lost_offers: u32,
}

pub(crate) enum Command {
    Signal(Inbound),
    AddTrack(LocalTrack),
    RemoveTrack(String),
    CreateChannel {
        label: String,
        reply: oneshot::Sender<Result<DataChannel, ConnectionError>>,
    },
    RestartIce {
        reply: oneshot::Sender<Result<(), ConnectionError>>,
    },
    /// Fault injection: drop every datagram in and out until then (a network outage).
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    Blackhole(Instant),
    /// Fault injection: drop this fraction of outbound RTP.
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    DropRtp(f32),
    /// Fault injection: every datagram we send goes through this simulated link (loss,
    /// jitter, reordering…), seeded.
    #[cfg(feature = "fault-injection")]
    Impair(parlor_netsim::LinkConfig, u64),
}

/// The room's handle on a connection task; dropping it closes the connection.
pub(crate) struct ConnHandle {
    cmd: mpsc::UnboundedSender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").finish_non_exhaustive()
    }
}

impl ConnHandle {
    pub(crate) fn send(&self, c: Command) -> bool {
        self.cmd.send(c).is_ok()
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bind the socket and start the connection task.
pub(crate) fn spawn(p: ConnParams, tracks: Vec<LocalTrack>) -> std::io::Result<ConnHandle> {
    let std_sock = std::net::UdpSocket::bind(SocketAddr::new(p.bind_ip, 0))?;
    std_sock.set_nonblocking(true)?;
    let sock = UdpSocket::from_std(std_sock)?;
    let local = sock.local_addr()?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (media_tx, media_rx) = mpsc::channel(OUTBOUND_BUFFER);
    let turn = p.turn.clone();
    let tls = p.turn_tls.clone();
    let flush = Arc::new(Notify::new());
    let (events, signals, remote_id) = (p.events.clone(), p.signals.clone(), p.remote_id.clone());
    let conn = Conn::new(p, local, media_tx, flush.clone(), tracks, Instant::now());
    let (turn_tx, turn_rx) = mpsc::unbounded_channel();
    let (stream_tx, stream_rx) = mpsc::channel(STREAM_QUEUE);
    if !turn.is_empty() {
        tokio::spawn(resolve_turn(turn, local, tls, turn_tx, stream_tx));
    }
    let driver = Driver {
        conn,
        events,
        signals,
        remote_id,
        sock: Arc::new(sock),
        turn_streams: HashMap::new(),
        blackhole_until: None,
        #[cfg(feature = "fault-injection")]
        impair: None,
    };
    let task = tokio::spawn(run(driver, flush, cmd_rx, media_rx, turn_rx, stream_rx));
    Ok(ConnHandle { cmd: cmd_tx, task })
}

/// Longest wait between STUN retransmissions (and the keepalive period of a working pair).
pub const MAX_STUN_RTO: Duration = Duration::from_millis(1500);
/// STUN retransmissions before a pair counts as dead (about 9 s with [`MAX_STUN_RTO`]).
/// str0m's ICE agent also keeps a pair alive for 15 s after the remote's last binding
/// request, so a lost network is reported (`Disconnected`, which starts the ICE-restart
/// ladder) about 15 s after it went quiet.
pub const MAX_STUN_RETRANSMITS: usize = 7;

/// Due timeouts handled inside one [`Conn::drive`] before yielding to the reactor.
const MAX_INLINE_TIMEOUTS: u32 = 8;

/// A TURN server ready for an allocation (or not usable: `None`).
type Resolved = Option<(SocketAddr, TurnTarget, Option<TurnStream>)>;

/// A connected TCP/TLS stream to a TURN server, run by its own task.
struct TurnStream {
    /// The stream's local address (the TURN client's 5-tuple).
    local: SocketAddr,
    /// Bytes to write to it.
    writer: mpsc::Sender<Vec<u8>>,
}

/// Bytes a TURN stream read (empty: it closed), by server.
type StreamBytes = (SocketAddr, Vec<u8>);

/// Chunks queued between a TURN stream task and its connection, each way.
const STREAM_QUEUE: usize = 256;
/// Signals (descriptions, candidates) a connection may have queued for its sender: far more
/// than a negotiation makes (the sender does not wait for acks); see `signal` for overflow.
pub(crate) const SIGNAL_QUEUE: usize = 256;

/// Resolve the TURN servers' names and, for TCP/TLS ones, connect (each in parallel,
/// [`RESOLVE_TIMEOUT`] and [`CONNECT_TIMEOUT`] at most); every target yields one message.
async fn resolve_turn(
    targets: Vec<TurnTarget>,
    local: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    out: mpsc::UnboundedSender<Resolved>,
    streams: mpsc::Sender<StreamBytes>,
) {
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        let (tls, streams) = (tls.clone(), streams.clone());
        set.spawn(async move {
            let lookup = tokio::net::lookup_host((t.host.as_str(), t.port));
            let addr = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(mut addrs)) => addrs.find(|a| a.is_ipv4() == local.is_ipv4()),
                Ok(Err(e)) => {
                    tracing::warn!(host = %t.host, error = %e, "cannot resolve the TURN server");
                    None
                }
                Err(_) => {
                    tracing::warn!(host = %t.host, "resolving the TURN server timed out");
                    None
                }
            }?;
            if t.link == Link::Udp {
                return Some((addr, t, None));
            }
            let connect = connect_stream(&t, addr, local.ip(), tls, streams);
            match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(stream)) => Some((addr, t, Some(stream))),
                Ok(Err(e)) => {
                    tracing::warn!(host = %t.host, link = ?t.link, error = %e, "cannot reach the TURN server");
                    None
                }
                Err(_) => {
                    tracing::warn!(host = %t.host, link = ?t.link, "connecting to the TURN server timed out");
                    None
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        let _ = out.send(r.ok().flatten());
    }
}

/// Connect a TCP (and, for `turns:`, TLS) stream to a TURN server and start its task.
async fn connect_stream(
    t: &TurnTarget,
    addr: SocketAddr,
    bind: IpAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    reads: mpsc::Sender<StreamBytes>,
) -> std::io::Result<TurnStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Same interface as the UDP socket, unless the server is on loopback and we are not.
    let loopback_mismatch = addr.ip().is_loopback() && !bind.is_loopback();
    if bind.is_ipv4() == addr.is_ipv4() && !loopback_mismatch {
        socket.bind(SocketAddr::new(bind, 0))?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let local = tcp.local_addr()?;
    let (writer, writes) = mpsc::channel(STREAM_QUEUE);
    if t.link == Link::Tls {
        let config = tls.ok_or_else(|| std::io::Error::other("no TLS configuration"))?;
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        tokio::spawn(run_stream(stream, addr, writes, reads));
    } else {
        tokio::spawn(run_stream(tcp, addr, writes, reads));
    }
    Ok(TurnStream { local, writer })
}

/// Move bytes between a TURN stream and its connection until either side ends.
async fn run_stream<S>(
    stream: S,
    server: SocketAddr,
    mut writes: mpsc::Receiver<Vec<u8>>,
    reads: mpsc::Sender<StreamBytes>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            w = writes.recv() => match w {
                Some(data) => {
                    if wr.write_all(&data).await.is_err() {
                        let _ = reads.send((server, Vec::new())).await;
                        return;
                    }
                }
                None => return,
            },
            r = rd.read(&mut buf) => match r {
                Ok(n) if n > 0 => {
                    if reads.send((server, buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                _ => {
                    let _ = reads.send((server, Vec::new())).await;
                    return;
                }
            },
        }
    }
}

/// How long a TURN server's name may take to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP/TLS connection to a TURN server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The IO side of a connection: the socket, the TURN streams' writers, and the network
/// fault hook; everything else is [`Conn`]'s.
struct Driver {
    conn: Conn,
    /// The room's event bus, and the queue of this connection's signal sender.
    events: EventSender<RoomEvent>,
    signals: mpsc::Sender<Value>,
    remote_id: String,
    sock: Arc<UdpSocket>,
    /// Writers of the TCP/TLS streams to TURN servers.
    turn_streams: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    /// Test hook ([`Command::Blackhole`]): every datagram in and out is dropped until then.
    blackhole_until: Option<Instant>,
    /// Test hook ([`Command::Impair`]): outbound datagrams through a simulated link.
    #[cfg(feature = "fault-injection")]
    impair: Option<parlor_netsim::Link<(Route, Vec<u8>)>>,
}

impl Driver {
    fn blackholed(&self) -> bool {
        self.blackhole_until.is_some_and(|t| Instant::now() < t)
    }

    /// Hand the connection's events to the room and its signals to the sender.
    fn forward(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            self.events.send(e);
        }
        while let Some(v) = self.conn.poll_signal() {
            match self.signals.try_send(v) {
                Ok(()) => {}
                // The sender is gone with the room or the remote: nothing to send to.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
                // Overflow policy: the signal is dropped and reported, never silently (a lost
                // candidate costs one path; a lost description is recovered by the answer
                // watchdog's ICE restart).
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let message = format!(
                        "signalling queue full ({SIGNAL_QUEUE} signals waiting): one dropped"
                    );
                    tracing::warn!(peer = %self.remote_id, %message, "negotiation error");
                    self.events.send(RoomEvent::NegotiationError {
                        peer_id: self.remote_id.clone(),
                        message,
                    });
                }
            }
        }
    }

    /// Send what the connection queued: events and signals on their queues, datagrams on
    /// the socket, bytes to the streams (dropped when a stream's queue is full, as a
    /// congested link would).
    async fn flush(&mut self) {
        self.forward();
        while let Some((route, data)) = self.conn.poll_transmit() {
            if self.blackholed() {
                continue;
            }
            #[cfg(feature = "fault-injection")]
            if let Some(link) = &mut self.impair {
                let size = data.len();
                link.send(Instant::now(), (route, data), size);
                continue;
            }
            self.send(route, data).await;
        }
        #[cfg(feature = "fault-injection")]
        while let Some((_, (route, data))) =
            self.impair.as_mut().and_then(|l| l.poll(Instant::now()))
        {
            self.send(route, data).await;
        }
    }

    /// When the impairing link next delivers a datagram.
    fn impair_deadline(&self) -> Option<Instant> {
        #[cfg(feature = "fault-injection")]
        if let Some(link) = &self.impair {
            return link.poll_timeout();
        }
        None
    }

    async fn send(&self, route: Route, data: Vec<u8>) {
        match route {
            Route::Udp(to) => {
                if let Err(e) = self.sock.send_to(&data, to).await {
                    tracing::debug!(error = %e, "udp send");
                }
            }
            Route::Stream(server) => {
                if let Some(w) = self.turn_streams.get(&server) {
                    let _ = w.try_send(data);
                }
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Release the TURN allocations (best effort: one datagram each, not retried); the
        // remote tracks end and `Closed` is reported.
        self.conn.close(Instant::now());
        self.forward();
        while let Some((route, data)) = self.conn.poll_transmit() {
            match route {
                Route::Udp(to) => {
                    let _ = self.sock.try_send_to(&data, to);
                }
                Route::Stream(server) => {
                    if let Some(w) = self.turn_streams.get(&server) {
                        let _ = w.try_send(data);
                    }
                }
            }
        }
    }
}

async fn run(
    mut d: Driver,
    flush: Arc<Notify>,
    mut cmd_rx: mpsc::UnboundedReceiver<Command>,
    mut media_rx: mpsc::Receiver<(Arc<str>, EncodedFrame)>,
    mut turn_rx: mpsc::UnboundedReceiver<Resolved>,
    mut stream_rx: mpsc::Receiver<StreamBytes>,
) {
    let mut buf = vec![0u8; 2048];
    let sock = d.sock.clone();
    // One timer, moved only when the deadline changes (no timer churn per packet).
    let sleep = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        d.flush().await;
        let wake = d
            .impair_deadline()
            .map_or(d.conn.poll_timeout(), |t| t.min(d.conn.poll_timeout()));
        if armed != Some(wake) {
            armed = Some(wake);
            sleep.as_mut().reset(tokio::time::Instant::from_std(wake));
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok((n, source)) => {
                    if !d.blackholed() {
                        d.conn.handle_datagram(Instant::now(), source, &buf[..n]);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "udp recv"),
            },
            cmd = cmd_rx.recv() => match cmd {
                Some(Command::Blackhole(until)) => d.blackhole_until = Some(until),
                #[cfg(feature = "fault-injection")]
                Some(Command::Impair(config, seed)) => {
                    d.impair = Some(parlor_netsim::Link::new(config, seed, Instant::now()));
                }
                Some(cmd) => d.conn.handle_command(Instant::now(), cmd),
                None => return,
            },
            Some((track_id, frame)) = media_rx.recv() => {
                d.conn.handle_frame(Instant::now(), &track_id, frame);
            }
            Some(target) = turn_rx.recv() => {
                let target: ResolvedTarget = target.map(|(addr, t, stream)| {
                    let local = stream.map(|s| {
                        d.turn_streams.insert(addr, s.writer);
                        s.local
                    });
                    (addr, t, local)
                });
                d.conn.handle_turn_resolved(Instant::now(), target);
            }
            Some((server, bytes)) = stream_rx.recv() => {
                if !d.blackholed() {
                    d.conn.handle_stream_bytes(Instant::now(), server, &bytes);
                }
                if bytes.is_empty() {
                    d.turn_streams.remove(&server);
                }
            }
            _ = flush.notified() => d.conn.handle_flush(Instant::now()),
            () = &mut sleep => {
                armed = None;
                d.conn.handle_timeout(Instant::now());
            }
        }
    }
}
