//! Two connections over a simulated network on a simulated clock: no socket, no sleep.
//!
//! Each side is a sans-IO [`Conn`]; datagrams go through a seeded `parlor_netsim` link each
//! way, and signals (descriptions, candidates) through a signalling path of their own (the
//! room server's round trip, in order, never lost unless an outage says so). Time jumps
//! from one deadline to the next, so a call's negotiation, a lost offer, an ICE restart
//! after a 20 s outage run in milliseconds, the same way for the same seed; a failing
//! seed is printed. `room::sim` runs whole rooms the same way, with the real server
//! between the peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use parlor_netsim::{Link, LinkConfig, Loss};
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use super::core::Conn;
use super::relay::Route;
use super::{Command, ConnParams, PeerConnectionState};
use crate::events::EventSender;
use crate::room::RoomEvent;
use crate::rtc::signal;
use crate::track::{EncodedFrame, LocalTrack, RemoteTrack};

struct Side {
    conn: Conn,
    addr: SocketAddr,
    /// Frames of this side's tracks, for its connection to send.
    media: mpsc::Receiver<(Arc<str>, EncodedFrame)>,
    /// Tracks the remote sent us.
    remote_tracks: Vec<RemoteTrack>,
    /// When this side last became Connected.
    connected_at: Option<Instant>,
    /// Every state it went through, in order.
    states: Vec<PeerConnectionState>,
    resets: u32,
    /// Descriptions it sent, by kind and whether they restart ICE.
    offers: u32,
    answers: u32,
}

/// The simulated network: per direction, a datagram link and a signalling path.
pub(crate) struct Net {
    /// Datagrams, side 0 → 1 and 1 → 0.
    pub(crate) media: LinkConfig,
    /// Signals, each way (one way of the signalling round trip, through the server).
    pub(crate) signalling: LinkConfig,
}

/// (side, time since the start, datagram) → whether the datagram is lost.
type Filter = fn(usize, Duration, &[u8]) -> bool;

pub(crate) struct Sim {
    pub(crate) now: Instant,
    start: Instant,
    seed: u64,
    sides: Vec<Side>,
    media: Vec<Link<(SocketAddr, Vec<u8>)>>,
    signalling: Vec<Link<Value>>,
    /// Drops chosen datagrams on the way out.
    filter: Option<Filter>,
}

fn side(id: u64, polite: bool, addr: SocketAddr, tracks: Vec<LocalTrack>, now: Instant) -> Side {
    // The core hands its events and signals out through `poll_event` / `poll_signal`; these
    // queues (the driver's) stay empty here.
    let bus = EventSender::new(16);
    let (signals_tx, _) = mpsc::channel(1);
    let (media_tx, media_rx) = mpsc::channel(256);
    let p = ConnParams {
        id,
        remote_id: if id == 0 { "p_b".into() } else { "p_a".into() },
        polite,
        bind_ip: addr.ip(),
        events: bus,
        signals: signals_tx,
        track_meta: Arc::new(Mutex::new(HashMap::new())),
        turn: Vec::new(),
        relay_only: false,
        turn_tls: None,
        lost_offers: 0,
    };
    let conn = Conn::new(p, addr, media_tx, Arc::new(Notify::new()), tracks, now);
    Side {
        conn,
        addr,
        media: media_rx,
        remote_tracks: Vec::new(),
        connected_at: None,
        states: Vec::new(),
        resets: 0,
        offers: 0,
        answers: 0,
    }
}

impl Sim {
    /// Side 0 is the polite peer (it offers at once), side 1 the impolite one.
    pub(crate) fn new(seed: u64, net: Net) -> Sim {
        Sim::with_tracks(seed, net, Vec::new())
    }

    /// As [`Sim::new`], side 0 sending `tracks`.
    pub(crate) fn with_tracks(seed: u64, net: Net, tracks: Vec<LocalTrack>) -> Sim {
        let now = Instant::now();
        let addrs: [SocketAddr; 2] = [
            "10.0.0.1:40000".parse().expect("addr"),
            "10.0.0.2:40000".parse().expect("addr"),
        ];
        Sim {
            now,
            start: now,
            seed,
            sides: vec![
                side(0, true, addrs[0], tracks, now),
                side(1, false, addrs[1], Vec::new(), now),
            ],
            media: (0..2)
                .map(|i| Link::new(net.media.clone(), seed * 4 + i, now))
                .collect(),
            signalling: (0..2)
                .map(|i| Link::new(net.signalling.clone(), seed * 4 + 2 + i, now))
                .collect(),
            filter: None,
        }
    }

