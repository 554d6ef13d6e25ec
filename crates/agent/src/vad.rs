//! A small energy voice-activity detector on 16 kHz mono frames (sans-IO: frames in, events
//! out). It tracks the noise floor, needs [`VadOptions::onset`] of loud audio to start an
//! utterance and [`VadOptions::hangover`] of quiet audio to end it, and keeps a pre-roll so
//! the recognizer also gets the utterance's first syllable.

use std::collections::VecDeque;
use std::time::Duration;

/// Tuning of a [`Vad`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadOptions {
    /// Loud audio needed to start an utterance.
    pub onset: Duration,
    /// Quiet audio that ends an utterance.
    pub hangover: Duration,
    /// Audio kept from before the onset and handed over with `SpeechStart`.
    pub pre_roll: Duration,
    /// A frame is loud when its RMS exceeds the noise floor by this factor…
    pub ratio: f32,
    /// …and this absolute RMS (s16 units).
    pub min_rms: f32,
    /// Utterances longer than this are cut (the recognizer gets a turn).
    pub max_utterance: Duration,
}

impl Default for VadOptions {
    fn default() -> Self {
        VadOptions {
            onset: Duration::from_millis(60),
            hangover: Duration::from_millis(500),
            pre_roll: Duration::from_millis(300),
            ratio: 3.0,
            min_rms: 300.0,
            max_utterance: Duration::from_secs(15),
        }
    }
}

/// What a frame did to the detector.
#[derive(Debug, Clone, PartialEq)]
pub enum VadEvent {
    /// Nothing changed.
    None,
    /// An utterance started; `pre_roll` is the audio before (and including) this frame.
    SpeechStart {
        /// 16 kHz mono PCM from before the onset up to now.
        pre_roll: Vec<i16>,
    },
    /// Inside an utterance: feed this frame to the recognizer.
    Speech,
    /// The utterance ended: the hangover of quiet audio has passed (that quiet tail was
    /// already handed over as `Speech`), or it reached `max_utterance`.
    SpeechEnd,
}

/// The detector. Feed it 16 kHz mono frames of any length (20 ms is typical).
#[derive(Debug, Clone)]
pub struct Vad {
    opts: VadOptions,
    rate: u32,
    noise: f32,
    in_speech: bool,
    loud_run: usize,
    quiet_run: usize,
    speech_len: usize,
    history: VecDeque<i16>,
}

impl Vad {
    /// A detector for `rate` Hz mono audio.
    pub fn new(rate: u32, opts: VadOptions) -> Vad {
        Vad {
            opts,
            rate,
            noise: opts.min_rms / opts.ratio,
            in_speech: false,
            loud_run: 0,
            quiet_run: 0,
            speech_len: 0,
            history: VecDeque::new(),
        }
    }

    /// Whether an utterance is in progress.
    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    fn samples(&self, d: Duration) -> usize {
        (d.as_secs_f64() * f64::from(self.rate)) as usize
    }

    /// Process one frame.
    pub fn push(&mut self, frame: &[i16]) -> VadEvent {
        if frame.is_empty() {
            return VadEvent::None;
        }
        let rms =
            (frame.iter().map(|s| f32::from(*s).powi(2)).sum::<f32>() / frame.len() as f32).sqrt();
        let loud = rms > self.opts.min_rms && rms > self.noise * self.opts.ratio;
        if !loud {
            // The floor follows quiet frames quickly down and slowly up.
            let k = if rms < self.noise { 0.2 } else { 0.02 };
            self.noise += (rms - self.noise) * k;
        }
        if self.in_speech {
            self.speech_len += frame.len();
            if loud {
                self.quiet_run = 0;
            } else {
                self.quiet_run += frame.len();
            }
            if self.quiet_run >= self.samples(self.opts.hangover)
                || self.speech_len >= self.samples(self.opts.max_utterance)
            {
                self.in_speech = false;
                self.loud_run = 0;
                self.quiet_run = 0;
                self.history.clear();
                return VadEvent::SpeechEnd;
            }
            return VadEvent::Speech;
        }
        self.history.extend(frame.iter().copied());
        let keep = self.samples(self.opts.pre_roll).max(frame.len());
        while self.history.len() > keep {
            self.history.pop_front();
        }
        self.loud_run = if loud { self.loud_run + frame.len() } else { 0 };
        if self.loud_run >= self.samples(self.opts.onset).max(1) {
            self.in_speech = true;
            self.quiet_run = 0;
            self.speech_len = self.history.len();
            return VadEvent::SpeechStart {
                pre_roll: self.history.drain(..).collect(),
            };
        }
        VadEvent::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: usize, amp: f32) -> Vec<i16> {
        (0..16 * ms)
            .map(|i| (amp * (i as f32 * 0.2).sin()) as i16)
            .collect()
    }

    fn run(vad: &mut Vad, pcm: &[i16]) -> Vec<(usize, &'static str)> {
        let mut out = Vec::new();
        for (i, f) in pcm.chunks(320).enumerate() {
            match vad.push(f) {
                VadEvent::SpeechStart { pre_roll } => {
                    assert!(pre_roll.len() >= 320 * 3);
                    out.push((i, "start"));
                }
                VadEvent::SpeechEnd => out.push((i, "end")),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn speech_between_silences_is_one_utterance() {
        let mut pcm = tone(1_000, 20.0);
        pcm.extend(tone(1_200, 8_000.0));
        pcm.extend(tone(1_000, 20.0));
        let mut vad = Vad::new(16_000, VadOptions::default());
        let ev = run(&mut vad, &pcm);
        // Starts 60 ms into the speech (frame 50 + 2), ends 500 ms after it (frame 110 + 25).
        assert_eq!(ev, vec![(52, "start"), (134, "end")]);
    }

    #[test]
    fn short_clicks_and_steady_noise_do_not_start() {
        let mut pcm = tone(2_000, 600.0); // steady hum well above min_rms
        pcm.extend(tone(40, 8_000.0)); // a 40 ms click
        pcm.extend(tone(1_000, 600.0));
        let mut vad = Vad::new(16_000, VadOptions::default());
        // The hum starts an utterance once (the floor adapts slowly up), then nothing more.
        let ev = run(&mut vad, &pcm);
        assert!(ev.iter().filter(|e| e.1 == "start").count() <= 1, "{ev:?}");
        let mut quiet = Vad::new(16_000, VadOptions::default());
        let mut pcm = tone(1_000, 50.0);
        pcm.extend(tone(40, 8_000.0));
        pcm.extend(tone(1_000, 50.0));
        assert!(run(&mut quiet, &pcm).is_empty());
    }

    #[test]
    fn long_speech_is_cut_at_max_utterance() {
        let opts = VadOptions {
            max_utterance: Duration::from_secs(2),
            ..VadOptions::default()
        };
        let mut vad = Vad::new(16_000, opts);
        let ev = run(&mut vad, &tone(5_000, 8_000.0));
        assert_eq!(ev.iter().filter(|e| e.1 == "end").count(), 2, "{ev:?}");
    }
}
