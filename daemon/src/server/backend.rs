//! Every `sotalign/*` handler, and the table that registers them ([`Backend::router`]).
//!
//! One [`Backend`] per connection; everything shared lives in [`Shared`]. Handlers are thin: they validate, then call the store (on a
//! blocking thread), the served model (read-only, behind an `Arc`) or start a job.
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde_json::json;
use sotalign_protocol::types::*;
use sotalign_protocol::{ErrorObject, Message, PROTOCOL_VERSION, codes, methods, names};

use super::dispatch::{Router, on, on_note};
use super::errors::{HResult, not_ready};
use super::state::Shared;
use super::transport::NoteSender;
use super::{align_job, ingest_job, lsp_handlers};
use crate::store::now_ms;

/// Per-connection state the transport and the backend share.
pub struct ConnState {
    pub id: u64,
    /// Set once `initialize` succeeded: job notifications flow from then on.
    pub initialized: AtomicBool,
    pub closed: AtomicBool,
    /// Whether `initialize` must carry the daemon's token (TCP with `--token`).
    pub needs_token: bool,
    /// `clientInfo.name` from `initialize`: the default `source` of decisions.
    pub client_name: Mutex<Option<String>>,
    /// This connection's writer, for messages meant for it alone (set by the transport).
    outgoing: Mutex<Option<NoteSender>>,
}

impl ConnState {
    pub fn new(id: u64, needs_token: bool) -> Self {
        Self {
            id,
            initialized: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            needs_token,
            client_name: Mutex::new(None),
            outgoing: Mutex::new(None),
        }
    }

    pub(super) fn set_outgoing(&self, s: NoteSender) {
        *self.outgoing.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }

