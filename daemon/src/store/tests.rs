use sotalign_protocol::types::{
    AlignMethod, DecisionKind, JobState, Modality, PairState, RetrievalMetrics, SampleState,
};

use super::*;

fn img(key: &str, v: Vec<f32>) -> NewSample {
    NewSample {
        modality: Modality::Image,
        key: key.into(),
        path: Some(format!("/x/{key}.png")),
        text: None,
        vector: Some(v),
    }
}

fn txt(key: &str, caption: &str, v: Vec<f32>) -> NewSample {
    NewSample {
        modality: Modality::Text,
        key: key.into(),
        path: None,
        text: Some(caption.into()),
        vector: Some(v),
    }
}

/// Two images, three texts; (i0, t0) a seed pair, (i1, t1) held out, t2 unpaired.
fn seeded() -> (tempfile::TempDir, Store, Vec<SampleId>) {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path()).unwrap();
    let samples = vec![
        img("i0", vec![1.0, 0.0]),
        img("i1", vec![0.0, 1.0]),
        img("i2", vec![0.5, 0.5]),
        txt("t0", "A cat.", vec![1.0, 0.0, 0.0]),
        txt("t1", "A dog.", vec![0.0, 1.0, 0.0]),
        txt("t2", "A frog.", vec![0.0, 0.0, 1.0]),
    ];
    let pairs = [
        NewPair {
            image: 0,
            text: 3,
            held_out: false,
        },
        NewPair {
            image: 1,
            text: 4,
            held_out: true,
        },
    ];
    let r = s.insert_samples(&samples, &pairs).unwrap();
    assert_eq!((r.inserted, r.duplicates, r.pairs), (6, 0, 2));
    let ids = r.ids.clone();
    (dir, s, ids)
}

