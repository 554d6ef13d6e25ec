//! Spike: a minimal Rust room peer on str0m 0.25 that joins a Parlor room with
//! parlor-peer's SignallingClient and speaks the Metered signal envelopes (spec §2).
//!
//! One tokio task per remote peer owns one `Rtc` + one UDP socket (host candidate only).
//! Negotiation: MDN perfect negotiation on top of str0m's SdpApi (polite = our id < theirs);
//! the impolite side offers at once, the polite side waits 2 s for an offer (PY-style) and
//! then offers itself. Follow-up offer when an answered offer lacked audio or a data channel.
//! Media: counts inbound Opus RTP, sends a 440 Hz libopus-encoded tone (20 ms frames).
//! Data: sends "hello from rust" on every channel open, echoes "echo: <msg>".
//!
//! env: PARLOR_URL, ROOM, RUN_SECS (default 60), BIND_IP (default: first non-loopback v4),
//!      OFFER_POLICY = pyish (default) | answer-only | always
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audiopus::coder::Encoder;
use audiopus::{Application, Channels, SampleRate};
use parlor_peer::signalling::{Event as SigEvent, SignallingClient, SubscribeOptions};
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[derive(Default, Debug, Clone)]
struct Counters {
    rx_audio_pkts: u64,
    rx_audio_bytes: u64,
    tx_audio_frames: u64,
    dc_rx: u64,
    dc_tx: u64,
    dc_open: Vec<String>,
    offers_sent: u32,
    offers_recv: u32,
    answers_sent: u32,
    answers_recv: u32,
    glare_ignored: u32,
    glare_rolled_back: u32,
    cand_recv: u32,
    cand_bad: Vec<String>,
    eoc_recv: u32,
    ice_states: Vec<String>,
    connected_ms: Option<u128>,
    first_dc_rx: Option<String>,
    errors: Vec<String>,
}

fn log(id: &str, msg: impl AsRef<str>) {
    println!("[{:>8.3}] {id}: {}", t0().elapsed().as_secs_f64(), msg.as_ref());
}
fn t0() -> &'static Instant {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now)
}

fn host_ip() -> IpAddr {
    if let Ok(s) = std::env::var("BIND_IP") {
        return s.parse().expect("BIND_IP");
    }
    // Route lookup without sending anything.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.254:9").ok();
    match s.local_addr() {
        Ok(a) if !a.ip().is_unspecified() => a.ip(),
        _ => "127.0.0.1".parse().unwrap(),
    }
}

struct Peer {
    me: String,
    id: String,
    polite: bool,
    rtc: Rtc,
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    out: mpsc::UnboundedSender<Value>,
    pending: Option<SdpPendingOffer>,
    negotiated_once: bool,
    app_negotiated: bool,
    pending_has_app: bool,
    pending_audio_mid: Option<Mid>,
    pending_since: Option<Instant>,
    audio_mid: Option<Mid>,
    opus_pt: Option<Pt>,
    channels: HashMap<ChannelId, String>,
    enc: Encoder,
    phase: u64,
    created: Instant,
    c: Counters,
    policy: String,
    stats_tx: mpsc::UnboundedSender<(String, Counters)>,
}

impl Peer {
    fn signal_description(&mut self, kind: &str, sdp: String) {
        if std::env::var("DUMP_SDP").is_ok() { log(&self.id, format!("LOCAL {kind}:\n{sdp}")); }
        let _ = self.out.send(json!({"type":"rtc-description","description":{"type":kind,"sdp":sdp}}));
        // JS-style trickle: every local candidate, then null (the SDP carries them too).
        let cands: Vec<String> = vec![self.local_candidate().to_sdp_string()];
        for c in cands {
            let _ = self.out.send(json!({"type":"rtc-ice","candidate":{"candidate":c,"sdpMid":"0","sdpMLineIndex":0}}));
        }
        let _ = self.out.send(json!({"type":"rtc-ice","candidate":null}));
    }

    fn local_candidate(&self) -> Candidate {
        Candidate::host(self.local, "udp").unwrap()
    }

    /// Make an offer for whatever we still lack (audio sendrecv, one data channel).
    fn negotiate(&mut self, why: &str) {
        if self.pending.is_some() {
            return;
        }
        let mut api = self.rtc.sdp_api();
        let mut amid = None;
        if self.audio_mid.is_none() {
            amid = Some(api.add_media(MediaKind::Audio, Direction::SendRecv, Some("rust-stream".into()), Some("rust-mic".into()), None));
        }
        let add_app = !self.app_negotiated;
        if add_app {
            api.add_channel("chat".into());
        }
        if let Some((offer, pending)) = api.apply() {
            self.pending = Some(pending);
            self.pending_has_app = add_app;
            self.pending_audio_mid = amid;
            self.pending_since = Some(Instant::now());
            self.c.offers_sent += 1;
            log(&self.id, format!("send offer ({why})"));
            self.signal_description("offer", offer.to_sdp_string());
        }
    }

