//! EfficientNet-Lite (Lite0 by default) as plain candle structs: `load(vb)` + `forward`.
//!
//! Architecture facts that differ from "EfficientNet" as most code knows it: no squeeze-excite,
//! ReLU6 everywhere, batch-norm eps 1e-3, and TensorFlow "SAME" padding, which is asymmetric on
//! stride 2 (the extra row/column goes after). Weight names follow lukemelas' PyTorch port
//! (`_conv_stem`, `_blocks.N._expand_conv`, ...).
//!
//! Batch norms are folded into the preceding convolution at load time: inference only ever
//! needs `conv(x) * scale + shift`, so folding removes a third of the elementwise passes.
//! Depthwise convolutions use [`DepthwiseConv`], a direct kernel: candle's grouped conv2d runs
//! one small convolution per group, which is slow for hundreds of channels.
use candle_core::{CpuStorage, CustomOp1, D, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

/// Batch-norm epsilon of the TensorFlow-trained Lite models.
const BN_EPS: f64 = 1e-3;
/// Stride of each stage; a block opens a new stage exactly when its channel count changes.
const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

pub use sotalign_kernels::efficientnet::same_padding;

/// Fold an eval-mode batch norm into per-output-channel (scale, shift).
fn bn_fold(vb: &VarBuilder, c: usize) -> Result<(Tensor, Tensor)> {
    let gamma = vb.get(c, "weight")?;
    let beta = vb.get(c, "bias")?;
    let mean = vb.get(c, "running_mean")?;
    let var = vb.get(c, "running_var")?;
    let scale = gamma.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
    let shift = (beta - mean.mul(&scale)?)?;
    Ok((scale, shift))
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

/// A k x k convolution (dense, any stride) with its batch norm folded in; "SAME" padded.
#[derive(Debug, Clone)]
pub(super) struct ConvBn {
    pub(super) weight: Tensor,
    pub(super) bias: Tensor,
    pub(super) kernel: usize,
    pub(super) stride: usize,
}

impl ConvBn {
    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<Self> {
        let w = conv.get((cout, cin, kernel, kernel), "weight")?;
        let (scale, shift) = bn_fold(&bn, cout)?;
        let weight = w.broadcast_mul(&scale.reshape((cout, 1, 1, 1))?)?;
        Ok(Self {
            weight,
            bias: shift.reshape((1, cout, 1, 1))?,
            kernel,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (pt, pb) = same_padding(h, self.kernel, self.stride);
        let (pl, pr) = same_padding(w, self.kernel, self.stride);
        let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        x.conv2d(&self.weight, 0, self.stride, 1, 1)?
            .broadcast_add(&self.bias)
    }
}

/// A 1x1 convolution with folded batch norm, computed as one matmul per image.
#[derive(Debug, Clone)]
pub(super) struct PointwiseBn {
    /// (cout, cin)
    pub(super) weight: Tensor,
    /// (cout, 1)
    pub(super) bias: Tensor,
}

impl PointwiseBn {
    fn load(conv: VarBuilder, bn: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let w = conv
            .get((cout, cin, 1, 1), "weight")?
            .reshape((cout, cin))?;
        let (scale, shift) = bn_fold(&bn, cout)?;
        Ok(Self {
            weight: w.broadcast_mul(&scale.reshape((cout, 1))?)?,
            bias: shift.reshape((cout, 1))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let cout = self.weight.dim(0)?;
        let flat = x.reshape((n, c, h * w))?;
        let y = self
            .weight
            .broadcast_left(n)?
            .matmul(&flat)?
            .broadcast_add(&self.bias)?;
        y.reshape((n, cout, h, w))
    }
}

/// Depthwise k x k convolution with folded batch norm, "SAME" padding and optional ReLU6,
/// as one fused CPU kernel (rayon over image-channel planes). On other devices it falls back
/// to candle's grouped conv2d.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// (c, k*k) folded weights, host copy for the CPU kernel.
    pub(super) host_weight: Vec<f32>,
    pub(super) host_bias: Vec<f32>,
    /// (c, 1, k, k) folded weights for the generic path.
    weight: Tensor,
    bias: Tensor,
    pub(super) channels: usize,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    relu6: bool,
}

impl DepthwiseConv {
    /// Build from unfolded weights (c,1,k,k) and per-channel (scale, shift).
    pub fn new(
        weight: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        stride: usize,
        relu6: bool,
    ) -> Result<Self> {
        let (c, one, k, k2) = weight.dims4()?;
        if one != 1 || k != k2 {
            candle_core::bail!(
                "depthwise weight must be (c,1,k,k), got {:?}",
                weight.shape()
            );
        }
        let weight = weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?;
        let host_weight = super::host_f32(&weight)?;
        let host_bias = super::host_f32(&shift)?;
        Ok(Self {
            host_weight,
            host_bias,
            bias: shift.reshape((1, c, 1, 1))?,
            weight,
            channels: c,
            kernel: k,
            stride,
            relu6,
        })
    }

    fn load(
        conv: VarBuilder,
        bn: VarBuilder,
        c: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<Self> {
        let w = conv.get((c, 1, kernel, kernel), "weight")?;
        let (scale, shift) = bn_fold(&bn, c)?;
        Self::new(&w, &scale, &shift, stride, true)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            return x.apply_op1_no_bwd(self);
        }
        let (_, _, h, w) = x.dims4()?;
        let (pt, pb) = same_padding(h, self.kernel, self.stride);
        let (pl, pr) = same_padding(w, self.kernel, self.stride);
        let x = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
        let y = x
            .conv2d(&self.weight, 0, self.stride, 1, self.channels)?
            .broadcast_add(&self.bias)?;
        if self.relu6 { relu6(&y) } else { Ok(y) }
    }
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv-same"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("depthwise conv: f32 input required")
        };
        let (n, c, h, w) = layout.shape().dims4()?;
        if c != self.channels {
            candle_core::bail!(
                "depthwise conv: {c} input channels, weights for {}",
                self.channels
            );
        }
        let src = match layout.contiguous_offsets() {
            Some((a, b)) => &data[a..b],
            None => candle_core::bail!("depthwise conv: contiguous input required"),
        };
        let (k, s) = (self.kernel, self.stride);
        let (pt, _) = same_padding(h, k, s);
        let (pl, _) = same_padding(w, k, s);
        let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, o)| {
                let ch = plane % c;
                let inp = &src[plane * h * w..(plane + 1) * h * w];
                let wk = &self.host_weight[ch * k * k..(ch + 1) * k * k];
                let b = self.host_bias[ch];
                for oy in 0..oh {
                    let orow = &mut o[oy * ow..(oy + 1) * ow];
                    orow.iter_mut().for_each(|v| *v = b);
                    for ky in 0..k {
                        let iy = (oy * s + ky) as isize - pt as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let irow = &inp[iy as usize * w..(iy as usize + 1) * w];
                        for kx in 0..k {
                            let wv = wk[ky * k + kx];
                            // Output columns whose input column ox*s + kx - pl lies inside the row.
                            let lo = pl.saturating_sub(kx).div_ceil(s);
                            let hi = ((w + pl).saturating_sub(kx)).div_ceil(s).min(ow);
                            if hi <= lo {
                                continue;
                            }
                            if s == 1 {
                                let start = lo + kx - pl;
                                for (ov, iv) in
                                    orow[lo..hi].iter_mut().zip(&irow[start..start + (hi - lo)])
                                {
                                    *ov += wv * iv;
                                }
                            } else {
                                for (ox, ov) in orow.iter_mut().enumerate().take(hi).skip(lo) {
                                    *ov += wv * irow[ox * s + kx - pl];
                                }
                            }
                        }
                    }
                    if self.relu6 {
                        orow.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[n, c, oh, ow])))
    }
}

/// One MBConv block without squeeze-excite: [expand 1x1] -> depthwise kxk -> project 1x1.
#[derive(Debug, Clone)]
pub(super) struct MbConv {
    pub(super) expand: Option<PointwiseBn>,
    pub(super) depthwise: DepthwiseConv,
    pub(super) project: PointwiseBn,
    pub(super) residual: bool,
}

impl MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        if let Some(e) = &self.expand {
            h = relu6(&e.forward(&h)?)?;
        }
        h = self.depthwise.forward(&h.contiguous()?)?;
        h = self.project.forward(&h)?;
        if self.residual { h + x } else { Ok(h) }
    }
}

