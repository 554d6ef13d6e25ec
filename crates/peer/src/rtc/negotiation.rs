//! Negotiation rules as sans-IO state machines (spec §2.4–§2.7): politeness, perfect
//! negotiation with the remote-rebuild detection of the Python SDK, inbound candidate caps,
//! and the in-place ICE-restart ladder. Time is passed in; nothing here does IO.

use std::time::{Duration, Instant};

use super::sdp;
use super::signal::{CandidateInit, SdpKind};

/// `local < remote` (plain string order; peer ids are ASCII, so JS and Python agree).
pub fn is_polite(local_peer_id: &str, remote_peer_id: &str) -> bool {
    local_peer_id < remote_peer_id
}

/// Candidates accepted per negotiation generation.
pub const MAX_CANDIDATES_PER_GENERATION: u32 = 200;
/// Longest accepted candidate string.
pub const MAX_CANDIDATE_LEN: usize = 1000;
/// Inbound rebuilds (remote rebuilt its PC) are rate-limited to one per this interval.
pub const REBUILD_COOLDOWN: Duration = Duration::from_secs(2);

/// Our side of the offer/answer exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalingState {
    /// No exchange in flight.
    Stable,
    /// We sent an offer and await the answer.
    HaveLocalOffer,
}

/// What to do with an inbound description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteAction {
    /// Impolite side in a collision, a stale answer, or a rebuild inside the cooldown: drop.
    Ignore,
    /// Apply the offer (rolling back any local offer) and answer it.
    AcceptOffer,
    /// The remote rebuilt its connection (new ufrag *and* fingerprint while stable): build a
    /// fresh local connection, then apply the offer and answer from it.
    RebuildThenAcceptOffer,
    /// Apply the answer to our pending offer.
    ApplyAnswer,
    /// The answer comes from a rebuilt remote connection (its DTLS fingerprint changed since
    /// the last remote description): a Python peer answers an ICE-restart offer from a brand
    /// new PC. The fingerprint cannot change in place, so build a fresh local connection
    /// and offer from it once the remote's rebuild cooldown has passed. The negotiator has
    /// forgotten the remote, so the fresh connection takes whatever answers it next.
    RebuildThenOffer,
}

/// What to do with an inbound candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateAction {
    /// Hand it to the ICE agent.
    Add(CandidateInit),
    /// End of candidates for this generation.
    EndOfCandidates,
    /// Drop silently (stale, ignored offer, over a cap, malformed).
    Drop,
}

/// Perfect negotiation for one remote peer (W3C pattern, spec §2.5), plus the candidate caps of
/// spec §2.6.
#[derive(Debug)]
pub struct Negotiator {
    polite: bool,
    state: SignalingState,
    making_offer: bool,
    ignore_offer: bool,
    have_remote: bool,
    remote_ufrag: Option<String>,
    remote_fingerprint: Option<String>,
    last_rebuild: Option<Instant>,
    candidates: u32,
    cap_logged: bool,
}

impl Negotiator {
    /// A negotiator for a fresh connection.
    pub fn new(polite: bool) -> Negotiator {
        Negotiator {
            polite,
            state: SignalingState::Stable,
            making_offer: false,
            ignore_offer: false,
            have_remote: false,
            remote_ufrag: None,
            remote_fingerprint: None,
            last_rebuild: None,
            candidates: 0,
            cap_logged: false,
        }
    }

    /// Whether we are the polite side.
    pub fn polite(&self) -> bool {
        self.polite
    }

    /// Current signalling state.
    pub fn state(&self) -> SignalingState {
        self.state
    }

    /// We started creating an offer.
    pub fn local_offer_started(&mut self) {
        self.making_offer = true;
    }

    /// Our offer went out; we await the answer.
    pub fn local_offer_sent(&mut self) {
        self.making_offer = false;
        self.state = SignalingState::HaveLocalOffer;
    }

    /// Our offer was abandoned (a remote description raced it).
    pub fn local_offer_abandoned(&mut self) {
        self.making_offer = false;
    }

    /// Our unanswered offer was rolled back (answer watchdog): back to stable.
    pub fn local_offer_rolled_back(&mut self) {
        self.making_offer = false;
        self.state = SignalingState::Stable;
    }

    fn new_generation(&mut self) {
        self.have_remote = true;
        self.candidates = 0;
        self.cap_logged = false;
    }

