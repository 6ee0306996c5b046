//! End to end: the real `sotalign-tui` binary in a real pty (a tmux pane, driven with
//! `send-keys` and read with `capture-pane`) against the real daemon on a small fixture of the
//! reference Tux Paint embeddings (10 seed pairs, 20 held out, 30 unpaired).
//!
//! - `confirm_two_realign_...`: a `sotalign serve --listen` daemon and `sotalign-tui --connect`.
//!   A person's session: confirm two suggested pairs, trigger a re-alignment, see the run finish
//!   and the confirmed count rise, quit; then the daemon (over JSON-RPC) and its SQLite file
//!   (opened directly) must hold exactly those two decisions, from this client.
//! - `a_killed_daemon_...`: the TUI spawns its own daemon over stdio; the test `kill -9`s that
//!   daemon, expects the lost-daemon banner, then the TUI's own reconnect (a fresh daemon on the
//!   same data, which restores its model in the background) with the suggestions back. Then
//!   every review key against that daemon: confirm, Tab to the caption queue, reject, undo,
//!   skip; the browse screen (free-text search, or its clearly stated fallback when the daemon
//!   has no text encoder; image -> captions; Enter reviews the image); resizes to 80x24, below
//!   it, and back. The store must hold the confirm (live) and the reject (undone).
//!
//! The screen is polled with a deadline, never slept on. Each test has its own tmux server
//! (`tmux -L <unique socket>`), killed on drop, so a failing test leaves no process behind.
//! Without tmux the tests skip with a loud message, or fail when `SOTALIGN_REQUIRE_ASSETS=1`
//! (as in CI, whose setup installs tmux).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sotalign_protocol::methods;
use sotalign_protocol::types::*;

const SOURCE: &str = "tui:e2e";

fn tui_bin() -> PathBuf {
    let p = assert_cmd::cargo::cargo_bin("sotalign-tui");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p sotalign-tui)",
        p.display()
    );
    p
}

/// True when tmux can run here; otherwise skip loudly, or fail where CI requires it.
fn tmux_available(test: &str) -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        let required = std::env::var("SOTALIGN_REQUIRE_ASSETS").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: tmux is not installed but SOTALIGN_REQUIRE_ASSETS=1; run scripts/setup.sh"
        );
        eprintln!(
            "SKIPPED {test}: tmux is not installed (scripts/setup.sh installs it); \
             the TUI was NOT tested in a real terminal"
        );
    }
    ok
}

/// A private tmux server (its own socket) running one command in one pane; killed on drop.
struct Tmux {
    socket: String,
    /// The socket file, removed on drop (`kill-server` leaves it behind).
    socket_path: Option<PathBuf>,
}

/// Marker the wrapper script prints when the TUI exits (the pane stays, so a crash's message
/// can still be read).
const EXITED: &str = "[tui exited with status ";

