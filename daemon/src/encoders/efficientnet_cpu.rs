//! EfficientNet-Lite on the CPU, channels-last: `load(vb)` (or
//! [`EfficientNetLiteCpu::from_model`]) and `features`. Same weights, same folded batch norms, same numbers as the candle model in
//! [`super::efficientnet`], which stays the implementation for every other device and the
//! reference this one is tested against.
//!
//! Why a second implementation: ~95 % of the network's multiply-adds are 1x1 convolutions. Kept
//! channels-last (NHWC), a 1x1 convolution over an image is one row-major product
//! (pixels x c_in) * (c_in x c_out), so it goes to faer's gemm in a single call with its bias
//! (and residual) already in the output; the ReLU6 after it is applied by whichever kernel reads
//! it next. Depthwise convolutions are a direct kernel that walks channels contiguously (one
//! vector register per 16 channels). Images are independent: each rayon worker runs whole images
//! with a single-threaded gemm, so the working set of one image stays in its core's caches.
use std::sync::{Mutex, PoisonError};

use candle_core::Tensor;
use candle_nn::VarBuilder;
use faer::Par;
use rayon::prelude::*;

use super::cpu::{dispatch, fill_rows, gemm_acc_bt, madd};
use super::efficientnet::{EfficientNetLite, same_padding};

/// A convolution as a matrix: `weight` (c_out x taps*c_in) row-major, `bias` (c_out).
#[derive(Debug, Clone)]
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
}

impl Dense {
    fn new(weight: &Tensor, bias: &Tensor) -> candle_core::Result<Self> {
        let cout = weight.dim(0)?;
        let weight = host(weight)?;
        let bias = host(bias)?;
        if bias.len() != cout || weight.len() % cout != 0 {
            candle_core::bail!(
                "dense layer: {} weights, {} biases",
                weight.len(),
                bias.len()
            );
        }
        Ok(Self {
            cin: weight.len() / cout,
            weight,
            bias,
            cout,
        })
    }
}

/// Depthwise k x k convolution, weights tap-major (k*k x c) so a tap's channels are contiguous.
#[derive(Debug, Clone)]
struct Depthwise {
    weight: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
}

#[derive(Debug, Clone)]
struct Block {
    expand: Option<Dense>,
    depthwise: Depthwise,
    project: Dense,
    residual: bool,
}

/// EfficientNet-Lite features on the CPU, channels-last.
#[derive(Debug)]
pub struct EfficientNetLiteCpu {
    /// Stem as a (c_out x c_in*k*k) matrix over im2col rows ordered (c_in, ky, kx).
    stem: Dense,
    stem_kernel: usize,
    stem_stride: usize,
    blocks: Vec<Block>,
    head: Dense,
    /// Buffers kept between calls: fresh ones for every batch cost page faults and zeroing of
    /// tens of MB.
    pool: Mutex<Vec<Scratch>>,
}

fn host(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?
        .to_device(&candle_core::Device::Cpu)?
        .to_vec1::<f32>()
}

/// Per-worker buffers, each large enough for the largest activation of the network.
#[derive(Default)]
struct Scratch {
    /// Input side these buffers were sized for.
    size: usize,
    act: Vec<f32>,
    mid: Vec<f32>,
    dw: Vec<f32>,
    col: Vec<f32>,
}

impl EfficientNetLiteCpu {
    /// Load lukemelas-named weights (as [`EfficientNetLite::load`]).
    pub fn load(vb: VarBuilder) -> candle_core::Result<Self> {
        Self::from_model(&EfficientNetLite::load(vb)?)
    }

    /// Host copies of an already loaded (and folded) candle model's layers.
    pub fn from_model(m: &EfficientNetLite) -> candle_core::Result<Self> {
        let stem = Dense::new(&m.stem.weight, &m.stem.bias)?;
        let mut blocks = Vec::with_capacity(m.blocks.len());
        for b in &m.blocks {
            let expand = match &b.expand {
                Some(e) => Some(Dense::new(&e.weight, &e.bias)?),
                None => None,
            };
            let d = &b.depthwise;
            let (c, kk) = (d.channels, d.kernel * d.kernel);
            if d.host_weight.len() != c * kk || d.host_bias.len() != c {
                candle_core::bail!("depthwise layer: unexpected weight size");
            }
            // (c, k*k) -> (k*k, c)
            let mut weight = vec![0f32; c * kk];
            for ch in 0..c {
                for t in 0..kk {
                    weight[t * c + ch] = d.host_weight[ch * kk + t];
                }
            }
            blocks.push(Block {
                expand,
                depthwise: Depthwise {
                    weight,
                    bias: d.host_bias.clone(),
                    channels: c,
                    kernel: d.kernel,
                    stride: d.stride,
                },
                project: Dense::new(&b.project.weight, &b.project.bias)?,
                residual: b.residual,
            });
        }
        Ok(Self {
            stem,
            stem_kernel: m.stem.kernel,
            stem_stride: m.stem.stride,
            blocks,
            head: Dense::new(&m.head.weight, &m.head.bias)?,
            pool: Mutex::new(Vec::new()),
        })
    }