/// EfficientNet-Lite: stem, MBConv blocks, 1x1 head to 1280 channels, pooled feature, classifier.
#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    pub(super) stem: ConvBn,
    pub(super) blocks: Vec<MbConv>,
    pub(super) head: PointwiseBn,
    fc: candle_nn::Linear,
    feature_dim: usize,
}

impl EfficientNetLite {
    /// Load from lukemelas-named weights. Block shapes (expansion, kernel, channels) are read
    /// from the weights themselves, so Lite1-4 load too; strides come from the stage layout.
    pub fn load(vb: VarBuilder) -> Result<Self> {
        let stem_out = Self::dim_of(&vb.pp("_conv_stem"), 0)?;
        let stem = ConvBn::load(vb.pp("_conv_stem"), vb.pp("_bn0"), 3, stem_out, 3, 2)?;
        let mut blocks = Vec::new();
        let mut cin = stem_out;
        let mut stage = 0usize;
        let mut i = 0usize;
        while vb.contains_tensor(&format!("_blocks.{i}._depthwise_conv.weight")) {
            let b = vb.pp(format!("_blocks.{i}"));
            let has_expand = b.contains_tensor("_expand_conv.weight");
            let mid = Self::dim_of(&b.pp("_depthwise_conv"), 0)?;
            let kernel = Self::dim_of(&b.pp("_depthwise_conv"), 2)?;
            let cout = Self::dim_of(&b.pp("_project_conv"), 0)?;
            let expand = if has_expand {
                Some(PointwiseBn::load(
                    b.pp("_expand_conv"),
                    b.pp("_bn0"),
                    cin,
                    mid,
                )?)
            } else {
                None
            };
            let opens_stage = cout != cin || i == 0;
            if opens_stage && i > 0 {
                stage += 1;
            }
            let stride = if opens_stage {
                *STAGE_STRIDES.get(stage).unwrap_or(&1)
            } else {
                1
            };
            let depthwise =
                DepthwiseConv::load(b.pp("_depthwise_conv"), b.pp("_bn1"), mid, kernel, stride)?;
            let project = PointwiseBn::load(b.pp("_project_conv"), b.pp("_bn2"), mid, cout)?;
            blocks.push(MbConv {
                expand,
                depthwise,
                project,
                residual: stride == 1 && cin == cout,
            });
            cin = cout;
            i += 1;
        }
        if blocks.is_empty() {
            candle_core::bail!("no `_blocks.N` weights found: not an EfficientNet state dict");
        }
        let feature_dim = Self::dim_of(&vb.pp("_conv_head"), 0)?;
        let head = PointwiseBn::load(vb.pp("_conv_head"), vb.pp("_bn1"), cin, feature_dim)?;
        let classes = Self::dim_of(&vb.pp("_fc"), 0)?;
        let fc = candle_nn::linear(feature_dim, classes, vb.pp("_fc"))?;
        Ok(Self {
            stem,
            blocks,
            head,
            fc,
            feature_dim,
        })
    }

