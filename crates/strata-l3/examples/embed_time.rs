//! Times `MiniLmEmbedder::embed_blocking` on one short question, for profiling:
//! `embed_time MODEL_DIR [ROUNDS]`. Not a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: embed_time MODEL_DIR [ROUNDS]");
    let rounds: usize = args.next().map_or(200, |r| r.parse().expect("rounds"));
    let model = strata_l3::MiniLmEmbedder::load(std::path::Path::new(&dir)).expect("model");
    let text = "how many orders did customers in region north place last month";
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        std::hint::black_box(model.embed_blocking(&[text]).expect("embed"));
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "p50 {:.2?} p99 {:.2?} ({} tokens)",
        times[rounds / 2],
        times[rounds * 99 / 100],
        model.token_ids(text).len()
    );
}
