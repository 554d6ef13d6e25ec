//! The energy voice-activity detector: a [`VoiceActivity`] with no model (sans-IO). It tracks
//! the noise floor and calls a 20 ms window speech (probability 1) when its RMS is well above
//! it; [`crate::turn::Turns`] turns the probabilities into utterances.

use crate::hooks::{HookError, SpeechDetector, VoiceActivity};

/// Tuning of the [`EnergyActivity`] detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyOptions {
    /// A window is speech when its RMS exceeds the noise floor by this factor…
    pub ratio: f32,
    /// …and this absolute RMS (s16 units).
    pub min_rms: f32,
}

impl Default for EnergyOptions {
    fn default() -> Self {
        EnergyOptions {
            ratio: 3.0,
            min_rms: 300.0,
        }
    }
}

/// Voice activity from energy alone (no model): the basic engines' detector.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnergyActivity(pub EnergyOptions);

impl VoiceActivity for EnergyActivity {
    fn detector(&self) -> Result<Box<dyn SpeechDetector>, HookError> {
        Ok(Box::new(EnergyDetector::new(self.0)))
    }
}

/// Samples per window (20 ms at 16 kHz).
pub const WINDOW: usize = 320;

/// One stream's energy detector.
#[derive(Debug, Clone)]
pub struct EnergyDetector {
    opts: EnergyOptions,
    noise: f32,
    pending: Vec<i16>,
}

impl EnergyDetector {
    /// A detector with a fresh noise floor.
    pub fn new(opts: EnergyOptions) -> EnergyDetector {
        EnergyDetector {
            opts,
            noise: opts.min_rms / opts.ratio,
            pending: Vec::with_capacity(WINDOW),
        }
    }

    fn decide(&mut self, window: &[i16]) -> f32 {
        let rms = (window.iter().map(|s| f32::from(*s).powi(2)).sum::<f32>() / window.len() as f32)
            .sqrt();
        let loud = rms > self.opts.min_rms && rms > self.noise * self.opts.ratio;
        if !loud {
            // The floor follows quiet windows quickly down and slowly up.
            let k = if rms < self.noise { 0.2 } else { 0.02 };
            self.noise += (rms - self.noise) * k;
        }
        if loud { 1.0 } else { 0.0 }
    }
}

impl SpeechDetector for EnergyDetector {
    fn window(&self) -> usize {
        WINDOW
    }

    fn push(&mut self, pcm: &[i16], probabilities: &mut Vec<f32>) -> Result<(), HookError> {
        for &s in pcm {
            self.pending.push(s);
            if self.pending.len() == WINDOW {
                let window = std::mem::take(&mut self.pending);
                probabilities.push(self.decide(&window));
                self.pending = window;
                self.pending.clear();
            }
        }
        Ok(())
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

    #[test]
    fn loud_windows_over_the_floor_are_speech() {
        let mut d = EnergyDetector::new(EnergyOptions::default());
        let mut p = Vec::new();
        d.push(&tone(200, 20.0), &mut p).expect("push");
        d.push(&tone(100, 8_000.0), &mut p).expect("push");
        // Any chunking: 10 + 5 windows.
        assert_eq!(p.len(), 15);
        assert!(p[..10].iter().all(|&x| x == 0.0) && p[10..].iter().all(|&x| x == 1.0));
        // Below `min_rms` nothing is speech, however quiet the floor.
        let mut hum = EnergyDetector::new(EnergyOptions::default());
        let mut q = Vec::new();
        hum.push(&tone(1_000, 200.0), &mut q).expect("push");
        assert!(q.iter().all(|&x| x == 0.0), "{q:?}");
    }
}