#[test]
fn insert_derives_states_and_counts_and_is_idempotent() {
    let (_d, mut s, ids) = seeded();
    let c = s.counts().unwrap();
    assert_eq!(
        (c.images, c.texts, c.unpaired_images, c.unpaired_texts),
        (3, 3, 1, 1)
    );
    assert_eq!(
        (
            c.confirmed_pairs,
            c.held_out_pairs,
            c.rejected_pairs,
            c.pending_encoding
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(s.sample(ids[0]).unwrap().state, SampleState::Paired);
    assert_eq!(s.sample(ids[1]).unwrap().state, SampleState::HeldOut);
    assert_eq!(s.sample(ids[5]).unwrap().state, SampleState::Unpaired);
    // Same keys again: nothing changes.
    let again = s.insert_samples(&[img("i0", vec![9.0, 9.0])], &[]).unwrap();
    assert_eq!(
        (again.inserted, again.duplicates, again.ids[0]),
        (0, 1, ids[0])
    );
    assert_eq!(s.vector(ids[0]).unwrap().1.unwrap(), vec![1.0, 0.0]);
    // A wrong dimension is refused and nothing of the batch is written.
    let err = s
        .insert_samples(&[img("i9", vec![1.0]), img("i8", vec![1.0, 2.0, 3.0])], &[])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Dimension {
                expected: 2,
                actual: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(s.counts().unwrap().images, 3);
}

#[test]
fn listing_filters_by_state_and_substring() {
    let (_d, s, ids) = seeded();
    let (items, total) = s
        .list_samples(Modality::Text, None, Some("DOG"), 0, 10)
        .unwrap();
    assert_eq!((total, items[0].id), (1, ids[4]));
    let (items, total) = s
        .list_samples(Modality::Image, Some(SampleState::Unpaired), None, 0, 10)
        .unwrap();
    assert_eq!((total, items.len(), items[0].id), (1, 1, ids[2]));
    let (items, total) = s.list_samples(Modality::Image, None, None, 1, 1).unwrap();
    assert_eq!((total, items[0].id), (3, ids[1]));
    // `%` in a filter is a literal, not a wildcard.
    assert_eq!(
        s.list_samples(Modality::Text, None, Some("%"), 0, 10)
            .unwrap()
            .1,
        0
    );
}

#[test]
fn decisions_validate_and_undo_restores_exactly() {
    let (_d, mut s, ids) = seeded();
    let (i2, t2, t0) = (ids[2], ids[5], ids[3]);
    // Wrong modality, unknown sample, held-out sample: typed errors, nothing written.
    assert!(matches!(
        s.decide(DecisionKind::Confirm, t2, i2, "x"),
        Err(StoreError::WrongModality { .. })
    ));
    assert!(matches!(
        s.decide(DecisionKind::Confirm, SampleId(999), t2, "x"),
        Err(StoreError::UnknownSample(_))
    ));
    assert!(matches!(
        s.decide(DecisionKind::Confirm, ids[1], t2, "x"),
        Err(StoreError::Conflict {
            reason: "held_out",
            ..
        })
    ));
    assert_eq!(s.decision_count().unwrap(), 0);

    let before = s.counts().unwrap();
    let d1 = s.decide(DecisionKind::Confirm, i2, t2, "tui:ann").unwrap();
    assert!(d1.changed);
    assert_eq!(d1.counts.confirmed_pairs, before.confirmed_pairs + 1);
    assert_eq!(d1.counts.unpaired_images, before.unpaired_images - 1);
    assert_eq!(s.sample(i2).unwrap().state, SampleState::Paired);
    // Same decision again: recorded, but changed = false.
    let d1b = s.decide(DecisionKind::Confirm, i2, t2, "tui:ann").unwrap();
    assert!(!d1b.changed);
    // Reject a seed pair; then the older confirm (d1) cannot be undone past d1b.
    let d2 = s.decide(DecisionKind::Reject, i2, t0, "tui:bob").unwrap();
    assert_eq!(d2.counts.rejected_pairs, 1);
    assert!(matches!(
        s.undo(Some(d1.decision.id)),
        Err(StoreError::Conflict {
            reason: "superseded",
            ..
        })
    ));
    // Undo with no id takes the newest: d2, then d1b, then d1.
    assert_eq!(s.undo(None).unwrap().undone.id, d2.decision.id);
    assert_eq!(s.undo(None).unwrap().undone.id, d1b.decision.id);
    assert_eq!(s.sample(i2).unwrap().state, SampleState::Paired);
    let u = s.undo(None).unwrap();
    assert_eq!(u.undone.id, d1.decision.id);
    assert!(u.undone.undone_at_ms.is_some());
    assert_eq!(u.counts, before);
    assert_eq!(s.sample(i2).unwrap().state, SampleState::Unpaired);
    assert!(matches!(
        s.undo(Some(d1.decision.id)),
        Err(StoreError::Conflict {
            reason: "already_undone",
            ..
        })
    ));
    assert!(matches!(
        s.undo(Some(DecisionId(77))),
        Err(StoreError::UnknownDecision(_))
    ));
    assert!(matches!(s.undo(None), Err(StoreError::NothingToUndo)));
    // The seed pair came back with its original source.
    let p = s.pairs_of(t0).unwrap();
    assert_eq!(
        (p.len(), p[0].source.as_str(), p[0].state),
        (1, "manifest", PairState::Confirmed)
    );
}

#[test]
fn decisions_survive_reopen_and_runs_round_trip() {
    let (d, mut s, ids) = seeded();
    let r = s
        .decide(DecisionKind::Confirm, ids[2], ids[5], "a")
        .unwrap();
    let run = s
        .create_run(AlignMethod::Cca, &serde_json::json!({"seed": 1}), 2)
        .unwrap();
    let m = RetrievalMetrics {
        pairs: 1,
        ..Default::default()
    };
    s.finish_run(
        run,
        JobState::Succeeded,
        Some(&m),
        Some("/ck"),
        Some("cca"),
        None,
    )
    .unwrap();
    let pending = s
        .create_run(AlignMethod::Sotalign, &serde_json::json!({}), 2)
        .unwrap();
    drop(s);
    let mut s = Store::open(d.path()).unwrap();
    assert_eq!(s.fail_interrupted_runs().unwrap(), 1);
    assert_eq!(s.decision(r.decision.id).unwrap(), r.decision);
    let runs = s.runs(10).unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].info.id, run);
    assert_eq!(runs[0].info.metrics, Some(m));
    assert_eq!(runs[1].info.state, JobState::Failed);
    assert_eq!(s.latest_servable_run().unwrap().unwrap().info.id, run);
    assert!(matches!(s.run(RunId(99)), Err(StoreError::UnknownRun(_))));
    let _ = pending;
    assert_eq!(s.integrity_check().unwrap(), "ok");
}

#[test]
fn snapshot_and_embeddings() {
    let (_d, mut s, ids) = seeded();
    let snap = s.training_snapshot().unwrap();
    assert_eq!(snap.pairs, vec![(ids[0], ids[3])]);
    assert_eq!(snap.held_out, vec![(ids[1], ids[4])]);
    assert_eq!((snap.images.matrix.rows, snap.images.matrix.cols), (3, 2));
    assert_eq!((snap.texts.matrix.rows, snap.texts.matrix.cols), (3, 3));
    assert_eq!(snap.unpaired_images, vec![ids[2]]);
    assert_eq!(snap.captions[2].as_deref(), Some("A frog."));
    assert_eq!(snap.texts.matrix.row(1), &[0.0, 1.0, 0.0]);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute_batch(&format!("PRAGMA user_version = {}", schema::LATEST + 1))
        .unwrap();
    drop(conn);
    match Store::open(dir.path()) {
        Err(StoreError::SchemaTooNew { found, supported }) => {
            assert_eq!((found, supported), (schema::LATEST + 1, schema::LATEST))
        }
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a newer schema"),
    }
}

#[test]
fn annotators_revisions_stale_decisions_and_export_rows() {
    let (_d, mut s, ids) = seeded();
    let (i0, i2, t0, t2) = (ids[0], ids[2], ids[3], ids[5]);
    assert_eq!(s.revision().unwrap(), 0);
    let (r, rev) = s
        .decide_by(DecisionKind::Confirm, i2, t2, "tui", Some("ann"), Some(0))
        .unwrap();
    assert_eq!((rev, s.revision().unwrap()), (1, 1));
    assert_eq!(r.decision.annotator.as_deref(), Some("ann"));
    assert_eq!(
        s.decision(r.decision.id).unwrap().annotator.as_deref(),
        Some("ann")
    );
    // Shown before that decision, touching the same image: stale, nothing written.
    let n = s.decision_count().unwrap();
    assert!(matches!(
        s.decide_by(DecisionKind::Reject, i2, t0, "tui", Some("bob"), Some(0)),
        Err(StoreError::Stale {
            shown: 0,
            current: 1,
            ..
        })
    ));
    assert_eq!(s.decision_count().unwrap(), n);
    // An untouched pair at the old revision is fine; so is any pair without a revision.
    s.decide_by(DecisionKind::Reject, i0, t2, "tui", Some("bob"), Some(0))
        .unwrap_err(); // t2 was touched by ann's decision
    let (_, rev) = s
        .decide_by(DecisionKind::Reject, i2, t0, "tui", Some("bob"), None)
        .unwrap();
    assert_eq!(rev, 2);
    assert_eq!(
        s.annotator_counts().unwrap(),
        vec![("ann".to_string(), 1, 0), ("bob".to_string(), 0, 1)]
    );
    // Undo bumps the revision and makes a decision shown before it stale.
    s.undo(None).unwrap();
    assert_eq!(s.revision().unwrap(), 3);
    assert!(matches!(
        s.decide_by(DecisionKind::Confirm, i2, t0, "tui", None, Some(2)),
        Err(StoreError::Stale { .. })
    ));
    assert_eq!(
        s.annotator_counts().unwrap(),
        vec![("ann".to_string(), 1, 0)]
    );
    // Export: the seed pair (no annotator) and ann's confirm; the held-out pair never.
    let rows = s.export_rows(false).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].state.as_str(), rows[0].source.as_str()),
        ("confirmed", "manifest")
    );
    assert_eq!(rows[0].annotator, None);
    assert_eq!(rows[1].annotator.as_deref(), Some("ann"));
    assert_eq!(rows[1].caption.as_deref(), Some("A frog."));
    assert_eq!(rows[1].image_path.as_deref(), Some("/x/i2.png"));
    s.decide_by(DecisionKind::Reject, i0, t2, "tui", Some("bob"), None)
        .unwrap();
    assert_eq!(s.export_rows(false).unwrap().len(), 2);
    let all = s.export_rows(true).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all.iter().filter(|r| r.state == "rejected").count(), 1);
    assert_eq!(s.image_by_path("/x/i2.png").unwrap(), Some(i2));
    assert_eq!(s.image_by_path("/x/none.png").unwrap(), None);
}

