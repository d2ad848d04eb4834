//! `MiniLmEmbedder`: the all-MiniLM-L6-v2 sentence-embedding model, run in process on the CPU.

mod bert;
mod math;
mod safetensors;
mod tokenizer;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use self::bert::{Bert, Config};
use self::safetensors::SafeTensors;
use self::tokenizer::WordPiece;
use crate::{CosineSimilarity, Embedder, Error};

/// A sentence-embedding model run in process: [all-MiniLM-L6-v2] (a 6-layer BERT with 384
/// dimensions, trained by sentence-transformers on a billion sentence pairs), or another BERT
/// model saved the same way. Unlike [`LocalEmbedder`](crate::LocalEmbedder) it knows synonyms
/// and paraphrases that share few words; unlike [`HttpEmbedder`](crate::HttpEmbedder) it needs no
/// server.
///
/// [`load`](Self::load) reads three files from a directory, and never touches the network:
/// - `config.json`: the BERT shape (layers, width, heads, LayerNorm epsilon);
/// - `tokenizer.json`: the WordPiece vocabulary and normalizer options, tokenized here by a
///   WordPiece implementation that gives the same ids as Hugging Face's `tokenizers`;
/// - `model.safetensors`: the weights (about 90 MB).
///
/// A fourth, `sentence_bert_config.json`, is read when present for the longest input
/// (`max_seq_length`, 256 tokens for all-MiniLM-L6-v2); without it the limit is the model's
/// position embeddings (512). Longer texts are truncated, never refused.
///
/// A vector is the mean of the last hidden states over the text's tokens, L2-normalized, as
/// sentence-transformers computes it. [`Embedder::embed`] runs its texts as one batch on a
/// blocking thread (`tokio::task::spawn_blocking`), so the runtime's workers are never busy with
/// inference; a short question takes a few milliseconds on one core. If the caller stops
/// waiting (the tier's deadline), the batch still runs to its end on that thread.
///
/// Similarities from this model are higher across the board than from the n-gram embedder:
/// unrelated questions about the same tables often score 0.5 to 0.7. Use it with
/// [`MiniLmEmbedder::RECOMMENDED_THRESHOLD`] rather than the tier's default.
///
/// ```no_run
/// use std::sync::Arc;
/// use strata_l3::{MiniLmEmbedder, SemanticTier};
///
/// let model = MiniLmEmbedder::load("/var/lib/strata/all-minilm-l6-v2")?;
/// let tier = SemanticTier::builder()
///     .with_embedder(Arc::new(model))
///     .with_threshold(MiniLmEmbedder::RECOMMENDED_THRESHOLD)
///     .build()?;
/// # Ok::<(), strata_l3::Error>(())
/// ```
///
/// [all-MiniLM-L6-v2]: https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2
#[derive(Clone)]
pub struct MiniLmEmbedder {
    model: Arc<Model>,
}

struct Model {
    tokenizer: WordPiece,
    bert: Bert,
    max_tokens: usize,
}

/// A batch is cut into forward passes of at most this many token rows, which bounds the memory
/// of one pass (about 35 MB of activations for all-MiniLM-L6-v2) whatever the batch size.
const MAX_ROWS_PER_PASS: usize = 2048;

impl MiniLmEmbedder {
    /// The similarity threshold to use with this model:
    /// `SemanticTier::builder().with_threshold(MiniLmEmbedder::RECOMMENDED_THRESHOLD)`.
    pub const RECOMMENDED_THRESHOLD: CosineSimilarity = CosineSimilarity::from_const(0.80);