impl Tmux {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// Run `argv` in a detached `width`x`height` pane. It runs from a script so no shell
    /// quoting reaches tmux, and the script waits after the program exits so its last words
    /// stay on screen for the failure message.
    fn start(name: &str, dir: &Path, argv: &[String], width: u16, height: u16) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let mut t = Tmux {
            socket: format!(
                "sotalign-e2e-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            socket_path: None,
        };
        let quoted: Vec<String> = argv
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
            .collect();
        let script = dir.join(format!("{name}.sh"));
        std::fs::write(
            &script,
            format!(
                "{} 2>{}\necho \"{EXITED}$?]\"\nexec sleep 600\n",
                quoted.join(" "),
                dir.join(format!("{name}.stderr")).display()
            ),
        )
        .unwrap();
        let out = t
            .tmux()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", "e2e"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg(format!("sh {}", script.display()))
            .env("TERM", "xterm-256color")
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.socket_path = t
            .tmux()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_absolute());
        t
    }

    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "e2e"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keys in tmux's `send-keys` names (`y`, `Enter`, `Tab`, `q`).
    fn keys(&self, keys: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "e2e", keys])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux send-keys {keys}");
    }

    /// Text typed literally (no key-name lookup).
    fn type_text(&self, text: &str) {
        let ok = self
            .tmux()
            .args(["send-keys", "-t", "e2e", "-l", text])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux send-keys -l {text}");
    }

    fn resize(&self, width: u16, height: u16) {
        let ok = self
            .tmux()
            .args(["resize-window", "-t", "e2e"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tmux resize-window {width}x{height}");
    }

    /// The pid of the pane's process (the wrapper shell).
    fn pane_pid(&self) -> u32 {
        let out = self
            .tmux()
            .args(["display-message", "-p", "-t", "e2e", "#{pane_pid}"])
            .output()
            .expect("tmux display-message");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a pane pid")
    }

    /// Poll the screen until `pred` holds; on timeout fail showing the last screen.
    fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out after {secs} s waiting for {what}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `q`, then the wrapper's exit line with status 0.
    fn quit(&self) {
        self.keys("q");
        let s = self.wait_for("the TUI to quit", 20, |s| s.contains(EXITED));
        assert!(s.contains(&format!("{EXITED}0]")), "the TUI failed:\n{s}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Direct children of a process, from /proc (Linux).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        // Fields after the parenthesised command name: state, ppid, ...
        let rest = &stat[stat.rfind(')')? + 1..];
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

/// The status line (second to last row).
fn status_line(screen: &str) -> String {
    let lines: Vec<&str> = screen.lines().collect();
    lines
        .len()
        .checked_sub(2)
        .map(|i| lines[i].trim().to_owned())
        .unwrap_or_default()
}

/// The number on a dashboard row such as `paired (confirmed)       12`.
fn dashboard_number(screen: &str, label: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.contains(label))?;
    let after = &line[line.find(label)? + label.len()..];
    after
        .split(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())?
        .parse()
        .ok()
}

/// The image key in a `confirmed row-12 <-> "caption"` status message.
fn confirmed_key(status: &str) -> Option<String> {
    let rest = status.strip_prefix("confirmed ")?;
    Some(rest.split_whitespace().next()?.to_owned())
}

/// Suggested captions are on screen (image under review), with the selection marker.
fn suggestions_shown(s: &str) -> bool {
    s.contains("Suggested captions") && s.contains('▶') && !s.contains("saving...")
}

/// Suggested images are on screen (caption under review), with the selection marker.
fn image_suggestions_shown(s: &str) -> bool {
    s.contains("Suggested images") && s.contains('▶') && !s.contains("saving...")
}

/// Confirm the selected (top) suggestion of `n` images in a row; returns their keys.
fn confirm_top(t: &Tmux, n: usize) -> Vec<String> {
    let mut confirmed: Vec<String> = Vec::new();
    for _ in 0..n {
        t.wait_for("suggestions to confirm", 30, suggestions_shown);
        t.keys("y");
        let s = t.wait_for("the confirm acknowledgement", 30, |s| {
            confirmed_key(&status_line(s)).is_some_and(|k| !confirmed.contains(&k))
        });
        confirmed.push(confirmed_key(&status_line(&s)).unwrap());
    }
    confirmed
}

/// Ingest the fixture and fit a first model, over a client of a daemon on `data`.
fn seed<R: std::io::Read, W: std::io::Write>(
    c: &mut sotalign_protocol::Client<R, W>,
    fx: &Fixture,
) -> (u64, Vec<RunInfo>) {
    c.initialize("e2e-setup", None).unwrap();
    ingest(c, &fx.manifest);
    let job = c.call::<methods::Align>(align_params(20)).unwrap().job;
    let f = wait_finished(c, job);
    assert_eq!(f.state, JobState::Succeeded, "{f:?}");
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(st.counts.confirmed_pairs, fx.train.len() as u64);
    let runs = c.call::<methods::Runs>(RunsParams { limit: 100 }).unwrap();
    (st.counts.confirmed_pairs, runs.runs)
}

/// What `r` in the TUI fits: the same small SigLIP-heads budget as the seed run (debug builds).
fn align_args() -> Vec<String> {
    let cfg = serde_json::to_string(&align_params(20).config).unwrap();
    vec![
        "--align-method".into(),
        "siglip".into(),
        "--align-config".into(),
        cfg,
    ]
}

#[test]
fn confirm_two_realign_and_the_store_holds_exactly_those_decisions() {
    if !tmux_available("confirm_two_realign_and_the_store_holds_exactly_those_decisions") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fx = fixture(dir.path(), 10, 20, 30);
    let daemon = spawn_tcp(&data, &[]);
    let addr = daemon.addr.clone().unwrap();
    let (seed_pairs, runs_before) = {
        let mut c = connect(&addr);
        let r = seed(&mut c, &fx);
        c.shutdown().unwrap();
        r
    };
    let next_run = runs_before.iter().map(|r| r.id.0).max().unwrap() + 1;
    let db = rusqlite::Connection::open_with_flags(
        data.join("sotalign.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let decisions_before: i64 = db
        .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
        .unwrap();

    let mut argv = vec![
        tui_bin().display().to_string(),
        "--connect".into(),
        addr.clone(),
        "--images".into(),
        "halfblocks".into(),
        "--source".into(),
        SOURCE.into(),
    ];
    argv.extend(align_args());
    let t = Tmux::start("confirm", dir.path(), &argv, 100, 30);
    let s = t.wait_for("suggestions for the first image", 30, suggestions_shown);
    assert!(
        s.contains(&format!("Suggested captions · re-align #{}", next_run - 1)),
        "{s}"
    );

    let confirmed = confirm_top(&t, 2);

    // The dashboard counts both, in the store's totals and in this session's.
    t.keys("3");
    t.wait_for("confirmed count +2", 30, |s| {
        dashboard_number(s, "paired (confirmed)") == Some(seed_pairs + 2)
            && dashboard_number(s, "  confirmed") == Some(2)
    });

    // Re-align and watch the run finish, trained on the two extra pairs.
    t.keys("r");
    t.wait_for("the re-alignment run to finish", 120, |s| {
        status_line(s).starts_with(&format!("re-align #{next_run} finished in"))
    });
    t.wait_for("the new run in the chart", 30, |s| {
        s.contains(&format!(
            "latest: re-align #{next_run}, {} pairs, R@1",
            seed_pairs + 2
        ))
    });
    // Issue 12: back on the review screen, the suggestions are the new model's (the pane names
    // the run that scored them), not the old list under a new title.
    t.keys("1");
    t.wait_for("suggestions scored by the new run", 30, |s| {
        suggestions_shown(s) && s.contains(&format!("Suggested captions · re-align #{next_run} "))
    });
    t.quit();

    // The daemon: exactly the two decisions made in the TUI, both confirms, of those images.
    let mut c = connect(&addr);
    c.initialize("e2e-check", None).unwrap();
    let pairs = c
        .call::<methods::ListPairs>(ListPairsParams {
            state: None,
            offset: 0,
            limit: 1000,
        })
        .unwrap();
    let mine: Vec<&Pair> = pairs.items.iter().filter(|p| p.source == SOURCE).collect();
    assert_eq!(mine.len(), 2, "{:?}", pairs.items);
    let mut keys = Vec::new();
    for p in &mine {
        assert_eq!(p.state, PairState::Confirmed);
        assert!(p.decision.is_some());
        let img = c
            .call::<methods::GetSample>(GetSampleParams { id: p.image })
            .unwrap();
        keys.push(img.sample.key);
    }
    keys.sort();
    let mut confirmed = confirmed;
    confirmed.sort();
    assert_eq!(keys, confirmed);
    let st = c.call::<methods::Status>(Empty {}).unwrap();
    assert_eq!(st.counts.confirmed_pairs, seed_pairs + 2);
    assert_eq!(st.counts.rejected_pairs, 0);
    let runs = c
        .call::<methods::Runs>(RunsParams { limit: 100 })
        .unwrap()
        .runs;
    assert_eq!(runs.len(), runs_before.len() + 1);
    let last = runs.iter().max_by_key(|r| r.id.0).unwrap();
    assert_eq!(last.id.0, next_run);
    assert_eq!(last.state, JobState::Succeeded);
    assert_eq!(last.pairs, seed_pairs + 2);
    c.shutdown().unwrap();

    // The store file itself: two new decision rows, both this client's live confirms of those
    // images, and each the decision behind a confirmed pair.
    let decisions_after: i64 = db
        .query_row("SELECT count(*) FROM decisions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(decisions_after, decisions_before + 2);
    let mut stmt = db
        .prepare(
            "SELECT d.kind, s.key, d.undone_at_ms IS NULL, p.state
             FROM decisions d
             JOIN samples s ON s.id = d.image
             LEFT JOIN pairs p ON p.decision = d.id
             WHERE d.source = ?1 ORDER BY s.key",
        )
        .unwrap();
    let rows: Vec<(String, String, bool, Option<String>)> = stmt
        .query_map([SOURCE], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(String, String, bool, Option<String>)> = confirmed
        .iter()
        .map(|k| ("confirm".into(), k.clone(), true, Some("confirmed".into())))
        .collect();
    assert_eq!(rows, expected);
    drop(daemon);
}

#[test]
fn a_killed_daemon_reconnects_then_both_directions_browse_and_resizes_work() {
    if !tmux_available("a_killed_daemon_reconnects_then_both_directions_browse_and_resizes_work") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fx = fixture(dir.path(), 10, 20, 30);
    let (seed_pairs, _) = {
        let (_d, mut c, _) = spawn_stdio(&data, &[]);
        let r = seed(&mut c, &fx);
        c.shutdown().unwrap();
        r
    };

    let argv = vec![
        tui_bin().display().to_string(),
        "--daemon".into(),
        bin().display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--images".into(),
        "halfblocks".into(),
        "--source".into(),
        SOURCE.into(),
    ];
    let t = Tmux::start("reconnect", dir.path(), &argv, 100, 30);
    t.wait_for(
        "suggestions (the daemon restored its model)",
        30,
        suggestions_shown,
    );

    // The TUI's spawned daemon: the pane runs sh -> sotalign-tui -> sotalign.
    let shell = t.pane_pid();
    let tui = *children(shell).first().expect("the TUI process");
    let daemons = children(tui);
    assert_eq!(daemons.len(), 1, "expected one spawned daemon: {daemons:?}");
    let first = daemons[0];
    let ok = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -9 {first}");

    t.wait_for("the lost-daemon banner", 20, |s| s.contains("DAEMON LOST"));
    let s = t.wait_for("the reconnect and the queue back", 60, |s| {
        !s.contains("DAEMON LOST") && !s.contains("connecting") && suggestions_shown(s)
    });
    let again = children(tui);
    assert!(
        again.len() == 1 && again[0] != first,
        "a fresh daemon should serve the TUI: {again:?} (killed {first}); screen:\n{s}"
    );

    // The new daemon works: a confirm goes through and the dashboard counts it.
    let confirmed = confirm_top(&t, 1);
    assert_eq!(confirmed.len(), 1);
    t.keys("3");
    t.wait_for("the confirm counted", 30, |s| {
        dashboard_number(s, "paired (confirmed)") == Some(seed_pairs + 1)
    });

    // The other direction (Tab): a caption under review, images suggested. Reject the top
    // image, undo that, skip the caption.
    t.keys("1");
    t.keys("Tab");
    t.wait_for("the caption queue", 30, image_suggestions_shown);
    t.keys("n");
    t.wait_for("the reject acknowledgement", 30, |s| {
        status_line(s).starts_with("rejected \"")
    });
    t.wait_for("the next candidates", 30, image_suggestions_shown);
    t.keys("u");
    t.wait_for("the undo acknowledgement", 30, |s| {
        status_line(s).starts_with("undone: reject of decision")
    });
    t.wait_for(
        "the caption's candidates again",
        30,
        image_suggestions_shown,
    );
    t.keys("s");
    t.wait_for("the skip", 30, |s| {
        s.contains("1 skipped") && image_suggestions_shown(s)
    });

    // Browse: a free-text query finds images, or (daemon without a text encoder) says why and
    // lists images named like the query; either way the selected image shows its captions,
    // and Enter reviews it.
    t.keys("/");
    t.type_text("bird");
    t.keys("Enter");
    let s = t.wait_for("images with captions", 30, |s| {
        (s.contains("images for \"bird\"") || s.contains("images named like \"bird\""))
            && s.contains("Closest captions:")
    });
    if s.contains("named like") {
        assert!(s.contains("free-text search unavailable"), "{s}");
    }
    t.keys("Enter");
    t.wait_for("the chosen image under review", 30, suggestions_shown);

    // Resizes: the smallest supported size still shows the help bar; below it a notice; back
    // up, the full layout again.
    t.resize(80, 24);
    t.wait_for("the 80x24 layout", 10, |s| {
        s.lines().count() == 24
            && s.lines().last().is_some_and(|l| l.contains("confirm"))
            && suggestions_shown(s)
    });
    t.resize(60, 20);
    t.wait_for("the too-small notice", 10, |s| {
        s.contains("terminal too small") && s.contains("60x20")
    });
    t.resize(100, 30);
    t.wait_for("the full layout again", 10, suggestions_shown);
    t.quit();

    // The store: this client's decisions, in order: the confirm (live), the reject (undone).
    let db = rusqlite::Connection::open_with_flags(
        data.join("sotalign.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut stmt = db
        .prepare("SELECT kind, undone_at_ms IS NULL FROM decisions WHERE source = ?1 ORDER BY id")
        .unwrap();
    let rows: Vec<(String, bool)> = stmt
        .query_map([SOURCE], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![("confirm".to_owned(), true), ("reject".to_owned(), false)]
    );
}

/// Issue 12: with `--images auto` under tmux the first key press was lost (the graphics query's
/// reader thread, left blocked on stdin after the terminal did not answer, took it). No daemon
/// is needed: the UI draws (with its "connecting" banner) and `?` must open the help at once.
#[test]
fn the_first_key_is_not_lost_to_the_graphics_query() {
    if !tmux_available("the_first_key_is_not_lost_to_the_graphics_query") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: the TUI keeps retrying, which is fine for this test.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let argv = vec![
        tui_bin().display().to_string(),
        "--connect".into(),
        format!("127.0.0.1:{port}"),
        "--images".into(),
        "auto".into(),
    ];
    let t = Tmux::start("firstkey", dir.path(), &argv, 100, 30);
    t.wait_for("the first frame", 30, |s| s.contains("1 Review"));
    t.keys("?");
    t.wait_for("the help screen after the first key", 10, |s| {
        s.contains("Help: keys")
    });
    t.keys("Escape");
    t.keys("3");
    t.wait_for("the dashboard", 10, |s| s.contains("Counts"));
    t.quit();
}