    pub fn feature_dim(&self) -> usize {
        self.head.cout
    }

    /// Input channels the stem expects.
    fn in_channels(&self) -> usize {
        self.stem.cin / (self.stem_kernel * self.stem_kernel)
    }

    /// Buffers for `size` inputs from the pool (or new ones); they go back when dropped.
    fn borrow_scratch(&self, size: usize) -> Pooled<'_> {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        let s = match pool.iter().position(|s| s.size == size) {
            Some(i) => pool.swap_remove(i),
            None => self.scratch(size),
        };
        Pooled {
            s,
            pool: &self.pool,
        }
    }

    fn scratch(&self, size: usize) -> Scratch {
        let side = size.div_ceil(self.stem_stride);
        let mut hw = side * side;
        let mut largest = hw * self.stem.cout;
        let mut side = side;
        for b in &self.blocks {
            largest = largest.max(hw * b.depthwise.channels);
            side = side.div_ceil(b.depthwise.stride);
            hw = side * side;
            largest = largest.max(hw * b.depthwise.channels.max(b.project.cout));
        }
        largest = largest.max(hw * self.head.cout);
        let col = size.div_ceil(self.stem_stride).pow(2) * self.stem.cin;
        Scratch {
            size,
            act: vec![0.0; largest],
            mid: vec![0.0; largest],
            dw: vec![0.0; largest],
            col: vec![0.0; col],
        }
    }

    /// Pooled features (n x feature_dim, row-major) of `n` images given as one contiguous
    /// NCHW buffer of `size` x `size` inputs (exactly what the candle model's `features` takes).
    pub fn features(&self, input: &[f32], n: usize, size: usize) -> candle_core::Result<Vec<f32>> {
        let per_image = self.in_channels() * size * size;
        if input.len() != n * per_image {
            candle_core::bail!(
                "efficientnet input: {} values for {n} images of {}x{size}x{size}",
                input.len(),
                self.in_channels()
            );
        }
        let dim = self.feature_dim();
        let mut out = vec![0f32; n * dim];
        if n == 0 {
            return Ok(out);
        }
        let threads = rayon::current_num_threads();
        if n < threads {
            // Too few images to give each worker one: parallelise inside the products instead.
            let mut s = self.borrow_scratch(size);
            for (x, o) in input.chunks_exact(per_image).zip(out.chunks_exact_mut(dim)) {
                self.image(x, size, s.get(), o, Par::rayon(0));
            }
        } else {
            input
                .par_chunks_exact(per_image)
                .zip(out.par_chunks_exact_mut(dim))
                .with_min_len(1)
                .for_each_init(
                    || self.borrow_scratch(size),
                    |s, (x, o)| self.image(x, size, s.get(), o, Par::Seq),
                );
        }
        Ok(out)
    }

    /// One image (CHW) -> its pooled features.
    fn image(&self, x: &[f32], size: usize, s: &mut Scratch, out: &mut [f32], par: Par) {
        let cin = self.in_channels();
        let (k, st) = (self.stem_kernel, self.stem_stride);
        let (mut h, mut w) = (size.div_ceil(st), size.div_ceil(st));
        let col = &mut s.col[..h * w * self.stem.cin];
        im2col(x, cin, size, k, st, col);
        let mut c = self.stem.cout;
        let act = &mut s.act[..h * w * c];
        fill_rows(act, &self.stem.bias);
        gemm_acc_bt(act, col, &self.stem.weight, (h * w, self.stem.cin, c), par);
        // `act` holds a convolution output whose ReLU6 has not been applied yet.
        let mut act_pending_relu = true;

        for b in &self.blocks {
            let d = &b.depthwise;
            let (oh, ow) = (h.div_ceil(d.stride), w.div_ceil(d.stride));
            let dw_out = &mut s.dw[..oh * ow * d.channels];
            match &b.expand {
                Some(e) => {
                    if act_pending_relu {
                        relu6_inplace(&mut s.act[..h * w * c]);
                        act_pending_relu = false;
                    }
                    let mid = &mut s.mid[..h * w * e.cout];
                    fill_rows(mid, &e.bias);
                    gemm_acc_bt(mid, &s.act[..h * w * c], &e.weight, (h * w, c, e.cout), par);
                    depthwise(mid, (h, w), d, true, dw_out);
                }
                None => depthwise(&s.act[..h * w * c], (h, w), d, act_pending_relu, dw_out),
            }
            let p = &b.project;
            let act = &mut s.act[..oh * ow * p.cout];
            if b.residual && !act_pending_relu {
                // act already holds the block input: add bias, then the product, in place.
                add_rows(act, &p.bias);
            } else if b.residual {
                relu6_inplace(act);
                add_rows(act, &p.bias);
            } else {
                fill_rows(act, &p.bias);
            }
            gemm_acc_bt(act, dw_out, &p.weight, (oh * ow, d.channels, p.cout), par);
            act_pending_relu = false;
            (h, w, c) = (oh, ow, p.cout);
        }

        let hd = &self.head;
        let head = &mut s.mid[..h * w * hd.cout];
        fill_rows(head, &hd.bias);
        gemm_acc_bt(
            head,
            &s.act[..h * w * c],
            &hd.weight,
            (h * w, c, hd.cout),
            par,
        );
        relu6_mean_rows(head, out);
    }
}

