//! End of turn from the words: has the human finished what they were saying, judged from the
//! transcript so far by a small language model (Gemma 3 270M, a base model, Q4_K_M), where the
//! audio model ([`crate::smart_turn`]) hears a finished question in a first half ("Could you
//! find out …", "Can you give me …") and the hand-written endings
//! ([`parlor_agent::turn::reads_unfinished`]) do not name it.
//!
//! The idea is LiveKit's turn detector (a language model's probability that the user's turn
//! ends here), without its fine-tuned weights, which no registry package ships: a few-shot
//! prompt, a phone-call transcript that marks a caller who stops mid-sentence with `...`, puts
//! the words after `Caller:`, and the probability of what comes next is read. A sentence's end
//! (`.`, `?`, `!`, a new line) is "finished"; `...` and any word are "not yet". The prompt's
//! tokens are run once, at load, and kept (their keys and values), so a decision runs only the
//! transcript's few tokens through the 18 layers, then the vocabulary's 262 144 logits.
//!
//! Measured in docs/performance.md ("Pauses on new phrasings: a language model reads the
//! words"): on the evaluation set's whole questions and first halves, and on a held-out set
//! written before the model was tried.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use parlor_agent::{HookError, TextEndOfTurn};

use crate::EngineError;
use crate::models::{Model, ModelCache};

/// The few-shot prompt: the transcript goes after its last `Caller:`.
const PROMPT: &str = "A transcript of a phone call with a voice assistant. When the caller stops mid-sentence, the transcript shows \"...\"\nCaller: Hi there.\nAssistant: Hello! How can I help?\nCaller: Could you tell me...\nAssistant: Yes?\nCaller: ...what time it is?\nAssistant: It is ten past three.\nCaller:";

/// Below this probability of a sentence's end, the words read unfinished (chosen on the
/// evaluation set's whole questions and first halves: docs/performance.md).
pub const DEFAULT_THRESHOLD: f32 = 0.2;

const BOS: u32 = 2;
const EOS: u32 = 1;
const END_OF_TURN: u32 = 106;

/// The text end-of-turn model. A decision only reads the model (the prompt's keys and values
/// are copied per call), so the agents of one worker share it without a lock.
pub struct TextTurn {
    model: Gemma,
    threshold: f32,
}

impl std::fmt::Debug for TextTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTurn")
            .field("threshold", &self.threshold)
            .finish_non_exhaustive()
    }
}

impl TextTurn {
    /// Load Gemma 3 270M from `cache` ([`Model::Gemma270m`]) and run the prompt.
    pub fn load(cache: &ModelCache) -> Result<TextTurn, EngineError> {
        cache.require(Model::Gemma270m)?;
        TextTurn::load_file(&cache.path(Model::Gemma270m.files()[0].dest))
    }

    /// Load a Gemma 3 GGUF file.
    pub fn load_file(path: &Path) -> Result<TextTurn, EngineError> {
        let model = Gemma::load(path).map_err(|e| runtime(&e))?;
        Ok(TextTurn {
            model,
            threshold: DEFAULT_THRESHOLD,
        })
    }

    /// The probability below which the words read unfinished.
    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Use another threshold.
    pub fn with_threshold(mut self, threshold: f32) -> TextTurn {
        self.threshold = threshold;
        self
    }

    /// The probability that a sentence ends after `text` (what the human said so far; its
    /// final punctuation is taken off first, so the model, not the recognizer, says whether
    /// it ends). An empty text: 1.
    pub fn probability(&self, text: &str) -> Result<f32, EngineError> {
        let words = text
            .trim()
            .trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '.' | '?' | '!' | ','));
        if words.is_empty() {
            return Ok(1.0);
        }
        self.model.p_end(words).map_err(|e| runtime(&e))
    }
}

impl TextEndOfTurn for TextTurn {
    /// Under [`threshold`](TextTurn::threshold). A single word is not asked about: alone
    /// it is a whole turn ("Hi", "Thanks", "Yes"; the model gave "Hi" 0.18) or one the
    /// hand-written endings already hold ("So", "And", "Um").
    fn unfinished(&self, text: &str) -> Result<bool, HookError> {
        if text.split_whitespace().count() < 2 {
            return Ok(false);
        }
        Ok(self.probability(text)? < self.threshold)
    }
}

