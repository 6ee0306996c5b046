//! Reducer tests: queue, decisions, undo, job progress ordering, keys; no terminal, no daemon.
use crossterm::event::KeyCode;
use sotalign_protocol::ServerNotification;
use sotalign_protocol::codes;
use sotalign_protocol::types::*;

use super::*;
use crate::rpc::{Call, NetEvent, Reply};

#[path = "../tests/common/mod.rs"]
mod common;
use common::*;

/// The ten-image data set of these tests, nothing paired before the session.
fn counts(confirmed: u64, rejected: u64) -> Counts {
    counts_of(10, 0, 0, confirmed, rejected)
}

/// Connected, with three unpaired images queued and candidates for the first.
fn ready_app() -> App {
    let mut app = App::new();
    let calls = app.handle(Event::Net(NetEvent::Connected {
        server: "sotalign 0.1.0".into(),
    }));
    assert_eq!(
        calls,
        vec![
            Call::Status,
            Call::Runs,
            Call::Queue {
                modality: Modality::Image,
                offset: 0
            }
        ]
    );
    let calls = app.handle(reply(
        Call::Queue {
            modality: Modality::Image,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult {
            items: vec![image(1, "penguin"), image(2, "seal"), image(3, "apple")],
            total: 3,
        }),
    ));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(1)
        }]
    );
    assert_eq!(app.review().candidates, Loadable::Loading);
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![
            cand(text(101, "A penguin swims."), 0.62, 1),
            cand(text(102, "A seal on ice."), 0.41, 2),
        ],
    ));
    app
}

#[test]
fn confirm_sends_the_selected_pair_and_advances_only_when_acknowledged() {
    let mut app = ready_app();
    let calls = app.handle(key('y'));
    assert_eq!(
        calls,
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(101)
        }]
    );
    // Not acknowledged yet: still on the same sample, and a second decision is refused.
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(1)));
    assert!(app.handle(code(KeyCode::Enter)).is_empty());

    let calls = app.handle(reply(
        Call::Confirm {
            image: SampleId(1),
            text: SampleId(101),
        },
        Reply::Confirm(DecisionResult {
            decision: decision(7, DecisionKind::Confirm, 1, 101),
            changed: true,
            counts: counts(1, 0),
        }),
    ));
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(2)));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(2)
    }));
    assert_eq!(app.session.confirmed, 1);
    assert_eq!(app.counts.map(|c| c.confirmed_pairs), Some(1));
    assert_eq!(app.undo.len(), 1);
    assert!(app.pending.is_none());
}

#[test]
fn moving_the_selection_changes_which_candidate_is_confirmed() {
    let mut app = ready_app();
    app.handle(key('j'));
    app.handle(code(KeyCode::Down)); // already at the last one: stays
    assert_eq!(app.review().selected, 1);
    assert_eq!(
        app.handle(key('y')),
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(102)
        }]
    );
}

#[test]
fn reject_drops_the_candidate_and_stays_on_the_sample() {
    let mut app = ready_app();
    let calls = app.handle(key('n'));
    assert_eq!(
        calls,
        vec![Call::Reject {
            image: SampleId(1),
            text: SampleId(101)
        }]
    );
    app.handle(reply(
        calls[0].clone(),
        Reply::Reject(DecisionResult {
            decision: decision(8, DecisionKind::Reject, 1, 101),
            changed: true,
            counts: counts(0, 1),
        }),
    ));
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(1)));
    let left: Vec<u64> = app
        .review()
        .candidates
        .ready()
        .unwrap()
        .iter()
        .map(|c| c.sample.id.0)
        .collect();
    assert_eq!(left, vec![102]);
    assert_eq!(app.session.rejected, 1);
}

#[test]
fn undo_of_a_confirm_puts_the_sample_back_under_review() {
    let mut app = ready_app();
    let c = app.handle(key('y')).remove(0);
    app.handle(reply(
        c,
        Reply::Confirm(DecisionResult {
            decision: decision(7, DecisionKind::Confirm, 1, 101),
            changed: true,
            counts: counts(1, 0),
        }),
    ));
    let calls = app.handle(key('u'));
    assert_eq!(
        calls,
        vec![Call::Undo {
            decision: DecisionId(7)
        }]
    );
    let calls = app.handle(reply(
        calls[0].clone(),
        Reply::Undo(UndoResult {
            undone: decision(7, DecisionKind::Confirm, 1, 101),
            counts: counts(0, 0),
        }),
    ));
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(1)));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(1)
        }]
    );
    assert_eq!(app.session.confirmed, 0);
    assert!(app.undo.is_empty());
    assert!(!app.review().done.contains(&SampleId(1)));
}

