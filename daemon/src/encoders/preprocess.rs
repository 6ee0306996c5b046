//! Image decoding and the EfficientNet-Lite preprocessing, written to match the independent
//! (PIL-based) implementation that produced the reference embeddings:
//!
//! decode -> RGBA -> alpha-composite onto white -> shorter side to 256 with bicubic resampling
//! -> centre crop 224 (floor offsets) -> `(x - 127) / 128`, CHW.
//!
//! Why our own resampler instead of `image::imageops::resize`: features move measurably with the
//! filter's support and rounding. This one follows PIL's separable convolution (support scaled
//! by the downscale factor, Keys cubic with a = -0.5, 22-bit fixed-point weights, horizontal
//! pass then vertical, each rounded to u8), so our pixels equal PIL's.
use std::path::Path;

use thiserror::Error;

/// Side of the square network input.
pub const CROP: usize = 224;
/// Shorter side after resizing, before the centre crop.
pub const RESIZE: usize = 256;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot decode image: {0}")]
    Decode(String),
    #[error("cannot render SVG: {0}")]
    Svg(String),
    #[error("degenerate image size {0}x{1}")]
    Size(u32, u32),
    /// Over the pixel cap (`--max-image-pixels`), checked before any pixel is allocated.
    #[error(
        "image of {width}x{height} pixels exceeds the cap of {max} pixels (sotalign serve --max-image-pixels)"
    )]
    TooManyPixels { width: u64, height: u64, max: u64 },
    /// The file itself could not be read under the daemon's rules (size cap, scope, not a file).
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

/// `Ok` when a `width x height` image fits the pixel cap.
fn check_pixels(width: u64, height: u64) -> Result<(), ImageError> {
    let max = crate::limits::current().max_image_pixels;
    match width.checked_mul(height) {
        Some(n) if n <= max => Ok(()),
        _ => Err(ImageError::TooManyPixels { width, height, max }),
    }
}

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

/// EfficientNet-Lite input: short side 256, centre crop 224, `(x - 127) / 128`, CHW f32.
pub fn to_network_input(img: &Rgb8) -> Vec<f32> {
    to_input(img, RESIZE, CROP, Normalize::Centered127)
}

fn looks_like_svg(path: &Path, bytes: &[u8]) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    if matches!(ext.as_deref(), Some("svg") | Some("svgz")) {
        return true;
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    head.contains("<svg")
}

/// Render an SVG so that its shorter side is `short` pixels, composited onto white.
pub fn render_svg(bytes: &[u8], short: usize) -> Result<Rgb8, ImageError> {
    use resvg::{tiny_skia, usvg};
    let tree = usvg::Tree::from_data(bytes, &usvg::Options::default())
        .map_err(|e| ImageError::Svg(e.to_string()))?;
    let size = tree.size();
    let (sw, sh) = (size.width() as f64, size.height() as f64);
    if !(sw > 0.0 && sh > 0.0) {
        return Err(ImageError::Size(sw as u32, sh as u32));
    }
    let scale = short as f64 / sw.min(sh);
    // The rendered size follows the aspect ratio: a 1 x 400000 SVG would be 256 x 102 M pixels.
    let (fw, fh) = ((sw * scale).round().max(1.0), (sh * scale).round().max(1.0));
    if !(fw.is_finite() && fh.is_finite() && fw <= u32::MAX as f64 && fh <= u32::MAX as f64) {
        return Err(ImageError::TooManyPixels {
            width: fw.min(u64::MAX as f64) as u64,
            height: fh.min(u64::MAX as f64) as u64,
            max: crate::limits::current().max_image_pixels,
        });
    }
    let (w, h) = (fw as u32, fh as u32);
    check_pixels(w as u64, h as u64)?;
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or(ImageError::Size(w, h))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale as f32, scale as f32),
        &mut pixmap.as_mut(),
    );
    // tiny-skia stores premultiplied RGBA: over white is c + (255 - a).
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    for px in pixmap.data().chunks_exact(4) {
        let inv = 255 - px[3] as u16;
        for &c in &px[..3] {
            data.push((c as u16 + inv).min(255) as u8);
        }
    }
    Ok(Rgb8 {
        width: w as usize,
        height: h as usize,
        data,
    })
}

/// Decode an image file (PNG, JPEG, WebP, GIF first frame, SVG) to RGB on white.
pub fn load_rgb(path: &Path) -> Result<Rgb8, ImageError> {
    let l = crate::limits::current();
    let bytes = crate::limits::read_file(path, l.max_image_file_bytes, "max-image-file-bytes")?;
    decode_rgb(path, &bytes)
}

/// Decode image bytes; `path` only helps recognise SVG by extension. SVGs are rendered with
/// their shorter side at 256 px (vector art has no native size; 256 is the resize target).
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> Result<Rgb8, ImageError> {
    if looks_like_svg(path, bytes) {
        return render_svg(bytes, RESIZE);
    }
    // Size from the header first: a small file can declare a huge canvas.
    let (dw, dh) = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()?
        .into_dimensions()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    check_pixels(dw as u64, dh as u64)?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    let mut lim = image::Limits::default();
    // 16 bytes per pixel covers every decoder's native buffer (up to RGBA f32).
    lim.max_alloc = Some(crate::limits::current().max_image_pixels.saturating_mul(16));
    reader.limits(lim);
    let img = reader
        .decode()
        .map_err(|e| ImageError::Decode(e.to_string()))?;
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    if w == 0 || h == 0 {
        return Err(ImageError::Size(w, h));
    }
    Ok(composite_on_white(w as usize, h as usize, rgba.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14: a 78-byte SVG whose aspect ratio makes a 256 x 102 M pixel canvas is refused
    /// before any pixel is allocated (it used to abort the process).
    #[test]
    fn svg_with_a_huge_canvas_is_refused_before_rendering() {
        let svg = br#"<svg xmlns="http://www.w3.org/2000/svg" width="1" height="400000"/>"#;
        let e = render_svg(svg, RESIZE).unwrap_err();
        assert!(matches!(e, ImageError::TooManyPixels { .. }), "{e}");
        assert!(e.to_string().contains("--max-image-pixels"), "{e}");
        // A normal one still renders.
        let ok = br#"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"/>"#;
        let img = render_svg(ok, RESIZE).unwrap();
        assert_eq!((img.width, img.height), (512, 256));
    }

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

    #[test]
    fn corrupt_bytes_are_an_error() {
        assert!(decode_rgb(Path::new("x.png"), b"\x89PNG\r\n\x1a\nnot really").is_err());
        assert!(decode_rgb(Path::new("x.svg"), b"<svg this is not xml").is_err());
    }

    #[test]
    fn svg_renders_on_white() {
        let svg = br##"<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect x="0" y="0" width="10" height="10" fill="#ff0000"/></svg>"##;
        let img = decode_rgb(Path::new("a.svg"), svg).unwrap();
        assert_eq!((img.width, img.height), (512, 256));
        assert_eq!(&img.data[..3], &[255, 0, 0]);
        let last = img.data.len() - 3;
        assert_eq!(&img.data[last..], &[255, 255, 255]);
    }
}
