//! Pipecat's smart-turn v3.2: has the speaker finished their turn? From the audio alone (the
//! last 8 s of the utterance), as a probability; above 0.5 the turn is complete.

use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;
use parlor_agent::{EndOfTurn, HookError};

use crate::EngineError;
use crate::mel::{LogMel, N_MELS, SAMPLE_RATE};
use crate::models::{Model, ModelCache};

/// Audio the model looks at: the last 8 s.
pub const WINDOW: usize = 8 * SAMPLE_RATE;
const FRAMES: usize = WINDOW / crate::mel::HOP;

/// The end-of-turn model.
pub struct SmartTurn {
    session: Mutex<Session>,
    mel: Mutex<LogMel>,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn").finish_non_exhaustive()
    }
}

impl SmartTurn {
    /// Load the model from `cache`.
    pub fn load(cache: &ModelCache, threads: usize) -> Result<SmartTurn, EngineError> {
        cache.require(Model::SmartTurn)?;
        let path = cache.path(Model::SmartTurn.files()[0].dest);
        Ok(SmartTurn {
            session: Mutex::new(crate::onnx::session(cache, &path, threads)?),
            mel: Mutex::new(LogMel::new()),
        })
    }

    /// The probability that the utterance in `pcm` (16 kHz mono, from its start up to now) is
    /// a complete turn.
    pub fn probability(&self, pcm: &[i16]) -> Result<f32, EngineError> {
        let features = self.features(pcm);
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let run = || -> ort::Result<f32> {
            let outputs = session.run(ort::inputs![
                "input_features" => Tensor::from_array(([1usize, N_MELS, FRAMES], features))?,
            ])?;
            let (_, p) = outputs[0].try_extract_tensor::<f32>()?;
            Ok(p.first().copied().unwrap_or(0.0))
        };
        run().map_err(|e| EngineError::Runtime(format!("smart-turn: {e}")))
    }

    /// The model's input: the last 8 s, zeros in front when shorter, normalized to zero mean
    /// and unit variance, as Whisper log-mel features (80 × 800).
    fn features(&self, pcm: &[i16]) -> Vec<f32> {
        let tail = &pcm[pcm.len().saturating_sub(WINDOW)..];
        let mut audio = vec![0f32; WINDOW - tail.len()];
        audio.extend(tail.iter().map(|&s| f32::from(s) / 32_768.0));
        let n = audio.len() as f64;
        let mean = audio.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = audio
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        let scale = 1.0 / (var + 1e-7).sqrt();
        for x in &mut audio {
            *x = ((f64::from(*x) - mean) * scale) as f32;
        }
        let mut mel = self.mel.lock().unwrap_or_else(|e| e.into_inner());
        mel.features(&audio, FRAMES)
    }
}

impl EndOfTurn for SmartTurn {
    fn complete(&self, utterance: &[i16]) -> Result<f32, HookError> {
        self.probability(utterance).map_err(HookError::from)
    }
}
