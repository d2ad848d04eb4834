//! BERT's WordPiece tokenizer, configured from a Hugging Face `tokenizer.json`: the same ids as
//! the `tokenizers` library for its `BertNormalizer`, `BertPreTokenizer` and `WordPiece` model.

use std::collections::HashMap;

use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

use crate::Error;

/// Turns a text into the token ids the model reads: `[CLS] pieces... [SEP]`.
pub(crate) struct WordPiece {
    vocab: HashMap<String, u32>,
    unk: u32,
    cls: u32,
    sep: u32,
    prefix: String,
    max_word_chars: usize,
    normalizer: Normalizer,
    /// Special tokens matched verbatim in the raw text (`[MASK]` typed by a user is the mask
    /// token, as in `tokenizers`), longest first.
    added: Vec<(String, u32)>,
    /// The most ids of one text, `[CLS]` and `[SEP]` included.
    max_tokens: usize,
}

/// The `BertNormalizer` options of `tokenizer.json`.
#[derive(Clone, Copy)]
struct Normalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::config(format!("tokenizer.json: {what}"))
}

fn flag(v: &Value, key: &str, default: bool) -> Result<bool, Error> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("normalizer field `{key}` is not a boolean"))),
    }
}

impl WordPiece {
    /// Reads the vocabulary and options from a parsed `tokenizer.json`; only what a BERT
    /// tokenizer uses is accepted, anything else is a configuration error rather than ids the
    /// model was not trained on.
    pub(crate) fn from_json(json: &Value, max_tokens: usize) -> Result<Self, Error> {
        let model = json.get("model").ok_or_else(|| bad("no `model`"))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "WordPiece" {
            return Err(bad(format!("model type `{kind}` is not supported (WordPiece only)")));
        }
        let vocab: HashMap<String, u32> = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no `model.vocab` object"))?
            .iter()
            .map(|(piece, id)| Some((piece.clone(), u32::try_from(id.as_u64()?).ok()?)))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a vocabulary id is not a 32-bit number"))?;
        let id_of = |token: &str| {
            vocab.get(token).copied().ok_or_else(|| bad(format!("`{token}` is not in the vocabulary")))
        };
        let unk_token = model.get("unk_token").and_then(Value::as_str).unwrap_or("[UNK]");
        let unk = id_of(unk_token)?;
        let (cls, sep) = (id_of("[CLS]")?, id_of("[SEP]")?);
        let prefix =
            model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("##").to_owned();
        let max_word_chars = model
            .get("max_input_chars_per_word")
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(100);

        let normalizer = match json.get("normalizer") {
            Some(n) if n.get("type").and_then(Value::as_str) == Some("BertNormalizer") => {
                let lowercase = flag(n, "lowercase", true)?;
                Normalizer {
                    clean_text: flag(n, "clean_text", true)?,
                    handle_chinese_chars: flag(n, "handle_chinese_chars", true)?,
                    // `tokenizers` strips accents when lowercasing unless told otherwise.
                    strip_accents: flag(n, "strip_accents", lowercase)?,
                    lowercase,
                }
            }
            Some(Value::Null) | None => Normalizer {
                clean_text: false,
                handle_chinese_chars: false,
                strip_accents: false,
                lowercase: false,
            },
            Some(other) => {
                let kind = other.get("type").and_then(Value::as_str).unwrap_or("?");
                return Err(bad(format!("normalizer `{kind}` is not supported (BertNormalizer only)")));
            }
        };
        let pre = json.get("pre_tokenizer").and_then(|p| p.get("type")).and_then(Value::as_str);
        if pre != Some("BertPreTokenizer") {
            return Err(bad(format!(
                "pre-tokenizer `{}` is not supported (BertPreTokenizer only)",
                pre.unwrap_or("none")
            )));
        }

        let mut added = Vec::new();
        for token in json.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
            let content = token.get("content").and_then(Value::as_str).unwrap_or("");
            let id = token.get("id").and_then(Value::as_u64).and_then(|v| u32::try_from(v).ok());
            let plain = ["single_word", "lstrip", "rstrip", "normalized"]
                .iter()
                .all(|key| !token.get(key).and_then(Value::as_bool).unwrap_or(false));
            match id {
                Some(id) if !content.is_empty() && plain => added.push((content.to_owned(), id)),
                _ => return Err(bad(format!("added token `{content}` uses options that are not supported"))),
            }
        }
        added.sort_by_key(|(content, _)| std::cmp::Reverse(content.len()));