/// A [`Scratch`] on loan from a model's pool.
struct Pooled<'a> {
    s: Scratch,
    pool: &'a Mutex<Vec<Scratch>>,
}

impl Pooled<'_> {
    fn get(&mut self) -> &mut Scratch {
        &mut self.s
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let s = std::mem::take(&mut self.s);
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        // Keep at most one set per worker.
        if pool.len() < rayon::current_num_threads().max(1) {
            pool.push(s);
        }
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Scratch {{ size: {}, floats: {} }}",
            self.size,
            3 * self.act.len() + self.col.len()
        )
    }
}

/// Stem im2col: CHW image (c x size x size) -> rows of (c, ky, kx) patches, one per output
/// pixel, TF "SAME" padded with zeros.
fn im2col(x: &[f32], c: usize, size: usize, k: usize, stride: usize, col: &mut [f32]) {
    let (pt, _) = same_padding(size, k, stride);
    let o = size.div_ceil(stride);
    let width = c * k * k;
    for oy in 0..o {
        for ox in 0..o {
            let row = &mut col[(oy * o + ox) * width..][..width];
            for ch in 0..c {
                let plane = &x[ch * size * size..][..size * size];
                for ky in 0..k {
                    let iy = (oy * stride + ky) as isize - pt as isize;
                    for kx in 0..k {
                        let ix = (ox * stride + kx) as isize - pt as isize;
                        row[(ch * k + ky) * k + kx] =
                            if iy >= 0 && ix >= 0 && (iy as usize) < size && (ix as usize) < size {
                                plane[iy as usize * size + ix as usize]
                            } else {
                                0.0
                            };
                    }
                }
            }
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

fn relu6_inplace(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0));
}

/// `out[c] = mean over rows of relu6(x[row, c])`.
fn relu6_mean_rows(x: &[f32], out: &mut [f32]) {
    let c = out.len();
    out.fill(0.0);
    let rows = x.len() / c;
    for row in x.chunks_exact(c) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v.clamp(0.0, 6.0);
        }
    }
    let inv = 1.0 / rows.max(1) as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// Depthwise convolution, channels-last, TF "SAME" padding, bias and ReLU6 on the output;
/// `relu_in` applies ReLU6 to each input value as it is read (the producer left it pending).
fn depthwise(x: &[f32], (h, w): (usize, usize), d: &Depthwise, relu_in: bool, y: &mut [f32]) {
    if relu_in {
        depthwise_relu_in(x, h, w, d, y)
    } else {
        depthwise_plain(x, h, w, d, y)
    }
}

dispatch!(fn depthwise_relu_in(x: &[f32], h: usize, w: usize, d: &Depthwise, y: &mut [f32]) => depthwise_relu_in_body);
dispatch!(fn depthwise_plain(x: &[f32], h: usize, w: usize, d: &Depthwise, y: &mut [f32]) => depthwise_plain_body);

