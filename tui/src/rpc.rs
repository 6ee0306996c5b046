//! The calls the TUI makes, as plain data, and their typed replies.
//!
//! The reducer ([`crate::state`]) never builds JSON: it emits [`Call`] values, and the network
//! task turns each into a request through the protocol crate's typed method markers
//! ([`Call::encode`]) and the answer back into a [`Reply`] ([`Call::decode`]). The call travels
//! back with its outcome, so the reducer always knows what an answer (or an error) was for,
//! even when it arrives late or out of order.
use serde_json::Value;
use sotalign_protocol::ServerNotification;
use sotalign_protocol::methods::{self, Method};
use sotalign_protocol::types::*;

/// Candidates fetched per queue item: enough to choose from, few enough for 24 rows.
pub const SUGGESTIONS_K: u32 = 8;
/// Unpaired samples fetched per page of the review queue.
pub const QUEUE_PAGE: u32 = 100;
/// Images asked of `sotalign/nextToLabel` per fetch of the image queue.
pub const NEXT_PAGE: u32 = 50;
/// Effort figure: a confirmation found with `f` counts the suggestions that were shown before
/// the search, this much for typing the search (the simulator's declared search cost,
/// docs/CURATION.md), and the hit's rank.
pub const SEARCH_COST: u32 = 10;
/// Suspected pairs listed by the audit screen (most suspicious first).
pub const AUDIT_LIMIT: u32 = 100;
/// Hits fetched per free-text search.
pub const SEARCH_K: u32 = 30;
/// Hits of the review screen's in-place search ("find its caption").
pub const FIND_K: u32 = 20;
/// Images listed per browse page when listing the store (no free-text search).
pub const BROWSE_PAGE: u32 = 200;
/// Past runs shown in the dashboard's chart.
pub const RUNS_LIMIT: u32 = 50;

/// One request the UI wants made.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Status,
    Runs,
    /// A page of unpaired samples of one modality for the review queue.
    Queue {
        modality: Modality,
        offset: u64,
    },
    /// The images to label next, each with why (`sotalign/nextToLabel`): the image queue's
    /// order while the daemon has new ones to offer.
    NextToLabel,
    /// The most suspicious confirmed pairs (`sotalign/audit`, cross-fitted CCA).
    Audit,
    /// A decision made on the audit screen (keep = confirm again, unpair = reject, re-pair =
    /// reject then confirm the suggestion): the same methods as the review's, answered apart.
    AuditDecide {
        kind: DecisionKind,
        image: SampleId,
        text: SampleId,
    },
    /// Undo one decision of an audit action.
    AuditUndo {
        decision: DecisionId,
    },
    /// Candidates for the sample under review.
    Suggest {
        sample: SampleId,
    },
    /// `shown`: the decision revision the candidates were fetched at (`STALE_DECISION` if the
    /// pair changed since).
    Confirm {
        image: SampleId,
        text: SampleId,
        shown: Option<u64>,
    },
    Reject {
        image: SampleId,
        text: SampleId,
        shown: Option<u64>,
    },
    Undo {
        decision: DecisionId,
    },
    /// Free text -> images (the browse screen).
    Search {
        text: String,
    },
    /// Stored images by id, all states; with a filter only those whose key, path or caption
    /// contains it. The browse screen's list when there is no query, or when free-text search
    /// is unavailable (no text encoder in the daemon).
    ListImages {
        filter: Option<String>,
    },
    /// Image -> captions (the browse screen's right pane).
    Captions {
        image: SampleId,
    },
    /// Start an alignment with these parameters (method, preset, config overrides).
    Align(AlignParams),
    CancelJob {
        job: JobId,
    },
    /// Write the confirmed pairs to `dest` on the daemon's machine, as a JSONL manifest.
    Export {
        dest: String,
    },
    /// Free text -> samples of `target` (the review screen's in-place search for the sample
    /// under review, `for_sample`): words first, then meaning.
    Find {
        for_sample: SampleId,
        target: Modality,
        text: String,
    },
    /// The same search by words only, for a daemon that serves no model yet (cold start):
    /// unpaired samples of `target` whose caption, key or path contains `text`.
    FindWords {
        for_sample: SampleId,
        target: Modality,
        text: String,
    },
}

