//! The numeric kernels of the MiniLM forward pass: a matrix product against row-major weights,
//! layer normalization, softmax and GELU.

use multiversion::multiversion;
use multiversion::target::target_cfg_f;

/// `out[i * n + j] = dot(x[i], w[j])`: the product of `x` (`m` rows of `k`) with the transpose of
/// `w` (`n` rows of `k`), both row-major; `out` has `m * n` numbers.
///
/// This is the shape of every layer of the model: PyTorch stores a linear layer's weight as
/// `[outputs, inputs]`, so each output is the dot product of an input row with one contiguous
/// weight row, and the weights are used as they are stored, without packing or transposing.
/// Each output is computed on its own (the same numbers in the same order whatever `m` is), so
/// a text gives the same vector alone as in a batch.
pub(crate) fn matmul_transposed(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    debug_assert!(k > 0 && x.len().is_multiple_of(k) && w.len().is_multiple_of(k));
    debug_assert_eq!(out.len(), (x.len() / k) * (w.len() / k));
    matmul_dispatch(x, w, k, out);
}

/// Compiled once per target below and chosen at run time by CPU feature detection; the generic
/// fallback runs on any CPU. Accumulators hold 8 floats (with AVX-512, sixteen of them in 4x4
/// blocks), and only the FMA targets use fused multiply-adds: elsewhere `f32::mul_add` would be a
/// slow library call.
// In each compiled copy the conditions below are constants, some of them equal.
#[allow(clippy::ifs_same_cond)]
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma", "aarch64+neon"))]
fn matmul_dispatch(x: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
    if target_cfg_f!(all(target_arch = "x86_64", target_feature = "avx512f")) {
        matmul_kernel::<8, true, true>(x, w, k, out);
    } else if target_cfg_f!(any(target_feature = "fma", target_arch = "aarch64")) {
        matmul_kernel::<8, true, false>(x, w, k, out);
    } else {
        matmul_kernel::<8, false, false>(x, w, k, out);
    }
}

#[inline(always)]
fn matmul_kernel<const L: usize, const FMA: bool, const WIDE: bool>(
    x: &[f32],
    w: &[f32],
    k: usize,
    out: &mut [f32],
) {
    // Four weight rows at a time where there are registers for sixteen accumulators (`WIDE`:
    // AVX-512 has 32 vector registers), else two; then what is left one by one. Every dot product
    // is computed the same way whatever block it is in, so the blocks chosen never change a
    // result. Measured here (one 13-token question): 256-bit accumulators in 4x4 blocks 4.9 ms,
    // 512-bit ones 5.1 ms.
    let mut j = 0;
    if WIDE {
        j = columns::<4, L, FMA>(x, w, k, out, j);
    }
    j = columns::<2, L, FMA>(x, w, k, out, j);
    columns::<1, L, FMA>(x, w, k, out, j);
}

/// The outputs of weight rows `j..` taken `C` at a time against four input rows at a time (then
/// the leftover rows two, then one, at a time): the weight rows stay in L1 while every input row passes them,
/// so the weights are read from memory once. Returns the first weight row not done.
#[inline(always)]
fn columns<const C: usize, const L: usize, const FMA: bool>(
    x: &[f32],
    w: &[f32],
    k: usize,
    out: &mut [f32],
    mut j: usize,
) -> usize {
    let m = x.len() / k;
    let n = w.len() / k;
    let row = |i: usize| &x[i * k..(i + 1) * k];
    while j + C <= n {
        let ws: [&[f32]; C] = std::array::from_fn(|c| &w[(j + c) * k..(j + c + 1) * k]);
        let mut i = 0;
        while i + 4 <= m {
            let dots = block::<4, C, L, FMA>([row(i), row(i + 1), row(i + 2), row(i + 3)], ws);
            for (r, outputs) in dots.iter().enumerate() {
                out[(i + r) * n + j..(i + r) * n + j + C].copy_from_slice(outputs);
            }
            i += 4;
        }
        if i + 2 <= m {
            let dots = block::<2, C, L, FMA>([row(i), row(i + 1)], ws);
            for (r, outputs) in dots.iter().enumerate() {
                out[(i + r) * n + j..(i + r) * n + j + C].copy_from_slice(outputs);
            }
            i += 2;
        }
        while i < m {
            let [outputs] = block::<1, C, L, FMA>([row(i)], ws);
            out[i * n + j..i * n + j + C].copy_from_slice(&outputs);
            i += 1;
        }
        j += C;
    }
    j
}

