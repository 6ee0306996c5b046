//! The `samples` table: ingest (with the pairs that came with the data), lookup and listing.
use rusqlite::{OptionalExtension, params};
use sotalign_protocol::types::{Modality, Sample, SampleId, SampleState};

use super::codec::{modality_str, parse_modality, parse_sample_state, sample_state_str};
use super::vectors::vector_to_blob;
use super::{Store, StoreError, now_ms, refresh_states, sql_offset, storable};

/// A sample to insert (an ingest item).
#[derive(Debug, Clone)]
pub struct NewSample {
    pub modality: Modality,
    pub key: String,
    pub path: Option<String>,
    pub text: Option<String>,
    /// Encoder-space embedding; `None` until encoded.
    pub vector: Option<Vec<f32>>,
}

/// A pair that came with the data, by index into the batch's samples.
#[derive(Debug, Clone, Copy)]
pub struct NewPair {
    pub image: usize,
    pub text: usize,
    pub held_out: bool,
}

/// What an insert did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InsertReport {
    /// Ids of the batch's samples, in batch order (existing ids for duplicates).
    pub ids: Vec<SampleId>,
    pub inserted: u64,
    /// Samples whose (modality, key) was already stored: left unchanged.
    pub duplicates: u64,
    pub pairs: u64,
}

const SAMPLE_COLS: &str = "id, modality, key, state, path, text, vector IS NOT NULL";

type RawSample = (
    u64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
);

fn to_sample(raw: RawSample) -> Result<Sample, StoreError> {
    let (id, modality, key, state, path, text, encoded) = raw;
    Ok(Sample {
        id: SampleId(id),
        modality: parse_modality(&modality)?,
        key,
        state: parse_sample_state(&state)?,
        path,
        text,
        encoded,
    })
}

impl Store {
    /// Insert a batch of samples and the pairs that came with them, in one transaction.
    /// Samples whose (modality, key) exists are kept as they are (re-ingesting a manifest is a
    /// no-op); vectors must match the modality's dimension.
    pub fn insert_samples(
        &mut self,
        samples: &[NewSample],
        pairs: &[NewPair],
    ) -> Result<InsertReport, StoreError> {
        let now = now_ms();
        let tx = self.conn.transaction()?;
        let mut dims = [None, None];
        for (i, m) in [Modality::Image, Modality::Text].into_iter().enumerate() {
            let key = format!("dim.{}", modality_str(m));
            let v: Option<String> = tx
                .query_row("SELECT value FROM meta WHERE key = ?1", [&key], |r| {
                    r.get(0)
                })
                .optional()?;
            dims[i] = v.and_then(|s| s.parse::<usize>().ok());
        }
        let mut report = InsertReport::default();
        let mut touched = Vec::new();
        {
            let mut find =
                tx.prepare_cached("SELECT id FROM samples WHERE modality = ?1 AND key = ?2")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO samples (modality, key, path, text, dim, vector, added_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (n, s) in samples.iter().enumerate() {
                let m = modality_str(s.modality);
                if let Some(id) = find
                    .query_row(params![m, s.key], |r| r.get::<_, u64>(0))
                    .optional()?
                {
                    report.ids.push(SampleId(id));
                    report.duplicates += 1;
                    continue;
                }
                let slot = if s.modality == Modality::Image { 0 } else { 1 };
                let (dim, blob) = match &s.vector {
                    Some(v) => {
                        match dims[slot] {
                            Some(d) if d != v.len() => {
                                return Err(StoreError::Dimension {
                                    what: format!("{m} sample {n} ({:?})", s.key),
                                    expected: d,
                                    actual: v.len(),
                                });
                            }
                            Some(_) => {}
                            None => {
                                tx.execute(
                                    "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                                    params![format!("dim.{m}"), v.len().to_string()],
                                )?;
                                dims[slot] = Some(v.len());
                            }
                        }
                        (Some(v.len() as i64), Some(vector_to_blob(v)))
                    }
                    None => (None, None),
                };
                ins.execute(params![m, s.key, s.path, s.text, dim, blob, now])?;
                let id = tx.last_insert_rowid() as u64;
                report.ids.push(SampleId(id));
                report.inserted += 1;
            }
            let mut pins = tx.prepare_cached(
                "INSERT INTO pairs (image, text, state, decision, source, at_ms)
                 VALUES (?1, ?2, ?3, NULL, 'manifest', ?4)
                 ON CONFLICT (image, text) DO NOTHING",
            )?;
            for p in pairs {
                let (Some(img), Some(txt)) = (report.ids.get(p.image), report.ids.get(p.text))
                else {
                    return Err(StoreError::Corrupt(format!(
                        "pair refers to batch items {} / {}",
                        p.image, p.text
                    )));
                };
                if samples[p.image].modality != Modality::Image
                    || samples[p.text].modality != Modality::Text
                {
                    return Err(StoreError::Corrupt(
                        "a pair must join an image and a text".into(),
                    ));
                }
                let state = if p.held_out { "held_out" } else { "confirmed" };
                report.pairs += pins.execute(params![img.0, txt.0, state, now])? as u64;
                touched.push(img.0);
                touched.push(txt.0);
            }
        }
        refresh_states(&tx, &touched)?;
        tx.commit()?;
        Ok(report)
    }

    pub fn sample(&self, id: SampleId) -> Result<Sample, StoreError> {
        if !storable(id.0) {
            return Err(StoreError::UnknownSample(id));
        }
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {SAMPLE_COLS} FROM samples WHERE id = ?1"),
                [id.0],
                |r| RawSample::try_from(r),
            )
            .optional()?
            .ok_or(StoreError::UnknownSample(id))?;
        to_sample(raw)
    }

