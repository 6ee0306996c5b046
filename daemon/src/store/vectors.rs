//! Encoder-space embeddings: the `samples.vector` f32 blobs, set by background encoding and
//! read back per sample or per modality.
use rusqlite::{OptionalExtension, params};
use sotalign_engine::Matrix;
use sotalign_protocol::types::{Modality, SampleId};

use super::codec::{modality_str, parse_modality};
use super::{Store, StoreError, storable};

/// Encoder-space embeddings of one modality: `ids[i]` is row i.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub ids: Vec<SampleId>,
    pub matrix: Matrix,
}

pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn blob_to_vector(b: &[u8], dim: usize) -> Result<Vec<f32>, StoreError> {
    if b.len() != dim * 4 {
        return Err(StoreError::Corrupt(format!(
            "embedding blob of {} bytes for dimension {dim}",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl Store {
    /// Set embeddings of already stored samples (background encoding), in one transaction.
    pub fn set_vectors(
        &mut self,
        m: Modality,
        rows: &[(SampleId, Vec<f32>)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let key = format!("dim.{}", modality_str(m));
        let mut dim: Option<usize> = tx
            .query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .and_then(|s| s.parse().ok());
        {
            let mut up = tx.prepare_cached(
                "UPDATE samples SET dim = ?2, vector = ?3 WHERE id = ?1 AND modality = ?4",
            )?;
            for (id, v) in rows {
                match dim {
                    Some(d) if d != v.len() => {
                        return Err(StoreError::Dimension {
                            what: format!("sample {id}"),
                            expected: d,
                            actual: v.len(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                            params![key, v.len().to_string()],
                        )?;
                        dim = Some(v.len());
                    }
                }
                up.execute(params![
                    id.0,
                    v.len() as i64,
                    vector_to_blob(v),
                    modality_str(m)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The encoder-space embedding of one sample (`None`: not encoded yet).
    pub fn vector(&self, id: SampleId) -> Result<(Modality, Option<Vec<f32>>), StoreError> {
        if !storable(id.0) {
            return Err(StoreError::UnknownSample(id));
        }
        let (m, dim, blob): (String, Option<i64>, Option<Vec<u8>>) = self
            .conn
            .query_row(
                "SELECT modality, dim, vector FROM samples WHERE id = ?1",
                [id.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or(StoreError::UnknownSample(id))?;
        let m = parse_modality(&m)?;
        match (dim, blob) {
            (Some(d), Some(b)) => Ok((m, Some(blob_to_vector(&b, d as usize)?))),
            _ => Ok((m, None)),
        }
    }

    /// Encoded embeddings of one modality, by ascending id.
    pub fn embeddings(&self, m: Modality) -> Result<Embeddings, StoreError> {
        let dim = self.dim(m)?.unwrap_or(0);
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, dim, vector FROM samples WHERE modality = ?1 AND vector IS NOT NULL ORDER BY id",
        )?;
        let mut ids = Vec::new();
        let mut data = Vec::new();
        let mut rows = stmt.query([modality_str(m)])?;
        while let Some(r) = rows.next()? {
            let id: u64 = r.get(0)?;
            let d: i64 = r.get(1)?;
            let blob: Vec<u8> = r.get(2)?;
            if d as usize != dim {
                return Err(StoreError::Corrupt(format!(
                    "sample {id} has dimension {d}, the modality {dim}"
                )));
            }
            data.extend(blob_to_vector(&blob, dim)?);
            ids.push(SampleId(id));
        }
        let matrix = Matrix {
            rows: ids.len(),
            cols: dim,
            data,
        };
        Ok(Embeddings { ids, matrix })
    }
}
