//! The application state and its reducer: every input (a key, a network event, a clock tick)
//! goes through [`App::handle`], which changes the state and returns the calls to make.
//!
//! Invariant: no IO, no clock, no terminal here. Time arrives as [`Event::Tick`], answers as
//! [`NetEvent`]s, so every behaviour (queue, undo, job progress ordering) is unit-testable and
//! the snapshot tests can build any state by feeding events.
//!
//! The daemon is the authority: a decision changes the queue only when its acknowledgement
//! arrives (it is durable by then), and at most one decision is in flight at a time, so a
//! double key press can never confirm the wrong pair.
//!
//! One module per screen, as `ui/` is: [`review`] (queues, candidates, decisions, undo),
//! [`browse`] (listing, search, captions of an image), [`dashboard`] (jobs, stages, ETA). This
//! module holds what they share (connection, status line, the served model) and the reducer,
//! which dispatches each event to the screen it concerns.
mod audit;
mod browse;
mod dashboard;
mod review;

use std::collections::{BTreeMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
use sotalign_protocol::ServerNotification;
use sotalign_protocol::types::*;

use crate::keys::{self, Action, Scope};
use crate::rpc::{Call, CallError, NetEvent, Reply};

pub use audit::{AuditAction, AuditPending, AuditUndo, AuditView};
pub use browse::{Browse, Hit, Listing};
pub use dashboard::{JobView, MIN_RATE_WINDOW_SECS, StageView, job_label, percent, stage_name};
pub use review::{PendingDecision, Queue, SessionStats, UndoEntry, caption_of, group_captions};

/// How often to ask the daemon for its status while no model is served (a daemon restores its
/// last model in the background after it starts) or while a re-align runs (it may publish a
/// first model before it ends).
pub const MODEL_POLL_MS: u64 = 2_000;

/// Everything that can happen to the app.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Key(KeyEvent),
    Net(NetEvent),
    /// The clock: wall time in Unix milliseconds (drives countdowns and ETAs).
    Tick {
        now_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Review,
    Browse,
    Dashboard,
    Audit,
}

/// The connection as the user sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Conn {
    Connecting {
        attempt: u32,
    },
    Connected {
        server: String,
    },
    Lost {
        reason: String,
        retry_at_ms: u64,
        attempt: u32,
    },
}

/// Data that is fetched: not yet asked, in flight, there, or failed with the daemon's error.
#[derive(Debug, Clone, PartialEq)]
pub enum Loadable<T> {
    Idle,
    Loading,
    Ready(T),
    Failed(CallError),
}

