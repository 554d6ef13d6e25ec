//! The inbound jitter buffer: puts a remote track's packets back in RTP order, waits for a
//! missing one only as long as the link's recent jitter says it may still come, and then
//! hands out a loss (to be recovered from the next packet's FEC, or concealed).
//!
//! Sans-IO, like [`MediaClock`]: arrival times are passed in; [`JitterBuffer::poll_timeout`]
//! says when to come back. An agent does not play what it hears, so nothing present is held
//! back: a packet whose predecessors are all in is released at once, and on a clean link the
//! buffer adds no delay at all. Only a gap makes it wait, for at most the *target delay*:
//! the latest any packet arrived in the last 5 s (relative to the earliest arrival the
//! stream has shown, [`MediaClock`]), capped at [`JitterBuffer::MAX_DELAY`].
//! A packet that comes after its place was given up is dropped and counted as late; its
//! lateness raises the target for the next gap.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use parlor_media::jitter::{JitterBuffer, Playout};
//! use parlor_peer::EncodedFrame;
//!
//! let frame = |k: u64| EncodedFrame { data: vec![k as u8].into(), samples: 960, rtp_time: k * 960 };
//! let ms = Duration::from_millis;
//! let t0 = Instant::now();
//! let mut jb = JitterBuffer::new();
//! jb.push(t0, frame(0));
//! jb.push(t0 + ms(50), frame(1)); // 30 ms late: the buffer now waits up to 30 ms for a gap
//! assert!(matches!(jb.pop(t0 + ms(50)), Some(Playout::Packet(f)) if f.rtp_time == 0));
//! assert!(matches!(jb.pop(t0 + ms(50)), Some(Playout::Packet(f)) if f.rtp_time == 960));
//! // Frame 3 overtakes frame 2: it waits for it until 2's deadline (40 ms + 30 ms).
//! jb.push(t0 + ms(61), frame(3));
//! assert!(jb.pop(t0 + ms(61)).is_none());
//! assert_eq!(jb.poll_timeout(), Some(t0 + ms(70)));
//! jb.push(t0 + ms(65), frame(2));
//! assert!(matches!(jb.pop(t0 + ms(65)), Some(Playout::Packet(f)) if f.rtp_time == 2 * 960));
//! assert!(matches!(jb.pop(t0 + ms(65)), Some(Playout::Packet(f)) if f.rtp_time == 3 * 960));
//! // Had 2 not come by then, `pop` would have handed out `Playout::Lost` with 3 for its FEC.
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor_peer::EncodedFrame;

use crate::frames::MediaClock;

/// Longest gap (in 48 kHz samples, 200 ms) handed out as losses, so that a burst of lost
/// packets keeps its place in time; a longer one (a pause in the sender's stream, a
/// restart) is skipped: the stream resumes at the next packet.
const MAX_CONCEALED: u64 = 10 * 960;
/// Arrivals the target delay is computed over (5 s of 20 ms packets).
const WINDOW: usize = 250;
/// Packets held at most: with this many waiting, the buffer stops waiting for a gap (the
/// overflow policy: give the missing packets up rather than hold more or drop arrived ones).
pub const MAX_HELD: usize = 100;

/// What to decode next.
#[derive(Debug, Clone)]
pub enum Playout {
    /// The packet with this RTP time: decode it.
    Packet(EncodedFrame),
    /// The `samples` starting at `rtp_time` were lost: conceal them, from `fec` (the next
    /// packet, whose in-band FEC may carry them) when given.
    Lost {
        /// RTP time of the first sample lost.
        rtp_time: u64,
        /// Samples (48 kHz) lost.
        samples: u64,
        /// The packet right after the loss, for its FEC.
        fec: Option<Arc<[u8]>>,
    },
}

/// What the buffer did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets handed out to decode.
    pub played: u64,
    /// Packets that came after their place had been given up (dropped).
    pub late: u64,
    /// Packets received twice (the copy dropped).
    pub duplicates: u64,
    /// Losses handed out (each up to one packet long).
    pub lost: u64,
    /// Of those, how many came with the next packet for its FEC.
    pub lost_with_fec: u64,
    /// Gaps skipped (too long to conceal: a pause or a restart).
    pub skipped_gaps: u64,
    /// Times the stream started over (RTP time jumped by more than [`MediaClock::RESET`]).
    pub resets: u64,
    /// Times the buffer was full and gave a gap up early.
    pub overflows: u64,
}

/// An inbound jitter buffer for one audio stream (48 kHz RTP clock). See the module docs.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    clock: MediaClock,
    next: Option<u64>,
    frame: u64,
    held: BTreeMap<u64, EncodedFrame>,
    /// Lateness of recent arrivals, in microseconds.
    lateness: VecDeque<u64>,
    target: Duration,
    max_delay: Duration,
    draining: bool,
    stats: JitterStats,
}

