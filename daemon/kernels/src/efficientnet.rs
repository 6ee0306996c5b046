//! EfficientNet-Lite on the CPU, channels-last: [`EfficientNetLite::new`] from plain layers (batch
//! norms already folded) and [`EfficientNetLite::features`]. The `sotalign` crate builds it from
//! its candle model (`encoders::efficientnet_cpu`), which stays the implementation for every
//! other device and the reference this one is tested against.
//!
//! Why a second implementation: ~95 % of the network's multiply-adds are 1x1 convolutions. Kept
//! channels-last (NHWC), a 1x1 convolution over an image is one row-major product
//! (pixels x c_in) * (c_in x c_out), so it goes to faer's gemm in a single call with its bias
//! (and residual) already in the output; the ReLU6 after it is applied by whichever kernel reads
//! it next. Depthwise convolutions are a direct kernel that walks channels contiguously (one
//! vector register per 16 channels). Images are independent: each rayon worker runs whole images
//! with a single-threaded gemm, so the working set of one image stays in its core's caches.
use std::sync::{Mutex, PoisonError};

use faer::Par;
use rayon::prelude::*;

use crate::KernelError;
use crate::gemm::{add_rows, fill_rows, gemm_acc_bt};
use crate::isa::{dispatch, madd};

/// TensorFlow "SAME" padding (top/left, bottom/right) of one axis.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// A convolution as a matrix: `weight` (c_out x taps*c_in) row-major, `bias` (c_out).
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    cin: usize,
    cout: usize,
}