    /// Loads the model from `dir` (see the type's docs for the files). Every file is checked:
    /// a missing or unreadable file, malformed JSON, an unsupported tokenizer or architecture,
    /// or a tensor of the wrong shape is a [`Config`](crate::ErrorKind::Config) error naming it.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, Error> {
        let dir = dir.as_ref();
        let config = Config::from_json(&read_json(dir, "config.json")?)?;
        let positions = config.positions;
        let max_tokens = match std::fs::read(dir.join("sentence_bert_config.json")) {
            Ok(bytes) => {
                let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::config("sentence_bert_config.json is not valid JSON").with_source(e)
                })?;
                json.get("max_seq_length")
                    .and_then(Value::as_u64)
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|v| *v >= 2)
                    .ok_or_else(|| {
                        Error::config(
                            "sentence_bert_config.json: `max_seq_length` is not an integer of at least 2",
                        )
                    })?
                    .min(positions)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => positions,
            Err(e) => return Err(unreadable(dir, "sentence_bert_config.json", e)),
        };
        let tokenizer = WordPiece::from_json(&read_json(dir, "tokenizer.json")?, max_tokens)?;
        if tokenizer.max_id() >= config.vocab as u32 {
            return Err(Error::config(format!(
                "tokenizer.json has id {} but config.json's vocab_size is {}",
                tokenizer.max_id(),
                config.vocab
            )));
        }
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).map_err(|e| unreadable(dir, "model.safetensors", e))?;
        let weights = SafeTensors::parse(bytes, "model.safetensors")?;
        let bert = Bert::load(&weights, config)?;
        Ok(Self { model: Arc::new(Model { tokenizer, bert, max_tokens }) })
    }

    /// The most tokens of one text, `[CLS]` and `[SEP]` included; the rest of a longer text is
    /// not read.
    pub fn max_tokens(&self) -> usize {
        self.model.max_tokens
    }

    /// The token ids the model reads for `text`: `[CLS]`, its WordPiece ids (truncated to
    /// [`max_tokens`](Self::max_tokens) in all), `[SEP]`.
    pub fn token_ids(&self, text: &str) -> Vec<u32> {
        self.model.tokenizer.encode(text)
    }

    /// Embeds `texts` on the calling thread, as one batch: unit vectors of
    /// [`dimension`](Embedder::dimension) numbers, in the order of `texts`. It blocks for the
    /// whole inference; async code should call [`Embedder::embed`] instead.
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        self.model.embed(texts)
    }
}

impl Model {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut pass: Vec<Vec<u32>> = Vec::new();
        let mut rows = 0;
        for text in texts {
            let ids = self.tokenizer.encode(text);
            if rows + ids.len() > MAX_ROWS_PER_PASS && !pass.is_empty() {
                vectors.extend(self.bert.pooled(&pass));
                pass.clear();
                rows = 0;
            }
            rows += ids.len();
            pass.push(ids);
        }
        if !pass.is_empty() {
            vectors.extend(self.bert.pooled(&pass));
        }
        for vector in &mut vectors {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            // A real model's mean state is never zero, but the index would take a zero vector
            // for a perfect match of everything: fail the call instead (the tier then misses).
            if !(norm.is_finite() && norm > 0.0) {
                return Err(Error::embedder("minilm produced a zero or non-finite vector"));
            }
            vector.iter_mut().for_each(|v| *v /= norm);
        }
        Ok(vectors)
    }
}

fn read_json(dir: &Path, file: &str) -> Result<Value, Error> {
    let bytes = std::fs::read(dir.join(file)).map_err(|e| unreadable(dir, file, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::config(format!("{file} is not valid JSON")).with_source(e))
}

fn unreadable(dir: &Path, file: &str, err: std::io::Error) -> Error {
    Error::config(format!("cannot read model file {}", dir.join(file).display())).with_source(err)
}

impl fmt::Debug for MiniLmEmbedder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = self.model.bert.config();
        f.debug_struct("MiniLmEmbedder")
            .field("dimension", &config.hidden)
            .field("layers", &config.layers)
            .field("heads", &config.heads)
            .field("max_tokens", &self.model.max_tokens)
            .field("vocabulary", &config.vocab)
            .finish()
    }
}

#[async_trait]
impl Embedder for MiniLmEmbedder {
    fn dimension(&self) -> usize {
        self.model.bert.config().hidden
    }

