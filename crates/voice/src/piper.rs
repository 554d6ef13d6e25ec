//! Piper: a neural voice (VITS) from eSpeak NG's IPA phonemes, as a [`TextToSpeech`] hook.
//!
//! Text → clauses of IPA phonemes (eSpeak NG, through `parlor_agent::offline::EspeakTts`) →
//! sentences → phoneme ids (the voice's `phoneme_id_map`: `^`, then each phoneme followed by
//! the pad `_`, then `$`) → the ONNX model → 22.05 kHz samples, peak-normalized, streamed to
//! the sink sentence by sentence in 100 ms pieces (so a barge-in stops it within 100 ms of
//! audio). This is what Piper itself does (`piper1-gpl`'s `phonemize_espeak.py`,
//! `phoneme_ids.py`, `voice.py`).

use std::collections::HashMap;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use parlor_agent::offline::EspeakTts;
use parlor_agent::{Flow, HookError, TextToSpeech};
use unicode_normalization::UnicodeNormalization;

use crate::EngineError;
use crate::models::{Model, ModelCache};

/// Silence between two sentences of one `speak` call.
const SENTENCE_GAP_SECS: f32 = 0.2;
/// The shortest first piece (in phoneme characters) cut at a clause boundary.
pub const FIRST_PIECE_MIN_PHONEMES: usize = 12;
/// Peak level of each sentence (of full scale), leaving the codec some headroom.
const PEAK: f32 = 0.9;

/// The parts of a voice's `.onnx.json` that synthesis needs.
#[derive(Debug, serde::Deserialize)]
struct VoiceConfig {
    audio: AudioConfig,
    espeak: EspeakConfig,
    #[serde(default)]
    inference: Inference,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    num_speakers: u32,
}

#[derive(Debug, serde::Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, serde::Deserialize)]
struct EspeakConfig {
    voice: String,
}

#[derive(Debug, serde::Deserialize)]
struct Inference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

impl Default for Inference {
    fn default() -> Self {
        Inference {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        }
    }
}

/// A Piper voice.
pub struct PiperTts {
    session: Mutex<Session>,
    espeak: EspeakTts,
    ids: HashMap<char, Vec<i64>>,
    rate: u32,
    scales: [f32; 3],
}

