//! Versioned schema migrations.
//!
//! The schema version is SQLite's `PRAGMA user_version`. Migration `i` (0-based) takes the
//! database from version `i` to `i + 1` and runs in one transaction together with the version
//! bump, so a crash mid-migration leaves the old version intact. A database written by a newer
//! sotalign (version above [`LATEST`]) is refused rather than guessed at.
use rusqlite::Connection;

use super::StoreError;

/// Each entry upgrades the schema by one version. Append only; never edit a released entry.
pub(super) const MIGRATIONS: &[&str] = &[
    // v1: samples with their encoder-space embeddings, pairs, decisions, runs, key/value meta.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE samples (
        id          INTEGER PRIMARY KEY,
        modality    TEXT NOT NULL CHECK (modality IN ('image', 'text')),
        key         TEXT NOT NULL,
        path        TEXT,
        text        TEXT,
        -- Derived from pairs; refreshed in the same transaction as every pair change.
        state       TEXT NOT NULL DEFAULT 'unpaired'
                    CHECK (state IN ('unpaired', 'paired', 'held_out')),
        dim         INTEGER,
        -- Little-endian f32 x dim; NULL until encoded.
        vector      BLOB,
        added_at_ms INTEGER NOT NULL,
        UNIQUE (modality, key)
    );
    CREATE INDEX samples_by_state ON samples (modality, state, id);
    CREATE TABLE decisions (
        id           INTEGER PRIMARY KEY,
        kind         TEXT NOT NULL CHECK (kind IN ('confirm', 'reject')),
        image        INTEGER NOT NULL REFERENCES samples (id),
        text         INTEGER NOT NULL REFERENCES samples (id),
        at_ms        INTEGER NOT NULL,
        source       TEXT NOT NULL,
        undone_at_ms INTEGER,
        -- The pair as it was before this decision (NULL prev_state: no pair), for undo.
        prev_state    TEXT,
        prev_decision INTEGER,
        prev_source   TEXT,
        prev_at_ms    INTEGER
    );
    CREATE TABLE pairs (
        image    INTEGER NOT NULL REFERENCES samples (id),
        text     INTEGER NOT NULL REFERENCES samples (id),
        state    TEXT NOT NULL CHECK (state IN ('confirmed', 'rejected', 'held_out')),
        decision INTEGER REFERENCES decisions (id),
        source   TEXT NOT NULL,
        at_ms    INTEGER NOT NULL,
        PRIMARY KEY (image, text)
    );
    CREATE INDEX pairs_by_text ON pairs (text);
    CREATE INDEX pairs_by_state ON pairs (state, at_ms);
    CREATE TABLE runs (
        id             INTEGER PRIMARY KEY,
        method         TEXT NOT NULL,
        state          TEXT NOT NULL,
        config         TEXT NOT NULL,
        pairs          INTEGER NOT NULL,
        started_at_ms  INTEGER NOT NULL,
        finished_at_ms INTEGER,
        metrics        TEXT,
        checkpoint     TEXT,
        fitted         TEXT,
        error          TEXT
    );
    "#,
    // v2: who decided (annotator) and the decision revision (bumped by every decision and
    // undo; `rev` / `undone_rev` say when a decision was made / undone in that count), for
    // per-annotator counts and stale-decision checks.
    r#"
    ALTER TABLE decisions ADD COLUMN annotator TEXT;
    ALTER TABLE decisions ADD COLUMN rev INTEGER;
    ALTER TABLE decisions ADD COLUMN undone_rev INTEGER;
    UPDATE decisions SET rev = id;
    UPDATE decisions SET undone_rev = (SELECT MAX(id) FROM decisions) WHERE undone_at_ms IS NOT NULL;
    INSERT OR REPLACE INTO meta (key, value)
        VALUES ('revision', CAST((SELECT COALESCE(MAX(id), 0) FROM decisions) AS TEXT));
    CREATE INDEX decisions_by_image ON decisions (image);
    CREATE INDEX decisions_by_text ON decisions (text);
    "#,
];

/// The schema version this build writes.
pub const LATEST: u32 = MIGRATIONS.len() as u32;

pub fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0))?)
}

/// Bring the schema to [`LATEST`]; returns the version found before.
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let found = version(conn)?;
    if found > LATEST {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: LATEST,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        // PRAGMA does not take bound parameters; the value is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(found)
}
