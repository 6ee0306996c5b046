//! Review: queues, candidates, confirm / reject / skip, undo, the served model.
use crossterm::event::KeyCode;
use sotalign_protocol::ServerNotification;
use sotalign_protocol::codes;
use sotalign_protocol::types::*;

use super::*;
use crate::rpc::{Call, NetEvent, Reply};

#[test]
fn confirm_sends_the_selected_pair_and_advances_only_when_acknowledged() {
    let mut app = ready_app();
    let calls = app.handle(key('y'));
    assert_eq!(
        calls,
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(101),
            shown: None,
        }]
    );
    // Not acknowledged yet: still on the same sample, and a second decision is refused.
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(1)));
    assert!(app.handle(code(KeyCode::Enter)).is_empty());

    let calls = app.handle(reply(
        Call::Confirm {
            image: SampleId(1),
            text: SampleId(101),
            shown: None,
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
            text: SampleId(102),
            shown: None,
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
            text: SampleId(101),
            shown: None,
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
            text: SampleId(101),
            shown: None,
        }]
    );
}

/// Issue 12: the image queue is the daemon's labelling order (`sotalign/nextToLabel`), each
/// image with why it is queued; when the daemon has nothing new to offer the queue goes on in
/// store order, and a daemon that cannot rank is not an alarm.
#[test]
fn the_image_queue_is_the_daemons_labelling_order_then_store_order() {
    let mut app = ready_app();
    assert_eq!(
        app.image_queue.why.get(&SampleId(1)).map(String::as_str),
        Some("typical of cluster 1 of 3, which no pair covers")
    );
    assert_eq!(app.image_queue.plan, Some((QueueMode::ColdStart, 0.5, 0)));
    // Skipping leaves two queued: more are asked of the daemon, not of the store.
    let calls = app.handle(key('s'));
    assert!(calls.contains(&Call::NextToLabel), "{calls:?}");
    // The next page repeats what is queued or done, plus one new image: only that one joins.
    let calls = app.handle(reply(
        Call::NextToLabel,
        Reply::NextToLabel(ranked_page(&[(1, "penguin"), (3, "apple"), (7, "kite")])),
    ));
    let ids: Vec<u64> = app.image_queue.items.iter().map(|s| s.id.0).collect();
    assert_eq!(ids, vec![2, 3, 7]);
    assert!(!calls.contains(&Call::NextToLabel));
    // A page with nothing new: store order from the start (handled ones stay filtered).
    let calls = app.handle(reply(
        Call::NextToLabel,
        Reply::NextToLabel(ranked_page(&[(2, "seal"), (3, "apple")])),
    ));
    assert_eq!(
        calls,
        vec![Call::Queue {
            modality: Modality::Image,
            offset: 0
        }]
    );
    assert!(!app.image_queue.ranked);
    app.handle(reply(
        Call::Queue {
            modality: Modality::Image,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult {
            items: vec![image(1, "penguin"), image(2, "seal"), image(9, "drum")],
            total: 3,
        }),
    ));
    let ids: Vec<u64> = app.image_queue.items.iter().map(|s| s.id.0).collect();
    assert_eq!(
        ids,
        vec![2, 3, 7, 9],
        "the skipped penguin is not re-queued"
    );

    // A daemon that cannot rank: store order, an info line, no error.
    let mut app = App::new();
    let calls = app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    assert!(calls.contains(&Call::NextToLabel));
    let calls = app.handle(fail(Call::NextToLabel, Some(-32601), "method not found"));
    assert_eq!(
        calls,
        vec![Call::Queue {
            modality: Modality::Image,
            offset: 0
        }]
    );
    assert_eq!(app.error_count, 0);
    assert!(app.message.unwrap().text.contains("store order"));
}

