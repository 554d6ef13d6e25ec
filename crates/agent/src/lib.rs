//! # parlor-agent
//!
//! The voice-agent loop on top of the Parlor SDK (`parlor-peer` + `parlor-media`), and
//! offline default hooks. Not part of the SDK: it shows, and packages, how an agent is built
//! from the SDK's pieces.
//!
//! - [`hooks`]: the [`SpeechToText`], [`Llm`] and [`TextToSpeech`] traits (blocking,
//!   streaming through callbacks, cancellable).
//! - [`Agent`]: one outbound voice; one VAD + recognizer loop per human, tagged by peer id;
//!   transcripts and state through the server (`send`); control (hang-up) on a data channel
//!   the browser opens; barge-in ends the current utterance's `AudioSource` at once.
//! - [`offline`]: PocketSphinx, eSpeak NG and a rule-based reply, so it talks with no cloud.
//! - [`vad`]: the energy voice-activity detector (pure, unit tested);
//! - [`echo`]: echo-aware gating, the agent's own voice told from a human's (pure);
//! - [`aec`]: echo cancellation (WebRTC's AEC3 in pure Rust), the agent's own voice removed
//!   from a human's microphone with what it sent as the reference (pure, times passed in);
//! - [`turn`]: turn-taking from speech probabilities, with an end-of-turn model's pauses
//!   (pure, unit tested on simulated time).
//!
//! ```no_run
//! use parlor_agent::offline::{EspeakTts, RuleReply, SphinxStt};
//! use parlor_agent::{Agent, AgentOptions};
//! use parlor_peer::{ReconnectOptions, RoomPeer, SignallingClient};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = SignallingClient::builder()
//!     .url("ws://127.0.0.1:7800")
//!     .api_key("pk_test_x")
//!     // A daemon: retry forever, at most a minute apart.
//!     .reconnect(Some(ReconnectOptions {
//!         max_attempts: None,
//!         max_delay: Duration::from_secs(60),
//!         ..ReconnectOptions::default()
//!     }))
//!     .build()?;
//! let agent = Agent::new(
//!     RoomPeer::new(client),
//!     SphinxStt::new()?,
//!     RuleReply,
//!     EspeakTts::new()?,
//!     AgentOptions::default(),
//! );
//! agent.run("demo").await?; // returns Err(AgentError::Fatal(_)) if the room fails for good
//! # Ok(())
//! # }
//! ```

pub mod aec;
pub mod agent;
pub mod echo;
pub mod hooks;
pub mod offline;
pub mod openai;
pub mod text;
pub mod turn;
pub mod vad;

pub use agent::{Agent, AgentError, AgentOptions};
pub use hooks::{
    EndOfTurn, Flow, HookError, Llm, Recognizer, Role, SpeechDetector, SpeechToText, TextEndOfTurn,
    TextToSpeech, Transcription, Turn, VoiceActivity,
};
