//! Snapshot tests: every screen and state rendered with ratatui's TestBackend, states built by
//! feeding the reducer the same events the network task would produce. The snapshots are
//! committed under `tests/snapshots/`; review changes with `cargo insta review` (or
//! `INSTA_UPDATE=always` and `git diff`).
use std::path::PathBuf;

mod common;

use common::*;
use crossterm::event::KeyCode;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui_image::picker::Picker;
use sotalign_protocol::codes;
use sotalign_protocol::types::*;
use sotalign_tui::images::Images;
use sotalign_tui::rpc::{Call, CallError, NetEvent, Reply};
use sotalign_tui::state::{App, Event};
use sotalign_tui::ui;

const NOW: u64 = 1_764_170_000_000;

fn fixture(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/golden")
        .join(name);
    p.canonicalize().unwrap_or(p).to_string_lossy().into_owned()
}

/// Render twice: the first pass tells the cache which pictures it needs, the second draws
/// them (the real event loop decodes them on a blocking thread between frames).
fn render(app: &App, w: u16, h: u16) -> String {
    let mut images = Images::new(Picker::halfblocks());
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| ui::draw(f, app, &images)).unwrap();
    images.load_wanted_now();
    term.draw(|f| ui::draw(f, app, &images)).unwrap();
    format!("{}", term.backend())
}

/// The 785-pair Tux Paint set: 100 seed pairs, 285 held out, the rest unpaired.
fn counts(confirmed: u64, rejected: u64) -> Counts {
    counts_of(785, 100, 285, confirmed, rejected)
}

fn status(model: bool, c: Counts) -> StatusResult {
    status_of(model.then_some(RunId(3)), 100, c)
}

fn press(app: &mut App, c: KeyCode) -> Vec<Call> {
    app.handle(code(c))
}

fn connected(model: bool) -> App {
    let mut app = App::new();
    app.handle(Event::Tick { now_ms: NOW });
    app.handle(Event::Net(NetEvent::Connected {
        server: "sotalign 0.1.0".into(),
    }));
    ok(
        &mut app,
        Call::Status,
        Reply::Status(status(model, counts(0, 0))),
    );
    app
}

fn queue(app: &mut App, m: Modality, items: Vec<Sample>, total: u64) {
    ok(
        app,
        Call::Queue {
            modality: m,
            offset: 0,
        },
        Reply::Queue(ListSamplesResult { items, total }),
    );
}

fn with_suggestions() -> App {
    let mut app = connected(true);
    queue(
        &mut app,
        Modality::Image,
        vec![
            image_at(17, "chelsea", &fixture("chelsea.png")),
            image_at(18, "coffee", &fixture("coffee.png")),
        ],
        400,
    );
    ok(
        &mut app,
        Call::Suggest {
            sample: SampleId(17),
        },
        Reply::Suggest(SuggestForSampleResult {
            sample: image_at(17, "chelsea", &fixture("chelsea.png")),
            candidates: vec![
                cand(
                    text(
                        802,
                        "A tabby cat sits and looks at the camera with green eyes, ears up.",
                    ),
                    0.625,
                    1,
                ),
                cand(text(803, "A small dog."), 0.5, 2),
                cand(text(804, "A cup of coffee on a saucer."), 0.125, 3),
            ],
            run: RunId(3),
        }),
    );
    press(&mut app, KeyCode::Down);
    app
}

