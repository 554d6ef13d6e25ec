//! The accept loop and each connection's HTTP phase, before it becomes a WebSocket.
//!
//! Every phase a client controls has a deadline, and a connection that has not upgraded yet
//! holds a slot under a cap per client address and in total (issue #23; docs/reliability.md,
//! "Connection phases"):
//!
//! | phase | limit |
//! |---|---|
//! | TCP accepted → TLS handshake done | `limits.tls_handshake_timeout_ms` |
//! | accepted (or a later request's first byte) → request headers complete | `limits.header_timeout_ms` |
//! | a kept-alive connection between two requests | `limits.http_idle_timeout_ms` |
//! | accepted → upgraded (or closed) | a slot of `limits.max_pending_per_address` and of the total cap |
//! | upgraded → the client's first frame | `limits.first_frame_timeout_ms` (in `conn`) |
//!
//! So sockets that connect and send nothing, trickle their headers or idle after one request
//! cannot hold the descriptors other clients need. The deadlines live in [`Phase`], a pure
//! state machine the driver feeds with `now`; this file's IO is the accept loop and one task
//! per connection running hyper.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tower_service::Service;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::tls::TlsAcceptor;

/// Where a connection's HTTP phase stands. Sans-IO: every transition takes `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for a request's headers to complete, since the accept (or the TLS handshake)
    /// for the first request, or since the first byte of a later one.
    Headers { since: Instant },
    /// A request is being answered (the handlers answer at once; `/v1` hands the socket on).
    Request,
    /// A kept-alive connection between two requests, since the last response.
    Idle { since: Instant },
}

/// The deadlines of [`Phase`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PhaseLimits {
    pub(crate) header: Duration,
    pub(crate) idle: Duration,
}

impl Phase {
    /// When the connection must be closed if nothing changes; `None` while answering.
    pub(crate) fn deadline(self, limits: PhaseLimits) -> Option<Instant> {
        match self {
            Phase::Headers { since } => Some(since + limits.header),
            Phase::Request => None,
            Phase::Idle { since } => Some(since + limits.idle),
        }
    }

    /// Bytes arrived: an idle connection starts its next request's headers.
    pub(crate) fn on_bytes(self, now: Instant) -> Phase {
        match self {
            Phase::Idle { .. } => Phase::Headers { since: now },
            other => other,
        }
    }
}

/// A connection's phase, shared by its IO wrapper, its service and its watchdog (all in one
/// task: the lock is never contended).
#[derive(Debug)]
struct Tracker {
    phase: Mutex<Phase>,
    /// Off once the connection upgraded: the WebSocket keeps the IO wrapper but not the phase.
    tracking: AtomicBool,
    /// The connection became a WebSocket: its close lingers (see [`Tracked`]'s drop).
    upgraded: AtomicBool,
    changed: Notify,
}

impl Tracker {
    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        let next = f(*phase);
        if next != *phase {
            *phase = next;
            self.changed.notify_one();
        }
    }

    fn get(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection's byte stream, noting reads in its [`Tracker`].
///
/// Dropping an upgraded one closes it the way a WebSocket close should end: half-close (our
/// close frame is out), then read and discard what the client still sends until it closes too,
/// for at most [`LINGER`] and [`LINGER_BYTES`]. Closing a socket with unread input makes the
/// kernel reset it, and a client reading our close frame (1009 after an oversized frame, 1002
/// after a protocol error) would see the reset instead.
struct Tracked<IO: AsyncWrite + AsyncRead + Unpin + Send + 'static> {
    io: Option<IO>,
    tracker: Arc<Tracker>,
}

/// How long a closed WebSocket's socket lingers for the client's own close.
const LINGER: Duration = Duration::from_secs(1);
/// Bytes read and dropped while lingering.
const LINGER_BYTES: usize = 1 << 20;

impl<IO: AsyncWrite + AsyncRead + Unpin + Send + 'static> Tracked<IO> {
    fn io(&mut self) -> Pin<&mut IO> {
        // `io` is only taken in `drop`.
        match self.io.as_mut() {
            Some(io) => Pin::new(io),
            None => unreachable!("Tracked used after drop"),
        }
    }
}

impl<IO: AsyncWrite + AsyncRead + Unpin + Send + 'static> Drop for Tracked<IO> {
    fn drop(&mut self) {
        if !self.tracker.upgraded.load(Ordering::Relaxed) {
            return;
        }
        let (Some(mut io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tokio::time::timeout(LINGER, async {
                let _ = io.shutdown().await;
                let mut buf = [0u8; 4096];
                let mut read = 0;
                while read < LINGER_BYTES {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
            })
            .await;
        });
    }
}

