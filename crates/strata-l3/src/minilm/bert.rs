//! The BERT encoder of a sentence-transformers model: its weights, read from `model.safetensors`
//! with the shapes `config.json` gives, and the forward pass with mean pooling.

use serde_json::Value;

use super::math::{add_bias, gelu, layer_norm, matmul_transposed, softmax};
use super::safetensors::SafeTensors;
use crate::Error;

/// The parts of `config.json` the forward pass needs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) layers: usize,
    pub(crate) intermediate: usize,
    pub(crate) vocab: usize,
    pub(crate) positions: usize,
    pub(crate) token_types: usize,
    pub(crate) eps: f32,
}

impl Config {
    /// Reads and checks `config.json`: a BERT with absolute positions and the exact GELU.
    pub(crate) fn from_json(json: &Value) -> Result<Self, Error> {
        let bad = |what: String| Error::config(format!("config.json: {what}"));
        let size = |key: &str| {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| bad(format!("`{key}` is missing or not a positive integer")))
        };
        let text =
            |key: &str, default: &'static str| json.get(key).and_then(Value::as_str).unwrap_or(default);
        if text("model_type", "bert") != "bert" {
            return Err(bad(format!("model type `{}` is not supported (bert only)", text("model_type", ""))));
        }
        if text("hidden_act", "gelu") != "gelu" {
            return Err(bad(format!("activation `{}` is not supported (gelu only)", text("hidden_act", ""))));
        }
        if text("position_embedding_type", "absolute") != "absolute" {
            return Err(bad("only absolute position embeddings are supported".to_owned()));
        }
        let eps = json
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .filter(|e| e.is_finite() && *e > 0.0)
            .ok_or_else(|| bad("`layer_norm_eps` is missing or not a positive number".to_owned()))?;
        let config = Self {
            hidden: size("hidden_size")?,
            heads: size("num_attention_heads")?,
            layers: size("num_hidden_layers")?,
            intermediate: size("intermediate_size")?,
            vocab: size("vocab_size")?,
            positions: size("max_position_embeddings")?,
            token_types: size("type_vocab_size")?,
            eps: eps as f32,
        };
        if !config.hidden.is_multiple_of(config.heads) {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden, config.heads
            )));
        }
        Ok(config)
    }
}