#[test]
fn a_v1_database_migrates_with_its_decisions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut conn = rusqlite::Connection::open(dir.path().join("sotalign.db")).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(schema::MIGRATIONS[0]).unwrap();
        tx.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO samples (id, modality, key, path, added_at_ms) VALUES (1, 'image', 'a', '/a.png', 0);
             INSERT INTO samples (id, modality, key, text, added_at_ms) VALUES (2, 'text', 'a', 'A.', 0);
             INSERT INTO decisions (id, kind, image, text, at_ms, source) VALUES (1, 'confirm', 1, 2, 5, 'old');
             INSERT INTO decisions (id, kind, image, text, at_ms, source, undone_at_ms) VALUES (2, 'reject', 1, 2, 6, 'old', 7);
             INSERT INTO pairs (image, text, state, decision, source, at_ms) VALUES (1, 2, 'confirmed', 1, 'old', 5);",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(s.revision().unwrap(), 2);
    assert_eq!(s.decision(DecisionId(1)).unwrap().annotator, None);
    assert_eq!(s.annotator_counts().unwrap(), vec![(String::new(), 1, 0)]);
    // Shown at revision 1: the undo of decision 2 (revision 2) makes it stale.
    assert!(matches!(
        s.decide_by(
            DecisionKind::Confirm,
            SampleId(1),
            SampleId(2),
            "x",
            None,
            Some(1)
        ),
        Err(StoreError::Stale { .. })
    ));
    let (_, rev) = s
        .decide_by(
            DecisionKind::Confirm,
            SampleId(1),
            SampleId(2),
            "x",
            None,
            Some(2),
        )
        .unwrap();
    assert_eq!(rev, 3);
}