fn runtime(e: &candle_core::Error) -> EngineError {
    EngineError::Runtime(format!("text end-of-turn model: {e}"))
}

/// SentencePiece as llama.cpp runs it from a GGUF vocabulary: characters, then the best-scored
/// merge of neighbours until none is in the vocabulary; a piece not in it is spelled in bytes.
struct Spm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
}

impl Spm {
    fn encode(&self, text: &str) -> Vec<u32> {
        let text = text.replace(' ', "\u{2581}");
        let mut pieces: Vec<String> = text.chars().map(String::from).collect();
        loop {
            let mut best: Option<(usize, f32)> = None;
            for i in 0..pieces.len().saturating_sub(1) {
                let joined = format!("{}{}", pieces[i], pieces[i + 1]);
                if let Some(&id) = self.ids.get(&joined) {
                    let score = self.scores.get(id as usize).copied().unwrap_or(f32::MIN);
                    if best.is_none_or(|(_, s)| score > s) {
                        best = Some((i, score));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let next = pieces.remove(i + 1);
            pieces[i].push_str(&next);
        }
        let mut out = Vec::with_capacity(pieces.len());
        for p in pieces {
            match self.ids.get(&p) {
                Some(&id) => out.push(id),
                None => out.extend(
                    p.bytes()
                        .filter_map(|b| self.ids.get(&format!("<0x{b:02X}>")).copied()),
                ),
            }
        }
        out
    }
}

struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    q_norm: Tensor,
    k_norm: Tensor,
    attn_norm: Tensor,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    post_ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    /// Sliding-window layers rotate with a base of 10 000, the others with 1 000 000.
    local: bool,
}

/// Gemma 3's forward pass (text only) on candle's quantized CPU kernels.
struct Gemma {
    spm: Spm,
    embed: Arc<QTensor>,
    output: QMatMul,
    layers: Vec<Layer>,
    norm: Tensor,
    eps: f32,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    rope_local: (Tensor, Tensor),
    rope_global: (Tensor, Tensor),
    /// Token ids that end a sentence.
    ends: Vec<u32>,
    /// The prompt's keys and values, per layer, and its length in tokens.
    prefix: Vec<(Tensor, Tensor)>,
    prefix_len: usize,
}

/// Positions the rotary tables cover: the prompt and a long transcript.
const MAX_POSITIONS: usize = 1024;

impl Gemma {
    fn load(path: &Path) -> candle_core::Result<Gemma> {
        let dev = Device::Cpu;
        let mut file = std::fs::File::open(path)?;
        let ct = gguf_file::Content::read(&mut file)?;
        let md = |k: &str| match ct.metadata.get(k) {
            Some(v) => Ok(v),
            None => candle_core::bail!("{k} missing from the GGUF metadata"),
        };
        let arch = md("general.architecture")?.to_string()?.clone();
        if arch != "gemma3" {
            candle_core::bail!("expected a gemma3 model, found {arch}");
        }
        let heads = md("gemma3.attention.head_count")?.to_u32()? as usize;
        let kv_heads = md("gemma3.attention.head_count_kv")?.to_u32()? as usize;
        if kv_heads != 1 {
            candle_core::bail!("expected one key/value head, found {kv_heads}");
        }
        let blocks = md("gemma3.block_count")?.to_u32()? as usize;
        let hidden = md("gemma3.embedding_length")?.to_u32()? as usize;
        let head_dim = md("gemma3.attention.key_length")?.to_u32()? as usize;
        let eps = md("gemma3.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let base = md("gemma3.rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(1_000_000.0);
        let tokens = md("tokenizer.ggml.tokens")?.to_vec()?;
        let scores = md("tokenizer.ggml.scores")?.to_vec()?;
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut ends = vec![EOS, END_OF_TURN];
        for (i, t) in tokens.iter().enumerate() {
            let t = t.to_string()?;
            let id = i as u32;
            if ends_sentence(t) {
                ends.push(id);
            }
            ids.insert(t.clone(), id);
        }
        let scores = scores
            .iter()
            .map(|v| v.to_f32())
            .collect::<candle_core::Result<Vec<f32>>>()?;
        let mut tensor = |name: &str| ct.tensor(&mut file, name, &dev);
        let embed = Arc::new(tensor("token_embd.weight")?);
        let norm = tensor("output_norm.weight")?.dequantize(&dev)?;
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut q = |n: &str| -> candle_core::Result<QMatMul> {
                QMatMul::from_qtensor(fast(tensor(&format!("blk.{i}.{n}.weight"))?)?)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (gate, up, down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            let mut f = |n: &str| tensor(&format!("blk.{i}.{n}.weight"))?.dequantize(&dev);
            layers.push(Layer {
                wq,
                wk,
                wv,
                wo,
                q_norm: f("attn_q_norm")?,
                k_norm: f("attn_k_norm")?,
                attn_norm: f("attn_norm")?,
                post_attn_norm: f("post_attention_norm")?,
                ffn_norm: f("ffn_norm")?,
                post_ffn_norm: f("post_ffw_norm")?,
                gate,
                up,
                down,
                // Every sixth layer attends globally.
                local: (i + 1) % 6 != 0,
            });
        }
        let mut model = Gemma {
            spm: Spm { ids, scores },
            output: QMatMul::from_arc(embed.clone())?,
            embed,
            layers,
            norm,
            eps,
            hidden,
            heads,
            head_dim,
            rope_local: rope_table(head_dim, 10_000.0, &dev)?,
            rope_global: rope_table(head_dim, base, &dev)?,
            ends,
            prefix: Vec::new(),
            prefix_len: 0,
        };
        let mut prompt = vec![BOS];
        prompt.extend(model.spm.encode(PROMPT));
        let mut cache = Vec::new();
        model.forward(&prompt, 0, &mut cache)?;
        model.prefix = cache;
        model.prefix_len = prompt.len();
        Ok(model)
    }

    /// The probability that a sentence ends after `words` (put after the prompt).
    fn p_end(&self, words: &str) -> candle_core::Result<f32> {
        let tokens = self.spm.encode(&format!(" {words}"));
        if tokens.is_empty() || self.prefix_len + tokens.len() > MAX_POSITIONS {
            return Ok(1.0);
        }
        let mut cache = self.prefix.clone();
        let hidden = self.forward(&tokens, self.prefix_len, &mut cache)?;
        let logits = self
            .output
            .forward(&hidden)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let total: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        let end: f64 = self
            .ends
            .iter()
            .filter_map(|&id| logits.get(id as usize))
            .map(|&l| f64::from((l - max).exp()))
            .sum();
        Ok((end / total) as f32)
    }

    /// Run `tokens` at positions from `start`, appending to `cache`; the last position's
    /// normalized hidden state (1 × hidden).
    fn forward(
        &self,
        tokens: &[u32],
        start: usize,
        cache: &mut Vec<(Tensor, Tensor)>,
    ) -> candle_core::Result<Tensor> {
        let dev = Device::Cpu;
        let t = tokens.len();
        let ids = Tensor::new(tokens, &dev)?;
        let mut x = (self.embed.embedding(&ids)? * (self.hidden as f64).sqrt())?.reshape((
            1,
            t,
            self.hidden,
        ))?;
        let total = start + t;
        // Causal: position start + i sees keys 0..=start + i.
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..total).map(move |j| {
                    if j > start + i {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, total), &dev)?;
        for (n, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = if layer.local {
                &self.rope_local
            } else {
                &self.rope_global
            };
            let (cos, sin) = (cos.narrow(0, start, t)?, sin.narrow(0, start, t)?);
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.eps)?;
            // (1, t, heads × head_dim) → (1, heads, t, head_dim).
            let split = |w: &QMatMul, heads: usize| {
                w.forward(&h)?
                    .reshape((1, t, heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = (
                split(&layer.wq, self.heads)?,
                split(&layer.wk, 1)?,
                split(&layer.wv, 1)?,
            );
            let q = candle_nn::ops::rms_norm(&q, &layer.q_norm, self.eps)?;
            let k = candle_nn::ops::rms_norm(&k, &layer.k_norm, self.eps)?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let (k, v) = match cache.get(n) {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            if n < cache.len() {
                cache[n] = (k.clone(), v.clone());
            } else {
                cache.push((k.clone(), v.clone()));
            }
            // One key/value head for every query head: the heads' rows share it.
            let q = q.reshape((1, 1, self.heads * t, self.head_dim))?;
            let scores = (q.matmul(&k.t()?)? / (self.head_dim as f64).sqrt())?
                .reshape((1, self.heads, t, total))?
                .broadcast_add(&mask)?;
            let weights = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn = weights
                .reshape((1, 1, self.heads * t, total))?
                .matmul(&v)?
                .reshape((1, self.heads, t, self.head_dim))?
                .transpose(1, 2)?
                .reshape((1, t, self.heads * self.head_dim))?;
            let attn = layer.wo.forward(&attn)?;
            let attn = candle_nn::ops::rms_norm(&attn, &layer.post_attn_norm, self.eps)?;
            x = (x + attn)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.eps)?;
            let ff = (layer.gate.forward(&h)?.gelu()? * layer.up.forward(&h)?)?;
            let ff = layer.down.forward(&ff)?;
            let ff = candle_nn::ops::rms_norm(&ff, &layer.post_ffn_norm, self.eps)?;
            x = (x + ff)?;
        }
        let last = x.narrow(1, t - 1, 1)?;
        candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?.reshape((1, self.hidden))
    }
}

/// The weights in a type candle's x86 kernels multiply with AVX2: its Q5_0 (most of this
/// file's linears) has no such kernel, so those are held in Q8_0 instead (a third more bytes,
/// the same values to within Q8_0's rounding).
fn fast(t: QTensor) -> candle_core::Result<QTensor> {
    use candle_core::quantized::GgmlDType;
    match t.dtype() {
        GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q4_1 => {
            QTensor::quantize(&t.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)
        }
        _ => Ok(t),
    }
}

/// Whether a vocabulary piece ends a sentence: `.`, `?`, `!` (after spaces) or a new line,
/// but not `...`, which the prompt uses for a caller who stopped mid-sentence.
fn ends_sentence(piece: &str) -> bool {
    let piece = piece.replace('\u{2581}', " ");
    if piece.starts_with("...") || piece.starts_with('…') {
        return false;
    }
    piece
        .trim_start_matches([' ', '\t', '\r'])
        .starts_with(['.', '?', '!', '\n'])
}

fn rope_table(head_dim: usize, base: f32, dev: &Device) -> candle_core::Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, head_dim / 2), dev)?;
    let pos = Tensor::arange(0u32, MAX_POSITIONS as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((MAX_POSITIONS, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_ends_a_sentence() {
        for p in ["?", ".", "!", "\u{2581}?", "\n", "\n\n", ".\n", "?\u{2581}"] {
            assert!(ends_sentence(p), "{p:?}");
        }
        for p in ["...", "…", "\u{2581}what", ",", "\u{2581}the", "-"] {
            assert!(!ends_sentence(p), "{p:?}");
        }
    }

    #[test]
    fn spm_merges_the_best_scored_pair_and_spells_the_rest_in_bytes() {
        let vocab = [
            ("a", 0.0),
            ("b", 0.0),
            ("ab", -1.0),
            ("bc", -0.5),
            ("c", 0.0),
            ("<0x7A>", 0.0),
        ];
        let spm = Spm {
            ids: vocab
                .iter()
                .enumerate()
                .map(|(i, (t, _))| ((*t).to_owned(), i as u32))
                .collect(),
            scores: vocab.iter().map(|(_, s)| *s).collect(),
        };
        // "bc" scores higher than "ab", so it merges first; "z" is not a piece: its byte.
        assert_eq!(spm.encode("abcz"), vec![0, 3, 5]);
    }
}
