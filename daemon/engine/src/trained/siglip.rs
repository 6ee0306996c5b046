//! The sigmoid (SigLIP) loss on paired embeddings.
//!
//! Every (image i, text j) cell is an independent binary decision: `z_ij = +1` when pair i and
//! pair j carry the same caption (`pair_groups` equal), else `-1`, and
//! `loss = -(1/n) sum_ij log sigmoid(z_ij (e^t cos_ij + b))` with a learnable log logit scale
//! `t` (init ln 20) and bias `b` (init -10), as in PROTOCOL.md. Why sigmoid and not softmax
//! (InfoNCE): with a few dozen pairs and duplicated captions, per-cell labels handle several
//! positives per row naturally and the loss does not depend on batch-level normalisation. The
//! same per-cell form lets an annotator's rejections enter as extra `z = -1` cells
//! ([`siglip_negatives_loss`]), which a softmax over a batch could not take.
use candle_core::{Device, Tensor};

/// The +-1 label matrix from caption groups.
pub fn label_matrix(groups: &[u32], device: &Device) -> candle_core::Result<Tensor> {
    let n = groups.len();
    let mut z = Vec::with_capacity(n * n);
    for gi in groups {
        for gj in groups {
            z.push(if gi == gj { 1.0f32 } else { -1.0 });
        }
    }
    Tensor::from_vec(z, (n, n), device)
}

/// Numerically stable softplus: log(1 + e^x) = relu(x) + log(1 + e^-|x|).
pub fn softplus(x: &Tensor) -> candle_core::Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    x.relu()? + tail
}

/// SigLIP loss of unit-norm embeddings `ex` (n x D), `ey` (n x D) against labels `z` (n x n),
/// with scalar (rank-0 or 1-element) `log_scale` and `bias`. Mean over rows (divides by n).
pub fn siglip_loss(
    ex: &Tensor,
    ey: &Tensor,
    z: &Tensor,
    log_scale: &Tensor,
    bias: &Tensor,
) -> candle_core::Result<Tensor> {
    let n = ex.dim(0)?;
    let cos = ex.matmul(&ey.t()?)?;
    let logits = cos.broadcast_mul(&log_scale.exp()?)?.broadcast_add(bias)?;
    // -log sigmoid(z * logits) = softplus(-z * logits)
    let nll = softplus(&(z * logits)?.neg()?)?;
    nll.sum_all()? / n as f64
}

/// The SigLIP term of rejected pairs: each (row i of `exn`, row i of `eyn`) is one more cell
/// with label `z = -1`, i.e. `sum_i softplus(e^t cos_i + b)`, divided by `n_rows` (the number of
/// pairs, the same normaliser as [`siglip_loss`], so a rejected pair weighs exactly what one
/// off-diagonal cell of the pair matrix weighs).
pub fn siglip_negatives_loss(
    exn: &Tensor,
    eyn: &Tensor,
    log_scale: &Tensor,
    bias: &Tensor,
    n_rows: usize,
) -> candle_core::Result<Tensor> {
    let cos = (exn * eyn)?.sum(1)?;
    let logits = cos.broadcast_mul(&log_scale.exp()?)?.broadcast_add(bias)?;
    softplus(&logits)?.sum_all()? / n_rows.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a direct f64 evaluation of the formula.
    #[test]
    fn matches_direct_formula() {
        let dev = Device::Cpu;
        let ex = [[0.6f32, 0.8], [1.0, 0.0], [0.0, 1.0]];
        let ey = [[0.8f32, 0.6], [0.0, 1.0], [0.0, 1.0]];
        let groups = [0u32, 1, 1];
        let (t, b) = (20f64.ln(), -10.0f64);
        let mut want = 0.0;
        for i in 0..3 {
            for j in 0..3 {
                let c = (ex[i][0] * ey[j][0] + ex[i][1] * ey[j][1]) as f64;
                let z = if groups[i] == groups[j] { 1.0 } else { -1.0 };
                let l = z * (t.exp() * c + b);
                want += (1.0 + (-l).exp()).ln();
            }
        }
        want /= 3.0;
        let tx = Tensor::new(&ex, &dev).unwrap();
        let ty = Tensor::new(&ey, &dev).unwrap();
        let z = label_matrix(&groups, &dev).unwrap();
        let ls = Tensor::new(&[t as f32], &dev).unwrap();
        let bs = Tensor::new(&[b as f32], &dev).unwrap();
        let got = siglip_loss(&tx, &ty, &z, &ls, &bs)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-4 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    /// A rejected pair adds exactly the -1 cell of the direct formula.
    #[test]
    fn negatives_match_direct_formula() {
        let dev = Device::Cpu;
        let exn = [[0.6f32, 0.8], [1.0, 0.0]];
        let eyn = [[0.8f32, 0.6], [0.0, 1.0]];
        let (t, b) = (20f64.ln(), -10.0f64);
        let mut want = 0.0;
        for i in 0..2 {
            let c = (exn[i][0] * eyn[i][0] + exn[i][1] * eyn[i][1]) as f64;
            let l = -(t.exp() * c + b);
            want += (1.0 + (-l).exp()).ln();
        }
        want /= 5.0;
        let ls = Tensor::new(&[t as f32], &dev).unwrap();
        let bs = Tensor::new(&[b as f32], &dev).unwrap();
        let got = siglip_negatives_loss(
            &Tensor::new(&exn, &dev).unwrap(),
            &Tensor::new(&eyn, &dev).unwrap(),
            &ls,
            &bs,
            5,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }

    #[test]
    fn softplus_is_stable_for_large_inputs() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[-200f32, -1.0, 0.0, 1.0, 200.0], &dev).unwrap();
        let y = softplus(&x).unwrap().to_vec1::<f32>().unwrap();
        let want = [
            0.0f64,
            (1.0f64 + (-1.0f64).exp()).ln(),
            2f64.ln(),
            (1.0f64 + 1f64.exp()).ln(),
            200.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
