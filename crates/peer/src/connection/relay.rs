//! TURN relay candidates: the TURN client side of a connection (sans-IO).
//!
//! str0m leaves TURN to the application: it takes a relayed local candidate
//! (`Candidate::relayed`) and expects the application to carry the datagrams that str0m sends
//! "from" that candidate through the TURN server, and to hand back what the server relays in.
//! This module does that with `turn-client-proto` (a sans-IO TURN client: Allocate with
//! long-term credentials, Refresh, CreatePermission, ChannelBind, Send/Data indications), one
//! client per TURN server, all on the connection's one UDP socket:
//!
//! * a datagram from a TURN server's address goes to [`Relays::recv`], which returns the
//!   peer's data (to be fed into str0m with the relayed address as destination) or consumes
//!   it (TURN responses);
//! * a str0m transmit whose source is a relayed address goes to [`Relays::send`], which wraps
//!   it for the server (creating the permission first if needed: until then up to
//!   [`MAX_WAITING`] datagrams per relay wait);
//! * [`Relays::poll`] drives retransmissions and refreshes; [`Relays::poll_transmit`] yields
//!   what to write to the socket and [`Relays::poll_event`] reports allocations.
//!
//! The link to the TURN server is UDP (`turn:` URLs, `transport=udp` or none: the
//! connection's socket), TCP (`turn:…?transport=tcp`) or TLS over TCP (`turns:`); the
//! allocation itself is always UDP (RFC 8656), so relayed candidates are UDP candidates.
//! For TCP and TLS the connection driver owns the stream and passes its bytes through
//! [`Relays::recv_stream`]; the TURN client does the framing. `stun:` URLs (no
//! server-reflexive gathering) and DTLS (`turns:…?transport=udp`) are skipped.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turn_client_proto::api::{TurnClientApi, TurnConfig, TurnEvent, TurnPollRet, TurnRecvRet};
use turn_client_proto::client::TurnClient;
use turn_client_proto::stun::Instant as TurnInstant;
use turn_client_proto::stun::agent::Transmit;
use turn_client_proto::stun::types::TransportType;
use turn_client_proto::tcp::TurnClientTcp;
use turn_client_proto::types::TurnCredentials;
use turn_client_proto::types::prelude::DelayedTransmitBuild;
use turn_client_proto::udp::TurnClientUdp;

use crate::signalling::IceServer;

/// Most TURN servers one connection allocates on.
pub(crate) const MAX_RELAYS: usize = 4;
/// Datagrams per relay kept while a permission is being created.
pub(crate) const MAX_WAITING: usize = 32;
/// Most peer addresses per relay that get a channel (the rest use Send indications).
const MAX_CHANNELS: usize = 16;
/// Most peer IPs per relay that get a permission.
const MAX_PERMISSIONS: usize = 32;
/// An allocation not answered in this long counts as failed (gathering ends without it).
pub(crate) const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How we reach a TURN server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Link {
    /// UDP, on the connection's own socket.
    Udp,
    /// TCP (`?transport=tcp`).
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

/// What kind of ICE server a URL names (RFC 7064/7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IceUrl {
    /// A TURN server and how to reach it.
    Turn { host: String, port: u16, link: Link },
    /// A URL we do not use, with why (`stun:`, DTLS).
    Unsupported(&'static str),
}

/// Parse one `iceServers` URL.
pub(crate) fn parse_ice_url(url: &str) -> Result<IceUrl, &'static str> {
    let (scheme, rest) = url.split_once(':').ok_or("no scheme")?;
    let scheme = scheme.to_ascii_lowercase();
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q.to_ascii_lowercase())),
        None => (rest, None),
    };
    let transport = match query.as_deref() {
        None => None,
        Some(q) => match q.strip_prefix("transport=") {
            Some(t @ ("udp" | "tcp")) => Some(t.to_owned()),
            _ => return Err("bad query (only transport=udp|tcp)"),
        },
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("junk after ]"),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return Err("bad host");
    }
    let default_port = if scheme.ends_with('s') { 5349 } else { 3478 };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("bad port")?,
        None => default_port,
    };
    let turn = |link| {
        Ok(IceUrl::Turn {
            host: host.to_owned(),
            port,
            link,
        })
    };
    match (scheme.as_str(), transport.as_deref()) {
        ("turn", Some("tcp")) => turn(Link::Tcp),
        ("turn", _) => turn(Link::Udp),
        ("turns", Some("udp")) => Ok(IceUrl::Unsupported("TURN over DTLS")),
        ("turns", _) => turn(Link::Tls),
        ("stun" | "stuns", _) => Ok(IceUrl::Unsupported("STUN (no server-reflexive gathering)")),
        _ => Err("not a stun/turn URL"),
    }
}

