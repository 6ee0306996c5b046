//! Progress reports from long-running fits (student training, experiments).
//!
//! Engine code calls a `&mut dyn FnMut(&Progress) -> ControlFlow<()>` callback; returning
//! `ControlFlow::Break(())` asks the fit to stop, which it does at the next step boundary with
//! [`crate::AlignError::Cancelled`]. The daemon forwards these as JSON-RPC progress
//! notifications; the CLI draws them as progress bars. No IO happens here.

/// One progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// What is running, e.g. "sotalign" or "siglip".
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
