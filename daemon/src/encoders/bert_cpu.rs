//! BERT encoder (sentence-transformers style, e.g. all-MiniLM-L6-v2) on the CPU: `load(vb,
//! config)` + `forward` to mean-pooled embeddings. The candle-transformers `BertModel` stays the
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
//!   picked at run time ([`super::cpu::dispatch`]).
//! - [`BertCpu::forward`] splits a batch into one group of sequences per rayon worker, each run
//!   start to finish with single-threaded products: no synchronisation inside a layer. Given
//!   several batches, `TextEncoder` instead hands whole batches to workers as they come free
//!   ([`BertCpu::forward_one_worker`]).
use candle_core::Tensor;
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};
use faer::Par;
use rayon::prelude::*;

use super::cpu::{dispatch, fill_rows, gemm_acc_bt, madd};

#[derive(Debug, Clone)]
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Layer {
    /// Q, K, V weights stacked: (3*hidden x hidden); bias (3*hidden).
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
    ln1: LayerNorm,
    inter_w: Vec<f32>,
    inter_b: Vec<f32>,
    down_w: Vec<f32>,
    down_b: Vec<f32>,
    ln2: LayerNorm,
}

/// A BERT encoder with host-resident f32 weights.
#[derive(Debug, Clone)]
pub struct BertCpu {
    word: Vec<f32>,
    position: Vec<f32>,
    /// Token type 0's embedding (sentence embeddings never use another type).
    token_type0: Vec<f32>,
    emb_ln: LayerNorm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    inter: usize,
    vocab: usize,
    max_positions: usize,
    eps: f32,
    act: HiddenAct,
}

fn host(t: Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<f32>()
}

fn layer_norm(vb: &VarBuilder, d: usize) -> candle_core::Result<LayerNorm> {
    Ok(LayerNorm {
        gamma: host(vb.get(d, "weight")?)?,
        beta: host(vb.get(d, "bias")?)?,
    })
}

/// A linear layer's (weight (out x in) row-major, bias).
fn linear(vb: &VarBuilder, din: usize, dout: usize) -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
    Ok((
        host(vb.get((dout, din), "weight")?)?,
        host(vb.get(dout, "bias")?)?,
    ))
}

/// Per-group buffers for `tokens` rows.
struct Buffers {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    ffn: Vec<f32>,
    scores: Vec<f32>,
}