impl<T> Loadable<T> {
    pub fn ready(&self) -> Option<&T> {
        match self {
            Loadable::Ready(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Error,
}

/// The status line: the latest message; errors from the daemon are always shown here.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMsg {
    pub level: Level,
    pub text: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub screen: Screen,
    pub help: bool,
    pub conn: Conn,
    pub now_ms: u64,
    /// Review images (candidates: captions) or texts (candidates: images).
    pub direction: Modality,
    pub image_queue: Queue,
    pub text_queue: Queue,
    pub pending: Option<PendingDecision>,
    pub pending_undo: Option<UndoEntry>,
    pub undo: Vec<UndoEntry>,
    pub session: SessionStats,
    /// Effort of this session's confirmations (decision, candidates read), last
    /// `review::EFFORT_WINDOW`; undone ones are taken out.
    pub effort: VecDeque<(DecisionId, u32)>,
    pub counts: Option<Counts>,
    pub status: Option<StatusResult>,
    /// The model run the daemon serves, as far as we know: from its latest `status` (reset on
    /// reconnect), raised by any answer scored by a newer run.
    pub served_run: Option<RunId>,
    /// The daemon's decision revision as far as we know (`status`, `decisionsChanged`): the
    /// candidates fetched at it are sent back as `shownRevision` with a decision.
    pub revision: Option<u64>,
    /// The last export this session wrote (path on the daemon's machine, pairs).
    pub last_export: Option<(String, u64)>,
    /// The review screen's find field while it has focus (`f`).
    pub finding: Option<String>,
    pub runs: Vec<RunInfo>,
    pub jobs: BTreeMap<JobId, JobView>,
    pub browse: Browse,
    /// The audit screen (suspected pairs).
    pub audit: AuditView,
    pub message: Option<StatusMsg>,
    /// Errors seen this session (the status line shows the latest).
    pub error_count: u64,
    /// What `r` asks the daemon to fit (default: the daemon's default method and preset).
    pub align: AlignParams,
    /// The next `status` answer follows a reconnect: reconcile jobs against it.
    reconcile_after_reconnect: bool,
    /// When [`App::poll_status`] last asked.
    last_status_poll_ms: u64,
    ever_connected: bool,
    pub should_quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

/// Move a list selection one up or down within `len` items; true if it moved.
fn step_selection(sel: &mut usize, len: usize, up: bool) -> bool {
    let old = *sel;
    if up {
        *sel = sel.saturating_sub(1);
    } else if *sel + 1 < len {
        *sel += 1;
    }
    *sel != old
}

impl App {
    pub fn new() -> Self {
        Self {
            screen: Screen::Review,
            help: false,
            conn: Conn::Connecting { attempt: 1 },
            now_ms: 0,
            direction: Modality::Image,
            image_queue: Queue::new(Modality::Image),
            text_queue: Queue::new(Modality::Text),
            pending: None,
            pending_undo: None,
            undo: Vec::new(),
            session: SessionStats::default(),
            effort: VecDeque::new(),
            counts: None,
            status: None,
            served_run: None,
            revision: None,
            last_export: None,
            finding: None,
            runs: Vec::new(),
            jobs: BTreeMap::new(),
            browse: Browse::new(),
            audit: AuditView::new(),
            message: None,
            error_count: 0,
            align: AlignParams::default(),
            reconcile_after_reconnect: false,
            last_status_poll_ms: 0,
            ever_connected: false,
            should_quit: false,
        }
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.conn, Conn::Connected { .. })
    }

    /// Which part of the key table applies now.
    pub fn scope(&self) -> Scope {
        match self.screen {
            Screen::Review if self.finding.is_some() => Scope::Input,
            Screen::Review => Scope::Review,
            Screen::Browse if self.browse.editing => Scope::Input,
            Screen::Browse => Scope::Browse,
            Screen::Dashboard => Scope::Dashboard,
            Screen::Audit => Scope::Audit,
        }
    }

    fn info(&mut self, text: impl Into<String>) {
        self.message = Some(StatusMsg {
            level: Level::Info,
            text: text.into(),
            at_ms: self.now_ms,
        });
    }

    fn error(&mut self, text: impl Into<String>) {
        self.error_count += 1;
        self.message = Some(StatusMsg {
            level: Level::Error,
            text: text.into(),
            at_ms: self.now_ms,
        });
    }

    /// While the daemon serves no model, or a re-align runs, ask for its status every
    /// [`MODEL_POLL_MS`]: a model restored in the background after a start, or published by
    /// a re-align's first stage, comes with no notification, and the candidates on screen
    /// must follow the model the daemon serves.
    fn poll_status(&mut self, calls: &mut Vec<Call>) {
        let no_model = self.status.as_ref().is_some_and(|s| s.model.is_none());
        if self.is_connected()
            && (no_model || self.running_align().is_some())
            && self.now_ms >= self.last_status_poll_ms + MODEL_POLL_MS
        {
            self.last_status_poll_ms = self.now_ms;
            calls.push(Call::Status);
        }
    }

    /// A newer decision revision heard of (never moves back).
    fn see_revision(&mut self, r: u64) {
        if self.revision.is_none_or(|old| r > old) {
            self.revision = Some(r);
        }
    }

    /// `e` on the dashboard: the confirmed pairs as a JSONL manifest (re-ingestable, with who
    /// decided and when) under the daemon's data dir, named by the time. Other formats:
    /// `sotalign export`.
    fn export(&mut self, calls: &mut Vec<Call>) {
        if self.screen != Screen::Dashboard {
            return;
        }
        let Some(dir) = self.status.as_ref().map(|s| s.data_dir.clone()) else {
            self.info("not connected yet: no data dir to export to");
            return;
        };
        let dest = format!(
            "{}/exports/pairs-{}.jsonl",
            dir.trim_end_matches('/'),
            self.now_ms
        );
        self.info(format!("exporting confirmed pairs to {dest} ..."));
        calls.push(Call::Export { dest });
    }

    fn set_counts(&mut self, counts: Counts) {
        self.counts = Some(counts);
        if let Some(s) = &mut self.status {
            s.counts = counts;
        }
    }

    /// Apply one event; returns the calls to send, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Call> {
        let mut calls = Vec::new();
        match event {
            Event::Tick { now_ms } => {
                self.now_ms = now_ms;
                self.poll_status(&mut calls);
            }
            Event::Key(key) => self.on_key(key, &mut calls),
            Event::Net(net) => self.on_net(net, &mut calls),
        }
        calls
    }

    // -----------------------------------------------------------------------------------------
    // Keys

    fn on_key(&mut self, key: KeyEvent, calls: &mut Vec<Call>) {
        if key.kind == KeyEventKind::Release {
            return;
        }
        let scope = self.scope();
        let action = keys::lookup(scope, &key);
        if self.help {
            // The help screen is modal: it only closes (or quits).
            match action {
                Some(Action::Help | Action::Back) => self.help = false,
                Some(Action::Quit) => self.should_quit = true,
                _ => {}
            }
            return;
        }
        if scope == Scope::Input && action.is_none() {
            match key.code {
                KeyCode::Char(c) => match &mut self.finding {
                    Some(f) => f.push(c),
                    None => self.browse.query.push(c),
                },
                KeyCode::Backspace => {
                    match &mut self.finding {
                        Some(f) => f.pop(),
                        None => self.browse.query.pop(),
                    };
                }
                _ => {}
            }
            return;
        }
        let Some(action) = action else { return };
        self.on_action(action, calls);
    }

    fn on_action(&mut self, action: Action, calls: &mut Vec<Call>) {
        match action {
            Action::Quit => self.should_quit = true,
            Action::Help => self.help = true,
            Action::ShowReview => self.screen = Screen::Review,
            Action::ShowBrowse => {
                self.screen = Screen::Browse;
                calls.extend(self.browse_first_listing());
            }
            Action::ShowDashboard => {
                self.screen = Screen::Dashboard;
                if self.is_connected() {
                    calls.push(Call::Status); // fresh counts, per annotator too
                }
            }
            Action::Search => {
                self.screen = Screen::Browse;
                self.browse.editing = true;
                calls.extend(self.browse_first_listing());
            }
            Action::Back => {
                if self.finding.is_some() {
                    self.finding = None;
                } else if self.screen == Screen::Browse && self.browse.editing {
                    self.browse.editing = false;
                } else {
                    self.screen = Screen::Review;
                }
            }
            Action::Align => self.start_align(calls),
            Action::CancelJob => self.cancel_align(calls),
            Action::ToggleDirection => self.toggle_direction(calls),
            Action::Up | Action::Down => match self.screen {
                Screen::Review => self.move_candidate_selection(action == Action::Up),
                Screen::Browse => self.move_browse_selection(action == Action::Up, calls),
                Screen::Audit => self.move_audit_selection(action == Action::Up),
                Screen::Dashboard => {}
            },
            Action::ShowAudit => self.show_audit(calls),
            Action::RefreshAudit => self.refresh_audit(calls),
            Action::Keep => self.audit_act(AuditAction::Keep, calls),
            Action::Unpair => self.audit_act(AuditAction::Unpair, calls),
            Action::Repair => self.audit_act(AuditAction::Repair, calls),
            Action::Undo if self.screen == Screen::Audit => self.audit_undo(calls),
            Action::Confirm => self.decide(DecisionKind::Confirm, calls),
            Action::Reject => self.decide(DecisionKind::Reject, calls),
            Action::Skip => self.skip(calls),
            Action::Undo => self.undo(calls),
            Action::Open if self.finding.is_some() => self.run_find(calls),
            Action::Open => self.open(calls),
            Action::Find => self.start_find(),
            Action::Export => self.export(calls),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Network

    fn on_net(&mut self, net: NetEvent, calls: &mut Vec<Call>) {
        match net {
            NetEvent::Connecting { attempt } => match &mut self.conn {
                // Keep the red banner (and its reason) up while retrying.
                Conn::Lost {
                    attempt: a,
                    retry_at_ms,
                    ..
                } => {
                    *a = attempt;
                    *retry_at_ms = self.now_ms;
                }
                other => *other = Conn::Connecting { attempt },
            },
            NetEvent::Connected { server } => {
                self.conn = Conn::Connected { server };
                self.reconcile_after_reconnect = true;
                // A restarted daemon may serve another run: its status says which.
                self.served_run = None;
                if std::mem::replace(&mut self.ever_connected, true) {
                    self.info("reconnected to the daemon");
                }
                calls.push(Call::Status);
                calls.push(Call::Runs);
                self.reload_review(calls);
                self.browse_reconnected(calls);
            }
            NetEvent::Disconnected {
                reason,
                retry_in_ms,
                attempt,
            } => {
                self.conn = Conn::Lost {
                    reason,
                    retry_at_ms: self.now_ms + retry_in_ms,
                    attempt,
                };
                // Answers to in-flight calls will never come; the net task fails them too.
                for q in [&mut self.image_queue, &mut self.text_queue] {
                    q.loading = false;
                }
            }
            NetEvent::ProtocolError(e) => self.error(format!("daemon sent bad data: {e}")),
            NetEvent::Notification(n) => match n {
                ServerNotification::Progress(p) => self.on_progress(p.value),
                ServerNotification::JobFinished(f) => self.on_job_finished(f, calls),
                ServerNotification::DecisionsChanged(c) => self.on_decisions_changed(c, calls),
                ServerNotification::Other(_) => {}
            },
            NetEvent::Reply { call, outcome } => match outcome {
                Ok(reply) => self.on_reply(call, reply, calls),
                Err(e) => self.on_call_error(call, e, calls),
            },
        }
    }

    fn on_reply(&mut self, call: Call, reply: Reply, calls: &mut Vec<Call>) {
        match reply {
            Reply::Status(s) => {
                self.counts = Some(s.counts);
                self.see_revision(s.revision);
                // The daemon's word on what it serves now (a model restored in the background,
                // a re-align's stage, another client's fit): candidates follow it.
                self.served_run = s.model.as_ref().map(|m| m.run);
                self.refresh_stale_candidates(calls);
                let reconcile = std::mem::take(&mut self.reconcile_after_reconnect);
                self.reconcile_jobs(&s.jobs, reconcile);
                self.status = Some(s);
            }
            Reply::Runs(r) => self.runs = r.runs,
            Reply::Queue(page) => {
                if let Call::Queue { modality, offset } = call {
                    self.on_queue_page(modality, offset, page, calls);
                }
            }
            Reply::NextToLabel(r) => self.on_next_to_label(r, calls),
            Reply::Audit(r) => self.on_audit(r),
            Reply::AuditDecide(r) => self.on_audit_decided(r, calls),
            Reply::AuditUndo(r) => self.on_audit_undone(r, calls),
            Reply::Suggest(r) => self.on_suggestions(r, calls),
            Reply::Captions(r) => self.on_captions(r),
            Reply::Search(r) => {
                if let Call::Search { text } = call {
                    self.on_search(text, r, calls);
                }
            }
            Reply::ListImages(page) => {
                if let Call::ListImages { filter } = call {
                    self.on_image_list(filter, page, calls);
                }
            }
            Reply::Confirm(r) | Reply::Reject(r) => self.on_decided(r, calls),
            Reply::Undo(r) => self.on_undone(r, calls),
            Reply::Align(r) => self.on_align_started(r),
            Reply::CancelJob(r) => self.on_cancelled(r),
            Reply::Find(r) => {
                if let Call::Find {
                    for_sample, text, ..
                } = &call
                {
                    self.on_found(*for_sample, text, r.hits, Some(r.run));
                }
            }
            Reply::FindWords(page) => {
                if let Call::FindWords {
                    for_sample, text, ..
                } = &call
                {
                    self.on_found_words(*for_sample, text, page);
                }
            }
            Reply::Export(r) => {
                self.info(format!(
                    "exported {} confirmed pairs to {} (on the daemon's machine)",
                    r.pairs, r.dest
                ));
                self.last_export = Some((r.dest, r.pairs));
            }
        }
    }

    fn on_call_error(&mut self, call: Call, e: CallError, calls: &mut Vec<Call>) {
        let lost = e.code.is_none() && !self.is_connected();
        let quiet = match &call {
            Call::Confirm { .. } | Call::Reject { .. } => {
                if e.code == Some(sotalign_protocol::codes::STALE_DECISION) {
                    // Someone else changed this pair since it was shown: move on.
                    self.on_stale_decision(calls);
                    return;
                }
                self.pending = None;
                false
            }
            Call::Undo { .. } => {
                // Not undone: keep it undoable.
                if let Some(entry) = self.pending_undo.take() {
                    self.undo.push(entry);
                }
                false
            }
            Call::Queue { modality, .. } => {
                self.queue_mut(*modality).loading = false;
                false
            }
            Call::Audit => {
                self.on_audit_failed(e.clone());
                // Too few pairs or no data yet: explained in the pane, not an alarm.
                matches!(e.code, Some(c) if c == sotalign_protocol::codes::INVALID_INPUT
                    || c == sotalign_protocol::codes::NOT_READY)
            }
            Call::AuditDecide { .. } => {
                self.on_audit_decide_failed(&e);
                return;
            }
            Call::AuditUndo { .. } => {
                self.on_audit_undo_failed(&e);
                return;
            }
            Call::NextToLabel => {
                let q = self.queue_mut(Modality::Image);
                q.loading = false;
                if lost {
                    return; // asked again after the reconnect
                }
                // A daemon that cannot rank (an older one, no image vectors): the queue goes
                // on in store order, which always works.
                calls.extend(q.fall_back_to_store_order());
                self.info(format!("labelling queue in store order ({e})"));
                return;
            }
            // No model yet is shown in the candidates pane with what to do; not an alarm.
            Call::Find {
                for_sample,
                target,
                text,
            } if e.code == Some(sotalign_protocol::codes::NOT_READY) => {
                // No model yet (cold start): the same search by words alone.
                calls.push(Call::FindWords {
                    for_sample: *for_sample,
                    target: *target,
                    text: text.clone(),
                });
                return;
            }
            Call::Suggest { sample }
            | Call::Find {
                for_sample: sample, ..
            }
            | Call::FindWords {
                for_sample: sample, ..
            } => self.on_suggestions_failed(*sample, &e),
            Call::Search { text } => self.on_search_failed(text, &e, calls),
            Call::ListImages { filter } => {
                self.on_image_list_failed(filter, &e);
                false
            }
            Call::Captions { .. } => {
                self.browse.captions = Loadable::Failed(e.clone());
                false
            }
            _ => false,
        };
        if quiet || lost {
            // Lost: the banner already says the connection is gone; one line per lost call
            // would bury it.
            return;
        }
        let what = match call {
            Call::Status => "status",
            Call::Runs => "runs",
            Call::Queue { .. } | Call::NextToLabel => "queue",
            Call::Audit => "audit",
            Call::AuditDecide { .. } | Call::AuditUndo { .. } => "audit decision",
            Call::Suggest { .. } | Call::Captions { .. } => "suggestions",
            Call::Confirm { .. } => "confirm (not saved)",
            Call::Reject { .. } => "reject (not saved)",
            Call::Undo { .. } => "undo (not undone)",
            Call::Search { .. } => "search",
            Call::ListImages { .. } => "list images",
            Call::Align(_) => "re-align",
            Call::CancelJob { .. } => "cancel",
            Call::Export { .. } => "export",
            Call::Find { .. } | Call::FindWords { .. } => "find",
        };
        self.error(format!("{what}: {e}"));
    }
}

/// At most `n` characters, with an ellipsis when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests;