impl Default for JitterBuffer {
    fn default() -> Self {
        JitterBuffer::new()
    }
}

impl JitterBuffer {
    /// The longest the buffer waits for a missing packet, however jittery the link.
    pub const MAX_DELAY: Duration = Duration::from_millis(200);

    /// An empty buffer.
    pub fn new() -> JitterBuffer {
        JitterBuffer {
            clock: MediaClock::new(crate::codec::SAMPLE_RATE),
            next: None,
            frame: 960,
            held: BTreeMap::new(),
            lateness: VecDeque::with_capacity(WINDOW),
            target: Duration::ZERO,
            max_delay: JitterBuffer::MAX_DELAY,
            draining: false,
            stats: JitterStats::default(),
        }
    }

    /// Wait at most `max` for a missing packet (instead of [`JitterBuffer::MAX_DELAY`]); zero
    /// never waits (a late packet is given up as soon as a later one is in).
    pub fn with_max_delay(mut self, max: Duration) -> JitterBuffer {
        self.max_delay = max;
        self
    }

    /// What the buffer did so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// How long a missing packet is waited for now.
    pub fn target_delay(&self) -> Duration {
        self.target
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The stream ended: hand out what is held without waiting for any gap.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    fn reset_ticks() -> u64 {
        MediaClock::RESET.as_millis() as u64 * u64::from(crate::codec::SAMPLE_RATE) / 1000
    }

    /// A packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, packet: EncodedFrame) {
        self.stats.received += 1;
        let rtp = packet.rtp_time;
        if let Some(next) = self.next
            && rtp.abs_diff(next) > Self::reset_ticks()
        {
            // A restart (or a pause longer than the clock follows): start over from here.
            self.stats.resets += 1;
            self.held.clear();
            self.next = None;
            self.lateness.clear();
            self.clock = MediaClock::new(crate::codec::SAMPLE_RATE);
        }
        let placed = self.clock.place(rtp, now);
        let late_us = now.saturating_duration_since(placed).as_micros() as u64;
        if self.lateness.len() == WINDOW {
            self.lateness.pop_front();
        }
        self.lateness.push_back(late_us);
        self.target = self.latest().min(self.max_delay);

        if self.next.is_some_and(|next| rtp < next) {
            self.stats.late += 1;
            return;
        }
        if self.held.contains_key(&rtp) {
            self.stats.duplicates += 1;
            return;
        }
        if packet.samples > 0 {
            self.frame = u64::from(packet.samples);
        }
        self.held.insert(rtp, packet);
    }

    /// The latest any arrival in the window was. Waiting costs only at a gap (nothing present
    /// is held), so covering the whole spread is cheap: a 98th percentile gave up 2.5 % of
    /// the packets as late on a 60 ms-jitter link, the latest 0.5 %, at the same median and
    /// p95 delay (docs/decisions/jitter-buffer.md).
    fn latest(&self) -> Duration {
        Duration::from_micros(self.lateness.iter().copied().max().unwrap_or(0))
    }

    fn deadline(&self, rtp: u64) -> Option<Instant> {
        self.clock.at(rtp).map(|t| t + self.target)
    }

    /// When the missing `next` is given up: its deadline, or, when the packet after it is
    /// missing too (and a later one is in), that packet's deadline, since its in-band FEC
    /// carries `next` (a frame of waiting for a recovery instead of a concealment).
    fn give_up_at(&self, next: u64) -> Option<Instant> {
        let after = next + self.frame;
        let first = *self.held.keys().next()?;
        let wait_for = if first > after { after } else { next };
        self.deadline(wait_for)
    }

    /// The next thing to decode at `now`, or `None` (nothing held, or a gap still waited
    /// for: see [`poll_timeout`](JitterBuffer::poll_timeout)).
    pub fn pop(&mut self, now: Instant) -> Option<Playout> {
        loop {
            let next = match self.next {
                Some(n) => n,
                None => {
                    let k = *self.held.keys().next()?;
                    self.next = Some(k);
                    k
                }
            };
            if let Some(p) = self.held.remove(&next) {
                self.next = Some(next + u64::from(p.samples.max(1)));
                self.stats.played += 1;
                return Some(Playout::Packet(p));
            }
            let first = *self.held.keys().next()?;
            let full = self.held.len() >= MAX_HELD;
            let give_up_at = self.give_up_at(next);
            let waiting = !self.draining && !full && give_up_at.is_some_and(|at| now < at);
            if waiting {
                return None;
            }
            if full && !self.draining && give_up_at.is_some_and(|at| now < at) {
                self.stats.overflows += 1;
            }
            let gap = first.saturating_sub(next);
            if gap > MAX_CONCEALED || gap == 0 {
                self.stats.skipped_gaps += 1;
                self.next = Some(first);
                continue;
            }
            let samples = gap.min(self.frame);
            let fec = (gap == samples)
                .then(|| self.held.get(&first).map(|p| p.data.clone()))
                .flatten();
            self.next = Some(next + samples);
            self.stats.lost += 1;
            if fec.is_some() {
                self.stats.lost_with_fec += 1;
            }
            return Some(Playout::Lost {
                rtp_time: next,
                samples,
                fec,
            });
        }
    }

