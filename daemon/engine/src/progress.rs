//! Progress reports from long-running fits (student training, experiments).
//!
//! Engine code calls a `&mut dyn FnMut(&Progress) -> ControlFlow<()>` callback; returning
//! `ControlFlow::Break(())` asks the fit to stop, which it does at the next step boundary with
//! [`crate::AlignError::Cancelled`]. The daemon forwards these as JSON-RPC progress
//! notifications; the CLI draws them as progress bars. No IO happens here.

/// What kind of work a report belongs to (typed, so callers never classify `stage` strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Fitting a closed-form model (the teacher, a baseline, `auto`'s refit of its choice).
    Fit,
    /// Scoring candidates on validation splits of the pairs (`auto`).
    Validate,
    /// Training steps of the student heads.
    Train,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// What is running, in words for display, e.g. "sotalign" or "fit cca".
    pub stage: String,
    /// Steps done so far (1-based after the first step).
    pub step: usize,
    /// Total steps of this stage.
    pub total: usize,
    /// Current loss (training stages), if meaningful.
    pub loss: Option<f64>,
}

/// A cancel flag shared with whoever may stop a fit (the daemon's job registry). The progress
/// callback is only called between steps; this flag is also checked *inside* a step, between
/// Sinkhorn iterations, so one long step (a large batch, many iterations) stops promptly too.
/// Not part of a configuration's identity: two `Cancel`s always compare equal.
#[derive(Clone, Default)]
pub struct Cancel(Option<std::sync::Arc<std::sync::atomic::AtomicBool>>);

impl Cancel {
    /// A handle on `flag`: the fit stops once it is set.
    pub fn new(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        Self(Some(flag))
    }

    pub fn is_set(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// `Err(Cancelled)` once the flag is set.
    pub fn check(&self) -> Result<(), crate::AlignError> {
        if self.is_set() {
            Err(crate::AlignError::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cancel({})", if self.is_set() { "set" } else { "clear" })
    }
}

impl PartialEq for Cancel {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A callback that never cancels and ignores reports.
pub fn ignore(_: &Progress) -> std::ops::ControlFlow<()> {
    std::ops::ControlFlow::Continue(())
}
