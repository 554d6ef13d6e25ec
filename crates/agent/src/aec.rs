//! Echo cancellation (sans-IO): the agent's own voice removed from a human's microphone, with
//! what the voice sent as the reference.
//!
//! [`EchoCanceller`] runs WebRTC's AEC3 (the pure-Rust port in `sonora-aec3`, which passes
//! WebRTC's own test suite) at 16 kHz mono: the adaptive filter learns the echo path from the
//! voice to this microphone (its delay, 0–~500 ms, and its colouring) and subtracts the
//! predicted echo ([`AecOutput::Linear`]); AEC3's suppressor can take out what remains
//! ([`AecOutput::Suppressed`]), at a cost to what the human says over the voice.
//!
//! AEC3 wants the reference (render) and the microphone (capture) as two streams of 4 ms
//! blocks, the render block for a moment passed just before the capture block of the same
//! moment. Both arrive here on their own schedules (the voice's pacer every 20 ms, the
//! microphone when its packets come), so both are placed on one timeline of 4 ms blocks:
//! a voice frame at the block of the moment it left the pacer (silence between utterances
//! is zeros), the microphone's audio contiguously from where its first audio arrived, one
//! block behind arrival ([`CAPTURE_LAG_BLOCKS`]) so the voice it may echo is always
//! recorded. Each microphone block is processed after the render block of its place on the
//! timeline: AEC3 sees two streams in lock step, whatever the network's jitter. A microphone
//! that falls far behind its place (a gap in its packets) is placed again; AEC3 sees a
//! change of delay and re-estimates it. Times are passed in.
//!
//! Measured (unit tests below; docs/performance.md for Chromium): on a simulated echo the
//! adaptive filter removes ~15 dB and the suppressor 43–58 dB in all (12.8 and 42 dB through
//! two Opus hops at 32 kbit/s). In a browser call the filter follows the echo path poorly
//! (3–6 dB): the reference is the voice before the far end's jitter buffer, which plays it
//! on its own clock. The agent leaves it off by default (`AgentOptions::echo_cancel`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parlor_media::StreamResampler;
use sonora_aec3::block::Block;
use sonora_aec3::block_processor::BlockProcessor;
use sonora_aec3::config::EchoCanceller3Config;

/// The rate the canceller runs at (the rate the listening pipeline runs at).
pub const RATE: u32 = 16_000;
/// Samples in one 4 ms block (AEC3's own block).
pub const BLOCK: usize = sonora_aec3::common::BLOCK_SIZE;
const BLOCK_DURATION: Duration = Duration::from_millis(4);
/// The microphone's audio is placed this many blocks behind its arrival.
pub const CAPTURE_LAG_BLOCKS: u64 = 3;
/// A microphone block this many blocks later than its place re-anchors the microphone.
const LATE_BLOCKS: u64 = 50;
/// A microphone block this many blocks earlier than its place re-anchors it too.
const EARLY_BLOCKS: u64 = 12;
/// Reference blocks kept (2 s): older ones are dropped (the microphone stopped).
const RENDER_KEEP: usize = 500;

/// What the canceller hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AecOutput {
    /// The microphone less the echo the adaptive filter predicts: what the human says over
    /// the voice passes untouched; what the filter cannot model (before it has converged,
    /// or beyond it) remains. For a recognizer.
    #[default]
    Linear,
    /// That, then AEC3's suppressor: no echo left to hear, but the human's words that
    /// overlap the echo are attenuated too (their first syllables, at a barge-in). For a
    /// listener.
    Suppressed,
}

