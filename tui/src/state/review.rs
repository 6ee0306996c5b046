//! The review screen's state: one queue per direction (images -> captions, captions -> images),
//! the candidates for the sample under review, decisions (confirm / reject / skip) and undo.
//!
//! The image queue's order is the daemon's (`sotalign/nextToLabel`: typical images of uncovered
//! clusters at cold start, then the model's proposals or "find this image's caption"), each
//! item with the reason it is queued; once the daemon has no new image to offer, the queue goes
//! on in store order (`sotalign/listSamples`), as the caption queue always does.
//!
//! The daemon is the authority: a decision changes the queue only when its acknowledgement
//! arrives (it is durable by then), and at most one decision is in flight at a time, so a
//! double key press can never confirm the wrong pair.
//!
//! Candidates on screen are always those of the model the daemon serves: each answer carries
//! the run that scored it, an answer from an older model than the one `status` named is
//! refetched, and a model swap seen in `status` refetches the candidates of whichever queue is
//! shown.
use std::collections::{HashMap, HashSet, VecDeque};

use sotalign_protocol::types::*;

use super::{App, Loadable, truncate};
use crate::rpc::{Call, CallError, SEARCH_COST};

/// Confirmations the effort figure is the median of.
pub const EFFORT_WINDOW: usize = 50;

/// Fewer items than this left in a review queue triggers fetching the next page.
const QUEUE_LOW_WATER: usize = 5;

/// One review direction's queue: unpaired samples of one modality, front = under review.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub modality: Modality,
    pub items: VecDeque<Sample>,
    /// Pages come from `sotalign/nextToLabel` (the image queue until it offers nothing new),
    /// else from the store's order.
    pub ranked: bool,
    /// Why each item from `nextToLabel` is queued (shown with the item).
    pub why: HashMap<SampleId, String>,
    /// How the daemon built the last ranked page: mode, precision estimate, decisions behind it.
    pub plan: Option<(QueueMode, f64, u32)>,
    /// Decided or skipped this session: never re-queued by a page fetch (undo takes it out).
    pub done: HashSet<SampleId>,
    /// Unpaired samples of this modality according to the daemon's last page.
    pub total: Option<u64>,
    pub loading: bool,
    pub next_offset: u64,
    pub exhausted: bool,
    /// Candidates for `items.front()`, each distinct caption once (see [`group_captions`]).
    pub candidates: Loadable<Vec<Candidate>>,
    /// The model run that scored `candidates`.
    pub candidates_run: Option<RunId>,
    /// The decision revision known when `candidates` arrived: sent as `shownRevision`.
    pub candidates_revision: Option<u64>,
    /// `candidates` are the hits of this in-place search (`f`), not the model's suggestions.
    pub found: Option<String>,
    /// Suggestions that were on screen when the search started (read before searching).
    pub read_before_find: u32,
    pub selected: usize,
    pub skipped: u64,
    /// Captions rejected this session, per sample under review: a rejected caption is never
    /// listed again for that sample, whichever of its identical texts the daemon returns.
    pub rejected_captions: HashMap<SampleId, HashSet<String>>,
    /// The (sample, served run) whose stale answer was already refetched once: a second stale
    /// answer is shown as it is (its run named in the title), never refetched in a loop.
    refetched: Option<(SampleId, RunId)>,
}