struct Linear {
    /// `[outputs, inputs]`, row-major, as PyTorch stores it.
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Linear {
    fn load(st: &SafeTensors, name: &str, inputs: usize, outputs: usize) -> Result<Self, Error> {
        Ok(Self {
            weight: st.f32_tensor(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: st.f32_tensor(&format!("{name}.bias"), &[outputs])?,
        })
    }

    /// The query, key and value projections as one layer of three times the outputs.
    fn load_fused(st: &SafeTensors, names: [&str; 3], width: usize) -> Result<Self, Error> {
        let mut fused =
            Self { weight: Vec::with_capacity(3 * width * width), bias: Vec::with_capacity(3 * width) };
        for name in names {
            let part = Self::load(st, name, width, width)?;
            fused.weight.extend_from_slice(&part.weight);
            fused.bias.extend_from_slice(&part.bias);
        }
        Ok(fused)
    }

    /// `x` (rows of the input width) through this layer.
    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let inputs = self.weight.len() / self.bias.len();
        let mut out = vec![0.0; x.len() / inputs * self.bias.len()];
        matmul_transposed(x, &self.weight, inputs, &mut out);
        add_bias(&mut out, &self.bias);
        out
    }
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    fn load(st: &SafeTensors, name: &str, width: usize) -> Result<Self, Error> {
        Ok(Self {
            weight: st.f32_tensor(&format!("{name}.weight"), &[width])?,
            bias: st.f32_tensor(&format!("{name}.bias"), &[width])?,
        })
    }
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// The encoder's weights: about 90 MB of `f32` for all-MiniLM-L6-v2.
pub(crate) struct Bert {
    config: Config,
    word: Vec<f32>,
    position: Vec<f32>,
    /// The embedding of token type 0: every text is a single segment.
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
}

impl Bert {
    /// The weights named as `BertModel` saves them (an optional `bert.` prefix is accepted).
    pub(crate) fn load(st: &SafeTensors, config: Config) -> Result<Self, Error> {
        let prefix = if st.has("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let name = |n: &str| format!("{prefix}{n}");
        let h = config.hidden;
        let mut token_type =
            st.f32_tensor(&name("embeddings.token_type_embeddings.weight"), &[config.token_types, h])?;
        token_type.truncate(h);
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let p = |n: &str| name(&format!("encoder.layer.{i}.{n}"));
            layers.push(Layer {
                qkv: Linear::load_fused(
                    st,
                    [&p("attention.self.query"), &p("attention.self.key"), &p("attention.self.value")],
                    h,
                )?,
                attention_out: Linear::load(st, &p("attention.output.dense"), h, h)?,
                attention_norm: Norm::load(st, &p("attention.output.LayerNorm"), h)?,
                up: Linear::load(st, &p("intermediate.dense"), h, config.intermediate)?,
                down: Linear::load(st, &p("output.dense"), config.intermediate, h)?,
                out_norm: Norm::load(st, &p("output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            word: st.f32_tensor(&name("embeddings.word_embeddings.weight"), &[config.vocab, h])?,
            position: st
                .f32_tensor(&name("embeddings.position_embeddings.weight"), &[config.positions, h])?,
            token_type,
            embedding_norm: Norm::load(st, &name("embeddings.LayerNorm"), h)?,
            layers,
            config,
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The mean of the last hidden states of each text's tokens, not yet normalized.
    ///
    /// All texts run as one batch: their token rows are stacked, so every linear layer is one
    /// matrix product over all of them, and attention stays within each text (what a padded
    /// batch with an attention mask computes, without the padding). Ids must be below the
    /// vocabulary size and each text no longer than the position embeddings.
    pub(crate) fn pooled(&self, texts: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let h = self.config.hidden;
        let rows: usize = texts.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(rows * h);
        for ids in texts {
            for (pos, &id) in ids.iter().enumerate() {
                let word = &self.word[id as usize * h..(id as usize + 1) * h];
                let position = &self.position[pos * h..(pos + 1) * h];
                x.extend(word.iter().zip(position).zip(&self.token_type).map(|((w, p), t)| w + p + t));
            }
        }
        let norm = &self.embedding_norm;
        layer_norm(&mut x, &norm.weight, &norm.bias, self.config.eps);

        let lens: Vec<usize> = texts.iter().map(Vec::len).collect();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x);
            let context = self.attention(&qkv, &lens);
            let mut attended = layer.attention_out.forward(&context);
            residual_norm(&mut attended, &x, &layer.attention_norm, self.config.eps);
            let mut up = layer.up.forward(&attended);
            gelu(&mut up);
            let mut down = layer.down.forward(&up);
            residual_norm(&mut down, &attended, &layer.out_norm, self.config.eps);
            x = down;
        }

        let mut pooled = Vec::with_capacity(texts.len());
        let mut start = 0;
        for &len in &lens {
            let mut mean = vec![0.0f32; h];
            for row in x[start * h..(start + len) * h].chunks_exact(h) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            let inv = 1.0 / len.max(1) as f32;
            mean.iter_mut().for_each(|m| *m *= inv);
            pooled.push(mean);
            start += len;
        }
        pooled
    }

    /// Multi-head self-attention within each text of `lens` tokens; `qkv` holds each token's
    /// query, key and value rows side by side.
    fn attention(&self, qkv: &[f32], lens: &[usize]) -> Vec<f32> {
        let h = self.config.hidden;
        let heads = self.config.heads;
        let d = h / heads;
        let scale = 1.0 / (d as f32).sqrt();
        let rows = qkv.len() / (3 * h);
        let mut context = vec![0.0f32; rows * h];
        let mut start = 0;
        for &len in lens.iter().filter(|len| **len > 0) {
            let (mut q, mut k, mut vt) = (vec![0.0; len * d], vec![0.0; len * d], vec![0.0; d * len]);
            let mut scores = vec![0.0; len * len];
            let mut out = vec![0.0; len * d];
            for head in 0..heads {
                // This head's queries and keys as rows, its values transposed (one row per
                // dimension), so both products below are dot products of contiguous rows.
                for t in 0..len {
                    let row = &qkv[(start + t) * 3 * h..(start + t + 1) * 3 * h];
                    q[t * d..(t + 1) * d].copy_from_slice(&row[head * d..(head + 1) * d]);
                    k[t * d..(t + 1) * d].copy_from_slice(&row[h + head * d..h + (head + 1) * d]);
                    for (i, v) in row[2 * h + head * d..2 * h + (head + 1) * d].iter().enumerate() {
                        vt[i * len + t] = *v;
                    }
                }
                matmul_transposed(&q, &k, d, &mut scores);
                for row in scores.chunks_exact_mut(len) {
                    row.iter_mut().for_each(|s| *s *= scale);
                    softmax(row);
                }
                matmul_transposed(&scores, &vt, len, &mut out);
                for t in 0..len {
                    context[(start + t) * h + head * d..(start + t) * h + (head + 1) * d]
                        .copy_from_slice(&out[t * d..(t + 1) * d]);
                }
            }
            start += len;
        }
        context
    }
}

/// `x = LayerNorm(x + residual)`.
fn residual_norm(x: &mut [f32], residual: &[f32], norm: &Norm, eps: f32) {
    for (v, r) in x.iter_mut().zip(residual) {
        *v += r;
    }
    layer_norm(x, &norm.weight, &norm.bias, eps);
}
