//! The `runs` table: every alignment run with its config, metrics, checkpoint and error.
use rusqlite::{OptionalExtension, params};
use sotalign_protocol::types::{AlignMethod, JobState, RetrievalMetrics, RunId, RunInfo};

use super::codec::{enum_str, parse_enum};
use super::{Store, StoreError, now_ms, storable};

impl Store {
    /// Runs left `running`/`queued` by a daemon that died are marked failed (returns how many).
    pub fn fail_interrupted_runs(&mut self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE runs SET state = 'failed', finished_at_ms = ?1,
                 error = 'the daemon stopped before the run finished'
             WHERE state IN ('queued', 'running', 'cancelling')",
            [now_ms()],
        )?)
    }

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
