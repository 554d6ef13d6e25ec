//! Whisper's log-mel spectrogram (80 bins, 16 kHz, 25 ms windows every 10 ms), as OpenAI's
//! `whisper.audio.log_mel_spectrogram` and Hugging Face's `WhisperFeatureExtractor` compute
//! it: a centred STFT (reflect padding, periodic Hann window, n_fft 400, hop 160), power,
//! Slaney mel filters over 0–8 kHz, `log10` clamped at 1e-10, then at the maximum minus 8,
//! then `(x + 4) / 4`. Smart-turn and Whisper both take it.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

/// Samples per second the features are defined on.
pub const SAMPLE_RATE: usize = 16_000;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP: usize = 160;
/// Mel bins.
pub const N_MELS: usize = 80;
const BINS: usize = N_FFT / 2 + 1;

/// A reusable log-mel extractor (the FFT plan, window and filters are computed once).
pub struct LogMel {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    filters: Vec<f32>,
    frame: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
    scratch: Vec<realfft::num_complex::Complex<f32>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").finish_non_exhaustive()
    }
}

impl Default for LogMel {
    fn default() -> Self {
        Self::new()
    }
}

fn hz_to_mel(f: f64) -> f64 {
    // Slaney: linear below 1 kHz, logarithmic above.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if f < min_log_hz {
        f / f_sp
    } else {
        min_log_mel + (f / min_log_hz).ln() / logstep
    }
}

fn mel_to_hz(m: f64) -> f64 {
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = (6.4f64).ln() / 27.0;
    if m < min_log_mel {
        m * f_sp
    } else {
        min_log_hz * ((m - min_log_mel) * logstep).exp()
    }
}

/// librosa's `filters.mel(sr=16000, n_fft=400, n_mels=80, htk=False, norm="slaney")`, row-major
/// `[mel][bin]`.
fn mel_filters() -> Vec<f32> {
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE as f64 / 2.0));
    let points: Vec<f64> = (0..N_MELS + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (N_MELS + 1) as f64))
        .collect();
    let mut w = vec![0f32; N_MELS * BINS];
    for m in 0..N_MELS {
        let (left, center, right) = (points[m], points[m + 1], points[m + 2]);
        let norm = 2.0 / (right - left);
        for k in 0..BINS {
            let f = k as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
            let rise = (f - left) / (center - left);
            let fall = (right - f) / (right - center);
            w[m * BINS + k] = (rise.min(fall).max(0.0) * norm) as f32;
        }
    }
    w
}

impl LogMel {
    /// A new extractor.
    pub fn new() -> LogMel {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        let window = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        LogMel {
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            frame: fft.make_input_vec(),
            fft,
            window,
            filters: mel_filters(),
        }
    }

    /// Features of `audio` (16 kHz, any scale Whisper expects: ±1.0), `frames` columns long:
    /// row-major `[mel][frame]`. Frames past the audio see silence (zeros), as Whisper's own
    /// padding to 30 s does.
    pub fn features(&mut self, audio: &[f32], frames: usize) -> Vec<f32> {
        // Centre padding: `N_FFT / 2` reflected samples on each side (numpy "reflect").
        let pad = N_FFT / 2;
        let len = (frames.saturating_sub(1)) * HOP + N_FFT;
        let at = |i: usize| -> f32 {
            // Index into the audio extended with zeros to `frames * HOP` samples, reflected.
            let n = (frames * HOP).max(audio.len()).max(pad + 1);
            let j = i as isize - pad as isize;
            let j = if j < 0 {
                -j
            } else if j as usize >= n {
                2 * (n as isize - 1) - j
            } else {
                j
            };
            audio.get(j as usize).copied().unwrap_or(0.0)
        };
        let padded: Vec<f32> = (0..len).map(at).collect();
        let mut out = vec![0f32; N_MELS * frames];
        let mut power = [0f32; BINS];
        for t in 0..frames {
            let start = t * HOP;
            for (i, x) in self.frame.iter_mut().enumerate() {
                *x = padded[start + i] * self.window[i];
            }
            // Sizes come from the plan itself: process cannot fail.
            let _ = self.fft.process_with_scratch(
                &mut self.frame,
                &mut self.spectrum,
                &mut self.scratch,
            );
            for (p, c) in power.iter_mut().zip(&self.spectrum) {
                *p = c.norm_sqr();
            }
            for m in 0..N_MELS {
                let row = &self.filters[m * BINS..(m + 1) * BINS];
                let e: f32 = row.iter().zip(&power).map(|(w, p)| w * p).sum();
                out[m * frames + t] = e.max(1e-10).log10();
            }
        }
        let max = out.iter().copied().fold(f32::MIN, f32::max);
        for v in &mut out {
            *v = ((*v).max(max - 8.0) + 4.0) / 4.0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_minus_one_and_a_half() {
        // log10(1e-10) = -10 everywhere; clamped at max - 8 it stays -10; (−10 + 4) / 4.
        let f = LogMel::new().features(&vec![0.0; 16_000], 100);
        assert_eq!(f.len(), 80 * 100);
        assert!(f.iter().all(|v| (v + 1.5).abs() < 1e-6));
    }

    #[test]
    fn a_tone_lights_its_mel_band() {
        let tone: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin() * 0.5)
            .collect();
        let f = LogMel::new().features(&tone, 100);
        let band = |m: usize| f[m * 100 + 50];
        let loudest = (0..N_MELS)
            .max_by(|a, b| band(*a).total_cmp(&band(*b)))
            .unwrap_or(0);
        // 1 kHz is where the Slaney scale turns logarithmic: mel 15 of 0..=45.25 over 82
        // points, i.e. near filter 26.
        assert!((24..=28).contains(&loudest), "{loudest}");
    }

    /// Reference values from the numpy implementation Pipecat vendors from Hugging Face's
    /// `WhisperFeatureExtractor` (`_whisper_features.py`, `do_normalize=False`), on 2 s of
    /// 440 Hz + 3 kHz tones in an 8 s window.
    #[test]
    fn matches_the_reference_implementation() {
        let audio: Vec<f32> = (0..32_000)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.2 * (2.0 * std::f32::consts::PI * 3000.0 * t + 0.5).sin()
            })
            .collect();
        let f = LogMel::new().features(&audio, 800);
        let at = |m: usize, t: usize| f[m * 800 + t];
        for (m, t, want) in [
            (0, 0, 0.887_975_2),
            (10, 50, 1.237_813_6),
            (20, 100, -0.672_720_6),
            (60, 199, -0.143_611_45),
            (79, 10, -0.672_720_6),
            (5, 799, -0.672_720_6),
        ] {
            assert!(
                (at(m, t) - want).abs() < 2e-3,
                "[{m},{t}] {} vs {want}",
                at(m, t)
            );
        }
        let mean = f.iter().sum::<f32>() / f.len() as f32;
        // f32 FFT against numpy's f64: bins near the 1e-10 floor differ a little.
        assert!((mean + 0.633_609_7).abs() < 3e-3, "{mean}");
        let w = mel_filters();
        assert!((w[1] - 0.024_862_594).abs() < 1e-6);
    }
}
