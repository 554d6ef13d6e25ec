//! # parlor-netsim
//!
//! One direction of a network path, modelled on a simulated clock: what Wi-Fi and mobile
//! callers put between a browser and a server. Packets go in with [`Link::send`] and come
//! out of [`Link::poll`] when their time has come, lost, late, reordered or duplicated as
//! the [`LinkConfig`] says. Sans-IO, like the rest of Parlor's state machines: time is
//! passed in, nothing sleeps, and a run is repeatable from its seed (print the seed of a
//! failing run and it fails the same way again).
//!
//! The impairments, applied in this order to each packet sent:
//! * **outages**: everything sent inside an outage window is lost;
//! * **loss**: independent ([`Loss::Random`]) or in bursts ([`Loss::Bursty`], a two-state
//!   Gilbert model with the given mean burst length);
//! * **rate cap**: the packet waits for the ones before it to be serialized at the rate;
//!   one that would wait longer than the queue limit is dropped (tail drop);
//! * **delay and jitter**: a fixed one-way delay plus a uniformly random extra delay up to
//!   the jitter, drawn per packet, so packets sent closer together than the jitter arrive
//!   reordered (as Linux netem does);
//! * **duplication**: a copy arrives, with a delay of its own;
//! * **in order** ([`LinkConfig::in_order`], a stream such as the WebSocket to the room
//!   server): a packet never overtakes one sent before it; a late packet holds back those
//!   behind it (head-of-line blocking), and duplicates are not made.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use parlor_netsim::{Link, LinkConfig, Loss};
//!
//! let t0 = Instant::now();
//! let config = LinkConfig {
//!     delay: Duration::from_millis(40),
//!     jitter: Duration::from_millis(30),
//!     loss: Loss::Random(0.05),
//!     ..LinkConfig::default()
//! };
//! let mut link = Link::new(config, 7, t0);
//! for k in 0..100u64 {
//!     link.send(t0 + Duration::from_millis(20 * k), k, 100);
//! }
//! let mut got = Vec::new();
//! let end = t0 + Duration::from_secs(5);
//! while let Some((at, k)) = link.poll(end) {
//!     assert!(at >= t0 + Duration::from_millis(20 * k + 40));
//!     got.push(k);
//! }
//! assert_eq!(got.len() as u64, 100 - link.stats().lost);
//! ```
#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How packets are lost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Loss {
    /// None lost.
    #[default]
    None,
    /// Each packet lost independently with this probability (0.0–1.0).
    Random(f64),
    /// Losses in bursts: a two-state Gilbert model whose long-run loss rate is `rate` and
    /// whose bursts (runs of lost packets) are `mean_burst` packets long on average.
    Bursty {
        /// Long-run fraction lost (0.0–1.0).
        rate: f64,
        /// Mean length of a run of lost packets (≥ 1).
        mean_burst: f64,
    },
}

impl Loss {
    /// The long-run fraction of packets lost.
    pub fn rate(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) | Loss::Bursty { rate: p, .. } => p.clamp(0.0, 1.0),
        }
    }
}

/// One direction of a path.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Extra delay per packet, uniformly random in `0..=jitter`.
    pub jitter: Duration,
    /// How packets are lost.
    pub loss: Loss,
    /// Probability that a packet is delivered twice (0.0–1.0).
    pub duplicate: f64,
    /// A bandwidth cap in bits per second (`None`: unlimited).
    pub rate_bps: Option<u64>,
    /// With a rate cap: the longest a packet may queue before it is dropped.
    pub queue_limit: Duration,
    /// Windows `(start, length)`, measured from the link's creation, in which every packet
    /// sent is lost.
    pub outages: Vec<(Duration, Duration)>,
    /// A stream rather than datagrams: packets arrive in the order sent (a late one delays
    /// those behind it) and are never duplicated. Loss still applies (an outage models a
    /// broken connection); leave `loss` at `None` for a healthy TCP path.
    pub in_order: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            duplicate: 0.0,
            rate_bps: None,
            queue_limit: Duration::from_millis(200),
            outages: Vec::new(),
            in_order: false,
        }
    }
}

/// What a link did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    /// Packets sent into the link.
    pub sent: u64,
    /// Packets lost (loss model and outages).
    pub lost: u64,
    /// Packets dropped at the rate cap's queue.
    pub dropped: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets delivered so far, copies included.
    pub delivered: u64,
    /// Packets delivered after one sent later than them (reordered).
    pub reordered: u64,
}

