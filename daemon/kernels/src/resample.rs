//! The image preprocessing the reference embeddings were made with, in PIL's integer arithmetic:
//! alpha-composite onto white, bicubic resize of the shorter side, centre crop, normalise, CHW.
//!
//! Why our own resampler instead of `image::imageops::resize`: features move measurably with the
//! filter's support and rounding. This one follows PIL's separable convolution (support scaled
//! by the downscale factor, Keys cubic with a = -0.5, 22-bit fixed-point weights, horizontal
//! pass then vertical, each rounded to u8), so our pixels equal PIL's.

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Composite straight-alpha RGBA onto opaque white, with PIL's `alpha_composite` integer
/// arithmetic (7-bit fixed point, rounded division by 255).
pub fn composite_on_white(width: usize, height: usize, rgba: &[u8]) -> Rgb8 {
    const PREC: u32 = 7;
    let mut data = Vec::with_capacity(width * height * 3);
    for px in rgba.chunks_exact(4) {
        let a = px[3] as u32;
        if a == 0 {
            data.extend([255, 255, 255]);
            continue;
        }
        let outa255 = a * 255 + 255 * (255 - a);
        let coef1 = a * 255 * 255 * (1 << PREC) / outa255;
        let coef2 = 255 * (1 << PREC) - coef1;
        for &c in &px[..3] {
            let t = c as u32 * coef1 + 255 * coef2 + (0x80 << PREC);
            data.push(((((t >> 8) + t) >> 8) >> PREC) as u8);
        }
    }
    Rgb8 {
        width,
        height,
        data,
    }
}

/// Keys cubic kernel with a = -0.5 (PIL's BICUBIC).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point precision of the resampling weights (PIL: 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// For each output index: first input index and its fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64)
                .min(in_size as i64)
                .max(xmin as i64) as usize;
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let fixed = w
                .iter()
                .map(|v| {
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    (if s < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize with PIL-compatible bicubic resampling (horizontal pass, then vertical).
pub fn resize_bicubic(img: &Rgb8, out_w: usize, out_h: usize) -> Rgb8 {
    let round = 1i64 << (PRECISION_BITS - 1);
    // Horizontal.
    let tmp = if out_w != img.width {
        let cx = coefficients(img.width, out_w);
        let mut d = vec![0u8; img.height * out_w * 3];
        for y in 0..img.height {
            let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
            for (x, (x0, w)) in cx.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = round;
                    for (k, wk) in w.iter().enumerate() {
                        acc += row[(x0 + k) * 3 + c] as i64 * *wk as i64;
                    }
                    d[(y * out_w + x) * 3 + c] = clip8(acc);
                }
            }
        }
        Rgb8 {
            width: out_w,
            height: img.height,
            data: d,
        }
    } else {
        img.clone()
    };
    if out_h == tmp.height {
        return tmp;
    }
    // Vertical.
    let cy = coefficients(tmp.height, out_h);
    let mut d = vec![0u8; out_h * out_w * 3];
    let stride = out_w * 3;
    for (y, (y0, w)) in cy.iter().enumerate() {
        for i in 0..stride {
            let mut acc = round;
            for (k, wk) in w.iter().enumerate() {
                acc += tmp.data[(y0 + k) * stride + i] as i64 * *wk as i64;
            }
            d[y * stride + i] = clip8(acc);
        }
    }
    Rgb8 {
        width: out_w,
        height: out_h,
        data: d,
    }
}

/// Target size with the shorter side at `short`, the longer scaled and rounded half-to-even.
pub fn short_side_size(w: usize, h: usize, short: usize) -> (usize, usize) {
    if w <= h {
        let nh = ((h as f64) * short as f64 / w as f64).round_ties_even() as usize;
        (short, nh.max(1))
    } else {
        let nw = ((w as f64) * short as f64 / h as f64).round_ties_even() as usize;
        (nw.max(1), short)
    }
}

/// How u8 pixel values become network inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normalize {
    /// EfficientNet-Lite (TensorFlow): `(x - 127) / 128`.
    Centered127,
    /// torchvision style: `(x / 255 - mean) / std` per channel.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

/// Resize (shorter side `resize`, bicubic), centre crop `crop` (floor offsets), normalise, CHW.
pub fn to_input(img: &Rgb8, resize: usize, crop: usize, norm: Normalize) -> Vec<f32> {
    let (w, h) = short_side_size(img.width, img.height, resize);
    let r = resize_bicubic(img, w, h);
    let (left, top) = ((w.saturating_sub(crop)) / 2, (h.saturating_sub(crop)) / 2);
    let mut out = vec![0f32; 3 * crop * crop];
    for y in 0..crop.min(h) {
        for x in 0..crop.min(w) {
            let p = ((top + y) * w + left + x) * 3;
            for c in 0..3 {
                let v = r.data[p + c] as f32;
                out[c * crop * crop + y * crop + x] = match norm {
                    Normalize::Centered127 => (v - 127.0) / 128.0,
                    Normalize::MeanStd { mean, std } => (v / 255.0 - mean[c]) / std[c],
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_extremes() {
        let px = [10, 20, 30, 255, 10, 20, 30, 0, 0, 0, 0, 128];
        let out = composite_on_white(3, 1, &px);
        assert_eq!(&out.data[..6], &[10, 20, 30, 255, 255, 255]);
        // half-transparent black over white is mid grey
        assert!((out.data[6] as i32 - 127).abs() <= 1);
    }

    #[test]
    fn resize_preserves_constant_and_weights_sum_to_one() {
        for (i, o) in [(300, 256), (256, 256), (100, 256), (1000, 7)] {
            for (_, w) in coefficients(i, o) {
                let s: i64 = w.iter().map(|&v| v as i64).sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{i}->{o}: {s}"
                );
            }
        }
        let img = Rgb8 {
            width: 37,
            height: 53,
            data: vec![77; 37 * 53 * 3],
        };
        let r = resize_bicubic(&img, 256, 367);
        assert!(r.data.iter().all(|&v| v == 77));
    }

    #[test]
    fn short_side_rounding() {
        assert_eq!(short_side_size(451, 300, 256), (385, 256));
        assert_eq!(short_side_size(300, 400, 256), (256, 341));
    }
}
