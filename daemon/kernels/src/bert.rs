//! BERT encoder (sentence-transformers style, e.g. all-MiniLM-L6-v2) on the CPU: [`Bert::new`]
//! from plain weights + [`Bert::forward`] to mean-pooled embeddings. The `sotalign` crate loads
//! the weights (`encoders::bert_cpu`) and keeps candle-transformers' `BertModel` as the
//! implementation for other devices and the reference this one is tested against.
//!
//! What differs from running the candle model on a padded batch:
//! - No padding at all: the tokens of every sequence in a batch are stacked into one
//!   (tokens x hidden) matrix, so the dense layers are single products over real tokens only and
//!   attention runs per sequence on its own rows (identical to a padded batch whose padded keys
//!   are masked out, which is what the mask does).
//! - Dense layers go to faer's gemm with bias and residual already in the output buffer; Q, K
//!   and V are one product against their concatenated weights.
//! - GELU (erf form), layer norm and softmax are fused loops compiled for AVX-512 / AVX2 and
//!   picked at run time ([`crate::isa`]).
//! - [`Bert::forward`] splits a batch into one group of sequences per rayon worker, each run
//!   start to finish with single-threaded products: no synchronisation inside a layer. Given
//!   several batches, `TextEncoder` instead hands whole batches to workers as they come free
//!   ([`Bert::forward_one_worker`]).
use faer::Par;
use rayon::prelude::*;

use crate::KernelError;
use crate::gemm::{add_rows, fill_rows, gemm_acc_bt};
use crate::isa::{dispatch, madd};

/// The feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU, erf form (BERT's `gelu`).
    GeluErf,
    /// GELU, tanh approximation (`gelu_new` and friends).
    GeluTanh,
    Relu,
}

/// A layer norm's scale and shift.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

/// One encoder layer; every weight (out x in) row-major as PyTorch stores it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Q, K, V weights stacked: (3*hidden x hidden); bias (3*hidden).
    pub qkv_w: Vec<f32>,
    pub qkv_b: Vec<f32>,
    pub out_w: Vec<f32>,
    pub out_b: Vec<f32>,
    pub ln1: LayerNorm,
    pub inter_w: Vec<f32>,
    pub inter_b: Vec<f32>,
    pub down_w: Vec<f32>,
    pub down_b: Vec<f32>,
    pub ln2: LayerNorm,
}

/// Everything [`Bert::new`] needs.
#[derive(Debug, Clone)]
pub struct BertWeights {
    /// Word embeddings (vocab x hidden).
    pub word: Vec<f32>,
    /// Position embeddings (max positions x hidden).
    pub position: Vec<f32>,
    /// Token type 0's embedding (sentence embeddings never use another type).
    pub token_type0: Vec<f32>,
    pub emb_ln: LayerNorm,
    pub layers: Vec<Layer>,
    pub hidden: usize,
    pub heads: usize,
    pub inter: usize,
    pub eps: f32,
    pub act: Activation,
}

/// A BERT encoder with host-resident f32 weights, checked against their shapes.
#[derive(Debug, Clone)]
pub struct Bert {
    w: BertWeights,
    vocab: usize,
    max_positions: usize,
}

/// Per-group buffers for `tokens` rows.
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    ffn: Vec<f32>,
    scores: Vec<f32>,
}