    fn on_signal(&mut self, v: Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("rtc-description") => {
                let d = &v["description"];
                let sdp = d["sdp"].as_str().unwrap_or_default().to_string();
                if std::env::var("DUMP_SDP").is_ok() { log(&self.id, format!("REMOTE {}:\n{sdp}", d["type"])); }
                match d["type"].as_str() {
                    Some("offer") => {
                        self.c.offers_recv += 1;
                        let collision = self.pending.is_some();
                        if collision && !self.polite {
                            self.c.glare_ignored += 1;
                            log(&self.id, "glare: impolite, ignoring remote offer");
                            return;
                        }
                        if collision {
                            self.c.glare_rolled_back += 1;
                            log(&self.id, "glare: polite, implicit rollback via accept_offer");
                            self.pending = None; // invalidated by accept_offer anyway
                        }
                        let offer = match SdpOffer::from_sdp_string(&sdp) {
                            Ok(o) => o,
                            Err(e) => return self.err(format!("bad offer sdp: {e}")),
                        };
                        match self.rtc.sdp_api().accept_offer(offer) {
                            Ok(answer) => {
                                self.negotiated_once = true;
                                self.app_negotiated |= sdp.contains("m=application");
                                self.c.answers_sent += 1;
                                log(&self.id, "accepted offer, send answer");
                                self.signal_description("answer", answer.to_sdp_string());
                            }
                            Err(e) => self.err(format!("accept_offer: {e}")),
                        }
                    }
                    Some("answer") => {
                        self.c.answers_recv += 1;
                        let Some(p) = self.pending.take() else {
                            log(&self.id, "stale answer dropped");
                            return;
                        };
                        let ans = match SdpAnswer::from_sdp_string(&sdp) {
                            Ok(a) => a,
                            Err(e) => return self.err(format!("bad answer sdp: {e}")),
                        };
                        match self.rtc.sdp_api().accept_answer(p, ans) {
                            Ok(()) => {
                                self.negotiated_once = true;
                                self.app_negotiated |= self.pending_has_app || sdp.contains("m=application");
                                if self.audio_mid.is_none() { self.audio_mid = self.pending_audio_mid; }
                                log(&self.id, "accepted answer");
                            }
                            Err(e) => self.err(format!("accept_answer: {e}")),
                        }
                    }
                    _ => {}
                }
            }
            Some("rtc-ice") => {
                let c = &v["candidate"];
                let s = c.get("candidate").and_then(Value::as_str).unwrap_or("");
                if c.is_null() || s.is_empty() {
                    self.c.eoc_recv += 1;
                    return;
                }
                self.c.cand_recv += 1;
                let s = s.strip_prefix("a=").unwrap_or(s);
                match Candidate::from_sdp_string(s) {
                    Ok(cand) => self.rtc.add_remote_candidate(cand),
                    Err(e) => {
                        if self.c.cand_bad.len() < 8 {
                            self.c.cand_bad.push(format!("{e}: {s}"));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn err(&mut self, e: String) {
        log(&self.id, format!("ERROR {e}"));
        self.c.errors.push(e);
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::IceConnectionStateChange(s) => {
                log(&self.id, format!("ice {s:?}"));
                self.c.ice_states.push(format!("{s:?}"));
            }
            Event::Connected => {
                self.c.connected_ms = Some(self.created.elapsed().as_millis());
                log(&self.id, "connected (DTLS up)");
            }
            Event::MediaAdded(m) => {
                log(&self.id, format!("media added {:?} {:?} {:?}", m.mid, m.kind, m.direction));
                if m.kind == MediaKind::Audio && self.audio_mid.is_none() {
                    self.audio_mid = Some(m.mid);
                }
            }
            Event::MediaData(d) => {
                self.c.rx_audio_pkts += 1;
                self.c.rx_audio_bytes += d.data.len() as u64;
            }
            Event::ChannelOpen(cid, label) => {
                log(&self.id, format!("channel open {label}"));
                self.channels.insert(cid, label.clone());
                self.c.dc_open.push(label);
                let m = format!("hello from rust {}", self.me);
                if let Some(mut ch) = self.rtc.channel(cid) {
                    if ch.write(false, m.as_bytes()).is_ok() {
                        self.c.dc_tx += 1;
                    }
                }
            }
            Event::ChannelData(d) => {
                self.c.dc_rx += 1;
                let text = String::from_utf8_lossy(&d.data).to_string();
                if self.c.first_dc_rx.is_none() {
                    log(&self.id, format!("dc rx: {text}"));
                    self.c.first_dc_rx = Some(text.clone());
                }
                if !text.starts_with("echo:") && !text.starts_with("reply from") {
                    if let Some(mut ch) = self.rtc.channel(d.id) {
                        if ch.write(d.binary, format!("echo: {text}").as_bytes()).is_ok() {
                            self.c.dc_tx += 1;
                        }
                    }
                }
            }
            Event::ChannelClose(cid) => {
                self.channels.remove(&cid);
            }
            _ => {}
        }
    }

    fn send_audio(&mut self) {
        let Some(mid) = self.audio_mid else { return };
        if !self.rtc.is_connected() {
            return;
        }
        if self.opus_pt.is_none() {
            let Some(w) = self.rtc.writer(mid) else { return };
            self.opus_pt = w.payload_params().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
        }
        let Some(pt) = self.opus_pt else { return };
        let mut pcm = [0i16; 960];
        for (i, s) in pcm.iter_mut().enumerate() {
            let t = (self.phase + i as u64) as f64 / 48_000.0;
            *s = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
        }
        let mut buf = [0u8; 1500];
        let n = match self.enc.encode(&pcm, &mut buf) {
            Ok(n) => n,
            Err(e) => return self.err(format!("opus: {e}")),
        };
        let ts = MediaTime::new(self.phase, Frequency::FORTY_EIGHT_KHZ);
        self.phase += 960;
        if let Some(w) = self.rtc.writer(mid) {
            match w.write(pt, Instant::now(), ts, buf[..n].to_vec()) {
                Ok(()) => self.c.tx_audio_frames += 1,
                Err(e) => self.err(format!("write: {e}")),
            }
        }
    }

    /// Drain str0m's output; returns the next timeout.
    async fn drive(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Transmit(t)) => {
                    let _ = self.sock.send_to(&t.contents, t.destination).await;
                }
                Ok(Output::Event(e)) => self.on_event(e),
                Err(e) => {
                    self.err(format!("poll_output: {e}"));
                    return Instant::now() + Duration::from_millis(100);
                }
            }
        }
    }
}

async fn run_peer(mut p: Peer, mut rx: mpsc::UnboundedReceiver<Value>) {
    let mut buf = vec![0u8; 2000];
    let mut audio = tokio::time::interval(Duration::from_millis(20));
    let mut stats = tokio::time::interval(Duration::from_secs(2));
    // Impolite offers at once; polite waits up to 2 s for the impolite offer (PY rule).
    let first_offer_at = if p.policy == "always" || (!p.polite && p.policy != "defer") { Instant::now() } else { Instant::now() + Duration::from_secs(2) };
    let mut first_offer_done = p.policy == "answer-only";
    let mut follow_up_checked_at: Option<Instant> = None;
    loop {
        let deadline = p.drive().await;
        let now = Instant::now();
        if !first_offer_done && now >= first_offer_at {
            first_offer_done = true;
            if !p.negotiated_once && p.c.offers_recv == 0 {
                p.negotiate("initial");
            }
        }
        // Answer watchdog: an unanswered offer is abandoned (dropping SdpPendingOffer = rollback)
        // and re-made after 5 s.
        if let Some(since) = p.pending_since {
            if p.pending.is_some() && now.duration_since(since) > Duration::from_secs(5) && p.c.offers_sent < 4 {
                log(&p.id, "answer watchdog: abandon pending offer, re-offer");
                p.pending = None;
                p.negotiate("watchdog");
            }
        }
        // Follow-up offer (like PY `_maybe_follow_up`): 1 s after connecting, if the answered
        // offer lacked audio or a data channel.
        if p.rtc.is_connected() && p.pending.is_none() && p.policy != "answer-only" {
            let at = *follow_up_checked_at.get_or_insert(now + Duration::from_secs(1));
            if now >= at && (p.audio_mid.is_none() || !p.app_negotiated) && p.c.offers_sent < 3 {
                follow_up_checked_at = Some(now + Duration::from_secs(3));
                p.negotiate("follow-up");
            }
        }
        let wake = deadline.min(if first_offer_done { deadline } else { first_offer_at });
        let sock = p.sock.clone();
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                if let Ok((n, source)) = r {
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: p.local, contents });
                    if let Err(e) = p.rtc.handle_input(input) { p.err(format!("handle_input: {e}")); }
                }
            }
            m = rx.recv() => match m {
                Some(v) => p.on_signal(v),
                None => { log(&p.id, "peer left"); let _ = p.stats_tx.send((p.id.clone(), p.c.clone())); return; }
            },
            _ = sleep => {
                if let Err(e) = p.rtc.handle_input(Input::Timeout(Instant::now())) { p.err(format!("timeout: {e}")); }
            }
            _ = audio.tick() => p.send_audio(),
            _ = stats.tick() => { let _ = p.stats_tx.send((p.id.clone(), p.c.clone())); }
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(amain());
}