/// One direction of a path, carrying packets of type `T`.
#[derive(Debug)]
pub struct Link<T> {
    config: LinkConfig,
    rng: fastrand::Rng,
    start: Instant,
    /// In flight: (arrival, send order, packet), earliest arrival first.
    flight: BinaryHeap<Reverse<InFlight<T>>>,
    /// The Gilbert model is in its losing state.
    bursting: bool,
    /// With a rate cap: when the last queued packet has been serialized.
    busy_until: Option<Instant>,
    order: u64,
    /// The highest send order delivered.
    delivered_order: Option<u64>,
    /// In order: the arrival of the last packet sent.
    last_at: Option<Instant>,
    stats: LinkStats,
}

#[derive(Debug)]
struct InFlight<T> {
    at: Instant,
    order: u64,
    packet: T,
}

impl<T> PartialEq for InFlight<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl<T> Eq for InFlight<T> {}
impl<T> PartialOrd for InFlight<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for InFlight<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

impl<T: Clone> Link<T> {
    /// A link with this configuration, random draws seeded with `seed`, created at `start`
    /// (outage windows count from it).
    pub fn new(config: LinkConfig, seed: u64, start: Instant) -> Link<T> {
        Link {
            config,
            rng: fastrand::Rng::with_seed(seed),
            start,
            flight: BinaryHeap::new(),
            bursting: false,
            busy_until: None,
            order: 0,
            delivered_order: None,
            last_at: None,
            stats: LinkStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// What the link did so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Packets in flight.
    pub fn in_flight(&self) -> usize {
        self.flight.len()
    }

    fn lost(&mut self, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.start);
        if self
            .config
            .outages
            .iter()
            .any(|(from, len)| since >= *from && since < *from + *len)
        {
            return true;
        }
        match self.config.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.f64() < p,
            Loss::Bursty { rate, mean_burst } => {
                let rate = rate.clamp(0.0, 0.99);
                let burst = mean_burst.max(1.0);
                // Leave the losing state with 1/burst per packet; enter it at the rate that
                // makes the long-run fraction in it `rate`.
                let leave = 1.0 / burst;
                let enter = (rate * leave / (1.0 - rate)).min(1.0);
                let flip = self.rng.f64();
                self.bursting = if self.bursting {
                    flip >= leave
                } else {
                    flip < enter
                };
                self.bursting
            }
        }
    }

    fn jittered(&mut self, depart: Instant) -> Instant {
        let jitter = self.config.jitter.as_micros() as u64;
        let extra = if jitter == 0 {
            0
        } else {
            self.rng.u64(0..=jitter)
        };
        depart + self.config.delay + Duration::from_micros(extra)
    }

    /// Send `packet` (`size` bytes on the wire) at `now`.
    pub fn send(&mut self, now: Instant, packet: T, size: usize) {
        self.stats.sent += 1;
        let order = self.order;
        self.order += 1;
        if self.lost(now) {
            self.stats.lost += 1;
            return;
        }
        let depart = match self.config.rate_bps {
            Some(bps) if bps > 0 => {
                let from = self.busy_until.filter(|b| *b > now).unwrap_or(now);
                if from - now > self.config.queue_limit {
                    self.stats.dropped += 1;
                    return;
                }
                let wire = Duration::from_micros(size as u64 * 8 * 1_000_000 / bps);
                self.busy_until = Some(from + wire);
                from + wire
            }
            _ => now,
        };
        if !self.config.in_order
            && self.config.duplicate > 0.0
            && self.rng.f64() < self.config.duplicate
        {
            let at = self.jittered(depart);
            self.stats.duplicated += 1;
            self.flight.push(Reverse(InFlight {
                at,
                order,
                packet: packet.clone(),
            }));
        }
        let mut at = self.jittered(depart);
        if self.config.in_order {
            at = self.last_at.map_or(at, |last| at.max(last));
            self.last_at = Some(at);
        }
        self.flight.push(Reverse(InFlight { at, order, packet }));
    }

    /// The next packet that has arrived by `now`, with its arrival time; `None` when none
    /// has yet.
    pub fn poll(&mut self, now: Instant) -> Option<(Instant, T)> {
        if self.flight.peek().is_none_or(|Reverse(f)| f.at > now) {
            return None;
        }
        let Reverse(f) = self.flight.pop()?;
        self.stats.delivered += 1;
        match self.delivered_order {
            Some(d) if f.order < d => self.stats.reordered += 1,
            _ => self.delivered_order = Some(f.order),
        }
        Some((f.at, f.packet))
    }

    /// When the next packet in flight arrives.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.flight.peek().map(|Reverse(f)| f.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Sends `n` packets 20 ms apart and drains the link: (arrival, packet) in arrival order.
    fn run(config: LinkConfig, seed: u64, n: u64) -> (Vec<(Instant, u64)>, LinkStats, Instant) {
        let t0 = Instant::now();
        let mut link = Link::new(config, seed, t0);
        for k in 0..n {
            link.send(t0 + ms(20 * k), k, 160);
        }
        let mut out = Vec::new();
        while let Some(p) = link.poll(t0 + ms(20 * n + 10_000)) {
            out.push(p);
        }
        (out, link.stats(), t0)
    }