impl Bert {
    /// Check every weight's size against `hidden`, `heads` and `inter`.
    pub fn new(w: BertWeights) -> Result<Self, KernelError> {
        let (d, inter) = (w.hidden, w.inter);
        if d == 0 || w.heads == 0 || !d.is_multiple_of(w.heads) {
            return Err(KernelError::Shape(format!(
                "hidden size {d} is not a positive multiple of {} attention heads",
                w.heads
            )));
        }
        let shape = |what: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(KernelError::Shape(format!(
                    "{what}: {got} values, expected {want}"
                )))
            }
        };
        if w.word.is_empty() || !w.word.len().is_multiple_of(d) {
            return Err(KernelError::Shape(format!(
                "word embeddings: {} values, not a positive multiple of hidden size {d}",
                w.word.len()
            )));
        }
        if !w.position.len().is_multiple_of(d) {
            return Err(KernelError::Shape(format!(
                "position embeddings: {} values, not a multiple of hidden size {d}",
                w.position.len()
            )));
        }
        shape("token type embedding", w.token_type0.len(), d)?;
        if !(w.eps.is_finite() && w.eps >= 0.0) {
            return Err(KernelError::Shape(format!(
                "layer norm epsilon {} is not a finite, non-negative number",
                w.eps
            )));
        }
        let ln = |what: &str, l: &LayerNorm| {
            shape(what, l.gamma.len(), d).and_then(|_| shape(what, l.beta.len(), d))
        };
        ln("embedding layer norm", &w.emb_ln)?;
        for (i, l) in w.layers.iter().enumerate() {
            let n = |what: &str| format!("layer {i} {what}");
            shape(&n("qkv weight"), l.qkv_w.len(), 3 * d * d)?;
            shape(&n("qkv bias"), l.qkv_b.len(), 3 * d)?;
            shape(&n("attention output weight"), l.out_w.len(), d * d)?;
            shape(&n("attention output bias"), l.out_b.len(), d)?;
            ln(&n("attention layer norm"), &l.ln1)?;
            shape(&n("intermediate weight"), l.inter_w.len(), inter * d)?;
            shape(&n("intermediate bias"), l.inter_b.len(), inter)?;
            shape(&n("output weight"), l.down_w.len(), d * inter)?;
            shape(&n("output bias"), l.down_b.len(), d)?;
            ln(&n("output layer norm"), &l.ln2)?;
        }
        Ok(Self {
            vocab: w.word.len() / d,
            max_positions: w.position.len() / d,
            w,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.w.hidden
    }

    /// Mean-pooled last hidden states (sequences x hidden, row-major) of token-id sequences,
    /// each attending to itself only. Empty sequences pool to zeros.
    pub fn forward(&self, seqs: &[&[u32]]) -> Result<Vec<f32>, KernelError> {
        self.check(seqs)?;
        let d = self.w.hidden;
        let mut out = vec![0f32; seqs.len() * d];
        let total: usize = seqs.iter().map(|s| s.len()).sum();
        let threads = rayon::current_num_threads().max(1);
        if threads == 1 || seqs.len() < 2 {
            self.group(seqs, &mut out, Par::rayon(0));
            return Ok(out);
        }
        // Split into contiguous groups of about equal token counts, one per worker.
        let mut groups: Vec<(&[&[u32]], &mut [f32])> = Vec::with_capacity(threads);
        let (mut rest_seqs, mut rest_out) = (seqs, out.as_mut_slice());
        let per = total.div_ceil(threads).max(1);
        while !rest_seqs.is_empty() {
            let mut n = 0;
            let mut tokens = 0;
            while n < rest_seqs.len() && (tokens < per || n == 0) {
                tokens += rest_seqs[n].len();
                n += 1;
            }
            let (s, s_rest) = rest_seqs.split_at(n);
            let (o, o_rest) = std::mem::take(&mut rest_out).split_at_mut(n * d);
            groups.push((s, o));
            (rest_seqs, rest_out) = (s_rest, o_rest);
        }
        groups
            .into_par_iter()
            .for_each(|(s, o)| self.group(s, o, Par::Seq));
        Ok(out)
    }

    /// As [`Self::forward`], entirely on the calling thread (single-threaded products), for
    /// callers that already run several batches in parallel.
    pub fn forward_one_worker(&self, seqs: &[&[u32]]) -> Result<Vec<f32>, KernelError> {
        self.check(seqs)?;
        let mut out = vec![0f32; seqs.len() * self.w.hidden];
        self.group(seqs, &mut out, Par::Seq);
        Ok(out)
    }

    /// Every sequence fits the position table and every id the vocabulary.
    fn check(&self, seqs: &[&[u32]]) -> Result<(), KernelError> {
        for s in seqs {
            if s.len() > self.max_positions {
                return Err(KernelError::TooLong {
                    len: s.len(),
                    max: self.max_positions,
                });
            }
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= self.vocab) {
                return Err(KernelError::Vocab {
                    id: bad,
                    vocab: self.vocab,
                });
            }
        }
        Ok(())
    }

    /// Whole forward pass for one group of sequences, rows stacked without padding.
    fn group(&self, seqs: &[&[u32]], out: &mut [f32], par: Par) {
        let d = self.w.hidden;
        let tokens: usize = seqs.iter().map(|s| s.len()).sum();
        let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        if tokens == 0 {
            out.fill(0.0);
            return;
        }
        let mut b = Buffers {
            x: vec![0.0; tokens * d],
            qkv: vec![0.0; tokens * 3 * d],
            ctx: vec![0.0; tokens * d],
            ffn: vec![0.0; tokens * self.w.inter],
            scores: vec![0.0; longest * longest],
        };
        // Embeddings: word + position + type 0, then layer norm.
        let mut row = 0;
        for s in seqs {
            for (pos, &id) in s.iter().enumerate() {
                let x = &mut b.x[row * d..][..d];
                let w = &self.w.word[id as usize * d..][..d];
                let p = &self.w.position[pos * d..][..d];
                for (((x, w), p), t) in x.iter_mut().zip(w).zip(p).zip(&self.w.token_type0) {
                    *x = w + p + t;
                }
                row += 1;
            }
        }
        layer_norm_rows(
            &mut b.x,
            &self.w.emb_ln.gamma,
            &self.w.emb_ln.beta,
            self.w.eps,
        );

        let head_dim = d / self.w.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        for l in &self.w.layers {
            fill_rows(&mut b.qkv, &l.qkv_b);
            gemm_acc_bt(&mut b.qkv, &b.x, &l.qkv_w, (tokens, d, 3 * d), par);
            let mut start = 0;
            for s in seqs {
                let t = s.len();
                attention(
                    &b.qkv[start * 3 * d..(start + t) * 3 * d],
                    &mut b.ctx[start * d..(start + t) * d],
                    &mut b.scores[..t * t],
                    t,
                    self.w.heads,
                    head_dim,
                    scale,
                );
                start += t;
            }
            // x <- LN(x + out_b + ctx Wo^T), the residual added in place.
            add_rows(&mut b.x, &l.out_b);
            gemm_acc_bt(&mut b.x, &b.ctx, &l.out_w, (tokens, d, d), par);
            layer_norm_rows(&mut b.x, &l.ln1.gamma, &l.ln1.beta, self.w.eps);
            fill_rows(&mut b.ffn, &l.inter_b);
            gemm_acc_bt(&mut b.ffn, &b.x, &l.inter_w, (tokens, d, self.w.inter), par);
            match self.w.act {
                Activation::GeluErf => gelu_erf_inplace(&mut b.ffn),
                Activation::GeluTanh => gelu_tanh_inplace(&mut b.ffn),
                Activation::Relu => b.ffn.iter_mut().for_each(|v| *v = v.max(0.0)),
            }
            add_rows(&mut b.x, &l.down_b);
            gemm_acc_bt(&mut b.x, &b.ffn, &l.down_w, (tokens, self.w.inter, d), par);
            layer_norm_rows(&mut b.x, &l.ln2.gamma, &l.ln2.beta, self.w.eps);
        }

        // Mean over each sequence's tokens.
        let mut start = 0;
        for (s, o) in seqs.iter().zip(out.chunks_exact_mut(d)) {
            o.fill(0.0);
            for r in start..start + s.len() {
                for (o, x) in o.iter_mut().zip(&b.x[r * d..][..d]) {
                    *o += x;
                }
            }
            let inv = 1.0 / s.len().max(1) as f32;
            o.iter_mut().for_each(|v| *v *= inv);
            start += s.len();
        }
    }
}