#[test]
fn paging_skips_samples_already_handled_and_fetches_more_when_low() {
    let mut app = App::new();
    app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    // Store order (the daemon had nothing to rank).
    let calls = app.handle(reply(
        Call::NextToLabel,
        Reply::NextToLabel(ranked_page(&[])),
    ));
    assert_eq!(
        calls,
        vec![Call::Queue {
            modality: Modality::Image,
            offset: 0
        }]
    );
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

/// Issue 12: after `r`, the pane said "run 2" while the list still held run 1's scores and
/// order. Candidates follow the model the daemon serves: an answer scored by the replaced model
/// that arrives after `status` named the new one is refetched, and the title names the run that
/// scored what is on screen.
#[test]
fn after_a_realign_the_candidates_on_screen_are_the_new_models() {
    let mut app = ready_app();
    app.handle(reply(
        Call::Status,
        Reply::Status(status_of(Some(RunId(1)), 0, counts(0, 0))),
    ));
    assert_eq!(app.served_run, Some(RunId(1)));
    // A suggestion call made under run 1 (u, s, a reject emptying the list...) is in flight
    // when the re-align ends: jobFinished refetches, status names run 2...
    let calls = app.handle(Event::Net(NetEvent::Notification(
        ServerNotification::JobFinished(JobFinishedParams {
            job: JobId(2),
            kind: JobKind::Align,
            state: JobState::Succeeded,
            last_seq: 3,
            elapsed_secs: 4.0,
            run: Some(RunId(2)),
            metrics: None,
            ingested: None,
            error: None,
        }),
    )));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(1)
    }));
    app.handle(reply(
        Call::Status,
        Reply::Status(status_of(Some(RunId(2)), 0, counts(0, 0))),
    ));
    // ...and then the old call's answer (run 1 order) arrives last: not shown, asked again.
    let calls = app.handle(suggest_reply_from(
        RunId(1),
        image(1, "penguin"),
        vec![
            cand(text(101, "A penguin swims."), 0.62, 1),
            cand(text(102, "A seal on ice."), 0.41, 2),
        ],
    ));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(1)
        }]
    );
    assert_eq!(app.review().candidates, Loadable::Loading);
    app.handle(suggest_reply_from(
        RunId(2),
        image(1, "penguin"),
        vec![
            cand(text(102, "A seal on ice."), 0.7, 1),
            cand(text(101, "A penguin swims."), 0.3, 2),
        ],
    ));
    assert_eq!(app.review().candidates_run, Some(RunId(2)));
    let shown = app.review().candidates.ready().unwrap();
    assert_eq!(shown[0].sample.id, SampleId(102));
    assert_eq!(shown[0].score, 0.7);
    // A second stale answer for the same sample and run is shown, never refetched in a loop.
    let calls = app.handle(suggest_reply_from(
        RunId(1),
        image(1, "penguin"),
        vec![cand(text(101, "A penguin swims."), 0.62, 1)],
    ));
    assert!(calls.is_empty());
}

#[test]
fn a_model_swapped_in_while_a_realign_runs_refreshes_both_queues_candidates() {
    let mut app = ready_app();
    app.handle(Event::Tick { now_ms: 10_000 });
    app.handle(reply(
        Call::Status,
        Reply::Status(status_of(Some(RunId(1)), 0, counts(0, 0))),
    ));
    // The caption queue was looked at under run 1.
    app.handle(code(KeyCode::Tab));
    app.handle(reply(
        Call::Queue {
            modality: Modality::Text,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult {
            items: vec![text(201, "A red apple.")],
            total: 1,
        }),
    ));
    app.handle(suggest_reply(
        text(201, "A red apple."),
        vec![cand(image(3, "apple"), 0.5, 1)],
    ));
    app.handle(code(KeyCode::Tab));
    // r: while it runs the TUI polls status, so a first-stage model published mid-job shows.
    app.handle(key('r'));
    app.handle(reply(
        Call::Align(AlignParams::default()),
        Reply::Align(AlignResult {
            job: JobId(2),
            run: RunId(2),
        }),
    ));
    assert_eq!(
        app.handle(Event::Tick { now_ms: 12_500 }),
        vec![Call::Status]
    );
    let calls = app.handle(reply(
        Call::Status,
        Reply::Status(status_of(Some(RunId(2)), 0, counts(0, 0))),
    ));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(1)
        }]
    );
    // The hidden caption queue refreshes when shown, not before.
    let calls = app.handle(code(KeyCode::Tab));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(201)
        }]
    );
}

