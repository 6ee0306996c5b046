//! Reducer tests, one file per screen as the state is: no terminal, no daemon. Shared here:
//! the data builders (`tui/tests/common`, also used by the snapshot tests), a connected app with
//! a queue, and the connection and help tests.
use crossterm::event::KeyCode;
use sotalign_protocol::types::*;

use super::*;
use crate::rpc::{Call, NetEvent, Reply};

#[path = "../../../tests/common/mod.rs"]
mod common;
pub(super) use common::*;

mod audit;
mod browse;
mod dashboard;
mod review;

/// The ten-image data set of these tests, nothing paired before the session.
pub(super) fn counts(confirmed: u64, rejected: u64) -> Counts {
    counts_of(10, 0, 0, confirmed, rejected)
}

/// Three unpaired images as `sotalign/nextToLabel` ranks them at cold start.
pub(super) fn ranked_page(ids: &[(u64, &str)]) -> NextToLabelResult {
    NextToLabelResult {
        mode: QueueMode::ColdStart,
        precision: 0.5,
        observations: 0,
        threshold: 0.3,
        run: None,
        items: ids
            .iter()
            .map(|&(id, key)| QueueItem {
                image: image(id, key),
                reason: QueueReason::UncoveredCluster,
                why: format!("typical of cluster {id} of 3, which no pair covers"),
                proposal: None,
            })
            .collect(),
    }
}

/// Connected, with three unpaired images queued (in the daemon's labelling order) and
/// candidates for the first.
pub(super) fn ready_app() -> App {
    let mut app = App::new();
    let calls = app.handle(Event::Net(NetEvent::Connected {
        server: "sotalign 0.1.0".into(),
    }));
    assert_eq!(calls, vec![Call::Status, Call::Runs, Call::NextToLabel]);
    let calls = app.handle(reply(
        Call::NextToLabel,
        Reply::NextToLabel(ranked_page(&[(1, "penguin"), (2, "seal"), (3, "apple")])),
    ));
    assert_eq!(
        calls,
        vec![Call::Suggest {
            sample: SampleId(1)
        }]
    );
    assert_eq!(app.review().candidates, Loadable::Loading);
    app.handle(suggest_reply(
        image(1, "penguin"),
        vec![
            cand(text(101, "A penguin swims."), 0.62, 1),
            cand(text(102, "A seal on ice."), 0.41, 2),
        ],
    ));
    app
}

pub(super) fn progress(job: u64, seq: u64, step: u64, eta: Option<f64>) -> Event {
    progress_event(JobProgress {
        loss: Some(1.0),
        eta_secs: eta,
        elapsed_secs: 1.0,
        ..job_progress(job, seq, step, 300)
    })
}

#[test]
fn losing_the_daemon_shows_the_banner_once_and_reconnecting_refreshes() {
    let mut app = ready_app();
    app.handle(Event::Tick { now_ms: 1_000 });
    let c = app.handle(key('y')).remove(0);
    app.handle(Event::Net(NetEvent::Disconnected {
        reason: "the daemon closed the connection".into(),
        retry_in_ms: 2_000,
        attempt: 1,
    }));
    assert_eq!(
        app.conn,
        Conn::Lost {
            reason: "the daemon closed the connection".into(),
            retry_at_ms: 3_000,
            attempt: 1
        }
    );
    // The in-flight confirm fails; the banner says why, the status line is not flooded.
    app.handle(fail(c, None, "connection lost before the answer came"));
    assert!(app.pending.is_none());
    assert_eq!(app.error_count, 0);
    // Retrying keeps the banner.
    app.handle(Event::Net(NetEvent::Connecting { attempt: 2 }));
    assert!(matches!(app.conn, Conn::Lost { attempt: 2, .. }));
    let calls = app.handle(Event::Net(NetEvent::Connected { server: "s".into() }));
    assert!(app.is_connected());
    assert!(calls.contains(&Call::Status));
    assert!(calls.contains(&Call::Suggest {
        sample: SampleId(1)
    }));
    assert!(app.message.unwrap().text.contains("reconnected"));
}

#[test]
fn help_is_modal() {
    let mut app = ready_app();
    app.handle(key('?'));
    assert!(app.help);
    assert!(app.handle(key('y')).is_empty());
    assert!(app.pending.is_none());
    app.handle(code(KeyCode::Esc));
    assert!(!app.help);
    app.handle(key('q'));
    assert!(app.should_quit);
}