#[test]
fn a_failed_undo_stays_undoable_and_the_error_is_shown() {
    let mut app = ready_app();
    let c = app.handle(key('y')).remove(0);
    app.handle(reply(
        c,
        Reply::Confirm(DecisionResult {
            decision: decision(7, DecisionKind::Confirm, 1, 101),
            changed: true,
            counts: counts(1, 0),
        }),
    ));
    let c = app.handle(key('u')).remove(0);
    app.handle(fail(
        c,
        Some(codes::DECISION_CONFLICT),
        "decision 7 was already undone",
    ));
    assert_eq!(app.undo.len(), 1);
    let msg = app.message.clone().unwrap();
    assert_eq!(msg.level, Level::Error);
    assert!(
        msg.text.contains("1022") && msg.text.contains("already undone"),
        "{}",
        msg.text
    );
    assert_eq!(app.error_count, 1);
}

#[test]
fn nothing_to_undo_says_so_without_calling() {
    let mut app = ready_app();
    assert!(app.handle(key('u')).is_empty());
    assert!(app.message.unwrap().text.contains("nothing to undo"));
}

#[test]
fn skip_moves_on_and_a_late_answer_for_the_skipped_sample_is_ignored() {
    let mut app = ready_app();
    let calls = app.handle(key('s'));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(2)
    }));
    assert_eq!(app.review().skipped, 1);
    // A re-sent answer for sample 1 must not show up under sample 2.
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![cand(text(109, "x"), 0.9, 1)],
    ));
    assert_eq!(app.review().candidates, Loadable::Loading);
}

#[test]
fn a_rejected_confirm_is_shown_as_an_error_and_nothing_moves() {
    let mut app = ready_app();
    let c = app.handle(key('y')).remove(0);
    app.handle(fail(c, Some(codes::STORAGE_ERROR), "disk full"));
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(1)));
    assert!(app.pending.is_none());
    assert!(app.undo.is_empty());
    let msg = app.message.unwrap();
    assert_eq!(msg.level, Level::Error);
    assert!(msg.text.contains("not saved") && msg.text.contains("disk full"));
}

#[test]
fn confirming_pairs_the_partner_so_it_leaves_the_other_queue() {
    let mut app = ready_app();
    // Fill the caption queue too.
    app.handle(code(KeyCode::Tab));
    app.handle(reply(
        Call::Queue {
            modality: Modality::Text,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult {
            items: vec![text(101, "A penguin swims."), text(102, "A seal on ice.")],
            total: 2,
        }),
    ));
    app.handle(code(KeyCode::Tab));
    assert_eq!(app.direction, Modality::Image);
    let c = app.handle(key('y')).remove(0);
    app.handle(reply(
        c,
        Reply::Confirm(DecisionResult {
            decision: decision(7, DecisionKind::Confirm, 1, 101),
            changed: true,
            counts: counts(1, 0),
        }),
    ));
    let texts: Vec<u64> = app.text_queue.items.iter().map(|s| s.id.0).collect();
    assert_eq!(texts, vec![102]);
}

#[test]
fn tab_switches_to_the_caption_queue_and_confirms_the_other_way_round() {
    let mut app = ready_app();
    let calls = app.handle(code(KeyCode::Tab));
    assert_eq!(
        calls,
        vec![Call::Queue {
            modality: Modality::Text,
            offset: 0
        }]
    );
    app.handle(reply(
        calls[0].clone(),
        Reply::Queue(ListSamplesResult {
            items: vec![text(101, "A penguin swims.")],
            total: 1,
        }),
    ));
    app.handle(suggest_reply(
        text(101, "A penguin swims."),
        vec![cand(image(1, "penguin"), 0.6, 1)],
    ));
    assert_eq!(
        app.handle(key('y')),
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(101)
        }]
    );
}

#[test]
fn paging_skips_samples_already_handled_and_fetches_more_when_low() {
    let mut app = App::new();
    app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    let page: Vec<Sample> = (1..=3).map(|i| image(i, &format!("i{i}"))).collect();
    let calls = app.handle(reply(
        Call::Queue {
            modality: Modality::Image,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult {
            items: page,
            total: 250,
        }),
    ));
    // Fewer than the low-water mark queued and more exist: the next page is requested.
    assert!(calls.contains(&Call::Queue {
        modality: Modality::Image,
        offset: 3
    }));
    // A stale page (from before a restart) is ignored.
    app.handle(reply(
        Call::Queue {
            modality: Modality::Image,
            offset: 99,
        },
        Reply::Queue(ListSamplesResult {
            items: vec![image(50, "stale")],
            total: 250,
        }),
    ));
    assert!(!app.image_queue.items.iter().any(|s| s.id == SampleId(50)));
}