    /// When [`pop`](JitterBuffer::pop) will give a waited-for gap up, if it is waiting.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.next?;
        if self.held.is_empty() || self.held.contains_key(&next) {
            return None;
        }
        self.give_up_at(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_netsim::{Link, LinkConfig, Loss};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn packet(k: u64) -> EncodedFrame {
        EncodedFrame {
            data: Arc::from(&k.to_le_bytes()[..]),
            samples: 960,
            rtp_time: 10_000 + k * 960,
        }
    }

    /// What came out of a run: for each frame index, played (with the delay it added past
    /// its arrival) or lost (with FEC or not).
    #[derive(Debug, Default)]
    struct Outcome {
        played: Vec<(u64, Duration)>,
        lost: Vec<(u64, bool)>,
        stats: JitterStats,
        /// Delay past the link's best arrival (delay + 0 jitter) for each frame handed out.
        behind: Vec<Duration>,
    }

    /// `n` packets 20 ms apart through `config` (seeded), into a buffer polled the way
    /// `AudioFrames` polls it: at each arrival and at each deadline.
    fn run(config: LinkConfig, seed: u64, n: u64) -> Outcome {
        let t0 = Instant::now();
        let base = config.delay;
        let mut link = Link::new(config, seed, t0);
        for k in 0..n {
            link.send(t0 + ms(20 * k), packet(k), 100);
        }
        let mut jb = JitterBuffer::new();
        let mut out = Outcome::default();
        let mut arrived = std::collections::HashMap::new();
        let mut now = t0;
        let end = t0 + ms(20 * n + 5_000);
        while now < end {
            while let Some((at, p)) = link.poll(now) {
                arrived.entry(p.rtp_time).or_insert(at);
                jb.push(at, p);
            }
            while let Some(p) = jb.pop(now) {
                let (rtp, played) = match p {
                    Playout::Packet(f) => (f.rtp_time, true),
                    Playout::Lost { rtp_time, fec, .. } => {
                        out.lost.push(((rtp_time - 10_000) / 960, fec.is_some()));
                        (rtp_time, false)
                    }
                };
                let k = (rtp - 10_000) / 960;
                if played {
                    out.played.push((k, now - arrived[&rtp]));
                }
                out.behind.push(now - (t0 + ms(20 * k) + base));
            }
            let wake = [link.poll_timeout(), jb.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match wake {
                Some(w) if w > now => now = w,
                Some(_) => {}
                None => break,
            }
        }
        jb.drain();
        while let Some(p) = jb.pop(end) {
            if let Playout::Packet(f) = p {
                out.played
                    .push(((f.rtp_time - 10_000) / 960, Duration::ZERO));
            }
        }
        out.stats = jb.stats();
        out
    }

    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    #[test]
    fn a_clean_link_adds_no_delay() {
        let config = LinkConfig {
            delay: ms(40),
            ..LinkConfig::default()
        };
        let out = run(config, 1, 500);
        assert_eq!(out.played.len(), 500);
        assert!(out.played.iter().all(|(_, d)| d.is_zero()));
        assert!(out.lost.is_empty());
        // In order, every one.
        assert!(
            out.played
                .iter()
                .enumerate()
                .all(|(i, (k, _))| *k == i as u64)
        );
    }

    #[test]
    fn jitter_and_reordering_come_out_in_order_with_little_lost() {
        for seed in [1, 2, 3] {
            let config = LinkConfig {
                delay: ms(40),
                jitter: ms(60),
                ..LinkConfig::default()
            };
            let out = run(config, seed, 1500);
            let order: Vec<u64> = out.played.iter().map(|p| p.0).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "seed {seed}");
            // Early in the stream the target is still learning; after that ≤ 3 % are given up.
            let given_up = out.lost.iter().filter(|(k, _)| *k >= 250).count();
            assert!(given_up <= 37, "seed {seed}: {given_up} of 1250 given up");
            assert_eq!(
                out.played.len() + out.stats.late as usize,
                1500,
                "seed {seed}"
            );
            // What a reordered link costs: about the jitter, no more.
            let behind = median(out.behind.clone());
            assert!(behind <= ms(70), "seed {seed}: median {behind:?} behind");
        }
    }

    #[test]
    fn losses_are_handed_out_with_the_next_packet_for_its_fec() {
        let config = LinkConfig {
            delay: ms(40),
            jitter: ms(10),
            loss: Loss::Random(0.1),
            ..LinkConfig::default()
        };
        let seed = 11;
        let out = run(config, seed, 2000);
        let lost = 2000 - out.played.len();
        assert_eq!(lost, out.lost.len(), "seed {seed}: every gap is handed out");
        // A lone loss comes with its successor (FEC); only runs of losses lose it.
        let with_fec = out.lost.iter().filter(|(_, fec)| *fec).count();
        assert!(
            with_fec * 10 >= lost * 8,
            "seed {seed}: {with_fec} of {lost}"
        );
        // A loss costs at most the target delay (~the jitter), not a stall.
        let p95 = {
            let mut v = out.behind.clone();
            v.sort();
            v[v.len() * 95 / 100]
        };
        assert!(p95 <= ms(40), "seed {seed}: p95 {p95:?}");
    }

    #[test]
    fn duplicates_late_packets_restarts_and_a_pause() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new();
        jb.push(t0, packet(0));
        jb.push(t0, packet(0));
        assert_eq!(jb.stats().duplicates, 1);
        assert!(matches!(jb.pop(t0), Some(Playout::Packet(_))));
        // Frame 1 never comes; 2 waits until the target (0 on this clean start) passes.
        jb.push(t0 + ms(40), packet(2));
        assert!(matches!(
            jb.pop(t0 + ms(40)),
            Some(Playout::Lost {
                samples: 960,
                fec: Some(_),
                ..
            })
        ));
        assert!(matches!(jb.pop(t0 + ms(40)), Some(Playout::Packet(_))));
        // 1 shows up now: late, dropped.
        jb.push(t0 + ms(45), packet(1));
        assert!(jb.pop(t0 + ms(45)).is_none());
        assert_eq!(jb.stats().late, 1);
        // A pause of 1 s (the sender's clock ran on): no concealment, resumes at once.
        jb.push(t0 + ms(1060), packet(53));
        assert!(
            matches!(jb.pop(t0 + ms(1060)), Some(Playout::Packet(f)) if f.rtp_time == packet(53).rtp_time)
        );
        assert_eq!(jb.stats().skipped_gaps, 1);
        // RTP time 5 s ahead, then far back (restarts): each starts over.
        let mut ahead = packet(54);
        ahead.rtp_time += 5 * 48_000;
        let rtp = ahead.rtp_time;
        jb.push(t0 + ms(1100), ahead);
        assert!(matches!(jb.pop(t0 + ms(1100)), Some(Playout::Packet(f)) if f.rtp_time == rtp));
        let mut back = packet(0);
        back.rtp_time = 5;
        jb.push(t0 + ms(1120), back);
        assert!(matches!(jb.pop(t0 + ms(1120)), Some(Playout::Packet(f)) if f.rtp_time == 5));
        assert_eq!(jb.stats().resets, 2);
    }