/// The `R x C` dot products of `R` input rows with `C` weight rows, all of the same length,
/// with accumulators of `L` lanes (4, 8 or 16).
#[inline(always)]
fn block<const R: usize, const C: usize, const L: usize, const FMA: bool>(
    xs: [&[f32]; R],
    ws: [&[f32]; C],
) -> [[f32; C]; R] {
    const { assert!(L == 4 || L == 8 || L == 16) };
    let k = xs[0].len();
    let chunks = k / L;
    let xc = xs.map(|s| &s.as_chunks::<L>().0[..chunks]);
    let wc = ws.map(|s| &s.as_chunks::<L>().0[..chunks]);
    let mut acc = [[[0.0f32; L]; C]; R];
    for t in 0..chunks {
        let wv: [[f32; L]; C] = wc.map(|w| w[t]);
        let xv: [[f32; L]; R] = xc.map(|x| x[t]);
        for r in 0..R {
            for c in 0..C {
                for l in 0..L {
                    let a = acc[r][c][l];
                    acc[r][c][l] = if FMA { xv[r][l].mul_add(wv[c][l], a) } else { a + xv[r][l] * wv[c][l] };
                }
            }
        }
    }
    let tail = chunks * L;
    let mut dots = [[0.0f32; C]; R];
    for (r, lanes_of_row) in acc.iter_mut().enumerate() {
        for (c, lanes) in lanes_of_row.iter_mut().enumerate() {
            // Halving sums with constant widths (unrolled, vectorized): 8, 4, 2, 1 lanes.
            if L >= 16 {
                for i in 0..8 {
                    lanes[i] += lanes[i + 8];
                }
            }
            if L >= 8 {
                for i in 0..4 {
                    lanes[i] += lanes[i + 4];
                }
            }
            for i in 0..2 {
                lanes[i] += lanes[i + 2];
            }
            let mut sum = lanes[0] + lanes[1];
            for (a, b) in xs[r][tail..].iter().zip(&ws[c][tail..]) {
                sum += a * b;
            }
            dots[r][c] = sum;
        }
    }
    dots
}

/// Adds `bias` to every row of `rows` (rows of `bias.len()` numbers).
pub(crate) fn add_bias(rows: &mut [f32], bias: &[f32]) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Layer normalization of every row in place: zero mean, unit variance (biased, as PyTorch's),
/// then scaled by `weight` and shifted by `bias`.
pub(crate) fn layer_norm(rows: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    for row in rows.chunks_exact_mut(width) {
        let mean = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// Softmax of `xs` in place (shifted by the maximum, so large scores do not overflow).
pub(crate) fn softmax(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in xs.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in xs.iter_mut() {
        *v *= inv;
    }
}

/// BERT's GELU in place: `x * Φ(x)` with the exact normal CDF, `0.5 * x * (1 + erf(x / √2))`.
pub(crate) fn gelu(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The error function in single precision: a rational approximation on `[-4, 4]` (outside it
/// `erf` is ±1 in `f32`), within 4e-7 of the exact function. It is only multiplications,
/// additions and one division, so the GELU loop vectorizes (the coefficients are the ones XLA
/// and Eigen use for `f32`).
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_4e-10_f32;
    p = p * x2 + 2.770_681_5e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_2e-5;
    p = p * x2 - 7.349_906_4e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_15e-5_f32;
    q = q * x2 - 2.133_740_5e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_3e-3;
    q = q * x2 - 1.426_473_9e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // erf at these points, from a table of the exact function.
        let table = [
            (0.0, 0.0),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (1.5, 0.966_105),
            (2.0, 0.995_322_3),
            (3.0, 0.999_977_9),
            (5.0, 1.0),
        ];
        for (x, want) in table {
            assert!((erf(x) - want).abs() < 5e-7, "erf({x}) = {}, want {want}", erf(x));
            assert!((erf(-x) + want).abs() < 5e-7, "erf({}) = {}, want {}", -x, erf(-x), -want);
        }
    }

    #[test]
    fn matmul_matches_the_naive_product_for_every_shape() {
        // Shapes that exercise the 4-row and 2-row blocks, the leftover rows and columns, and a tail that is
        // not a multiple of the lane count.
        for (m, n, k) in [(1, 1, 1), (4, 2, 8), (5, 3, 13), (9, 7, 32), (3, 5, 384), (13, 4, 37), (6, 9, 40)]
        {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 13) as f32 - 6.0) / 16.0).collect();
            // The dispatched build, and every kernel variant whichever this CPU picks.
            type Matmul = fn(&[f32], &[f32], usize, &mut [f32]);
            let variants: [(&str, Matmul); 5] = [
                ("dispatched", matmul_transposed),
                ("16 lanes, fma, 4 columns", matmul_kernel::<16, true, true>),
                ("8 lanes, fma, 4 columns", matmul_kernel::<8, true, true>),
                ("8 lanes, fma", matmul_kernel::<8, true, false>),
                ("8 lanes", matmul_kernel::<8, false, false>),
            ];
            for (variant, matmul) in variants {
                let mut out = vec![f32::NAN; m * n];
                matmul(&x, &w, k, &mut out);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                        let got = out[i * n + j];
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{variant} ({m}x{n}x{k}) [{i},{j}]: {got} != {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_among_others() {
        let k = 40;
        let x: Vec<f32> = (0..6 * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..3 * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut all = vec![0.0; 6 * 3];
        matmul_transposed(&x, &w, k, &mut all);
        for i in 0..6 {
            let mut one = vec![0.0; 3];
            matmul_transposed(&x[i * k..(i + 1) * k], &w, k, &mut one);
            assert_eq!(one, all[i * 3..(i + 1) * 3]);
        }
    }

    #[test]
    fn layer_norm_and_softmax_normalize() {
        let mut rows = vec![1.0, 2.0, 3.0, 4.0, -1.0, -1.0, 5.0, 5.0];
        layer_norm(&mut rows, &[1.0; 4], &[0.0; 4], 1e-12);
        for row in rows.chunks(4) {
            let mean: f32 = row.iter().sum::<f32>() / 4.0;
            let var: f32 = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{row:?}");
        }
        let mut p = vec![1000.0, 1000.0, -1000.0];
        softmax(&mut p);
        assert_eq!(p, [0.5, 0.5, 0.0]);
    }
}
