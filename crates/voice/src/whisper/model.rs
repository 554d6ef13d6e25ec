//! Whisper's forward pass on candle tensors (CPU, f32), loaded from CTranslate2 variables.
//!
//! The same network as OpenAI's `whisper/model.py` (and candle-transformers' port, whose
//! structure this follows): two convolutions and a transformer encoder over the log-mel
//! frames; a transformer decoder with cross-attention over the encoder's output. Two things
//! differ from candle-transformers: the decoder keeps a self-attention cache (one token per
//! step instead of the whole prefix), and the encoder runs on as many frames as the audio has
//! (not always 30 s; see `super`), which is what makes short turns fast.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, LayerNorm, Linear};

use super::ct2::Variable;

type Result<T> = std::result::Result<T, String>;

fn err(e: candle_core::Error) -> String {
    e.to_string()
}

/// The variables of a `model.bin`, as tensors on the CPU.
struct Weights {
    vars: HashMap<String, Variable>,
}

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor> {
        let v = self
            .vars
            .get(name)
            .ok_or_else(|| format!("model.bin has no {name}"))?;
        Tensor::from_vec(v.to_f32(), v.dims.as_slice(), &Device::Cpu).map_err(err)
    }

    fn scalar(&self, name: &str) -> Result<usize> {
        self.vars
            .get(name)
            .and_then(Variable::scalar)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| format!("model.bin has no scalar {name}"))
    }

    fn layer_norm(&self, prefix: &str) -> Result<LayerNorm> {
        Ok(LayerNorm::new(
            self.get(&format!("{prefix}/gamma"))?,
            self.get(&format!("{prefix}/beta"))?,
            1e-5,
        ))
    }

    fn linear(&self, prefix: &str) -> Result<Linear> {
        Ok(Linear::new(
            self.get(&format!("{prefix}/weight"))?,
            Some(self.get(&format!("{prefix}/bias"))?),
        ))
    }

    fn dense(&self, prefix: &str, weights: DecoderWeights) -> Result<Dense> {
        Dense::with(self.linear(prefix)?, weights).map_err(err)
    }

    /// A fused projection (`[n·d, d]`) split into `n` linears of `d` outputs each.
    fn split(&self, prefix: &str, n: usize, weights: DecoderWeights) -> Result<Vec<Dense>> {
        let w = self.get(&format!("{prefix}/weight"))?;
        let b = self.get(&format!("{prefix}/bias"))?;
        let d = w.dim(0).map_err(err)? / n;
        (0..n)
            .map(|i| {
                let linear = Linear::new(
                    w.narrow(0, i * d, d)
                        .map_err(err)?
                        .contiguous()
                        .map_err(err)?,
                    Some(
                        b.narrow(0, i * d, d)
                            .map_err(err)?
                            .contiguous()
                            .map_err(err)?,
                    ),
                );
                Dense::with(linear, weights).map_err(err)
            })
            .collect()
    }
}

/// How the decoder's weights are held. The decoder reads every weight once per token (a
/// matrix-vector product, bound by memory bandwidth, not arithmetic), so 8-bit weights make
/// each token cheaper; the encoder multiplies whole matrices and stays in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderWeights {
    /// As stored, widened to f32.
    F32,
    /// GGML's Q8_0 (blocks of 32 weights with one scale): a quarter of the bytes.
    Q8,
}

/// A linear layer in f32, or quantized with an f32 bias.
enum Dense {
    F32(Linear),
    Q8(QMatMul, Tensor),
}

impl Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Dense::F32(l) => l.forward(x),
            Dense::Q8(w, b) => w.forward(x)?.broadcast_add(b),
        }
    }

    fn with(linear: Linear, weights: DecoderWeights) -> candle_core::Result<Dense> {
        Ok(match weights {
            DecoderWeights::F32 => Dense::F32(linear),
            DecoderWeights::Q8 => {
                let bias = match linear.bias() {
                    Some(b) => b.clone(),
                    None => Tensor::zeros(
                        linear.weight().dim(0)?,
                        candle_core::DType::F32,
                        &Device::Cpu,
                    )?,
                };
                // `quantize` reads the tensor's whole backing storage, so a narrowed view
                // (a third of a fused projection) is copied out first.
                let w = linear.weight();
                let owned =
                    Tensor::from_vec(w.flatten_all()?.to_vec1::<f32>()?, w.shape(), &Device::Cpu)?;
                let q = QTensor::quantize(&owned, GgmlDType::Q8_0)?;
                Dense::Q8(QMatMul::from_qtensor(q)?, bias)
            }
        })
    }
}