fn progress(job: u64, seq: u64, step: u64, eta: Option<f64>) -> Event {
    progress_event(JobProgress {
        loss: Some(1.0),
        eta_secs: eta,
        elapsed_secs: 1.0,
        ..job_progress(job, seq, step, 300)
    })
}

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
    // The ETA counts down between notifications.
    app.handle(Event::Tick { now_ms: 15_000 });
    assert_eq!(app.latest_job().unwrap().eta_secs(app.now_ms), Some(15.0));
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
    assert!(app.message.unwrap().text.contains("run 4 finished"));
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
fn no_model_yet_is_explained_in_the_pane_not_raised_as_an_error() {
    let mut app = App::new();
    app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    app.handle(reply(
        Call::Queue {
            modality: Modality::Image,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult {
            items: vec![image(1, "penguin")],
            total: 1,
        }),
    ));
    app.handle(fail(
        Call::Suggest {
            sample: SampleId(1),
        },
        Some(codes::NOT_READY),
        "no aligned model yet: run sotalign/align first",
    ));
    assert!(
        matches!(app.review().candidates, Loadable::Failed(ref e) if e.code == Some(codes::NOT_READY))
    );
    assert_eq!(app.error_count, 0);
    // y with nothing to confirm does nothing.
    assert!(app.handle(key('y')).is_empty());
}

#[test]
fn losing_the_daemon_shows_the_banner_once_and_reconnecting_refreshes() {
    let mut app = ready_app();
    app.handle(Event::Tick { now_ms: 1_000 });
    let c = app.handle(key('y')).remove(0);
    app.handle(Event::Net(NetEvent::Disconnected {
        reason: "the daemon closed the connection".into(),
        retry_in_ms: 2_000,
        attempt: 1,
    }));
    assert_eq!(
        app.conn,
        Conn::Lost {
            reason: "the daemon closed the connection".into(),
            retry_at_ms: 3_000,
            attempt: 1
        }
    );
    // The in-flight confirm fails; the banner says why, the status line is not flooded.
    app.handle(fail(c, None, "connection lost before the answer came"));
    assert!(app.pending.is_none());
    assert_eq!(app.error_count, 0);
    // Retrying keeps the banner.
    app.handle(Event::Net(NetEvent::Connecting { attempt: 2 }));
    assert!(matches!(app.conn, Conn::Lost { attempt: 2, .. }));
    let calls = app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    assert!(app.is_connected());
    assert!(calls.contains(&Call::Status));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(1)
    }));
    assert!(app.message.unwrap().text.contains("reconnected"));
}

#[test]
fn search_then_open_puts_the_image_first_in_the_review_queue() {
    let mut app = ready_app();
    // The first visit lists the stored images, so there is something to browse at once.
    let listing = app.handle(key('/'));
    assert_eq!(listing, vec![Call::ListImages { filter: None }]);
    assert_eq!(app.screen, Screen::Browse);
    assert_eq!(app.scope(), keys::Scope::Input);
    for c in "bird q".chars() {
        app.handle(key(c)); // 'q' is text here, not quit
    }
    app.handle(code(KeyCode::Backspace));
    app.handle(code(KeyCode::Backspace));
    assert!(!app.should_quit);
    let calls = app.handle(code(KeyCode::Enter));
    assert_eq!(
        calls,
        vec![Call::Search {
            text: "bird".into()
        }]
    );
    // The listing asked for before the query answers late: dropped, the search is awaited.
    let late = app.handle(reply(
        listing[0].clone(),
        Reply::ListImages(ListSamplesResult {
            items: vec![image(1, "penguin")],
            total: 1,
        }),
    ));
    assert!(late.is_empty());
    assert_eq!(app.browse.results, Loadable::Loading);
    let calls = app.handle(reply(
        calls[0].clone(),
        Reply::Search(SearchResult {
            hits: vec![
                cand(image(3, "apple"), 0.3, 1),
                cand(image(9, "owl"), 0.2, 2),
            ],
            run: RunId(1),
            index: IndexKind::Exact,
        }),
    ));
    assert_eq!(calls, vec![Call::Captions { image: SampleId(3) }]);
    let calls = app.handle(key('j'));
    assert_eq!(calls, vec![Call::Captions { image: SampleId(9) }]);
    let calls = app.handle(code(KeyCode::Enter));
    assert_eq!(app.screen, Screen::Review);
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(9)));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(9)
        }]
    );
}

