//! The audit screen (issue 17): suspected pairs from `sotalign/audit`; keep, unpair and
//! re-pair are ordinary decisions sent one at a time, and undo reverts a whole action.
use super::*;

fn audited(image_id: u64, text_id: u64, flagged: bool, alt: Option<u64>) -> AuditedPair {
    let mut img = image(image_id, &format!("img{image_id}"));
    img.state = SampleState::Paired;
    let mut txt = text(text_id, &format!("Caption {text_id}."));
    txt.state = SampleState::Paired;
    AuditedPair {
        image: img,
        text: txt,
        suspicion: if flagged { 0.9 } else { 0.1 },
        score: 0.2,
        flagged,
        alt_text: alt.map(|t| AuditPartner {
            sample: text(t, &format!("Caption {t}.")),
            score: 0.7,
        }),
        alt_image: None,
    }
}

/// On the audit screen with two suspected pairs: 1 <-> 101 (flagged, suggestion 102) and
/// 2 <-> 103.
fn audit_app() -> App {
    let mut app = ready_app();
    let calls = app.handle(key('4'));
    assert_eq!(app.screen, Screen::Audit);
    assert_eq!(calls, vec![Call::Audit]);
    assert_eq!(app.audit.list, Loadable::Loading);
    app.handle(reply(
        Call::Audit,
        Reply::Audit(AuditResult {
            method: AlignMethod::Cca,
            audited: 40,
            flagged: 1,
            pairs: vec![
                audited(1, 101, true, Some(102)),
                audited(2, 103, false, None),
            ],
        }),
    ));
    assert_eq!(app.audit.flagged, 1);
    app
}

fn decided(call: &Call, id: u64) -> Event {
    let Call::AuditDecide { kind, image, text } = call.clone() else {
        panic!("not an audit decision: {call:?}")
    };
    reply(
        call.clone(),
        Reply::AuditDecide(DecisionResult {
            decision: decision(id, kind, image.0, text.0),
            changed: true,
            counts: counts(1, 1),
        }),
    )
}

#[test]
fn repair_rejects_then_confirms_the_suggestion_and_undo_reverts_both() {
    let mut app = audit_app();
    // Keys mean audit actions here: 'p' re-pairs the selected (first) pair.
    let calls = app.handle(key('p'));
    assert_eq!(
        calls,
        vec![Call::AuditDecide {
            kind: DecisionKind::Reject,
            image: SampleId(1),
            text: SampleId(101)
        }]
    );
    assert!(app.pending.is_none(), "not a review decision");
    // One step at a time: nothing else is sent before the first is saved.
    assert!(app.handle(key('n')).is_empty());
    let calls = app.handle(decided(&calls[0], 7));
    assert_eq!(
        calls,
        vec![Call::AuditDecide {
            kind: DecisionKind::Confirm,
            image: SampleId(1),
            text: SampleId(102)
        }]
    );
    app.handle(decided(&calls[0], 8));
    let left: Vec<u64> = app
        .audit
        .list
        .ready()
        .unwrap()
        .iter()
        .map(|p| p.image.id.0)
        .collect();
    assert_eq!(left, vec![2]);
    assert!(
        app.message
            .as_ref()
            .unwrap()
            .text
            .contains("re-paired img1")
    );
    // The daemon's echo of our own re-pair (decisionsChanged) is not another annotator's:
    // the review queue, whose front is image 1 in this set-up, stays as it is.
    app.handle(Event::Net(NetEvent::Notification(
        sotalign_protocol::ServerNotification::DecisionsChanged(DecisionsChangedParams {
            revision: 9,
            decision: decision(8, DecisionKind::Confirm, 1, 102),
            undone: false,
            counts: counts(1, 1),
        }),
    )));
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(1)));
    assert!(
        app.message
            .as_ref()
            .unwrap()
            .text
            .contains("re-paired img1")
    );
    // Undo: the confirm first, then the reject; the pair comes back on top.
    let calls = app.handle(key('u'));
    assert_eq!(
        calls,
        vec![Call::AuditUndo {
            decision: DecisionId(8)
        }]
    );
    let undone = |id: u64, kind, text: u64| UndoResult {
        undone: decision(id, kind, 1, text),
        counts: counts(1, 0),
    };
    let calls = app.handle(reply(
        calls[0].clone(),
        Reply::AuditUndo(undone(8, DecisionKind::Confirm, 102)),
    ));
    assert_eq!(
        calls,
        vec![Call::AuditUndo {
            decision: DecisionId(7)
        }]
    );
    app.handle(reply(
        calls[0].clone(),
        Reply::AuditUndo(undone(7, DecisionKind::Reject, 101)),
    ));
    let list: Vec<u64> = app
        .audit
        .list
        .ready()
        .unwrap()
        .iter()
        .map(|p| p.image.id.0)
        .collect();
    assert_eq!(list, vec![1, 2]);
    assert!(app.audit.undo.is_empty());
    assert!(app.handle(key('u')).is_empty(), "nothing left to undo");
}

#[test]
fn keep_and_unpair_are_one_decision_each_and_a_failure_keeps_the_pair() {
    let mut app = audit_app();
    app.handle(key('j'));
    // The second pair has no suggestion: re-pair says so and sends nothing.
    assert!(app.handle(key('p')).is_empty());
    assert!(
        app.message
            .as_ref()
            .unwrap()
            .text
            .contains("no caption is suggested")
    );
    let calls = app.handle(key('y'));
    assert_eq!(
        calls,
        vec![Call::AuditDecide {
            kind: DecisionKind::Confirm,
            image: SampleId(2),
            text: SampleId(103)
        }]
    );
    app.handle(decided(&calls[0], 9));
    assert!(app.message.as_ref().unwrap().text.contains("kept img2"));
    let calls = app.handle(key('n'));
    assert_eq!(
        calls,
        vec![Call::AuditDecide {
            kind: DecisionKind::Reject,
            image: SampleId(1),
            text: SampleId(101)
        }]
    );
    // Not saved: the pair stays listed, the error is raised, nothing becomes undoable.
    app.handle(fail(calls[0].clone(), Some(-32603), "disk full"));
    assert_eq!(app.audit.list.ready().unwrap().len(), 1);
    assert_eq!(app.audit.undo.len(), 1, "only the keep");
    assert!(app.error_count > 0);
}

#[test]
fn too_few_pairs_is_explained_in_the_pane_and_a_runs_it_again() {
    let mut app = ready_app();
    let calls = app.handle(key('4'));
    app.handle(fail(
        calls[0].clone(),
        Some(sotalign_protocol::codes::INVALID_INPUT),
        "2 pairs: an audit needs at least 4",
    ));
    assert!(matches!(app.audit.list, Loadable::Failed(_)));
    assert_eq!(app.error_count, 0);
    assert_eq!(app.handle(key('a')), vec![Call::Audit]);
    // Leaving and coming back does not re-run a finished audit; a failed one is retried.
    app.handle(reply(
        Call::Audit,
        Reply::Audit(AuditResult {
            method: AlignMethod::Cca,
            audited: 4,
            flagged: 0,
            pairs: vec![],
        }),
    ));
    app.handle(key('1'));
    assert!(app.handle(key('4')).is_empty());
}