/// One microphone's echo canceller.
///
/// ```
/// use parlor_agent::aec::{AecOutput, EchoCanceller};
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let mut aec = EchoCanceller::new(t0, AecOutput::Suppressed);
/// // A 20 ms frame the voice sent (48 kHz mono), and the microphone's 20 ms (16 kHz) that
/// // arrived just after: the same audio less the voice's echo comes out.
/// aec.voice(t0, 48_000, &[0; 960]);
/// let mut cleaned = Vec::new();
/// aec.microphone(t0 + Duration::from_millis(20), &[0; 320], &mut cleaned);
/// assert_eq!(cleaned.len(), 320);
/// ```
pub struct EchoCanceller {
    aec: BlockProcessor,
    output: AecOutput,
    render_block: Block,
    capture_block: Block,
    linear_block: Block,
    epoch: Instant,
    /// The voice's rate and a resampler from it to [`RATE`].
    down: Option<(u32, StreamResampler)>,
    /// Reference blocks from `render_first` on.
    render: VecDeque<[i16; BLOCK]>,
    render_first: u64,
    /// Where the next resampled voice samples go, and those short of a block.
    render_next: Option<u64>,
    render_partial: Vec<i16>,
    /// Where the next microphone block goes, and samples short of a block.
    capture_next: Option<u64>,
    capture_partial: Vec<i16>,
    scratch: Vec<i16>,
    blocks: u64,
    reanchored: u64,
}

impl std::fmt::Debug for EchoCanceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoCanceller")
            .field("blocks", &self.blocks)
            .field("reanchored", &self.reanchored)
            .field("render_buffered", &self.render.len())
            .finish()
    }
}

/// What the canceller has learned (AEC3's own statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EchoStats {
    /// The echo delay AEC3 estimates, ms (on the canceller's timeline).
    pub delay_ms: i32,
    /// How much the adaptive filter attenuates the echo (ERLE), dB.
    pub erle_db: f64,
    /// Blocks processed.
    pub blocks: u64,
    /// Times the microphone was placed again on the timeline.
    pub reanchored: u64,
}

impl EchoCanceller {
    /// A canceller whose timeline starts at `epoch` (moments before it are ignored).
    pub fn new(epoch: Instant, output: AecOutput) -> EchoCanceller {
        let mut config = EchoCanceller3Config::default();
        config.filter.export_linear_aec_output = true;
        EchoCanceller {
            aec: BlockProcessor::new(&config, RATE as usize, 1, 1),
            output,
            render_block: Block::new(1, 1),
            capture_block: Block::new(1, 1),
            linear_block: Block::new(1, 1),
            epoch,
            down: None,
            render: VecDeque::new(),
            render_first: 0,
            render_next: None,
            render_partial: Vec::with_capacity(2 * BLOCK),
            capture_next: None,
            capture_partial: Vec::with_capacity(4 * BLOCK),
            scratch: Vec::with_capacity(4 * BLOCK),
            blocks: 0,
            reanchored: 0,
        }
    }

    /// The block of the timeline that moment `at` falls in (rounded to the nearest).
    fn block(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        ((since + BLOCK_DURATION / 2).as_micros() / BLOCK_DURATION.as_micros()) as u64
    }

    /// The voice sent `pcm` (mono, `rate` Hz, one 20 ms frame) at `at`.
    pub fn voice(&mut self, at: Instant, rate: u32, pcm: &[i16]) {
        if self.down.as_ref().is_none_or(|(r, _)| *r != rate) {
            match StreamResampler::new(rate, RATE, 1) {
                Ok(r) => self.down = Some((rate, r)),
                Err(e) => {
                    tracing::warn!(rate, error = %e, "echo canceller: voice rate not supported");
                    return;
                }
            }
        }
        let Some((_, down)) = self.down.as_mut() else {
            return;
        };
        self.scratch.clear();
        if down.process(pcm, &mut self.scratch).is_err() {
            return;
        }
        let b = self.block(at);
        let next = match self.render_next {
            // Contiguous with what came before (the pacer's ticks wobble by a few ms).
            Some(n) if b <= n + 1 => n,
            // The first frame, or the first after a silence: the rest of the last block is
            // silence.
            other => {
                if let Some(n) = other
                    && !self.render_partial.is_empty()
                {
                    self.render_partial.resize(BLOCK, 0);
                    let partial = std::mem::take(&mut self.render_partial);
                    self.put_render(n, &partial);
                }
                self.render_partial.clear();
                b
            }
        };
        let mut partial = std::mem::take(&mut self.render_partial);
        partial.extend_from_slice(&self.scratch);
        let mut n = next;
        let whole = partial.len() / BLOCK * BLOCK;
        for block in partial[..whole].chunks_exact(BLOCK) {
            self.put_render(n, block);
            n += 1;
        }
        partial.drain(..whole);
        self.render_partial = partial;
        self.render_next = Some(n);
    }