impl BertCpu {
    /// Load BERT weights (names as candle-transformers' `BertModel::load` expects them, with or
    /// without a `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("embeddings.word_embeddings.weight") {
            vb
        } else {
            vb.pp("bert")
        };
        let d = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !d.is_multiple_of(heads) {
            candle_core::bail!("hidden size {d} is not a multiple of {heads} attention heads");
        }
        let inter = config.intermediate_size;
        let e = vb.pp("embeddings");
        let word = host(e.get((config.vocab_size, d), "word_embeddings.weight")?)?;
        let position = host(e.get(
            (config.max_position_embeddings, d),
            "position_embeddings.weight",
        )?)?;
        let types = host(e.get((config.type_vocab_size, d), "token_type_embeddings.weight")?)?;
        if types.len() < d {
            candle_core::bail!("no token type embeddings");
        }
        let emb_ln = layer_norm(&e.pp("LayerNorm"), d)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention");
            let (qw, qb) = linear(&a.pp("self.query"), d, d)?;
            let (kw, kb) = linear(&a.pp("self.key"), d, d)?;
            let (vw, vbias) = linear(&a.pp("self.value"), d, d)?;
            let (out_w, out_b) = linear(&a.pp("output.dense"), d, d)?;
            let (inter_w, inter_b) = linear(&l.pp("intermediate.dense"), d, inter)?;
            let (down_w, down_b) = linear(&l.pp("output.dense"), inter, d)?;
            layers.push(Layer {
                qkv_w: [qw, kw, vw].concat(),
                qkv_b: [qb, kb, vbias].concat(),
                out_w,
                out_b,
                ln1: layer_norm(&a.pp("output.LayerNorm"), d)?,
                inter_w,
                inter_b,
                down_w,
                down_b,
                ln2: layer_norm(&l.pp("output.LayerNorm"), d)?,
            });
        }
        Ok(Self {
            word,
            position,
            token_type0: types[..d].to_vec(),
            emb_ln,
            layers,
            hidden: d,
            heads,
            inter,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            eps: config.layer_norm_eps as f32,
            act: config.hidden_act,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Mean-pooled last hidden states (sequences x hidden, row-major) of token-id sequences,
    /// each attending to itself only. Empty sequences pool to zeros.
    pub fn forward(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        self.check(seqs)?;
        let d = self.hidden;
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
    pub fn forward_one_worker(&self, seqs: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        self.check(seqs)?;
        let mut out = vec![0f32; seqs.len() * self.hidden];
        self.group(seqs, &mut out, Par::Seq);
        Ok(out)
    }

    /// Every sequence fits the position table and every id the vocabulary.
    fn check(&self, seqs: &[&[u32]]) -> candle_core::Result<()> {
        for s in seqs {
            if s.len() > self.max_positions {
                candle_core::bail!(
                    "sequence of {} tokens, the model has {} positions",
                    s.len(),
                    self.max_positions
                );
            }
            if let Some(&bad) = s.iter().find(|&&t| t as usize >= self.vocab) {
                candle_core::bail!("token id {bad} outside the vocabulary ({})", self.vocab);
            }
        }
        Ok(())
    }

    /// Whole forward pass for one group of sequences, rows stacked without padding.
    fn group(&self, seqs: &[&[u32]], out: &mut [f32], par: Par) {
        let d = self.hidden;
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
            ffn: vec![0.0; tokens * self.inter],
            scores: vec![0.0; longest * longest],
        };
        // Embeddings: word + position + type 0, then layer norm.
        let mut row = 0;
        for s in seqs {
            for (pos, &id) in s.iter().enumerate() {
                let x = &mut b.x[row * d..][..d];
                let w = &self.word[id as usize * d..][..d];
                let p = &self.position[pos * d..][..d];
                for (((x, w), p), t) in x.iter_mut().zip(w).zip(p).zip(&self.token_type0) {
                    *x = w + p + t;
                }
                row += 1;
            }
        }
        layer_norm_rows(&mut b.x, &self.emb_ln.gamma, &self.emb_ln.beta, self.eps);

        let head_dim = d / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        for l in &self.layers {
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
                    self.heads,
                    head_dim,
                    scale,
                );
                start += t;
            }
            // x <- LN(x + out_b + ctx Wo^T), the residual added in place.
            add_rows(&mut b.x, &l.out_b);
            gemm_acc_bt(&mut b.x, &b.ctx, &l.out_w, (tokens, d, d), par);
            layer_norm_rows(&mut b.x, &l.ln1.gamma, &l.ln1.beta, self.eps);
            fill_rows(&mut b.ffn, &l.inter_b);
            gemm_acc_bt(&mut b.ffn, &b.x, &l.inter_w, (tokens, d, self.inter), par);
            match self.act {
                HiddenAct::Gelu => gelu_erf_inplace(&mut b.ffn),
                HiddenAct::GeluApproximate => gelu_tanh_inplace(&mut b.ffn),
                HiddenAct::Relu => b.ffn.iter_mut().for_each(|v| *v = v.max(0.0)),
            }
            add_rows(&mut b.x, &l.down_b);
            gemm_acc_bt(&mut b.x, &b.ffn, &l.down_w, (tokens, self.inter, d), par);
            layer_norm_rows(&mut b.x, &l.ln2.gamma, &l.ln2.beta, self.eps);
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

fn add_rows(dst: &mut [f32], bias: &[f32]) {
    for row in dst.chunks_exact_mut(bias.len()) {
        for (d, b) in row.iter_mut().zip(bias) {
            *d += b;
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
#[inline(always)]
fn exp_approx<const FMA: bool>(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, x));
    // Taylor coefficients 1/k! for k = 6..0, Horner form.
    let mut p = 1.0 / 720.0;
    p = madd::<FMA>(p, r, 1.0 / 120.0);
    p = madd::<FMA>(p, r, 1.0 / 24.0);
    p = madd::<FMA>(p, r, 1.0 / 6.0);
    p = madd::<FMA>(p, r, 0.5);
    p = madd::<FMA>(p, r, 1.0);
    p = madd::<FMA>(p, r, 1.0);
    let bits = ((n as i32 + 127) << 23) as u32;
    p * f32::from_bits(bits)
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
    use candle_core::{DType, Device};
    use candle_transformers::models::bert::BertModel;
    use std::collections::HashMap;

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

    fn tiny_config() -> Config {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "max_position_embeddings": 40, "type_vocab_size": 2,
            "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
            "classifier_dropout": null, "model_type": "bert"
        }))
        .unwrap()
    }

    /// Random weights for every tensor `BertModel::load` asks for.
    fn tiny_weights(c: &Config, dev: &Device) -> HashMap<String, Tensor> {
        let mut t = HashMap::new();
        let mut seed = 0u64;
        let mut put = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
            seed += 1;
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n as u64)
                .map(|i| {
                    let z = ((i + 1) * 2_654_435_761 + seed * 7_919) % 1000;
                    offset + scale * (z as f32 / 500.0 - 1.0)
                })
                .collect();
            t.insert(name, Tensor::from_vec(v, shape, dev).unwrap());
        };
        let (d, i) = (c.hidden_size, c.intermediate_size);
        put(
            "embeddings.word_embeddings.weight".into(),
            vec![c.vocab_size, d],
            1.0,
            0.0,
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, d],
            0.5,
            0.0,
        );
        put(
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, d],
            0.5,
            0.0,
        );
        let ln = |put: &mut dyn FnMut(String, Vec<usize>, f32, f32), p: &str| {
            put(format!("{p}.weight"), vec![d], 0.3, 1.0);
            put(format!("{p}.bias"), vec![d], 0.2, 0.0);
        };
        ln(&mut put, "embeddings.LayerNorm");
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for (name, dout, din) in [
                ("attention.self.query", d, d),
                ("attention.self.key", d, d),
                ("attention.self.value", d, d),
                ("attention.output.dense", d, d),
                ("intermediate.dense", i, d),
                ("output.dense", d, i),
            ] {
                let s = 1.5 / (din as f32).sqrt();
                put(format!("{p}.{name}.weight"), vec![dout, din], s, 0.0);
                put(format!("{p}.{name}.bias"), vec![dout], 0.1, 0.0);
            }
            ln(&mut put, &format!("{p}.attention.output.LayerNorm"));
            ln(&mut put, &format!("{p}.output.LayerNorm"));
        }
        t
    }

    /// Same pooled embeddings as candle-transformers' BertModel on a padded, masked batch.
    #[test]
    fn matches_candle_bert_on_padded_batch() {
        let dev = Device::Cpu;
        let c = tiny_config();
        let w = tiny_weights(&c, &dev);
        let reference =
            BertModel::load(VarBuilder::from_tensors(w.clone(), DType::F32, &dev), &c).unwrap();
        let fast = BertCpu::load(VarBuilder::from_tensors(w, DType::F32, &dev), &c).unwrap();
        let seqs: Vec<Vec<u32>> = vec![
            vec![1, 5, 9, 2],
            vec![1, 7, 2],
            vec![
                1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 2,
            ],
            vec![1, 2],
            vec![1, 49, 48, 47, 2],
        ];
        let len = seqs.iter().map(|s| s.len()).max().unwrap();
        let b = seqs.len();
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (r, s) in seqs.iter().enumerate() {
            ids[r * len..r * len + s.len()].copy_from_slice(s);
            mask[r * len..r * len + s.len()].fill(1.0);
        }
        let ids = Tensor::from_vec(ids, (b, len), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (b, len), &dev).unwrap();
        let hidden = reference
            .forward(&ids, &ids.zeros_like().unwrap(), Some(&mask))
            .unwrap();
        let want = hidden
            .broadcast_mul(&mask.unsqueeze(2).unwrap())
            .unwrap()
            .sum(1)
            .unwrap()
            .broadcast_div(&mask.sum_keepdim(1).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let got = fast.forward(&refs).unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff / scale < 1e-5, "max diff {diff} (scale {scale})");
        let one_worker = fast.forward_one_worker(&refs).unwrap();
        assert_eq!(one_worker.len(), got.len());
        let d1 = one_worker
            .iter()
            .zip(&got)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d1 / scale < 1e-5, "one-worker forward differs by {d1}");
        // One sequence at a time gives the same rows as the batch.
        for (k, s) in refs.iter().enumerate() {
            let one = fast.forward(std::slice::from_ref(s)).unwrap();
            let d = one
                .iter()
                .zip(&got[k * c.hidden_size..])
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(d / scale < 1e-5, "sequence {k} alone differs by {d}");
        }
    }

    #[test]
    fn rejects_out_of_range_ids_and_lengths() {
        let dev = Device::Cpu;
        let c = tiny_config();
        let fast = BertCpu::load(
            VarBuilder::from_tensors(tiny_weights(&c, &dev), DType::F32, &dev),
            &c,
        )
        .unwrap();
        assert!(fast.forward(&[&[1, 50, 2]]).is_err());
        assert!(fast.forward_one_worker(&[&[1, 50, 2]]).is_err());
        let long = vec![1u32; 41];
        assert!(fast.forward(&[&long]).is_err());
        assert_eq!(fast.forward(&[&[]]).unwrap(), vec![0.0; 32]);
    }
}