    /// Decide what to do with an inbound description at `now`.
    pub fn remote_description(
        &mut self,
        kind: SdpKind,
        sdp_text: &str,
        now: Instant,
    ) -> RemoteAction {
        match kind {
            SdpKind::Answer => {
                if self.state != SignalingState::HaveLocalOffer {
                    return RemoteAction::Ignore; // stale answer
                }
                self.state = SignalingState::Stable;
                self.ignore_offer = false;
                let fingerprint = sdp::fingerprint(sdp_text);
                if self.have_remote
                    && fingerprint.is_some()
                    && self.remote_fingerprint.is_some()
                    && fingerprint != self.remote_fingerprint
                {
                    self.have_remote = false;
                    self.remote_ufrag = None;
                    self.remote_fingerprint = None;
                    self.making_offer = false;
                    return RemoteAction::RebuildThenOffer;
                }
                self.remember_remote(sdp_text);
                self.new_generation();
                RemoteAction::ApplyAnswer
            }
            SdpKind::Offer => {
                let collision = self.making_offer || self.state != SignalingState::Stable;
                self.ignore_offer = !self.polite && collision;
                if self.ignore_offer {
                    return RemoteAction::Ignore;
                }
                let ufrag = sdp::ice_ufrag(sdp_text);
                let fingerprint = sdp::fingerprint(sdp_text);
                let rebuilt = !collision
                    && self.have_remote
                    && ufrag.is_some()
                    && fingerprint.is_some()
                    && ufrag != self.remote_ufrag
                    && fingerprint != self.remote_fingerprint;
                let action = if rebuilt {
                    if self
                        .last_rebuild
                        .is_some_and(|t| now.saturating_duration_since(t) < REBUILD_COOLDOWN)
                    {
                        return RemoteAction::Ignore;
                    }
                    self.last_rebuild = Some(now);
                    RemoteAction::RebuildThenAcceptOffer
                } else {
                    RemoteAction::AcceptOffer
                };
                // Accepting rolls back any local offer; we answer at once.
                self.making_offer = false;
                self.state = SignalingState::Stable;
                self.remote_ufrag = ufrag;
                self.remote_fingerprint = fingerprint;
                self.new_generation();
                action
            }
        }
    }

    fn remember_remote(&mut self, sdp_text: &str) {
        self.remote_ufrag = sdp::ice_ufrag(sdp_text);
        self.remote_fingerprint = sdp::fingerprint(sdp_text);
    }

    /// Decide what to do with an inbound candidate (`None` = end-of-candidates;
    /// `Some(Err(()))` = malformed).
    pub fn remote_candidate(&mut self, c: Option<Result<CandidateInit, ()>>) -> CandidateAction {
        let Some(c) = c else {
            return if self.have_remote && !self.ignore_offer {
                CandidateAction::EndOfCandidates
            } else {
                CandidateAction::Drop
            };
        };
        if self.ignore_offer || !self.have_remote {
            return CandidateAction::Drop;
        }
        self.candidates += 1;
        if self.candidates > MAX_CANDIDATES_PER_GENERATION {
            if !self.cap_logged {
                self.cap_logged = true;
                tracing::warn!(
                    cap = MAX_CANDIDATES_PER_GENERATION,
                    "ICE candidate cap reached; dropping the rest of this generation"
                );
            }
            return CandidateAction::Drop;
        }
        match c {
            Ok(c) if c.candidate.len() <= MAX_CANDIDATE_LEN => CandidateAction::Add(c),
            _ => CandidateAction::Drop,
        }
    }
}

/// Attempts of the ICE-restart ladder.
pub const ICE_RESTART_ATTEMPTS: u32 = 9;
/// How long a restart offer waits for its answer.
pub const RESTART_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Delay before restart attempt `k` (1-based): immediately, then 1, 2, 4, 8, 16, 30, 30, 30 s.
pub fn restart_delay(k: u32) -> Duration {
    if k <= 1 {
        Duration::ZERO
    } else {
        Duration::from_secs((1u64 << (k - 2).min(5)).min(30))
    }
}

/// What the ladder asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LadderEvent {
    /// Send an ICE-restart offer now (attempt number).
    Restart(u32),
    /// All attempts failed: surface `IceRestartExhausted` once (latched until connected).
    Exhausted,
}

/// The in-place ICE-restart ladder of the browser SDK (spec §2.7): 9 attempts, 15 s answer
/// watchdog per offer, exhaustion reported once, budget reset on `connected`.
#[derive(Debug, Default)]
pub struct RestartLadder {
    attempts: u32,
    due: Option<Instant>,
    answer_deadline: Option<Instant>,
    exhausted: bool,
}