struct Attention {
    q: Dense,
    k: Dense,
    v: Dense,
    out: Dense,
    heads: usize,
}

impl Attention {
    fn heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        x.reshape((b, n, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Attention of `x`'s queries over keys and values already split into heads
    /// (`[b, heads, n, head_dim]`), with an additive `mask` (`[t, n]`).
    fn attend(
        &self,
        x: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (_, _, d) = x.dims3()?;
        let scale = ((d / self.heads) as f64).powf(-0.5);
        let q = (self.heads(&self.q.forward(x)?)? * scale)?;
        let mut w = q.matmul(&k.transpose(2, 3)?.contiguous()?)?;
        if let Some(mask) = mask {
            w = w.broadcast_add(mask)?;
        }
        let w = candle_nn::ops::softmax_last_dim(&w)?;
        let o = w.matmul(v)?.transpose(1, 2)?.flatten_from(2)?;
        self.out.forward(&o)
    }

    fn keys_values(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.heads(&self.k.forward(x)?)?,
            self.heads(&self.v.forward(x)?)?,
        ))
    }
}

struct Mlp {
    ln: LayerNorm,
    fc1: Dense,
    fc2: Dense,
}

impl Mlp {
    fn load(w: &Weights, prefix: &str, weights: DecoderWeights) -> Result<Mlp> {
        Ok(Mlp {
            ln: w.layer_norm(&format!("{prefix}/ffn/layer_norm"))?,
            fc1: w.dense(&format!("{prefix}/ffn/linear_0"), weights)?,
            fc2: w.dense(&format!("{prefix}/ffn/linear_1"), weights)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.fc1.forward(&self.ln.forward(x)?)?.gelu_erf()?;
        x + self.fc2.forward(&h)?
    }
}

fn self_attention(
    w: &Weights,
    prefix: &str,
    heads: usize,
    weights: DecoderWeights,
) -> Result<(LayerNorm, Attention)> {
    let mut qkv = w.split(&format!("{prefix}/self_attention/linear_0"), 3, weights)?;
    let (v, k, q) = (
        qkv.pop().ok_or("qkv")?,
        qkv.pop().ok_or("qkv")?,
        qkv.pop().ok_or("qkv")?,
    );
    Ok((
        w.layer_norm(&format!("{prefix}/self_attention/layer_norm"))?,
        Attention {
            q,
            k,
            v,
            out: w.dense(&format!("{prefix}/self_attention/linear_1"), weights)?,
            heads,
        },
    ))
}

struct EncoderLayer {
    ln: LayerNorm,
    attn: Attention,
    mlp: Mlp,
}

struct DecoderLayer {
    ln: LayerNorm,
    attn: Attention,
    cross_ln: LayerNorm,
    cross: Attention,
    mlp: Mlp,
}

/// Whisper, loaded.
pub(crate) struct Whisper {
    conv1: Conv1d,
    conv2: Conv1d,
    encoder_positions: Tensor,
    encoder: Vec<EncoderLayer>,
    encoder_ln: LayerNorm,
    embeddings: Tensor,
    /// The (tied) output projection: the embeddings, as the decoder's weights are held.
    logits: Dense,
    decoder_positions: Tensor,
    decoder: Vec<DecoderLayer>,
    decoder_ln: LayerNorm,
    /// Frames of audio context the encoder was trained on (1500 after the stride-2 conv).
    pub(crate) max_source_positions: usize,
    /// Tokens the decoder can hold.
    pub(crate) max_target_positions: usize,
}

/// What one utterance's decoding keeps between steps: the cross-attention keys and values of
/// the encoder output, and each decoder layer's self-attention cache.
pub(crate) struct Decoding {
    cross: Vec<(Tensor, Tensor)>,
    cache: Vec<Option<(Tensor, Tensor)>>,
    length: usize,
    /// Hypotheses decoded side by side (the batch of the self-attention cache).
    beams: usize,
}

impl Whisper {
    pub(crate) fn load(
        vars: HashMap<String, Variable>,
        weights: DecoderWeights,
    ) -> Result<Whisper> {
        let w = Weights { vars };
        let count = |side: &str| {
            (0..)
                .take_while(|i| {
                    w.vars
                        .contains_key(&format!("{side}/layer_{i}/ffn/linear_0/weight"))
                })
                .count()
        };
        let (enc_layers, dec_layers) = (count("encoder"), count("decoder"));
        if enc_layers == 0 || dec_layers == 0 {
            return Err("model.bin is not a Whisper model (no encoder or decoder layers)".into());
        }
        let enc_heads = w.scalar("encoder/num_heads")?;
        let dec_heads = w.scalar("decoder/num_heads")?;
        let conv = |stride| Conv1dConfig {
            padding: 1,
            stride,
            dilation: 1,
            groups: 1,
            cudnn_fwd_algo: None,
        };
        let encoder = (0..enc_layers)
            .map(|i| {
                let p = format!("encoder/layer_{i}");
                let (ln, attn) = self_attention(&w, &p, enc_heads, DecoderWeights::F32)?;
                Ok(EncoderLayer {
                    ln,
                    attn,
                    mlp: Mlp::load(&w, &p, DecoderWeights::F32)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..dec_layers)
            .map(|i| {
                let p = format!("decoder/layer_{i}");
                let (ln, attn) = self_attention(&w, &p, dec_heads, weights)?;
                // The cross-attention keys and values are computed once per utterance over
                // the whole encoder output: a matrix product, kept in f32.
                let mut kv = w.split(&format!("{p}/attention/linear_1"), 2, DecoderWeights::F32)?;
                let (v, k) = (kv.pop().ok_or("kv")?, kv.pop().ok_or("kv")?);
                Ok(DecoderLayer {
                    ln,
                    attn,
                    cross_ln: w.layer_norm(&format!("{p}/attention/layer_norm"))?,
                    cross: Attention {
                        q: w.dense(&format!("{p}/attention/linear_0"), weights)?,
                        k,
                        v,
                        out: w.dense(&format!("{p}/attention/linear_2"), weights)?,
                        heads: dec_heads,
                    },
                    mlp: Mlp::load(&w, &p, weights)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embeddings = w.get("decoder/embeddings/weight")?;
        let logits = Dense::with(Linear::new(embeddings.clone(), None), weights).map_err(err)?;
        let encoder_positions = w.get("encoder/position_encodings/encodings")?;
        let decoder_positions = w.get("decoder/position_encodings/encodings")?;
        Ok(Whisper {
            conv1: Conv1d::new(
                w.get("encoder/conv1/weight")?,
                Some(w.get("encoder/conv1/bias")?),
                conv(1),
            ),
            conv2: Conv1d::new(
                w.get("encoder/conv2/weight")?,
                Some(w.get("encoder/conv2/bias")?),
                conv(2),
            ),
            max_source_positions: encoder_positions.dim(0).map_err(err)?,
            max_target_positions: decoder_positions.dim(0).map_err(err)?,
            encoder_positions,
            encoder,
            encoder_ln: w.layer_norm("encoder/layer_norm")?,
            embeddings,
            logits,
            decoder_positions,
            decoder,
            decoder_ln: w.layer_norm("decoder/layer_norm")?,
        })
    }

    /// Vocabulary size.
    pub(crate) fn vocab_size(&self) -> usize {
        self.embeddings.dims().first().copied().unwrap_or(0)
    }

    /// Encode log-mel features (`[80, frames]`, row-major; `frames` even and at most 3000)
    /// and prepare a decoding over them.
    pub(crate) fn encode(&self, mel: Vec<f32>, frames: usize) -> Result<Decoding> {
        let run = || -> candle_core::Result<Decoding> {
            let x = Tensor::from_vec(mel, (1, crate::mel::N_MELS, frames), &Device::Cpu)?;
            let x = self.conv1.forward(&x)?.gelu_erf()?;
            let x = self.conv2.forward(&x)?.gelu_erf()?;
            let x = x.transpose(1, 2)?;
            let n = x.dim(1)?;
            let mut x = x.broadcast_add(&self.encoder_positions.narrow(0, 0, n)?)?;
            for layer in &self.encoder {
                let h = layer.ln.forward(&x)?;
                let (k, v) = layer.attn.keys_values(&h)?;
                x = (&x + layer.attn.attend(&h, &k, &v, None)?)?;
                x = layer.mlp.forward(&x)?;
            }
            let xa = self.encoder_ln.forward(&x)?;
            let cross = self
                .decoder
                .iter()
                .map(|l| l.cross.keys_values(&xa))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(Decoding {
                cross,
                cache: self.decoder.iter().map(|_| None).collect(),
                length: 0,
                beams: 1,
            })
        };
        if frames == 0 || !frames.is_multiple_of(2) || frames / 2 > self.max_source_positions {
            return Err(format!("{frames} frames: need an even count up to 3000"));
        }
        run().map_err(err)
    }

    /// Feed `tokens` (the prompt, or the last token) to a decoding of one hypothesis and
    /// return the logits for the next one.
    pub(crate) fn step(&self, d: &mut Decoding, tokens: &[u32]) -> Result<Vec<f32>> {
        if d.beams != 1 {
            return Err(format!("step on {} hypotheses: use step_beams", d.beams));
        }
        let t = tokens.len();
        let ids = Tensor::from_vec(tokens.to_vec(), (1, t), &Device::Cpu).map_err(err)?;
        let mut logits = self.forward(d, &ids)?;
        logits.pop().ok_or_else(|| "no logits".into())
    }

    /// Feed each hypothesis of a beam its next token (`tokens[i]` to hypothesis `i`, as
    /// [`Whisper::select`] last arranged them) and return each one's logits for the token
    /// after it. The hypotheses are one batch: the weights are read once for all of them.
    pub(crate) fn step_beams(&self, d: &mut Decoding, tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        if tokens.len() != d.beams {
            return Err(format!(
                "{} tokens for {} hypotheses",
                tokens.len(),
                d.beams
            ));
        }
        let ids =
            Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), &Device::Cpu).map_err(err)?;
        self.forward(d, &ids)
    }

    /// Make the decoding's hypotheses `parents`: hypothesis `i` continues from what
    /// hypothesis `parents[i]` was (the first step of a beam makes one into several).
    pub(crate) fn select(&self, d: &mut Decoding, parents: &[u32]) -> Result<()> {
        if parents.is_empty() || parents.iter().any(|&p| p as usize >= d.beams) {
            return Err(format!("parents {parents:?} of {} hypotheses", d.beams));
        }
        if d.beams == 1 && parents.len() == 1 {
            return Ok(());
        }
        let mut run = || -> candle_core::Result<()> {
            let idx = Tensor::from_vec(parents.to_vec(), parents.len(), &Device::Cpu)?;
            for c in d.cache.iter_mut() {
                if let Some((k, v)) = c.take() {
                    *c = Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?));
                }
            }
            Ok(())
        };
        run().map_err(err)?;
        d.beams = parents.len();
        Ok(())
    }

    /// The decoder over `ids` (`[hypotheses, new tokens]`: one hypothesis with several
    /// tokens, or several with one each): each hypothesis's logits after its last token.
    fn forward(&self, d: &mut Decoding, ids: &Tensor) -> Result<Vec<Vec<f32>>> {
        let (b, t) = ids.dims2().map_err(err)?;
        if b > 1 && t > 1 {
            return Err("several hypotheses take one token each".into());
        }
        if d.length + t > self.max_target_positions {
            return Err("the decoder is full".into());
        }
        let mut run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let d_model = self.embeddings.dim(1)?;
            let emb = self
                .embeddings
                .embedding(&ids.flatten_all()?)?
                .reshape((b, t, d_model))?;
            let pos = self.decoder_positions.narrow(0, d.length, t)?;
            let mut x = emb.broadcast_add(&pos)?;
            // Within the new tokens, each sees only itself and those before it.
            let mask = (t > 1)
                .then(|| {
                    let past = d.length;
                    let m: Vec<f32> =
                        (0..t)
                            .flat_map(|i| {
                                (0..past + t).map(move |j| {
                                    if j > past + i { f32::NEG_INFINITY } else { 0.0 }
                                })
                            })
                            .collect();
                    Tensor::from_vec(m, (t, past + t), &Device::Cpu)
                })
                .transpose()?;
            for (i, layer) in self.decoder.iter().enumerate() {
                let h = layer.ln.forward(&x)?;
                let (k, v) = layer.attn.keys_values(&h)?;
                let (k, v) = match d.cache[i].take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                x = (&x + layer.attn.attend(&h, &k, &v, mask.as_ref())?)?;
                d.cache[i] = Some((k, v));
                // Every hypothesis attends over the same audio: as the queries of one batch
                // row, against the encoder's keys and values held once.
                let h = layer.cross_ln.forward(&x)?.reshape((1, b * t, d_model))?;
                let (ck, cv) = &d.cross[i];
                let c = layer
                    .cross
                    .attend(&h, ck, cv, None)?
                    .reshape((b, t, d_model))?;
                x = (&x + c)?;
                x = layer.mlp.forward(&x)?;
            }
            let last = self
                .decoder_ln
                .forward(&x.narrow(1, t - 1, 1)?)?
                .reshape((b, d_model))?;
            let logits = match &self.logits {
                // [vocab, d] × [d, b]: the embeddings as they are stored, no transpose.
                Dense::F32(l) => l.weight().matmul(&last.t()?.contiguous()?)?.t()?,
                q => q.forward(&last)?,
            };
            logits.contiguous()?.to_vec2::<f32>()
        };
        let logits = run().map_err(err)?;
        d.length += t;
        Ok(logits)
    }
}
