//! The `meta` table: key/value settings (embedding dimension per modality, encoder names) and
//! the decision revision every decision and undo bumps.
use rusqlite::{OptionalExtension, Transaction, params};
use sotalign_protocol::types::Modality;

use super::codec::modality_str;
use super::{Store, StoreError};

/// Bump the decision revision inside a transaction; returns the new value.
pub(super) fn bump_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('revision', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [],
    )?;
    revision_in(tx)
}

pub(super) fn revision_in(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
            r.get(0)
        })
        .optional()?;
    match v {
        None => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("meta revision {s:?} is not a number"))),
    }
}

impl Store {
    /// The stored embedding dimension of a modality (fixed by the first encoded sample).
    pub fn dim(&self, m: Modality) -> Result<Option<usize>, StoreError> {
        let key = format!("dim.{}", modality_str(m));
        let v: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        v.map(|s| {
            s.parse::<usize>()
                .map_err(|_| StoreError::Corrupt(format!("dimension {s:?}")))
        })
        .transpose()
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// The store's decision revision (bumped by every decision and undo).
    pub fn revision(&self) -> Result<u64, StoreError> {
        revision_in(&self.conn)
    }
}
