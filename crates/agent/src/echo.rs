//! Echo-aware gating (sans-IO): telling the agent's own voice, coming back through a human's
//! open microphone, from the human.
//!
//! The agent knows what its voice sent and when (`parlor_media::OutputLevels`: a level every
//! 20 ms). A microphone near a speaker hears that again later and quieter: the level envelope
//! of the microphone follows the envelope of the voice, delayed by `d` and scaled by `g`. The
//! gate finds `d` (0–500 ms) as the delay at which the two envelopes correlate best over the
//! last 3 s, and `g` as the median ratio of the levels there; only when the correlation is
//! clear is an echo assumed at all: a new path must correlate at [`NEW_CORRELATION`] at the same
//! delay (±20 ms) in 6 estimates in a row (600 ms; a human talking over the voice correlates
//! with it now and then, at a delay that wanders), and a path found is kept while it
//! correlates at [`MIN_CORRELATION`]. A microphone window counts
//! as possible speech only when it is louder than [`MARGIN`] × the echo predicted for it
//! (`g` × the voice's level around `t − d`). Until the gate has heard enough of the voice to
//! know (an echo shows within ~0.9 s of the voice's speech; its absence takes 1 s), a window
//! heard while the voice is speaking must be louder than the voice itself, which no echo
//! through a speaker is. Once it
//! knows there is no echo, the gain is 0 and every window passes: barge-in is as fast as
//! without the gate. Times are passed in; slots are 20 ms.
//!
//! Recording and judging are apart: [`EchoGate::hear`] records a window and says what it makes
//! of it now; a window it was [`Verdict::Unsure`] of (still learning, the window no louder than
//! the voice: the human talking quietly over the call's first reply, or its echo) can be judged
//! again with [`EchoGate::judge`] once the gate knows, so a human who talks over the agent's
//! first second of speech is heard late rather than not at all.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One slot of the envelopes.
pub const SLOT: Duration = Duration::from_millis(20);
/// The longest echo delay looked for, in slots (500 ms).
pub const MAX_DELAY_SLOTS: usize = 25;
/// The history the estimate looks at, in slots (3 s).
const HISTORY: usize = 150;
/// Slots kept (history plus the longest delay).
const KEEP: usize = HISTORY + MAX_DELAY_SLOTS + 4;
/// The weakest correlation taken for an echo.
pub const MIN_CORRELATION: f32 = 0.5;
/// How much louder than the predicted echo a window must be to count as speech.
pub const MARGIN: f32 = 1.5;
/// Below this level (s16 RMS) the voice is not speaking: its slots teach nothing.
pub(crate) const VOICE_ACTIVE: f32 = 300.0;
/// Pairs needed for an estimate (0.3 s of the voice speaking).
pub const MIN_PAIRS: usize = 15;
/// Pairs needed to conclude there is no echo (1 s of the voice speaking).
const NO_ECHO_PAIRS: usize = 50;
/// The weakest correlation that starts a new echo path (one known may drop to
/// [`MIN_CORRELATION`]).
pub const NEW_CORRELATION: f32 = 0.6;
/// Estimates in a row (100 ms apart) that must find a new echo at the same delay before it
/// is taken.
const CONFIRM: usize = 6;
/// Once an echo was found, estimates in a row that must find none before it is forgotten
/// (5 s: one every 100 ms). The human talking over the voice (double talk) decorrelates the
/// envelopes for as long as they talk; the echo is still there.
const FORGET_ESTIMATES: usize = 50;

/// The current estimate of the echo path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EchoPath {
    /// Delay from the voice to the microphone.
    pub delay: Duration,
    /// Level of the echo relative to the voice.
    pub gain: f32,
    /// How well the envelopes matched at that delay.
    pub correlation: f32,
}