        Ok(Self {
            vocab,
            unk,
            cls,
            sep,
            prefix,
            max_word_chars,
            normalizer,
            added,
            max_tokens: max_tokens.max(2),
        })
    }

    /// The largest id this tokenizer can produce.
    pub(crate) fn max_id(&self) -> u32 {
        let added = self.added.iter().map(|(_, id)| *id);
        self.vocab.values().copied().chain(added).max().unwrap_or(0)
    }

    /// The ids of `text`: `[CLS]`, its pieces (the first `max_tokens - 2` of them), `[SEP]`.
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        let limit = self.max_tokens - 2;
        let mut ids = vec![self.cls];
        let mut rest = text;
        while !rest.is_empty() && ids.len() <= limit {
            let (before, special) = match self.find_added(rest) {
                Some((at, content, id)) => {
                    let before = &rest[..at];
                    rest = &rest[at + content.len()..];
                    (before, Some(id))
                }
                None => (std::mem::take(&mut rest), None),
            };
            self.encode_plain(before, &mut ids, limit + 1);
            if let Some(id) = special {
                ids.push(id);
            }
        }
        ids.truncate(limit + 1);
        ids.push(self.sep);
        ids
    }

    /// The leftmost added token in `text` (the longest one at that position).
    fn find_added(&self, text: &str) -> Option<(usize, &str, u32)> {
        let mut best: Option<(usize, &str, u32)> = None;
        for (content, id) in &self.added {
            if let Some(at) = text.find(content.as_str()) {
                // `added` is longest first, so an equal position keeps the longer token.
                if best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, content, *id));
                }
            }
        }
        best
    }

    /// Appends the pieces of `text` (which holds no added token) while `ids` is shorter than
    /// `cap`.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>, cap: usize) {
        let normalized = self.normalizer.apply(text);
        for word in pre_tokenize(&normalized) {
            if ids.len() >= cap {
                return;
            }
            self.word_pieces(word, ids);
        }
    }

    /// Greedy longest-match-first WordPiece: `[UNK]` for a word longer than the limit or one
    /// that some position cannot continue.
    fn word_pieces(&self, word: &str, ids: &mut Vec<u32>) {
        if word.chars().count() > self.max_word_chars {
            ids.push(self.unk);
            return;
        }
        let first = ids.len();
        let mut candidate = String::with_capacity(self.prefix.len() + word.len());
        let mut start = 0;
        while start < word.len() {
            let mut found = None;
            // Every char boundary after `start`, longest first.
            let mut ends: Vec<usize> =
                word[start..].char_indices().map(|(i, c)| start + i + c.len_utf8()).collect();
            ends.reverse();
            for end in ends {
                candidate.clear();
                if start > 0 {
                    candidate.push_str(&self.prefix);
                }
                candidate.push_str(&word[start..end]);
                if let Some(&id) = self.vocab.get(&candidate) {
                    found = Some((id, end));
                    break;
                }
            }
            match found {
                Some((id, end)) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

impl Normalizer {
    /// `BertNormalizer`, in its order: clean, space out CJK characters, strip accents,
    /// lowercase.
    fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    out.push(' ');
                    continue;
                }
            }
            if self.handle_chinese_chars && is_chinese_char(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out.nfd().filter(|c| !c.is_mark_nonspacing()).collect();
        }
        if self.lowercase {
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }
}

/// `BertPreTokenizer`: split on whitespace (dropped), then every punctuation character is a
/// word of its own.
fn pre_tokenize(text: &str) -> impl Iterator<Item = &str> {
    text.split(char::is_whitespace).filter(|w| !w.is_empty()).flat_map(|word| {
        let mut pieces = Vec::new();
        let mut start = 0;
        for (i, c) in word.char_indices() {
            if is_punctuation(c) {
                if start < i {
                    pieces.push(&word[start..i]);
                }
                pieces.push(&word[i..i + c.len_utf8()]);
                start = i + c.len_utf8();
            }
        }
        if start < word.len() {
            pieces.push(&word[start..]);
        }
        pieces
    })
}

/// Tab, newline and carriage return count as whitespace, not as control characters.
fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The CJK Unified Ideographs blocks (not Hangul, Hiragana or Katakana, which are spaced).
fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tokenizer(max_tokens: usize) -> WordPiece {
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "how", "many", "order", "##s", "?", "un", "##aff",
            "##able", "cafe", "東", "京", ",",
        ];
        let vocab: serde_json::Map<String, Value> =
            vocab.iter().enumerate().map(|(i, t)| ((*t).to_owned(), json!(i))).collect();
        let config = json!({
            "added_tokens": [
                {"id": 4, "content": "[MASK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 10, "vocab": vocab}
        });
        WordPiece::from_json(&config, max_tokens).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn splits_normalizes_and_matches_longest_pieces_first() {
        let t = tokenizer(512);
        assert_eq!(t.encode("How many orders?"), [2, 5, 6, 7, 8, 9, 3]);
        assert_eq!(t.encode("unaffable"), [2, 10, 11, 12, 3]);
        // Accents stripped and lowercased; a control character dropped; CJK characters apart.
        assert_eq!(t.encode("CAFÉ\u{7}東京"), [2, 13, 14, 15, 3]);
        // A word with no full split, and one over the length limit, are one [UNK] each.
        assert_eq!(t.encode("orderx howhowhowhow"), [2, 1, 1, 3]);
        // Special tokens in the raw text are themselves.
        assert_eq!(t.encode("how[MASK]many"), [2, 5, 4, 6, 3]);
        assert_eq!(t.encode(""), [2, 3]);
        assert_eq!(t.encode(" \t\n"), [2, 3]);
    }

    #[test]
    fn truncates_to_the_limit_with_both_markers() {
        let t = tokenizer(5);
        assert_eq!(t.encode("how many orders , how many"), [2, 5, 6, 7, 3]);
        assert_eq!(t.encode("[MASK] [MASK] [MASK] [MASK]"), [2, 4, 4, 4, 3]);
    }

    #[test]
    fn rejects_tokenizers_of_another_kind() {
        let bpe = json!({"model": {"type": "BPE", "vocab": {}}});
        let err = WordPiece::from_json(&bpe, 256).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("config: tokenizer.json: model type `BPE` is not supported (WordPiece only)")
        );
    }
}