    /// Side `i` starts over with a fresh connection (a new DTLS identity), as the Python
    /// SDK does when it restarts ICE by rebuilding its RTCPeerConnection.
    fn rebuild(&mut self, i: usize) {
        let addr = self.sides[i].addr;
        self.sides[i] = side(i as u64, i == 0, addr, Vec::new(), self.now);
    }

    fn state(&self, i: usize) -> PeerConnectionState {
        self.sides[i].conn.state()
    }

    fn both_connected(&self) -> bool {
        (0..2).all(|i| self.state(i) == PeerConnectionState::Connected)
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Move what each side sent into the network, deliver what has arrived, read events;
    /// until nothing more happens at this instant.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                let other = self.sides[1 - i].addr;
                while let Some((route, data)) = self.sides[i].conn.poll_transmit() {
                    moved = true;
                    let dropped = self
                        .filter
                        .is_some_and(|f| f(i, self.now - self.start, &data));
                    if matches!(route, Route::Udp(to) if to == other) && !dropped {
                        let from = self.sides[i].addr;
                        let size = data.len();
                        self.media[i].send(self.now, (from, data), size);
                    }
                }
                while let Ok((id, frame)) = self.sides[i].media.try_recv() {
                    moved = true;
                    self.sides[i].conn.handle_frame(self.now, &id, frame);
                }
                while let Some(v) = self.sides[i].conn.poll_signal() {
                    moved = true;
                    if v.get("type").and_then(Value::as_str) == Some("rtc-description") {
                        match v.pointer("/description/type") {
                            Some(t) if t == "offer" => self.sides[i].offers += 1,
                            _ => self.sides[i].answers += 1,
                        }
                    }
                    let size = v.to_string().len();
                    self.signalling[i].send(self.now, v, size);
                }
                while let Some(e) = self.sides[i].conn.poll_event() {
                    match e {
                        RoomEvent::ConnectionState { state, .. } => {
                            if state == PeerConnectionState::Connected {
                                self.sides[i].connected_at = Some(self.now);
                            }
                            self.sides[i].states.push(state);
                        }
                        RoomEvent::ConnectionReset { .. } => self.sides[i].resets += 1,
                        RoomEvent::Track { track, .. } => self.sides[i].remote_tracks.push(track),
                        _ => {}
                    }
                }
            }
            for i in 0..2 {
                while let Some((_, (from, data))) = self.media[i].poll(self.now) {
                    moved = true;
                    self.sides[1 - i]
                        .conn
                        .handle_datagram(self.now, from, &data);
                }
                while let Some((_, v)) = self.signalling[i].poll(self.now) {
                    moved = true;
                    let s = signal::classify(&v);
                    self.sides[1 - i]
                        .conn
                        .handle_command(self.now, Command::Signal(s));
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// One step: settle this instant, then jump to the next deadline and fire it.
    fn step(&mut self) {
        self.exchange();
        let next = self
            .sides
            .iter()
            .map(|s| Some(s.conn.poll_timeout()))
            .chain(self.media.iter().map(Link::poll_timeout))
            .chain(self.signalling.iter().map(Link::poll_timeout))
            .flatten()
            .min();
        // A deadline in the past still moves time on (str0m's timers are ≥ 1 ms apart).
        self.now = next.map_or(self.now + Duration::from_millis(10), |t| {
            t.max(self.now + Duration::from_micros(100))
        });
        for i in 0..2 {
            if self.sides[i].conn.poll_timeout() <= self.now {
                self.sides[i].conn.handle_timeout(self.now);
            }
        }
    }

    /// Run until both sides are connected; fails the test (with the seed) after `limit`.
    fn connect(&mut self, limit: Duration) {
        assert!(
            self.run_until(limit, Sim::both_connected),
            "not connected: {}",
            self.explain()
        );
    }

    /// Run until `done` holds or `limit` of simulated time has passed; whether it held.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> bool {
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
        format!(
            "seed {} at {:?}: states {:?} / {:?}, offers {}/{}, answers {}/{}",
            self.seed,
            self.elapsed(),
            self.sides[0].states,
            self.sides[1].states,
            self.sides[0].offers,
            self.sides[1].offers,
            self.sides[0].answers,
            self.sides[1].answers,
        )
    }
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A path (media or signalling) with this one-way delay and nothing else.
pub(crate) fn delayed(one_way: u64) -> LinkConfig {
    LinkConfig {
        delay: ms(one_way),
        ..LinkConfig::default()
    }
}

#[test]
fn a_call_connects_in_about_two_signalling_round_trips() {
    for rtt in [0, 100, 200] {
        let mut sim = Sim::new(
            1,
            Net {
                media: delayed(10),
                signalling: delayed(rtt / 2),
            },
        );
        sim.connect(Duration::from_secs(10));
        // Offer and answer (one round trip), then ICE and DTLS over the media path: no
        // negotiation beyond what the protocol needs, no glare, nothing offered twice.
        let took = sim.elapsed();
        assert!(
            took <= ms(rtt + 150),
            "rtt {rtt}: connected after {took:?}; {}",
            sim.explain()
        );
        assert_eq!((sim.sides[0].offers, sim.sides[1].offers), (1, 0));
        assert_eq!((sim.sides[0].answers, sim.sides[1].answers), (0, 1));
    }
}

#[test]
fn calls_connect_over_lossy_jittery_links_for_every_seed() {
    for seed in 1..=20 {
        let mut sim = Sim::new(
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
                    delay: ms(40),
                    jitter: ms(20),
                    ..LinkConfig::default()
                },
            },
        );
        sim.connect(Duration::from_secs(20));
    }
}