impl Dense {
    /// `weight` (c_out x c_in*k*k, PyTorch's (c_out, c_in, k, k) flattened), `bias` (c_out).
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Result<Self, KernelError> {
        let cout = bias.len();
        if cout == 0 || weight.is_empty() || !weight.len().is_multiple_of(cout) {
            return Err(KernelError::Shape(format!(
                "dense layer: {} weights, {} biases",
                weight.len(),
                cout
            )));
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
pub struct Depthwise {
    weight: Vec<f32>,
    bias: Vec<f32>,
    channels: usize,
    kernel: usize,
    stride: usize,
}

impl Depthwise {
    /// From PyTorch's layout: `weight` (c, 1, k, k) flattened, `bias` (c).
    pub fn new(
        weight: &[f32],
        bias: Vec<f32>,
        kernel: usize,
        stride: usize,
    ) -> Result<Self, KernelError> {
        let c = bias.len();
        let kk = kernel * kernel;
        if c == 0 || kernel == 0 || stride == 0 || weight.len() != c * kk {
            return Err(KernelError::Shape(format!(
                "depthwise layer: {} weights for {c} channels of {kernel}x{kernel}, stride {stride}",
                weight.len()
            )));
        }
        // (c, k*k) -> (k*k, c)
        let mut tap_major = vec![0f32; c * kk];
        for ch in 0..c {
            for t in 0..kk {
                tap_major[t * c + ch] = weight[ch * kk + t];
            }
        }
        Ok(Self {
            weight: tap_major,
            bias,
            channels: c,
            kernel,
            stride,
        })
    }
}

/// One inverted-residual block: optional 1x1 expansion, depthwise, 1x1 projection.
#[derive(Debug, Clone)]
pub struct Block {
    pub expand: Option<Dense>,
    pub depthwise: Depthwise,
    pub project: Dense,
    /// Add the block's input to its output (same shape, stride 1).
    pub residual: bool,
}

/// EfficientNet-Lite features on the CPU, channels-last.
#[derive(Debug)]
pub struct EfficientNetLite {
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

impl EfficientNetLite {
    /// Stem (a `stem_kernel` x `stem_kernel` convolution with stride `stem_stride`), blocks and
    /// head, each layer's batch norm already folded into its weight and bias. Every layer's
    /// input channels must be the previous layer's output channels.
    pub fn new(
        stem: Dense,
        stem_kernel: usize,
        stem_stride: usize,
        blocks: Vec<Block>,
        head: Dense,
    ) -> Result<Self, KernelError> {
        let taps = stem_kernel * stem_kernel;
        if taps == 0 || stem_stride == 0 || !stem.cin.is_multiple_of(taps) {
            return Err(KernelError::Shape(format!(
                "stem: {} inputs per output is not channels x {stem_kernel}x{stem_kernel}, stride {stem_stride}",
                stem.cin
            )));
        }
        let mut c = stem.cout;
        for (i, b) in blocks.iter().enumerate() {
            let mid = match &b.expand {
                Some(e) if e.cin != c => {
                    return Err(KernelError::Shape(format!(
                        "block {i}: expansion takes {} channels, gets {c}",
                        e.cin
                    )));
                }
                Some(e) => e.cout,
                None => c,
            };
            if b.depthwise.channels != mid || b.project.cin != mid {
                return Err(KernelError::Shape(format!(
                    "block {i}: {mid} channels into a depthwise of {} and a projection of {}",
                    b.depthwise.channels, b.project.cin
                )));
            }
            if b.residual && (b.project.cout != c || b.depthwise.stride != 1) {
                return Err(KernelError::Shape(format!(
                    "block {i}: residual over a change of shape"
                )));
            }
            c = b.project.cout;
        }
        if head.cin != c {
            return Err(KernelError::Shape(format!(
                "head takes {} channels, gets {c}",
                head.cin
            )));
        }
        Ok(Self {
            stem,
            stem_kernel,
            stem_stride,
            blocks,
            head,
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
    /// NCHW buffer of `size` x `size` inputs (PyTorch's layout).
    pub fn features(&self, input: &[f32], n: usize, size: usize) -> Result<Vec<f32>, KernelError> {
        let per_image = self.in_channels() * size * size;
        if size == 0 || input.len() != n * per_image {
            return Err(KernelError::Shape(format!(
                "efficientnet input: {} values for {n} images of {}x{size}x{size}",
                input.len(),
                self.in_channels()
            )));
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

    fn dense(cout: usize, cin: usize, seed: u64) -> Dense {
        let a = 1.5 / (cin as f32).sqrt();
        Dense::new(
            values(cout * cin, -a, a, seed),
            values(cout, -0.3, 0.3, seed + 1),
        )
        .unwrap()
    }

    fn values(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                lo + (hi - lo) * (((i + 1) * 2_654_435_761 + seed * 7_919) % 1000) as f32 / 1000.0
            })
            .collect()
    }

    #[test]
    fn wrong_input_length_and_mismatched_layers_are_errors() {
        let dw = |c: usize| {
            Depthwise::new(&values(c * 9, -0.5, 0.5, 3), values(c, 0.0, 0.1, 4), 3, 1).unwrap()
        };
        let net = EfficientNetLite::new(
            dense(8, 3 * 9, 1),
            3,
            2,
            vec![Block {
                expand: None,
                depthwise: dw(8),
                project: dense(8, 8, 5),
                residual: true,
            }],
            dense(12, 8, 7),
        )
        .unwrap();
        assert_eq!(net.feature_dim(), 12);
        assert!(net.features(&[0.0; 10], 1, 8).is_err());
        let ok = net
            .features(&values(2 * 3 * 9 * 9, -1.0, 1.0, 9), 2, 9)
            .unwrap();
        assert_eq!(ok.len(), 24);
        assert!(ok.iter().all(|v| v.is_finite() && (0.0..=6.0).contains(v)));
        // A head that does not take the last block's channels.
        assert!(EfficientNetLite::new(dense(8, 27, 1), 3, 2, Vec::new(), dense(12, 9, 7)).is_err());
        // A depthwise layer whose weight is not c x k x k.
        assert!(Depthwise::new(&[0.0; 10], vec![0.0; 2], 3, 1).is_err());
    }

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
        assert_eq!(same_padding(8, 3, 1), (1, 1));
    }
}
