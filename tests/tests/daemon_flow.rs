//! The full curation flow against the real daemon, over stdio and over TCP: ingest reference
//! embeddings -> align -> suggest -> confirm -> re-align -> evaluate; progress ordering;
//! cancellation; several clients at once; the TCP token.
mod common;

use std::collections::HashSet;
use std::io::{Read, Write};

use common::*;
use sotalign_protocol::types::*;
use sotalign_protocol::{Client, codes, methods};

const N_TRAIN: usize = 40;
const N_TEST: usize = 60;
const N_UNPAIRED: usize = 60;

/// Progress of one job arrived complete and in order: seq 1..=last without gaps, `begin` first
/// and `end` last, and `jobFinished` names the last seq.
fn check_progress(p: &[JobProgress], finished: &JobFinishedParams) {
    assert!(!p.is_empty(), "no progress notifications");
    let seqs: Vec<u64> = p.iter().map(|v| v.seq).collect();
    assert_eq!(
        seqs,
        (1..=finished.last_seq).collect::<Vec<_>>(),
        "progress seqs out of order or missing"
    );
    assert_eq!(p[0].kind, ProgressKind::Begin);
    assert_eq!(p.last().unwrap().kind, ProgressKind::End);
    let pct: Vec<u32> = p.iter().filter_map(|v| v.percentage).collect();
    assert!(
        pct.windows(2).all(|w| w[0] <= w[1]),
        "percentage went backwards: {pct:?}"
    );
}