async fn amain() {
    let url = std::env::var("PARLOR_URL").expect("PARLOR_URL");
    let room = std::env::var("ROOM").unwrap_or_else(|_| "spike".into());
    let run_secs: u64 = std::env::var("RUN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let policy = std::env::var("OFFER_POLICY").unwrap_or_else(|_| "pyish".into());
    let ip = host_ip();
    let _ = t0();

    let client = SignallingClient::builder().url(url).api_key("pk_test_x").build().expect("client");
    let mut events = client.events();
    client.connect().await.expect("connect");
    let me = client.peer_id().expect("peer id");
    println!("MYID {me}");
    for r in room.split(',') {
        client.subscribe(r, SubscribeOptions::default()).await.expect("subscribe");
    }

    let mut peers: HashMap<String, mpsc::UnboundedSender<Value>> = HashMap::new();
    let (stats_tx, mut stats_rx) = mpsc::unbounded_channel::<(String, Counters)>();
    let mut latest: HashMap<String, (bool, Counters)> = HashMap::new();
    let mut polite_of: HashMap<String, bool> = HashMap::new();
    let end = tokio::time::sleep(Duration::from_secs(run_secs));
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            Some((id, c)) = stats_rx.recv() => { let pol = polite_of.get(&id).copied().unwrap_or(false); latest.insert(id, (pol, c)); }
            ev = events.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    SigEvent::Presence { joined, left, .. } => {
                        for pp in joined {
                            if pp.peer_id == me || peers.contains_key(&pp.peer_id) { continue; }
                            let polite = me < pp.peer_id;
                            polite_of.insert(pp.peer_id.clone(), polite);
                            log(&pp.peer_id, format!("peer joined; we are {}", if polite { "POLITE" } else { "IMPOLITE" }));
                            let sock = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap());
                            let local = sock.local_addr().unwrap();
                            // Outbound signals: one ordered sender task per remote.
                            let (otx, mut orx) = mpsc::unbounded_channel::<Value>();
                            let (c2, to) = (client.clone(), pp.peer_id.clone());
                            tokio::spawn(async move {
                                while let Some(v) = orx.recv().await {
                                    if let Err(e) = c2.send(&to, &v).await { log(&to, format!("send failed: {e}")); }
                                }
                            });
                            let mut rtc = Rtc::builder().set_stats_interval(Some(Duration::from_secs(1))).build(Instant::now());
                            rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
                            let enc = Encoder::new(SampleRate::Hz48000, Channels::Mono, Application::Voip).unwrap();
                            let p = Peer { me: me.clone(), id: pp.peer_id.clone(), polite, rtc, sock, local, out: otx, pending: None,
                                negotiated_once: false, app_negotiated: false, pending_has_app: false, pending_audio_mid: None, pending_since: None, audio_mid: None, opus_pt: None, channels: HashMap::new(), enc, phase: 0,
                                created: Instant::now(), c: Counters::default(), policy: policy.clone(), stats_tx: stats_tx.clone() };
                            let (tx, rx) = mpsc::unbounded_channel();
                            peers.insert(pp.peer_id.clone(), tx);
                            tokio::spawn(run_peer(p, rx));
                        }
                        for pp in left { peers.remove(&pp.peer_id); }
                    }
                    SigEvent::Direct { sender_peer_id, data, .. } => {
                        let Ok(v) = serde_json::from_str::<Value>(data.get()) else { continue };
                        match peers.get(&sender_peer_id) {
                            Some(tx) => { let _ = tx.send(v); }
                            None => log(&sender_peer_id, "direct from unknown peer dropped"),
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    // Final summary, one JSON line per remote.
    while let Ok((id, c)) = stats_rx.try_recv() { let pol = polite_of.get(&id).copied().unwrap_or(false); latest.insert(id, (pol, c)); }
    for (id, (polite, c)) in &latest {
        println!("SUMMARY {}", json!({"me": me, "remote": id, "we_polite": polite, "rx_audio_pkts": c.rx_audio_pkts, "rx_audio_bytes": c.rx_audio_bytes,
            "tx_audio_frames": c.tx_audio_frames, "dc_rx": c.dc_rx, "dc_tx": c.dc_tx, "dc_open": c.dc_open, "first_dc_rx": c.first_dc_rx,
            "offers_sent": c.offers_sent, "offers_recv": c.offers_recv, "answers_sent": c.answers_sent, "answers_recv": c.answers_recv,
            "glare_ignored": c.glare_ignored, "glare_rolled_back": c.glare_rolled_back, "cand_recv": c.cand_recv, "cand_bad": c.cand_bad,
            "eoc_recv": c.eoc_recv, "ice_states": c.ice_states, "connected_ms": c.connected_ms, "errors": c.errors}));
    }
    client.close().await;
}