impl Queue {
    pub(super) fn new(modality: Modality) -> Self {
        Self {
            modality,
            items: VecDeque::new(),
            ranked: modality == Modality::Image,
            why: HashMap::new(),
            plan: None,
            done: HashSet::new(),
            total: None,
            loading: false,
            next_offset: 0,
            exhausted: false,
            candidates: Loadable::Idle,
            candidates_run: None,
            candidates_revision: None,
            found: None,
            read_before_find: 0,
            selected: 0,
            skipped: 0,
            rejected_captions: HashMap::new(),
            refetched: None,
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
        Some(if self.ranked {
            Call::NextToLabel
        } else {
            Call::Queue {
                modality: self.modality,
                offset: self.next_offset,
            }
        })
    }

    /// Leave the daemon's ranked order for the store's (it has nothing new, or cannot rank).
    pub(super) fn fall_back_to_store_order(&mut self) -> Option<Call> {
        self.next_offset = 0;
        self.exhausted = false;
        self.loading = false;
        self.ranked = false;
        self.fetch_more()
    }

    /// Start paging from the beginning again (after a reconnect or a new model): samples
    /// paired meanwhile drop out, ones the session already handled stay filtered by `done`.
    pub(super) fn restart(&mut self) -> Option<Call> {
        self.ranked = self.modality == Modality::Image;
        self.next_offset = 0;
        self.exhausted = false;
        self.loading = false;
        self.fetch_more()
    }

    /// Candidates for the new front, if there is one.
    pub(super) fn load_candidates(&mut self) -> Option<Call> {
        self.selected = 0;
        self.found = None;
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

    /// Refetch the candidates on screen when they were not scored by `served` (the run the
    /// daemon last said it serves). An answer in flight is checked when it arrives.
    fn refresh_if_stale(&mut self, served: Option<RunId>) -> Option<Call> {
        let stale = match self.candidates {
            Loadable::Loading => false,
            Loadable::Ready(_) => self.candidates_run != served,
            Loadable::Idle | Loadable::Failed(_) => true,
        };
        if served.is_some() && stale && self.current().is_some() {
            return self.load_candidates();
        }
        None
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

/// The caption a candidate shows, when it is a text: the grouping key for identical captions.
pub fn caption_of(c: &Candidate) -> Option<&str> {
    match c.sample.modality {
        Modality::Text => c.sample.text.as_deref(),
        Modality::Image => None,
    }
}

/// Each distinct caption once: candidates whose caption text is exactly equal merge into the
/// best-scored one, whose `duplicates` then counts the others (plus what the daemon already
/// counted). A daemon that fills `duplicates` itself returns no twins and this changes nothing
/// but the ranks; an older daemon's twins are folded here, so the screen never lists the same
/// caption twice. Ranks are renumbered 1.. in score order.
pub fn group_captions(cands: Vec<Candidate>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::with_capacity(cands.len());
    let mut by_caption: HashMap<String, usize> = HashMap::new();
    for c in cands {
        let key = caption_of(&c).map(str::to_owned);
        match key.as_ref().and_then(|k| by_caption.get(k)) {
            Some(&i) => {
                let kept = &mut out[i];
                let merged = kept
                    .duplicates
                    .saturating_add(c.duplicates)
                    .saturating_add(1);
                if c.score > kept.score {
                    *kept = c;
                }
                kept.duplicates = merged;
            }
            None => {
                if let Some(k) = key {
                    by_caption.insert(k, out.len());
                }
                out.push(c);
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    for (i, c) in out.iter_mut().enumerate() {
        c.rank = i as u32 + 1;
    }
    out
}

/// A confirm or reject waiting for the daemon's acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingDecision {
    pub kind: DecisionKind,
    /// A confirm's effort: the candidates the annotator read before this one (its rank among
    /// the distinct captions shown; after an in-place search, the suggestions that were shown,
    /// the search's cost and the hit's rank).
    pub effort: Option<u32>,
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

impl App {
    /// Median effort (candidates read per pair confirmed) over this session's last
    /// [`EFFORT_WINDOW`] confirmations, and how many that is.
    pub fn effort_median(&self) -> Option<(f64, usize)> {
        let mut v: Vec<u32> = self.effort.iter().map(|(_, e)| *e).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let m = v.len() / 2;
        let med = if v.len() % 2 == 1 {
            f64::from(v[m])
        } else {
            (f64::from(v[m - 1]) + f64::from(v[m])) / 2.0
        };
        Some((med, v.len()))
    }

    pub fn queue(&self, m: Modality) -> &Queue {
        match m {
            Modality::Image => &self.image_queue,
            Modality::Text => &self.text_queue,
        }
    }

    pub(super) fn queue_mut(&mut self, m: Modality) -> &mut Queue {
        match m {
            Modality::Image => &mut self.image_queue,
            Modality::Text => &mut self.text_queue,
        }
    }

    /// The queue being reviewed now.
    pub fn review(&self) -> &Queue {
        self.queue(self.direction)
    }

    /// Restart paging of the shown queue and refetch its candidates (a reconnect).
    pub(super) fn reload_review(&mut self, calls: &mut Vec<Call>) {
        let q = self.queue_mut(self.direction);
        calls.extend(q.restart());
        if q.current().is_some() {
            calls.extend(q.load_candidates());
        }
    }

    /// The daemon serves `served` now (from `status`): refetch candidates scored by another run.
    pub(super) fn refresh_stale_candidates(&mut self, calls: &mut Vec<Call>) {
        let served = self.served_run;
        calls.extend(self.queue_mut(self.direction).refresh_if_stale(served));
    }

    pub(super) fn toggle_direction(&mut self, calls: &mut Vec<Call>) {
        self.direction = self.direction.other();
        let served = self.served_run;
        let q = self.queue_mut(self.direction);
        if q.items.is_empty() {
            calls.extend(q.restart());
        } else if matches!(q.candidates, Loadable::Idle) {
            calls.extend(q.load_candidates());
        } else {
            // Scored by a model replaced while this queue was hidden.
            calls.extend(q.refresh_if_stale(served));
        }
    }

    pub(super) fn skip(&mut self, calls: &mut Vec<Call>) {
        let q = self.queue_mut(self.direction);
        if q.current().is_some() {
            q.skipped += 1;
            q.advance(calls);
        }
    }

    pub(super) fn move_candidate_selection(&mut self, up: bool) {
        let q = self.queue_mut(self.direction);
        let len = q.candidates.ready().map_or(0, Vec::len);
        super::step_selection(&mut q.selected, len, up);
    }

    pub(super) fn decide(&mut self, kind: DecisionKind, calls: &mut Vec<Call>) {
        if self.screen != super::Screen::Review {
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
        let shown = q.candidates_revision;
        let effort = (kind == DecisionKind::Confirm).then(|| match q.found {
            Some(_) => q.read_before_find + SEARCH_COST + candidate.rank,
            None => candidate.rank,
        });
        self.pending = Some(PendingDecision {
            kind,
            effort,
            direction,
            sample: sample.clone(),
            candidate: candidate.sample.clone(),
        });
        calls.push(match kind {
            DecisionKind::Confirm => Call::Confirm { image, text, shown },
            DecisionKind::Reject => Call::Reject { image, text, shown },
        });
    }

    pub(super) fn undo(&mut self, calls: &mut Vec<Call>) {
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

    /// Review `sample` now (Enter on a browse hit).
    pub(super) fn review_first(&mut self, sample: Sample, calls: &mut Vec<Call>) {
        let m = sample.modality;
        self.direction = m;
        self.screen = super::Screen::Review;
        let q = self.queue_mut(m);
        q.items.retain(|s| s.id != sample.id);
        q.done.remove(&sample.id);
        q.items.push_front(sample);
        calls.extend(q.load_candidates());
    }

    pub(super) fn on_queue_page(
        &mut self,
        modality: Modality,
        offset: u64,
        page: ListSamplesResult,
        calls: &mut Vec<Call>,
    ) {
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

    /// A page of `sotalign/nextToLabel`: new images join the image queue with their reason.
    /// A page with nothing new (all decided, skipped or queued already) ends the ranked order:
    /// the queue goes on in store order.
    pub(super) fn on_next_to_label(&mut self, r: NextToLabelResult, calls: &mut Vec<Call>) {
        let q = self.queue_mut(Modality::Image);
        q.loading = false;
        if !q.ranked {
            return; // answered after a fall-back
        }
        q.plan = Some((r.mode, r.precision, r.observations));
        let was_empty = q.items.is_empty();
        let mut added = 0;
        for it in r.items {
            let id = it.image.id;
            if it.image.modality != Modality::Image
                || q.done.contains(&id)
                || q.items.iter().any(|x| x.id == id)
            {
                continue;
            }
            q.why.insert(id, it.why);
            q.items.push_back(it.image);
            added += 1;
        }
        if was_empty && !q.items.is_empty() {
            calls.extend(q.load_candidates());
        }
        if added == 0 {
            calls.extend(q.fall_back_to_store_order());
        }
    }

    pub(super) fn on_suggestions(&mut self, r: SuggestForSampleResult, calls: &mut Vec<Call>) {
        if let Some(served) = self.served_run.filter(|&served| r.run < served) {
            // Scored by a model older than the one the daemon said it serves (an answer
            // overtaken by a re-align): ask again, once, and the new model answers.
            let q = self.queue_mut(r.sample.modality);
            let again = Some((r.sample.id, served));
            if q.current().map(|s| s.id) == Some(r.sample.id) && q.refetched != again {
                q.refetched = again;
                calls.extend(q.load_candidates());
                return;
            }
        }
        if self.served_run.is_none_or(|served| r.run > served) {
            self.served_run = Some(r.run);
        }
        let revision = self.revision;
        let q = self.queue_mut(r.sample.modality);
        if q.current().map(|s| s.id) != Some(r.sample.id) {
            return;
        }
        q.candidates_revision = revision;
        let rejected = q.rejected_captions.get(&r.sample.id);
        let cands: Vec<Candidate> = r
            .candidates
            .into_iter()
            .filter(|c| !caption_of(c).is_some_and(|t| rejected.is_some_and(|s| s.contains(t))))
            .collect();
        q.candidates = Loadable::Ready(group_captions(cands));
        q.candidates_run = Some(r.run);
        q.selected = 0;
    }

    /// A failed suggestion call: shown in the pane. Returns true when it is not an alarm
    /// (no model yet), so no error line is raised for it.
    pub(super) fn on_suggestions_failed(&mut self, sample: SampleId, e: &CallError) -> bool {
        let m = if self.image_queue.current().map(|s| s.id) == Some(sample) {
            Modality::Image
        } else {
            Modality::Text
        };
        let q = self.queue_mut(m);
        if q.current().map(|s| s.id) == Some(sample) {
            q.candidates = Loadable::Failed(e.clone());
        }
        e.code == Some(sotalign_protocol::codes::NOT_READY)
    }

    pub(super) fn on_decided(&mut self, r: DecisionResult, calls: &mut Vec<Call>) {
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
                    if let Some(e) = p.effort {
                        self.effort.push_back((r.decision.id, e));
                        while self.effort.len() > EFFORT_WINDOW {
                            self.effort.pop_front();
                        }
                    }
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
                // The reject is of the caption: its identical twins go with it, now and in
                // any later answer for this sample.
                let caption = match p.candidate.modality {
                    Modality::Text => p.candidate.text.clone(),
                    Modality::Image => None,
                };
                if let Some(t) = &caption {
                    q.rejected_captions
                        .entry(p.sample.id)
                        .or_default()
                        .insert(t.clone());
                }
                if q.current().map(|s| s.id) == Some(p.sample.id)
                    && let Loadable::Ready(c) = &mut q.candidates
                {
                    c.retain(|c| {
                        c.sample.id != p.candidate.id
                            && (caption.is_none() || caption_of(c) != caption.as_deref())
                    });
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

    /// `f`: start typing a search for the sample under review (its caption, or for a caption
    /// its image), for when the right one is not among the suggestions.
    pub(super) fn start_find(&mut self) {
        if self.screen != super::Screen::Review || self.review().current().is_none() {
            return;
        }
        self.finding = Some(String::new());
    }

    /// Enter in the find field: ask the daemon (words first, then meaning).
    pub(super) fn run_find(&mut self, calls: &mut Vec<Call>) {
        let Some(text) = self.finding.take().map(|t| t.trim().to_owned()) else {
            return;
        };
        let q = self.queue_mut(self.direction);
        let Some(sample) = q.current().map(|s| s.id) else {
            return;
        };
        if text.is_empty() {
            // An empty search goes back to the model's suggestions.
            calls.extend(q.load_candidates());
            return;
        }
        if q.found.is_none() {
            q.read_before_find = q.candidates.ready().map_or(0, |c| c.len() as u32);
        }
        q.candidates = Loadable::Loading;
        q.selected = 0;
        q.found = Some(text.clone());
        calls.push(Call::Find {
            for_sample: sample,
            target: q.modality.other(),
            text,
        });
    }

    /// The hits of an in-place search: shown as the candidates (each caption once), so `y`
    /// confirms the selected hit with the sample under review.
    /// `run`: the model that scored the hits (none for a words-only search).
    pub(super) fn on_found(
        &mut self,
        for_sample: SampleId,
        text: &str,
        hits: Vec<Candidate>,
        run: Option<RunId>,
    ) {
        let revision = self.revision;
        let q = self.queue_mut(self.direction);
        if q.current().map(|s| s.id) != Some(for_sample) || q.found.as_deref() != Some(text) {
            return; // moved on meanwhile
        }
        let target = q.modality.other();
        let hits: Vec<Candidate> = hits
            .into_iter()
            .filter(|c| c.sample.modality == target && c.sample.state == SampleState::Unpaired)
            .collect();
        q.candidates = Loadable::Ready(group_captions(hits));
        q.candidates_run = run;
        q.candidates_revision = revision;
        q.selected = 0;
    }

    /// The hits of a words-only search (no model yet): listed in the daemon's order, with no
    /// score (NaN, drawn as a dash).
    pub(super) fn on_found_words(
        &mut self,
        for_sample: SampleId,
        text: &str,
        page: ListSamplesResult,
    ) {
        let hits = page
            .items
            .into_iter()
            .enumerate()
            .map(|(i, sample)| Candidate {
                sample,
                score: f64::NAN,
                rank: i as u32 + 1,
                mutual_nn: false,
                duplicates: 0,
            })
            .collect();
        self.on_found(for_sample, text, hits, None);
    }

    /// Another client's decision or undo (or the echo of ours): counts and revision follow
    /// it; a sample it paired leaves the queues; the candidates on screen are refetched when
    /// it touched them. Our own decision in flight is left to its acknowledgement.
    pub(super) fn on_decisions_changed(
        &mut self,
        c: DecisionsChangedParams,
        calls: &mut Vec<Call>,
    ) {
        self.see_revision(c.revision);
        self.set_counts(c.counts);
        if self.screen == super::Screen::Dashboard {
            calls.push(Call::Status); // per-annotator counts
        }
        let d = &c.decision;
        if self.pending.as_ref().is_some_and(|p| {
            [p.sample.id, p.candidate.id].contains(&d.image)
                && [p.sample.id, p.candidate.id].contains(&d.text)
        }) || self.undo.iter().any(|u| u.decision.id == d.id)
            || self
                .pending_undo
                .as_ref()
                .is_some_and(|u| u.decision.id == d.id)
            || self.audit.is_ours(d)
        {
            return; // ours
        }
        let paired = d.kind == DecisionKind::Confirm && !c.undone;
        let who = d.annotator.clone().unwrap_or_else(|| d.source.clone());
        let pending = self.pending.as_ref().map(|p| p.sample.id);
        for (m, own, other) in [
            (Modality::Image, d.image, d.text),
            (Modality::Text, d.text, d.image),
        ] {
            let q = self.queue_mut(m);
            let front = q.current().map(|s| s.id);
            if paired && pending != Some(own) && q.items.iter().any(|s| s.id == own) {
                // Paired by someone else: not unpaired any more (its candidates reload when
                // it was on screen).
                q.remove(own, calls);
                if front == Some(own) {
                    self.info(format!(
                        "{who} paired the sample you were reviewing: moved on"
                    ));
                    continue;
                }
            }
            // A decision on the sample under review, or on a candidate shown for it, changes
            // what should be listed: ask again.
            let shown = q
                .candidates
                .ready()
                .is_some_and(|cs| cs.iter().any(|x| x.sample.id == other));
            if (front == Some(own) || shown)
                && pending.is_none()
                && !matches!(q.candidates, Loadable::Loading)
            {
                calls.extend(q.load_candidates());
            }
        }
    }

    /// `STALE_DECISION`: the pair changed (another annotator) since its candidates were shown.
    /// Nothing was written; the sample is set aside and the queue moves on.
    pub(super) fn on_stale_decision(&mut self, calls: &mut Vec<Call>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let q = self.queue_mut(p.direction);
        if q.current().map(|s| s.id) == Some(p.sample.id) {
            q.skipped += 1;
            q.advance(calls);
        }
        self.info(format!(
            "not saved: {} changed since it was shown (another annotator decided); moved on",
            p.sample.key
        ));
    }

    pub(super) fn on_undone(&mut self, r: UndoResult, calls: &mut Vec<Call>) {
        let Some(entry) = self.pending_undo.take() else {
            return;
        };
        self.set_counts(r.counts);
        self.session.undone += 1;
        match entry.decision.kind {
            DecisionKind::Confirm => {
                self.session.confirmed = self.session.confirmed.saturating_sub(1);
                self.effort.retain(|(id, _)| *id != entry.decision.id);
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
                if let (Some(t), Some(set)) = (
                    entry.candidate.text.as_ref(),
                    q.rejected_captions.get_mut(&entry.sample.id),
                ) {
                    set.remove(t);
                }
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
}
