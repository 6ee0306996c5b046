//! Background jobs (alignment, ingest): ids, state, cancellation and progress notifications.
//!
//! Ordering contract (docs/PROTOCOL.md section 5): each job's `$/progress` notifications carry
//! `seq` = 1, 2, 3, ... and exactly one `sotalign/jobFinished` follows the last one with its
//! `lastSeq`. The sequence number is assigned and the notification handed to the broadcast
//! channel under one lock, so every connection's writer sees them in `seq` order; responses
//! can still overtake them (they come from other tasks), which is why clients key on `seq`.
//!
//! Notifications are broadcast to every initialized connection: a dashboard should see a job
//! another client started. The channel is bounded; a connection too slow to keep up loses the
//! oldest notifications (its writer logs the gap) instead of holding up the job or other clients,
//! and can recover the state with `sotalign/jobs`.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use sotalign_protocol::types::{
    JobFinishedParams, JobId, JobInfo, JobKind, JobProgress, JobStage, JobState, ModelStage,
    ProgressKind, ProgressParams, ProgressToken, RetrievalMetrics, RunId,
};
use sotalign_protocol::{ErrorObject, Message, Notification, names};
use tokio::sync::broadcast;

use crate::store::now_ms;

/// Finished jobs kept for `sotalign/jobs` (older ones are forgotten; runs stay in the store).
const KEEP_FINISHED: usize = 200;

struct Entry {
    info: JobInfo,
    cancel: Arc<AtomicBool>,
}

struct Inner {
    next_id: u64,
    jobs: BTreeMap<u64, Entry>,
}

pub struct Jobs {
    inner: Mutex<Inner>,
    notify: broadcast::Sender<Message>,
}

impl Jobs {
    pub fn new(notify: broadcast::Sender<Message>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                next_id: 1,
                jobs: BTreeMap::new(),
            }),
            notify,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // field updates), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a job of `kind`; refused (with the running job's id) when one of the same kind
    /// is still active: one alignment and one ingest at a time.
    pub fn start(
        self: &Arc<Self>,
        kind: JobKind,
        run: Option<RunId>,
        title: String,
    ) -> Result<JobHandle, JobId> {
        let mut g = self.lock();
        if let Some(e) = g
            .jobs
            .values()
            .find(|e| e.info.kind == kind && !e.info.state.is_finished())
        {
            return Err(e.info.id);
        }
        let id = JobId(g.next_id);
        g.next_id += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        g.jobs.insert(
            id.0,
            Entry {
                info: JobInfo {
                    id,
                    kind,
                    state: JobState::Running,
                    stage: None,
                    model_stage: None,
                    step: 0,
                    total: 0,
                    last_seq: 0,
                    started_at_ms: now_ms(),
                    finished_at_ms: None,
                    run,
                    error: None,
                },
                cancel: cancel.clone(),
            },
        );
        Ok(JobHandle {
            id,
            kind,
            jobs: self.clone(),
            cancel,
            started: Instant::now(),
            title,
            finished: false,
            model_stage: Mutex::new(None),
        })
    }

    /// Run ids are only known once the store has created the run; set it before the first
    /// progress report.
    pub fn set_run(&self, id: JobId, run: RunId) {
        if let Some(e) = self.lock().jobs.get_mut(&id.0) {
            e.info.run = Some(run);
        }
    }

    pub fn get(&self, id: JobId) -> Option<JobInfo> {
        self.lock().jobs.get(&id.0).map(|e| e.info.clone())
    }

    /// Ask a job to stop at its next step boundary; returns its info after the request.
    pub fn cancel(&self, id: JobId) -> Option<JobInfo> {
        let mut g = self.lock();
        let e = g.jobs.get_mut(&id.0)?;
        if !e.info.state.is_finished() {
            e.cancel.store(true, Ordering::SeqCst);
            e.info.state = JobState::Cancelling;
        }
        Some(e.info.clone())
    }

    /// Cancel everything still running (shutdown).
    pub fn cancel_all(&self) {
        let ids: Vec<JobId> = self.active().iter().map(|j| j.id).collect();
        for id in ids {
            self.cancel(id);
        }
    }

    /// Active jobs, oldest first.
    pub fn active(&self) -> Vec<JobInfo> {
        self.lock()
            .jobs
            .values()
            .filter(|e| !e.info.state.is_finished())
            .map(|e| e.info.clone())
            .collect()
    }

    /// Active jobs, plus finished ones when asked, newest first, at most `limit`.
    pub fn list(&self, include_finished: bool, limit: usize) -> Vec<JobInfo> {
        self.lock()
            .jobs
            .values()
            .rev()
            .filter(|e| include_finished || !e.info.state.is_finished())
            .take(limit)
            .map(|e| e.info.clone())
            .collect()
    }

    fn send(&self, method: &str, params: &impl serde::Serialize) {
        match Notification::new(method, params) {
            // No receiver (no client connected) is fine: the job's state stays queryable.
            Ok(n) => drop(self.notify.send(Message::Notification(n))),
            Err(e) => tracing::error!("cannot serialise {method}: {e}"),
        }
    }
}

