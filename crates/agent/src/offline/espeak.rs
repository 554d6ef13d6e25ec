//! Text-to-speech with eSpeak NG (Debian `espeak-ng`, `libespeak-ng-dev`), through its C API
//! in synchronous mode: the library calls back with PCM as it synthesizes, so the agent can
//! start talking before the sentence is done.
//!
//! eSpeak keeps global state, so every call holds one process-wide lock; synthesis of one
//! sentence takes a few milliseconds per second of speech.
#![allow(unsafe_code)]

use std::ffi::{CString, c_char, c_int, c_short, c_uint, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::hooks::{Flow, HookError, TextToSpeech};

const AUDIO_OUTPUT_SYNCHRONOUS: c_int = 2;
const POS_CHARACTER: c_int = 1;
const ESPEAK_CHARS_UTF8: c_uint = 1;
const ESPEAK_RATE: c_int = 1;
const EE_OK: c_int = 0;
/// `espeak_TextToPhonemes` phoneme mode: IPA (bit 1).
const PHONEMES_IPA: c_int = 0x02;

type SynthCallback = unsafe extern "C" fn(*mut c_short, c_int, *mut c_void) -> c_int;

#[link(name = "espeak-ng")]
unsafe extern "C" {
    fn espeak_Initialize(
        output: c_int,
        buflength: c_int,
        path: *const c_char,
        options: c_int,
    ) -> c_int;
    fn espeak_SetSynthCallback(cb: SynthCallback);
    fn espeak_SetVoiceByName(name: *const c_char) -> c_int;
    fn espeak_SetParameter(parameter: c_int, value: c_int, relative: c_int) -> c_int;
    fn espeak_TextToPhonemes(
        textptr: *mut *const c_void,
        textmode: c_int,
        phonememode: c_int,
    ) -> *const c_char;
    fn espeak_Synth(
        text: *const c_void,
        size: usize,
        position: c_uint,
        position_type: c_int,
        end_position: c_uint,
        flags: c_uint,
        unique_identifier: *mut c_uint,
        user_data: *mut c_void,
    ) -> c_int;
}

/// The engine's global state: its sample rate once initialized, and the voice/rate set last.
struct Engine {
    rate: u32,
    voice: String,
    wpm: u32,
}

static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
/// The sink of the synthesis in progress (set only while `ENGINE` is locked).
static SINK: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());

type Sink<'a> = &'a mut dyn FnMut(&[i16]) -> Flow;

unsafe extern "C" fn on_audio(wav: *mut c_short, n: c_int, _events: *mut c_void) -> c_int {
    let sink = SINK.load(Ordering::Acquire) as *mut Sink<'_>;
    if sink.is_null() {
        return 1;
    }
    if wav.is_null() || n <= 0 {
        return 0;
    }
    // SAFETY: eSpeak hands `n` samples at `wav`, valid for this call; `sink` points at the
    // `Sink` of `EspeakTts::speak`, alive while it holds the engine lock around espeak_Synth.
    let (pcm, sink) = unsafe { (std::slice::from_raw_parts(wav, n as usize), &mut *sink) };
    match sink(pcm) {
        Flow::Continue => 0,
        Flow::Stop => 1,
    }
}

/// eSpeak NG as a [`TextToSpeech`] hook.
#[derive(Debug, Clone)]
pub struct EspeakTts {
    voice: String,
    wpm: u32,
    rate: u32,
}

impl EspeakTts {
    /// The `en-us` voice at 165 words per minute.
    pub fn new() -> Result<EspeakTts, HookError> {
        EspeakTts::with_voice("en-us", 165)
    }

    /// A voice by eSpeak name (`en-us`, `en-gb`, `de`, …) at `wpm` words per minute.
    pub fn with_voice(voice: &str, wpm: u32) -> Result<EspeakTts, HookError> {
        let mut engine = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        let rate = match &*engine {
            Some(e) => e.rate,
            None => {
                // SAFETY: plain initialization call; a null path means the default data dir.
                let rate = unsafe {
                    espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 100, std::ptr::null(), 0)
                };
                if rate <= 0 {
                    return Err(HookError::new(
                        "tts",
                        "espeak_Initialize failed (is espeak-ng-data installed?)",
                    ));
                }
                // SAFETY: `on_audio` has the callback's signature and lives forever.
                unsafe { espeak_SetSynthCallback(on_audio) };
                *engine = Some(Engine {
                    rate: rate as u32,
                    voice: String::new(),
                    wpm: 0,
                });
                rate as u32
            }
        };
        drop(engine);
        let tts = EspeakTts {
            voice: voice.to_owned(),
            wpm: wpm.clamp(80, 450),
            rate,
        };
        // Fail now on an unknown voice rather than at the first sentence.
        tts.speak("", &mut |_| Flow::Continue)?;
        Ok(tts)
    }
}

/// One clause of text as eSpeak's IPA phonemes (what neural voices such as Piper take).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The phonemes, words separated by spaces.
    pub ipa: String,
    /// The punctuation that ended the clause (`.`, `?`, `!`, `,`, `:`, `;`), if any.
    pub terminator: Option<char>,
    /// Whether the clause ends a sentence (`.`, `?`, `!`, or the end of the text).
    pub ends_sentence: bool,
}

