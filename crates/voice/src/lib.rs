//! # parlor-voice
//!
//! Neural engines for the voice agent's hooks ([`parlor_agent::SpeechToText`],
//! [`parlor_agent::TextToSpeech`] and turn-taking), all offline, with weights that ship inside
//! registry packages. Not part of the SDK: the SDK crates never depend on an engine.
//!
//! - [`models`]: the pinned model manifest, the per-user cache and `parlor models fetch`;
//! - [`silero`]: Silero VAD v6, speech probability per 32 ms;
//! - [`smart_turn`]: smart-turn v3.2, end of turn from the utterance's audio;
//! - [`text_turn`]: end of turn from the words, a small language model (Gemma 3 270M);
//! - [`piper`]: Piper, a neural voice, as a [`parlor_agent::TextToSpeech`] hook;
//! - [`whisper`]: Whisper speech-to-text (on candle, from the CTranslate2 weights) as a
//!   [`parlor_agent::SpeechToText`] hook;
//! - [`mel`]: Whisper's log-mel features (smart-turn's and Whisper's input).
//!
//! The ONNX models run on ONNX Runtime loaded at run time from the cache (the `ort` crate's
//! `load-dynamic`: nothing is downloaded or linked at build time).
//!
//! ```no_run
//! use parlor_voice::models::{Model, ModelCache};
//! use parlor_voice::silero::SileroVad;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = ModelCache::from_env()?;
//! cache.fetch(&Model::DEFAULT, &mut |p| eprintln!("{p:?}"))?;
//! let vad = SileroVad::load(&cache)?;
//! let mut stream = vad.stream();
//! let mut probabilities = Vec::new();
//! stream.push(&[0i16; 1024], &mut probabilities)?;
//! assert_eq!(probabilities.len(), 2);
//! # Ok(())
//! # }
//! ```

pub mod mel;
pub mod models;
mod onnx;
pub mod piper;
pub mod silero;
pub mod smart_turn;
pub mod text_turn;
pub mod whisper;

/// An engine could not load or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Its model is not in the cache (the message names the command that fetches it).
    #[error(transparent)]
    Model(#[from] models::ModelError),
    /// The runtime failed to load or run it.
    #[error("{0}")]
    Runtime(String),
}

impl From<EngineError> for parlor_agent::HookError {
    fn from(e: EngineError) -> Self {
        parlor_agent::HookError::new("voice", e)
    }
}