/// A running job's side of the registry. Dropping it without [`JobHandle::finish`] (a panic
/// in the job) marks the job failed, so no job stays "running" forever.
pub struct JobHandle {
    pub id: JobId,
    pub kind: JobKind,
    jobs: Arc<Jobs>,
    cancel: Arc<AtomicBool>,
    started: Instant,
    title: String,
    finished: bool,
    /// Align jobs: the model the job works towards, reported with every progress.
    model_stage: Mutex<Option<ModelStage>>,
}

/// One progress report.
#[derive(Debug, Clone)]
pub struct Report {
    pub stage: JobStage,
    pub step: u64,
    pub total: u64,
    pub loss: Option<f64>,
    /// 0-100 over the whole job.
    pub percentage: f64,
    pub message: Option<String>,
}

impl JobHandle {
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Set the model stage reported from now on (align jobs).
    pub fn set_model_stage(&self, s: ModelStage) {
        *self.model_stage.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
    }

    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Record and broadcast one progress report (`begin` for the first, `report` after).
    pub fn progress(&self, r: Report) {
        let elapsed = self.elapsed_secs();
        let pct = r.percentage.clamp(0.0, 100.0);
        let eta = (pct >= 1.0 && pct < 100.0).then(|| elapsed * (100.0 - pct) / pct);
        let mut g = self.jobs.lock();
        let Some(e) = g.jobs.get_mut(&self.id.0) else {
            return;
        };
        e.info.last_seq += 1;
        e.info.stage = Some(r.stage);
        let model_stage = *self.model_stage.lock().unwrap_or_else(|p| p.into_inner());
        e.info.model_stage = model_stage;
        e.info.step = r.step;
        e.info.total = r.total;
        let seq = e.info.last_seq;
        let params = ProgressParams {
            token: ProgressToken::for_job(self.id),
            value: JobProgress {
                kind: if seq == 1 {
                    ProgressKind::Begin
                } else {
                    ProgressKind::Report
                },
                title: (seq == 1).then(|| self.title.clone()),
                message: r.message,
                percentage: Some(pct.round() as u32),
                job: self.id,
                seq,
                stage: r.stage,
                model_stage,
                step: r.step,
                total: r.total,
                loss: r.loss.filter(|l| l.is_finite()),
                eta_secs: eta,
                elapsed_secs: elapsed,
            },
        };
        // Sent under the lock: the broadcast order is the seq order.
        self.jobs.send(names::PROGRESS, &params);
    }

    /// End the job: a final `$/progress` (`end`), then `sotalign/jobFinished`.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.finish_inner(outcome);
    }

    fn finish_inner(&self, o: Outcome) {
        let elapsed = self.elapsed_secs();
        let mut g = self.jobs.lock();
        let Some(e) = g.jobs.get_mut(&self.id.0) else {
            return;
        };
        e.info.last_seq += 1;
        e.info.state = o.state;
        e.info.finished_at_ms = Some(now_ms());
        e.info.error = o.error.as_ref().map(|e| e.message.clone());
        let seq = e.info.last_seq;
        let stage = e.info.stage.unwrap_or(match self.kind {
            JobKind::Align => JobStage::Teacher,
            JobKind::Ingest => JobStage::Scan,
        });
        let (step, total, run, model_stage) =
            (e.info.step, e.info.total, e.info.run, e.info.model_stage);
        let end = ProgressParams {
            token: ProgressToken::for_job(self.id),
            value: JobProgress {
                kind: ProgressKind::End,
                title: None,
                message: Some(match o.state {
                    JobState::Succeeded => "done".to_string(),
                    JobState::Cancelled => "cancelled".to_string(),
                    _ => o
                        .error
                        .as_ref()
                        .map(|e| format!("failed: {}", e.message))
                        .unwrap_or_else(|| "failed".into()),
                }),
                percentage: Some(100),
                job: self.id,
                seq,
                stage,
                model_stage,
                step,
                total,
                loss: None,
                eta_secs: None,
                elapsed_secs: elapsed,
            },
        };
        self.jobs.send(names::PROGRESS, &end);
        let fin = JobFinishedParams {
            job: self.id,
            kind: self.kind,
            state: o.state,
            last_seq: seq,
            elapsed_secs: elapsed,
            run,
            metrics: o.metrics,
            ingested: o.ingested,
            error: o.error,
        };
        self.jobs.send(names::JOB_FINISHED, &fin);
        // Forget the oldest finished jobs beyond the cap.
        let finished: Vec<u64> = g
            .jobs
            .iter()
            .filter(|(_, e)| e.info.state.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for k in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_FINISHED))
        {
            g.jobs.remove(k);
        }
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.finish_inner(Outcome::failed(crate::server::errors::internal(
                "the job stopped unexpectedly",
            )));
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: JobState,
    pub metrics: Option<RetrievalMetrics>,
    pub ingested: Option<u64>,
    pub error: Option<ErrorObject>,
}

