//! Test data and event builders shared by every TUI test: the reducer tests
//! (`src/state/tests/`, which includes this file with `#[path]`) and the integration tests
//! (`snapshots.rs`, `net.rs`). It names the crate `sotalign_tui` in both places (the library
//! declares `extern crate self as sotalign_tui` for that), so one copy serves both.
#![allow(dead_code)]

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use sotalign_protocol::ServerNotification;
use sotalign_protocol::types::*;
use sotalign_tui::rpc::{Call, CallError, NetEvent, Reply};
use sotalign_tui::state::{App, Event};

/// An unpaired, encoded image sample stored at `/data/<key>.png` (a file that does not exist:
/// pictures render as a placeholder naming it).
pub fn image(id: u64, key: &str) -> Sample {
    image_at(id, key, &format!("/data/{key}.png"))
}

/// An unpaired, encoded image sample at `path`.
pub fn image_at(id: u64, key: &str, path: &str) -> Sample {
    Sample {
        id: SampleId(id),
        modality: Modality::Image,
        key: key.to_owned(),
        state: SampleState::Unpaired,
        path: Some(path.to_owned()),
        text: None,
        encoded: true,
    }
}

/// An unpaired, encoded caption with key `t<id>`.
pub fn text(id: u64, caption: &str) -> Sample {
    Sample {
        id: SampleId(id),
        modality: Modality::Text,
        key: format!("t{id}"),
        state: SampleState::Unpaired,
        path: None,
        text: Some(caption.to_owned()),
        encoded: true,
    }
}

/// A suggestion; the top-ranked one is a mutual nearest neighbour, as it usually is.
pub fn cand(s: Sample, score: f64, rank: u32) -> Candidate {
    Candidate {
        sample: s,
        score,
        rank,
        mutual_nn: rank == 1,
        duplicates: 0,
    }
}

/// The store's counts for a data set of `images` images and as many captions: `seed` pairs
/// confirmed before the session, `held_out` evaluation pairs, and `confirmed` / `rejected`
/// decisions made since. Every other sample is unpaired.
pub fn counts_of(images: u64, seed: u64, held_out: u64, confirmed: u64, rejected: u64) -> Counts {
    let unpaired = images - seed - held_out - confirmed;
    Counts {
        images,
        texts: images,
        unpaired_images: unpaired,
        unpaired_texts: unpaired,
        confirmed_pairs: seed + confirmed,
        rejected_pairs: rejected,
        held_out_pairs: held_out,
        pending_encoding: 0,
    }
}

pub fn key(c: char) -> Event {
    code(KeyCode::Char(c))
}

pub fn code(c: KeyCode) -> Event {
    Event::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

/// The daemon's successful answer to `call`.
pub fn reply(call: Call, r: Reply) -> Event {
    Event::Net(NetEvent::Reply {
        call,
        outcome: Ok(r),
    })
}

/// The daemon's error answer to `call` (`code: None`: a transport failure).
pub fn fail(call: Call, code: Option<i64>, msg: &str) -> Event {
    Event::Net(NetEvent::Reply {
        call,
        outcome: Err(CallError {
            code,
            message: msg.to_owned(),
        }),
    })
}

/// Feed `app` the daemon's successful answer to `call`; returns the calls it makes next.
pub fn ok(app: &mut App, call: Call, r: Reply) -> Vec<Call> {
    app.handle(reply(call, r))
}

/// Candidates for `sample` from run 1.
pub fn suggest_reply(sample: Sample, cands: Vec<Candidate>) -> Event {
    suggest_reply_from(RunId(1), sample, cands)
}

/// Candidates for `sample` scored by model run `run`.
pub fn suggest_reply_from(run: RunId, sample: Sample, cands: Vec<Candidate>) -> Event {
    reply(
        Call::Suggest { sample: sample.id },
        Reply::Suggest(SuggestForSampleResult {
            sample,
            candidates: cands,
            run,
        }),
    )
}

pub fn decision(id: u64, kind: DecisionKind, image: u64, text: u64) -> Decision {
    Decision {
        id: DecisionId(id),
        kind,
        image: SampleId(image),
        text: SampleId(text),
        at_ms: 0,
        source: "tui:test".into(),
        annotator: None,
        undone_at_ms: None,
    }
}

/// A refine-stage `$/progress` report of `job` at `step` of `total` (no loss, ETA or message;
/// set them with struct update).
pub fn job_progress(job: u64, seq: u64, step: u64, total: u64) -> JobProgress {
    JobProgress {
        kind: ProgressKind::Report,
        title: None,
        message: None,
        percentage: Some((step * 100 / total.max(1)) as u32),
        job: JobId(job),
        seq,
        stage: JobStage::Refine,
        model_stage: None,
        step,
        total,
        loss: None,
        eta_secs: None,
        elapsed_secs: 0.0,
    }
}

/// The notification event carrying `p`.
pub fn progress_event(p: JobProgress) -> Event {
    Event::Net(NetEvent::Notification(ServerNotification::Progress(
        ProgressParams {
            token: ProgressToken::for_job(p.job),
            value: p,
        },
    )))
}

pub fn retrieval(i2t: f64, t2i: f64, pairs: u64) -> RetrievalMetrics {
    RetrievalMetrics {
        image_to_text: Recall {
            r1: i2t,
            r5: 0.5,
            r10: 0.6,
        },
        text_to_image: Recall {
            r1: t2i,
            r5: 0.5,
            r10: 0.6,
        },
        pairs,
    }
}

/// The daemon's status: `model` is the served run (fitted on `pairs` pairs, a SOTAlign head
/// pair with R@1 0.25 both ways), or none yet.
pub fn status_of(model: Option<RunId>, pairs: u64, c: Counts) -> StatusResult {
    StatusResult {
        version: "0.1.0".into(),
        protocol_version: 1,
        data_dir: "/data".into(),
        device: "cpu".into(),
        image_encoder: None,
        text_encoder: None,
        counts: c,
        model: model.map(|run| ModelInfo {
            run,
            method: AlignMethod::Sotalign,
            dim: 256,
            pairs,
            trained_at_ms: 0,
            metrics: Some(retrieval(0.25, 0.25, c.held_out_pairs)),
            fitted: None,
            stage: None,
        }),
        index: IndexInfo {
            state: if model.is_some() {
                IndexState::Ready
            } else {
                IndexState::Empty
            },
            kind: Some(IndexKind::Exact),
            images: c.images,
            texts: c.texts,
            run: model,
            progress: None,
        },
        jobs: vec![],
        annotators: vec![],
        revision: 0,
    }
}