    async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Outside a tokio runtime there is no blocking pool, and no runtime to keep free.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self.model.embed(texts);
        };
        let model = Arc::clone(&self.model);
        let owned: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        runtime
            .spawn_blocking(move || {
                let texts: Vec<&str> = owned.iter().map(String::as_str).collect();
                model.embed(&texts)
            })
            .await
            .map_err(|e| Error::embedder("minilm inference task failed").with_source(e))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strata-minilm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    fn load_err(dir: &Path) -> String {
        match MiniLmEmbedder::load(dir) {
            Ok(e) => panic!("loaded {e:?}"),
            Err(e) => {
                assert_eq!(e.kind(), crate::ErrorKind::Config, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn missing_and_corrupt_files_are_config_errors() {
        let dir = scratch("files");
        assert!(load_err(&dir).starts_with("config: cannot read model file "), "{}", load_err(&dir));
        assert!(load_err(&dir).ends_with("config.json"));

        std::fs::write(dir.join("config.json"), "{not json").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(load_err(&dir), "config: config.json is not valid JSON");

        let config = r#"{"model_type": "bert", "hidden_act": "gelu", "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 1, "intermediate_size": 16, "vocab_size": 8, "max_position_embeddings": 16,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12}"#;
        std::fs::write(dir.join("config.json"), config).unwrap_or_else(|e| panic!("{e}"));
        assert!(load_err(&dir).ends_with("tokenizer.json"));

        let tokenizer = r#"{"normalizer": {"type": "BertNormalizer", "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4}}}"#;
        std::fs::write(dir.join("tokenizer.json"), tokenizer).unwrap_or_else(|e| panic!("{e}"));
        assert!(load_err(&dir).ends_with("model.safetensors"));

        std::fs::write(dir.join("model.safetensors"), b"\x10\0\0\0\0\0\0\0{}")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            load_err(&dir),
            "config: model.safetensors is not a valid safetensors file: header length past the end of the file"
        );
        std::fs::write(dir.join("model.safetensors"), b"\x02\0\0\0\0\0\0\0{}")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            load_err(&dir),
            "config: model.safetensors has no tensor `embeddings.token_type_embeddings.weight`"
        );

        std::fs::write(dir.join("config.json"), config.replace("\"gelu\"", "\"relu\""))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(load_err(&dir), "config: config.json: activation `relu` is not supported (gelu only)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A BERT of width 8 with random weights, in the layout of all-MiniLM-L6-v2's files.
    fn tiny_model(dir: &Path) {
        let config = r#"{"model_type": "bert", "hidden_act": "gelu", "hidden_size": 8, "num_attention_heads": 2,
            "num_hidden_layers": 2, "intermediate_size": 16, "vocab_size": 8, "max_position_embeddings": 16,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12}"#;
        let tokenizer = r###"{"normalizer": {"type": "BertNormalizer", "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]",
                      "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "##b": 6, "?": 7}}}"###;
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![8, 8]),
            ("embeddings.position_embeddings.weight".into(), vec![16, 8]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, 8]),
            ("embeddings.LayerNorm.weight".into(), vec![8]),
            ("embeddings.LayerNorm.bias".into(), vec![8]),
        ];
        for layer in 0..2 {
            for (name, out, inp) in [
                ("attention.self.query", 8, 8),
                ("attention.self.key", 8, 8),
                ("attention.self.value", 8, 8),
                ("attention.output.dense", 8, 8),
                ("intermediate.dense", 16, 8),
                ("output.dense", 8, 16),
            ] {
                shapes.push((format!("encoder.layer.{layer}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("encoder.layer.{layer}.{name}.bias"), vec![out]));
            }
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("encoder.layer.{layer}.{norm}.weight"), vec![8]));
                shapes.push((format!("encoder.layer.{layer}.{norm}.bias"), vec![8]));
            }
        }
        let mut seed = 0x9e37_79b9_u32;
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape) in shapes {
            let count: usize = shape.iter().product();
            let begin = data.len();
            for _ in 0..count {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                let v = (seed % 2001) as f32 / 1000.0 - 1.0;
                data.extend_from_slice(&v.to_le_bytes());
            }
            let entry =
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]});
            header.insert(name, entry);
        }
        let header = Value::Object(header).to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&data);
        for (name, contents) in [("config.json", config.as_bytes()), ("tokenizer.json", tokenizer.as_bytes())]
        {
            std::fs::write(dir.join(name), contents).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(dir.join("model.safetensors"), file).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn a_tiny_model_embeds_batches_like_single_texts() {
        let dir = scratch("tiny");
        tiny_model(&dir);
        let model = MiniLmEmbedder::load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model.dimension(), 8);
        // No sentence_bert_config.json: the limit is the 16 position embeddings.
        assert_eq!(model.max_tokens(), 16);
        assert_eq!(model.token_ids("A ab?"), [2, 4, 4, 6, 7, 3]);
        let long = "a b ".repeat(40);
        assert_eq!(model.token_ids(&long).len(), 16);

        let texts = ["a", "ab ab?", "", &long, "b a"];
        let batch = model.embed_blocking(&texts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.len(), texts.len());
        for (text, vector) in texts.iter().zip(&batch) {
            assert_eq!(vector.len(), 8);
            let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{text:?}: norm {norm}");
            let alone = model.embed_blocking(&[*text]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&alone[0], vector, "{text:?} alone and in a batch");
        }
        assert_ne!(batch[0], batch[4], "different texts, different vectors");

        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
        let via_trait = runtime.block_on(model.embed(&texts)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(via_trait, batch);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