impl std::fmt::Debug for PiperTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperTts")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl PiperTts {
    /// The `en_US-joe-medium` voice from `cache`, on `threads` intra-op threads.
    pub fn joe(cache: &ModelCache, threads: usize) -> Result<PiperTts, EngineError> {
        cache.require(Model::PiperJoe)?;
        let files = Model::PiperJoe.files();
        let (model, config) = (cache.path(files[0].dest), cache.path(files[1].dest));
        let text = std::fs::read_to_string(&config)
            .map_err(|e| EngineError::Runtime(format!("{}: {e}", config.display())))?;
        let voice: VoiceConfig = serde_json::from_str(&text)
            .map_err(|e| EngineError::Runtime(format!("{}: {e}", config.display())))?;
        if voice.num_speakers > 1 {
            return Err(EngineError::Runtime(
                "multi-speaker Piper voices are not supported".into(),
            ));
        }
        let ids = voice
            .phoneme_id_map
            .into_iter()
            .filter_map(|(k, v)| {
                let mut chars = k.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => Some((c, v)),
                    _ => None,
                }
            })
            .collect::<HashMap<_, _>>();
        for required in ['^', '_', '$'] {
            if !ids.contains_key(&required) {
                return Err(EngineError::Runtime(format!(
                    "{}: phoneme_id_map lacks {required:?}",
                    config.display()
                )));
            }
        }
        let espeak = EspeakTts::with_voice(&voice.espeak.voice, 165)
            .map_err(|e| EngineError::Runtime(e.to_string()))?;
        let i = voice.inference;
        Ok(PiperTts {
            session: Mutex::new(crate::onnx::session(cache, &model, threads)?),
            espeak,
            ids,
            rate: voice.audio.sample_rate,
            scales: [i.noise_scale, i.length_scale, i.noise_w],
        })
    }

    /// Speak `speed` times as fast (Piper's length scale is its inverse); 0.5..=2.
    pub fn with_speed(mut self, speed: f32) -> PiperTts {
        let speed = if speed.is_finite() {
            speed.clamp(0.5, 2.0)
        } else {
            1.0
        };
        self.scales[1] /= speed;
        self
    }

    /// `text` as pieces of phoneme ids to synthesize one at a time: sentences, except that
    /// the first sentence is cut at its first clause boundary (a comma, a colon) once it
    /// has [`FIRST_PIECE_MIN_PHONEMES`]: the listener hears the reply begin after the first
    /// clause is synthesized, not the whole first sentence.
    /// Each piece comes with whether a sentence ended before it (and so a pause goes first).
    fn sentences(&self, text: &str) -> Result<Vec<(bool, Vec<i64>)>, HookError> {
        let mut out = Vec::new();
        let mut phonemes = String::new();
        let mut sentence_ended = false;
        for clause in self.espeak.phonemes(text)? {
            phonemes.push_str(&strip_language_flags(&clause.ipa));
            let mut first_clause = false;
            if let Some(t) = clause.terminator {
                phonemes.push(t);
                if matches!(t, ',' | ':' | ';') {
                    phonemes.push(' ');
                    first_clause =
                        out.is_empty() && phonemes.chars().count() >= FIRST_PIECE_MIN_PHONEMES;
                }
            }
            if (clause.ends_sentence || first_clause) && !phonemes.trim().is_empty() {
                out.push((sentence_ended, self.ids_of(&phonemes)));
                sentence_ended = clause.ends_sentence;
                phonemes.clear();
            }
        }
        if !phonemes.trim().is_empty() {
            out.push((sentence_ended, self.ids_of(&phonemes)));
        }
        Ok(out)
    }

    fn ids_of(&self, phonemes: &str) -> Vec<i64> {
        let pad = &self.ids[&'_'];
        let mut ids = self.ids[&'^'].clone();
        ids.extend(pad);
        for c in phonemes.nfd() {
            if let Some(id) = self.ids.get(&c) {
                ids.extend(id);
                ids.extend(pad);
            }
        }
        ids.extend(&self.ids[&'$']);
        ids
    }

    /// Synthesize one sentence's ids: samples in -1..1.
    fn synthesize(&self, ids: Vec<i64>) -> Result<Vec<f32>, EngineError> {
        let n = ids.len();
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let run = || -> ort::Result<Vec<f32>> {
            let outputs = session.run(ort::inputs![
                "input" => Tensor::from_array(([1usize, n], ids))?,
                "input_lengths" => Tensor::from_array(([1usize], vec![n as i64]))?,
                "scales" => Tensor::from_array(([3usize], self.scales.to_vec()))?,
            ])?;
            let (_, audio) = outputs["output"].try_extract_tensor::<f32>()?;
            Ok(audio.to_vec())
        };
        run().map_err(|e| EngineError::Runtime(format!("piper: {e}")))
    }
}

/// eSpeak marks a switch of language in its phonemes as `(en)`…: not phonemes.
fn strip_language_flags(ipa: &str) -> String {
    let mut out = String::with_capacity(ipa.len());
    let mut depth = 0usize;
    for c in ipa.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

impl TextToSpeech for PiperTts {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn speak(&self, text: &str, sink: &mut dyn FnMut(&[i16]) -> Flow) -> Result<(), HookError> {
        let piece = self.rate as usize / 10;
        let gap = vec![0i16; (self.rate as f32 * SENTENCE_GAP_SECS) as usize];
        for (after_sentence, ids) in self.sentences(text)? {
            if after_sentence {
                for chunk in gap.chunks(piece) {
                    if sink(chunk) == Flow::Stop {
                        return Ok(());
                    }
                }
            }
            let audio = self.synthesize(ids)?;
            let peak = audio.iter().fold(0f32, |m, x| m.max(x.abs()));
            let gain = if peak > 1e-4 { PEAK / peak } else { 0.0 };
            let pcm: Vec<i16> = audio
                .iter()
                .map(|x| (x * gain * 32_767.0).clamp(-32_767.0, 32_767.0) as i16)
                .collect();
            for chunk in pcm.chunks(piece) {
                if sink(chunk) == Flow::Stop {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_flags_are_not_phonemes() {
        assert_eq!(
            strip_language_flags("hˈɛloʊ (fr)bɔ̃ʒuʁ(en) wˈɜːld"),
            "hˈɛloʊ bɔ̃ʒuʁ wˈɜːld"
        );
    }
}