/// A TURN server to allocate on, before name resolution.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TurnTarget {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) link: Link,
    pub(crate) username: String,
    pub(crate) credential: String,
}

impl std::fmt::Debug for TurnTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the credential.
        f.debug_struct("TurnTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

/// The TURN servers of an `iceServers` list (at most [`MAX_RELAYS`], deduplicated).
pub(crate) fn turn_targets(servers: &[IceServer]) -> Vec<TurnTarget> {
    let mut out: Vec<TurnTarget> = Vec::new();
    for s in servers {
        for url in &s.urls {
            match parse_ice_url(url) {
                Ok(IceUrl::Turn { host, port, link }) => {
                    let (Some(username), Some(credential)) = (&s.username, &s.credential) else {
                        tracing::debug!(%url, "TURN URL without username/credential: skipped");
                        continue;
                    };
                    let t = TurnTarget {
                        host,
                        port,
                        link,
                        username: username.clone(),
                        credential: credential.clone(),
                    };
                    if out.len() < MAX_RELAYS && !out.contains(&t) {
                        out.push(t);
                    }
                }
                Ok(IceUrl::Unsupported(why)) => tracing::debug!(%url, why, "ICE URL skipped"),
                Err(why) => tracing::debug!(%url, why, "unusable ICE URL"),
            }
        }
    }
    out
}

/// Something a relay reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelayEvent {
    /// An allocation is ready: this relayed address is a local candidate now.
    Allocated {
        /// The TURN server.
        server: SocketAddr,
        /// The relayed transport address on it.
        relayed: SocketAddr,
    },
    /// The allocation failed (refused, or not answered in [`ALLOCATE_TIMEOUT`]).
    Failed {
        /// The TURN server.
        server: SocketAddr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Allocating { since: Instant },
    Ready(SocketAddr),
    Failed,
}

#[derive(Debug)]
struct Relay {
    server: SocketAddr,
    /// UDP: the server's datagrams arrive on the connection socket. TCP/TLS: on a stream.
    stream: bool,
    client: TurnClient,
    state: State,
    /// Datagrams waiting for a permission: (peer, data).
    waiting: VecDeque<(SocketAddr, Vec<u8>)>,
    permitted: Vec<IpAddr>,
    channels: Vec<SocketAddr>,
}

/// Where bytes for a TURN server go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// Send them on the connection's UDP socket to this address.
    Udp(SocketAddr),
    /// Write them to the stream to this TURN server.
    Stream(SocketAddr),
}

/// The TURN clients of one connection.
#[derive(Debug)]
pub(crate) struct Relays {
    local: SocketAddr,
    epoch: Instant,
    relays: Vec<Relay>,
    out: VecDeque<(Route, Vec<u8>)>,
    events: VecDeque<RelayEvent>,
}

impl Relay {
    fn route(&self) -> Route {
        if self.stream {
            Route::Stream(self.server)
        } else {
            Route::Udp(self.server)
        }
    }
}

