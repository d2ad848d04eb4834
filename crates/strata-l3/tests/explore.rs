//! Temporary exploration of index parameters.
mod common;
use common::*;
use std::time::Instant;
use strata_l3::{IndexConfig, VectorIndex};

#[test]
fn explore() {
    let n: usize = std::env::var("N").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dim: usize = std::env::var("DIM").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    let m: usize = std::env::var("M").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let efc: usize = std::env::var("EFC").ok().and_then(|s| s.parse().ok()).unwrap_or(48);
    let ef: usize = std::env::var("EF").ok().and_then(|s| s.parse().ok()).unwrap_or(48);
    let mut rng = Rng::new(7);
    let t = Instant::now();
    let rank: usize = std::env::var("RANK").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let mix = Mixture::new(&mut rng, dim, 300, rank, 0.6);
    let pts = mix.points(&mut rng, n);
    eprintln!("gen {:?}", t.elapsed());
    let cfg = IndexConfig::default().with_max_connections(m).with_ef_construction(efc).with_ef_search(ef).with_exact_below(1);
    let idx = VectorIndex::new(dim, cfg).unwrap();
    for (i, p) in pts.iter().enumerate() { idx.insert(i as u64, p).unwrap(); }
    let t = Instant::now();
    idx.build_pending();
    let el = t.elapsed();
    eprintln!("build {n} in {:?} = {:.0}/s", el, n as f64 / el.as_secs_f64());
    let q = 500;
    let mut ok = 0; let mut agree = 0;
    let (mut th, mut te) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for _ in 0..q {
        let i = rng.below(n);
        let nd = near_duplicate(&mut rng, &pts[i], 0.93);
        let t = Instant::now();
        let h = idx.search(&nd).unwrap().unwrap();
        th += t.elapsed();
        if h.0 == i as u64 { ok += 1; }
        let fresh = mix.point(&mut rng);
        let h = idx.search(&fresh).unwrap().unwrap();
        let t = Instant::now();
        let e = idx.search_exact(&fresh).unwrap().unwrap();
        te += t.elapsed();
        if h.0 == e.0 { agree += 1; }
    }
    eprintln!("recall {} agree {} hnsw {:?}/q exact {:?}/q", ok as f64 / q as f64, agree as f64 / q as f64, th / q as u32, te / q as u32);
}