/// Issue 12: "A pineapple." was listed twice, and rejecting one moved its twin to the top.
#[test]
fn identical_captions_are_listed_once_and_a_reject_applies_to_the_caption() {
    let mut app = ready_app();
    app.handle(key('s')); // on to image 2
    // An older daemon: twins listed separately, `duplicates` absent.
    app.handle(suggest_reply(
        image(2, "seal"),
        vec![
            cand(text(110, "A pineapple."), 0.61, 1),
            cand(text(111, "A pineapple."), 0.60, 2),
            cand(text(112, "A seal on ice."), 0.50, 3),
            cand(text(113, "A pineapple."), 0.40, 4),
        ],
    ));
    let shown = app.review().candidates.ready().unwrap().clone();
    let captions: Vec<_> = shown.iter().map(|c| caption_of(c).unwrap()).collect();
    assert_eq!(captions, vec!["A pineapple.", "A seal on ice."]);
    assert_eq!(
        (shown[0].sample.id, shown[0].duplicates),
        (SampleId(110), 2)
    );
    assert_eq!((shown[0].rank, shown[1].rank), (1, 2));
    assert_eq!(shown[0].score, 0.61, "the best score of the group is kept");
    // Reject the pineapple: its twins go with it, the seal is next.
    let calls = app.handle(key('n'));
    assert_eq!(
        calls,
        vec![Call::Reject {
            image: SampleId(2),
            text: SampleId(110),
            shown: None,
        }]
    );
    app.handle(reply(
        calls[0].clone(),
        Reply::Reject(DecisionResult {
            decision: decision(7, DecisionKind::Reject, 2, 110),
            changed: true,
            counts: counts(0, 1),
        }),
    ));
    let shown = app.review().candidates.ready().unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].sample.id, SampleId(112));
    // A later answer (a daemon that rejected only text 110) still carries the twin: not shown.
    app.handle(suggest_reply(
        image(2, "seal"),
        vec![
            cand(text(111, "A pineapple."), 0.60, 1),
            cand(text(112, "A seal on ice."), 0.50, 2),
        ],
    ));
    let shown = app.review().candidates.ready().unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].sample.id, SampleId(112));
    // Undo of the reject brings the caption back.
    app.handle(key('u'));
    app.handle(reply(
        Call::Undo {
            decision: DecisionId(7),
        },
        Reply::Undo(UndoResult {
            undone: decision(7, DecisionKind::Reject, 2, 110),
            counts: counts(0, 0),
        }),
    ));
    app.handle(suggest_reply(
        image(2, "seal"),
        vec![
            cand(text(111, "A pineapple."), 0.60, 1),
            cand(text(112, "A seal on ice."), 0.50, 2),
        ],
    ));
    assert_eq!(app.review().candidates.ready().unwrap().len(), 2);
}

#[test]
fn grouping_keeps_the_daemons_counts_and_never_merges_images_or_different_text() {
    let mut a = cand(text(1, "A cat."), 0.5, 1);
    a.duplicates = 3; // a daemon that groups: counted already
    let b = cand(text(2, "A cat"), 0.4, 2); // not the same text
    let c = cand(text(3, "A cat."), 0.9, 3); // a twin the daemon missed, scoring higher
    let i1 = cand(image(4, "cat"), 0.3, 4);
    let i2 = cand(image(5, "cat"), 0.2, 5); // same key, still two images
    let g = group_captions(vec![a, b, c, i1, i2]);
    let ids: Vec<u64> = g.iter().map(|c| c.sample.id.0).collect();
    assert_eq!(ids, vec![3, 2, 4, 5]);
    assert_eq!(
        g[0].duplicates, 4,
        "3 from the daemon + the one folded here"
    );
    assert_eq!(
        g.iter().map(|c| c.rank).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
}

fn changed(revision: u64, d: Decision, undone: bool, c: Counts) -> Event {
    Event::Net(NetEvent::Notification(
        ServerNotification::DecisionsChanged(DecisionsChangedParams {
            revision,
            decision: d,
            undone,
            counts: c,
        }),
    ))
}

/// Issue 13: two annotators on one daemon. Another's confirm of the image on screen moves this
/// TUI on at once; another's decision on a caption shown refetches the candidates; the echo of
/// our own decision changes nothing; the revision the candidates were shown at goes with a
/// decision.
#[test]
fn another_annotators_decisions_arrive_without_a_restart() {
    let mut app = ready_app();
    app.handle(reply(
        Call::Status,
        Reply::Status(status_of(None, 0, counts(0, 0))),
    ));
    app.handle(changed(
        7,
        decision(1, DecisionKind::Reject, 9, 900),
        false,
        counts(0, 1),
    ));
    assert_eq!(app.revision, Some(7));
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![
            cand(text(101, "A penguin."), 0.9, 1),
            cand(text(102, "A seal."), 0.5, 2),
        ],
    ));
    assert_eq!(app.review().candidates_revision, Some(7));
    // Bob confirms a caption shown here with another image: the candidates are refetched.
    let mut bob = decision(2, DecisionKind::Confirm, 3, 102);
    bob.annotator = Some("bob".into());
    let calls = app.handle(changed(8, bob.clone(), false, counts(1, 1)));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(1)
    }));
    assert_eq!(app.counts.unwrap().confirmed_pairs, 1);
    // Image 3 was paired by Bob: it left the queue, which now holds 1 and 2.
    assert_eq!(
        app.review()
            .items
            .iter()
            .map(|s| s.id.0)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![cand(text(101, "A penguin."), 0.9, 1)],
    ));
    // Our confirm carries the revision its candidates were shown at.
    let calls = app.handle(key('y'));
    assert_eq!(
        calls,
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(101),
            shown: Some(8),
        }]
    );
    // Its echo arrives before the acknowledgement: left to the acknowledgement.
    let ours = decision(3, DecisionKind::Confirm, 1, 101);
    assert!(
        app.handle(changed(9, ours.clone(), false, counts(2, 1)))
            .is_empty()
    );
    app.handle(reply(
        calls[0].clone(),
        Reply::Confirm(DecisionResult {
            decision: ours,
            changed: true,
            counts: counts(2, 1),
        }),
    ));
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(2)));
    // Bob confirms the image now on screen: this TUI moves on, and says why.
    app.handle(suggest_reply(
        image(2, "seal"),
        vec![cand(text(102, "A seal."), 0.5, 1)],
    ));
    let mut bob2 = decision(4, DecisionKind::Confirm, 2, 105);
    bob2.annotator = Some("bob".into());
    app.handle(changed(10, bob2, false, counts(3, 1)));
    assert!(app.review().current().is_none());
    assert!(
        app.message.as_ref().unwrap().text.contains("bob paired"),
        "{:?}",
        app.message
    );
}

