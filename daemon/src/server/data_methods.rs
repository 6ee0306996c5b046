//! Data out and pictures over the wire: `sotalign/export`, `sotalign/getImage`, and the
//! per-annotator counts of `status`. (Decisions with their annotator, stale-decision refusal and
//! the `sotalign/decisionsChanged` broadcast live with the other decision code in `query`.)
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use serde_json::json;
use sotalign_protocol::types::*;
use sotalign_protocol::{ErrorObject, codes};

use super::backend::Backend;
use super::errors::{HResult, internal, invalid_input};
use crate::encoders::preprocess;
use crate::export;

/// Largest box `getImage` scales to (either side).
pub const MAX_IMAGE_SIDE: u32 = 1024;
/// Largest image file `getImage` decodes.
pub const MAX_IMAGE_FILE: u64 = 64 << 20;
/// Encoded pictures kept in memory, by (path, box).
const IMAGE_CACHE_ENTRIES: usize = 512;

type ImageKey = (PathBuf, u32, u32);

/// A small FIFO cache of encoded pictures (the TUI asks for the same few boxes repeatedly).
#[derive(Default)]
struct ImageCache {
    map: HashMap<ImageKey, Arc<GetImageResult>>,
    order: VecDeque<ImageKey>,
}

fn image_cache() -> &'static Mutex<ImageCache> {
    static CACHE: OnceLock<Mutex<ImageCache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Decode, downscale to fit `w` x `h` (never upscale) and encode as PNG.
pub fn render_thumbnail(path: &Path, w: u32, h: u32) -> Result<GetImageResult, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_IMAGE_FILE {
        return Err(format!(
            "{len} bytes is larger than the {MAX_IMAGE_FILE}-byte limit"
        ));
    }
    let rgb = preprocess::load_rgb(path).map_err(|e| e.to_string())?;
    let img = image::RgbImage::from_raw(rgb.width as u32, rgb.height as u32, rgb.data)
        .ok_or("decoded image has the wrong size")?;
    let (iw, ih) = img.dimensions();
    let scale = (w as f64 / iw as f64).min(h as f64 / ih as f64).min(1.0);
    let (tw, th) = (
        ((iw as f64 * scale).round() as u32).max(1),
        ((ih as f64 * scale).round() as u32).max(1),
    );
    let img = if (tw, th) == (iw, ih) {
        img
    } else {
        image::imageops::resize(&img, tw, th, image::imageops::FilterType::Triangle)
    };
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(GetImageResult {
        mime: "image/png".into(),
        width: tw,
        height: th,
        data: base64::engine::general_purpose::STANDARD.encode(png),
    })
}

impl Backend {
    /// Per-annotator counts and the revision, for `status`.
    pub(super) async fn annotators(&self) -> HResult<(Vec<AnnotatorCount>, u64)> {
        self.shared
            .store(|s| {
                let counts = s
                    .annotator_counts()?
                    .into_iter()
                    .map(|(annotator, confirmed, rejected)| AnnotatorCount {
                        annotator,
                        confirmed,
                        rejected,
                    })
                    .collect();
                Ok((counts, s.revision()?))
            })
            .await
    }

    pub(super) async fn do_export(&self, p: ExportParams) -> HResult<ExportResult> {
        if p.dest.trim().is_empty() {
            return Err(ErrorObject::invalid_params("`dest` is empty"));
        }
        let shard = match p.shard_size {
            Some(0) => {
                return Err(ErrorObject::invalid_params(
                    "`shardSize` must be at least 1",
                ));
            }
            Some(n) => n as usize,
            None => export::DEFAULT_SHARD,
        };
        let rows = self
            .shared
            .store(move |s| s.export_rows(p.include_rejected))
            .await?;
        let dest = PathBuf::from(&p.dest);
        // Written only below the directories this daemon may use (`--allow-dir`, the data
        // dir): missing folders there are created, anywhere else is refused.
        let parent = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.exists() {
            let mut anchor = parent.as_path();
            while !anchor.exists() {
                anchor = anchor.parent().unwrap_or(Path::new("."));
            }
            crate::limits::scope().resolve(anchor)?;
            std::fs::create_dir_all(&parent).map_err(|e| {
                invalid_input(
                    format!("cannot create {}: {e}", parent.display()),
                    Some(&parent.display().to_string()),
                )
            })?;
        }
        crate::limits::scope().resolve(&parent)?;
        let format = p.format;
        let d = dest.clone();
        let summary = tokio::task::spawn_blocking(move || export::export(&rows, format, &d, shard))
            .await
            .map_err(|e| internal(format!("export task failed: {e}")))?
            .map_err(|e| {
                let path = match &e {
                    export::ExportError::Image { path, .. } => path.clone(),
                    _ => p.dest.clone(),
                };
                invalid_input(e.to_string(), Some(&path))
            })?;
        Ok(ExportResult {
            pairs: summary.pairs,
            files: summary.files,
            dest: dest.display().to_string(),
        })
    }