impl Relays {
    /// No relays yet, for a socket bound to `local`.
    pub(crate) fn new(local: SocketAddr, now: Instant) -> Relays {
        Relays {
            local,
            epoch: now,
            relays: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn t(&self, now: Instant) -> TurnInstant {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        TurnInstant::from_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
    }

    /// Start an allocation on `server` over UDP (an address family the socket can reach).
    pub(crate) fn add(
        &mut self,
        server: SocketAddr,
        username: &str,
        credential: &str,
        now: Instant,
    ) {
        if server.is_ipv4() != self.local.is_ipv4() {
            return;
        }
        let config = TurnConfig::new(TurnCredentials::new(username, credential));
        let client = TurnClientUdp::allocate(self.local, server, config);
        self.push(server, false, client.into(), now);
    }

    /// Start an allocation on `server` over a connected TCP (or TLS) stream whose local
    /// address is `stream_local`. Its bytes go through [`Relays::recv_stream`], and what to
    /// write to it comes out of [`Relays::poll_transmit`] as [`Route::Stream`].
    pub(crate) fn add_stream(
        &mut self,
        server: SocketAddr,
        stream_local: SocketAddr,
        username: &str,
        credential: &str,
        now: Instant,
    ) {
        let config = TurnConfig::new(TurnCredentials::new(username, credential));
        let client = TurnClientTcp::allocate(stream_local, server, config);
        self.push(server, true, client.into(), now);
    }

    fn push(&mut self, server: SocketAddr, stream: bool, client: TurnClient, now: Instant) {
        if self.relays.len() >= MAX_RELAYS
            || self
                .relays
                .iter()
                .any(|r| r.server == server && r.stream == stream)
        {
            return;
        }
        self.relays.push(Relay {
            server,
            stream,
            client,
            state: State::Allocating { since: now },
            waiting: VecDeque::new(),
            permitted: Vec::new(),
            channels: Vec::new(),
        });
        self.poll(now);
    }

    /// Whether an allocation is still in progress (gathering is not complete).
    pub(crate) fn gathering(&self) -> bool {
        self.relays
            .iter()
            .any(|r| matches!(r.state, State::Allocating { .. }))
    }

    /// The relayed addresses that are ready.
    pub(crate) fn relayed(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.relays.iter().filter_map(|r| match r.state {
            State::Ready(a) => Some(a),
            _ => None,
        })
    }

    /// Whether datagrams from `from` belong to a TURN client here (UDP).
    pub(crate) fn is_server(&self, from: SocketAddr) -> bool {
        self.relays.iter().any(|r| r.server == from && !r.stream)
    }

    /// Bytes read from the stream to `server` (empty: the stream closed): the peer datagrams
    /// they complete, as (peer, relayed address, data).
    pub(crate) fn recv_stream(
        &mut self,
        server: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let t = self.t(now);
        let mut out = Vec::new();
        let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.server == server && r.stream)
        else {
            return out;
        };
        let local = r.client.local_addr();
        if data.is_empty() {
            r.client.tcp_closed(local, server, t);
            if matches!(r.state, State::Allocating { .. }) {
                self.events.push_back(RelayEvent::Failed { server });
            }
            r.state = State::Failed;
            return out;
        }
        let relayed = match r.state {
            State::Ready(a) => Some(a),
            _ => None,
        };
        let ret = r
            .client
            .recv(Transmit::new(data, TransportType::Tcp, server, local), t);
        if let (TurnRecvRet::PeerData(d), Some(relayed)) = (ret, relayed) {
            out.push((d.peer, relayed, d.data().to_vec()));
        }
        while let Some(d) = r.client.poll_recv(t) {
            if let Some(relayed) = relayed {
                out.push((d.peer, relayed, d.data().to_vec()));
            }
        }
        self.poll(now);
        out
    }

    /// A datagram from a TURN server: `Some((peer, relayed, data))` when it carries a peer's
    /// datagram, `None` when the TURN client consumed it.
    pub(crate) fn recv(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        let t = self.t(now);
        let local = self.local;
        let r = self
            .relays
            .iter_mut()
            .find(|r| r.server == from && !r.stream)?;
        let ret = r
            .client
            .recv(Transmit::new(data, TransportType::Udp, from, local), t);
        let out = match ret {
            TurnRecvRet::PeerData(d) => match r.state {
                State::Ready(relayed) => Some((d.peer, relayed, d.data().to_vec())),
                _ => None,
            },
            _ => None,
        };
        self.poll(now);
        out
    }

    /// A str0m transmit from `source` to `to`: returns false when `source` is not one of our
    /// relayed addresses (the caller sends it directly).
    pub(crate) fn send(
        &mut self,
        source: SocketAddr,
        to: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> bool {
        let t = self.t(now);
        let Some(r) = self
            .relays
            .iter_mut()
            .find(|r| r.state == State::Ready(source))
        else {
            return false;
        };
        if !r.client.have_permission(TransportType::Udp, to.ip()) {
            if r.waiting.len() < MAX_WAITING {
                r.waiting.push_back((to, data.to_vec()));
            }
            if !r.permitted.contains(&to.ip()) && r.permitted.len() < MAX_PERMISSIONS {
                r.permitted.push(to.ip());
                let _ = r.client.create_permission(TransportType::Udp, to.ip(), t);
            }
            self.poll(now);
            return true;
        }
        // Channels only over UDP: over a TCP/TLS link (turn-client-proto 0.7.3 with coturn
        // 4.6) relayed data stopped the moment a channel was bound, so stream links keep
        // using Send/Data indications (32 bytes more per datagram).
        if !r.stream && !r.channels.contains(&to) && r.channels.len() < MAX_CHANNELS {
            r.channels.push(to);
            let _ = r.client.bind_channel(TransportType::Udp, to, t);
        }
        if let Ok(Some(tx)) = r.client.send_to(TransportType::Udp, to, data, t) {
            let route = r.route();
            self.out.push_back((route, tx.data.build()));
        }
        self.poll(now);
        true
    }

    /// Install a permission for a remote candidate's address on every ready relay ahead of
    /// the connectivity checks.
    pub(crate) fn permit(&mut self, ip: IpAddr, now: Instant) {
        let t = self.t(now);
        for r in &mut self.relays {
            if matches!(r.state, State::Ready(_))
                && !r.permitted.contains(&ip)
                && r.permitted.len() < MAX_PERMISSIONS
                && ip.is_ipv4() == r.server.is_ipv4()
            {
                r.permitted.push(ip);
                let _ = r.client.create_permission(TransportType::Udp, ip, t);
            }
        }
        self.poll(now);
    }

    /// Drive the clients: collect their transmits and events. Returns when to call again.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Instant> {
        let t = self.t(now);
        let mut wake: Option<Instant> = None;
        let mut earliest = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
        for i in 0..self.relays.len() {
            loop {
                let r = &mut self.relays[i];
                while let Some(tx) = r.client.poll_transmit(t) {
                    self.out.push_back((r.route(), tx.data.to_vec()));
                }
                let r = &mut self.relays[i];
                let mut progressed = false;
                while let Some(ev) = r.client.poll_event() {
                    progressed = true;
                    match ev {
                        TurnEvent::AllocationCreated(TransportType::Udp, relayed) => {
                            if matches!(r.state, State::Allocating { .. }) {
                                r.state = State::Ready(relayed);
                                self.events.push_back(RelayEvent::Allocated {
                                    server: r.server,
                                    relayed,
                                });
                            }
                        }
                        TurnEvent::AllocationCreateFailed(_) => {
                            if matches!(r.state, State::Allocating { .. }) {
                                r.state = State::Failed;
                                self.events
                                    .push_back(RelayEvent::Failed { server: r.server });
                            }
                        }
                        TurnEvent::PermissionCreated(_, ip) => {
                            let (ready, rest): (Vec<_>, Vec<_>) =
                                r.waiting.drain(..).partition(|(to, _)| to.ip() == ip);
                            r.waiting = rest.into();
                            for (to, data) in ready {
                                if let Ok(Some(tx)) =
                                    r.client.send_to(TransportType::Udp, to, &data, t)
                                {
                                    self.out.push_back((r.route(), tx.data.build()));
                                }
                            }
                        }
                        TurnEvent::PermissionCreateFailed(_, ip) => {
                            r.waiting.retain(|(to, _)| to.ip() != ip);
                            r.permitted.retain(|p| *p != ip);
                        }
                        _ => {}
                    }
                }
                if !progressed {
                    break;
                }
            }
            let r = &mut self.relays[i];
            if let State::Allocating { since } = r.state
                && now.saturating_duration_since(since) >= ALLOCATE_TIMEOUT
            {
                r.state = State::Failed;
                self.events
                    .push_back(RelayEvent::Failed { server: r.server });
            }
            if let State::Allocating { since } = r.state {
                earliest(since + ALLOCATE_TIMEOUT);
            }
            match r.client.poll(t) {
                TurnPollRet::WaitUntil(at) if r.state != State::Failed => {
                    let at = self.epoch
                        + Duration::from_nanos(u64::try_from(at.as_nanos()).unwrap_or(0));
                    earliest(at.max(now));
                }
                TurnPollRet::Closed => {
                    if matches!(r.state, State::Allocating { .. }) {
                        self.events
                            .push_back(RelayEvent::Failed { server: r.server });
                    }
                    if r.state != State::Failed {
                        tracing::debug!(server = %r.server, "TURN allocation closed");
                    }
                    r.state = State::Failed;
                }
                _ => {}
            }
            // Poll may have queued more (a refresh that came due).
            let r = &mut self.relays[i];
            while let Some(tx) = r.client.poll_transmit(t) {
                self.out.push_back((r.route(), tx.data.to_vec()));
            }
        }
        wake
    }

    /// The next bytes to send to a TURN server, and where.
    pub(crate) fn poll_transmit(&mut self) -> Option<(Route, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next allocation outcome.
    pub(crate) fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// Release every allocation (best effort: queues the delete requests).
    pub(crate) fn close(&mut self, now: Instant) {
        let t = self.t(now);
        for r in &mut self.relays {
            if matches!(r.state, State::Ready(_)) {
                let _ = r.client.delete(t);
                while let Some(tx) = r.client.poll_transmit(t) {
                    self.out.push_back((r.route(), tx.data.to_vec()));
                }
            }
            r.state = State::Failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_urls() {
        let turn = |h: &str, p| IceUrl::Turn {
            host: h.into(),
            port: p,
            link: Link::Udp,
        };
        assert_eq!(
            parse_ice_url("turn:127.0.0.1:3478"),
            Ok(turn("127.0.0.1", 3478))
        );
        assert_eq!(
            parse_ice_url("turn:example.com"),
            Ok(turn("example.com", 3478))
        );
        assert_eq!(
            parse_ice_url("TURN:example.com:80?transport=UDP"),
            Ok(turn("example.com", 80))
        );
        assert_eq!(parse_ice_url("turn:[::1]:3479"), Ok(turn("::1", 3479)));
        assert_eq!(parse_ice_url("turn:[::1]"), Ok(turn("::1", 3478)));
        assert!(matches!(
            parse_ice_url("turn:x:443?transport=tcp"),
            Ok(IceUrl::Turn {
                port: 443,
                link: Link::Tcp,
                ..
            })
        ));
        assert!(matches!(
            parse_ice_url("turns:x"),
            Ok(IceUrl::Turn {
                port: 5349,
                link: Link::Tls,
                ..
            })
        ));
        assert!(matches!(
            parse_ice_url("turns:x:443?transport=tcp"),
            Ok(IceUrl::Turn {
                port: 443,
                link: Link::Tls,
                ..
            })
        ));
        assert!(matches!(
            parse_ice_url("turns:x?transport=udp"),
            Ok(IceUrl::Unsupported(_))
        ));
        assert!(matches!(
            parse_ice_url("stun:stun.example:19302"),
            Ok(IceUrl::Unsupported(_))
        ));
        for bad in [
            "turn:",
            "turn:x:0",
            "turn:x:99999",
            "turn:x?transport=sctp",
            "turn:[::1",
            "turn:user@host",
            "http://x",
            "nothing",
        ] {
            assert!(parse_ice_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn targets_need_credentials_and_are_bounded() {
        let s = |urls: &[&str], cred: bool| IceServer {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            username: cred.then(|| "u".to_owned()),
            credential: cred.then(|| "c".to_owned()),
        };
        let list = vec![
            s(
                &[
                    "stun:a:1",
                    "turn:a:1",
                    "turns:a:2?transport=udp",
                    "turn:a:1",
                ],
                true,
            ),
            s(&["turn:b:1"], false),
            s(&["turn:c:1", "turn:d:1", "turn:e:1", "turn:f:1"], true),
        ];
        let t = turn_targets(&list);
        let hosts: Vec<_> = t.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(hosts, ["a", "c", "d", "e"]);
        assert!(!format!("{:?}", t[0]).contains("\"c\""));
    }

    #[test]
    fn allocation_times_out_without_a_server() {
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
        let now = Instant::now();
        let mut r = Relays::new(local, now);
        r.add("127.0.0.1:3478".parse().expect("addr"), "u", "c", now);
        assert!(r.gathering());
        let (to, bytes) = r.poll_transmit().expect("an Allocate request");
        assert_eq!(to, Route::Udp("127.0.0.1:3478".parse().expect("addr")));
        assert_eq!(bytes.first(), Some(&0x00), "a STUN request");
        assert!(r.poll(now + ALLOCATE_TIMEOUT).is_none() || !r.gathering());
        assert!(!r.gathering());
        assert_eq!(
            r.poll_event(),
            Some(RelayEvent::Failed {
                server: "127.0.0.1:3478".parse().expect("addr")
            })
        );
        // Not a relayed source: the caller sends it itself.
        assert!(!r.send(local, "127.0.0.1:5".parse().expect("addr"), b"x", now));
    }
}
