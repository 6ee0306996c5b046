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
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use sotalign_protocol::types::{
    AlignMethod, Counts, Decision, DecisionId, DecisionKind, DecisionResult, JobState, Modality,
    Pair, PairState, RetrievalMetrics, RunId, RunInfo, Sample, SampleId, SampleState, UndoResult,
};

use sotalign_engine::Matrix;

pub mod schema;

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

/// One decided pair as export writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    /// `confirmed` or `rejected`.
    pub state: String,
    pub image_key: String,
    pub image_path: Option<String>,
    pub text_key: String,
    pub caption: Option<String>,
    /// `manifest` for pairs that came with the data, else the decision's source.
    pub source: String,
    pub annotator: Option<String>,
    pub at_ms: u64,
}

/// Bump the decision revision inside a transaction; returns the new value.
fn bump_revision(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('revision', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [],
    )?;
    revision_in(tx)
}

fn revision_in(conn: &rusqlite::Connection) -> Result<u64, StoreError> {
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

/// Encoder-space embeddings of one modality: `ids[i]` is row i.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub ids: Vec<SampleId>,
    pub matrix: Matrix,
}

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

/// The store keeps enums as readable TEXT columns. One table per enum gives both directions,
/// so a variant can never be written under one spelling and read back under another.
macro_rules! text_enum {
    ($ty:ident, $what:literal, $to:ident, $from:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        fn $to(v: $ty) -> &'static str {
            match v {
                $($ty::$variant => $text,)+
            }
        }

        fn $from(s: &str) -> Result<$ty, StoreError> {
            match s {
                $($text => Ok($ty::$variant),)+
                other => Err(StoreError::Corrupt(format!(concat!($what, " {:?}"), other))),
            }
        }
    };
}

text_enum!(Modality, "modality", modality_str, parse_modality {
    Image => "image",
    Text => "text",
});
text_enum!(SampleState, "sample state", sample_state_str, parse_sample_state {
    Unpaired => "unpaired",
    Paired => "paired",
    HeldOut => "held_out",
});
text_enum!(PairState, "pair state", pair_state_str, parse_pair_state {
    Confirmed => "confirmed",
    Rejected => "rejected",
    HeldOut => "held_out",
});
text_enum!(DecisionKind, "decision kind", kind_str, parse_kind {
    Confirm => "confirm",
    Reject => "reject",
});

fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_enum<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}

