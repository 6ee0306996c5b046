//! Browse: listing, free-text search and its fallback, opening a hit for review.
use crossterm::event::KeyCode;
use sotalign_protocol::codes;
use sotalign_protocol::types::*;

use super::*;
use crate::rpc::{Call, Reply};

#[test]
fn search_then_open_puts_the_image_first_in_the_review_queue() {
    let mut app = ready_app();
    // The first visit lists the stored images, so there is something to browse at once.
    let listing = app.handle(key('/'));
    assert_eq!(listing, vec![Call::ListImages { filter: None }]);
    assert_eq!(app.screen, Screen::Browse);
    assert_eq!(app.scope(), keys::Scope::Input);
    for c in "bird q".chars() {
        app.handle(key(c)); // 'q' is text here, not quit
    }
    app.handle(code(KeyCode::Backspace));
    app.handle(code(KeyCode::Backspace));
    assert!(!app.should_quit);
    let calls = app.handle(code(KeyCode::Enter));
    assert_eq!(
        calls,
        vec![Call::Search {
            text: "bird".into()
        }]
    );
    // The listing asked for before the query answers late: dropped, the search is awaited.
    let late = app.handle(reply(
        listing[0].clone(),
        Reply::ListImages(ListSamplesResult {
            items: vec![image(1, "penguin")],
            total: 1,
        }),
    ));
    assert!(late.is_empty());
    assert_eq!(app.browse.results, Loadable::Loading);
    let calls = app.handle(reply(
        calls[0].clone(),
        Reply::Search(SearchResult {
            hits: vec![
                cand(image(3, "apple"), 0.3, 1),
                cand(image(9, "owl"), 0.2, 2),
            ],
            run: RunId(1),
            index: IndexKind::Exact,
        }),
    ));
    assert_eq!(calls, vec![Call::Captions { image: SampleId(3) }]);
    let calls = app.handle(key('j'));
    assert_eq!(calls, vec![Call::Captions { image: SampleId(9) }]);
    let calls = app.handle(code(KeyCode::Enter));
    assert_eq!(app.screen, Screen::Review);
    assert_eq!(app.review().current().map(|s| s.id), Some(SampleId(9)));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(9)
        }]
    );
}

#[test]
fn free_text_search_without_a_text_encoder_falls_back_to_name_matches_and_says_why() {
    let mut app = ready_app();
    app.handle(key('2'));
    app.handle(key('/'));
    for c in "seal".chars() {
        app.handle(key(c));
    }
    let search = app.handle(code(KeyCode::Enter));
    let reason = "free-text search needs the text encoder, which this daemon has not loaded";
    let calls = app.handle(fail(search[0].clone(), Some(codes::NOT_READY), reason));
    assert_eq!(
        calls,
        vec![Call::ListImages {
            filter: Some("seal".into())
        }]
    );
    // The daemon's reason stays on screen with the fallback list; not counted as an alarm.
    assert_eq!(
        app.browse.search_error.as_ref().map(|e| e.message.as_str()),
        Some(reason)
    );
    assert_eq!(app.error_count, 0);
    let calls = app.handle(reply(
        calls[0].clone(),
        Reply::ListImages(ListSamplesResult {
            items: vec![image(2, "seal")],
            total: 1,
        }),
    ));
    // Image -> captions works on the fallback list too.
    assert_eq!(calls, vec![Call::Captions { image: SampleId(2) }]);
    let hits = app.browse.results.ready().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].score, None);

    // Another error (not "not ready") fails the search visibly, with no fallback.
    app.handle(key('/'));
    app.handle(key('x'));
    let search = app.handle(code(KeyCode::Enter));
    assert_eq!(app.browse.search_error, None);
    let calls = app.handle(fail(search[0].clone(), Some(codes::STORAGE_ERROR), "disk"));
    assert!(calls.is_empty());
    assert!(matches!(app.browse.results, Loadable::Failed(_)));
    assert_eq!(app.error_count, 1);
}
