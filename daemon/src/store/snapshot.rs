//! The training snapshot: everything an alignment run reads, in one transaction.
use rusqlite::{Connection, OptionalExtension};
use sotalign_engine::Matrix;
use sotalign_protocol::types::SampleId;

use super::vectors::{Embeddings, blob_to_vector};
use super::{Store, StoreError};

/// Everything an alignment run trains and evaluates on, read in one transaction.
#[derive(Debug, Clone)]
pub struct TrainingSnapshot {
    /// Confirmed pairs (image id, text id).
    pub pairs: Vec<(SampleId, SampleId)>,
    /// Held-out pairs (image id, text id).
    pub held_out: Vec<(SampleId, SampleId)>,
    /// Rejected pairs (image id, text id): negatives for the trained methods.
    pub rejected: Vec<(SampleId, SampleId)>,
    pub images: Embeddings,
    pub texts: Embeddings,
    /// Caption of every text sample (for evaluation labels); same order as `texts.ids`.
    pub captions: Vec<Option<String>>,
    /// Unpaired (state `unpaired`) sample ids of each modality.
    pub unpaired_images: Vec<SampleId>,
    pub unpaired_texts: Vec<SampleId>,
}

impl Store {
    /// Everything an alignment needs, read in one transaction (a consistent snapshot even while
    /// clients keep deciding).
    pub fn training_snapshot(&mut self) -> Result<TrainingSnapshot, StoreError> {
        let tx = self.conn.transaction()?;
        // Reads inside one transaction see one snapshot of the WAL.
        let store = StoreView { conn: &tx };
        let snap = store.snapshot()?;
        tx.commit()?;
        Ok(snap)
    }
}

/// Read-only queries shared by the store and its transactions.
struct StoreView<'a> {
    conn: &'a Connection,
}

impl StoreView<'_> {
    fn ids_where(&self, sql: &str) -> Result<Vec<SampleId>, StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| Ok(SampleId(r.get(0)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn pairs(&self, state: &str) -> Result<Vec<(SampleId, SampleId)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT image, text FROM pairs WHERE state = ?1 ORDER BY image, text")?;
        let rows = stmt.query_map([state], |r| Ok((SampleId(r.get(0)?), SampleId(r.get(1)?))))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn embeddings(&self, m: &str) -> Result<(Embeddings, Vec<Option<String>>), StoreError> {
        let dim: usize = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [format!("dim.{m}")],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut stmt =
            self.conn.prepare("SELECT id, vector, text FROM samples WHERE modality = ?1 AND vector IS NOT NULL ORDER BY id")?;
        let mut rows = stmt.query([m])?;
        let (mut ids, mut data, mut caps) = (Vec::new(), Vec::new(), Vec::new());
        while let Some(r) = rows.next()? {
            let blob: Vec<u8> = r.get(1)?;
            data.extend(blob_to_vector(&blob, dim)?);
            ids.push(SampleId(r.get(0)?));
            caps.push(r.get(2)?);
        }
        Ok((
            Embeddings {
                matrix: Matrix {
                    rows: ids.len(),
                    cols: dim,
                    data,
                },
                ids,
            },
            caps,
        ))
    }

    fn snapshot(&self) -> Result<TrainingSnapshot, StoreError> {
        let (images, _) = self.embeddings("image")?;
        let (texts, captions) = self.embeddings("text")?;
        Ok(TrainingSnapshot {
            pairs: self.pairs("confirmed")?,
            held_out: self.pairs("held_out")?,
            rejected: self.pairs("rejected")?,
            images,
            texts,
            captions,
            unpaired_images: self.ids_where(
                "SELECT id FROM samples WHERE modality = 'image' AND state = 'unpaired' AND vector IS NOT NULL ORDER BY id",
            )?,
            unpaired_texts: self.ids_where(
                "SELECT id FROM samples WHERE modality = 'text' AND state = 'unpaired' AND vector IS NOT NULL ORDER BY id",
            )?,
        })
    }
}
