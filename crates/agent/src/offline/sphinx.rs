//! Speech-to-text with CMU PocketSphinx (Debian `pocketsphinx`, `pocketsphinx-en-us`,
//! `libpocketsphinx-dev`), through its C API: one decoder per human stream, fed 16 kHz mono
//! utterances cut by the agent's VAD.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::path::{Path, PathBuf};

use crate::hooks::{HookError, Recognizer, SpeechToText};

#[link(name = "pocketsphinx")]
unsafe extern "C" {
    fn ps_args() -> *const c_void;
    fn ps_init(config: *mut c_void) -> *mut c_void;
    fn ps_free(ps: *mut c_void) -> c_int;
    fn ps_start_utt(ps: *mut c_void) -> c_int;
    fn ps_process_raw(
        ps: *mut c_void,
        data: *const i16,
        n_samples: usize,
        no_search: c_int,
        full_utt: c_int,
    ) -> c_int;
    fn ps_end_utt(ps: *mut c_void) -> c_int;
    fn ps_get_hyp(ps: *mut c_void, out_best_score: *mut i32) -> *const c_char;
}

#[link(name = "sphinxbase")]
unsafe extern "C" {
    fn cmd_ln_init(inout: *mut c_void, defn: *const c_void, strict: c_int, ...) -> *mut c_void;
    fn cmd_ln_free_r(cmdln: *mut c_void) -> c_int;
}

/// Where Debian's `pocketsphinx-en-us` puts the US English model.
pub const DEBIAN_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// PocketSphinx as a [`SpeechToText`] hook.
#[derive(Debug, Clone)]
pub struct SphinxStt {
    hmm: CString,
    lm: CString,
    dict: CString,
}

impl SphinxStt {
    /// The US English model of Debian's `pocketsphinx-en-us`.
    pub fn new() -> Result<SphinxStt, HookError> {
        SphinxStt::with_model(Path::new(DEBIAN_MODEL_DIR))
    }

    /// A model directory holding `en-us/` (acoustic model), `en-us.lm.bin` and
    /// `cmudict-en-us.dict`.
    pub fn with_model(dir: &Path) -> Result<SphinxStt, HookError> {
        let path = |p: PathBuf| -> Result<CString, HookError> {
            if !p.exists() {
                return Err(HookError::new(
                    "stt",
                    format!(
                        "PocketSphinx model file {} is missing (Debian: apt install pocketsphinx-en-us)",
                        p.display()
                    ),
                ));
            }
            CString::new(p.to_string_lossy().into_owned())
                .map_err(|_| HookError::new("stt", "model path contains NUL"))
        };
        let stt = SphinxStt {
            hmm: path(dir.join("en-us"))?,
            lm: path(dir.join("en-us.lm.bin"))?,
            dict: path(dir.join("cmudict-en-us.dict"))?,
        };
        drop(stt.recognizer()?);
        Ok(stt)
    }
}

impl SpeechToText for SphinxStt {
    fn recognizer(&self) -> Result<Box<dyn Recognizer>, HookError> {
        let flag = |s: &str| CString::new(s).unwrap_or_default();
        let (f_hmm, f_lm, f_dict, f_log) =
            (flag("-hmm"), flag("-lm"), flag("-dict"), flag("-logfn"));
        let devnull = flag("/dev/null");
        // SAFETY: `cmd_ln_init` takes NUL-terminated (name, value) string pairs ending with a
        // null pointer; every string outlives the call (the library copies them).
        let config = unsafe {
            cmd_ln_init(
                std::ptr::null_mut(),
                ps_args(),
                1,
                f_hmm.as_ptr(),
                self.hmm.as_ptr(),
                f_lm.as_ptr(),
                self.lm.as_ptr(),
                f_dict.as_ptr(),
                self.dict.as_ptr(),
                f_log.as_ptr(),
                devnull.as_ptr(),
                std::ptr::null::<c_char>(),
            )
        };
        if config.is_null() {
            return Err(HookError::new(
                "stt",
                "PocketSphinx rejected its configuration",
            ));
        }
        // SAFETY: `config` is a valid configuration; `ps_init` retains it.
        let ps = unsafe { ps_init(config) };
        // SAFETY: our reference to `config` is released (the decoder holds its own).
        unsafe { cmd_ln_free_r(config) };
        if ps.is_null() {
            return Err(HookError::new(
                "stt",
                "PocketSphinx failed to load its model",
            ));
        }
        Ok(Box::new(SphinxRecognizer { ps, in_utt: false }))
    }
}

