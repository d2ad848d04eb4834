//! `MiniLmEmbedder` against reference token ids and embeddings computed by an independent Python
//! implementation (`fixtures/minilm_reference.py`), with the real all-MiniLM-L6-v2 files.

use serde_json::Value;
use strata_l3::{Embedder, MiniLmEmbedder};

mod common;

fn model() -> &'static MiniLmEmbedder {
    common::minilm()
}

struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn reference() -> (usize, Vec<Case>) {
    let json: Value = serde_json::from_str(include_str!("fixtures/minilm_reference.json"))
        .unwrap_or_else(|e| panic!("fixture: {e}"));
    let max_tokens = json["max_tokens"].as_u64().unwrap_or_else(|| panic!("fixture: max_tokens")) as usize;
    let cases = json["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("fixture: cases"))
        .iter()
        .map(|case| {
            let numbers = |key: &str| -> Vec<f64> {
                case[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("fixture: {key}"))
                    .iter()
                    .filter_map(Value::as_f64)
                    .collect()
            };
            Case {
                text: case["text"].as_str().unwrap_or_else(|| panic!("fixture: text")).to_owned(),
                ids: numbers("ids").into_iter().map(|v| v as u32).collect(),
                embedding: numbers("embedding").into_iter().map(|v| v as f32).collect(),
            }
        })
        .collect();
    (max_tokens, cases)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn token_ids_equal_the_reference_tokenizer() {
    let (max_tokens, cases) = reference();
    assert_eq!(model().max_tokens(), max_tokens);
    assert!(cases.len() >= 12);
    assert!(cases.iter().any(|c| c.ids.len() == max_tokens), "the fixture has a truncated text");
    for case in &cases {
        assert_eq!(model().token_ids(&case.text), case.ids, "token ids of {:?}", case.text);
    }
}

#[test]
fn embeddings_match_the_reference_forward_pass() {
    let (_, cases) = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let vectors = model().embed_blocking(&texts).unwrap_or_else(|e| panic!("{e}"));
    let mut worst = (f32::INFINITY, "");
    for (case, vector) in cases.iter().zip(&vectors) {
        assert_eq!(vector.len(), 384);
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{:?} is not a unit vector: {norm}", case.text);
        let similarity = cosine(vector, &case.embedding);
        println!("cosine {similarity:.7}  {:?}", case.text.chars().take(50).collect::<String>());
        if similarity < worst.0 {
            worst = (similarity, &case.text);
        }
    }
    println!("lowest cosine with the reference: {:.7} ({:?})", worst.0, worst.1);
    assert!(worst.0 >= 0.999, "cosine {} with the reference for {:?}", worst.0, worst.1);
}

#[test]
fn a_batch_gives_the_vectors_of_its_texts_one_by_one() {
    let (_, cases) = reference();
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap_or_else(|e| panic!("{e}"));
    let batch = runtime.block_on(model().embed(&texts)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batch.len(), texts.len());
    for (text, vector) in texts.iter().zip(&batch) {
        let alone = runtime.block_on(model().embed(&[*text])).unwrap_or_else(|e| panic!("{e}"));
        // Texts do not share a matrix row in the batch, so the numbers are the same bits.
        assert_eq!(&alone[0], vector, "{text:?} alone and in a batch");
    }
    assert_eq!(model().dimension(), 384);
}

#[test]
fn paraphrases_are_closer_than_other_questions() {
    let texts = [
        "How many orders did Alice place?",
        "number of orders placed by Alice",
        "What is the total revenue of last month?",
        "Which products are out of stock?",
    ];
    let v = model().embed_blocking(&texts).unwrap_or_else(|e| panic!("{e}"));
    let same = cosine(&v[0], &v[1]);
    for other in &v[2..] {
        assert!(same > cosine(&v[0], other) + 0.2, "paraphrase {same}, other {}", cosine(&v[0], other));
    }
}
