//! Pictures over the wire: the daemon runs in one directory and stores image paths relative to
//! it; the TUI runs (in a real pty, a tmux pane) from another directory where those paths do
//! not exist, as on a laptop attached to a GPU box through `ssh -L`. The review screen must
//! still draw the picture (fetched with `sotalign/getImage`), not the "cannot show" placeholder.
mod common;

use std::io::{BufReader, Read};

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sotalign::encoders::preprocess::Rgb8;
use sotalign_protocol::methods;
use sotalign_protocol::types::*;
use sotalign_protocol::vector::Vector;

fn tmux_ok() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !std::env::var("SOTALIGN_REQUIRE_ASSETS").is_ok_and(|v| v == "1"),
            "tmux is not installed but SOTALIGN_REQUIRE_ASSETS=1"
        );
        eprintln!("SKIPPED tui_remote_images: tmux is not installed");
    }
    ok
}

/// A private tmux server; killed on drop.
struct Pane(String);

impl Pane {
    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.0]);
        c
    }
    fn screen(&self) -> String {
        let o = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "e2e"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").output();
    }
}

#[test]
fn the_tui_shows_pictures_it_cannot_read_itself() {
    if !tmux_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (server_side, laptop) = (dir.path().join("gpu-box"), dir.path().join("laptop"));
    std::fs::create_dir_all(server_side.join("pics")).unwrap();
    std::fs::create_dir_all(&laptop).unwrap();
    // One bright picture, large enough to fill the review pane.
    let (w, h) = (64, 48);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&[(x * 4) as u8, 200, (y * 5) as u8]);
        }
    }
    let png = sotalign::export::encode_png(&Rgb8 {
        width: w,
        height: h,
        data,
    })
    .unwrap();
    std::fs::write(server_side.join("pics/p0.png"), png).unwrap();

    // The daemon runs in `gpu-box`, where the stored relative path resolves.
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--allow-dir")
        .arg(&server_side)
        .current_dir(&server_side)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let addr = listening_addr(&mut err);
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = err.read_to_end(&mut sink);
    });
    let _daemon = Daemon {
        child,
        addr: Some(addr.clone()),
    };
    let mut c = connect(&addr);
    c.initialize("seed", None).unwrap();
    let sample = |m: Modality, key: &str, v: Vec<f32>| EmbeddedSample {
        modality: m,
        key: key.into(),
        vector: Vector(v),
        path: (m == Modality::Image).then(|| "pics/p0.png".into()),
        text: (m == Modality::Text).then(|| "A gradient.".into()),
    };
    let r = c
        .call::<methods::Ingest>(IngestParams {
            source: IngestSource::Embedded(vec![
                sample(Modality::Image, "p0", vec![1.0, 0.0, 0.0]),
                sample(Modality::Text, "t0", vec![0.0, 1.0]),
            ]),
        })
        .unwrap();
    assert_eq!(wait_finished(&mut c, r.job).state, JobState::Succeeded);
    // The daemon serves the picture by its stored path...
    let g = c
        .call::<methods::GetImage>(GetImageParams {
            sample: None,
            path: Some("pics/p0.png".into()),
            max_width: 32,
            max_height: 32,
        })
        .unwrap();
    assert_eq!((g.width, g.height), (32, 24));
    // ...which does not exist where the TUI runs.
    assert!(!laptop.join("pics/p0.png").exists());

    let tui = assert_cmd::cargo::cargo_bin("sotalign-tui");
    assert!(tui.exists(), "build sotalign-tui first");
    let pane = Pane(format!("sotalign-remote-img-{}", std::process::id()));
    let script = laptop.join("run.sh");
    std::fs::write(
        &script,
        format!(
            "cd '{}' && '{}' --connect {addr} --images halfblocks 2>'{}'; exec sleep 600\n",
            laptop.display(),
            tui.display(),
            laptop.join("tui.stderr").display()
        ),
    )
    .unwrap();
    let ok = pane
        .tmux()
        .args([
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            "100",
            "-y",
            "30",
        ])
        .arg(format!("sh {}", script.display()))
        .env("TERM", "xterm-256color")
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let screen = loop {
        let s = pane.screen();
        // Half-block pictures are drawn with the upper/lower half block characters.
        if s.contains('▀') || s.contains('▄') {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no picture on screen; stderr: {}\nscreen:\n{s}",
            std::fs::read_to_string(laptop.join("tui.stderr")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!screen.contains("cannot show this image"), "{screen}");
    let _ = pane.tmux().args(["send-keys", "-t", "e2e", "q"]).status();
}