    /// Size of dimension `d` of `<prefix>.weight`, read without knowing the full shape.
    fn dim_of(vb: &VarBuilder, d: usize) -> Result<usize> {
        let t = vb.get_unchecked("weight")?;
        t.dim(d)
    }

    pub fn feature_dim(&self) -> usize {
        self.feature_dim
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Multiply-accumulates of one forward pass (features + classifier) at `size` x `size`,
    /// from the loaded weight shapes: what the FLOP bound of a benchmark is computed from.
    pub fn macs(&self, size: usize) -> u64 {
        let dims = |t: &Tensor| t.dims().to_vec();
        let mut hw = size.div_ceil(self.stem.stride);
        let sw = dims(&self.stem.weight);
        let mut total = (sw[0] * sw[1] * sw[2] * sw[3] * hw * hw) as u64;
        for b in &self.blocks {
            if let Some(e) = &b.expand {
                let w = dims(&e.weight);
                total += (w[0] * w[1] * hw * hw) as u64;
            }
            hw = hw.div_ceil(b.depthwise.stride);
            total +=
                (b.depthwise.channels * b.depthwise.kernel * b.depthwise.kernel * hw * hw) as u64;
            let w = dims(&b.project.weight);
            total += (w[0] * w[1] * hw * hw) as u64;
        }
        let w = dims(&self.head.weight);
        total += (w[0] * w[1] * hw * hw) as u64;
        let fc = dims(self.fc.weight());
        total + (fc[0] * fc[1]) as u64
    }

    /// Pooled features (n, 1280): global average of the head's ReLU6 output.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = relu6(&self.stem.forward(x)?)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        let h = relu6(&self.head.forward(&h)?)?;
        h.flatten_from(2)?.mean(D::Minus1)
    }

