//! Dashboard: jobs, progress order, stages and the measured ETA.
use sotalign_protocol::ServerNotification;
use sotalign_protocol::types::*;

use super::*;
use crate::rpc::{Call, NetEvent, Reply};

#[test]
fn progress_is_ordered_by_seq_and_nothing_applies_after_job_finished() {
    let mut app = ready_app();
    app.handle(Event::Tick { now_ms: 10_000 });
    let c = app.handle(key('r'));
    assert_eq!(c, vec![Call::Align(AlignParams::default())]);
    app.handle(reply(
        Call::Align(AlignParams::default()),
        Reply::Align(AlignResult {
            job: JobId(4),
            run: RunId(4),
        }),
    ));
    app.handle(progress(4, 3, 150, Some(20.0)));
    app.handle(progress(4, 2, 120, Some(30.0))); // late: dropped
    let j = app.latest_job().unwrap();
    assert_eq!(j.last_seq, 3);
    assert_eq!(j.progress.as_ref().unwrap().step, 150);
    assert!((j.ratio() - 0.5).abs() < 1e-9);
    // A second r while it runs does not start another job.
    assert!(app.handle(key('r')).is_empty());

    let calls = app.handle(Event::Net(NetEvent::Notification(
        ServerNotification::JobFinished(JobFinishedParams {
            job: JobId(4),
            kind: JobKind::Align,
            state: JobState::Succeeded,
            last_seq: 5,
            elapsed_secs: 31.5,
            run: Some(RunId(4)),
            metrics: None,
            ingested: None,
            error: None,
        }),
    )));
    // New model: refresh counts, runs, and the suggestions under review.
    assert!(calls.contains(&Call::Status));
    assert!(calls.contains(&Call::Runs));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(1)
    }));
    app.handle(progress(4, 5, 300, None)); // in flight when it finished: ignored
    let j = &app.jobs[&JobId(4)];
    assert_eq!(j.last_seq, 3);
    assert!(!j.is_running());
    assert_eq!(j.ratio(), 1.0);
    assert!(app.message.unwrap().text.contains("re-align #4 finished"));
}

#[test]
fn a_failed_job_is_reported_as_an_error() {
    let mut app = ready_app();
    app.handle(Event::Net(NetEvent::Notification(
        ServerNotification::JobFinished(JobFinishedParams {
            job: JobId(2),
            kind: JobKind::Align,
            state: JobState::Failed,
            last_seq: 0,
            elapsed_secs: 1.0,
            run: Some(RunId(2)),
            metrics: None,
            ingested: None,
            error: Some(sotalign_protocol::ErrorObject::new(1050, "disk full")),
        }),
    )));
    let m = app.message.unwrap();
    assert_eq!(m.level, Level::Error);
    assert!(
        m.text.contains("failed") && m.text.contains("disk full"),
        "{}",
        m.text
    );
}

#[test]
fn jobs_that_ended_while_disconnected_are_not_shown_as_running_forever() {
    let mut app = ready_app();
    app.handle(reply(
        Call::Align(AlignParams::default()),
        Reply::Align(AlignResult {
            job: JobId(4),
            run: RunId(4),
        }),
    ));
    app.handle(Event::Net(NetEvent::Disconnected {
        reason: "x".into(),
        retry_in_ms: 0,
        attempt: 1,
    }));
    app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    assert!(app.running_align().is_some());
    app.handle(reply(
        Call::Status,
        Reply::Status(StatusResult {
            version: "0.1.0".into(),
            protocol_version: 1,
            data_dir: "/d".into(),
            device: "cpu".into(),
            image_encoder: None,
            text_encoder: None,
            counts: counts(0, 0),
            model: None,
            index: IndexInfo {
                state: IndexState::Empty,
                kind: None,
                images: 0,
                texts: 0,
                run: None,
                progress: None,
            },
            jobs: vec![],
            annotators: vec![],
            revision: 0,
        }),
    ));
    assert!(app.running_align().is_none());
    assert!(app.jobs[&JobId(4)].lost_track);
}