// Self-attention of one sequence: `qkv` is (t x 3*hidden) with Q | K | V column blocks,
// `ctx` (t x hidden) receives softmax(Q K^T * scale) V per head.
dispatch!(fn attention(qkv: &[f32], ctx: &mut [f32], scores: &mut [f32], t: usize, heads: usize, head_dim: usize, scale: f32) => attention_body);

#[inline(always)]
fn attention_body<const FMA: bool>(
    qkv: &[f32],
    ctx: &mut [f32],
    scores: &mut [f32],
    t: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
) {
    let d = heads * head_dim;
    let stride = 3 * d;
    for h in 0..heads {
        let (qo, ko, vo) = (h * head_dim, d + h * head_dim, 2 * d + h * head_dim);
        for i in 0..t {
            let q = &qkv[i * stride + qo..][..head_dim];
            let srow = &mut scores[i * t..][..t];
            for (j, s) in srow.iter_mut().enumerate() {
                let k = &qkv[j * stride + ko..][..head_dim];
                *s = dot::<FMA>(q, k) * scale;
            }
            softmax_inplace::<FMA>(srow);
            let c = &mut ctx[i * d + h * head_dim..][..head_dim];
            c.fill(0.0);
            for (j, &p) in srow.iter().enumerate() {
                let v = &qkv[j * stride + vo..][..head_dim];
                for (c, v) in c.iter_mut().zip(v) {
                    *c = madd::<FMA>(p, *v, *c);
                }
            }
        }
    }
}

