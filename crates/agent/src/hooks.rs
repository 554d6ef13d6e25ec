//! The three hooks an agent plugs in: speech-to-text, the reply model, text-to-speech.
//!
//! Hooks are plain blocking traits that stream through callbacks: the agent runs them on
//! blocking threads (never on the audio path) and cancels them on barge-in by returning
//! [`Flow::Stop`] from the callback. Implement them over any engine; `crate::offline` has
//! PocketSphinx, eSpeak NG and a rule-based reply, `crate::openai` an HTTP model.

use std::fmt;

/// A hook failed.
#[derive(Debug, thiserror::Error)]
#[error("{hook} hook: {message}")]
pub struct HookError {
    /// Which hook (`stt`, `llm`, `tts`).
    pub hook: &'static str,
    /// What happened.
    pub message: String,
}

impl HookError {
    /// A new error of `hook`.
    pub fn new(hook: &'static str, message: impl fmt::Display) -> HookError {
        HookError {
            hook,
            message: message.to_string(),
        }
    }
}

/// Whether a streaming hook should go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep producing.
    Continue,
    /// Stop now (barge-in, hang-up).
    Stop,
}

/// Who said a [`Turn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The human.
    Human,
    /// The agent.
    Agent,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// The speaker.
    pub role: Role,
    /// What was said.
    pub text: String,
}

/// Speech-to-text: one [`Recognizer`] per human audio stream.
pub trait SpeechToText: Send + Sync + 'static {
    /// The sample rate the recognizers take (mono s16).
    fn sample_rate(&self) -> u32 {
        16_000
    }
    /// A recognizer for one stream.
    fn recognizer(&self) -> Result<Box<dyn Recognizer>, HookError>;
}

/// Recognizes one stream, one utterance at a time (the agent's VAD cuts utterances).
pub trait Recognizer: Send + 'static {
    /// An utterance begins.
    fn start(&mut self) -> Result<(), HookError>;
    /// More audio of the utterance; may return a partial hypothesis.
    fn feed(&mut self, pcm: &[i16]) -> Result<Option<String>, HookError>;
    /// The utterance ended: the final text (empty when nothing was recognized).
    fn finish(&mut self) -> Result<String, HookError>;
    /// A transcription of the utterance so far, as [`finish`](Self::finish) would give it
    /// now, to run on another thread while this recognizer goes on (the agent asks early in a
    /// pause: if the human says nothing more before the turn ends, its text is the final one,
    /// and the answer does not wait for a second pass). `None` (the default): not supported;
    /// `finish` runs at the end as before.
    fn provisional(&mut self) -> Option<Transcription> {
        None
    }
}

/// A transcription to run off the listening thread ([`Recognizer::provisional`]).
pub type Transcription = Box<dyn FnOnce() -> Result<String, HookError> + Send>;

/// Voice activity: one [`SpeechDetector`] per human audio stream (the model, if any, shared).
pub trait VoiceActivity: Send + Sync + 'static {
    /// A detector for one stream.
    fn detector(&self) -> Result<Box<dyn SpeechDetector>, HookError>;
}

/// The probability that audio is speech, window by window.
pub trait SpeechDetector: Send + 'static {
    /// Samples per probability (16 kHz).
    fn window(&self) -> usize;
    /// Push 16 kHz mono PCM of any length; append one probability (0..=1) per completed
    /// window to `probabilities`.
    fn push(&mut self, pcm: &[i16], probabilities: &mut Vec<f32>) -> Result<(), HookError>;
}

/// End-of-turn: has the human finished their turn, judged from the utterance so far (asked
/// after a short silence, so a pause mid-sentence is not answered).
pub trait EndOfTurn: Send + Sync + 'static {
    /// The probability that `utterance` (16 kHz mono, from its start through the silence
    /// so far) is a finished turn.
    fn complete(&self, utterance: &[i16]) -> Result<f32, HookError>;
}

/// End-of-turn from the words: does the transcript of the utterance so far read unfinished
/// ("Could you find out", "Can you give me")? Asked when the audio model says the turn is
/// complete, beside the hand-written endings ([`crate::turn::reads_unfinished`]); "yes" holds
/// the answer back for the human to go on.
pub trait TextEndOfTurn: Send + Sync + 'static {
    /// Whether `text` (what the human said so far) reads unfinished.
    fn unfinished(&self, text: &str) -> Result<bool, HookError>;
}

impl<T: TextEndOfTurn + ?Sized> TextEndOfTurn for std::sync::Arc<T> {
    fn unfinished(&self, text: &str) -> Result<bool, HookError> {
        (**self).unfinished(text)
    }
}

impl<T: VoiceActivity + ?Sized> VoiceActivity for std::sync::Arc<T> {
    fn detector(&self) -> Result<Box<dyn SpeechDetector>, HookError> {
        (**self).detector()
    }
}

impl<T: EndOfTurn + ?Sized> EndOfTurn for std::sync::Arc<T> {
    fn complete(&self, utterance: &[i16]) -> Result<f32, HookError> {
        (**self).complete(utterance)
    }
}

/// The reply model: streams the reply to the conversation so far in pieces (sentences or
/// tokens) into `sink`, and stops early when `sink` returns [`Flow::Stop`].
pub trait Llm: Send + Sync + 'static {
    /// Reply to `history` (its last turn is the human's).
    fn reply(&self, history: &[Turn], sink: &mut dyn FnMut(&str) -> Flow) -> Result<(), HookError>;
}

/// Text-to-speech: streams mono s16 PCM at [`sample_rate`](TextToSpeech::sample_rate) into
/// `sink` as it is synthesized, and stops early when `sink` returns [`Flow::Stop`].
pub trait TextToSpeech: Send + Sync + 'static {
    /// Rate of the PCM this hook produces.
    fn sample_rate(&self) -> u32;
    /// Speak `text`.
    fn speak(&self, text: &str, sink: &mut dyn FnMut(&[i16]) -> Flow) -> Result<(), HookError>;
}

/// A boxed hook is a hook (pick one at run time, e.g. from the environment).
impl<T: Llm + ?Sized> Llm for Box<T> {
    fn reply(&self, history: &[Turn], sink: &mut dyn FnMut(&str) -> Flow) -> Result<(), HookError> {
        (**self).reply(history, sink)
    }
}

impl<T: TextToSpeech + ?Sized> TextToSpeech for Box<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn speak(&self, text: &str, sink: &mut dyn FnMut(&[i16]) -> Flow) -> Result<(), HookError> {
        (**self).speak(text, sink)
    }
}

/// A shared hook is a hook (one loaded engine behind many agents).
impl<T: Llm + ?Sized> Llm for std::sync::Arc<T> {
    fn reply(&self, history: &[Turn], sink: &mut dyn FnMut(&str) -> Flow) -> Result<(), HookError> {
        (**self).reply(history, sink)
    }
}

impl<T: TextToSpeech + ?Sized> TextToSpeech for std::sync::Arc<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn speak(&self, text: &str, sink: &mut dyn FnMut(&[i16]) -> Flow) -> Result<(), HookError> {
        (**self).speak(text, sink)
    }
}

impl<T: SpeechToText + ?Sized> SpeechToText for std::sync::Arc<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn recognizer(&self) -> Result<Box<dyn Recognizer>, HookError> {
        (**self).recognizer()
    }
}

impl<T: SpeechToText + ?Sized> SpeechToText for Box<T> {
    fn sample_rate(&self) -> u32 {
        (**self).sample_rate()
    }
    fn recognizer(&self) -> Result<Box<dyn Recognizer>, HookError> {
        (**self).recognizer()
    }
}
