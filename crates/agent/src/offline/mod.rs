//! Offline default hooks, so an agent talks without any cloud service: PocketSphinx for
//! speech-to-text, eSpeak NG for text-to-speech and a small rule-based reply.

mod espeak;
mod rules;
mod sphinx;

pub use espeak::EspeakTts;
pub use rules::RuleReply;
pub use sphinx::{DEBIAN_MODEL_DIR, SphinxStt};
