//! The audit screen's state: the confirmed pairs the daemon's cross-fitted audit
//! (`sotalign/audit`) finds most suspicious, and what the annotator does with each one.
//!
//! Actions are ordinary decisions, stored and broadcast like the review screen's: keep =
//! confirm the pair again (recorded with the annotator, nothing changes), unpair = reject it,
//! re-pair = reject it and confirm the image with the suggested caption. Steps go one at a
//! time (the next only after the daemon acknowledged the previous), so a failure leaves a
//! known state; undo reverts every decision of the last action, newest first. The list is a
//! snapshot of one audit: `a` asks for a fresh one.
use std::collections::VecDeque;

use sotalign_protocol::types::*;

use super::{App, Loadable, step_selection, truncate};
use crate::rpc::{Call, CallError};

/// What the annotator did with a suspected pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Keep,
    Unpair,
    Repair,
}

impl AuditAction {
    fn past(self) -> &'static str {
        match self {
            AuditAction::Keep => "kept",
            AuditAction::Unpair => "unpaired",
            AuditAction::Repair => "re-paired",
        }
    }
}

/// An action whose decisions are being sent.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPending {
    pub action: AuditAction,
    pub pair: AuditedPair,
    /// Decisions still to send, in order.
    pub steps: VecDeque<(DecisionKind, SampleId, SampleId)>,
    /// Decisions acknowledged so far.
    pub done: Vec<DecisionId>,
}

/// A finished action, kept so `u` can revert it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditUndo {
    pub action: AuditAction,
    pub pair: AuditedPair,
    /// Its decisions, in the order they were made.
    pub decisions: Vec<DecisionId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditView {
    pub list: Loadable<Vec<AuditedPair>>,
    pub audited: u64,
    pub flagged: u64,
    pub selected: usize,
    pub pending: Option<AuditPending>,
    pub undo: Vec<AuditUndo>,
    /// An undo being sent: the entry and the decisions still to undo (newest first).
    pub undoing: Option<(AuditUndo, Vec<DecisionId>)>,
}

impl AuditView {
    pub(super) fn new() -> Self {
        Self {
            list: Loadable::Idle,
            audited: 0,
            flagged: 0,
            selected: 0,
            pending: None,
            undo: Vec::new(),
            undoing: None,
        }
    }

    pub fn current(&self) -> Option<&AuditedPair> {
        self.list.ready()?.get(self.selected)
    }

    /// A decision (from `decisionsChanged`) made or undone by this screen: its echo, not
    /// another annotator's.
    pub(super) fn is_ours(&self, d: &Decision) -> bool {
        let on = |p: &AuditedPair| p.image.id == d.image;
        self.pending.as_ref().is_some_and(|p| on(&p.pair))
            || self.undo.iter().any(|u| u.decisions.contains(&d.id))
            || self
                .undoing
                .as_ref()
                .is_some_and(|(u, _)| u.decisions.contains(&d.id))
    }

    fn busy(&self) -> bool {
        self.pending.is_some() || self.undoing.is_some()
    }
}

impl App {
    /// Enter the audit screen: the first visit (or one after a failure) asks for an audit.
    pub(super) fn show_audit(&mut self, calls: &mut Vec<Call>) {
        self.screen = super::Screen::Audit;
        if matches!(self.audit.list, Loadable::Idle | Loadable::Failed(_)) && self.is_connected() {
            self.refresh_audit(calls);
        }
    }

    /// `a`: run the audit again (the confirmed pairs changed, or a model did).
    pub(super) fn refresh_audit(&mut self, calls: &mut Vec<Call>) {
        if self.audit.busy() {
            self.info("still saving the previous audit decision...");
            return;
        }
        self.audit.list = Loadable::Loading;
        self.audit.selected = 0;
        calls.push(Call::Audit);
    }

    pub(super) fn on_audit(&mut self, r: AuditResult) {
        self.audit.audited = r.audited;
        self.audit.flagged = r.flagged;
        self.audit.list = Loadable::Ready(r.pairs);
        self.audit.selected = 0;
    }

    pub(super) fn on_audit_failed(&mut self, e: CallError) {
        self.audit.list = Loadable::Failed(e);
    }

    pub(super) fn move_audit_selection(&mut self, up: bool) {
        let len = self.audit.list.ready().map_or(0, Vec::len);
        step_selection(&mut self.audit.selected, len, up);
    }

