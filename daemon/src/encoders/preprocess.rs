//! Image decoding and the EfficientNet-Lite preprocessing, written to match the independent
//! (PIL-based) implementation that produced the reference embeddings:
//!
//! decode -> RGBA -> alpha-composite onto white -> shorter side to 256 with bicubic resampling
//! -> centre crop 224 (floor offsets) -> `(x - 127) / 128`, CHW.
//!
//! The pixel arithmetic (compositing, PIL-compatible bicubic resampling, normalisation) lives in
//! [`sotalign_kernels::resample`] and is re-exported here; this module decodes and caps.
use std::path::Path;

pub use sotalign_kernels::resample::{
    Normalize, Rgb8, composite_on_white, resize_bicubic, short_side_size, to_input,
};

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