/// Issue 12: the ETA must come from the measured progress rate, and the stage on screen must
/// be named, whatever stages the daemon reports (a fast closed-form stage, then training).
#[test]
fn the_eta_is_measured_from_the_stage_rate_and_stages_are_named_as_they_come() {
    let mut app = ready_app();
    app.handle(Event::Tick { now_ms: 10_000 });
    let p = |seq, stage, step, total, elapsed| {
        progress_event(JobProgress {
            stage,
            elapsed_secs: elapsed,
            // The daemon's own guess is not what the TUI shows.
            eta_secs: Some(999.0),
            ..job_progress(4, seq, step, total)
        })
    };
    app.handle(p(1, JobStage::Teacher, 0, 1, 0.5));
    app.handle(p(2, JobStage::Teacher, 1, 1, 2.5));
    app.handle(p(3, JobStage::Refine, 0, 300, 3.0));
    let j = app.latest_job().unwrap();
    assert_eq!(j.current_stage(), Some(JobStage::Refine));
    assert_eq!(
        j.stage_eta_secs(app.now_ms),
        None,
        "one report of a stage gives no rate, so no number"
    );
    // 100 of 300 steps in 10 s of the job clock: 200 left at that rate is 20 s.
    app.handle(p(4, JobStage::Refine, 100, 300, 13.0));
    let eta = app
        .latest_job()
        .unwrap()
        .stage_eta_secs(app.now_ms)
        .unwrap();
    assert!((eta - 20.0).abs() < 1e-9, "{eta}");
    // Counted down by the UI clock between notifications, never below 0.
    app.handle(Event::Tick { now_ms: 15_000 });
    let eta = app
        .latest_job()
        .unwrap()
        .stage_eta_secs(app.now_ms)
        .unwrap();
    assert!((eta - 15.0).abs() < 1e-9, "{eta}");
    app.handle(Event::Tick { now_ms: 60_000 });
    assert_eq!(
        app.latest_job().unwrap().stage_eta_secs(app.now_ms),
        Some(0.0)
    );
    let j = app.latest_job().unwrap();
    let names: Vec<String> = j.stages.iter().map(StageView::name).collect();
    assert_eq!(names, vec!["teacher", "refine"]);
    assert_eq!(j.stage_durations(), vec![("teacher".to_owned(), 2.5)]);
    // A stage that stalls gives no ETA rather than a made-up one.
    app.handle(p(5, JobStage::Evaluate, 3, 10, 40.0));
    app.handle(p(6, JobStage::Evaluate, 3, 10, 45.0));
    assert_eq!(app.latest_job().unwrap().stage_eta_secs(app.now_ms), None);
}

#[test]
fn stage_names_are_the_wire_names_and_metrics_read_as_percent() {
    for (stage, wire) in [
        (JobStage::Scan, "scan"),
        (JobStage::Encode, "encode"),
        (JobStage::Teacher, "teacher"),
        (JobStage::Refine, "refine"),
        (JobStage::Evaluate, "evaluate"),
        (JobStage::Index, "index"),
    ] {
        assert_eq!(stage_name(stage), wire);
        assert_eq!(serde_json::to_value(stage).unwrap(), wire);
    }
    assert_eq!(percent(0.081), "8.1%");
    assert_eq!(percent(1.0), "100.0%");
    assert_eq!(
        job_label(JobKind::Align, JobId(3), Some(RunId(2))),
        "re-align #2"
    );
    assert_eq!(job_label(JobKind::Ingest, JobId(3), None), "ingest #3");
    let mut app = ready_app();
    app.handle(Event::Net(NetEvent::Notification(
        ServerNotification::JobFinished(JobFinishedParams {
            job: JobId(3),
            kind: JobKind::Align,
            state: JobState::Succeeded,
            last_seq: 0,
            elapsed_secs: 2.0,
            run: Some(RunId(2)),
            metrics: Some(retrieval(0.081, 0.0625, 20)),
            ingested: None,
            error: None,
        }),
    )));
    let text = app.message.unwrap().text;
    assert!(text.contains("re-align #2 finished"), "{text}");
    assert!(
        text.contains("image->text 8.1%") && text.contains("text->image 6.2%"),
        "{text}"
    );
}

/// Issue 13: `e` on the dashboard exports the confirmed pairs on the daemon (a JSONL manifest
/// under its data dir) and says where; anywhere else `e` does nothing.
#[test]
fn export_from_the_dashboard_writes_under_the_daemons_data_dir() {
    let mut app = ready_app();
    app.handle(reply(
        Call::Status,
        Reply::Status(status_of(None, 0, counts(3, 0))),
    ));
    assert!(app.handle(key('e')).is_empty(), "review screen: no export");
    app.handle(Event::Tick {
        now_ms: 1_700_000_000_000,
    });
    let calls = app.handle(key('3'));
    assert_eq!(calls, vec![Call::Status]);
    let calls = app.handle(key('e'));
    let dest = match &calls[..] {
        [Call::Export { dest }] => dest.clone(),
        other => panic!("{other:?}"),
    };
    let dir = app.status.as_ref().unwrap().data_dir.clone();
    assert!(dest.starts_with(&format!("{dir}/exports/")), "{dest}");
    assert!(dest.ends_with(".jsonl"));
    app.handle(reply(
        calls[0].clone(),
        Reply::Export(ExportResult {
            pairs: 3,
            files: 1,
            dest: dest.clone(),
        }),
    ));
    assert_eq!(app.last_export, Some((dest.clone(), 3)));
    assert!(app.message.as_ref().unwrap().text.contains(&dest));
}