    fn put_render(&mut self, at: u64, samples: &[i16]) {
        if self.render.is_empty() {
            self.render_first = at;
        }
        if at < self.render_first {
            return; // already past
        }
        while self.render_first + (self.render.len() as u64) < at {
            self.render.push_back([0; BLOCK]);
        }
        let mut block = [0i16; BLOCK];
        block.copy_from_slice(&samples[..BLOCK]);
        let i = (at - self.render_first) as usize;
        match self.render.get_mut(i) {
            Some(slot) => *slot = block,
            None => self.render.push_back(block),
        }
        while self.render.len() > RENDER_KEEP {
            self.render.pop_front();
            self.render_first += 1;
        }
    }

    /// The reference block for timeline block `k` (silence where the voice sent nothing),
    /// dropping those before it.
    fn take_render(&mut self, k: u64) -> [i16; BLOCK] {
        while self.render_first < k && !self.render.is_empty() {
            self.render.pop_front();
            self.render_first += 1;
        }
        if self.render_first == k
            && let Some(b) = self.render.pop_front()
        {
            self.render_first += 1;
            return b;
        }
        [0; BLOCK]
    }

    /// The microphone's `pcm` (16 kHz mono) arrived at `arrived`: the same audio, less the
    /// voice's echo, is appended to `out` (in whole blocks; a remainder waits for the next
    /// call).
    pub fn microphone(&mut self, arrived: Instant, pcm: &[i16], out: &mut Vec<i16>) {
        self.capture_partial.extend_from_slice(pcm);
        let blocks = (self.capture_partial.len() / BLOCK) as u64;
        if blocks == 0 {
            return;
        }
        // The place the last whole block would have if placed by this arrival.
        let by_arrival = self
            .block(arrived)
            .saturating_sub(CAPTURE_LAG_BLOCKS + 1)
            .max(blocks - 1);
        let last = self.capture_next.map(|n| n + blocks - 1);
        let first = match last {
            Some(l) if by_arrival <= l + LATE_BLOCKS && by_arrival + EARLY_BLOCKS >= l => {
                l + 1 - blocks
            }
            _ => {
                if last.is_some() {
                    self.reanchored += 1;
                }
                by_arrival + 1 - blocks
            }
        };
        let capture = std::mem::take(&mut self.capture_partial);
        for (i, chunk) in capture.chunks_exact(BLOCK).enumerate() {
            let k = first + i as u64;
            let render = self.take_render(k);
            // AEC3 works on floats in the s16 range.
            for (d, s) in self.render_block.view_mut(0, 0).iter_mut().zip(render) {
                *d = f32::from(s);
            }
            for (d, s) in self.capture_block.view_mut(0, 0).iter_mut().zip(chunk) {
                *d = f32::from(*s);
            }
            self.aec.buffer_render(&self.render_block);
            self.aec.process_capture(
                false,
                false,
                Some(&mut self.linear_block),
                &mut self.capture_block,
            );
            let result = match self.output {
                AecOutput::Linear => &self.linear_block,
                AecOutput::Suppressed => &self.capture_block,
            };
            out.extend(
                result
                    .view(0, 0)
                    .iter()
                    .map(|&x| x.round().clamp(-32768.0, 32767.0) as i16),
            );
            self.blocks += 1;
        }
        self.capture_next = Some(first + blocks);
        self.capture_partial = capture;
        self.capture_partial.drain(..(blocks as usize) * BLOCK);
    }