    pub(super) async fn do_get_image(&self, p: GetImageParams) -> HResult<GetImageResult> {
        if p.max_width == 0 || p.max_height == 0 {
            return Err(ErrorObject::invalid_params(
                "maxWidth and maxHeight must be at least 1",
            ));
        }
        let (w, h) = (
            p.max_width.min(MAX_IMAGE_SIDE),
            p.max_height.min(MAX_IMAGE_SIDE),
        );
        let id = match (p.sample, p.path) {
            (Some(id), None) => id,
            (None, Some(path)) => {
                let q = path.clone();
                self.shared
                    .store(move |s| s.image_by_path(&q))
                    .await?
                    .ok_or_else(|| {
                        ErrorObject::invalid_params(format!(
                            "no image sample has the path {path:?}"
                        ))
                    })?
            }
            _ => {
                return Err(ErrorObject::invalid_params(
                    "give exactly one of `sample` and `path`",
                ));
            }
        };
        let sample = self.shared.store(move |s| s.sample(id)).await?;
        if sample.modality != Modality::Image {
            return Err(ErrorObject::new(
                codes::WRONG_MODALITY,
                format!("sample {id} is a text, not an image"),
            )
            .with_data(json!({ "sample": id, "expected": "image" })));
        }
        let Some(path) = sample.path else {
            return Err(invalid_input(
                format!("image sample {id} has no file (ingested as a vector only)"),
                None,
            ));
        };
        let key: ImageKey = (PathBuf::from(&path), w, h);
        if let Some(hit) = image_cache()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .get(&key)
        {
            return Ok((**hit).clone());
        }
        let k = key.clone();
        let r = tokio::task::spawn_blocking(move || render_thumbnail(&k.0, k.1, k.2))
            .await
            .map_err(|e| internal(format!("image task failed: {e}")))?
            .map_err(|e| invalid_input(format!("{path}: {e}"), Some(&path)))?;
        let mut c = image_cache().lock().unwrap_or_else(|e| e.into_inner());
        if c.map.insert(key.clone(), Arc::new(r.clone())).is_none() {
            c.order.push_back(key);
            while c.order.len() > IMAGE_CACHE_ENTRIES {
                if let Some(old) = c.order.pop_front() {
                    c.map.remove(&old);
                }
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_the_box_and_never_upscale() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.png");
        image::RgbImage::from_pixel(40, 20, image::Rgb([200, 10, 10]))
            .save(&p)
            .unwrap();
        let r = render_thumbnail(&p, 10, 10).unwrap();
        assert_eq!((r.width, r.height), (10, 5));
        let png = base64::engine::general_purpose::STANDARD
            .decode(&r.data)
            .unwrap();
        let back = image::load_from_memory(&png).unwrap();
        assert_eq!((back.width(), back.height()), (10, 5));
        let r = render_thumbnail(&p, 400, 400).unwrap();
        assert_eq!((r.width, r.height), (40, 20));
        assert!(render_thumbnail(&d.path().join("none.png"), 4, 4).is_err());
        std::fs::write(d.path().join("bad.png"), b"not a png").unwrap();
        assert!(render_thumbnail(&d.path().join("bad.png"), 4, 4).is_err());
    }
}
