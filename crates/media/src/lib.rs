//! # parlor-media
//!
//! Audio for Parlor peers, on top of the peer SDK's encoded-frame tracks:
//!
//! * [`AudioSource`] — push PCM (any rate, mono or stereo) and the source resamples it to
//!   the smallest Opus rate that keeps its bandwidth (16 kHz stays 16 kHz, 22.05 kHz becomes
//!   24 kHz, 44.1 kHz becomes 48 kHz), encodes Opus (48 kHz RTP clock) and paces one 20 ms
//!   frame every 20 ms onto its [`LocalTrack`](parlor_peer::LocalTrack), with backpressure
//!   at a cap, silence on underrun, `end()` (drain) and `stop()` (barge-in). Its in-band FEC
//!   follows the loss the far ends report in RTCP: nothing is spent on it on a clean link
//!   ([`codec::fec_loss_percent`], [`AudioSource::expected_loss_percent`]).
//! * [`AudioFrames`] — a remote audio track decoded to 48 kHz stereo frames, in order through
//!   a [`jitter::JitterBuffer`] (a missing packet waited for only as long as the link's
//!   jitter says; nothing present held back), with FEC/PLC for lost packets;
//!   [`SpeechDownsampler`] turns them into 16 kHz mono for STT.
//! * [`StreamResampler`] — rubato's FFT resampler behind a streaming `i16` interface.
//!
//! ```no_run
//! use parlor_media::{AudioFrames, AudioSource, AudioSourceOptions, Layout, SpeechDownsampler};
//! use parlor_peer::{RoomEvent, RoomPeer};
//!
//! # async fn agent(room: RoomPeer, mut events: parlor_peer::RoomEvents) -> Result<(), Box<dyn std::error::Error>> {
//! // The agent's voice: 24 kHz mono PCM from a TTS engine.
//! let voice = AudioSource::new(AudioSourceOptions::new(24_000, Layout::Mono))?;
//! room.add_track(voice.track());
//! while let Some(event) = events.recv().await {
//!     if let RoomEvent::Track { track, .. } = event {
//!         let mut frames = AudioFrames::new(track)?;
//!         let mut to_stt = SpeechDownsampler::new()?;
//!         let mut pcm16k = Vec::new();
//!         while let Some(frame) = frames.next().await {
//!             to_stt.process(&frame, &mut pcm16k)?; // feed pcm16k to speech-to-text
//!         }
//!     }
//! }
//! voice.push(&[0u8; 960]).await?; // PCM bytes from TTS
//! voice.end().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod codec;
pub mod frames;
pub mod jitter;
pub mod resample;
pub mod source;
pub mod wav;

pub use codec::OpusSettings;
pub use frames::{AudioFrame, AudioFrames, MediaClock, SpeechDownsampler};
pub use resample::StreamResampler;
pub use source::{AudioSource, AudioSourceOptions, Layout, OutputLevels, SentFrame};

/// Errors of the media crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// A sample rate outside 8 kHz…192 kHz.
    #[error("unsupported sample rate {0} Hz (8000..=192000)")]
    UnsupportedRate(u32),
    /// A channel count other than 1 or 2.
    #[error("unsupported channel count {0} (mono or stereo only)")]
    UnsupportedLayout(usize),
    /// A layout name other than `mono` or `stereo`.
    #[error("unknown layout {0:?} (expected \"mono\" or \"stereo\")")]
    UnknownLayout(String),
    /// The track is not audio.
    #[error("not an audio track")]
    NotAudio,
    /// libopus failed.
    #[error("opus: {0}")]
    Opus(String),
    /// The resampler failed.
    #[error("resampler: {0}")]
    Resampler(String),
    /// Not a mono 16-bit PCM WAV file ([`wav`]).
    #[error("WAV: {0}")]
    Wav(String),
}
