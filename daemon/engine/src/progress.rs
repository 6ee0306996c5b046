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

/// A callback that never cancels and ignores reports.
pub fn ignore(_: &Progress) -> std::ops::ControlFlow<()> {
    std::ops::ControlFlow::Continue(())
}