/// What the gate makes of a microphone window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Louder than the echo predicted for it (or no echo to predict): may be the human.
    Speech,
    /// No louder than the echo of the voice predicted for it: the agent's own voice.
    Echo,
    /// The gate is still learning whether this microphone carries the voice, and the window
    /// is no louder than the voice around it: ask again ([`EchoGate::judge`]) once it knows.
    Unsure,
}

/// One microphone's echo gate.
#[derive(Debug, Clone)]
pub struct EchoGate {
    epoch: Option<Instant>,
    /// Slot index of `voice[0]` and `mic[0]`.
    first: u64,
    voice: VecDeque<f32>,
    mic: VecDeque<Option<f32>>,
    path: Option<EchoPath>,
    /// An estimate was possible once: `path` is knowledge, not ignorance.
    learned: bool,
    since_estimate: usize,
    /// Estimates in a row that found no echo while one was known.
    doubts: usize,
    /// A new path seen, not yet taken: its delay (slots) and the estimates in a row that
    /// found it there.
    candidate: Option<(usize, usize)>,
}

impl Default for EchoGate {
    fn default() -> Self {
        EchoGate::new()
    }
}

impl EchoGate {
    /// A gate that has heard nothing yet.
    pub fn new() -> EchoGate {
        EchoGate {
            epoch: None,
            first: 0,
            voice: VecDeque::new(),
            mic: VecDeque::new(),
            path: None,
            learned: false,
            since_estimate: 0,
            doubts: 0,
            candidate: None,
        }
    }

    /// The echo path found, if any.
    pub fn path(&self) -> Option<EchoPath> {
        self.path
    }

    /// Whether the gate has heard enough of the voice to know that this microphone does not
    /// carry it back (as opposed to not knowing yet).
    pub fn knows_no_echo(&self) -> bool {
        self.learned && self.path.is_none()
    }

    fn slot(&mut self, at: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(at);
        (at.saturating_duration_since(epoch).as_millis() / SLOT.as_millis()) as u64
    }

    /// Make room for slot `s` (and drop what is older than the window).
    fn reach(&mut self, s: u64) -> Option<usize> {
        if s < self.first {
            return None;
        }
        while self.first + (self.voice.len() as u64) <= s {
            self.voice.push_back(0.0);
            self.mic.push_back(None);
        }
        while self.voice.len() > KEEP {
            self.voice.pop_front();
            self.mic.pop_front();
            self.first += 1;
        }
        s.checked_sub(self.first).map(|i| i as usize)
    }

    /// The voice sent a frame of `level` at `at`.
    pub fn voice(&mut self, at: Instant, level: f32) {
        let s = self.slot(at);
        if let Some(i) = self.reach(s) {
            self.voice[i] = self.voice[i].max(level);
        }
    }

    /// Whether the gate is still learning: it has not yet heard enough of the voice to know
    /// whether this microphone carries it back ([`Verdict::Unsure`] is possible).
    pub fn learning(&self) -> bool {
        !self.learned && self.path.is_none()
    }

    /// The microphone delivered audio of `level` at `at`: record it (the gate learns from it)
    /// and judge it with what the gate knows now.
    pub fn hear(&mut self, at: Instant, level: f32) -> Verdict {
        let s = self.slot(at);
        let Some(i) = self.reach(s) else {
            return Verdict::Speech;
        };
        self.mic[i] = Some(self.mic[i].map_or(level, |m| m.max(level)));
        self.since_estimate += 1;
        if self.since_estimate >= 5 {
            self.since_estimate = 0;
            self.estimate();
        }
        self.verdict(i, level)
    }

    /// Judge again a window heard at `at` with `level` ([`EchoGate::hear`]), with what the
    /// gate knows now: a window it was unsure of while learning is speech if the gate has
    /// since found no echo, or if it is louder than the echo path found predicts. Records
    /// nothing. A window older than the gate's history (~3.5 s) is judged by the state alone.
    pub fn judge(&self, at: Instant, level: f32) -> Verdict {
        let Some(epoch) = self.epoch else {
            return Verdict::Speech;
        };
        let s = (at.saturating_duration_since(epoch).as_millis() / SLOT.as_millis()) as u64;
        match s.checked_sub(self.first) {
            Some(i) => self.verdict(i as usize, level),
            None if self.learning() => Verdict::Unsure,
            None if self.path.is_some() => Verdict::Echo,
            None => Verdict::Speech,
        }
    }