    /// What the canceller has learned so far.
    pub fn stats(&self) -> EchoStats {
        let m = self.aec.get_metrics();
        EchoStats {
            delay_ms: m.delay_ms,
            erle_db: m.echo_return_loss_enhancement,
            blocks: self.blocks,
            reanchored: self.reanchored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voice-like test signal: a few harmonics with a slowly moving pitch and a syllable
    /// envelope (AEC3 needs a broadband, non-stationary reference to converge).
    fn voice_like(rate: u32, secs: f64, seed: f64) -> Vec<i16> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / f64::from(rate);
                let f0 = 140.0 + 30.0 * (2.0 * std::f64::consts::PI * 0.7 * t + seed).sin();
                let env = (0.5 + 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t + seed).sin()).powi(2);
                let mut x = 0.0;
                for h in 1..12 {
                    let phase = 2.0 * std::f64::consts::PI * f0 * h as f64 * t + seed * h as f64;
                    x += phase.sin() / h as f64;
                }
                (6_000.0 * env * x) as i16
            })
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        let e: f64 = x.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (e / x.len().max(1) as f64).sqrt()
    }

    /// Runs `secs` of a voice (48 kHz, 20 ms frames) whose echo comes back `delay_ms` later at
    /// `gain`, plus `near` (16 kHz) from the human; returns the microphone as heard and as
    /// cleaned, both at 16 kHz.
    fn run(
        output: AecOutput,
        delay_ms: usize,
        gain: f64,
        near: &[i16],
        secs: f64,
    ) -> (Vec<i16>, Vec<i16>) {
        let t0 = Instant::now();
        let mut aec = EchoCanceller::new(t0, output);
        let voice48 = voice_like(48_000, secs, 0.3);
        let voice16 = voice_like(16_000, secs, 0.3);
        let delay = delay_ms * 16;
        let mut mic = Vec::new();
        let mut cleaned = Vec::new();
        let frames = voice48.len() / 960;
        for f in 0..frames {
            let at = t0 + Duration::from_millis(20 * f as u64);
            aec.voice(at, 48_000, &voice48[f * 960..(f + 1) * 960]);
            // The microphone's 20 ms arrive 20 ms after they were captured, with 5 ms jitter.
            let chunk: Vec<i16> = (f * 320..(f + 1) * 320)
                .map(|i| {
                    let echo = i
                        .checked_sub(delay)
                        .map_or(0.0, |j| f64::from(voice16[j]) * gain);
                    let human = f64::from(near.get(i).copied().unwrap_or(0));
                    (echo + human).clamp(-32768.0, 32767.0) as i16
                })
                .collect();
            mic.extend_from_slice(&chunk);
            let jitter = if f % 3 == 0 { 5 } else { 0 };
            let arrived = at + Duration::from_millis(20 + jitter);
            aec.microphone(arrived, &chunk, &mut cleaned);
        }
        (mic, cleaned)
    }

    /// How much lower the last 4 s of `cleaned` are than `mic`, dB.
    fn removed_db(mic: &[i16], cleaned: &[i16]) -> f64 {
        let tail = 4 * 16_000;
        let before = rms(&mic[mic.len() - tail..]);
        let after = rms(&cleaned[cleaned.len() - tail..]);
        20.0 * (before / after.max(1.0)).log10()
    }

    #[test]
    fn the_voices_echo_is_removed_at_several_delays() {
        for output in [AecOutput::Linear, AecOutput::Suppressed] {
            for delay in [40, 150, 300] {
                let (mic, cleaned) = run(output, delay, 0.5, &[], 8.0);
                assert_eq!(mic.len(), cleaned.len());
                // After 4 s to converge, the last 4 s.
                let db = removed_db(&mic, &cleaned);
                eprintln!("{output:?}, delay {delay} ms: echo {db:.1} dB lower");
                // The adaptive filter alone takes out ~15 dB; the suppressor the rest.
                let least = match output {
                    AecOutput::Linear => 10.0,
                    AecOutput::Suppressed => 30.0,
                };
                assert!(
                    db >= least,
                    "{output:?}, delay {delay} ms: echo only {db:.1} dB lower"
                );
            }
        }
    }

    /// The echo as a browser call carries it: the voice through Opus to the page, played and
    /// picked up, and back through Opus (whose coding noise no linear filter predicts).
    /// Prints what is removed at each bitrate.
    #[test]
    fn an_echo_through_two_opus_hops() {
        use parlor_media::codec::{Decoder, Encoder};
        let secs = 8.0;
        let voice48 = voice_like(48_000, secs, 0.3);
        for output in [AecOutput::Linear, AecOutput::Suppressed] {
            for bitrate in [32_000, 64_000] {
                let settings = parlor_media::OpusSettings {
                    bitrate,
                    fec: false,
                    ..Default::default()
                };
                let (Ok(mut there), Ok(mut back), Ok(mut dec1), Ok(mut dec2)) = (
                    Encoder::new(settings),
                    Encoder::new(settings),
                    Decoder::new(),
                    Decoder::new(),
                ) else {
                    panic!("opus");
                };
                let Ok(mut down) = StreamResampler::new(48_000, RATE, 1) else {
                    panic!("resampler");
                };
                let t0 = Instant::now();
                let mut aec = EchoCanceller::new(t0, output);
                let mut played: Vec<i16> = vec![0; 150 * 48];
                let (mut mic, mut cleaned) = (Vec::new(), Vec::new());
                for (f, frame) in voice48.chunks_exact(960).enumerate() {
                    let at = t0 + Duration::from_millis(20 * f as u64);
                    aec.voice(at, 48_000, frame);
                    let Ok(packet) = there.encode(frame) else {
                        panic!("encode")
                    };
                    let Ok(stereo) = dec1.decode(&packet) else {
                        panic!("decode")
                    };
                    played.extend(stereo.chunks_exact(2).map(|s| s[0] / 2));
                    let picked: Vec<i16> = played.drain(..960).collect();
                    let Ok(packet) = back.encode(&picked) else {
                        panic!("encode")
                    };
                    let Ok(stereo) = dec2.decode(&packet) else {
                        panic!("decode")
                    };
                    let mono: Vec<i16> = stereo.chunks_exact(2).map(|s| s[0]).collect();
                    let mut chunk = Vec::new();
                    if down.process(&mono, &mut chunk).is_err() {
                        panic!("resample");
                    }
                    mic.extend_from_slice(&chunk);
                    aec.microphone(at + Duration::from_millis(20), &chunk, &mut cleaned);
                }
                let db = removed_db(&mic, &cleaned);
                eprintln!(
                    "{output:?}, two Opus hops at {} kbit/s: echo {db:.1} dB lower",
                    bitrate / 1000
                );
                assert!(db > 6.0, "{output:?} at {bitrate}: {db:.1} dB");
            }
        }
    }

    #[test]
    fn the_human_over_the_voice_survives() {
        // The human speaks (another pitch, another rhythm) from 4 s to 7 s, over the echo.
        let secs = 8.0;
        let mut near = vec![0i16; (16_000.0 * secs) as usize];
        let human = voice_like(16_000, 3.0, 2.1);
        for (i, s) in human.iter().enumerate() {
            near[4 * 16_000 + i] = (f64::from(*s) * 0.8) as i16;
        }
        let span = 4 * 16_000..7 * 16_000;
        for (output, least) in [(AecOutput::Linear, 0.9), (AecOutput::Suppressed, 0.5)] {
            let (_mic, cleaned) = run(output, 150, 0.5, &near, secs);
            let kept = rms(&cleaned[span.clone()]) / rms(&near[span.clone()]);
            eprintln!("{output:?}, double talk: the human's speech kept at {kept:.2} of its level");
            assert!(
                kept > least,
                "{output:?}: the human's speech kept at {kept:.2}"
            );
        }
    }

    #[test]
    fn with_no_voice_the_microphone_passes() {
        let human = voice_like(16_000, 2.0, 1.0);
        for output in [AecOutput::Linear, AecOutput::Suppressed] {
            let t0 = Instant::now();
            let mut aec = EchoCanceller::new(t0, output);
            let mut cleaned = Vec::new();
            for (f, chunk) in human.chunks_exact(320).enumerate() {
                aec.microphone(
                    t0 + Duration::from_millis(20 * f as u64 + 20),
                    chunk,
                    &mut cleaned,
                );
            }
            assert_eq!(cleaned.len(), human.len());
            let kept = rms(&cleaned[8_000..]) / rms(&human[8_000..]);
            assert!(
                (0.7..1.3).contains(&kept),
                "{output:?}: level changed to {kept:.2}"
            );
        }
    }

    #[test]
    fn a_gap_in_the_microphone_places_it_again() {
        let t0 = Instant::now();
        let mut aec = EchoCanceller::new(t0, AecOutput::Linear);
        let mut out = Vec::new();
        let chunk = [0i16; 320];
        aec.microphone(t0 + Duration::from_millis(40), &chunk, &mut out);
        aec.microphone(t0 + Duration::from_millis(60), &chunk, &mut out);
        assert_eq!(aec.stats().reanchored, 0);
        aec.microphone(t0 + Duration::from_millis(900), &chunk, &mut out);
        assert_eq!(aec.stats().reanchored, 1);
        assert_eq!(out.len(), 3 * 320);
    }

    /// Replays what a real call fed the canceller (`PARLOR_AEC_REPLAY=prefix`: `prefix-ref.raw`
    /// and `prefix-mic.raw`, 16 kHz s16le, block-aligned) through both outputs and prints
    /// 100 ms levels. A diagnostic, not a test of anything.
    #[test]
    #[ignore]
    fn replay() {
        let Ok(prefix) = std::env::var("PARLOR_AEC_REPLAY") else {
            return;
        };
        let read = |name: &str| -> Vec<i16> {
            std::fs::read(format!("{prefix}-{name}.raw"))
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect()
        };
        let (reference, mic) = (read("ref"), read("mic"));
        let mut outs = Vec::new();
        for output in [AecOutput::Linear, AecOutput::Suppressed] {
            let mut aec = EchoCanceller::new(Instant::now(), output);
            let mut render_block = Block::new(1, 1);
            let mut out = Vec::new();
            for (r, m) in reference.chunks_exact(BLOCK).zip(mic.chunks_exact(BLOCK)) {
                for (d, s) in render_block.view_mut(0, 0).iter_mut().zip(r) {
                    *d = f32::from(*s);
                }
                for (d, s) in aec.capture_block.view_mut(0, 0).iter_mut().zip(m) {
                    *d = f32::from(*s);
                }
                aec.aec.buffer_render(&render_block);
                aec.aec.process_capture(
                    false,
                    false,
                    Some(&mut aec.linear_block),
                    &mut aec.capture_block,
                );
                let b = match output {
                    AecOutput::Linear => &aec.linear_block,
                    AecOutput::Suppressed => &aec.capture_block,
                };
                out.extend(b.view(0, 0).iter().map(|&x| x as i16));
            }
            outs.push(out);
        }
        for (w, (r, m)) in reference.chunks(1600).zip(mic.chunks(1600)).enumerate() {
            let o = |k: usize| outs[k].get(w * 1600..(w + 1) * 1600).map_or(0.0, rms);
            eprintln!(
                "{:5.1} s  ref {:6.0}  mic {:6.0}  linear {:6.0}  suppressed {:6.0}",
                w as f64 / 10.0,
                rms(r),
                rms(m),
                o(0),
                o(1)
            );
        }
    }
}