    /// Frames 0..60 at 20 ms, every fifth of the first 40 arriving `late_ms` late, pushed
    /// in arrival order and popped as they come.
    fn learn(jb: &mut JitterBuffer, t0: Instant, late_ms: u64) {
        let mut arrivals: Vec<(u64, u64)> = (0..60)
            .map(|k| {
                let late = if k % 5 == 0 && k < 40 { late_ms } else { 0 };
                (20 * k + late, k)
            })
            .collect();
        arrivals.sort();
        for (at, k) in arrivals {
            jb.push(t0 + ms(at), packet(k));
            while jb.pop(t0 + ms(at)).is_some() {}
        }
    }

    #[test]
    fn a_full_buffer_gives_the_gap_up_and_draining_waits_for_nothing() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new();
        learn(&mut jb, t0, 150);
        assert!(jb.target_delay() >= ms(140), "{:?}", jb.target_delay());
        // Frame 60 lost; 61.. arrive at once, as many as the buffer holds, sent faster than
        // real time (a sender's burst): the gap is given up, nothing held is dropped.
        let now = t0 + ms(20 * 60 + 10);
        for k in 61..(61 + MAX_HELD as u64) {
            jb.push(now, packet(k));
        }
        assert_eq!(jb.len(), MAX_HELD);
        assert!(matches!(jb.pop(now), Some(Playout::Lost { .. })));
        let mut n = 0;
        while let Some(Playout::Packet(_)) = jb.pop(now) {
            n += 1;
        }
        assert_eq!(n, MAX_HELD);

        // Draining: a gap is given up without waiting.
        let mut jb = JitterBuffer::new();
        learn(&mut jb, t0, 100);
        let now = t0 + ms(20 * 62);
        jb.push(now, packet(62));
        assert!(jb.pop(now).is_none());
        assert!(jb.poll_timeout().is_some_and(|t| t > now));
        jb.drain();
        assert!(matches!(jb.pop(now), Some(Playout::Lost { .. })));
    }
}