fn flow<R: Read, W: Write>(c: &mut Client<R, W>, fx: &Fixture) {
    let init = c.initialize("flow-test", None).unwrap();
    let caps = init.sotalign().expect("sotalign capabilities");
    assert!(caps.methods.iter().any(|m| m == "sotalign/align"));

    // Ingest: counts match the manifest.
    let added = ingest(c, &fx.manifest);
    assert_eq!(added as usize, 2 * (N_TRAIN + N_TEST + N_UNPAIRED));
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    let k = &st.counts;
    assert_eq!(
        (k.images, k.texts),
        (
            (N_TRAIN + N_TEST + N_UNPAIRED) as u64,
            (N_TRAIN + N_TEST + N_UNPAIRED) as u64
        )
    );
    assert_eq!(
        (k.confirmed_pairs, k.held_out_pairs, k.unpaired_images),
        (N_TRAIN as u64, N_TEST as u64, N_UNPAIRED as u64)
    );
    assert_eq!(st.image_encoder.as_ref().map(|e| e.dim), Some(1280));
    assert_eq!(st.text_encoder.as_ref().map(|e| e.dim), Some(384));
    assert!(st.model.is_none());

    // Suggestions before any model: a clear NOT_READY.
    let e = c
        .call::<methods::SuggestPairs>(SuggestPairsParams {
            strategy: Strategy::Confidence,
            limit: 5,
            seed: None,
        })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::NOT_READY));

    // Align #1.
    let a = c.call::<methods::Align>(align_params(40)).unwrap();
    let f1 = wait_finished(c, a.job);
    assert_eq!(f1.state, JobState::Succeeded, "{f1:?}");
    assert_eq!(f1.run, Some(a.run));
    check_progress(&progress_of(c, a.job), &f1);
    let m1 = f1.metrics.expect("held-out metrics");
    assert_eq!(m1.pairs, N_TEST as u64);
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    let model = st.model.expect("a served model");
    assert_eq!((model.run, model.pairs), (a.run, N_TRAIN as u64));
    assert!(model.fitted.is_some());
    assert_eq!(st.index.state, IndexState::Ready);

    // Global suggestions: unpaired on both sides, never twice the same text.
    let sp = c
        .call::<methods::SuggestPairs>(SuggestPairsParams {
            strategy: Strategy::Confidence,
            limit: 10,
            seed: Some(3),
        })
        .unwrap();
    assert_eq!(sp.run, a.run);
    assert!(!sp.suggestions.is_empty());
    let texts: HashSet<SampleId> = sp.suggestions.iter().map(|s| s.text.id).collect();
    assert_eq!(texts.len(), sp.suggestions.len());
    for s in &sp.suggestions {
        assert_eq!(
            (s.image.state, s.text.state),
            (SampleState::Unpaired, SampleState::Unpaired)
        );
        assert!(s.score.is_finite() && s.score.abs() <= 1.0 + 1e-5);
    }
    for strategy in [
        Strategy::Random,
        Strategy::MutualNn,
        Strategy::OtMass,
        Strategy::Diverse,
    ] {
        let r = c
            .call::<methods::SuggestPairs>(SuggestPairsParams {
                strategy,
                limit: 5,
                seed: Some(1),
            })
            .unwrap();
        assert_eq!(r.strategy, strategy);
        assert!(r.suggestions.len() <= 5);
    }

    // Per-sample suggestions for an unpaired image: texts, best first.
    let unpaired = c
        .call::<methods::ListSamples>(ListSamplesParams {
            modality: Modality::Image,
            state: Some(SampleState::Unpaired),
            filter: None,
            offset: 0,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(unpaired.total, N_UNPAIRED as u64);
    let img = &unpaired.items[0];
    let sug = c
        .call::<methods::SuggestForSample>(SuggestForSampleParams {
            sample: img.id,
            k: 5,
            include_rejected: false,
        })
        .unwrap();
    assert_eq!(sug.candidates.len(), 5);
    assert!(
        sug.candidates
            .iter()
            .all(|c| c.sample.modality == Modality::Text && c.sample.state != SampleState::HeldOut)
    );
    assert!(sug.candidates.windows(2).all(|w| w[0].score >= w[1].score));
    // Reject the top candidate: it is not suggested again.
    let top = sug.candidates[0].sample.id;
    c.call::<methods::Reject>(DecideParams {
        image: img.id,
        text: top,
        source: None,
        annotator: None,
        shown_revision: None,
    })
    .unwrap();
    let again = c
        .call::<methods::SuggestForSample>(SuggestForSampleParams {
            sample: img.id,
            k: 5,
            include_rejected: false,
        })
        .unwrap();
    assert!(again.candidates.iter().all(|c| c.sample.id != top));

    // Search by sample (image -> texts) and by free text (MiniLM from the fetched assets; a
    // NOT_READY naming `sotalign fetch` without them, see daemon_encoders.rs).
    let hits = c
        .call::<methods::Search>(SearchParams {
            query: SearchQuery::Sample(img.id),
            target: None,
            k: 3,
        })
        .unwrap();
    assert_eq!(hits.hits.len(), 3);
    assert!(
        hits.hits
            .iter()
            .all(|h| h.sample.modality == Modality::Text)
    );
    let text = c.call::<methods::Search>(SearchParams {
        query: SearchQuery::Text("a penguin".into()),
        target: None,
        k: 3,
    });
    if sotalign::assets::Assets::default_location().is_complete("minilm") {
        let r = text.unwrap();
        assert_eq!(r.hits.len(), 3);
        assert!(r.hits.iter().all(|h| h.sample.modality == Modality::Image));
    } else {
        let e = text.unwrap_err();
        assert_eq!(e.code(), Some(codes::NOT_READY));
        assert!(e.to_string().contains("sotalign fetch"), "{e}");
    }

    // An annotator confirms 20 true pairs (the fixture's unpaired rows match by row).
    let texts_unpaired = c
        .call::<methods::ListSamples>(ListSamplesParams {
            modality: Modality::Text,
            state: Some(SampleState::Unpaired),
            filter: None,
            offset: 0,
            limit: 1000,
        })
        .unwrap();
    let mut confirmed = 0;
    for im in unpaired.items.iter().take(20) {
        let t = texts_unpaired
            .items
            .iter()
            .find(|t| t.key == im.key)
            .expect("matching text");
        let d = c
            .call::<methods::Confirm>(DecideParams {
                image: im.id,
                text: t.id,
                source: Some("test:oracle".into()),
                annotator: None,
                shown_revision: None,
            })
            .unwrap();
        assert!(d.changed);
        confirmed += 1;
        assert_eq!(d.counts.confirmed_pairs, (N_TRAIN + confirmed) as u64);
    }
    // Undo the last one, then redo it.
    let u = c
        .call::<methods::Undo>(UndoParams { decision: None })
        .unwrap();
    assert_eq!(u.counts.confirmed_pairs, (N_TRAIN + 19) as u64);
    c.call::<methods::Confirm>(DecideParams {
        image: u.undone.image,
        text: u.undone.text,
        source: None,
        annotator: None,
        shown_revision: None,
    })
    .unwrap();
    let pairs = c
        .call::<methods::ListPairs>(ListPairsParams {
            state: Some(PairState::Confirmed),
            offset: 0,
            limit: 5,
        })
        .unwrap();
    assert_eq!(pairs.total, (N_TRAIN + 20) as u64);
    assert_eq!(
        pairs.items[0].source, "flow-test",
        "default source is the client name"
    );

    // Re-align on 60 pairs; evaluate; runs show both, oldest first.
    let a2 = c.call::<methods::Align>(align_params(40)).unwrap();
    let f2 = wait_finished(c, a2.job);
    assert_eq!(f2.state, JobState::Succeeded, "{f2:?}");
    check_progress(&progress_of(c, a2.job), &f2);
    let ev = c
        .call::<methods::Evaluate>(EvaluateParams { run: None })
        .unwrap();
    assert_eq!(ev.run, a2.run);
    for r in [ev.metrics.image_to_text, ev.metrics.text_to_image] {
        assert!(r.r1 <= r.r5 && r.r5 <= r.r10 && r.r10 <= 1.0, "{r:?}");
    }
    assert_eq!(
        Some(ev.metrics),
        f2.metrics,
        "evaluate agrees with the job's metrics"
    );
    let runs = c.call::<methods::Runs>(RunsParams { limit: 10 }).unwrap();
    let ids: Vec<RunId> = runs.runs.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![a.run, a2.run]);
    assert_eq!(
        (runs.runs[0].pairs, runs.runs[1].pairs),
        (N_TRAIN as u64, (N_TRAIN + 20) as u64)
    );
    // The evaluation of an older run is its recorded metrics.
    let old = c
        .call::<methods::Evaluate>(EvaluateParams { run: Some(a.run) })
        .unwrap();
    assert_eq!(old.metrics, m1);

    c.shutdown().unwrap();
}