#[test]
fn free_text_search_without_a_text_encoder_falls_back_to_name_matches_and_says_why() {
    let mut app = ready_app();
    app.handle(key('2'));
    app.handle(key('/'));
    for c in "seal".chars() {
        app.handle(key(c));
    }
    let search = app.handle(code(KeyCode::Enter));
    let reason = "free-text search needs the text encoder, which this daemon has not loaded";
    let calls = app.handle(fail(search[0].clone(), Some(codes::NOT_READY), reason));
    assert_eq!(
        calls,
        vec![Call::ListImages {
            filter: Some("seal".into())
        }]
    );
    // The daemon's reason stays on screen with the fallback list; not counted as an alarm.
    assert_eq!(
        app.browse.search_error.as_ref().map(|e| e.message.as_str()),
        Some(reason)
    );
    assert_eq!(app.error_count, 0);
    let calls = app.handle(reply(
        calls[0].clone(),
        Reply::ListImages(ListSamplesResult {
            items: vec![image(2, "seal")],
            total: 1,
        }),
    ));
    // Image -> captions works on the fallback list too.
    assert_eq!(calls, vec![Call::Captions { image: SampleId(2) }]);
    let hits = app.browse.results.ready().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].score, None);

    // Another error (not "not ready") fails the search visibly, with no fallback.
    app.handle(key('/'));
    app.handle(key('x'));
    let search = app.handle(code(KeyCode::Enter));
    assert_eq!(app.browse.search_error, None);
    let calls = app.handle(fail(search[0].clone(), Some(codes::STORAGE_ERROR), "disk"));
    assert!(calls.is_empty());
    assert!(matches!(app.browse.results, Loadable::Failed(_)));
    assert_eq!(app.error_count, 1);
}

#[test]
fn a_model_restored_after_the_daemon_started_is_picked_up_without_a_key() {
    // The daemon answered before its background restore finished: no model, no suggestions.
    let mut app = ready_app();
    app.handle(Event::Tick { now_ms: 10_000 });
    app.handle(reply(
        Call::Status,
        Reply::Status(status_of(None, 0, counts(0, 0))),
    ));
    let calls = app.handle(key('s')); // on to image 2, whose suggestions are "not ready"
    app.handle(fail(
        calls[0].clone(),
        Some(codes::NOT_READY),
        "no aligned model yet",
    ));
    assert_eq!(app.error_count, 0);
    // Asked on the next tick, then every MODEL_POLL_MS, not on every tick.
    assert_eq!(
        app.handle(Event::Tick { now_ms: 10_250 }),
        vec![Call::Status]
    );
    assert!(app.handle(Event::Tick { now_ms: 10_500 }).is_empty());
    let t = 10_250 + MODEL_POLL_MS;
    assert_eq!(app.handle(Event::Tick { now_ms: t }), vec![Call::Status]);
    assert!(app.handle(Event::Tick { now_ms: t + 250 }).is_empty());
    // The model is there now: suggestions for the image under review, from it.
    let calls = app.handle(reply(
        Call::Status,
        Reply::Status(status_of(Some(RunId(1)), 0, counts(0, 0))),
    ));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(2)
        }]
    );
    app.handle(suggest_reply(
        image(2, "seal"),
        vec![cand(text(102, "A seal on ice."), 0.4, 1)],
    ));
    assert_eq!(app.review().candidates_run, Some(RunId(1)));
    // Served and scored by the same run: no more polling, no refetch on the next status.
    assert!(
        app.handle(Event::Tick {
            now_ms: t + 10 * MODEL_POLL_MS
        })
        .is_empty()
    );
    let calls = app.handle(reply(
        Call::Status,
        Reply::Status(status_of(Some(RunId(1)), 0, counts(0, 0))),
    ));
    assert!(calls.is_empty());
}

#[test]
fn help_is_modal() {
    let mut app = ready_app();
    app.handle(key('?'));
    assert!(app.help);
    assert!(app.handle(key('y')).is_empty());
    assert!(app.pending.is_none());
    app.handle(code(KeyCode::Esc));
    assert!(!app.help);
    app.handle(key('q'));
    assert!(app.should_quit);
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
            },
            jobs: vec![],
            annotators: vec![],
            revision: 0,
        }),
    ));
    assert!(app.running_align().is_none());
    assert!(app.jobs[&JobId(4)].lost_track);
}