/// Dot product with 16 independent partial sums (vectorisable without reassociation).
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, ar) = a.split_at(a.len() / 16 * 16);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        for j in 0..16 {
            acc[j] = madd::<FMA>(x[j], y[j], acc[j]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[inline(always)]
fn softmax_inplace<const FMA: bool>(x: &mut [f32]) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = exp_approx::<FMA>(*v - m);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// e^x in f32 for x <= ~88: 2^n * e^r with |r| <= ln2/2 and a degree-6 polynomial (relative
/// error about 2e-7); results below the normal range flush to 0.
///
/// Branch-free and integer-overflow-free so that loops calling it vectorise: n is rounded by
/// adding 1.5 * 2^23 (which leaves n in the low mantissa bits, read back for 2^n) instead of
/// `round()` and an `as i32` cast, which kept the GELU loop scalar.
#[inline(always)]
fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = madd::<FMA>(x, std::f32::consts::LOG2_E, SHIFT);
    let n = t - SHIFT;
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    // Taylor coefficients 1/k! for k = 6..0, Horner form.
    let mut p = 1.0 / 720.0;
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    // n + 127 in [1, 254]: the biased exponent of 2^n.
    let biased = t.to_bits().wrapping_sub(SHIFT.to_bits()).wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// erf(x), |error| < 2e-7 (Abramowitz & Stegun 7.1.26 form with a 5-term polynomial in
/// t = 1 / (1 + p|x|)), vectorisable.
#[inline(always)]
fn erf_approx<const FMA: bool>(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / madd::<FMA>(P, ax, 1.0);
    let mut poly = A[4];
    poly = madd::<FMA>(poly, t, A[3]);
    poly = madd::<FMA>(poly, t, A[2]);
    poly = madd::<FMA>(poly, t, A[1]);
    poly = madd::<FMA>(poly, t, A[0]);
    let y = 1.0 - poly * t * exp_approx::<FMA>(-ax * ax);
    y.copysign(x)
}

dispatch!(fn gelu_erf_inplace(x: &mut [f32]) => gelu_erf_body);

#[inline(always)]
fn gelu_erf_body<const FMA: bool>(x: &mut [f32]) {
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + erf_approx::<FMA>(u * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The tanh approximation of GELU (configs that ask for `gelu_new`-style activations).
fn gelu_tanh_inplace(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2 / pi)
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (C * (u + 0.044_715 * u * u * u)).tanh());
    }
}

dispatch!(fn layer_norm_rows(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) => layer_norm_body);

/// Per row: (x - mean) / sqrt(var + eps) * gamma + beta, statistics accumulated in 16 lanes.
#[inline(always)]
fn layer_norm_body<const FMA: bool>(x: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let d = gamma.len();
    for row in x.chunks_exact_mut(d) {
        let mut s = [0f32; 16];
        let mut s2 = [0f32; 16];
        let (body, tail) = row.split_at(d / 16 * 16);
        for c in body.chunks_exact(16) {
            for j in 0..16 {
                s[j] += c[j];
            }
        }
        let mut mean = s.iter().sum::<f32>() + tail.iter().sum::<f32>();
        mean /= d as f32;
        for c in body.chunks_exact(16) {
            for j in 0..16 {
                let z = c[j] - mean;
                s2[j] = madd::<FMA>(z, z, s2[j]);
            }
        }
        let var = (s2.iter().sum::<f32>()
            + tail.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>())
            / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(gamma).zip(beta) {
            *v = madd::<FMA>((*v - mean) * inv, *g, *b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.02;
            let e = exp_approx::<false>(x);
            let want = (x as f64).exp();
            assert!(
                ((e as f64 - want) / want).abs() < 1e-6,
                "exp({x}) = {e}, want {want}"
            );
            let y = erf_approx::<false>(x);
            let w = libm_erf(x as f64);
            assert!((y as f64 - w).abs() < 5e-7, "erf({x}) = {y}, want {w}");
        }
        assert!(exp_approx::<false>(-200.0) < 1e-37);
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction: a slow, independent reference.
    fn libm_erf(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            let mut n = 0;
            while term.abs() > 1e-17 || n < 5 {
                sum += term / (2 * n + 1) as f64;
                n += 1;
                term *= -x * x / n as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc continued fraction (Lentz), fine for |x| >= 3.
            let a = x.abs();
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / f;
            (1.0 - erfc).copysign(x)
        }
    }

    /// Small deterministic weights: `layers` layers of hidden 32, 4 heads, vocab 50, 40 positions.
    pub(crate) fn tiny(layers: usize) -> Bert {
        let (d, inter) = (32usize, 64usize);
        let mut seed = 0u64;
        let mut v = |n: usize, scale: f32, offset: f32| -> Vec<f32> {
            seed += 1;
            (0..n as u64)
                .map(|i| {
                    let z = ((i + 1) * 2_654_435_761 + seed * 7_919) % 1000;
                    offset + scale * (z as f32 / 500.0 - 1.0)
                })
                .collect()
        };
        let ln = |v: &mut dyn FnMut(usize, f32, f32) -> Vec<f32>| LayerNorm {
            gamma: v(d, 0.3, 1.0),
            beta: v(d, 0.2, 0.0),
        };
        let word = v(50 * d, 1.0, 0.0);
        let position = v(40 * d, 0.5, 0.0);
        let token_type0 = v(d, 0.5, 0.0);
        let emb_ln = ln(&mut v);
        let layers = (0..layers)
            .map(|_| Layer {
                qkv_w: v(3 * d * d, 0.26, 0.0),
                qkv_b: v(3 * d, 0.1, 0.0),
                out_w: v(d * d, 0.26, 0.0),
                out_b: v(d, 0.1, 0.0),
                ln1: ln(&mut v),
                inter_w: v(inter * d, 0.26, 0.0),
                inter_b: v(inter, 0.1, 0.0),
                down_w: v(d * inter, 0.19, 0.0),
                down_b: v(d, 0.1, 0.0),
                ln2: ln(&mut v),
            })
            .collect();
        Bert::new(BertWeights {
            word,
            position,
            token_type0,
            emb_ln,
            layers,
            hidden: d,
            heads: 4,
            inter,
            eps: 1e-12,
            act: Activation::GeluErf,
        })
        .unwrap()
    }

    #[test]
    fn rejects_out_of_range_ids_and_lengths() {
        let fast = tiny(2);
        assert!(matches!(
            fast.forward(&[&[1, 50, 2]]),
            Err(KernelError::Vocab { id: 50, vocab: 50 })
        ));
        assert!(fast.forward_one_worker(&[&[1, 50, 2]]).is_err());
        let long = vec![1u32; 41];
        assert!(matches!(
            fast.forward(&[&long]),
            Err(KernelError::TooLong { len: 41, max: 40 })
        ));
        assert_eq!(fast.forward(&[&[]]).unwrap(), vec![0.0; 32]);
    }

    /// Rows do not depend on their batch: each sequence alone, the batch split over workers and
    /// the batch on one worker give the same embeddings.
    #[test]
    fn rows_do_not_depend_on_the_batch() {
        let fast = tiny(2);
        let seqs: Vec<Vec<u32>> = vec![
            vec![1, 5, 9, 2],
            vec![1, 7, 2],
            (1..21).collect(),
            vec![1, 2],
        ];
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let all = fast.forward(&refs).unwrap();
        let one = fast.forward_one_worker(&refs).unwrap();
        for (k, s) in refs.iter().enumerate() {
            let alone = fast.forward(std::slice::from_ref(s)).unwrap();
            for ((a, b), c) in alone.iter().zip(&all[k * 32..]).zip(&one[k * 32..]) {
                assert!(
                    (a - b).abs() < 1e-5 && (a - c).abs() < 1e-5,
                    "sequence {k}: {a} {b} {c}"
                );
            }
        }
    }

    #[test]
    fn wrong_weight_sizes_are_refused() {
        let mut w = BertWeights {
            word: vec![0.0; 10 * 8],
            position: vec![0.0; 4 * 8],
            token_type0: vec![0.0; 8],
            emb_ln: LayerNorm {
                gamma: vec![1.0; 8],
                beta: vec![0.0; 8],
            },
            layers: Vec::new(),
            hidden: 8,
            heads: 3,
            inter: 16,
            eps: 1e-12,
            act: Activation::Relu,
        };
        assert!(Bert::new(w.clone()).is_err());
        w.heads = 2;
        assert!(Bert::new(w.clone()).is_ok());
        w.token_type0.pop();
        assert!(Bert::new(w).is_err());
    }
}