/// Issue 13: a decision on a pair that changed since it was shown is refused with
/// `STALE_DECISION`; nothing is saved and the queue moves on to the next sample.
#[test]
fn a_stale_decision_is_not_saved_and_the_queue_moves_on() {
    let mut app = ready_app();
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![cand(text(101, "A penguin."), 0.9, 1)],
    ));
    let calls = app.handle(key('y'));
    let calls = app.handle(fail(
        calls[0].clone(),
        Some(codes::STALE_DECISION),
        "the pair changed since revision 3",
    ));
    assert!(app.pending.is_none());
    assert_eq!(app.session.confirmed, 0);
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(2)));
    // Two left: the daemon is asked for more images to label.
    assert_eq!(
        calls,
        vec![
            Call::Suggest {
                sample: SampleId(2)
            },
            Call::NextToLabel
        ]
    );
    let m = app.message.as_ref().unwrap();
    assert!(m.text.contains("changed since it was shown"), "{m:?}");
    // Not an error alarm: the annotator did nothing wrong.
    assert_eq!(app.error_count, 0);
}

/// Issue 12: when the right caption is not among the suggestions, the annotator searches the
/// captions in place (`f`, words then meaning) and confirms a hit with the image on screen, in
/// one interaction; Esc leaves the field without searching.
#[test]
fn find_searches_the_other_side_in_place_and_y_confirms_a_hit() {
    let mut app = ready_app();
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![cand(text(101, "A seal."), 0.9, 1)],
    ));
    assert!(app.handle(key('f')).is_empty());
    for c in "kitt".chars() {
        app.handle(key(c));
    }
    assert_eq!(app.finding.as_deref(), Some("kitt"));
    // Keys go to the field, not to the review: 'y' and 'n' are letters here.
    app.handle(code(KeyCode::Esc));
    assert!(app.finding.is_none());
    assert!(app.pending.is_none());
    app.handle(key('f'));
    for c in "cat".chars() {
        app.handle(key(c));
    }
    let calls = app.handle(code(KeyCode::Enter));
    assert_eq!(
        calls,
        vec![Call::Find {
            for_sample: SampleId(1),
            target: Modality::Text,
            text: "cat".into()
        }]
    );
    let mut paired = text(104, "A cat on a mat.");
    paired.state = SampleState::Paired;
    app.handle(reply(
        calls[0].clone(),
        Reply::Find(SearchResult {
            hits: vec![
                cand(paired, 0.8, 1),
                cand(text(102, "A black cat."), 0.7, 2),
                cand(text(103, "A kitten, a small cat."), 0.6, 3),
            ],
            run: RunId(1),
            index: IndexKind::Exact,
        }),
    ));
    assert_eq!(app.review().found.as_deref(), Some("cat"));
    let shown: Vec<u64> = app
        .review()
        .candidates
        .ready()
        .unwrap()
        .iter()
        .map(|c| c.sample.id.0)
        .collect();
    assert_eq!(shown, vec![102, 103], "paired captions are not offered");
    app.handle(key('j'));
    let calls = app.handle(key('y'));
    assert_eq!(
        calls,
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(103),
            shown: None,
        }]
    );
}

