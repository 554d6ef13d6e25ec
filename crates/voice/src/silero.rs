//! Silero VAD v6: the probability that each 32 ms of 16 kHz audio is speech.
//!
//! One [`SileroVad`] (the model, shared) and one [`SileroStream`] per audio stream (its
//! recurrent state and 64 samples of context, as the reference `OnnxWrapper` keeps them).

use std::sync::{Arc, Mutex};

use ort::session::Session;
use ort::value::Tensor;
use parlor_agent::{HookError, SpeechDetector, VoiceActivity};

use crate::EngineError;
use crate::models::{Model, ModelCache};

/// Samples per decision at 16 kHz (32 ms).
pub const CHUNK: usize = 512;
const CONTEXT: usize = 64;
const STATE: usize = 2 * 128;

/// The Silero VAD model, shared by every stream.
pub struct SileroVad {
    session: Mutex<Session>,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").finish_non_exhaustive()
    }
}

impl SileroVad {
    /// Load the model from `cache` (one intra-op thread: it is small and runs per stream).
    pub fn load(cache: &ModelCache) -> Result<Arc<SileroVad>, EngineError> {
        cache.require(Model::SileroVad)?;
        let path = cache.path(Model::SileroVad.files()[0].dest);
        Ok(Arc::new(SileroVad {
            session: Mutex::new(crate::onnx::session(cache, &path, 1)?),
        }))
    }

    /// A new stream (fresh state).
    pub fn stream(self: &Arc<Self>) -> SileroStream {
        SileroStream {
            model: self.clone(),
            state: vec![0.0; STATE],
            input: vec![0.0; CONTEXT + CHUNK],
            pending: Vec::with_capacity(CHUNK),
        }
    }

    fn infer(&self, input: &[f32], state: &mut [f32]) -> Result<f32, EngineError> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mut run = || -> ort::Result<f32> {
            let outputs = session.run(ort::inputs![
                "input" => Tensor::from_array(([1usize, CONTEXT + CHUNK], input.to_vec()))?,
                "state" => Tensor::from_array(([2usize, 1, 128], state.to_vec()))?,
                "sr" => Tensor::from_array(((), vec![16_000i64]))?,
            ])?;
            let (_, p) = outputs["output"].try_extract_tensor::<f32>()?;
            let p = p.first().copied().unwrap_or(0.0);
            let (_, next) = outputs["stateN"].try_extract_tensor::<f32>()?;
            if next.len() == state.len() {
                state.copy_from_slice(next);
            }
            Ok(p)
        };
        run().map_err(|e| EngineError::Runtime(format!("silero-vad: {e}")))
    }
}

/// One stream's detector state.
pub struct SileroStream {
    model: Arc<SileroVad>,
    state: Vec<f32>,
    /// The 64 samples of context, then the chunk being decided.
    input: Vec<f32>,
    pending: Vec<f32>,
}

impl std::fmt::Debug for SileroStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroStream")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl SileroStream {
    /// Push 16 kHz mono PCM of any length; one probability per completed 512-sample chunk is
    /// appended to `probabilities`.
    pub fn push(&mut self, pcm: &[i16], probabilities: &mut Vec<f32>) -> Result<(), EngineError> {
        for &s in pcm {
            self.pending.push(f32::from(s) / 32_768.0);
            if self.pending.len() == CHUNK {
                self.input[CONTEXT..].copy_from_slice(&self.pending);
                self.pending.clear();
                let p = self.model.infer(&self.input, &mut self.state)?;
                // The next chunk's context: the last 64 samples of this input.
                self.input.copy_within(CHUNK.., 0);
                probabilities.push(p);
            }
        }
        Ok(())
    }

    /// Forget the stream's past (a new stream).
    pub fn reset(&mut self) {
        self.state.fill(0.0);
        self.input.fill(0.0);
        self.pending.clear();
    }
}

/// Silero as the agent's [`VoiceActivity`] hook: the model shared, a stream per human.
#[derive(Debug, Clone)]
pub struct SileroActivity(pub Arc<SileroVad>);

impl VoiceActivity for SileroActivity {
    fn detector(&self) -> Result<Box<dyn SpeechDetector>, HookError> {
        Ok(Box::new(self.0.stream()))
    }
}

impl SpeechDetector for SileroStream {
    fn window(&self) -> usize {
        CHUNK
    }

    fn push(&mut self, pcm: &[i16], probabilities: &mut Vec<f32>) -> Result<(), HookError> {
        SileroStream::push(self, pcm, probabilities).map_err(HookError::from)
    }
}