#[test]
fn glare_both_sides_offering_at_once_settles_on_one_exchange() {
    // A slow signalling path (600 ms each way): the impolite side's own first offer (at
    // 500 ms) crosses the polite side's in flight.
    for seed in 1..=5 {
        let mut sim = Sim::new(
            seed,
            Net {
                media: delayed(10),
                signalling: delayed(600),
            },
        );
        sim.connect(Duration::from_secs(20));
        // The impolite side offered once and ignored the polite offer; the polite side
        // rolled its own back and answered (and may offer again what its offer carried).
        assert_eq!(sim.sides[1].offers, 1, "{}", sim.explain());
        assert!(sim.sides[0].answers >= 1, "{}", sim.explain());
        assert_eq!(sim.sides[0].resets + sim.sides[1].resets, 0);
    }
}

#[test]
fn a_lost_first_offer_is_recovered() {
    // The signalling path from the polite side is down for its first 300 ms: its offer is
    // lost; the impolite side offers itself at 500 ms.
    let mut sim = Sim::new(
        3,
        Net {
            media: delayed(10),
            signalling: delayed(20),
        },
    );
    let mut down = delayed(20);
    down.outages = vec![(Duration::ZERO, ms(300))];
    sim.signalling[0] = Link::new(down, 99, sim.now);
    sim.connect(Duration::from_secs(20));
    assert!(sim.elapsed() < Duration::from_secs(6), "{}", sim.explain());
}

#[test]
fn an_outage_restarts_ice_and_the_call_comes_back() {
    for seed in 1..=3 {
        let mut sim = Sim::new(
            seed,
            Net {
                media: delayed(20),
                signalling: delayed(50),
            },
        );
        sim.connect(Duration::from_secs(10));
        // 25 s with no datagrams either way (the signalling path stays up).
        let from = sim.now - sim.start;
        for i in 0..2 {
            let mut cut = delayed(20);
            cut.outages = vec![(from, Duration::from_secs(25))];
            sim.media[i] = Link::new(cut, seed * 10 + i as u64, sim.start);
        }
        let went_down = sim.run_until(Duration::from_secs(25), |s| {
            (0..2).any(|i| s.state(i) == PeerConnectionState::Disconnected)
        });
        assert!(went_down, "no side noticed the outage: {}", sim.explain());
        let back = sim.run_until(Duration::from_secs(60), |s| {
            s.both_connected() && s.now - s.start > from + Duration::from_secs(25)
        });
        assert!(back, "{}", sim.explain());
        // Brought back by ICE restarts (offers beyond the first), not by a rebuild.
        assert!(
            sim.sides[0].offers + sim.sides[1].offers >= 2,
            "{}",
            sim.explain()
        );
        assert_eq!(sim.sides[0].resets + sim.sides[1].resets, 0);
    }
}