#[test]
fn review_empty_data() {
    let mut app = connected(false);
    queue(&mut app, Modality::Image, vec![], 0);
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn review_suggestions_shown() {
    let app = with_suggestions();
    insta::assert_snapshot!(render(&app, 80, 24));
}

/// The audit screen (`4`): suspected pairs, flagged ones marked, the selected pair's picture,
/// caption and the suggested re-pairing.
#[test]
fn audit_screen() {
    let mut app = connected(true);
    press(&mut app, KeyCode::Char('4'));
    let pair =
        |img: Sample, t: Sample, suspicion: f64, flagged: bool, alt: Option<Sample>| AuditedPair {
            image: img,
            text: t,
            suspicion,
            score: 0.1,
            flagged,
            alt_text: alt.map(|sample| AuditPartner {
                sample,
                score: 0.62,
            }),
            alt_image: None,
        };
    ok(
        &mut app,
        Call::Audit,
        Reply::Audit(AuditResult {
            method: AlignMethod::Cca,
            audited: 300,
            flagged: 1,
            pairs: vec![
                pair(
                    image_at(17, "chelsea", &fixture("chelsea.png")),
                    text(805, "A cup of coffee on a saucer."),
                    0.912,
                    true,
                    Some(text(802, "A tabby cat looks at the camera.")),
                ),
                pair(
                    image_at(18, "coffee", &fixture("coffee.png")),
                    text(806, "A mug."),
                    0.204,
                    false,
                    None,
                ),
            ],
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

/// The image queue in the daemon's labelling order (`sotalign/nextToLabel`): the reason the
/// image is queued above it, the queue's mode and precision estimate below.
#[test]
fn review_ranked_queue_says_why() {
    let mut app = connected(true);
    ok(
        &mut app,
        Call::NextToLabel,
        Reply::NextToLabel(NextToLabelResult {
            mode: QueueMode::Caption,
            precision: 0.12,
            observations: 9,
            threshold: 0.3,
            run: Some(RunId(3)),
            items: vec![QueueItem {
                image: image_at(17, "chelsea", &fixture("chelsea.png")),
                reason: QueueReason::FindCaption,
                why: "typical of cluster 4 of 40, which no pair covers".into(),
                proposal: None,
            }],
        }),
    );
    ok(
        &mut app,
        Call::Suggest {
            sample: SampleId(17),
        },
        Reply::Suggest(SuggestForSampleResult {
            sample: image_at(17, "chelsea", &fixture("chelsea.png")),
            candidates: vec![cand(text(802, "A tabby cat."), 0.625, 1)],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

/// Identical captions once, with their count: "A pineapple." from a daemon that groups
/// (`duplicates: 2`) and "A small dog." twice from one that does not.
#[test]
fn review_identical_captions_listed_once() {
    let mut app = connected(true);
    queue(
        &mut app,
        Modality::Image,
        vec![image_at(17, "chelsea", &fixture("chelsea.png"))],
        400,
    );
    let mut pineapple = cand(text(901, "A pineapple."), 0.71, 1);
    pineapple.duplicates = 2;
    ok(
        &mut app,
        Call::Suggest {
            sample: SampleId(17),
        },
        Reply::Suggest(SuggestForSampleResult {
            sample: image_at(17, "chelsea", &fixture("chelsea.png")),
            candidates: vec![
                pineapple,
                cand(text(803, "A small dog."), 0.5, 2),
                cand(text(805, "A small dog."), 0.45, 3),
                cand(text(804, "A cup of coffee on a saucer."), 0.125, 4),
            ],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 100, 24));
}

#[test]
fn review_suggestions_shown_large_terminal() {
    let app = with_suggestions();
    insta::assert_snapshot!(render(&app, 120, 36));
}

#[test]
fn review_no_model_yet() {
    let mut app = connected(false);
    queue(
        &mut app,
        Modality::Image,
        vec![image_at(17, "chelsea", &fixture("chelsea.png"))],
        1,
    );
    app.handle(Event::Net(NetEvent::Reply {
        call: Call::Suggest {
            sample: SampleId(17),
        },
        outcome: Err(CallError {
            code: Some(codes::NOT_READY),
            message: "no aligned model yet: run sotalign/align first".into(),
        }),
    }));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn review_captions_direction_with_unreadable_image() {
    let mut app = connected(true);
    press(&mut app, KeyCode::Tab);
    queue(
        &mut app,
        Modality::Text,
        vec![text(
            802,
            "A penguin is a bird that cannot fly but swims very well.",
        )],
        400,
    );
    ok(
        &mut app,
        Call::Suggest {
            sample: SampleId(802),
        },
        Reply::Suggest(SuggestForSampleResult {
            sample: text(
                802,
                "A penguin is a bird that cannot fly but swims very well.",
            ),
            candidates: vec![
                cand(
                    image_at(17, "penguin", "/nonexistent/stamps/penguin.png"),
                    0.625,
                    1,
                ),
                cand(image_at(18, "seal", "/nonexistent/stamps/seal.png"), 0.5, 2),
            ],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn daemon_error_in_status_line() {
    let mut app = with_suggestions();
    let calls = press(&mut app, KeyCode::Char('y'));
    app.handle(Event::Net(NetEvent::Reply {
        call: calls[0].clone(),
        outcome: Err(CallError {
            code: Some(codes::STORAGE_ERROR),
            message: "database is locked; nothing was recorded".into(),
        }),
    }));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn daemon_lost_banner() {
    let mut app = with_suggestions();
    app.handle(Event::Net(NetEvent::Disconnected {
        reason: "the daemon closed the connection".into(),
        retry_in_ms: 4_000,
        attempt: 3,
    }));
    insta::assert_snapshot!(render(&app, 80, 24));
}

/// A progress report at `elapsed` seconds of the job clock.
fn progress(seq: u64, stage: JobStage, step: u64, total: u64, pct: u32, elapsed: f64) -> Event {
    progress_event(JobProgress {
        message: Some(format!("{step}/{total}")),
        percentage: Some(pct),
        stage,
        loss: (stage == JobStage::Refine).then_some(1.25),
        eta_secs: Some(99.0),
        elapsed_secs: elapsed,
        ..job_progress(4, seq, step, total)
    })
}

fn runs(app: &mut App) {
    let run = |id: u64, pairs: u64, m: Option<RetrievalMetrics>, state: JobState| RunInfo {
        id: RunId(id),
        method: AlignMethod::Sotalign,
        state,
        pairs,
        started_at_ms: NOW,
        finished_at_ms: Some(NOW),
        metrics: m,
        fitted: None,
        error: None,
    };
    ok(
        app,
        Call::Runs,
        Reply::Runs(RunsResult {
            runs: vec![
                run(1, 20, Some(retrieval(0.125, 0.1, 285)), JobState::Succeeded),
                run(2, 60, Some(retrieval(0.2, 0.175, 285)), JobState::Succeeded),
                run(
                    3,
                    100,
                    Some(retrieval(0.25, 0.25, 285)),
                    JobState::Succeeded,
                ),
                run(4, 101, None, JobState::Cancelled),
            ],
        }),
    );
}

#[test]
fn dashboard_job_running() {
    let mut app = with_suggestions();
    runs(&mut app);
    press(&mut app, KeyCode::Char('r'));
    ok(
        &mut app,
        Call::Align(AlignParams::default()),
        Reply::Align(AlignResult {
            job: JobId(4),
            run: RunId(5),
        }),
    );
    // A first stage, then training: 60 steps in 6 s, so 180 left take 18 s at that rate.
    app.handle(progress(1, JobStage::Teacher, 0, 1, 2, 0.5));
    app.handle(progress(2, JobStage::Teacher, 1, 1, 5, 2.0));
    app.handle(progress(9, JobStage::Refine, 60, 300, 20, 6.5));
    app.handle(progress(14, JobStage::Refine, 120, 300, 41, 12.5));
    app.handle(progress(10, JobStage::Refine, 70, 300, 22, 7.5)); // late, dropped
    app.handle(Event::Tick {
        now_ms: NOW + 3_000,
    });
    press(&mut app, KeyCode::Char('d'));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn dashboard_empty() {
    let mut app = App::new();
    app.handle(Event::Tick { now_ms: NOW });
    app.handle(Event::Net(NetEvent::Connected {
        server: "sotalign 0.1.0".into(),
    }));
    press(&mut app, KeyCode::Char('3'));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn browse_search_results() {
    let mut app = with_suggestions();
    press(&mut app, KeyCode::Char('/'));
    for c in "a cat".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    let calls = press(&mut app, KeyCode::Enter);
    ok(
        &mut app,
        calls[0].clone(),
        Reply::Search(SearchResult {
            hits: vec![
                cand(image_at(17, "chelsea", &fixture("chelsea.png")), 0.5, 1),
                cand(image_at(18, "coffee", &fixture("coffee.png")), 0.25, 2),
            ],
            run: RunId(3),
            index: IndexKind::Exact,
        }),
    );
    ok(
        &mut app,
        Call::Captions {
            image: SampleId(17),
        },
        Reply::Captions(SuggestForSampleResult {
            sample: image_at(17, "chelsea", &fixture("chelsea.png")),
            candidates: vec![
                cand(text(802, "A tabby cat looks at the camera."), 0.625, 1),
                cand(text(803, "A small dog."), 0.5, 2),
            ],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn browse_text_search_unavailable_falls_back_to_names() {
    let mut app = with_suggestions();
    press(&mut app, KeyCode::Char('/'));
    for c in "coffee".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    let calls = press(&mut app, KeyCode::Enter);
    app.handle(Event::Net(NetEvent::Reply {
        call: calls[0].clone(),
        outcome: Err(CallError {
            code: Some(codes::NOT_READY),
            message: "free-text search needs the text encoder, which this daemon has not loaded"
                .into(),
        }),
    }));
    ok(
        &mut app,
        Call::ListImages {
            filter: Some("coffee".into()),
        },
        Reply::ListImages(ListSamplesResult {
            items: vec![image_at(18, "coffee", &fixture("coffee.png"))],
            total: 1,
        }),
    );
    ok(
        &mut app,
        Call::Captions {
            image: SampleId(18),
        },
        Reply::Captions(SuggestForSampleResult {
            sample: image_at(18, "coffee", &fixture("coffee.png")),
            candidates: vec![cand(text(804, "A cup of coffee on a saucer."), 0.5, 1)],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn help_screen() {
    let mut app = with_suggestions();
    press(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn tiny_terminal() {
    let app = with_suggestions();
    insta::assert_snapshot!(render(&app, 60, 20));
}

#[test]
fn images_render_as_half_blocks_and_fit_their_area() {
    let app = with_suggestions();
    let screen = render(&app, 80, 24);
    // The picture is drawn with the upper-half-block glyph (no terminal graphics protocol in
    // a TestBackend), inside the left pane.
    let rows_with_blocks = screen.lines().filter(|l| l.contains('▀')).count();
    assert!(rows_with_blocks >= 5, "{screen}");
    for line in screen.lines() {
        if let Some(col) = line.chars().position(|c| c == '▀') {
            assert!(col < 34, "picture leaks out of its pane: {line}");
        }
    }
}