    /// Several samples by id (missing ids are skipped), in the order given.
    pub fn samples(&self, ids: &[SampleId]) -> Result<Vec<Sample>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {SAMPLE_COLS} FROM samples WHERE id = ?1"))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids.iter().filter(|id| storable(id.0)) {
            if let Some(raw) = stmt
                .query_row([id.0], |r| RawSample::try_from(r))
                .optional()?
            {
                out.push(to_sample(raw)?);
            }
        }
        Ok(out)
    }

    pub fn list_samples(
        &self,
        m: Modality,
        state: Option<SampleState>,
        filter: Option<&str>,
        offset: u64,
        limit: u32,
    ) -> Result<(Vec<Sample>, u64), StoreError> {
        let pattern = filter.map(|f| {
            let esc = f
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{esc}%")
        });
        let state = state.map(sample_state_str);
        let cond = "modality = ?1 AND (?2 IS NULL OR state = ?2)
                    AND (?3 IS NULL OR lower(key) LIKE ?3 ESCAPE '\\'
                         OR lower(COALESCE(path, '')) LIKE ?3 ESCAPE '\\'
                         OR lower(COALESCE(text, '')) LIKE ?3 ESCAPE '\\')";
        let total: u64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM samples WHERE {cond}"),
            params![modality_str(m), state, pattern],
            |r| r.get(0),
        )?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SAMPLE_COLS} FROM samples WHERE {cond} ORDER BY id LIMIT ?4 OFFSET ?5"
        ))?;
        let rows = stmt.query_map(
            params![
                modality_str(m),
                state,
                pattern,
                limit as i64,
                sql_offset(offset)
            ],
            |r| RawSample::try_from(r),
        )?;
        let mut items = Vec::new();
        for r in rows {
            items.push(to_sample(r?)?);
        }
        Ok((items, total))
    }

    /// The image sample stored with this path (the lowest id if several).
    pub fn image_by_path(&self, path: &str) -> Result<Option<SampleId>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT MIN(id) FROM samples WHERE modality = 'image' AND path = ?1",
                [path],
                |r| r.get::<_, Option<u64>>(0),
            )?
            .map(SampleId))
    }
}
