//! The dashboard's state: jobs (re-aligns and ingests) from `$/progress` (ordered by `seq`),
//! the job listing in `status` and `jobFinished`; starting and cancelling a re-align.
//!
//! Stages are kept in the order the daemon reports them, named by their wire name, so a stage
//! the daemon adds later shows up without a change here. The ETA is measured, not taken on
//! trust: the current stage's progress rate between its first and latest notification, on the
//! daemon's own job clock (`elapsedSecs`), so network delays do not distort it.
use std::collections::HashSet;

use sotalign_protocol::types::*;

use super::App;
use crate::rpc::Call;

/// A rate is measured over at least this many seconds of a stage before an ETA is shown.
pub const MIN_RATE_WINDOW_SECS: f64 = 1.0;

/// A stage's name as the daemon writes it on the wire (`teacher`, `refine`, ...).
pub fn stage_name(stage: JobStage) -> String {
    match serde_json::to_value(stage) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{stage:?}").to_lowercase(),
    }
}

/// A fraction (0.081) as the percentage people read (8.1%).
pub fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// What a job is called on screen: "re-align #3" is the alignment that produced model run 3
/// (the number the runs chart and the title bar use); "ingest #2" is job 2.
pub fn job_label(kind: JobKind, job: JobId, run: Option<RunId>) -> String {
    match (kind, run) {
        (JobKind::Align, Some(r)) => format!("re-align #{r}"),
        (JobKind::Align, None) => format!("re-align (job {job})"),
        (JobKind::Ingest, _) => format!("ingest #{job}"),
    }
}

/// One stage of a job as seen through its progress notifications.
#[derive(Debug, Clone, PartialEq)]
pub struct StageView {
    pub stage: JobStage,
    pub step: u64,
    pub total: u64,
    /// (job clock seconds, fraction of the stage done) at the stage's first notification.
    pub first: (f64, f64),
    /// The same at its latest notification.
    pub last: (f64, f64),
}

impl StageView {
    fn fraction(step: u64, total: u64) -> f64 {
        if total == 0 {
            0.0
        } else {
            (step as f64 / total as f64).min(1.0)
        }
    }

    pub fn name(&self) -> String {
        stage_name(self.stage)
    }

    /// Seconds this stage still needed at its latest notification, from its measured rate;
    /// `None` until it has been observed moving for [`MIN_RATE_WINDOW_SECS`].
    pub fn eta_at_last(&self) -> Option<f64> {
        let dt = self.last.0 - self.first.0;
        let done = self.last.1 - self.first.1;
        if dt < MIN_RATE_WINDOW_SECS || done <= 0.0 {
            return None;
        }
        Some((1.0 - self.last.1).max(0.0) * dt / done)
    }
}

/// What the dashboard knows about one job, from `$/progress` (ordered by `seq`), the job
/// listing in `status`, and `jobFinished`.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub id: JobId,
    pub kind: JobKind,
    pub run: Option<RunId>,
    pub title: Option<String>,
    /// Highest progress `seq` applied; older notifications that arrive late are dropped.
    pub last_seq: u64,
    pub progress: Option<JobProgress>,
    /// When `progress` arrived (UI clock), to count the ETA down between notifications.
    pub progress_at_ms: u64,
    /// Stages in the order they were first reported; the last one is current.
    pub stages: Vec<StageView>,
    /// The job as `status` last listed it (after a reconnect, before any progress arrives).
    pub info: Option<JobInfo>,
    pub finished: Option<JobFinishedParams>,
    /// Set when the job vanished from `status` while we were disconnected.
    pub lost_track: bool,
}

impl JobView {
    pub(super) fn new(id: JobId, kind: JobKind) -> Self {
        Self {
            id,
            kind,
            run: None,
            title: None,
            last_seq: 0,
            progress: None,
            progress_at_ms: 0,
            stages: Vec::new(),
            info: None,
            finished: None,
            lost_track: false,
        }
    }

    pub fn label(&self) -> String {
        job_label(self.kind, self.id, self.run)
    }

    pub fn is_running(&self) -> bool {
        self.finished.is_none() && !self.lost_track
    }

    /// The stage running now (from progress, else from `status`).
    pub fn current_stage(&self) -> Option<JobStage> {
        match (&self.progress, &self.info) {
            (Some(p), _) => Some(p.stage),
            (None, Some(i)) => i.stage,
            (None, None) => None,
        }
    }

    /// 0..=1 over the whole job.
    pub fn ratio(&self) -> f64 {
        if let Some(f) = &self.finished {
            return if f.state == JobState::Succeeded {
                1.0
            } else {
                self.progress_ratio()
            };
        }
        self.progress_ratio()
    }

    fn progress_ratio(&self) -> f64 {
        match (&self.progress, &self.info) {
            (Some(p), _) => match p.percentage {
                Some(pc) => f64::from(pc.min(100)) / 100.0,
                None => StageView::fraction(p.step, p.total),
            },
            (None, Some(i)) => StageView::fraction(i.step, i.total),
            _ => 0.0,
        }
    }

    /// Seconds left in the current stage: its measured rate, counted down since the latest
    /// notification. `None` while the rate is still being measured.
    pub fn stage_eta_secs(&self, now_ms: u64) -> Option<f64> {
        if !self.is_running() {
            return None;
        }
        let eta = self.stages.last()?.eta_at_last()?;
        let since = now_ms.saturating_sub(self.progress_at_ms) as f64 / 1000.0;
        Some((eta - since).max(0.0))
    }