/// Issue 12, effort: each confirmation records how many candidates the annotator read before
/// the right one (its rank among the distinct captions shown; after a search, the suggestions
/// shown + the search's cost + the hit's rank); the dashboard shows the median of the last 50,
/// and an undone confirmation leaves the figure.
#[test]
fn effort_is_the_rank_read_at_confirmation_and_undo_takes_it_back() {
    let mut app = ready_app();
    assert_eq!(app.effort_median(), None);
    // The second suggestion is the right one: 2 read.
    app.handle(key('j'));
    let c = app.handle(key('y')).remove(0);
    app.handle(reply(
        c,
        Reply::Confirm(DecisionResult {
            decision: decision(7, DecisionKind::Confirm, 1, 102),
            changed: true,
            counts: counts(1, 0),
        }),
    ));
    assert_eq!(app.effort_median(), Some((2.0, 1)));
    // Image 2: not among the suggestions; found by a search, first hit.
    app.handle(suggest_reply(
        image(2, "seal"),
        vec![cand(text(101, "A penguin swims."), 0.5, 1)],
    ));
    app.handle(key('f'));
    app.handle(key('s'));
    let calls = app.handle(code(KeyCode::Enter));
    app.handle(reply(
        calls[0].clone(),
        Reply::Find(SearchResult {
            hits: vec![cand(text(105, "A seal on ice."), 0.7, 1)],
            run: RunId(1),
            index: IndexKind::Exact,
        }),
    ));
    let c = app.handle(key('y')).remove(0);
    app.handle(reply(
        c,
        Reply::Confirm(DecisionResult {
            decision: decision(8, DecisionKind::Confirm, 2, 105),
            changed: true,
            counts: counts(2, 0),
        }),
    ));
    // One suggestion was shown before the search: 1 read + the search + the first hit.
    let searched = f64::from(1 + crate::rpc::SEARCH_COST + 1);
    assert_eq!(app.effort_median(), Some(((2.0 + searched) / 2.0, 2)));
    // Undo the search-found pair: the figure is the first confirmation's again.
    let u = app.handle(key('u')).remove(0);
    app.handle(reply(
        u,
        Reply::Undo(UndoResult {
            undone: decision(8, DecisionKind::Confirm, 2, 105),
            counts: counts(1, 0),
        }),
    ));
    assert_eq!(app.effort_median(), Some((2.0, 1)));
    // One confirmation left in the window.
    assert_eq!(app.effort.len(), 1);
}

/// Cold start: with no model the daemon cannot rank by meaning (`NOT_READY`), so the find
/// falls back to the captions that contain the words, unscored, and `y` still confirms a hit.
#[test]
fn find_without_a_model_falls_back_to_words() {
    let mut app = ready_app();
    app.handle(key('f'));
    for c in "coin".chars() {
        app.handle(key(c));
    }
    let calls = app.handle(code(KeyCode::Enter));
    let calls = app.handle(fail(
        calls[0].clone(),
        Some(codes::NOT_READY),
        "no aligned model yet",
    ));
    assert_eq!(
        calls,
        vec![Call::FindWords {
            for_sample: SampleId(1),
            target: Modality::Text,
            text: "coin".into()
        }]
    );
    assert_eq!(app.error_count, 0, "not an alarm");
    app.handle(reply(
        calls[0].clone(),
        Reply::FindWords(ListSamplesResult {
            items: vec![text(201, "A penny coin."), text(202, "A gold coin.")],
            total: 2,
        }),
    ));
    let shown = app.review().candidates.ready().unwrap();
    assert_eq!(
        shown.iter().map(|c| c.sample.id.0).collect::<Vec<_>>(),
        vec![201, 202]
    );
    assert!(shown.iter().all(|c| c.score.is_nan()), "no made-up score");
    assert_eq!(
        app.handle(key('y')),
        vec![Call::Confirm {
            image: SampleId(1),
            text: SampleId(201),
            shown: None,
        }]
    );
}