    /// ImageNet logits (n, 1000) from pooled features.
    pub fn logits(&self, features: &Tensor) -> Result<Tensor> {
        self.fc.forward(features)
    }

    /// Both features and logits.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let f = self.features(x)?;
        let l = self.logits(&f)?;
        Ok((f, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_padding_matches_tensorflow() {
        // stride 2, k 3, even input: one pixel after only.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        // stride 2, k 5, 112 -> 56: total 3 = 1 before, 2 after.
        assert_eq!(same_padding(112, 5, 2), (1, 2));
        // stride 1: symmetric.
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 3, 2), (1, 1));
    }

    /// The fused kernel must equal candle's grouped conv2d on explicitly padded input.
    #[test]
    fn depthwise_kernel_matches_grouped_conv() {
        let dev = Device::Cpu;
        for (k, s, h, w) in [
            (3, 1, 9, 7),
            (3, 2, 8, 8),
            (5, 2, 9, 10),
            (5, 1, 6, 5),
            (5, 1, 1, 1),
            (5, 2, 2, 3),
        ] {
            let c = 4;
            let x = Tensor::randn(0f32, 1., (2, c, h, w), &dev).unwrap();
            let wt = Tensor::randn(0f32, 1., (c, 1, k, k), &dev).unwrap();
            let scale = Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &dev).unwrap();
            let shift = Tensor::new(&[0.1f32, -0.2, 0.0, 0.3], &dev).unwrap();
            let dw = DepthwiseConv::new(&wt, &scale, &shift, s, false).unwrap();
            let got = dw.forward(&x).unwrap();
            let (pt, pb) = same_padding(h, k, s);
            let (pl, pr) = same_padding(w, k, s);
            let xp = x
                .pad_with_zeros(2, pt, pb)
                .unwrap()
                .pad_with_zeros(3, pl, pr)
                .unwrap();
            let wf = wt
                .broadcast_mul(&scale.reshape((c, 1, 1, 1)).unwrap())
                .unwrap();
            let want = xp
                .conv2d(&wf, 0, s, 1, c)
                .unwrap()
                .broadcast_add(&shift.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "k{k} s{s} {h}x{w}");
            let diff = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "k{k} s{s} {h}x{w}: max diff {diff}");
        }
    }
}
