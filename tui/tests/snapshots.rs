//! Snapshot tests: every screen and state rendered with ratatui's TestBackend, states built by
//! feeding the reducer the same events the network task would produce. The snapshots are
//! committed under `tests/snapshots/`; review changes with `cargo insta review` (or
//! `INSTA_UPDATE=always` and `git diff`).
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui_image::picker::Picker;
use sotalign_protocol::ServerNotification;
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

fn image(id: u64, key: &str, path: &str) -> Sample {
    Sample {
        id: SampleId(id),
        modality: Modality::Image,
        key: key.into(),
        state: SampleState::Unpaired,
        path: Some(path.into()),
        text: None,
        encoded: true,
    }
}

fn text(id: u64, caption: &str) -> Sample {
    Sample {
        id: SampleId(id),
        modality: Modality::Text,
        key: format!("t{id}"),
        state: SampleState::Unpaired,
        path: None,
        text: Some(caption.into()),
        encoded: true,
    }
}

fn cand(s: Sample, score: f64, rank: u32, mutual: bool) -> Candidate {
    Candidate {
        sample: s,
        score,
        rank,
        mutual_nn: mutual,
    }
}

fn counts(confirmed: u64, rejected: u64) -> Counts {
    Counts {
        images: 785,
        texts: 785,
        unpaired_images: 400 - confirmed,
        unpaired_texts: 400 - confirmed,
        confirmed_pairs: 100 + confirmed,
        rejected_pairs: rejected,
        held_out_pairs: 285,
        pending_encoding: 0,
    }
}

fn metrics(i2t: f64, t2i: f64) -> RetrievalMetrics {
    RetrievalMetrics {
        image_to_text: Recall {
            r1: i2t,
            r5: 0.5,
            r10: 0.6,
        },
        text_to_image: Recall {
            r1: t2i,
            r5: 0.5,
            r10: 0.6,
        },
        pairs: 285,
    }
}

fn status(model: bool, c: Counts) -> StatusResult {
    StatusResult {
        version: "0.1.0".into(),
        protocol_version: 1,
        data_dir: "/data".into(),
        device: "cpu".into(),
        image_encoder: None,
        text_encoder: None,
        counts: c,
        model: model.then(|| ModelInfo {
            run: RunId(3),
            method: AlignMethod::Sotalign,
            dim: 256,
            pairs: 100,
            trained_at_ms: NOW,
            metrics: Some(metrics(0.25, 0.25)),
        }),
        index: IndexInfo {
            state: if model {
                IndexState::Ready
            } else {
                IndexState::Empty
            },
            kind: Some(IndexKind::Exact),
            images: 785,
            texts: 785,
            run: model.then_some(RunId(3)),
        },
        jobs: vec![],
    }
}

fn ok(app: &mut App, call: Call, r: Reply) -> Vec<Call> {
    app.handle(Event::Net(NetEvent::Reply {
        call,
        outcome: Ok(r),
    }))
}

fn key(app: &mut App, code: KeyCode) -> Vec<Call> {
    app.handle(Event::Key(KeyEvent::new(code, KeyModifiers::NONE)))
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
            image(17, "chelsea", &fixture("chelsea.png")),
            image(18, "coffee", &fixture("coffee.png")),
        ],
        400,
    );
    ok(
        &mut app,
        Call::Suggest {
            sample: SampleId(17),
        },
        Reply::Suggest(SuggestForSampleResult {
            sample: image(17, "chelsea", &fixture("chelsea.png")),
            candidates: vec![
                cand(
                    text(
                        802,
                        "A tabby cat sits and looks at the camera with green eyes, ears up.",
                    ),
                    0.625,
                    1,
                    true,
                ),
                cand(text(803, "A small dog."), 0.5, 2, false),
                cand(text(804, "A cup of coffee on a saucer."), 0.125, 3, false),
            ],
            run: RunId(3),
        }),
    );
    key(&mut app, KeyCode::Down);
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
        vec![image(17, "chelsea", &fixture("chelsea.png"))],
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
    key(&mut app, KeyCode::Tab);
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
                    image(17, "penguin", "/nonexistent/stamps/penguin.png"),
                    0.625,
                    1,
                    true,
                ),
                cand(
                    image(18, "seal", "/nonexistent/stamps/seal.png"),
                    0.5,
                    2,
                    false,
                ),
            ],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn daemon_error_in_status_line() {
    let mut app = with_suggestions();
    let calls = key(&mut app, KeyCode::Char('y'));
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

fn progress(seq: u64, stage: JobStage, step: u64, total: u64, pct: u32) -> Event {
    Event::Net(NetEvent::Notification(ServerNotification::Progress(
        ProgressParams {
            token: ProgressToken::for_job(JobId(4)),
            value: JobProgress {
                kind: ProgressKind::Report,
                title: None,
                message: Some(format!("refine {step}/{total}")),
                percentage: Some(pct),
                job: JobId(4),
                seq,
                stage,
                step,
                total,
                loss: Some(1.25),
                eta_secs: Some(18.5),
                elapsed_secs: 12.5,
            },
        },
    )))
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
    };
    ok(
        app,
        Call::Runs,
        Reply::Runs(RunsResult {
            runs: vec![
                run(1, 20, Some(metrics(0.125, 0.1)), JobState::Succeeded),
                run(2, 60, Some(metrics(0.2, 0.175)), JobState::Succeeded),
                run(3, 100, Some(metrics(0.25, 0.25)), JobState::Succeeded),
                run(4, 101, None, JobState::Cancelled),
            ],
        }),
    );
}

#[test]
fn dashboard_job_running() {
    let mut app = with_suggestions();
    runs(&mut app);
    key(&mut app, KeyCode::Char('r'));
    ok(
        &mut app,
        Call::Align(AlignParams::default()),
        Reply::Align(AlignResult {
            job: JobId(4),
            run: RunId(5),
        }),
    );
    app.handle(progress(14, JobStage::Refine, 120, 300, 41));
    app.handle(progress(9, JobStage::Refine, 60, 300, 20)); // late, dropped
    app.handle(Event::Tick {
        now_ms: NOW + 3_500,
    });
    key(&mut app, KeyCode::Char('d'));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn dashboard_empty() {
    let mut app = App::new();
    app.handle(Event::Tick { now_ms: NOW });
    app.handle(Event::Net(NetEvent::Connected {
        server: "sotalign 0.1.0".into(),
    }));
    key(&mut app, KeyCode::Char('3'));
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn browse_search_results() {
    let mut app = with_suggestions();
    key(&mut app, KeyCode::Char('/'));
    for c in "a cat".chars() {
        key(&mut app, KeyCode::Char(c));
    }
    let calls = key(&mut app, KeyCode::Enter);
    ok(
        &mut app,
        calls[0].clone(),
        Reply::Search(SearchResult {
            hits: vec![
                cand(image(17, "chelsea", &fixture("chelsea.png")), 0.5, 1, false),
                cand(image(18, "coffee", &fixture("coffee.png")), 0.25, 2, false),
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
            sample: image(17, "chelsea", &fixture("chelsea.png")),
            candidates: vec![
                cand(
                    text(802, "A tabby cat looks at the camera."),
                    0.625,
                    1,
                    true,
                ),
                cand(text(803, "A small dog."), 0.5, 2, false),
            ],
            run: RunId(3),
        }),
    );
    insta::assert_snapshot!(render(&app, 80, 24));
}

#[test]
fn help_screen() {
    let mut app = with_suggestions();
    key(&mut app, KeyCode::Char('?'));
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
