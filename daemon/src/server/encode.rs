//! The daemon's encoders: all-MiniLM-L6-v2 (text) and EfficientNet-Lite0 (images), loaded from
//! the asset directory (`sotalign fetch`) on first need and then kept resident.
//!
//! Why lazily: a daemon that only curates precomputed embeddings never pays the load (about a
//! second and 100 MB for MiniLM); the first free-text search or raw ingest does, once. Loading
//! happens on a blocking thread under a per-encoder mutex, so two first requests load once.
//!
//! Invariant: a raw vector is only ever compared with stored vectors of the same encoder. The
//! store records which encoder produced each modality (`encoder.image` / `encoder.text` meta,
//! set by manifests and by this module); a mismatch is refused with a clear error instead of
//! returning meaningless neighbours.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::json;
use sotalign_protocol::ErrorObject;
use sotalign_protocol::codes;
use sotalign_protocol::types::Modality;

use super::errors::{HResult, internal, not_ready};
use super::state::Shared;
use crate::assets::Assets;
use crate::encoders::{EncoderError, ImageEncoder, TextEncoder};

/// The names the store records for the built-in encoders (as manifests name them).
pub const TEXT_ENCODER: &str = "all-MiniLM-L6-v2";
pub const IMAGE_ENCODER: &str = "efficientnet-lite0";

/// Batch size of background encoding.
pub const BATCH: usize = 16;

/// Lazily loaded, resident encoders.
pub struct Encoders {
    assets: Assets,
    device: String,
    text: Mutex<Option<Arc<TextEncoder>>>,
    image: Mutex<Option<Arc<ImageEncoder>>>,
}

impl Encoders {
    pub fn new(assets_root: PathBuf, device: String) -> Self {
        Self {
            assets: Assets::new(assets_root),
            device,
            text: Mutex::new(None),
            image: Mutex::new(None),
        }
    }

    pub fn assets_root(&self) -> &std::path::Path {
        &self.assets.root
    }

    /// The asset an encoder needs, and whether it is completely in place.
    fn asset(&self, m: Modality) -> (&'static str, PathBuf, bool) {
        match m {
            Modality::Text => (
                "minilm",
                self.assets.minilm_dir(),
                self.assets.is_complete("minilm"),
            ),
            Modality::Image => (
                "effnet-lite0",
                self.assets.effnet_pth(),
                self.assets.is_complete("effnet-lite0"),
            ),
        }
    }

    /// `NOT_READY` naming the fix when the weights are absent; checked before any work starts.
    pub fn require(&self, m: Modality) -> HResult<()> {
        let (name, path, complete) = self.asset(m);
        if complete {
            return Ok(());
        }
        let what = match m {
            Modality::Text => format!("the text encoder ({TEXT_ENCODER})"),
            Modality::Image => format!("the image encoder ({IMAGE_ENCODER})"),
        };
        Err(not_ready(
            "no_encoder_assets",
            format!(
                "{what} is not installed: its weights are missing from {} (asset `{name}`); run `sotalign fetch` (or point --assets-dir / $SOTALIGN_ASSETS at a fetched asset directory)",
                path.display()
            ),
        )
        .with_data(json!({
            "reason": "no_encoder_assets",
            "asset": name,
            "path": path.display().to_string(),
            "fix": "sotalign fetch",
        })))
    }

    fn device(&self) -> HResult<candle_core::Device> {
        crate::encoders::parse_device(&self.device).map_err(encoder_error)
    }

    /// The text encoder, loaded on first use (call from a blocking thread).
    pub fn text(&self) -> HResult<Arc<TextEncoder>> {
        self.require(Modality::Text)?;
        let mut g = self.text.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = g.as_ref() {
            return Ok(e.clone());
        }
        let t0 = std::time::Instant::now();
        let e = Arc::new(
            TextEncoder::load(&self.assets.minilm_dir(), &self.device()?).map_err(encoder_error)?,
        );
        tracing::info!("text encoder {} loaded in {:?}", e.id(), t0.elapsed());
        *g = Some(e.clone());
        Ok(e)
    }

    /// The image encoder, loaded on first use (call from a blocking thread).
    pub fn image(&self) -> HResult<Arc<ImageEncoder>> {
        self.require(Modality::Image)?;
        let mut g = self.image.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = g.as_ref() {
            return Ok(e.clone());
        }
        let t0 = std::time::Instant::now();
        let e = Arc::new(
            ImageEncoder::load_efficientnet(&self.assets.effnet_pth(), &self.device()?)
                .map_err(encoder_error)?,
        );
        tracing::info!("image encoder {} loaded in {:?}", e.id(), t0.elapsed());
        *g = Some(e.clone());
        Ok(e)
    }

    /// Which encoders are resident (for status and tests).
    pub fn loaded(&self) -> (bool, bool) {
        (
            self.image
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some(),
            self.text
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some(),
        )
    }
}

pub fn encoder_error(e: EncoderError) -> ErrorObject {
    match e {
        EncoderError::Device(m) => ErrorObject::new(codes::NOT_READY, format!("device: {m}"))
            .with_data(json!({ "reason": "device" })),
        EncoderError::MissingFile(p) => not_ready(
            "no_encoder_assets",
            format!(
                "encoder file missing: {} (run `sotalign fetch`)",
                p.display()
            ),
        ),
        other => internal(format!("encoder: {other}")),
    }
}

/// The encoder name the store records for a modality, when the daemon's own encoder would be
/// compatible with it: `Ok` when unset or equal (case-insensitively) to the built-in one.
pub fn check_compatible(m: Modality, stored: Option<&str>) -> HResult<()> {
    let ours = match m {
        Modality::Text => TEXT_ENCODER,
        Modality::Image => IMAGE_ENCODER,
    };
    match stored {
        Some(s) if !s.eq_ignore_ascii_case(ours) => Err(ErrorObject::new(
            codes::INVALID_PARAMS,
            format!(
                "the stored {} embeddings come from `{s}`, but the daemon encodes with `{ours}`: their vectors are not comparable (search by sample or by a `{s}` vector instead)",
                format!("{m:?}").to_lowercase()
            ),
        )
        .with_data(json!({ "reason": "encoder_mismatch", "stored": s, "daemon": ours }))),
        _ => Ok(()),
    }
}

/// Encode a free-text query with MiniLM into the stored text embeddings' space (raw, as
/// ingest stores them).
pub async fn encode_text(shared: &Arc<Shared>, text: String) -> HResult<Vec<f32>> {
    if text.trim().is_empty() {
        return Err(ErrorObject::invalid_params("the text query is empty"));
    }
    shared.encoders.require(Modality::Text)?;
    let stored = shared
        .store(|s| Ok((s.meta("encoder.text")?, s.dim(Modality::Text)?)))
        .await?;
    check_compatible(Modality::Text, stored.0.as_deref())?;
    let sh = shared.clone();
    let v = tokio::task::spawn_blocking(move || -> HResult<Vec<f32>> {
        let enc = sh.encoders.text()?;
        let m = enc
            .encode(&[text.as_str()], 1, false)
            .map_err(encoder_error)?;
        Ok(m.row(0).to_vec())
    })
    .await
    .map_err(|e| internal(format!("text encoding task failed: {e}")))??;
    if let Some(d) = stored.1
        && d != v.len()
    {
        return Err(ErrorObject::new(
            codes::DIMENSION_MISMATCH,
            format!(
                "the text encoder gives {}-d vectors but the stored texts are {d}-d",
                v.len()
            ),
        ));
    }
    Ok(v)
}
