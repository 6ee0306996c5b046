//! A minimal line-plot PNG writer (axes, ticks, series, legend) on the `image` crate, with a
//! built-in 3x5 pixel font so no font file or font crate is needed. Used by the docs figures
//! (`docs/CURATION.md`, `docs/SCALING.md`).
use std::path::Path;

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};

/// One named series of (x, y) points, drawn as a polyline with markers.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Axis scale.
#[derive(Clone, Copy, PartialEq)]
pub enum Scale {
    Linear,
    Log10,
}

pub struct PlotSpec<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_scale: Scale,
    pub y_scale: Scale,
}

const W: u32 = 900;
const H: u32 = 560;
const L: i64 = 80;
const R: i64 = 230;
const T: i64 = 50;
const B: i64 = 60;
const PALETTE: [[u8; 3]; 10] = [
    [120, 120, 120],
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [188, 189, 34],
    [23, 190, 207],
];

fn glyph(c: char) -> [u8; 5] {
    // Each row: 3 bits, MSB = left.
    match c.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '%' => [5, 1, 2, 4, 5],
        '@' => [7, 5, 7, 4, 7],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        '/' => [1, 1, 2, 4, 4],
        '=' => [0, 7, 0, 7, 0],
        ':' => [0, 2, 0, 2, 0],
        '+' => [0, 2, 7, 2, 0],
        _ => [0, 0, 0, 0, 0],
    }
}

/// Draw `text` with its top-left at (x, y), each font pixel `s` x `s`.
fn text(img: &mut RgbImage, x: i64, y: i64, s: i64, t: &str, col: [u8; 3]) {
    for (k, c) in t.chars().enumerate() {
        let g = glyph(c);
        let ox = x + k as i64 * 4 * s;
        for (r, bits) in g.iter().enumerate() {
            for b in 0..3 {
                if bits & (4 >> b) != 0 {
                    rect(img, ox + b * s, y + r as i64 * s, s, s, col);
                }
            }
        }
    }
}

fn text_width(t: &str, s: i64) -> i64 {
    t.chars().count() as i64 * 4 * s - s
}

fn rect(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, col: [u8; 3]) {
    for yy in y.max(0)..(y + h).min(H as i64) {
        for xx in x.max(0)..(x + w).min(W as i64) {
            img.put_pixel(xx as u32, yy as u32, Rgb(col));
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), w: i64, col: [u8; 3]) {
    let n = (x1 - x0).abs().max((y1 - y0).abs()).max(1);
    for k in 0..=n {
        let x = x0 + (x1 - x0) * k / n;
        let y = y0 + (y1 - y0) * k / n;
        rect(img, x - w / 2, y - w / 2, w, w, col);
    }
}

fn tx(v: f64, s: Scale) -> f64 {
    match s {
        Scale::Linear => v,
        Scale::Log10 => v.max(1e-300).log10(),
    }
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}K", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Ticks for [lo, hi] in transformed units.
fn ticks(lo: f64, hi: f64, s: Scale) -> Vec<f64> {
    match s {
        Scale::Log10 => {
            let (a, b) = (lo.floor() as i64, hi.ceil() as i64);
            (a..=b)
                .map(|e| e as f64)
                .filter(|&e| e >= lo - 1e-9 && e <= hi + 1e-9)
                .collect()
        }
        Scale::Linear => {
            let span = (hi - lo).max(1e-12);
            let raw = span / 6.0;
            let mag = 10f64.powf(raw.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| m * mag)
                .find(|&st| st >= raw)
                .unwrap_or(10.0 * mag);
            let mut v = (lo / step).ceil() * step;
            let mut out = Vec::new();
            while v <= hi + 1e-9 * span {
                out.push(v);
                v += step;
            }
            out
        }
    }
}

/// Render `series` to a PNG at `path`.
pub fn line_plot(path: &Path, spec: &PlotSpec, series: &[Series]) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        let (x, y) = (tx(x, spec.x_scale), tx(y, spec.y_scale));
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !x0.is_finite() {
        anyhow::bail!("nothing to plot");
    }
    if spec.y_scale == Scale::Linear {
        y0 = y0.min(0.0);
        y1 += 0.05 * (y1 - y0).max(1e-9);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = (W as i64 - L - R, H as i64 - T - B);
    let px = |x: f64| L + ((tx(x, spec.x_scale) - x0) / (x1 - x0) * pw as f64).round() as i64;
    let py = |y: f64| T + ph - ((tx(y, spec.y_scale) - y0) / (y1 - y0) * ph as f64).round() as i64;
    let grey = [220, 220, 220];
    let black = [0, 0, 0];
    for t in ticks(x0, x1, spec.x_scale) {
        let xv = match spec.x_scale {
            Scale::Linear => t,
            Scale::Log10 => 10f64.powf(t),
        };
        let x = px(xv);
        line(&mut img, (x, T), (x, T + ph), 1, grey);
        let label = fmt_tick(xv);
        text(
            &mut img,
            x - text_width(&label, 2) / 2,
            T + ph + 8,
            2,
            &label,
            black,
        );
    }
    for t in ticks(y0, y1, spec.y_scale) {
        let yv = match spec.y_scale {
            Scale::Linear => t,
            Scale::Log10 => 10f64.powf(t),
        };
        let y = py(yv);
        line(&mut img, (L, y), (L + pw, y), 1, grey);
        let label = fmt_tick(yv);
        text(
            &mut img,
            L - 8 - text_width(&label, 2),
            y - 5,
            2,
            &label,
            black,
        );
    }
    line(&mut img, (L, T), (L, T + ph), 2, black);
    line(&mut img, (L, T + ph), (L + pw, T + ph), 2, black);
    text(&mut img, L, 15, 3, spec.title, black);
    text(
        &mut img,
        L + pw / 2 - text_width(spec.x_label, 2) / 2,
        H as i64 - 25,
        2,
        spec.x_label,
        black,
    );
    text(&mut img, 8, T - 20, 2, spec.y_label, black);
    for (k, s) in series.iter().enumerate() {
        let col = PALETTE[k % PALETTE.len()];
        let p: Vec<(i64, i64)> = s
            .points
            .iter()
            .filter(|(x, y)| tx(*x, spec.x_scale).is_finite() && tx(*y, spec.y_scale).is_finite())
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        for w in p.windows(2) {
            line(&mut img, w[0], w[1], 3, col);
        }
        for &(x, y) in &p {
            rect(&mut img, x - 3, y - 3, 7, 7, col);
        }
        let ly = T + 10 + k as i64 * 24;
        line(
            &mut img,
            (L + pw + 15, ly + 5),
            (L + pw + 45, ly + 5),
            3,
            col,
        );
        text(&mut img, L + pw + 52, ly, 2, &s.name, black);
    }
    img.save(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