    /// y / n / p on the selected pair.
    pub(super) fn audit_act(&mut self, action: AuditAction, calls: &mut Vec<Call>) {
        if self.audit.busy() {
            self.info("still saving the previous audit decision...");
            return;
        }
        let Some(pair) = self.audit.current().cloned() else {
            return;
        };
        let (image, text) = (pair.image.id, pair.text.id);
        let mut steps = VecDeque::new();
        match action {
            AuditAction::Keep => steps.push_back((DecisionKind::Confirm, image, text)),
            AuditAction::Unpair => steps.push_back((DecisionKind::Reject, image, text)),
            AuditAction::Repair => {
                let Some(alt) = pair.alt_text.as_ref().map(|t| t.sample.id) else {
                    self.info("no caption is suggested for this image: n unpairs it");
                    return;
                };
                steps.push_back((DecisionKind::Reject, image, text));
                steps.push_back((DecisionKind::Confirm, image, alt));
            }
        }
        let mut p = AuditPending {
            action,
            pair,
            steps,
            done: Vec::new(),
        };
        calls.extend(next_step(&mut p));
        self.audit.pending = Some(p);
    }

    /// A decision of the pending action was saved: send the next one, or finish the action
    /// (the pair leaves the list, the action becomes undoable).
    pub(super) fn on_audit_decided(&mut self, r: DecisionResult, calls: &mut Vec<Call>) {
        self.set_counts(r.counts);
        let Some(mut p) = self.audit.pending.take() else {
            return;
        };
        p.done.push(r.decision.id);
        if let Some(call) = next_step(&mut p) {
            calls.push(call);
            self.audit.pending = Some(p);
            return;
        }
        self.finish_audit_action(p);
    }

    /// A decision of the pending action failed: what was saved stays undoable, the pair stays
    /// listed.
    pub(super) fn on_audit_decide_failed(&mut self, e: &CallError) {
        let Some(p) = self.audit.pending.take() else {
            return;
        };
        if !p.done.is_empty() {
            self.audit.undo.push(AuditUndo {
                action: p.action,
                pair: p.pair,
                decisions: p.done,
            });
        }
        self.error(format!("audit decision not saved: {e}"));
    }

    fn finish_audit_action(&mut self, p: AuditPending) {
        if let Loadable::Ready(list) = &mut self.audit.list {
            list.retain(|x| x.image.id != p.pair.image.id || x.text.id != p.pair.text.id);
            self.audit.selected = self.audit.selected.min(list.len().saturating_sub(1));
        }
        let what = match (p.action, &p.pair.alt_text) {
            (AuditAction::Repair, Some(t)) => format!(
                "{} to {:?}",
                p.pair.image.key,
                truncate(t.sample.text.as_deref().unwrap_or(&t.sample.key), 30)
            ),
            _ => format!(
                "{} <-> {:?}",
                p.pair.image.key,
                truncate(p.pair.text.text.as_deref().unwrap_or(&p.pair.text.key), 30)
            ),
        };
        self.info(format!("{} {what}", p.action.past()));
        self.audit.undo.push(AuditUndo {
            action: p.action,
            pair: p.pair,
            decisions: p.done,
        });
    }

    /// `u` on the audit screen: undo the last action's decisions, newest first.
    pub(super) fn audit_undo(&mut self, calls: &mut Vec<Call>) {
        if self.audit.busy() {
            self.info("still saving the previous audit decision...");
            return;
        }
        let Some(entry) = self.audit.undo.pop() else {
            self.info("no audit decision to undo in this session");
            return;
        };
        let mut left: Vec<DecisionId> = entry.decisions.clone();
        match left.pop() {
            Some(d) => {
                calls.push(Call::AuditUndo { decision: d });
                self.audit.undoing = Some((entry, left));
            }
            None => {} // an action with no saved decision is never recorded
        }
    }

    pub(super) fn on_audit_undone(&mut self, r: UndoResult, calls: &mut Vec<Call>) {
        self.set_counts(r.counts);
        let Some((entry, mut left)) = self.audit.undoing.take() else {
            return;
        };
        if let Some(d) = left.pop() {
            calls.push(Call::AuditUndo { decision: d });
            self.audit.undoing = Some((entry, left));
            return;
        }
        self.info(format!(
            "undone: {} {}",
            entry.action.past(),
            entry.pair.image.key
        ));
        // Back at the top of the list, selected.
        if let Loadable::Ready(list) = &mut self.audit.list {
            list.insert(0, entry.pair);
            self.audit.selected = 0;
        }
    }

    pub(super) fn on_audit_undo_failed(&mut self, e: &CallError) {
        if let Some((mut entry, left)) = self.audit.undoing.take() {
            // What was not undone stays undoable.
            entry.decisions.truncate(left.len() + 1);
            self.audit.undo.push(entry);
        }
        self.error(format!("audit undo failed: {e}"));
    }
}

/// The call for the pending action's next decision, if any.
fn next_step(p: &mut AuditPending) -> Option<Call> {
    let (kind, image, text) = p.steps.pop_front()?;
    Some(Call::AuditDecide { kind, image, text })
}
