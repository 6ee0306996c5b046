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
use std::collections::{BTreeMap, HashSet, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind};
use sotalign_protocol::ServerNotification;
use sotalign_protocol::codes;
use sotalign_protocol::types::*;

use crate::keys::{self, Action, Scope};
use crate::rpc::{Call, CallError, NetEvent, Reply};

/// Fewer items than this left in a review queue triggers fetching the next page.
const QUEUE_LOW_WATER: usize = 5;
/// How often to ask whether a model is served yet, while none is.
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

/// One review direction's queue: unpaired samples of one modality, front = under review.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub modality: Modality,
    pub items: VecDeque<Sample>,
    /// Decided or skipped this session: never re-queued by a page fetch (undo takes it out).
    pub done: HashSet<SampleId>,
    /// Unpaired samples of this modality according to the daemon's last page.
    pub total: Option<u64>,
    pub loading: bool,
    pub next_offset: u64,
    pub exhausted: bool,
    /// Candidates for `items.front()`.
    pub candidates: Loadable<Vec<Candidate>>,
    /// The model run that scored `candidates`.
    pub candidates_run: Option<RunId>,
    pub selected: usize,
    pub skipped: u64,
}

impl Queue {
    fn new(modality: Modality) -> Self {
        Self {
            modality,
            items: VecDeque::new(),
            done: HashSet::new(),
            total: None,
            loading: false,
            next_offset: 0,
            exhausted: false,
            candidates: Loadable::Idle,
            candidates_run: None,
            selected: 0,
            skipped: 0,
        }
    }

    pub fn current(&self) -> Option<&Sample> {
        self.items.front()
    }

    pub fn selected_candidate(&self) -> Option<&Candidate> {
        self.candidates.ready()?.get(self.selected)
    }

    /// Ask for the next page unless one is in flight or there is none.
    fn fetch_more(&mut self) -> Option<Call> {
        if self.loading || self.exhausted {
            return None;
        }
        self.loading = true;
        Some(Call::Queue {
            modality: self.modality,
            offset: self.next_offset,
        })
    }

    /// Start paging from the beginning again (after a reconnect or a new model): samples
    /// paired meanwhile drop out, ones the session already handled stay filtered by `done`.
    fn restart(&mut self) -> Option<Call> {
        self.next_offset = 0;
        self.exhausted = false;
        self.loading = false;
        self.fetch_more()
    }

    /// Candidates for the new front, if there is one.
    fn load_candidates(&mut self) -> Option<Call> {
        self.selected = 0;
        match self.items.front() {
            Some(s) => {
                self.candidates = Loadable::Loading;
                Some(Call::Suggest { sample: s.id })
            }
            None => {
                self.candidates = Loadable::Idle;
                None
            }
        }
    }

    /// Drop the front (decided or skipped) and move on.
    fn advance(&mut self, calls: &mut Vec<Call>) {
        if let Some(s) = self.items.pop_front() {
            self.done.insert(s.id);
        }
        calls.extend(self.load_candidates());
        if self.items.len() < QUEUE_LOW_WATER {
            calls.extend(self.fetch_more());
        }
    }

    /// A sample got paired elsewhere (as the other side of a confirmed pair): not unpaired now.
    fn remove(&mut self, id: SampleId, calls: &mut Vec<Call>) {
        let was_front = self.items.front().map(|s| s.id) == Some(id);
        self.items.retain(|s| s.id != id);
        self.done.insert(id);
        if was_front {
            calls.extend(self.load_candidates());
        }
    }
}

/// A confirm or reject waiting for the daemon's acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDecision {
    pub kind: DecisionKind,
    pub direction: Modality,
    pub sample: Sample,
    pub candidate: Sample,
}

/// A decision this session made, kept so `u` can revert it.
#[derive(Debug, Clone, PartialEq)]
pub struct UndoEntry {
    pub decision: Decision,
    pub direction: Modality,
    pub sample: Sample,
    pub candidate: Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    pub confirmed: u64,
    pub rejected: u64,
    pub undone: u64,
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
    /// When `progress` arrived (for the ETA countdown between notifications).
    pub progress_at_ms: u64,
    /// The job as `status` last listed it (after a reconnect, before any progress arrives).
    pub info: Option<JobInfo>,
    pub finished: Option<JobFinishedParams>,
    /// Set when the job vanished from `status` while we were disconnected.
    pub lost_track: bool,
}