impl RestartLadder {
    /// ICE failed: schedule the next attempt (no-op while one is pending or after exhaustion).
    pub fn ice_failed(&mut self, now: Instant) {
        if self.due.is_none() && self.answer_deadline.is_none() && !self.exhausted {
            self.schedule(now);
        }
    }

    fn schedule(&mut self, now: Instant) {
        self.due = Some(now + restart_delay(self.attempts + 1));
    }

    /// The connection is up: reset the budget and the latch.
    pub fn connected(&mut self) {
        *self = RestartLadder::default();
    }

    /// The answer to our restart offer arrived.
    pub fn answered(&mut self) {
        self.answer_deadline = None;
    }

    /// When [`RestartLadder::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.due, self.answer_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advance time.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<LadderEvent> {
        if self.answer_deadline.is_some_and(|d| d <= now) {
            self.answer_deadline = None; // the attempt failed: advance
            self.schedule(now);
        }
        if self.due.is_some_and(|d| d <= now) {
            self.due = None;
            if self.attempts >= ICE_RESTART_ATTEMPTS {
                if self.exhausted {
                    return None;
                }
                self.exhausted = true;
                return Some(LadderEvent::Exhausted);
            }
            self.attempts += 1;
            self.answer_deadline = Some(now + RESTART_ANSWER_TIMEOUT);
            return Some(LadderEvent::Restart(self.attempts));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(ufrag: &str, fp: &str) -> String {
        format!("v=0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:secret\r\na=fingerprint:sha-256 {fp}\r\n")
    }

    #[test]
    fn politeness_is_string_order() {
        assert!(is_polite("p_A", "p_B"));
        assert!(!is_polite("p_b", "p_B"));
        assert!(!is_polite("p_x", "p_x"));
    }

    #[test]
    fn glare_impolite_ignores_polite_accepts() {
        let now = Instant::now();
        let mut impolite = Negotiator::new(false);
        impolite.local_offer_started();
        impolite.local_offer_sent();
        assert_eq!(
            impolite.remote_description(SdpKind::Offer, &offer("u1", "AA"), now),
            RemoteAction::Ignore
        );
        // Candidates of the ignored offer are dropped silently.
        let c = CandidateInit {
            candidate: "candidate:1 1 udp 1 192.0.2.1 9 typ host".into(),
            sdp_mid: None,
            sdp_m_line_index: Some(0),
            username_fragment: None,
        };
        assert_eq!(
            impolite.remote_candidate(Some(Ok(c.clone()))),
            CandidateAction::Drop
        );

        let mut polite = Negotiator::new(true);
        polite.local_offer_started();
        assert_eq!(
            polite.remote_description(SdpKind::Offer, &offer("u2", "BB"), now),
            RemoteAction::AcceptOffer
        );
        assert_eq!(polite.state(), SignalingState::Stable);
        assert_eq!(
            polite.remote_candidate(Some(Ok(c.clone()))),
            CandidateAction::Add(c)
        );
        // A late answer to the rolled-back offer is stale.
        assert_eq!(
            polite.remote_description(SdpKind::Answer, &offer("u2", "BB"), now),
            RemoteAction::Ignore
        );
    }

    #[test]
    fn remote_rebuild_is_detected_with_cooldown() {
        let t0 = Instant::now();
        let mut n = Negotiator::new(false);
        assert_eq!(
            n.remote_description(SdpKind::Offer, &offer("u1", "AA"), t0),
            RemoteAction::AcceptOffer
        );
        // ICE restart only (ufrag changes, fingerprint same): normal renegotiation.
        assert_eq!(
            n.remote_description(SdpKind::Offer, &offer("u2", "AA"), t0),
            RemoteAction::AcceptOffer
        );
        // New PC on the other side (both change): rebuild.
        assert_eq!(
            n.remote_description(SdpKind::Offer, &offer("u3", "BB"), t0),
            RemoteAction::RebuildThenAcceptOffer
        );
        assert_eq!(
            n.remote_description(
                SdpKind::Offer,
                &offer("u4", "CC"),
                t0 + Duration::from_secs(1)
            ),
            RemoteAction::Ignore
        );
        assert_eq!(
            n.remote_description(
                SdpKind::Offer,
                &offer("u5", "DD"),
                t0 + Duration::from_secs(3)
            ),
            RemoteAction::RebuildThenAcceptOffer
        );
    }

    #[test]
    fn an_answer_from_a_rebuilt_remote_asks_for_a_fresh_connection() {
        let now = Instant::now();
        let mut n = Negotiator::new(true);
        let offered = |n: &mut Negotiator| {
            n.local_offer_started();
            n.local_offer_sent();
        };
        offered(&mut n);
        assert_eq!(
            n.remote_description(SdpKind::Answer, &offer("u1", "AA"), now),
            RemoteAction::ApplyAnswer
        );
        // An in-place ICE restart (browsers, Rust): new ufrag, same fingerprint.
        offered(&mut n);
        assert_eq!(
            n.remote_description(SdpKind::Answer, &offer("u2", "AA"), now),
            RemoteAction::ApplyAnswer
        );
        // The Python SDK answers a restart offer from a new PC: a new fingerprint.
        offered(&mut n);
        assert_eq!(
            n.remote_description(SdpKind::Answer, &offer("u3", "BB"), now),
            RemoteAction::RebuildThenOffer
        );
        assert_eq!(n.state(), SignalingState::Stable);
        // The fresh connection's offer takes whatever answers it (another new PC here).
        offered(&mut n);
        assert_eq!(
            n.remote_description(SdpKind::Answer, &offer("u4", "CC"), now),
            RemoteAction::ApplyAnswer
        );
        // A new PC's offer after the reset is simply accepted (the local side is fresh).
        let mut m = Negotiator::new(false);
        offered(&mut m);
        m.remote_description(SdpKind::Answer, &offer("u1", "AA"), now);
        offered(&mut m);
        assert_eq!(
            m.remote_description(SdpKind::Answer, &offer("u2", "BB"), now),
            RemoteAction::RebuildThenOffer
        );
        assert_eq!(
            m.remote_description(SdpKind::Offer, &offer("u3", "CC"), now),
            RemoteAction::AcceptOffer
        );
    }

    #[test]
    fn candidate_caps_reset_per_generation() {
        let now = Instant::now();
        let mut n = Negotiator::new(true);
        let c = |s: String| CandidateInit {
            candidate: s,
            sdp_mid: Some("0".into()),
            sdp_m_line_index: None,
            username_fragment: None,
        };
        // Before any remote description: stale.
        assert_eq!(
            n.remote_candidate(Some(Ok(c("candidate:x".into())))),
            CandidateAction::Drop
        );
        assert_eq!(n.remote_candidate(None), CandidateAction::Drop);
        n.remote_description(SdpKind::Offer, &offer("u1", "AA"), now);
        assert_eq!(
            n.remote_candidate(Some(Ok(c("a".repeat(1001))))),
            CandidateAction::Drop
        );
        assert_eq!(n.remote_candidate(Some(Err(()))), CandidateAction::Drop);
        let mut added = 0;
        for i in 0..300 {
            if let CandidateAction::Add(_) =
                n.remote_candidate(Some(Ok(c(format!("candidate:{i}")))))
            {
                added += 1;
            }
        }
        // 200 per generation, malformed and oversized ones count too.
        assert_eq!(added, 198);
        assert_eq!(n.remote_candidate(None), CandidateAction::EndOfCandidates);
        n.remote_description(SdpKind::Offer, &offer("u1", "AA"), now);
        assert!(matches!(
            n.remote_candidate(Some(Ok(c("candidate:again".into())))),
            CandidateAction::Add(_)
        ));
    }

    #[test]
    fn restart_schedule() {
        let secs: Vec<u64> = (1..=9).map(|k| restart_delay(k).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 16, 30, 30, 30]);
        let total: u64 = secs.iter().sum();
        assert_eq!(total, 121);
    }

    #[test]
    fn ladder_runs_nine_attempts_then_exhausts_once() {
        let mut t = Instant::now();
        let mut l = RestartLadder::default();
        l.ice_failed(t);
        let mut restarts = Vec::new();
        let mut exhausted = 0;
        for _ in 0..100 {
            let Some(next) = l.poll_timeout() else { break };
            t = next;
            match l.handle_timeout(t) {
                Some(LadderEvent::Restart(k)) => restarts.push(k), // no answer ever comes
                Some(LadderEvent::Exhausted) => exhausted += 1,
                None => {}
            }
        }
        assert_eq!(restarts, (1..=9).collect::<Vec<_>>());
        assert_eq!(exhausted, 1);
        // Latched: further failures do nothing until connected.
        l.ice_failed(t);
        assert_eq!(l.poll_timeout(), None);
        l.connected();
        l.ice_failed(t);
        assert_eq!(l.handle_timeout(t), Some(LadderEvent::Restart(1)));
        l.answered();
        assert_eq!(l.poll_timeout(), None);
    }
}
