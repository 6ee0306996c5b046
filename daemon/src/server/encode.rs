//! Free-text queries need the text encoder (all-MiniLM-L6-v2). This build of the daemon does
//! not load encoders yet, so text search answers a clear `NOT_READY` naming what to use
//! instead; sample and vector queries work without it.
use std::sync::Arc;

use super::errors::{HResult, not_ready};
use super::state::Shared;

pub async fn encode_text(_shared: &Arc<Shared>, _text: String) -> HResult<Vec<f32>> {
    Err(not_ready(
        "no_text_encoder",
        "free-text search needs the text encoder, which this daemon has not loaded; search by sample id ({\"sample\": ID}) or by an encoder-space vector ({\"vector\": ...}) instead",
    ))
}
