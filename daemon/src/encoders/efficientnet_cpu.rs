//! The CPU EfficientNet-Lite ([`sotalign_kernels::efficientnet::EfficientNetLite`], channels-last)
//! built from an already loaded (and batch-norm-folded) candle model, so the same checkpoint
//! feeds both. The tests here hold the kernel to the candle model.
use candle_core::Tensor;
use sotalign_kernels::efficientnet::{Block, Dense, Depthwise, EfficientNetLite as Kernel};

use super::efficientnet::EfficientNetLite;
use super::{EncoderError, host_f32};

fn dense(weight: &Tensor, bias: &Tensor) -> Result<Dense, EncoderError> {
    Ok(Dense::new(host_f32(weight)?, host_f32(bias)?)?)
}

/// Host copies of a candle model's layers, as the CPU kernel.
pub fn from_model(m: &EfficientNetLite) -> Result<Kernel, EncoderError> {
    let mut blocks = Vec::with_capacity(m.blocks.len());
    for b in &m.blocks {
        let expand = match &b.expand {
            Some(e) => Some(dense(&e.weight, &e.bias)?),
            None => None,
        };
        let d = &b.depthwise;
        blocks.push(Block {
            expand,
            depthwise: Depthwise::new(&d.host_weight, d.host_bias.clone(), d.kernel, d.stride)?,
            project: dense(&b.project.weight, &b.project.bias)?,
            residual: b.residual,
        });
    }
    Ok(Kernel::new(
        dense(&m.stem.weight, &m.stem.bias)?,
        m.stem.kernel,
        m.stem.stride,
        blocks,
        dense(&m.head.weight, &m.head.bias)?,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;
    use std::collections::HashMap;

    /// A small random EfficientNet-Lite-shaped state dict: stem 8, blocks covering expand / no
    /// expand, k3 / k5, stride 1 / 2, residual / not, head 24.
    fn tiny_weights(dev: &Device) -> HashMap<String, Tensor> {
        struct Gen<'a> {
            t: HashMap<String, Tensor>,
            seed: u64,
            dev: &'a Device,
        }
        impl Gen<'_> {
            fn rnd(&mut self, name: &str, shape: &[usize], lo: f32, hi: f32) {
                self.seed += 1;
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n as u64)
                    .map(|i| {
                        let z = ((i + 1) * 2_654_435_761 + self.seed * 7_919) % 1000;
                        lo + (hi - lo) * z as f32 / 1000.0
                    })
                    .collect();
                let t = Tensor::from_vec(v, shape, self.dev).unwrap();
                self.t.insert(name.to_string(), t);
            }
            fn bn(&mut self, p: &str, c: usize) {
                self.rnd(&format!("{p}.weight"), &[c], 0.5, 1.5);
                self.rnd(&format!("{p}.bias"), &[c], -0.3, 0.3);
                self.rnd(&format!("{p}.running_mean"), &[c], -0.2, 0.2);
                self.rnd(&format!("{p}.running_var"), &[c], 0.5, 2.0);
            }
            fn conv(&mut self, name: &str, shape: &[usize]) {
                let fan: usize = shape[1..].iter().product();
                let a = 1.5 / (fan as f32).sqrt();
                self.rnd(name, shape, -a, a);
            }
        }
        let mut g = Gen {
            t: HashMap::new(),
            seed: 0,
            dev,
        };
        g.conv("_conv_stem.weight", &[8, 3, 3, 3]);
        g.bn("_bn0", 8);
        // (cin, mid, cout, k): block 0 has no expansion (and a residual), the rest expand x3.
        let blocks = [
            (8, 8, 8, 3),
            (8, 24, 12, 3),
            (12, 36, 12, 3),
            (12, 36, 16, 5),
            (16, 48, 16, 5),
            (16, 48, 20, 3),
        ];
        for (i, &(cin, mid, cout, k)) in blocks.iter().enumerate() {
            let p = format!("_blocks.{i}");
            if i > 0 {
                g.conv(&format!("{p}._expand_conv.weight"), &[mid, cin, 1, 1]);
                g.bn(&format!("{p}._bn0"), mid);
            }
            g.conv(&format!("{p}._depthwise_conv.weight"), &[mid, 1, k, k]);
            g.bn(&format!("{p}._bn1"), mid);
            g.conv(&format!("{p}._project_conv.weight"), &[cout, mid, 1, 1]);
            g.bn(&format!("{p}._bn2"), cout);
        }
        g.conv("_conv_head.weight", &[24, 20, 1, 1]);
        g.bn("_bn1", 24);
        g.conv("_fc.weight", &[5, 24]);
        g.rnd("_fc.bias", &[5], -0.1, 0.1);
        g.t
    }
    fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    /// The channels-last path equals the candle model (the reference) on random weights, for
    /// odd and even input sizes, one image (parallel products) and several (parallel images).
    #[test]
    fn nhwc_features_match_candle_model() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(tiny_weights(&dev), DType::F32, &dev);
        let reference = EfficientNetLite::load(vb).unwrap();
        let fast = from_model(&reference).unwrap();
        assert_eq!(fast.feature_dim(), 24);
        for (n, size) in [(1, 33), (3, 32), (5, 17)] {
            let x = Tensor::randn(0f32, 1., (n, 3, size, size), &dev).unwrap();
            let want = reference
                .features(&x)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = fast.features(&flat, n, size).unwrap();
            let d = max_rel_diff(&got, &want);
            assert!(d < 1e-5, "n {n} size {size}: max relative diff {d}");
        }
    }
}