impl EspeakTts {
    /// `text` as IPA phonemes, clause by clause, in this voice.
    ///
    /// eSpeak NG 1.51 (Debian) has no `espeak_TextToPhonemesWithTerminator`: the terminator
    /// is read from the text each call consumed, which runs one character into the next
    /// clause.
    pub fn phonemes(&self, text: &str) -> Result<Vec<Clause>, HookError> {
        let mut guard = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        self.select(&mut guard)?;
        let text = CString::new(text.replace('\0', " "))
            .map_err(|_| HookError::new("tts", "text contains NUL"))?;
        let bytes = text.as_bytes();
        let start = text.as_ptr();
        let mut ptr: *const c_void = start.cast();
        let mut clauses = Vec::new();
        while !ptr.is_null() {
            let before = ptr as usize - start as usize;
            // SAFETY: `ptr` points into `text` (NUL-terminated, alive for the loop); eSpeak
            // advances it past one clause, or sets it to null at the end; the returned
            // phonemes are valid until the next call and copied at once.
            let phonemes = unsafe {
                let p =
                    espeak_TextToPhonemes(&raw mut ptr, ESPEAK_CHARS_UTF8 as c_int, PHONEMES_IPA);
                if p.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
                }
            };
            let after = if ptr.is_null() {
                bytes.len()
            } else {
                (ptr as usize - start as usize).min(bytes.len())
            };
            let mut consumed =
                String::from_utf8_lossy(&bytes[before.min(after)..after]).into_owned();
            if !ptr.is_null() {
                // eSpeak read one character of the next clause.
                consumed.pop();
            }
            let terminator = consumed
                .trim_end()
                .chars()
                .last()
                .filter(|c| matches!(c, '.' | '?' | '!' | ',' | ':' | ';'));
            let ends_sentence = ptr.is_null() || matches!(terminator, Some('.' | '?' | '!'));
            let ipa = phonemes.trim().to_owned();
            if ipa.is_empty() && terminator.is_none() && !ends_sentence {
                continue;
            }
            clauses.push(Clause {
                ipa,
                terminator,
                ends_sentence,
            });
        }
        Ok(clauses)
    }

    /// Select this voice and rate in the engine (`guard` holds the engine lock).
    fn select(&self, guard: &mut Option<Engine>) -> Result<(), HookError> {
        let engine = guard
            .as_mut()
            .ok_or_else(|| HookError::new("tts", "eSpeak is not initialized"))?;
        if engine.voice != self.voice {
            let name = CString::new(self.voice.as_str())
                .map_err(|_| HookError::new("tts", "voice name contains NUL"))?;
            // SAFETY: `name` is a valid C string for the call.
            if unsafe { espeak_SetVoiceByName(name.as_ptr()) } != EE_OK {
                return Err(HookError::new(
                    "tts",
                    format!("unknown eSpeak voice {:?}", self.voice),
                ));
            }
            engine.voice.clone_from(&self.voice);
        }
        if engine.wpm != self.wpm {
            // SAFETY: plain parameter call.
            unsafe { espeak_SetParameter(ESPEAK_RATE, self.wpm as c_int, 0) };
            engine.wpm = self.wpm;
        }
        Ok(())
    }
}

impl TextToSpeech for EspeakTts {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn speak(&self, text: &str, sink: &mut dyn FnMut(&[i16]) -> Flow) -> Result<(), HookError> {
        let mut guard = ENGINE.lock().unwrap_or_else(|e| e.into_inner());
        self.select(&mut guard)?;
        if text.trim().is_empty() {
            return Ok(());
        }
        let text = CString::new(text.replace('\0', " "))
            .map_err(|_| HookError::new("tts", "text contains NUL"))?;
        let mut sink: Sink<'_> = sink;
        SINK.store((&raw mut sink).cast(), Ordering::Release);
        // SAFETY: `text` is a valid NUL-terminated UTF-8 string; in synchronous mode
        // espeak_Synth returns only after its last callback, and `sink` outlives the call.
        let rc = unsafe {
            espeak_Synth(
                text.as_ptr().cast(),
                text.as_bytes_with_nul().len(),
                0,
                POS_CHARACTER,
                0,
                ESPEAK_CHARS_UTF8,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        SINK.store(std::ptr::null_mut(), Ordering::Release);
        drop(guard);
        if rc != EE_OK {
            return Err(HookError::new("tts", format!("espeak_Synth failed ({rc})")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speaks_a_sentence_and_stops_on_request() {
        let tts = EspeakTts::new().expect("espeak-ng");
        assert_eq!(tts.sample_rate(), 22_050);
        let mut pcm = Vec::new();
        tts.speak("Hello there, how are you today?", &mut |p| {
            pcm.extend_from_slice(p);
            Flow::Continue
        })
        .expect("speak");
        let secs = pcm.len() as f64 / 22_050.0;
        assert!((1.0..4.0).contains(&secs), "{secs} s");
        assert!(pcm.iter().any(|s| s.unsigned_abs() > 5_000));
        let mut chunks = 0;
        tts.speak(
            "This sentence is cut off after the first chunk.",
            &mut |_| {
                chunks += 1;
                Flow::Stop
            },
        )
        .expect("speak");
        assert_eq!(chunks, 1);
        assert!(EspeakTts::with_voice("no-such-voice", 160).is_err());
    }

    #[test]
    fn phonemes_clause_by_clause_with_terminators() {
        let tts = EspeakTts::new().expect("espeak-ng");
        let clauses = tts
            .phonemes("Hello, world! How are you today? Fine")
            .expect("phonemes");
        let shape: Vec<_> = clauses
            .iter()
            .map(|c| (c.terminator, c.ends_sentence))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Some(','), false),
                (Some('!'), true),
                (Some('?'), true),
                (None, true)
            ],
            "{clauses:?}"
        );
        assert!(
            clauses[0].ipa.contains("l") && clauses[0].ipa.contains('ˈ'),
            "{clauses:?}"
        );
        assert!(
            clauses[2].ipa.contains(' '),
            "words are spaced: {clauses:?}"
        );
        assert!(
            tts.phonemes("")
                .expect("empty")
                .iter()
                .all(|c| c.ipa.is_empty())
        );
    }
}
