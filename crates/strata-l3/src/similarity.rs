//! `CosineSimilarity`: the validated similarity threshold type, and the vector math behind it.

use std::fmt;

use crate::Error;

/// The cosine of the angle between two embeddings, clamped to `0.0..=1.0`.
///
/// # Meaning
/// Embeddings are L2-normalized, so the cosine is their dot product: `1.0` means the two texts
/// embed to the same direction (for the local embedder: the same words and n-grams in the same
/// proportions), `0.0` means nothing in common (or opposite directions, which are clamped to
/// `0.0`). As a **threshold**, a stored entry may answer a query only if the similarity of their
/// embeddings is at least the threshold, *and* every enabled [`Guard`](crate::Guard) agrees.
/// Higher is stricter: `1.0` only serves texts that embed identically.
///
/// What a value means in words depends on the embedder: for the built-in
/// [`LocalEmbedder`](crate::LocalEmbedder), `0.80` (the default,
/// [`CosineSimilarity::DEFAULT_THRESHOLD`]) admits reordered words, dropped filler words and
/// singular/plural changes, and rejects most texts that differ in a content word.
#[derive(Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct CosineSimilarity(f32);

impl CosineSimilarity {
    /// The default threshold of the tier: `0.80`. See the type's docs for what it admits.
    pub const DEFAULT_THRESHOLD: CosineSimilarity = CosineSimilarity(0.80);

    /// A similarity; an error unless `value` is a number in `0.0..=1.0`.
    pub fn new(value: f32) -> Result<Self, Error> {
        if value.is_finite() && (0.0..=1.0).contains(&value) {
            Ok(Self(value))
        } else {
            Err(Error::config(format!("cosine similarity must be within 0..=1, got {value}")))
        }
    }

    /// A constant threshold; `value` must be within `0.0..=1.0` (checked when the constant is
    /// evaluated).
    pub(crate) const fn from_const(value: f32) -> Self {
        assert!(value >= 0.0 && value <= 1.0, "a similarity is within 0..=1");
        Self(value)
    }

    /// The similarity of two dot products, clamped into range (rounding can leave `1.0000001`).
    pub(crate) fn from_dot(dot: f32) -> Self {
        if dot.is_nan() {
            Self(0.0)
        } else {
            Self(dot.clamp(0.0, 1.0))
        }
    }

    /// The value as a number in `0.0..=1.0`.
    pub fn get(self) -> f32 {
        self.0
    }
}

impl fmt::Debug for CosineSimilarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CosineSimilarity({:.4})", self.0)
    }
}

impl fmt::Display for CosineSimilarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.4}", self.0)
    }
}

/// The dot product, written with eight independent accumulators so the compiler vectorizes it.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

/// Scales `v` to unit length in place; `false` (and `v` untouched) when it has no direction
/// (all zeros) or holds a non-finite number. hnsw_rs treats a zero vector as a perfect match
/// for everything, so such vectors must never reach an index.
pub(crate) fn normalize(v: &mut [f32]) -> bool {
    let norm_sq = dot(v, v);
    if !norm_sq.is_finite() || norm_sq <= f32::MIN_POSITIVE {
        return false;
    }
    let inv = 1.0 / norm_sq.sqrt();
    if !inv.is_finite() {
        return false;
    }
    for x in v.iter_mut() {
        *x *= inv;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_outside_zero_to_one_are_rejected() {
        for bad in [-0.01, 1.01, f32::NAN, f32::INFINITY] {
            assert!(CosineSimilarity::new(bad).is_err(), "{bad}");
        }
        assert_eq!(CosineSimilarity::new(0.0).map(CosineSimilarity::get).ok(), Some(0.0));
        assert_eq!(CosineSimilarity::new(1.0).map(CosineSimilarity::get).ok(), Some(1.0));
        assert_eq!(CosineSimilarity::from_dot(1.000_001).get(), 1.0);
        assert_eq!(CosineSimilarity::from_dot(-0.5).get(), 0.0);
    }

    #[test]
    fn normalize_refuses_zero_and_non_finite_vectors() {
        let mut zero = vec![0.0; 16];
        assert!(!normalize(&mut zero));
        let mut nan = vec![1.0, f32::NAN, 0.0];
        assert!(!normalize(&mut nan));
        let mut v: Vec<f32> = (0..19).map(|i| i as f32 - 4.0).collect();
        assert!(normalize(&mut v));
        assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
    }
}