#[test]
fn audio_flows_over_a_lossy_link_with_what_was_lost_missing() {
    for seed in 1..=3 {
        let track = LocalTrack::audio();
        let mut sim = Sim::with_tracks(
            seed,
            Net {
                media: LinkConfig {
                    delay: ms(30),
                    loss: Loss::Random(0.05),
                    ..LinkConfig::default()
                },
                signalling: delayed(40),
            },
            vec![track.clone()],
        );
        sim.connect(Duration::from_secs(20));
        // 10 s of 20 ms Opus frames (a TOC byte for 20 ms CELT and two bytes of payload).
        let sent_before = sim.media[0].stats().sent;
        let mut got = 0;
        let mut read = |sim: &Sim| {
            if let Some(remote) = sim.sides[1].remote_tracks.first() {
                while let Some(Some(_)) = remote.recv().now_or_never() {
                    got += 1;
                }
            }
        };
        for _ in 0..500 {
            track.push(EncodedFrame::opus(vec![0xf8, 0xff, 0xfe]).expect("opus"));
            sim.run_until(ms(20), |_| false);
            read(&sim);
        }
        sim.run_until(ms(500), |_| false);
        read(&sim);
        assert!(
            !sim.sides[1].remote_tracks.is_empty(),
            "no Track event at side 1"
        );
        let lost = sim.media[0].stats().lost;
        assert!(sim.media[0].stats().sent - sent_before >= 500);
        // Every frame the link delivered arrives (nothing else is lost on the way).
        assert!(
            (440..=500).contains(&got) && got + lost as usize >= 500,
            "seed {seed}: {got} frames of 500, {lost} datagrams lost"
        );
    }
}

#[test]
fn a_remote_that_rebuilds_its_connection_is_followed() {
    for seed in 1..=3 {
        let mut sim = Sim::new(
            seed,
            Net {
                media: LinkConfig {
                    delay: ms(20),
                    jitter: ms(10),
                    ..LinkConfig::default()
                },
                signalling: delayed(50),
            },
        );
        sim.connect(Duration::from_secs(10));
        sim.rebuild(1);
        // The rebuilt side offers from its fresh connection; ours sees a new fingerprint,
        // rebuilds too (ConnectionReset) and answers.
        let back = sim.run_until(Duration::from_secs(20), |s| {
            s.both_connected() && s.sides[0].resets == 1
        });
        assert!(back, "seed {seed}: {}", sim.explain());
        assert_eq!(sim.sides[0].resets, 1);
    }
}

#[test]
fn a_call_connects_through_a_narrow_link() {
    // 64 kbit/s each way with a 300 ms queue: the DTLS flight (certificates) is serialized
    // over ~100 ms; the call still comes up, only later.
    for seed in 1..=3 {
        let mut sim = Sim::new(
            seed,
            Net {
                media: LinkConfig {
                    delay: ms(30),
                    rate_bps: Some(64_000),
                    queue_limit: ms(300),
                    ..LinkConfig::default()
                },
                signalling: delayed(40),
            },
        );
        sim.connect(Duration::from_secs(10));
        assert!(sim.media[0].stats().sent > 0);
    }
}

#[test]
fn a_dtls_handshake_that_stalls_after_ice_is_started_over() {
    // The answerer is the DTLS server. For the first 25 s every datagram it sends that
    // starts with a ChangeCipherSpec record (its last flight, and each resend of it) is
    // lost: it counts itself connected, the client never does. ICE restarts cannot help
    // (they keep the DTLS session); without a watchdog the client gives up after its
    // fourth resend (~31 s) and the call was still `Connecting` at 40 s.
    let mut sim = Sim::new(
        5,
        Net {
            media: delayed(10),
            signalling: delayed(30),
        },
    );
    sim.filter = Some(|side, since, datagram| {
        side == 1 && since < Duration::from_secs(25) && datagram.first() == Some(&20)
    });
    let stalled = sim.run_until(Duration::from_secs(5), |s| {
        s.state(1) == PeerConnectionState::Connected
    });
    assert!(stalled, "{}", sim.explain());
    assert_ne!(sim.state(0), PeerConnectionState::Connected);
    // The polite side (here the client) starts over after 10 s, and again while the
    // flight is still being lost; the first rebuild after 25 s connects.
    sim.connect(Duration::from_secs(40));
    assert!(
        sim.sides[0].resets >= 1 && sim.sides[1].resets >= 1,
        "{}",
        sim.explain()
    );
    assert!(sim.elapsed() > Duration::from_secs(25), "{}", sim.explain());
    assert!(sim.elapsed() < Duration::from_secs(35), "{}", sim.explain());
}
