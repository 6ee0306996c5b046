//! The `decisions` table: confirm/reject (with the pair and both samples' derived states in one
//! transaction), undo, and per-annotator counts.
use rusqlite::{OptionalExtension, Transaction, params};
use sotalign_protocol::types::{
    Decision, DecisionId, DecisionKind, DecisionResult, Modality, SampleId, UndoResult,
};

use super::codec::{kind_str, modality_str, parse_kind, parse_modality};
use super::meta::{bump_revision, revision_in};
use super::{Store, StoreError, counts_in, now_ms, refresh_states, storable};

type RawDecision = (
    u64,
    String,
    u64,
    u64,
    u64,
    String,
    Option<u64>,
    Option<String>,
);

fn to_decision(raw: RawDecision) -> Result<Decision, StoreError> {
    let (id, kind, image, text, at_ms, source, undone_at_ms, annotator) = raw;
    Ok(Decision {
        id: DecisionId(id),
        kind: parse_kind(&kind)?,
        image: SampleId(image),
        text: SampleId(text),
        at_ms,
        source,
        annotator,
        undone_at_ms,
    })
}

const DECISION_COLS: &str = "id, kind, image, text, at_ms, source, undone_at_ms, annotator";

impl Store {
    fn modality_of(tx: &Transaction<'_>, id: SampleId) -> Result<Modality, StoreError> {
        if !storable(id.0) {
            return Err(StoreError::UnknownSample(id));
        }
        let m: String = tx
            .query_row("SELECT modality FROM samples WHERE id = ?1", [id.0], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or(StoreError::UnknownSample(id))?;
        parse_modality(&m)
    }

    /// Record a confirm or reject of (image, text). Durable when this returns `Ok`.
    pub fn decide(
        &mut self,
        kind: DecisionKind,
        image: SampleId,
        text: SampleId,
        source: &str,
    ) -> Result<DecisionResult, StoreError> {
        self.decide_by(kind, image, text, source, None, None)
            .map(|(r, _)| r)
    }

    /// [`Store::decide`] with the annotator recorded and, given `shown_revision`, refused with
    /// [`StoreError::Stale`] when a decision or undo touching either sample committed after
    /// it. Returns the new revision too.
    pub fn decide_by(
        &mut self,
        kind: DecisionKind,
        image: SampleId,
        text: SampleId,
        source: &str,
        annotator: Option<&str>,
        shown_revision: Option<u64>,
    ) -> Result<(DecisionResult, u64), StoreError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        if let Some(shown) = shown_revision {
            let changed: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM decisions WHERE (image = ?1 OR text = ?2)
                    AND (rev > ?3 OR undone_rev > ?3))",
                params![image.0, text.0, shown],
                |r| r.get(0),
            )?;
            if changed {
                return Err(StoreError::Stale {
                    image,
                    text,
                    shown,
                    current: revision_in(&tx)?,
                });
            }
        }
        for (id, want) in [(image, Modality::Image), (text, Modality::Text)] {
            let got = Self::modality_of(&tx, id)?;
            if got != want {
                return Err(StoreError::WrongModality {
                    sample: id,
                    expected: modality_str(want),
                    actual: modality_str(got),
                });
            }
        }
        let held: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM samples WHERE id IN (?1, ?2) AND state = 'held_out')",
            params![image.0, text.0],
            |r| r.get(0),
        )?;
        if held {
            return Err(StoreError::Conflict {
                reason: "held_out",
                message: format!(
                    "image {image} or text {text} is held out for evaluation; decisions on it would leak the test set"
                ),
            });
        }
        let prev: Option<(String, Option<u64>, String, u64)> = tx
            .query_row(
                "SELECT state, decision, source, at_ms FROM pairs WHERE image = ?1 AND text = ?2",
                params![image.0, text.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let new_state = match kind {
            DecisionKind::Confirm => "confirmed",
            DecisionKind::Reject => "rejected",
        };
        let changed = prev.as_ref().is_none_or(|p| p.0 != new_state);
        tx.execute(
            "INSERT INTO decisions (kind, image, text, at_ms, source, prev_state, prev_decision, prev_source, prev_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                kind_str(kind),
                image.0,
                text.0,
                now,
                source,
                prev.as_ref().map(|p| p.0.clone()),
                prev.as_ref().and_then(|p| p.1),
                prev.as_ref().map(|p| p.2.clone()),
                prev.as_ref().map(|p| p.3),
            ],
        )?;
        let id = tx.last_insert_rowid() as u64;
        let rev = bump_revision(&tx)?;
        tx.execute(
            "UPDATE decisions SET annotator = ?2, rev = ?3 WHERE id = ?1",
            params![id, annotator, rev],
        )?;
        tx.execute(
            "INSERT INTO pairs (image, text, state, decision, source, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (image, text) DO UPDATE SET state = excluded.state, decision = excluded.decision,
                 source = excluded.source, at_ms = excluded.at_ms",
            params![image.0, text.0, new_state, id, source, now],
        )?;
        refresh_states(&tx, &[image.0, text.0])?;
        let counts = counts_in(&tx)?;
        tx.commit()?;
        Ok((
            DecisionResult {
                decision: Decision {
                    id: DecisionId(id),
                    kind,
                    image,
                    text,
                    at_ms: now,
                    source: source.to_owned(),
                    annotator: annotator.map(str::to_owned),
                    undone_at_ms: None,
                },
                changed,
                counts,
            },
            rev,
        ))
    }

    /// Standing (not undone) decisions that set their pair's current state, per annotator
    /// (`""` where none was named), most active first.
    pub fn annotator_counts(&self) -> Result<Vec<(String, u64, u64)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT COALESCE(d.annotator, ''), SUM(d.kind = 'confirm'), SUM(d.kind = 'reject')
             FROM pairs p JOIN decisions d ON d.id = p.decision
             GROUP BY 1 ORDER BY COUNT(*) DESC, 1",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Undo a decision (default: the newest one not undone). Only the decision that currently
    /// sets its pair's state can be undone; an older one was superseded and undoing it would
    /// silently overwrite the newer decision.
    pub fn undo(&mut self, decision: Option<DecisionId>) -> Result<UndoResult, StoreError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let id = match decision {
            Some(d) => d,
            None => tx
                .query_row(
                    "SELECT MAX(id) FROM decisions WHERE undone_at_ms IS NULL",
                    [],
                    |r| r.get::<_, Option<u64>>(0),
                )?
                .map(DecisionId)
                .ok_or(StoreError::NothingToUndo)?,
        };
        if !storable(id.0) {
            return Err(StoreError::UnknownDecision(id));
        }
        type Row = (
            RawDecision,
            Option<String>,
            Option<u64>,
            Option<String>,
            Option<u64>,
        );
        let (raw, prev_state, prev_decision, prev_source, prev_at): Row = tx
            .query_row(
                &format!("SELECT {DECISION_COLS}, prev_state, prev_decision, prev_source, prev_at_ms FROM decisions WHERE id = ?1"),
                [id.0],
                |r| Ok((RawDecision::try_from(r)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?)),
            )
            .optional()?
            .ok_or(StoreError::UnknownDecision(id))?;
        let mut d = to_decision(raw)?;
        if d.undone_at_ms.is_some() {
            return Err(StoreError::Conflict {
                reason: "already_undone",
                message: format!("decision {id} was already undone"),
            });
        }
        let current: Option<Option<u64>> = tx
            .query_row(
                "SELECT decision FROM pairs WHERE image = ?1 AND text = ?2",
                params![d.image.0, d.text.0],
                |r| r.get(0),
            )
            .optional()?;
        if current != Some(Some(id.0)) {
            return Err(StoreError::Conflict {
                reason: "superseded",
                message: format!(
                    "decision {id} was superseded by a later decision on the same pair; undo that one first"
                ),
            });
        }
        match prev_state {
            None => {
                tx.execute(
                    "DELETE FROM pairs WHERE image = ?1 AND text = ?2",
                    params![d.image.0, d.text.0],
                )?;
            }
            Some(st) => {
                tx.execute(
                    "UPDATE pairs SET state = ?3, decision = ?4, source = ?5, at_ms = ?6 WHERE image = ?1 AND text = ?2",
                    params![d.image.0, d.text.0, st, prev_decision, prev_source.unwrap_or_default(), prev_at.unwrap_or(0)],
                )?;
            }
        }
        let rev = bump_revision(&tx)?;
        tx.execute(
            "UPDATE decisions SET undone_at_ms = ?2, undone_rev = ?3 WHERE id = ?1",
            params![id.0, now, rev],
        )?;
        refresh_states(&tx, &[d.image.0, d.text.0])?;
        let counts = counts_in(&tx)?;
        tx.commit()?;
        d.undone_at_ms = Some(now);
        Ok(UndoResult { undone: d, counts })
    }

    pub fn decision(&self, id: DecisionId) -> Result<Decision, StoreError> {
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {DECISION_COLS} FROM decisions WHERE id = ?1"),
                [id.0],
                |r| RawDecision::try_from(r),
            )
            .optional()?
            .ok_or(StoreError::UnknownDecision(id))?;
        to_decision(raw)
    }

    /// Number of decisions ever recorded (undone ones included).
    pub fn decision_count(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM decisions", [], |r| r.get(0))?)
    }
}