    /// The verdict on a window of `level` in slot `i`.
    fn verdict(&self, i: usize, level: f32) -> Verdict {
        let voice_around = |from: usize, to: usize| {
            (from..=to)
                .filter_map(|k| self.voice.get(k).copied())
                .fold(0.0f32, f32::max)
        };
        let speech = |yes: bool, no: Verdict| if yes { Verdict::Speech } else { no };
        match self.path {
            Some(path) => {
                let d = (path.delay.as_millis() / SLOT.as_millis()) as usize;
                let voice = voice_around(
                    i.saturating_sub(d + 2),
                    i.saturating_sub(d.saturating_sub(2)),
                );
                speech(level > MARGIN * path.gain * voice, Verdict::Echo)
            }
            // Still learning: louder than anything the voice said in the last 500 ms.
            None if !self.learned => speech(
                level > voice_around(i.saturating_sub(MAX_DELAY_SLOTS), i),
                Verdict::Unsure,
            ),
            None => Verdict::Speech,
        }
    }

    /// (microphone, voice `d` slots earlier) for the slots from `start` where the voice spoke
    /// and the microphone was heard.
    fn pairs(&self, start: usize, d: usize) -> impl Iterator<Item = (f32, f32)> + '_ {
        (start.max(d)..self.mic.len()).filter_map(move |k| {
            let r = self.voice[k - d];
            (r >= VOICE_ACTIVE).then_some(())?;
            self.mic[k].map(|m| (m, r))
        })
    }

    /// Re-estimate the echo path over the last [`HISTORY`] slots.
    fn estimate(&mut self) {
        let n = self.mic.len();
        let start = n.saturating_sub(HISTORY);
        let mut best: Option<(usize, f32, usize)> = None;
        for d in 0..=MAX_DELAY_SLOTS {
            let (c, count) = pearson(self.pairs(start, d));
            if count < MIN_PAIRS {
                continue;
            }
            if best.is_none_or(|(_, b, _)| c > b) {
                best = Some((d, c, count));
            }
        }
        let Some((d, correlation, pairs)) = best else {
            // The voice has not spoken for a while: keep what was found (its echo tail).
            return;
        };
        if correlation < MIN_CORRELATION {
            self.candidate = None;
            // "No echo" takes more evidence than "an echo": 1 s of the voice, and where an
            // echo was found, 5 s of finding none (not a human talking over it).
            if pairs >= NO_ECHO_PAIRS {
                self.learned = true;
                self.doubts += 1;
                if self.path.is_none() || self.doubts >= FORGET_ESTIMATES {
                    self.path = None;
                }
            }
            return;
        }
        // A new echo must show at the same delay (±20 ms) in CONFIRM estimates in a row: a
        // human talking over the voice correlates with it now and then, at a delay that
        // wanders; a real echo path stays put.
        let known = self
            .path
            .is_some_and(|p| (p.delay.as_millis() / SLOT.as_millis()).abs_diff(d as u128) <= 1);
        if !known {
            let seen = match self.candidate {
                _ if correlation < NEW_CORRELATION => 0,
                Some((c, n)) if c.abs_diff(d) <= 1 => n + 1,
                _ => 1,
            };
            self.candidate = Some((d, seen));
            if seen < CONFIRM {
                return;
            }
        }
        self.candidate = None;
        self.learned = true;
        self.doubts = 0;
        let mut ratios: Vec<f32> = self.pairs(start, d).map(|(m, r)| m / r).collect();
        ratios.sort_by(f32::total_cmp);
        let gain = ratios
            .get(ratios.len() / 2)
            .copied()
            .unwrap_or(0.0)
            .min(4.0);
        self.path = Some(EchoPath {
            delay: SLOT * d as u32,
            gain,
            correlation,
        });
    }
}