impl JobView {
    fn new(id: JobId, kind: JobKind) -> Self {
        Self {
            id,
            kind,
            run: None,
            title: None,
            last_seq: 0,
            progress: None,
            progress_at_ms: 0,
            info: None,
            finished: None,
            lost_track: false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.finished.is_none() && !self.lost_track
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
                None if p.total > 0 => (p.step as f64 / p.total as f64).min(1.0),
                None => 0.0,
            },
            (None, Some(i)) if i.total > 0 => (i.step as f64 / i.total as f64).min(1.0),
            _ => 0.0,
        }
    }

    /// Seconds left, counted down from the daemon's last estimate.
    pub fn eta_secs(&self, now_ms: u64) -> Option<f64> {
        let p = self.progress.as_ref()?;
        let eta = p.eta_secs?;
        let since = now_ms.saturating_sub(self.progress_at_ms) as f64 / 1000.0;
        Some((eta - since).max(0.0))
    }
}

/// One entry of the browse list: an image, with its similarity to the query when it came
/// from a free-text search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub sample: Sample,
    pub score: Option<f64>,
}

/// What the browse list holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Listing {
    /// Free-text search hits for this query, best first.
    Text(String),
    /// Stored images by id; with a filter, only those whose key, path or caption contains it.
    Names(Option<String>),
}

