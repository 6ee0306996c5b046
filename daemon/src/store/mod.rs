//! The daemon's durable state: one SQLite database (`sotalign.db` in the data directory).
//!
//! It holds the samples (with their encoder-space embeddings as f32 blobs), the pairs between
//! them, every curation decision with its time and source (and what it replaced, so it can be
//! undone), and every alignment run with its config, metrics and checkpoint path.
//!
//! Invariants:
//! - WAL journal with `synchronous=FULL`: when a write method returns `Ok`, its transaction is
//!   on disk. The server answers a confirm only after that, so an acknowledged decision survives
//!   `kill -9` and power loss.
//! - Every multi-row change (an ingest batch, a decision with its pair and sample states) is one
//!   transaction: a crash leaves it entirely done or entirely undone.
//! - A sample's `state` column is derived from the pairs table and refreshed in the same
//!   transaction as every pair change.
//! - This module is synchronous (rusqlite); the server calls it from blocking threads.
//!
//! One module per table or concern, each with its row types and its own `impl Store` block:
//! `samples`, `vectors`, `pairs`, `decisions`, `runs`, `meta`, `export`,
//! `snapshot`; `codec` holds the column encodings they share. This file keeps the
//! [`Store`] itself (open, migrate, checkpoint), the errors and the helpers every
//! transaction uses (derived sample states, counts).
use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction};
use sotalign_protocol::types::{Counts, DecisionId, RunId, SampleId};

mod codec;
mod decisions;
mod export;
mod meta;
mod pairs;
mod runs;
mod samples;
pub mod schema;
mod snapshot;
mod vectors;

pub use export::ExportRow;
pub use runs::StoredRun;
pub use samples::{InsertReport, NewPair, NewSample};
pub use snapshot::TrainingSnapshot;
pub use vectors::{Embeddings, vector_to_blob};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "sotalign.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database schema version {found} is newer than this sotalign supports ({supported})")]
    SchemaTooNew { found: u32, supported: u32 },
    #[error("unknown sample {0}")]
    UnknownSample(SampleId),
    #[error("sample {sample} is a {actual}, expected a {expected}")]
    WrongModality {
        sample: SampleId,
        expected: &'static str,
        actual: &'static str,
    },
    #[error("unknown decision {0}")]
    UnknownDecision(DecisionId),
    #[error("unknown run {0}")]
    UnknownRun(RunId),
    /// A decision that contradicts the stored state; nothing was written.
    #[error("{message}")]
    Conflict {
        reason: &'static str,
        message: String,
    },
    #[error("no decision to undo")]
    NothingToUndo,
    #[error("{what}: expected dimension {expected}, got {actual}")]
    Dimension {
        what: String,
        expected: usize,
        actual: usize,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The pair changed (a decision or undo on either sample) after the client showed it.
    #[error(
        "image {image} or text {text} changed since it was shown (revision {shown}, now {current}); nothing was written"
    )]
    Stale {
        image: SampleId,
        text: SampleId,
        shown: u64,
        current: u64,
    },
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Recompute the derived `state` of some samples from the pairs table.
fn refresh_states(tx: &Transaction<'_>, ids: &[u64]) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "UPDATE samples SET state = CASE
            WHEN EXISTS (SELECT 1 FROM pairs p WHERE p.state = 'held_out'
                         AND (p.image = samples.id OR p.text = samples.id)) THEN 'held_out'
            WHEN EXISTS (SELECT 1 FROM pairs p WHERE p.state = 'confirmed'
                         AND (p.image = samples.id OR p.text = samples.id)) THEN 'paired'
            ELSE 'unpaired' END
         WHERE id = ?1",
    )?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

fn counts_in(conn: &Connection) -> Result<Counts, StoreError> {
    let c = conn.query_row(
        "SELECT
            COALESCE(SUM(modality = 'image'), 0),
            COALESCE(SUM(modality = 'text'), 0),
            COALESCE(SUM(modality = 'image' AND state = 'unpaired'), 0),
            COALESCE(SUM(modality = 'text' AND state = 'unpaired'), 0),
            COALESCE(SUM(vector IS NULL), 0)
         FROM samples",
        [],
        |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, u64>(2)?,
                r.get::<_, u64>(3)?,
                r.get::<_, u64>(4)?,
            ))
        },
    )?;
    let p = conn.query_row(
        "SELECT
            COALESCE(SUM(state = 'confirmed'), 0),
            COALESCE(SUM(state = 'rejected'), 0),
            COALESCE(SUM(state = 'held_out'), 0)
         FROM pairs",
        [],
        |r| {
            Ok((
                r.get::<_, u64>(0)?,
                r.get::<_, u64>(1)?,
                r.get::<_, u64>(2)?,
            ))
        },
    )?;
    Ok(Counts {
        images: c.0,
        texts: c.1,
        unpaired_images: c.2,
        unpaired_texts: c.3,
        confirmed_pairs: p.0,
        rejected_pairs: p.1,
        held_out_pairs: p.2,
        pending_encoding: c.4,
    })
}

impl Store {
    /// Open (creating if needed) the store in `dir` and bring its schema up to date.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path)?;
        // WAL: readers never block the writer; FULL: fsync the WAL at every commit, so a
        // returned commit is durable (NORMAL could lose the last commits on power loss).
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Corrupt(format!(
                "cannot enable the WAL journal (journal_mode = {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        schema::migrate(&mut conn)?;
        Ok(Store { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fold the WAL back into the database file (on graceful shutdown; durability never
    /// depends on it).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// `PRAGMA integrity_check` result: `ok` when the file is sound.
    pub fn integrity_check(&self) -> Result<String, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?)
    }

    pub fn counts(&self) -> Result<Counts, StoreError> {
        counts_in(&self.conn)
    }
}

#[cfg(test)]
mod tests;

/// Whether an id from a client can name a row: SQLite integers are signed 64-bit, so an id
/// above `i64::MAX` names nothing (an unknown id, not a database error).
fn storable(id: u64) -> bool {
    id <= i64::MAX as u64
}

/// A client's page offset as SQLite's signed OFFSET: anything past `i64::MAX` is past every
/// row (an empty page), never wrapped to a negative offset (which SQLite reads as 0).
fn sql_offset(offset: u64) -> i64 {
    offset.min(i64::MAX as u64) as i64
}