    #[test]
    fn a_stream_keeps_its_order_and_makes_no_copies() {
        let config = LinkConfig {
            delay: ms(30),
            jitter: ms(80),
            duplicate: 0.5,
            in_order: true,
            ..LinkConfig::default()
        };
        let (out, stats, t0) = run(config, 4, 200);
        let order: Vec<u64> = out.iter().map(|(_, k)| *k).collect();
        assert_eq!(order, (0..200).collect::<Vec<_>>());
        assert_eq!((stats.duplicated, stats.reordered), (0, 0));
        // Head-of-line blocking: arrivals never go backwards, and some packet waited for
        // the one before it (arrived later than its own delay and jitter allow).
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(out.iter().all(|(at, k)| *at >= t0 + ms(20 * k + 30)));
    }

    #[test]
    fn a_clean_link_delays_by_the_delay_alone_and_keeps_order() {
        let config = LinkConfig {
            delay: ms(50),
            ..LinkConfig::default()
        };
        let (out, stats, t0) = run(config, 1, 50);
        assert_eq!(out.len(), 50);
        for (i, (at, k)) in out.iter().enumerate() {
            assert_eq!(*k, i as u64);
            assert_eq!(*at, t0 + ms(20 * *k + 50));
        }
        assert_eq!(stats.lost + stats.reordered + stats.duplicated, 0);
    }

    #[test]
    fn random_loss_comes_near_its_rate_and_a_seed_repeats_a_run() {
        let config = LinkConfig {
            loss: Loss::Random(0.1),
            ..LinkConfig::default()
        };
        let (a, stats, _) = run(config.clone(), 42, 10_000);
        assert!((900..1100).contains(&stats.lost), "{stats:?}");
        let (b, _, _) = run(config, 42, 10_000);
        let keys = |v: &[(Instant, u64)]| v.iter().map(|p| p.1).collect::<Vec<_>>();
        assert_eq!(keys(&a), keys(&b));
    }

    #[test]
    fn bursty_loss_keeps_its_rate_in_longer_runs() {
        let config = LinkConfig {
            loss: Loss::Bursty {
                rate: 0.1,
                mean_burst: 3.0,
            },
            ..LinkConfig::default()
        };
        let (out, stats, _) = run(config, 9, 20_000);
        assert!((1700..2300).contains(&stats.lost), "{stats:?}");
        // Runs of lost packets average ~3.
        let got: std::collections::HashSet<u64> = out.iter().map(|p| p.1).collect();
        let (mut runs, mut in_run) = (0u64, false);
        for k in 0..20_000 {
            let lost = !got.contains(&k);
            if lost && !in_run {
                runs += 1;
            }
            in_run = lost;
        }
        let mean = stats.lost as f64 / runs as f64;
        assert!((2.5..3.5).contains(&mean), "mean burst {mean}");
    }

    #[test]
    fn jitter_wider_than_the_spacing_reorders() {
        let config = LinkConfig {
            delay: ms(30),
            jitter: ms(60),
            ..LinkConfig::default()
        };
        let (out, stats, t0) = run(config, 3, 1000);
        assert_eq!(out.len(), 1000);
        assert!(stats.reordered > 100, "{stats:?}");
        for (at, k) in &out {
            let sent = t0 + ms(20 * k);
            assert!(*at >= sent + ms(30) && *at <= sent + ms(90));
        }
        assert!(out.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn duplicates_outages_and_a_rate_cap() {
        let config = LinkConfig {
            duplicate: 0.5,
            outages: vec![(ms(1000), ms(200))],
            ..LinkConfig::default()
        };
        let (out, stats, _) = run(config, 5, 200);
        assert_eq!(stats.lost, 10); // packets 50..60
        assert!(out.iter().all(|p| !(50..60).contains(&p.1)));
        assert_eq!(out.len() as u64, 190 + stats.duplicated);
        assert!(stats.duplicated > 60);

        // 160-byte packets every 20 ms are 64 kbit/s: a 32 kbit/s cap queues them until
        // they wait longer than the limit, then drops about half.
        let config = LinkConfig {
            rate_bps: Some(32_000),
            queue_limit: ms(100),
            ..LinkConfig::default()
        };
        let (out, stats, t0) = run(config, 5, 500);
        assert!((230..270).contains(&stats.dropped), "{stats:?}");
        for (at, k) in &out {
            assert!(*at - (t0 + ms(20 * k)) <= ms(100 + 40));
        }
    }
}