    /// Seconds each finished stage took (by the job clock), in order.
    pub fn stage_durations(&self) -> Vec<(String, f64)> {
        self.stages
            .windows(2)
            .map(|w| (w[0].name(), (w[1].first.0 - w[0].first.0).max(0.0)))
            .collect()
    }

    fn apply(&mut self, v: JobProgress, now_ms: u64) {
        let fraction = StageView::fraction(v.step, v.total);
        let at = (v.elapsed_secs, fraction);
        match self.stages.last_mut() {
            Some(s) if s.stage == v.stage => {
                s.step = v.step;
                s.total = v.total;
                s.last = at;
            }
            _ => self.stages.push(StageView {
                stage: v.stage,
                step: v.step,
                total: v.total,
                first: at,
                last: at,
            }),
        }
        self.last_seq = v.seq;
        if v.title.is_some() {
            self.title = v.title.clone();
        }
        self.progress = Some(v);
        self.progress_at_ms = now_ms;
    }
}

impl App {
    /// The newest job (running or not): what the dashboard's gauge shows.
    pub fn latest_job(&self) -> Option<&JobView> {
        self.jobs
            .values()
            .filter(|j| j.is_running())
            .next_back()
            .or_else(|| self.jobs.values().next_back())
    }

    pub fn running_align(&self) -> Option<&JobView> {
        self.jobs
            .values()
            .rev()
            .find(|j| j.kind == JobKind::Align && j.is_running())
    }

    pub(super) fn start_align(&mut self, calls: &mut Vec<Call>) {
        if let Some(j) = self.running_align() {
            let label = j.label();
            self.info(format!("{label} is still running (d: dashboard)"));
            return;
        }
        self.info("starting a re-align...");
        calls.push(Call::Align(self.align.clone()));
    }

    pub(super) fn cancel_align(&mut self, calls: &mut Vec<Call>) {
        match self.running_align().map(|j| j.id) {
            Some(job) => calls.push(Call::CancelJob { job }),
            None => self.info("no re-align is running"),
        }
    }

    pub(super) fn on_align_started(&mut self, r: AlignResult) {
        let view = self
            .jobs
            .entry(r.job)
            .or_insert_with(|| JobView::new(r.job, JobKind::Align));
        view.run = Some(r.run);
        let label = view.label();
        self.info(format!("{label} started; d shows its progress"));
    }

    pub(super) fn on_cancelled(&mut self, r: CancelResult) {
        let label = match self.jobs.get(&r.job.id) {
            Some(j) => j.label(),
            None => job_label(r.job.kind, r.job.id, r.job.run),
        };
        let state = serde_json::to_value(r.job.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", r.job.state).to_lowercase());
        self.info(format!("{label} is {state}"));
    }

    pub(super) fn on_progress(&mut self, v: JobProgress) {
        let now = self.now_ms;
        let kind = if v.stage == JobStage::Scan || v.stage == JobStage::Encode {
            JobKind::Ingest
        } else {
            JobKind::Align
        };
        let job = self
            .jobs
            .entry(v.job)
            .or_insert_with(|| JobView::new(v.job, kind));
        // Transport order is not guaranteed: keep only the newest, and nothing after the job
        // finished.
        if job.finished.is_some() || v.seq <= job.last_seq {
            return;
        }
        job.apply(v, now);
    }

    /// Jobs as `status` lists them; after a reconnect, jobs we thought running that the
    /// daemon no longer lists ended while we were away (their `jobFinished` is lost).
    pub(super) fn reconcile_jobs(&mut self, jobs: &[JobInfo], after_reconnect: bool) {
        for info in jobs {
            let view = self
                .jobs
                .entry(info.id)
                .or_insert_with(|| JobView::new(info.id, info.kind));
            if view.run.is_none() {
                view.run = info.run;
            }
            view.info = Some(info.clone());
        }
        if after_reconnect {
            let listed: HashSet<JobId> = jobs.iter().map(|j| j.id).collect();
            for view in self.jobs.values_mut() {
                if view.finished.is_none() && !listed.contains(&view.id) {
                    view.lost_track = true;
                }
            }
        }
    }

    pub(super) fn on_job_finished(&mut self, f: JobFinishedParams, calls: &mut Vec<Call>) {
        let job = self
            .jobs
            .entry(f.job)
            .or_insert_with(|| JobView::new(f.job, f.kind));
        if job.finished.is_some() {
            return;
        }
        job.kind = f.kind;
        if f.run.is_some() {
            job.run = f.run;
        }
        job.finished = Some(f.clone());
        let what = job.label();
        match f.state {
            JobState::Succeeded => {
                let metrics = f
                    .metrics
                    .map(|m| {
                        format!(
                            ": R@1 image->text {}, text->image {}",
                            percent(m.image_to_text.r1),
                            percent(m.text_to_image.r1)
                        )
                    })
                    .unwrap_or_default();
                self.info(format!(
                    "{what} finished in {:.1} s{metrics}",
                    f.elapsed_secs
                ));
            }
            JobState::Cancelled => self.info(format!("{what} was cancelled")),
            _ => {
                let why = f
                    .error
                    .as_ref()
                    .map(|e| format!(": error {}: {}", e.code, e.message))
                    .unwrap_or_default();
                self.error(format!("{what} failed{why}"));
            }
        }
        calls.push(Call::Status);
        calls.push(Call::Runs);
        if f.kind == JobKind::Align && f.state == JobState::Succeeded {
            // A new model: new scores for the sample under review. The shown queue restarts
            // paging; the hidden one is refreshed when it is shown (its run is then stale).
            let q = self.queue_mut(self.direction);
            calls.extend(q.restart());
            if q.current().is_some() {
                calls.extend(q.load_candidates());
            }
        }
    }
}