/// The browse / search screen.
#[derive(Debug, Clone, PartialEq)]
pub struct Browse {
    pub query: String,
    /// The query field has focus (printable keys go into it).
    pub editing: bool,
    /// What `results` are (or will be, while loading); answers for anything else are stale.
    pub listing: Listing,
    pub results: Loadable<Vec<Hit>>,
    /// Images matching the listing in the store (a name listing shows the first page).
    pub total: Option<u64>,
    /// Why the last free-text query fell back to a name listing (the daemon's error, e.g.
    /// no text encoder): shown above the list so the user knows these are not semantic hits.
    pub search_error: Option<CallError>,
    pub selected: usize,
    /// Captions for the selected image.
    pub captions: Loadable<SuggestForSampleResult>,
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
    pub counts: Option<Counts>,
    pub status: Option<StatusResult>,
    pub runs: Vec<RunInfo>,
    pub jobs: BTreeMap<JobId, JobView>,
    pub browse: Browse,
    pub message: Option<StatusMsg>,
    /// Errors seen this session (the status line shows the latest).
    pub error_count: u64,
    /// What `r` asks the daemon to fit (default: the daemon's default method and preset).
    pub align: AlignParams,
    /// The next `status` answer follows a reconnect: reconcile jobs against it.
    reconcile_jobs: bool,
    /// When [`App::poll_for_a_model`] last asked.
    last_model_poll_ms: u64,
    ever_connected: bool,
    pub should_quit: bool,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
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
            counts: None,
            status: None,
            runs: Vec::new(),
            jobs: BTreeMap::new(),
            browse: Browse {
                query: String::new(),
                editing: false,
                listing: Listing::Names(None),
                results: Loadable::Idle,
                total: None,
                search_error: None,
                selected: 0,
                captions: Loadable::Idle,
            },
            message: None,
            error_count: 0,
            align: AlignParams::default(),
            reconcile_jobs: false,
            last_model_poll_ms: 0,
            ever_connected: false,
            should_quit: false,
        }
    }

    pub fn queue(&self, m: Modality) -> &Queue {
        match m {
            Modality::Image => &self.image_queue,
            Modality::Text => &self.text_queue,
        }
    }

    fn queue_mut(&mut self, m: Modality) -> &mut Queue {
        match m {
            Modality::Image => &mut self.image_queue,
            Modality::Text => &mut self.text_queue,
        }
    }

    /// The queue being reviewed now.
    pub fn review(&self) -> &Queue {
        self.queue(self.direction)
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.conn, Conn::Connected { .. })
    }

    /// Which part of the key table applies now.
    pub fn scope(&self) -> Scope {
        match self.screen {
            Screen::Review => Scope::Review,
            Screen::Browse if self.browse.editing => Scope::Input,
            Screen::Browse => Scope::Browse,
            Screen::Dashboard => Scope::Dashboard,
        }
    }

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

    /// While the daemon serves no model, ask for its status every [`MODEL_POLL_MS`]: a daemon
    /// restores its last model in the background after it starts, and there is no
    /// notification for that, so suggestions appear without the user doing anything.
    fn poll_for_a_model(&mut self, calls: &mut Vec<Call>) {
        let no_model = self.status.as_ref().is_some_and(|s| s.model.is_none());
        if self.is_connected()
            && no_model
            && self.running_align().is_none()
            && self.now_ms >= self.last_model_poll_ms + MODEL_POLL_MS
        {
            self.last_model_poll_ms = self.now_ms;
            calls.push(Call::Status);
        }
    }

    /// Apply one event; returns the calls to send, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Call> {
        let mut calls = Vec::new();
        match event {
            Event::Tick { now_ms } => {
                self.now_ms = now_ms;
                self.poll_for_a_model(&mut calls);
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
                KeyCode::Char(c) => self.browse.query.push(c),
                KeyCode::Backspace => {
                    self.browse.query.pop();
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
            Action::ShowDashboard => self.screen = Screen::Dashboard,
            Action::Search => {
                self.screen = Screen::Browse;
                self.browse.editing = true;
                calls.extend(self.browse_first_listing());
            }
            Action::Back => {
                if self.screen == Screen::Browse && self.browse.editing {
                    self.browse.editing = false;
                } else {
                    self.screen = Screen::Review;
                }
            }
            Action::Align => self.start_align(calls),
            Action::CancelJob => match self.running_align().map(|j| j.id) {
                Some(job) => calls.push(Call::CancelJob { job }),
                None => self.info("no alignment is running"),
            },
            Action::ToggleDirection => {
                self.direction = self.direction.other();
                let q = self.queue_mut(self.direction);
                if q.items.is_empty() {
                    calls.extend(q.restart());
                } else if matches!(q.candidates, Loadable::Idle) {
                    calls.extend(q.load_candidates());
                }
            }
            Action::Up | Action::Down => self.move_selection(action == Action::Up, calls),
            Action::Confirm => self.decide(DecisionKind::Confirm, calls),
            Action::Reject => self.decide(DecisionKind::Reject, calls),
            Action::Skip => {
                let q = self.queue_mut(self.direction);
                if q.current().is_some() {
                    q.skipped += 1;
                    q.advance(calls);
                }
            }
            Action::Undo => self.undo(calls),
            Action::Open => self.open(calls),
        }
    }

    fn move_selection(&mut self, up: bool, calls: &mut Vec<Call>) {
        fn step(sel: &mut usize, len: usize, up: bool) -> bool {
            let old = *sel;
            if up {
                *sel = sel.saturating_sub(1);
            } else if *sel + 1 < len {
                *sel += 1;
            }
            *sel != old
        }
        match self.screen {
            Screen::Review => {
                let q = self.queue_mut(self.direction);
                let len = q.candidates.ready().map_or(0, Vec::len);
                step(&mut q.selected, len, up);
            }
            Screen::Browse => {
                let len = self.browse.results.ready().map_or(0, Vec::len);
                if step(&mut self.browse.selected, len, up) {
                    calls.extend(self.load_captions());
                }
            }
            Screen::Dashboard => {}
        }
    }

    fn start_align(&mut self, calls: &mut Vec<Call>) {
        if let Some(j) = self.running_align() {
            let id = j.id;
            self.info(format!(
                "alignment job {id} is still running (d: dashboard)"
            ));
            return;
        }
        self.info("starting a new alignment run...");
        calls.push(Call::Align(self.align.clone()));
    }

    fn decide(&mut self, kind: DecisionKind, calls: &mut Vec<Call>) {
        if self.screen != Screen::Review {
            return;
        }
        if self.pending.is_some() || self.pending_undo.is_some() {
            self.info("still saving the previous decision...");
            return;
        }
        let direction = self.direction;
        let q = self.queue(direction);
        let (Some(sample), Some(candidate)) = (q.current(), q.selected_candidate()) else {
            return;
        };
        let (image, text) = match direction {
            Modality::Image => (sample.id, candidate.sample.id),
            Modality::Text => (candidate.sample.id, sample.id),
        };
        self.pending = Some(PendingDecision {
            kind,
            direction,
            sample: sample.clone(),
            candidate: candidate.sample.clone(),
        });
        calls.push(match kind {
            DecisionKind::Confirm => Call::Confirm { image, text },
            DecisionKind::Reject => Call::Reject { image, text },
        });
    }

    fn undo(&mut self, calls: &mut Vec<Call>) {
        if self.pending.is_some() || self.pending_undo.is_some() {
            self.info("still saving the previous decision...");
            return;
        }
        match self.undo.pop() {
            Some(entry) => {
                calls.push(Call::Undo {
                    decision: entry.decision.id,
                });
                self.pending_undo = Some(entry);
            }
            None => self.info("nothing to undo in this session"),
        }
    }

    fn open(&mut self, calls: &mut Vec<Call>) {
        if self.screen != Screen::Browse {
            return;
        }
        if self.browse.editing {
            self.browse.editing = false;
            let q = self.browse.query.trim().to_owned();
            self.browse.search_error = None;
            if q.is_empty() {
                // No query: every image, by id.
                calls.push(self.browse_list(Listing::Names(None)));
            } else {
                calls.push(self.browse_list(Listing::Text(q)));
            }
            return;
        }
        let Some(hit) = self
            .browse
            .results
            .ready()
            .and_then(|r| r.get(self.browse.selected))
            .cloned()
        else {
            return;
        };
        let m = hit.sample.modality;
        self.direction = m;
        self.screen = Screen::Review;
        let q = self.queue_mut(m);
        q.items.retain(|s| s.id != hit.sample.id);
        q.done.remove(&hit.sample.id);
        q.items.push_front(hit.sample);
        calls.extend(q.load_candidates());
    }

    /// The first visit to the browse screen lists the stored images, so there is something to
    /// browse (and image -> captions works) before any query, and without a text encoder.
    fn browse_first_listing(&mut self) -> Option<Call> {
        if self.browse.results != Loadable::Idle || !self.is_connected() {
            return None;
        }
        Some(self.browse_list(Listing::Names(None)))
    }

    /// Ask for `listing`; its answer replaces the list, answers for older listings are dropped.
    fn browse_list(&mut self, listing: Listing) -> Call {
        self.browse.results = Loadable::Loading;
        self.browse.total = None;
        self.browse.selected = 0;
        self.browse.captions = Loadable::Idle;
        let call = match &listing {
            Listing::Text(text) => Call::Search { text: text.clone() },
            Listing::Names(filter) => Call::ListImages {
                filter: filter.clone(),
            },
        };
        self.browse.listing = listing;
        call
    }

    /// The answer for the listing on screen: show it and the selected image's captions.
    fn browse_results(&mut self, hits: Vec<Hit>, total: u64) -> Option<Call> {
        self.browse.results = Loadable::Ready(hits);
        self.browse.total = Some(total);
        self.browse.selected = 0;
        self.load_captions()
    }

    fn load_captions(&mut self) -> Option<Call> {
        let hit = self.browse.results.ready()?.get(self.browse.selected)?;
        if hit.sample.modality != Modality::Image {
            return None;
        }
        let image = hit.sample.id;
        self.browse.captions = Loadable::Loading;
        Some(Call::Captions { image })
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
                self.reconcile_jobs = true;
                if std::mem::replace(&mut self.ever_connected, true) {
                    self.info("reconnected to the daemon");
                }
                calls.push(Call::Status);
                calls.push(Call::Runs);
                let q = self.queue_mut(self.direction);
                calls.extend(q.restart());
                if q.current().is_some() {
                    calls.extend(q.load_candidates());
                }
                if self.screen == Screen::Browse && self.browse.results.ready().is_none() {
                    // Lost with the connection, or never asked: ask again.
                    let listing = self.browse.listing.clone();
                    calls.push(self.browse_list(listing));
                }
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
            NetEvent::Notification(n) => self.on_notification(n, calls),
            NetEvent::Reply { call, outcome } => match outcome {
                Ok(reply) => self.on_reply(call, reply, calls),
                Err(e) => self.on_call_error(call, e, calls),
            },
        }
    }

    fn on_notification(&mut self, n: ServerNotification, calls: &mut Vec<Call>) {
        match n {
            ServerNotification::Progress(p) => {
                let v = p.value;
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
                // Transport order is not guaranteed: keep only the newest, and nothing after
                // the job finished.
                if job.finished.is_some() || v.seq <= job.last_seq {
                    return;
                }
                job.last_seq = v.seq;
                if v.title.is_some() {
                    job.title = v.title.clone();
                }
                job.progress = Some(v);
                job.progress_at_ms = now;
            }
            ServerNotification::JobFinished(f) => self.on_job_finished(f, calls),
            ServerNotification::DecisionsChanged(_) | ServerNotification::Other(_) => {}
        }
    }

    fn on_job_finished(&mut self, f: JobFinishedParams, calls: &mut Vec<Call>) {
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
        let what = match f.kind {
            JobKind::Align => match f.run {
                Some(r) => format!("alignment run {r}"),
                None => format!("alignment job {}", f.job),
            },
            JobKind::Ingest => format!("ingest job {}", f.job),
        };
        match f.state {
            JobState::Succeeded => {
                let metrics = f
                    .metrics
                    .map(|m| {
                        format!(
                            ": R@1 image->text {:.3}, text->image {:.3}",
                            m.image_to_text.r1, m.text_to_image.r1
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
            // A new model: new scores for the sample under review.
            let q = self.queue_mut(self.direction);
            calls.extend(q.restart());
            if q.current().is_some() {
                calls.extend(q.load_candidates());
            }
        }
    }

    fn set_counts(&mut self, counts: Counts) {
        self.counts = Some(counts);
        if let Some(s) = &mut self.status {
            s.counts = counts;
        }
    }

    fn on_reply(&mut self, call: Call, reply: Reply, calls: &mut Vec<Call>) {
        match reply {
            Reply::Status(s) => {
                self.counts = Some(s.counts);
                let served = s.model.as_ref().map(|m| m.run);
                let q = self.queue_mut(self.direction);
                let stale = match q.candidates {
                    Loadable::Loading => false,
                    Loadable::Ready(_) => q.candidates_run != served,
                    Loadable::Idle | Loadable::Failed(_) => true,
                };
                if served.is_some() && stale && q.current().is_some() {
                    // A model the candidates were not scored by: one restored in the background
                    // after a daemon start (which answered "no model yet" before), or fitted
                    // by another client.
                    calls.extend(q.load_candidates());
                }
                let reconcile = std::mem::take(&mut self.reconcile_jobs);
                for info in &s.jobs {
                    let view = self
                        .jobs
                        .entry(info.id)
                        .or_insert_with(|| JobView::new(info.id, info.kind));
                    if view.run.is_none() {
                        view.run = info.run;
                    }
                    view.info = Some(info.clone());
                }
                if reconcile {
                    // Jobs we thought running that the daemon no longer lists ended while we
                    // were away: their jobFinished is lost.
                    let listed: HashSet<JobId> = s.jobs.iter().map(|j| j.id).collect();
                    for view in self.jobs.values_mut() {
                        if view.finished.is_none() && !listed.contains(&view.id) {
                            view.lost_track = true;
                        }
                    }
                }
                self.status = Some(s);
            }
            Reply::Runs(r) => self.runs = r.runs,
            Reply::Queue(page) => {
                let Call::Queue { modality, offset } = call else {
                    return;
                };
                let q = self.queue_mut(modality);
                q.loading = false;
                if offset != q.next_offset {
                    return; // a page from before a restart
                }
                q.total = Some(page.total);
                let n = page.items.len() as u64;
                q.next_offset += n;
                q.exhausted = n == 0 || q.next_offset >= page.total;
                let was_empty = q.items.is_empty();
                for s in page.items {
                    if !q.done.contains(&s.id) && !q.items.iter().any(|x| x.id == s.id) {
                        q.items.push_back(s);
                    }
                }
                if was_empty && !q.items.is_empty() {
                    calls.extend(q.load_candidates());
                }
                if q.items.len() < QUEUE_LOW_WATER {
                    calls.extend(q.fetch_more());
                }
            }
            Reply::Suggest(r) => {
                let q = self.queue_mut(r.sample.modality);
                if q.current().map(|s| s.id) == Some(r.sample.id) {
                    q.candidates = Loadable::Ready(r.candidates);
                    q.candidates_run = Some(r.run);
                    q.selected = 0;
                }
            }
            Reply::Captions(r) => {
                let selected = self
                    .browse
                    .results
                    .ready()
                    .and_then(|h| h.get(self.browse.selected))
                    .map(|c| c.sample.id);
                if selected == Some(r.sample.id) {
                    self.browse.captions = Loadable::Ready(r);
                }
            }
            Reply::Search(r) => {
                if let Call::Search { text } = call
                    && self.browse.listing == Listing::Text(text)
                {
                    let n = r.hits.len() as u64;
                    let hits = r
                        .hits
                        .into_iter()
                        .map(|c| Hit {
                            sample: c.sample,
                            score: Some(c.score),
                        })
                        .collect();
                    calls.extend(self.browse_results(hits, n));
                }
            }
            Reply::ListImages(page) => {
                if let Call::ListImages { filter } = call
                    && self.browse.listing == Listing::Names(filter)
                {
                    let hits = page
                        .items
                        .into_iter()
                        .map(|sample| Hit {
                            sample,
                            score: None,
                        })
                        .collect();
                    calls.extend(self.browse_results(hits, page.total));
                }
            }
            Reply::Confirm(r) | Reply::Reject(r) => self.on_decided(r, calls),
            Reply::Undo(r) => self.on_undone(r, calls),
            Reply::Align(r) => {
                let view = self
                    .jobs
                    .entry(r.job)
                    .or_insert_with(|| JobView::new(r.job, JobKind::Align));
                view.run = Some(r.run);
                self.info(format!(
                    "alignment job {} started (run {}); d shows its progress",
                    r.job, r.run
                ));
            }
            Reply::CancelJob(r) => {
                self.info(format!("job {} is {:?}", r.job.id, r.job.state).to_lowercase())
            }
        }
    }

    fn on_decided(&mut self, r: DecisionResult, calls: &mut Vec<Call>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        self.set_counts(r.counts);
        let describe = |s: &Sample| match s.modality {
            Modality::Image => s.key.clone(),
            Modality::Text => format!("{:?}", truncate(s.text.as_deref().unwrap_or(&s.key), 30)),
        };
        let pair = format!("{} <-> {}", describe(&p.sample), describe(&p.candidate));
        let changed = if r.changed { "" } else { " (already so)" };
        match r.decision.kind {
            DecisionKind::Confirm => {
                if r.changed {
                    self.session.confirmed += 1;
                }
                self.info(format!("confirmed {pair}{changed}"));
                let q = self.queue_mut(p.direction);
                if q.current().map(|s| s.id) == Some(p.sample.id) {
                    q.advance(calls);
                } else {
                    q.remove(p.sample.id, calls);
                }
                // The partner is paired now too.
                self.queue_mut(p.direction.other())
                    .remove(p.candidate.id, calls);
            }
            DecisionKind::Reject => {
                if r.changed {
                    self.session.rejected += 1;
                }
                self.info(format!("rejected {pair}{changed}"));
                let q = self.queue_mut(p.direction);
                if q.current().map(|s| s.id) == Some(p.sample.id)
                    && let Loadable::Ready(c) = &mut q.candidates
                {
                    c.retain(|c| c.sample.id != p.candidate.id);
                    if c.is_empty() {
                        calls.extend(q.load_candidates());
                    } else {
                        q.selected = q.selected.min(c.len() - 1);
                    }
                }
            }
        }
        self.undo.push(UndoEntry {
            decision: r.decision,
            direction: p.direction,
            sample: p.sample,
            candidate: p.candidate,
        });
    }

    fn on_undone(&mut self, r: UndoResult, calls: &mut Vec<Call>) {
        let Some(entry) = self.pending_undo.take() else {
            return;
        };
        self.set_counts(r.counts);
        self.session.undone += 1;
        match entry.decision.kind {
            DecisionKind::Confirm => {
                self.session.confirmed = self.session.confirmed.saturating_sub(1);
                let q = self.queue_mut(entry.direction);
                q.done.remove(&entry.sample.id);
                q.items.retain(|s| s.id != entry.sample.id);
                q.items.push_front(entry.sample.clone());
                calls.extend(q.load_candidates());
                self.queue_mut(entry.direction.other())
                    .done
                    .remove(&entry.candidate.id);
            }
            DecisionKind::Reject => {
                self.session.rejected = self.session.rejected.saturating_sub(1);
                let q = self.queue_mut(entry.direction);
                if q.current().map(|s| s.id) == Some(entry.sample.id) {
                    calls.extend(q.load_candidates());
                }
            }
        }
        self.info(format!(
            "undone: {} of decision {}",
            match entry.decision.kind {
                DecisionKind::Confirm => "confirm",
                DecisionKind::Reject => "reject",
            },
            entry.decision.id
        ));
    }

    fn on_call_error(&mut self, call: Call, e: CallError, calls: &mut Vec<Call>) {
        let lost = e.code.is_none() && !self.is_connected();
        match &call {
            Call::Confirm { .. } | Call::Reject { .. } => {
                self.pending = None;
            }
            Call::Undo { .. } => {
                // Not undone: keep it undoable.
                if let Some(entry) = self.pending_undo.take() {
                    self.undo.push(entry);
                }
            }
            Call::Queue { modality, .. } => self.queue_mut(*modality).loading = false,
            Call::Suggest { sample } => {
                let q = self.queue_mut(
                    if self.image_queue.current().map(|s| s.id) == Some(*sample) {
                        Modality::Image
                    } else {
                        Modality::Text
                    },
                );
                if q.current().map(|s| s.id) == Some(*sample) {
                    q.candidates = Loadable::Failed(e.clone());
                }
                if e.code == Some(codes::NOT_READY) {
                    // Shown in the candidates pane with what to do; not an alarm.
                    return;
                }
            }
            Call::Search { text } if self.browse.listing == Listing::Text(text.clone()) => {
                if e.code == Some(codes::NOT_READY) {
                    // No text encoder (or no model): say why in the pane and fall back to the
                    // images whose names contain the words, so browsing still works.
                    let q = text.clone();
                    self.info(format!(
                        "free-text search unavailable; listing images named like \"{}\"",
                        truncate(&q, 30)
                    ));
                    calls.push(self.browse_list(Listing::Names(Some(q))));
                    self.browse.search_error = Some(e);
                    return;
                }
                self.browse.results = Loadable::Failed(e.clone());
            }
            Call::ListImages { filter }
                if self.browse.listing == Listing::Names(filter.clone()) =>
            {
                self.browse.results = Loadable::Failed(e.clone());
            }
            Call::Captions { .. } => self.browse.captions = Loadable::Failed(e.clone()),
            _ => {}
        }
        if lost {
            // The banner already says the connection is gone; one line per lost call would
            // bury it.
            return;
        }
        let what = match call {
            Call::Status => "status",
            Call::Runs => "runs",
            Call::Queue { .. } => "queue",
            Call::Suggest { .. } | Call::Captions { .. } => "suggestions",
            Call::Confirm { .. } => "confirm (not saved)",
            Call::Reject { .. } => "reject (not saved)",
            Call::Undo { .. } => "undo (not undone)",
            Call::Search { .. } => "search",
            Call::ListImages { .. } => "list images",
            Call::Align(_) => "re-align",
            Call::CancelJob { .. } => "cancel",
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
#[path = "state_tests.rs"]
mod tests;