/// A successful answer, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(StatusResult),
    Runs(RunsResult),
    Queue(ListSamplesResult),
    NextToLabel(NextToLabelResult),
    Audit(AuditResult),
    AuditDecide(DecisionResult),
    AuditUndo(UndoResult),
    Suggest(SuggestForSampleResult),
    Confirm(DecisionResult),
    Reject(DecisionResult),
    Undo(UndoResult),
    Search(SearchResult),
    ListImages(ListSamplesResult),
    Captions(SuggestForSampleResult),
    Align(AlignResult),
    CancelJob(CancelResult),
    Export(ExportResult),
    Find(SearchResult),
    FindWords(ListSamplesResult),
}

/// A failed call: the daemon's error object, or a transport problem (no code).
#[derive(Debug, Clone, PartialEq)]
pub struct CallError {
    /// The JSON-RPC error code when the daemon answered with an error.
    pub code: Option<i64>,
    pub message: String,
}

impl CallError {
    pub fn transport(message: impl Into<String>) -> Self {
        Self {
            code: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "error {code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

fn params<M: Method>(p: M::Params) -> (&'static str, Value) {
    // Serialising our own params types cannot fail (no maps with non-string keys, no NaN).
    (M::NAME, serde_json::to_value(p).unwrap_or(Value::Null))
}

fn parse<M: Method>(v: Value) -> Result<M::Result, CallError> {
    serde_json::from_value(v).map_err(|e| CallError {
        code: None,
        message: format!("unexpected answer to {}: {e}", M::NAME),
    })
}

impl Call {
    /// The method name and JSON params to send.
    pub fn encode(&self) -> (&'static str, Value) {
        match self {
            Call::Status => params::<methods::Status>(Empty {}),
            Call::Runs => params::<methods::Runs>(RunsParams { limit: RUNS_LIMIT }),
            Call::Queue { modality, offset } => params::<methods::ListSamples>(ListSamplesParams {
                modality: *modality,
                state: Some(SampleState::Unpaired),
                filter: None,
                offset: *offset,
                limit: QUEUE_PAGE,
            }),
            Call::NextToLabel => {
                params::<methods::NextToLabel>(NextToLabelParams { limit: NEXT_PAGE })
            }
            Call::Audit => params::<methods::Audit>(AuditParams {
                method: AlignMethod::Cca,
                limit: AUDIT_LIMIT,
                folds: None,
                seed: None,
            }),
            Call::AuditDecide { kind, image, text } => {
                let p = DecideParams {
                    image: *image,
                    text: *text,
                    source: None,
                    annotator: None,
                    shown_revision: None,
                };
                match kind {
                    DecisionKind::Confirm => params::<methods::Confirm>(p),
                    DecisionKind::Reject => params::<methods::Reject>(p),
                }
            }
            Call::AuditUndo { decision } => params::<methods::Undo>(UndoParams {
                decision: Some(*decision),
            }),
            Call::Suggest { sample } => {
                params::<methods::SuggestForSample>(SuggestForSampleParams {
                    sample: *sample,
                    k: SUGGESTIONS_K,
                    include_rejected: false,
                })
            }
            Call::Captions { image } => {
                params::<methods::SuggestForSample>(SuggestForSampleParams {
                    sample: *image,
                    k: SUGGESTIONS_K,
                    include_rejected: false,
                })
            }
            Call::Confirm { image, text, shown } => params::<methods::Confirm>(DecideParams {
                image: *image,
                text: *text,
                source: None,
                annotator: None,
                shown_revision: *shown,
            }),
            Call::Reject { image, text, shown } => params::<methods::Reject>(DecideParams {
                image: *image,
                text: *text,
                source: None,
                annotator: None,
                shown_revision: *shown,
            }),
            Call::Undo { decision } => params::<methods::Undo>(UndoParams {
                decision: Some(*decision),
            }),
            Call::Search { text } => params::<methods::Search>(SearchParams {
                query: SearchQuery::Text(text.clone()),
                target: Some(Modality::Image),
                k: SEARCH_K,
            }),
            Call::ListImages { filter } => params::<methods::ListSamples>(ListSamplesParams {
                modality: Modality::Image,
                state: None,
                filter: filter.clone(),
                offset: 0,
                limit: BROWSE_PAGE,
            }),
            Call::Align(p) => params::<methods::Align>(p.clone()),
            Call::CancelJob { job } => params::<methods::Cancel>(CancelParams { job: *job }),
            Call::Find { target, text, .. } => params::<methods::Search>(SearchParams {
                query: SearchQuery::Text(text.clone()),
                target: Some(*target),
                k: FIND_K,
            }),
            Call::FindWords { target, text, .. } => {
                params::<methods::ListSamples>(ListSamplesParams {
                    modality: *target,
                    state: Some(SampleState::Unpaired),
                    filter: Some(text.clone()),
                    offset: 0,
                    limit: FIND_K,
                })
            }
            Call::Export { dest } => params::<methods::Export>(ExportParams {
                format: ExportFormat::Jsonl,
                dest: dest.clone(),
                include_rejected: false,
                shard_size: None,
            }),
        }
    }

    /// Type the result of this call.
    pub fn decode(&self, result: Value) -> Result<Reply, CallError> {
        Ok(match self {
            Call::Status => Reply::Status(parse::<methods::Status>(result)?),
            Call::Runs => Reply::Runs(parse::<methods::Runs>(result)?),
            Call::Queue { .. } => Reply::Queue(parse::<methods::ListSamples>(result)?),
            Call::NextToLabel => Reply::NextToLabel(parse::<methods::NextToLabel>(result)?),
            Call::Audit => Reply::Audit(parse::<methods::Audit>(result)?),
            Call::AuditDecide { kind, .. } => Reply::AuditDecide(match kind {
                DecisionKind::Confirm => parse::<methods::Confirm>(result)?,
                DecisionKind::Reject => parse::<methods::Reject>(result)?,
            }),
            Call::AuditUndo { .. } => Reply::AuditUndo(parse::<methods::Undo>(result)?),
            Call::Suggest { .. } => Reply::Suggest(parse::<methods::SuggestForSample>(result)?),
            Call::Captions { .. } => Reply::Captions(parse::<methods::SuggestForSample>(result)?),
            Call::Confirm { .. } => Reply::Confirm(parse::<methods::Confirm>(result)?),
            Call::Reject { .. } => Reply::Reject(parse::<methods::Reject>(result)?),
            Call::Undo { .. } => Reply::Undo(parse::<methods::Undo>(result)?),
            Call::Search { .. } => Reply::Search(parse::<methods::Search>(result)?),
            Call::ListImages { .. } => Reply::ListImages(parse::<methods::ListSamples>(result)?),
            Call::Align(_) => Reply::Align(parse::<methods::Align>(result)?),
            Call::CancelJob { .. } => Reply::CancelJob(parse::<methods::Cancel>(result)?),
            Call::Export { .. } => Reply::Export(parse::<methods::Export>(result)?),
            Call::Find { .. } => Reply::Find(parse::<methods::Search>(result)?),
            Call::FindWords { .. } => Reply::FindWords(parse::<methods::ListSamples>(result)?),
        })
    }
}

/// What the network task tells the UI.
#[derive(Debug, Clone, PartialEq)]
pub enum NetEvent {
    /// Opening the connection (or spawning the daemon); `attempt` counts since the last success.
    Connecting {
        attempt: u32,
    },
    /// `initialize` succeeded.
    Connected {
        server: String,
    },
    /// The connection is gone; the next attempt starts in `retry_in_ms`.
    Disconnected {
        reason: String,
        retry_in_ms: u64,
        attempt: u32,
    },
    /// The outcome of a call, with the call it answers.
    Reply {
        call: Call,
        outcome: Result<Reply, CallError>,
    },
    Notification(ServerNotification),
    /// Something unreadable from the daemon (a bad frame, a malformed notification): shown,
    /// never swallowed.
    ProtocolError(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotalign_protocol::names;

    #[test]
    fn calls_encode_to_documented_methods_and_params() {
        let (m, p) = Call::Confirm {
            image: SampleId(17),
            text: SampleId(802),
            shown: None,
        }
        .encode();
        assert_eq!(m, names::CONFIRM);
        assert_eq!(p, serde_json::json!({"image": 17, "text": 802}));

        let (m, p) = Call::Queue {
            modality: Modality::Text,
            offset: 200,
        }
        .encode();
        assert_eq!(m, names::LIST_SAMPLES);
        assert_eq!(p["modality"], "text");
        assert_eq!(p["state"], "unpaired");
        assert_eq!(p["offset"], 200);

        let (m, p) = Call::Search {
            text: "a bird".into(),
        }
        .encode();
        assert_eq!(m, names::SEARCH);
        assert_eq!(p["query"], serde_json::json!({"text": "a bird"}));
    }

    #[test]
    fn decode_reports_a_mismatched_result_with_the_method_name() {
        let err = Call::Status
            .decode(serde_json::json!({"nope": 1}))
            .unwrap_err();
        assert_eq!(err.code, None);
        assert!(err.message.contains(names::STATUS), "{}", err.message);
    }
}