pub fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn blob_to_vector(b: &[u8], dim: usize) -> Result<Vec<f32>, StoreError> {
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

const SAMPLE_COLS: &str = "id, modality, key, state, path, text, vector IS NOT NULL";

fn row_to_sample(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(
    u64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    bool,
)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

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

fn row_to_decision(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawDecision> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

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

fn row_to_pair(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawPair> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
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

    /// Runs left `running`/`queued` by a daemon that died are marked failed (returns how many).
    pub fn fail_interrupted_runs(&mut self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE runs SET state = 'failed', finished_at_ms = ?1,
                 error = 'the daemon stopped before the run finished'
             WHERE state IN ('queued', 'running', 'cancelling')",
            [now_ms()],
        )?)
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

    pub fn sample(&self, id: SampleId) -> Result<Sample, StoreError> {
        if !storable(id.0) {
            return Err(StoreError::UnknownSample(id));
        }
        let raw = self
            .conn
            .query_row(
                &format!("SELECT {SAMPLE_COLS} FROM samples WHERE id = ?1"),
                [id.0],
                row_to_sample,
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
            if let Some(raw) = stmt.query_row([id.0], row_to_sample).optional()? {
                out.push(to_sample(raw)?);
            }
        }
        Ok(out)
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
            row_to_sample,
        )?;
        let mut items = Vec::new();
        for r in rows {
            items.push(to_sample(r?)?);
        }
        Ok((items, total))
    }

    /// Every pair a sample takes part in, newest first.
    pub fn pairs_of(&self, id: SampleId) -> Result<Vec<Pair>, StoreError> {
        if !storable(id.0) {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {PAIR_COLS} FROM pairs WHERE image = ?1 OR text = ?1 ORDER BY at_ms DESC, rowid DESC"
        ))?;
        let rows = stmt.query_map([id.0], row_to_pair)?;
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
        let rows = stmt.query_map(params![st, limit as i64, sql_offset(offset)], row_to_pair)?;
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

    /// The store's decision revision (bumped by every decision and undo).
    pub fn revision(&self) -> Result<u64, StoreError> {
        revision_in(&self.conn)
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

    /// Confirmed pairs (and rejected ones if asked), oldest decision first, with both
    /// samples and who decided.
    pub fn export_rows(&self, include_rejected: bool) -> Result<Vec<ExportRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT p.state, si.key, si.path, st.key, st.text, p.source, d.annotator, p.at_ms
             FROM pairs p
             JOIN samples si ON si.id = p.image
             JOIN samples st ON st.id = p.text
             LEFT JOIN decisions d ON d.id = p.decision
             WHERE p.state = 'confirmed' OR (?1 AND p.state = 'rejected')
             ORDER BY p.at_ms, p.image, p.text",
        )?;
        let rows = stmt.query_map([include_rejected], |r| {
            Ok(ExportRow {
                state: r.get(0)?,
                image_key: r.get(1)?,
                image_path: r.get(2)?,
                text_key: r.get(3)?,
                caption: r.get(4)?,
                source: r.get(5)?,
                annotator: r.get(6)?,
                at_ms: r.get(7)?,
            })
        })?;
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
                |r| Ok((row_to_decision(r)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?)),
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
                row_to_decision,
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

    // ---- runs -------------------------------------------------------------------------------

    pub fn create_run(
        &mut self,
        method: AlignMethod,
        config: &serde_json::Value,
        pairs: u64,
    ) -> Result<RunId, StoreError> {
        self.conn.execute(
            "INSERT INTO runs (method, state, config, pairs, started_at_ms) VALUES (?1, 'running', ?2, ?3, ?4)",
            params![enum_str(&method), config.to_string(), pairs, now_ms()],
        )?;
        Ok(RunId(self.conn.last_insert_rowid() as u64))
    }

    pub fn set_run_pairs(&mut self, run: RunId, pairs: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE runs SET pairs = ?2 WHERE id = ?1",
            params![run.0, pairs],
        )?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn finish_run(
        &mut self,
        run: RunId,
        state: JobState,
        metrics: Option<&RetrievalMetrics>,
        checkpoint: Option<&str>,
        fitted: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let metrics = metrics.map(|m| serde_json::to_string(m).unwrap_or_default());
        let n = self.conn.execute(
            "UPDATE runs SET state = ?2, finished_at_ms = ?3, metrics = ?4, checkpoint = ?5, fitted = ?6, error = ?7
             WHERE id = ?1",
            params![run.0, enum_str(&state), now_ms(), metrics, checkpoint, fitted, error],
        )?;
        if n == 0 {
            return Err(StoreError::UnknownRun(run));
        }
        Ok(())
    }

    /// Replace a run's metrics (a later `evaluate` of it).
    pub fn set_run_metrics(
        &mut self,
        run: RunId,
        metrics: &RetrievalMetrics,
    ) -> Result<(), StoreError> {
        let m = serde_json::to_string(metrics).unwrap_or_default();
        self.conn.execute(
            "UPDATE runs SET metrics = ?2 WHERE id = ?1",
            params![run.0, m],
        )?;
        Ok(())
    }

    pub fn run(&self, id: RunId) -> Result<StoredRun, StoreError> {
        if !storable(id.0) {
            return Err(StoreError::UnknownRun(id));
        }
        self.conn
            .query_row(
                &format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"),
                [id.0],
                row_to_run,
            )
            .optional()?
            .ok_or(StoreError::UnknownRun(id))?
    }

    /// The newest run that succeeded and has a checkpoint: what the daemon serves at start.
    pub fn latest_servable_run(&self) -> Result<Option<StoredRun>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE state = 'succeeded' AND checkpoint IS NOT NULL ORDER BY id DESC LIMIT 1"
                ),
                [],
                row_to_run,
            )
            .optional()?
            .transpose()
    }

    /// The newest `limit` runs, returned oldest first.
    pub fn runs(&self, limit: u32) -> Result<Vec<StoredRun>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {RUN_COLS} FROM runs ORDER BY id DESC LIMIT ?1"
        ))?;
        let rows = stmt.query_map([limit as i64], row_to_run)?;
        let mut out = rows
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }
}

/// A run as stored.
#[derive(Debug, Clone)]
pub struct StoredRun {
    pub info: RunInfo,
    pub config: serde_json::Value,
    pub checkpoint: Option<String>,
    /// What the engine actually fitted (e.g. `cca` when trained heads are unavailable).
    pub fitted: Option<String>,
    pub error: Option<String>,
}

const RUN_COLS: &str = "id, method, state, config, pairs, started_at_ms, finished_at_ms, metrics, checkpoint, fitted, error";

#[allow(clippy::type_complexity)]
fn row_to_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<StoredRun, StoreError>> {
    let id: u64 = r.get(0)?;
    let method: String = r.get(1)?;
    let state: String = r.get(2)?;
    let config: String = r.get(3)?;
    let pairs: u64 = r.get(4)?;
    let started: u64 = r.get(5)?;
    let finished: Option<u64> = r.get(6)?;
    let metrics: Option<String> = r.get(7)?;
    let checkpoint: Option<String> = r.get(8)?;
    let fitted: Option<String> = r.get(9)?;
    let error: Option<String> = r.get(10)?;
    Ok((|| {
        Ok(StoredRun {
            info: RunInfo {
                id: RunId(id),
                method: parse_enum(&method, "run method")?,
                state: parse_enum(&state, "run state")?,
                pairs,
                started_at_ms: started,
                finished_at_ms: finished,
                metrics: metrics
                    .map(|m| {
                        serde_json::from_str(&m)
                            .map_err(|e| StoreError::Corrupt(format!("run {id} metrics: {e}")))
                    })
                    .transpose()?,
                fitted: fitted.clone(),
                error: error.clone(),
            },
            config: serde_json::from_str(&config).unwrap_or(serde_json::Value::Null),
            checkpoint,
            fitted,
            error,
        })
    })())
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
