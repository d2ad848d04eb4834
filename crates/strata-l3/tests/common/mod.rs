//! Shared test data: a seeded generator, a Gaussian mixture, near-duplicates, a question corpus,
//! and the all-MiniLM-L6-v2 model files.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

/// The all-MiniLM-L6-v2 directory that `cargo xtask test` (and `cargo xtask bench`) fetches into
/// `target/strata-models/` and exports as `STRATA_TEST_MINILM_DIR`, if it is set.
pub fn minilm_dir() -> Option<PathBuf> {
    std::env::var_os("STRATA_TEST_MINILM_DIR").map(PathBuf::from)
}

/// The model, loaded once per test binary; panics saying what to run when it is not provided.
#[cfg(feature = "minilm")]
pub fn minilm() -> &'static strata_l3::MiniLmEmbedder {
    static MODEL: std::sync::OnceLock<strata_l3::MiniLmEmbedder> = std::sync::OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = minilm_dir().unwrap_or_else(|| {
            panic!(
                "STRATA_TEST_MINILM_DIR is not set: run `cargo xtask test`, which fetches all-MiniLM-L6-v2 \
                 into target/strata-models/ and exports it (or set it to a directory holding config.json, \
                 tokenizer.json and model.safetensors)"
            )
        });
        strata_l3::MiniLmEmbedder::load(&dir)
            .unwrap_or_else(|e| panic!("loading the model from {}: {e}", dir.display()))
    })
}

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn gauss(&mut self) -> f32 {
        let u1 = self.unit().max(1e-12);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

pub fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for x in &mut v {
        *x /= n;
    }
    v
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut d, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    d / (na * nb).sqrt()
}

/// A Gaussian mixture of `clusters` clusters with unit centers. Each cluster varies along its
/// own `rank` random directions (real embeddings have a low intrinsic dimension; isotropic noise
/// in every dimension makes every ANN index degenerate), scaled so a point's cosine to its
/// center is about `spread_cos`, plus a little isotropic noise.
pub struct Mixture {
    pub dim: usize,
    centers: Vec<Vec<f32>>,
    bases: Vec<Vec<Vec<f32>>>,
    scale: f32,
    noise: f32,
}

impl Mixture {
    pub fn new(rng: &mut Rng, dim: usize, clusters: usize, rank: usize, spread_cos: f32) -> Self {
        let centers = (0..clusters).map(|_| normalized((0..dim).map(|_| rng.gauss()).collect())).collect();
        let bases = (0..clusters)
            .map(|_| (0..rank).map(|_| normalized((0..dim).map(|_| rng.gauss()).collect())).collect())
            .collect();
        // cos = 1 / sqrt(1 + rank * scale^2) for (nearly orthogonal) unit basis vectors.
        let scale = ((1.0 / (spread_cos * spread_cos) - 1.0) / rank as f32).sqrt();
        let noise = ((1.0 / (0.99f32 * 0.99) - 1.0) / dim as f32).sqrt();
        Self { dim, centers, bases, scale, noise }
    }

    pub fn point(&self, rng: &mut Rng) -> Vec<f32> {
        let c = rng.below(self.centers.len());
        let mut v = self.centers[c].clone();
        for b in &self.bases[c] {
            let z = self.scale * rng.gauss();
            for (x, y) in v.iter_mut().zip(b) {
                *x += z * y;
            }
        }
        for x in &mut v {
            *x += self.noise * rng.gauss();
        }
        normalized(v)
    }

    pub fn points(&self, rng: &mut Rng, n: usize) -> Vec<Vec<f32>> {
        (0..n).map(|_| self.point(rng)).collect()
    }
}

/// `v` moved by noise so that its cosine to `v` is about `cos`.
pub fn near_duplicate(rng: &mut Rng, v: &[f32], cos: f32) -> Vec<f32> {
    let tau = ((1.0 / (cos * cos) - 1.0) / v.len() as f32).sqrt();
    normalized(v.iter().map(|x| x + tau * rng.gauss()).collect())
}

const SUBJECTS: &[&str] = &[
    "orders",
    "customers",
    "invoices",
    "products",
    "shipments",
    "payments",
    "refunds",
    "employees",
    "suppliers",
    "tickets",
    "subscriptions",
    "reviews",
    "carts",
    "accounts",
    "warehouses",
    "campaigns",
];
const ASKS: &[&str] = &[
    "how many",
    "total value of",
    "average size of",
    "list",
    "top ten",
    "count of",
    "median amount of",
    "most recent",
    "daily trend of",
    "share of",
];
const FILTERS: &[&str] = &[
    "in region",
    "for store",
    "by channel",
    "from partner",
    "in category",
    "for team",
    "under plan",
    "with status",
    "tagged",
    "owned by",
];
const NAMES: &[&str] = &[
    "north", "south", "east", "west", "alpha", "beta", "gamma", "delta", "omega", "atlas", "zenith", "nova",
    "orion", "vega", "lyra", "draco", "hydra", "pavo", "lupus", "corvus",
];
const PERIODS: &[&str] = &["last week", "last month", "this quarter", "this year", "yesterday", "today"];

/// A generated question: subject, ask, filter, name, period and a number; `i` picks them.
pub fn question(rng: &mut Rng) -> String {
    format!(
        "{} {} {} {} {} {} batch {}",
        ASKS[rng.below(ASKS.len())],
        SUBJECTS[rng.below(SUBJECTS.len())],
        FILTERS[rng.below(FILTERS.len())],
        NAMES[rng.below(NAMES.len())],
        NAMES[rng.below(NAMES.len())],
        PERIODS[rng.below(PERIODS.len())],
        rng.below(500),
    )
}
