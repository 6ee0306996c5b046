//! The `pairs` table read back: a sample's pairs, pages of pairs, pairs of a state as ids.
use rusqlite::params;
use sotalign_protocol::types::{DecisionId, Pair, PairState, SampleId};

use super::codec::{pair_state_str, parse_pair_state};
use super::{Store, StoreError, sql_offset, storable};

type RawPair = (u64, u64, String, Option<u64>, String, u64);

fn to_pair(raw: RawPair) -> Result<Pair, StoreError> {
    let (image, text, state, decision, source, at_ms) = raw;
    Ok(Pair {
        image: SampleId(image),
        text: SampleId(text),
        state: parse_pair_state(&state)?,
        decision: decision.map(DecisionId),
        source,
        at_ms,
    })
}

const PAIR_COLS: &str = "image, text, state, decision, source, at_ms";

impl Store {
    /// Every pair a sample takes part in, newest first.
    pub fn pairs_of(&self, id: SampleId) -> Result<Vec<Pair>, StoreError> {
        if !storable(id.0) {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {PAIR_COLS} FROM pairs WHERE image = ?1 OR text = ?1 ORDER BY at_ms DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([id.0], |r| RawPair::try_from(r))?;
        rows.map(|r| to_pair(r?)).collect()
    }

    pub fn list_pairs(
        &self,
        state: Option<PairState>,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<Pair>, u64), StoreError> {
        let st = state.map(pair_state_str);
        let total: u64 = self.conn.query_row(
            "SELECT COUNT(*) FROM pairs WHERE ?1 IS NULL OR state = ?1",
            [st],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {PAIR_COLS} FROM pairs WHERE ?1 IS NULL OR state = ?1
             ORDER BY at_ms DESC, rowid DESC LIMIT ?2 OFFSET ?3"
        ))?;
        let rows = stmt.query_map(params![st, limit as i64, sql_offset(offset)], |r| {
            RawPair::try_from(r)
        })?;
        let items = rows.map(|r| to_pair(r?)).collect::<Result<Vec<_>, _>>()?;
        Ok((items, total))
    }

    /// Pairs of a state, as id tuples (for training, evaluation and filtering suggestions).
    pub fn pair_ids(&self, state: PairState) -> Result<Vec<(SampleId, SampleId)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT image, text FROM pairs WHERE state = ?1 ORDER BY image, text",
        )?;
        let rows = stmt.query_map([pair_state_str(state)], |r| {
            Ok((SampleId(r.get(0)?), SampleId(r.get(1)?)))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