    pub(super) fn clear_outgoing(&self) {
        *self.outgoing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Send a message to this connection alone (e.g. diagnostics for a document it opened);
    /// false if it is closed.
    pub async fn send(&self, msg: Message) -> bool {
        let sender = self
            .outgoing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match sender {
            Some(s) => s.send(msg).await,
            None => false,
        }
    }
}

pub struct Backend {
    pub shared: Arc<Shared>,
    pub conn: Arc<ConnState>,
}

use super::query::max_page;

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Backend {
    pub fn new(shared: Arc<Shared>, conn: Arc<ConnState>) -> Self {
        Self { shared, conn }
    }

    /// Every method the daemon serves, one line each (the lifecycle, `initialize`,
    /// `shutdown`, `exit` and `$/cancelRequest`, is written once in `dispatch.rs`).
    pub fn router() -> Router {
        let mut r = Router::default();
        on!(r, methods::Status => do_status);
        on!(r, methods::ListSamples => do_list_samples);
        on!(r, methods::GetSample => do_get_sample);
        on!(r, methods::SuggestForSample => do_suggest_for_sample);
        on!(r, methods::SuggestPairs => do_suggest_pairs);
        on!(r, methods::Confirm => do_confirm);
        on!(r, methods::Reject => do_reject);
        on!(r, methods::Undo => do_undo);
        on!(r, methods::ListPairs => do_list_pairs);
        on!(r, methods::Search => do_search);
        on!(r, methods::Align => do_align);
        on!(r, methods::Cancel => do_cancel);
        on!(r, methods::Jobs => do_jobs);
        on!(r, methods::Evaluate => do_evaluate);
        on!(r, methods::Runs => do_runs);
        on!(r, methods::Ingest => do_ingest);
        on!(r, methods::NextToLabel => do_next_to_label);
        on!(r, methods::Export => do_export);
        on!(r, methods::GetImage => do_get_image);
        on!(r, methods::Audit => do_audit);
        // The manifest language server (standard LSP methods; markers in lsp_handlers.rs).
        on_note!(r, lsp_handlers::DidOpen => on_did_open);
        on_note!(r, lsp_handlers::DidChange => on_did_change);
        on_note!(r, lsp_handlers::DidClose => on_did_close);
        on!(r, lsp_handlers::Hover => do_hover);
        on!(r, lsp_handlers::CodeAction => do_code_action);
        r
    }

    /// `initialize`: the token check (TCP with `--token`), the client's name, capabilities.
    pub async fn do_initialize(
        &self,
        params: InitializeParams,
        served: &[&'static str],
    ) -> HResult<InitializeResult> {
        if self.conn.needs_token {
            let given = params
                .initialization_options
                .as_ref()
                .and_then(|o| o.token.as_deref());
            let ok = match (&self.shared.opts.token, given) {
                (Some(expected), Some(g)) => token_matches(g, expected),
                (Some(_), None) => false,
                (None, _) => true,
            };
            if !ok {
                tracing::warn!(
                    "connection {}: initialize with a missing or wrong token",
                    self.conn.id
                );
                return Err(ErrorObject::new(
                    codes::UNAUTHORIZED,
                    "missing or wrong token in initializationOptions.token",
                ));
            }
        }
        if let Some(info) = params.client_info {
            *self
                .conn
                .client_name
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(info.name);
        }
        let mut methods: Vec<String> = [names::INITIALIZE, names::SHUTDOWN]
            .iter()
            .chain(served)
            .filter(|m| !m.starts_with("textDocument/"))
            .map(|m| m.to_string())
            .collect();
        methods.sort();
        let caps = SotalignCapabilities {
            protocol_version: PROTOCOL_VERSION,
            methods,
            max_body_bytes: self.shared.opts.max_body as u64,
        };
        let mut capabilities = json!({ "experimental": { "sotalign": caps } });
        lsp_handlers::add_capabilities(&mut capabilities);
        Ok(InitializeResult {
            capabilities,
            server_info: Some(ServerInfo {
                name: "sotalign".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn do_status(&self, _: Empty) -> HResult<StatusResult> {
        let (counts, dims) = self
            .shared
            .store(|s| {
                Ok((
                    s.counts()?,
                    (s.dim(Modality::Image)?, s.dim(Modality::Text)?),
                ))
            })
            .await?;
        let model = self.shared.model();
        let encoder = |name: Option<String>, dim: Option<usize>| {
            dim.map(|d| EncoderInfo {
                name: name.unwrap_or_else(|| "precomputed".into()),
                dim: d as u32,
            })
        };
        let (img_name, txt_name) = self
            .shared
            .store(|s| Ok((s.meta("encoder.image")?, s.meta("encoder.text")?)))
            .await?;
        let index = match (&model, self.shared.restoring()) {
            (None, Some((run, fraction))) => IndexInfo {
                state: IndexState::Rebuilding,
                kind: None,
                images: 0,
                texts: 0,
                run: Some(run),
                progress: Some(fraction),
            },
            (None, None) => IndexInfo {
                state: IndexState::Empty,
                kind: None,
                images: 0,
                texts: 0,
                run: None,
                progress: None,
            },
            (Some(m), _) => IndexInfo {
                state: if self.shared.is_rebuilding() {
                    IndexState::Rebuilding
                } else {
                    IndexState::Ready
                },
                kind: Some(m.index_kind()),
                images: m.len(Modality::Image) as u64,
                texts: m.len(Modality::Text) as u64,
                run: Some(m.run),
                progress: None,
            },
        };
        let (annotators, revision) = self.annotators().await?;
        Ok(StatusResult {
            version: env!("CARGO_PKG_VERSION").into(),
            protocol_version: PROTOCOL_VERSION,
            data_dir: self.shared.opts.data_dir.display().to_string(),
            device: self.shared.opts.device.clone(),
            image_encoder: encoder(img_name, dims.0),
            text_encoder: encoder(txt_name, dims.1),
            counts,
            model: model.as_ref().map(|m| ModelInfo {
                run: m.run,
                method: m.method,
                dim: m.dim as u32,
                pairs: m.pairs,
                trained_at_ms: m.trained_at_ms,
                metrics: m.metrics,
                fitted: Some(m.fitted.clone()),
                stage: m.stage,
            }),
            index,
            jobs: self.shared.jobs.active(),
            annotators,
            revision,
        })
    }

    async fn do_list_samples(&self, p: ListSamplesParams) -> HResult<ListSamplesResult> {
        let limit = p.limit.min(max_page());
        let (items, total) = self
            .shared
            .store(move |s| {
                s.list_samples(p.modality, p.state, p.filter.as_deref(), p.offset, limit)
            })
            .await?;
        Ok(ListSamplesResult { items, total })
    }

    async fn do_get_sample(&self, p: GetSampleParams) -> HResult<GetSampleResult> {
        let (sample, pairs) = self
            .shared
            .store(move |s| Ok((s.sample(p.id)?, s.pairs_of(p.id)?)))
            .await?;
        Ok(GetSampleResult { sample, pairs })
    }

    fn require_model(&self) -> HResult<Arc<super::model::Served>> {
        super::query::require_model(&self.shared)
    }

    async fn do_suggest_for_sample(
        &self,
        p: SuggestForSampleParams,
    ) -> HResult<SuggestForSampleResult> {
        super::query::suggest_for_sample(&self.shared, p).await
    }

    async fn do_suggest_pairs(&self, p: SuggestPairsParams) -> HResult<SuggestPairsResult> {
        super::query::suggest_pairs(&self.shared, p).await
    }

    async fn do_next_to_label(&self, p: NextToLabelParams) -> HResult<NextToLabelResult> {
        super::queue::next_to_label(&self.shared, p).await
    }

    fn source(&self, given: Option<String>) -> String {
        given
            .or_else(|| {
                self.conn
                    .client_name
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            })
            .unwrap_or_else(|| format!("connection-{}", self.conn.id))
    }

    async fn decide(&self, kind: DecisionKind, p: DecideParams) -> HResult<DecisionResult> {
        let source = self.source(p.source.clone());
        // Answered only after the transaction committed (synchronous=FULL): durable when acked;
        // the curation view is updated in the same critical section.
        super::query::decide(&self.shared, kind, p, source).await
    }

    async fn do_confirm(&self, p: DecideParams) -> HResult<DecisionResult> {
        self.decide(DecisionKind::Confirm, p).await
    }

    async fn do_reject(&self, p: DecideParams) -> HResult<DecisionResult> {
        self.decide(DecisionKind::Reject, p).await
    }

    async fn do_undo(&self, p: UndoParams) -> HResult<UndoResult> {
        super::query::undo(&self.shared, p).await
    }

    async fn do_list_pairs(&self, p: ListPairsParams) -> HResult<ListPairsResult> {
        let limit = p.limit.min(max_page());
        let (items, total) = self
            .shared
            .store(move |s| s.list_pairs(p.state, p.offset, limit))
            .await?;
        Ok(ListPairsResult { items, total })
    }

    async fn do_search(&self, p: SearchParams) -> HResult<SearchResult> {
        super::query::search(&self.shared, p).await
    }

    async fn do_align(&self, p: AlignParams) -> HResult<AlignResult> {
        if self.shared.is_shutting_down() {
            return Err(not_ready("shutting_down", "the daemon is shutting down"));
        }
        align_job::start(self.shared.clone(), p).await
    }

    async fn do_cancel(&self, p: CancelParams) -> HResult<CancelResult> {
        let job = self.shared.jobs.cancel(p.job).ok_or_else(|| {
            ErrorObject::new(codes::UNKNOWN_JOB, format!("unknown job {}", p.job))
                .with_data(json!({ "job": p.job }))
        })?;
        Ok(CancelResult { job })
    }

    async fn do_jobs(&self, p: JobsParams) -> HResult<JobsResult> {
        Ok(JobsResult {
            jobs: self
                .shared
                .jobs
                .list(p.include_finished, p.limit.min(max_page()) as usize),
        })
    }

    async fn do_evaluate(&self, p: EvaluateParams) -> HResult<EvaluateResult> {
        let model = self.require_model()?;
        let run = p.run.unwrap_or(model.run);
        if run != model.run {
            // Past runs are not kept in memory: answer with the metrics recorded at their end.
            let stored = self.shared.store(move |s| s.run(run)).await?;
            return match stored.info.metrics {
                Some(metrics) => Ok(EvaluateResult { run, metrics }),
                None => Err(not_ready(
                    "no_metrics",
                    format!("run {run} has no recorded metrics"),
                )),
            };
        }
        let (held, captions) = self
            .shared
            .store(|s| {
                let held = s.pair_ids(PairState::HeldOut)?;
                let texts: Vec<SampleId> = held.iter().map(|p| p.1).collect();
                let caps: HashMap<SampleId, String> = s
                    .samples(&texts)?
                    .into_iter()
                    .filter_map(|t| Some((t.id, t.text?)))
                    .collect();
                Ok((held, caps))
            })
            .await?;
        let metrics = model
            .evaluate(&held, &captions)
            .ok_or_else(|| not_ready("no_held_out", "no held-out pairs to evaluate on"))?;
        self.shared
            .store(move |s| s.set_run_metrics(run, &metrics))
            .await?;
        Ok(EvaluateResult { run, metrics })
    }

    async fn do_runs(&self, p: RunsParams) -> HResult<RunsResult> {
        let limit = p.limit.min(max_page());
        let runs = self.shared.store(move |s| s.runs(limit)).await?;
        Ok(RunsResult {
            runs: runs.into_iter().map(|r| r.info).collect(),
        })
    }

    async fn do_ingest(&self, p: IngestParams) -> HResult<IngestResult> {
        if self.shared.is_shutting_down() {
            return Err(not_ready("shutting_down", "the daemon is shutting down"));
        }
        ingest_job::start(self.shared.clone(), p.source).await
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn token_comparison() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3creT", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<Backend>();
    let _ = now_ms;
}