#[inline(always)]
fn depthwise_relu_in_body<const FMA: bool>(
    x: &[f32],
    h: usize,
    w: usize,
    d: &Depthwise,
    y: &mut [f32],
) {
    depthwise_body::<FMA, true>(x, h, w, d, y)
}

#[inline(always)]
fn depthwise_plain_body<const FMA: bool>(
    x: &[f32],
    h: usize,
    w: usize,
    d: &Depthwise,
    y: &mut [f32],
) {
    depthwise_body::<FMA, false>(x, h, w, d, y)
}

#[inline(always)]
fn depthwise_body<const FMA: bool, const RELU_IN: bool>(
    x: &[f32],
    h: usize,
    w: usize,
    d: &Depthwise,
    y: &mut [f32],
) {
    let (c, k, s) = (d.channels, d.kernel, d.stride);
    let (pt, _) = same_padding(h, k, s);
    let (pl, _) = same_padding(w, k, s);
    let (oh, ow) = (h.div_ceil(s), w.div_ceil(s));
    for oy in 0..oh {
        // Taps whose input row oy*s + ky - pt lies inside the image.
        let ky_lo = pt.saturating_sub(oy * s);
        let ky_hi = k.min((h + pt).saturating_sub(oy * s));
        for ox in 0..ow {
            let kx_lo = pl.saturating_sub(ox * s);
            let kx_hi = k.min((w + pl).saturating_sub(ox * s));
            let out = &mut y[(oy * ow + ox) * c..][..c];
            let taps = Taps {
                x,
                w,
                c,
                k,
                base_y: oy * s,
                base_x: ox * s,
                pt,
                pl,
                ky: (ky_lo, ky_hi),
                kx: (kx_lo, kx_hi),
            };
            let mut c0 = 0;
            while c0 + 64 <= c {
                channel_block::<64, FMA, RELU_IN>(&taps, &d.weight, &d.bias, c0, out);
                c0 += 64;
            }
            while c0 + 16 <= c {
                channel_block::<16, FMA, RELU_IN>(&taps, &d.weight, &d.bias, c0, out);
                c0 += 16;
            }
            while c0 < c {
                channel_block::<1, FMA, RELU_IN>(&taps, &d.weight, &d.bias, c0, out);
                c0 += 1;
            }
        }
    }
}

/// Where one output pixel's taps read from.
struct Taps<'a> {
    x: &'a [f32],
    w: usize,
    c: usize,
    k: usize,
    base_y: usize,
    base_x: usize,
    pt: usize,
    pl: usize,
    ky: (usize, usize),
    kx: (usize, usize),
}

/// `B` channels from `c0` of one output pixel, accumulated in registers over all taps.
#[inline(always)]
fn channel_block<const B: usize, const FMA: bool, const RELU_IN: bool>(
    t: &Taps,
    weight: &[f32],
    bias: &[f32],
    c0: usize,
    out: &mut [f32],
) {
    let mut acc = [0f32; B];
    acc.copy_from_slice(&bias[c0..c0 + B]);
    for ky in t.ky.0..t.ky.1 {
        let iy = t.base_y + ky - t.pt;
        for kx in t.kx.0..t.kx.1 {
            let ix = t.base_x + kx - t.pl;
            let xs = &t.x[(iy * t.w + ix) * t.c + c0..][..B];
            let ws = &weight[(ky * t.k + kx) * t.c + c0..][..B];
            for j in 0..B {
                let v = if RELU_IN {
                    xs[j].clamp(0.0, 6.0)
                } else {
                    xs[j]
                };
                acc[j] = madd::<FMA>(v, ws[j], acc[j]);
            }
        }
    }
    for (o, a) in out[c0..c0 + B].iter_mut().zip(acc) {
        *o = a.clamp(0.0, 6.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
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
        let fast = EfficientNetLiteCpu::from_model(&reference).unwrap();
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

    #[test]
    fn wrong_input_length_is_an_error() {
        let dev = Device::Cpu;
        let vb = VarBuilder::from_tensors(tiny_weights(&dev), DType::F32, &dev);
        let fast = EfficientNetLiteCpu::load(vb).unwrap();
        assert!(fast.features(&[0.0; 10], 1, 8).is_err());
    }
}