impl<IO: AsyncWrite + AsyncRead + Unpin + Send + 'static> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = self.io().poll_read(cx, buf);
        if buf.filled().len() > before && self.tracker.tracking.load(Ordering::Relaxed) {
            let now = Instant::now();
            self.tracker.update(|p| p.on_bytes(now));
        }
        poll
    }
}

impl<IO: AsyncWrite + AsyncRead + Unpin + Send + 'static> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }
}

/// The key a pending connection is counted under: the IPv4 address, or the IPv6 /64 (one
/// host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Which pending cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverCap {
    Total,
    PerAddress,
}

/// Connections accepted and not yet upgraded: counts in total and per address.
#[derive(Debug)]
pub(crate) struct PendingCaps {
    total_cap: usize,
    per_address_cap: usize,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One pending connection's slot; freed on drop (upgrade, close or timeout).
#[derive(Debug)]
pub(crate) struct PendingSlot {
    caps: Arc<PendingCaps>,
    key: IpAddr,
}

impl PendingCaps {
    pub(crate) fn new(total_cap: usize, per_address_cap: usize) -> Arc<PendingCaps> {
        Arc::new(PendingCaps {
            total_cap,
            per_address_cap,
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a connection from `ip`, or which cap is full.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, OverCap> {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *counts;
        if *total >= self.total_cap {
            return Err(OverCap::Total);
        }
        let n = per.entry(key).or_insert(0);
        if *n >= self.per_address_cap {
            return Err(OverCap::PerAddress);
        }
        *n += 1;
        *total += 1;
        Ok(PendingSlot {
            caps: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.caps.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(n) = per.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.key);
            }
        }
    }
}

/// The process's open-file limit (the soft `RLIMIT_NOFILE`), from `/proc/self/limits`.
pub(crate) fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The client a request comes from: the TCP peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one (read from the right, as each proxy
/// appends the address it saw).
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer.ip();
    if !is_trusted(&client) {
        return client;
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A hop that is not an address ends what can be believed.
            Err(_) => break,
        }
    }
    client
}

/// What the accept loop needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    tls_handshake: Duration,
    phase: PhaseLimits,
    total_cap: usize,
    per_address_cap: usize,
}

impl Settings {
    pub(crate) fn from_config(config: &Config) -> Settings {
        let l = &config.limits;
        let total_cap = config.max_pending_connections(open_file_limit());
        Settings {
            tls_handshake: Duration::from_millis(l.tls_handshake_timeout_ms),
            phase: PhaseLimits {
                header: Duration::from_millis(l.header_timeout_ms),
                idle: Duration::from_millis(l.http_idle_timeout_ms),
            },
            total_cap,
            per_address_cap: config.max_pending_per_address(total_cap),
        }
    }
}

/// Accept connections on `listener` and serve `router` on each until `shutdown` resolves,
/// then stop accepting and wait for the connections still in their HTTP phase (upgraded
/// WebSockets are the caller's to drain).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let caps = PendingCaps::new(settings.total_cap, settings.per_address_cap);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    let mut last_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the connection waits in
                    // the kernel's backlog. One warning a second at most.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let slot = match caps.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                metrics.pending_refused.inc();
                tracing::debug!(client = %peer.ip(), ?cap, "pending-connection cap: closed at accept");
                continue; // dropping the stream closes it
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            peer,
            router: router.clone(),
            settings: settings.clone(),
            metrics: metrics.clone(),
            stop: stop_rx.clone(),
            _done: done_rx.clone(),
            _slot: slot,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => conn.run(tcp).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(conn.settings.tls_handshake, handshake).await {
                        Ok(Ok(stream)) => conn.run(stream).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer.ip(), error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            conn.metrics.phase_timeouts.inc();
                            tracing::debug!(client = %peer.ip(), "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    drop(done_rx);
    // Every connection task holds a `done` receiver: wait until the last one is gone.
    done_tx.closed().await;
}

/// One accepted connection in its HTTP phase.
struct Connection {
    peer: SocketAddr,
    router: Router,
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    _done: watch::Receiver<()>,
    _slot: PendingSlot,
}

impl Connection {
    async fn run<IO>(mut self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.metrics.pending.inc();
        let tracker = Arc::new(Tracker {
            phase: Mutex::new(Phase::Headers {
                since: Instant::now(),
            }),
            tracking: AtomicBool::new(true),
            upgraded: AtomicBool::new(false),
            changed: Notify::new(),
        });
        let io = TokioIo::new(Tracked {
            io: Some(io),
            tracker: tracker.clone(),
        });
        let peer = self.peer;
        let router = self.router.clone();
        let service_tracker = tracker.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            service_tracker.update(|_| Phase::Request);
            let answer = router.clone().call(req);
            let tracker = service_tracker.clone();
            async move {
                let response = answer.await;
                if response
                    .as_ref()
                    .is_ok_and(|r| r.status() == StatusCode::SWITCHING_PROTOCOLS)
                {
                    tracker.tracking.store(false, Ordering::Relaxed);
                    tracker.upgraded.store(true, Ordering::Relaxed);
                } else {
                    tracker.update(|_| Phase::Idle {
                        since: Instant::now(),
                    });
                }
                response
            }
        });
        let mut conn = pin!(
            hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(io, service)
                .with_upgrades()
        );
        let limits = self.settings.phase;
        let far = Duration::from_secs(3600);
        let mut stopping = false;
        loop {
            let deadline = tracker
                .get()
                .deadline(limits)
                .unwrap_or_else(|| Instant::now() + far);
            let changed = tracker.changed.notified();
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::trace!(client = %peer.ip(), error = %e, "HTTP connection ended");
                    }
                    break;
                }
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if tracker.get().deadline(limits).is_some_and(|d| d <= Instant::now()) {
                        self.metrics.phase_timeouts.inc();
                        tracing::debug!(client = %peer.ip(), phase = ?tracker.get(), "HTTP phase timed out: closing");
                        break; // dropping the connection closes the socket
                    }
                }
                _ = self.stop.changed(), if !stopping => {
                    // Finish what it is answering (the deadlines still apply), then close.
                    conn.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        }
        tracker.tracking.store(false, Ordering::Relaxed);
        self.metrics.pending.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PhaseLimits = PhaseLimits {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(30),
    };

    #[test]
    fn phase_deadlines_follow_the_connection() {
        let t0 = Instant::now();
        let s = |n| Duration::from_secs(n);
        let p = Phase::Headers { since: t0 };
        assert_eq!(p.deadline(LIMITS), Some(t0 + s(10)));
        // Bytes of the first request do not extend the header deadline (slowloris).
        assert_eq!(p.on_bytes(t0 + s(5)), p);
        assert_eq!(Phase::Request.deadline(LIMITS), None);
        let idle = Phase::Idle { since: t0 + s(1) };
        assert_eq!(idle.deadline(LIMITS), Some(t0 + s(31)));
        // The next request's first byte starts its own header deadline, shorter than idle.
        let next = idle.on_bytes(t0 + s(2));
        assert_eq!(next, Phase::Headers { since: t0 + s(2) });
        assert_eq!(next.deadline(LIMITS), Some(t0 + s(12)));
    }

    #[test]
    fn pending_caps_per_address_and_total() {
        let caps = PendingCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), OverCap::PerAddress);
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(c).unwrap_err(), OverCap::Total);
        drop(a1);
        assert_eq!(caps.total(), 2);
        let _c1 = caps.admit(c).unwrap();
        // IPv6: one /64 is one address; a v4-mapped address is its IPv4 address.
        let caps = PendingCaps::new(10, 1);
        let _x = caps.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(caps.admit("2001:db8::2".parse().unwrap()).is_err());
        assert!(caps.admit("2001:db8:0:1::2".parse().unwrap()).is_ok());
        let _y = caps.admit("::ffff:10.0.0.9".parse().unwrap()).unwrap();
        assert!(caps.admit("10.0.0.9".parse().unwrap()).is_err());
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let direct: SocketAddr = "5.6.7.8:4000".parse().unwrap();
        assert_eq!(client_address(proxy, &h, &trusted).to_string(), "1.2.3.4");
        // Anyone else's header is ignored, and so it is without trusted proxies.
        assert_eq!(client_address(direct, &h, &trusted).to_string(), "5.6.7.8");
        assert_eq!(client_address(proxy, &h, &[]).to_string(), "10.0.0.5");
        // A forged leftmost hop does not matter: the nearest untrusted one is the client.
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(client_address(proxy, &h, &trusted).to_string(), "1.2.3.4");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_address(proxy, &h, &trusted).to_string(), "10.0.0.5");
    }

    #[test]
    fn reads_the_open_file_limit() {
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