#[test]
fn curation_flow_over_stdio() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), N_TRAIN, N_TEST, N_UNPAIRED);
    let (mut d, mut c, _) = spawn_stdio(&dir.path().join("data"), &[]);
    flow(&mut c, &fx);
    // Over stdio, `exit` ends the process, cleanly.
    let status = d.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn curation_flow_over_tcp_with_a_second_client_and_a_stalled_one() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), N_TRAIN, N_TEST, N_UNPAIRED);
    let d = spawn_tcp(&dir.path().join("data"), &[]);
    let addr = d.addr.clone().unwrap();
    // A client that initializes, asks for status, then never reads again: it must not hold
    // up anyone (its notifications pile up in its own queues only).
    let mut stalled = connect(&addr);
    stalled.initialize("stalled", None).unwrap();
    let mut c = connect(&addr);
    flow(&mut c, &fx);
    // A second, fresh client sees the same state and can still talk (the daemon lives on).
    let mut c2 = connect(&addr);
    c2.initialize("second", None).unwrap();
    let st = c2.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(st.counts.confirmed_pairs, (N_TRAIN + 20) as u64);
    drop(stalled);
}

/// `auto` over JSON-RPC: the daemon fits the validation-chosen fusion, serves it (status names
/// the choice), suggests pairs with it, and serves it again after a restart.
#[test]
fn auto_alignment_is_served_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), N_TRAIN, 20, 40);
    let data = dir.path().join("data");
    let fitted = {
        let (mut d, mut c, _) = spawn_stdio(&data, &[]);
        c.initialize("auto-test", None).unwrap();
        ingest(&mut c, &fx.manifest);
        let a = c
            .call::<methods::Align>(AlignParams {
                method: AlignMethod::Auto,
                preset: None,
                config: None,
                seed: Some(1),
            })
            .unwrap();
        let f = wait_finished(&mut c, a.job);
        assert_eq!(f.state, JobState::Succeeded, "{f:?}");
        check_progress(&progress_of(&mut c, a.job), &f);
        let st = c.call::<methods::Status>(Empty {}).unwrap();
        let model = st.model.expect("a served model");
        let fitted = model.fitted.clone().unwrap_or_default();
        assert!(fitted.starts_with("auto: fusion("), "{fitted}");
        assert_eq!(st.index.state, IndexState::Ready);
        let sp = c
            .call::<methods::SuggestPairs>(SuggestPairsParams {
                strategy: Strategy::Confidence,
                limit: 5,
                seed: None,
            })
            .unwrap();
        assert_eq!(sp.run, a.run);
        assert!(!sp.suggestions.is_empty());
        assert!(sp.suggestions.iter().all(|s| s.score.is_finite()));
        c.shutdown().unwrap();
        let _ = d.child.wait();
        fitted
    };
    // A new daemon on the same data directory serves the same `auto` model.
    let (_d, mut c, _) = spawn_stdio(&data, &[]);
    c.initialize("auto-test-2", None).unwrap();
    let st = wait_for_model(&mut c);
    let model = st.model.expect("the model is reloaded after a restart");
    assert_eq!(model.fitted.as_deref(), Some(fitted.as_str()));
}