impl Outcome {
    pub fn succeeded() -> Self {
        Self {
            state: JobState::Succeeded,
            metrics: None,
            ingested: None,
            error: None,
        }
    }

    pub fn cancelled() -> Self {
        Self {
            state: JobState::Cancelled,
            metrics: None,
            ingested: None,
            error: None,
        }
    }

    pub fn failed(e: ErrorObject) -> Self {
        Self {
            state: JobState::Failed,
            metrics: None,
            ingested: None,
            error: Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotalign_protocol::ServerNotification;

    fn report(step: u64) -> Report {
        Report {
            stage: JobStage::Refine,
            step,
            total: 10,
            loss: Some(1.0),
            percentage: step as f64 * 10.0,
            message: None,
        }
    }

    #[test]
    fn seq_is_gapless_and_finished_comes_last_with_last_seq() {
        let (tx, mut rx) = broadcast::channel(64);
        let jobs = Arc::new(Jobs::new(tx));
        let h = jobs.start(JobKind::Align, None, "align".into()).unwrap();
        // A second alignment is refused while the first runs; an ingest is not.
        assert_eq!(
            jobs.start(JobKind::Align, None, "x".into()).err(),
            Some(h.id)
        );
        let other = jobs.start(JobKind::Ingest, None, "ingest".into()).unwrap();
        other.finish(Outcome::succeeded());
        while rx.try_recv().is_ok() {}
        for s in 1..=3 {
            h.progress(report(s));
        }
        let id = h.id;
        h.finish(Outcome::succeeded());
        let mut seqs = Vec::new();
        let mut finished = None;
        while let Ok(Message::Notification(n)) = rx.try_recv() {
            match ServerNotification::parse(n).unwrap() {
                ServerNotification::Progress(p) => seqs.push((p.value.seq, p.value.kind)),
                ServerNotification::JobFinished(f) => finished = Some(f),
                ServerNotification::Other(_) | ServerNotification::DecisionsChanged(_) => {
                    panic!("unexpected")
                }
            }
        }
        assert_eq!(
            seqs,
            vec![
                (1, ProgressKind::Begin),
                (2, ProgressKind::Report),
                (3, ProgressKind::Report),
                (4, ProgressKind::End)
            ]
        );
        let f = finished.unwrap();
        assert_eq!((f.job, f.last_seq, f.state), (id, 4, JobState::Succeeded));
        assert!(jobs.active().is_empty());
        assert_eq!(jobs.list(true, 10).len(), 2);
    }

    #[test]
    fn cancel_sets_the_flag_and_a_dropped_handle_fails_the_job() {
        let (tx, _rx) = broadcast::channel(64);
        let jobs = Arc::new(Jobs::new(tx));
        let h = jobs.start(JobKind::Align, None, "align".into()).unwrap();
        assert_eq!(jobs.cancel(h.id).unwrap().state, JobState::Cancelling);
        assert!(h.is_cancelled());
        let id = h.id;
        drop(h);
        let info = jobs.get(id).unwrap();
        assert_eq!(info.state, JobState::Failed);
        assert!(jobs.cancel(JobId(99)).is_none());
        // Cancelling a finished job changes nothing.
        assert_eq!(jobs.cancel(id).unwrap().state, JobState::Failed);
    }
}