/// One PocketSphinx decoder.
#[derive(Debug)]
struct SphinxRecognizer {
    ps: *mut c_void,
    in_utt: bool,
}

// SAFETY: a decoder is used by one thread at a time (`&mut self`); PocketSphinx decoders
// share no mutable global state.
unsafe impl Send for SphinxRecognizer {}

impl SphinxRecognizer {
    fn hyp(&self) -> String {
        let mut score = 0i32;
        // SAFETY: `ps` is a live decoder; the returned string belongs to it and is copied here.
        let h = unsafe { ps_get_hyp(self.ps, &raw mut score) };
        if h.is_null() {
            return String::new();
        }
        // SAFETY: non-null, NUL-terminated, valid until the next decoder call.
        unsafe { CStr::from_ptr(h) }
            .to_string_lossy()
            .trim()
            .to_owned()
    }
}

impl Recognizer for SphinxRecognizer {
    fn start(&mut self) -> Result<(), HookError> {
        if self.in_utt {
            // SAFETY: live decoder.
            unsafe { ps_end_utt(self.ps) };
        }
        // SAFETY: live decoder.
        if unsafe { ps_start_utt(self.ps) } < 0 {
            return Err(HookError::new("stt", "ps_start_utt failed"));
        }
        self.in_utt = true;
        Ok(())
    }

    fn feed(&mut self, pcm: &[i16]) -> Result<Option<String>, HookError> {
        if !self.in_utt {
            self.start()?;
        }
        // SAFETY: `pcm` is valid for `pcm.len()` samples during the call.
        if unsafe { ps_process_raw(self.ps, pcm.as_ptr(), pcm.len(), 0, 0) } < 0 {
            return Err(HookError::new("stt", "ps_process_raw failed"));
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<String, HookError> {
        if !self.in_utt {
            return Ok(String::new());
        }
        self.in_utt = false;
        // SAFETY: live decoder in an utterance.
        if unsafe { ps_end_utt(self.ps) } < 0 {
            return Err(HookError::new("stt", "ps_end_utt failed"));
        }
        Ok(self.hyp())
    }
}

impl Drop for SphinxRecognizer {
    fn drop(&mut self) {
        // SAFETY: we own the decoder; nothing uses it after this.
        unsafe { ps_free(self.ps) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::{Flow, TextToSpeech};
    use crate::offline::EspeakTts;

    /// eSpeak speaks, PocketSphinx listens: the key words come back.
    #[test]
    fn recognizes_espeak_speech() {
        let tts = EspeakTts::with_voice("en-us", 150).expect("espeak");
        let mut pcm22 = Vec::new();
        tts.speak("What is the weather like today?", &mut |p| {
            pcm22.extend_from_slice(p);
            Flow::Continue
        })
        .expect("speak");
        let mut pcm16 = Vec::new();
        parlor_media::StreamResampler::new(22_050, 16_000, 1)
            .expect("resampler")
            .process(&pcm22, &mut pcm16)
            .expect("resample");
        let stt = SphinxStt::new().expect("pocketsphinx model");
        let mut rec = stt.recognizer().expect("recognizer");
        rec.start().expect("start");
        for chunk in pcm16.chunks(320) {
            rec.feed(chunk).expect("feed");
        }
        let text = rec.finish().expect("finish");
        assert!(text.contains("weather"), "{text:?}");
        assert!(SphinxStt::with_model(Path::new("/nonexistent")).is_err());
    }
}