#[test]
fn cancellation_stops_the_job_and_keeps_the_previous_model() {
    // (Since the two-stage re-align, "the previous model" is the run's own closed-form stage.)
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), N_TRAIN, 20, 20);
    let (_d, mut c, _) = spawn_stdio(&dir.path().join("data"), &[]);
    c.initialize("cancel-test", None).unwrap();
    ingest(&mut c, &fx.manifest);
    let a = c.call::<methods::Align>(align_params(100_000)).unwrap();
    // A second alignment while one runs is refused with the running job's id.
    let e = c.call::<methods::Align>(align_params(10)).unwrap_err();
    assert_eq!(e.code(), Some(codes::JOB_CONFLICT));
    // Wait until training runs, then cancel.
    let seen = match c
        .wait_for(|n| {
            matches!(n, sotalign_protocol::ServerNotification::Progress(p)
            if p.value.job == a.job && p.value.stage == JobStage::Refine && p.value.step > 0)
        })
        .unwrap()
    {
        sotalign_protocol::ServerNotification::Progress(p) => p.value,
        _ => unreachable!(),
    };
    let r = c
        .call::<methods::Cancel>(CancelParams { job: a.job })
        .unwrap();
    assert!(
        matches!(r.job.state, JobState::Cancelling | JobState::Cancelled),
        "{:?}",
        r.job.state
    );
    let f = wait_finished(&mut c, a.job);
    assert_eq!(f.state, JobState::Cancelled);
    // `wait_for` took one progress out of the queue; the rest arrived in order around it.
    let mut p = progress_of(&mut c, a.job);
    assert!(p.windows(2).all(|w| w[0].seq < w[1].seq), "out of order");
    p.push(seen);
    p.sort_by_key(|v| v.seq);
    check_progress(&p, &f);
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    // Fast first, better later: the run's closed-form stage was served before training began;
    // cancelling the training keeps it (the trained heads are never served).
    let served = st
        .model
        .expect("the closed-form stage of the cancelled run stays served");
    assert_eq!(served.run, a.run);
    assert_eq!(served.stage, Some(ModelStage::ClosedForm));
    assert!(st.jobs.is_empty());
    let runs = c.call::<methods::Runs>(RunsParams { limit: 10 }).unwrap();
    // The job was cancelled; the run records the model it did produce (its closed-form stage).
    assert_eq!(runs.runs[0].id, a.run);
    assert_eq!(runs.runs[0].state, JobState::Succeeded);
    let e = c
        .call::<methods::Cancel>(CancelParams { job: JobId(999) })
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::UNKNOWN_JOB));
    // The daemon aligns fine afterwards.
    let a2 = c.call::<methods::Align>(align_params(5)).unwrap();
    assert_eq!(wait_finished(&mut c, a2.job).state, JobState::Succeeded);
}

#[test]
fn token_is_required_off_loopback_and_checked_on_tcp() {
    let dir = tempfile::tempdir().unwrap();
    // Non-loopback without a token: refused at start.
    let out = std::process::Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));

    let d = spawn_tcp(&dir.path().join("data"), &["--token", "s3cret"]);
    let addr = d.addr.clone().unwrap();
    let mut bad = connect(&addr);
    let e = bad
        .initialize("intruder", Some("wrong".into()))
        .unwrap_err();
    assert_eq!(e.code(), Some(codes::UNAUTHORIZED));
    // The connection is closed after the error.
    assert!(bad.call::<methods::Status>(Empty {}).is_err());
    let mut good = connect(&addr);
    good.initialize("friend", Some("s3cret".into())).unwrap();
    good.call::<methods::Status>(Empty {}).unwrap();
}
