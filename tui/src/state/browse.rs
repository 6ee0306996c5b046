//! The browse / search screen's state: the stored images by name, or free-text search hits,
//! and the captions the model suggests for the selected image.
use sotalign_protocol::codes;
use sotalign_protocol::types::*;

use super::{App, Loadable, truncate};
use crate::rpc::{Call, CallError};

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

impl Browse {
    pub(super) fn new() -> Self {
        Self {
            query: String::new(),
            editing: false,
            listing: Listing::Names(None),
            results: Loadable::Idle,
            total: None,
            search_error: None,
            selected: 0,
            captions: Loadable::Idle,
        }
    }
}

impl App {
    pub(super) fn move_browse_selection(&mut self, up: bool, calls: &mut Vec<Call>) {
        let len = self.browse.results.ready().map_or(0, Vec::len);
        if super::step_selection(&mut self.browse.selected, len, up) {
            calls.extend(self.load_captions());
        }
    }

    /// Enter: run the query being typed, or review the selected hit.
    pub(super) fn open(&mut self, calls: &mut Vec<Call>) {
        if self.screen != super::Screen::Browse {
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
        self.review_first(hit.sample, calls);
    }

    /// The first visit to the browse screen lists the stored images, so there is something to
    /// browse (and image -> captions works) before any query, and without a text encoder.
    pub(super) fn browse_first_listing(&mut self) -> Option<Call> {
        if self.browse.results != Loadable::Idle || !self.is_connected() {
            return None;
        }
        Some(self.browse_list(Listing::Names(None)))
    }

    /// After a reconnect: ask again for a listing lost with the connection (or never asked).
    pub(super) fn browse_reconnected(&mut self, calls: &mut Vec<Call>) {
        if self.screen == super::Screen::Browse && self.browse.results.ready().is_none() {
            let listing = self.browse.listing.clone();
            calls.push(self.browse_list(listing));
        }
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

    pub(super) fn on_captions(&mut self, mut r: SuggestForSampleResult) {
        let selected = self
            .browse
            .results
            .ready()
            .and_then(|h| h.get(self.browse.selected))
            .map(|c| c.sample.id);
        if selected == Some(r.sample.id) {
            r.candidates = super::review::group_captions(r.candidates);
            self.browse.captions = Loadable::Ready(r);
        }
    }

    pub(super) fn on_search(&mut self, text: String, r: SearchResult, calls: &mut Vec<Call>) {
        if self.browse.listing != Listing::Text(text) {
            return;
        }
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

    pub(super) fn on_image_list(
        &mut self,
        filter: Option<String>,
        page: ListSamplesResult,
        calls: &mut Vec<Call>,
    ) {
        if self.browse.listing != Listing::Names(filter) {
            return;
        }
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

    /// A failed search: without a text encoder, fall back to a name listing and say why.
    /// Returns true when handled quietly (no error line).
    pub(super) fn on_search_failed(
        &mut self,
        text: &str,
        e: &CallError,
        calls: &mut Vec<Call>,
    ) -> bool {
        if self.browse.listing != Listing::Text(text.to_owned()) {
            return false;
        }
        if e.code == Some(codes::NOT_READY) {
            // No text encoder (or no model): say why in the pane and fall back to the
            // images whose names contain the words, so browsing still works.
            let q = text.to_owned();
            self.info(format!(
                "free-text search unavailable; listing images named like \"{}\"",
                truncate(&q, 30)
            ));
            calls.push(self.browse_list(Listing::Names(Some(q))));
            self.browse.search_error = Some(e.clone());
            return true;
        }
        self.browse.results = Loadable::Failed(e.clone());
        false
    }

    pub(super) fn on_image_list_failed(&mut self, filter: &Option<String>, e: &CallError) {
        if self.browse.listing == Listing::Names(filter.clone()) {
            self.browse.results = Loadable::Failed(e.clone());
        }
    }
}