/// Pearson correlation of the pairs, and how many there were (one pass, no allocation).
fn pearson(pairs: impl Iterator<Item = (f32, f32)>) -> (f32, usize) {
    let (mut n, mut sx, mut sy, mut sxx, mut syy, mut sxy) = (0usize, 0.0, 0.0, 0.0, 0.0, 0.0);
    for (x, y) in pairs {
        let (x, y) = (f64::from(x), f64::from(y));
        n += 1;
        sx += x;
        sy += y;
        sxx += x * x;
        syy += y * y;
        sxy += x * y;
    }
    if n == 0 {
        return (0.0, 0);
    }
    let nf = n as f64;
    let cov = sxy - sx * sy / nf;
    let (vx, vy) = (sxx - sx * sx / nf, syy - sy * sy / nf);
    if vx <= 0.0 || vy <= 0.0 {
        return (0.0, n);
    }
    ((cov / (vx * vy).sqrt()) as f32, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voice envelope like speech: syllables every ~200 ms, pauses between words.
    fn voice_level(k: u64) -> f32 {
        let syllable = ((k as f32) * 0.33).sin().abs();
        let word = if (k / 17) % 4 == 3 { 0.0 } else { 1.0 };
        4_000.0 * syllable * word
    }

    /// Feed `slots` of voice, and of a microphone hearing it at `gain` after `delay_slots`
    /// plus `human` (a function of the slot); whether each microphone window may be speech.
    fn run(
        gate: &mut EchoGate,
        t0: Instant,
        slots: std::ops::Range<u64>,
        gain: f32,
        delay_slots: u64,
        human: impl Fn(u64) -> f32,
    ) -> Vec<bool> {
        heard(gate, t0, slots, gain, delay_slots, human)
            .into_iter()
            .map(|(_, _, verdict)| verdict == Verdict::Speech)
            .collect()
    }

    /// Feed `slots` as [`run`] does; each microphone window's time, level and verdict
    /// ([`EchoGate::hear`]).
    fn heard(
        gate: &mut EchoGate,
        t0: Instant,
        slots: std::ops::Range<u64>,
        gain: f32,
        delay_slots: u64,
        human: impl Fn(u64) -> f32,
    ) -> Vec<(Instant, f32, Verdict)> {
        slots
            .map(|k| {
                let at = t0 + SLOT * k as u32;
                gate.voice(at, voice_level(k));
                let echo = if k >= delay_slots {
                    gain * voice_level(k - delay_slots)
                } else {
                    0.0
                };
                let h = human(k);
                let level = (echo * echo + h * h).sqrt() + 20.0;
                (at, level, gate.hear(at, level))
            })
            .collect()
    }

    #[test]
    fn an_echo_at_minus_6_db_is_found_and_gated() {
        let t0 = Instant::now();
        let mut gate = EchoGate::new();
        let verdicts = run(&mut gate, t0, 0..300, 0.5, 8, |_| 0.0);
        let path = gate.path().expect("an echo path");
        assert!(!gate.knows_no_echo());
        assert_eq!(path.delay, Duration::from_millis(160), "{path:?}");
        assert!((path.gain - 0.5).abs() < 0.1, "{path:?}");
        // Once found (within ~1 s), the echo alone never passes.
        let loud_echo: Vec<usize> = (75..300)
            .filter(|&k| voice_level(k as u64 - 8) > 500.0)
            .collect();
        let passed = loud_echo.iter().filter(|&&k| verdicts[k]).count();
        assert!(
            passed * 20 < loud_echo.len(),
            "{passed} of {} echo windows passed",
            loud_echo.len()
        );
        // A human louder than the echo does pass, the echo still running.
        let human = |k: u64| {
            if (310..330).contains(&k) {
                4_000.0
            } else {
                0.0
            }
        };
        let verdicts = run(&mut gate, t0, 300..340, 0.5, 8, human);
        assert!(verdicts[10..30].iter().all(|v| *v), "{verdicts:?}");
    }

    #[test]
    fn without_an_echo_everything_passes() {
        let t0 = Instant::now();
        let mut gate = EchoGate::new();
        // The voice speaks, the microphone hears a human unrelated to it.
        let human = |k: u64| 1_500.0 * ((k as f32) * 0.71).cos().abs();
        assert!(!gate.knows_no_echo(), "nothing heard yet: not known");
        let verdicts = run(&mut gate, t0, 0..300, 0.0, 0, human);
        assert_eq!(gate.path(), None);
        assert!(gate.knows_no_echo());
        // Only while it learns (the voice's first second of speech) is a quieter human held
        // back; from then on everything passes.
        assert!(verdicts[90..].iter().all(|v| *v), "{verdicts:?}");
    }

    #[test]
    fn a_quiet_human_over_the_first_second_is_judged_again_once_the_gate_knows() {
        // No echo; from the start a human quieter than the voice talks over it (a greeting
        // interrupted): while the gate learns, their windows are unsure, not speech.
        let t0 = Instant::now();
        let mut gate = EchoGate::new();
        let human = |k: u64| 1_500.0 * ((k as f32) * 0.71).cos().abs() + 300.0;
        let windows = heard(&mut gate, t0, 0..150, 0.0, 0, human);
        let unsure: Vec<_> = windows.iter().filter(|w| w.2 == Verdict::Unsure).collect();
        assert!(unsure.len() > 20, "{} unsure windows", unsure.len());
        assert!(windows.iter().all(|w| w.2 != Verdict::Echo));
        assert!(gate.knows_no_echo() && !gate.learning());
        // Judged again now that it knows: every one of them is the human.
        for (at, level, _) in unsure {
            assert_eq!(gate.judge(*at, *level), Verdict::Speech);
        }
    }

    #[test]
    fn an_echo_heard_while_learning_is_judged_echo_once_the_path_is_found() {
        let t0 = Instant::now();
        let mut gate = EchoGate::new();
        assert!(gate.learning());
        let windows = heard(&mut gate, t0, 0..150, 0.5, 8, |_| 0.0);
        assert!(gate.path().is_some() && !gate.learning());
        let loud_unsure: Vec<_> = windows
            .iter()
            .filter(|w| w.2 == Verdict::Unsure && w.1 > 500.0)
            .collect();
        assert!(loud_unsure.len() > 10, "{} unsure", loud_unsure.len());
        let speech = loud_unsure
            .iter()
            .filter(|(at, level, _)| gate.judge(*at, *level) == Verdict::Speech)
            .count();
        assert!(
            speech * 20 < loud_unsure.len(),
            "{speech} of {} echo windows judged speech again",
            loud_unsure.len()
        );
        // A window older than the gate's history is judged by what it knows.
        let mut late = gate.clone();
        run(&mut late, t0, 150..400, 0.5, 8, |_| 0.0);
        assert_eq!(late.judge(t0, 100.0), Verdict::Echo);
    }

    #[test]
    fn double_talk_does_not_make_it_forget_the_echo() {
        let t0 = Instant::now();
        let mut gate = EchoGate::new();
        run(&mut gate, t0, 0..300, 0.5, 8, |_| 0.0);
        assert!(gate.path().is_some());
        // The human talks over the voice for 2 s: the envelopes no longer correlate.
        let human = |k: u64| 3_000.0 * ((k as f32) * 0.71).cos().abs();
        run(&mut gate, t0, 300..400, 0.5, 8, human);
        assert!(
            gate.path().is_some(),
            "the echo was forgotten in double talk"
        );
        assert!(!gate.knows_no_echo());
        // The echo really goes (headphones): after 5 s of the voice without it, forgotten.
        run(&mut gate, t0, 400..800, 0.0, 8, human);
        assert_eq!(gate.path(), None);
        assert!(gate.knows_no_echo());
    }

    #[test]
    fn other_delays_and_gains() {
        for (delay, gain) in [(0u64, 0.5f32), (5, 0.25), (15, 1.0), (24, 0.5)] {
            let mut gate = EchoGate::new();
            run(&mut gate, Instant::now(), 0..300, gain, delay, |_| 0.0);
            let path = gate
                .path()
                .unwrap_or_else(|| panic!("delay {delay}: no path"));
            assert_eq!(path.delay, SLOT * delay as u32, "{path:?}");
            assert!((path.gain - gain).abs() < 0.15 * gain.max(0.5), "{path:?}");
        }
    }

    /// The echo's windows that pass when the microphone's frames come in bursts (the
    /// listener stalled 200 ms of every second, then got them at once), timed by arrival or
    /// placed by their RTP times.
    fn bursty_echo_passed(placed: bool) -> usize {
        let t0 = Instant::now();
        let mut gate = EchoGate::new();
        let mut clock = parlor_media::MediaClock::new(48_000);
        let delay = 8;
        let mut passed = 0;
        for k in 0..500u64 {
            let at = t0 + SLOT * k as u32;
            gate.voice(at, voice_level(k));
            let echo = if k >= delay {
                0.5 * voice_level(k - delay)
            } else {
                0.0
            };
            let arrived = if k % 50 >= 40 {
                t0 + SLOT * (50 * (k / 50 + 1)) as u32
            } else {
                at + Duration::from_millis(3)
            };
            let at = if placed {
                clock.place(k * 960, arrived)
            } else {
                arrived
            };
            let open = gate.hear(at, echo + 20.0) == Verdict::Speech;
            if k >= 100 && echo > 500.0 && open {
                passed += 1;
            }
        }
        passed
    }

    #[test]
    fn bursts_of_late_frames_placed_by_rtp_time_stay_gated() {
        let by_arrival = bursty_echo_passed(false);
        let placed = bursty_echo_passed(true);
        assert!(placed <= 2, "{placed} echo windows passed");
        assert!(
            by_arrival > 5 * placed.max(1),
            "by arrival {by_arrival}, placed {placed}"
        );
    }

    /// A human who talks over the voice now and then (no echo at all), with an envelope of
    /// their own (seeded): how many of `runs` gates took it for an echo.
    fn spurious_echoes(runs: u64, talk_slots: u64) -> usize {
        let mut found = 0;
        for seed in 0..runs {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut random = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 10_000) as f32 / 10_000.0
            };
            let t0 = Instant::now();
            let mut gate = EchoGate::new();
            let mut level = 0.0f32;
            let mut ever = false;
            for k in 0..1_500u64 {
                let at = t0 + SLOT * k as u32;
                gate.voice(at, voice_level(k));
                // Speaking 0.6 s of every 4 s, syllables of their own.
                let talking = k % 200 < talk_slots;
                level = if talking {
                    0.6 * level + 0.4 * 5_000.0 * random()
                } else {
                    20.0
                };
                gate.hear(at, level);
                ever |= gate.path().is_some();
            }
            found += usize::from(ever);
        }
        found
    }

    #[test]
    fn a_human_talking_over_the_voice_is_not_taken_for_an_echo() {
        // Before a new path had to hold its delay (CONFIRM) and correlate at 0.6, 113, 153
        // and 153 of 200 such gates found an echo at some point (and held it for 5 s, the
        // own-words check on: in an eval run it threw away "Tell me about the weather today.").
        for talk in [30, 60, 150] {
            let found = spurious_echoes(50, talk);
            assert!(
                found <= 1,
                "talking {talk} slots in 200: {found} of 50 found an echo"
            );
        }
    }
}
