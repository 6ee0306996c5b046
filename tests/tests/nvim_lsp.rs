//! A real editor as the client: headless Neovim (Debian's package) with the shipped config
//! (`docs/editors/nvim/sotalign.lua`) starts `sotalign serve --stdio` for a `*.jsonl` manifest of
//! 120 pairs whose embeddings (`img.npy`, `txt.npy` beside it) come from the engine's synthetic
//! platonic generator, with the captions of two lines swapped. The test asserts that the warning
//! arrives on both swapped lines and on few others (the cut is calibrated), that hover on the
//! planted line's image path lists captions, and that the code action restores the line's true
//! caption (and `textRow`), after which the warning goes away.
//!
//! Synthetic embeddings, not Tux Paint's: this tests the editor integration, which needs a swap
//! the audit can see. On Tux Paint a single swap among 100-400 pairs ranks anywhere from 6th to
//! 99th (AUROC ~0.87); how well the audit finds wrong pairs there is measured by
//! `sotalign audit-sim` (docs/CURATION.md), not asserted here.
//!
//! Skips with a loud message when `nvim` is missing, unless `SOTALIGN_REQUIRE_ASSETS=1` (CI,
//! whose setup installs neovim), where it fails.
mod common;

use std::process::Command;

use common::*;
use serde_json::{Value, json};

fn nvim_available() -> bool {
    let ok = Command::new("nvim")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("SOTALIGN_REQUIRE_ASSETS").as_deref() == Ok("1") {
            panic!("nvim is required (SOTALIGN_REQUIRE_ASSETS=1): apt-get install neovim");
        }
        eprintln!("SKIPPED nvim_lsp: nvim is not installed (apt-get install neovim)");
    }
    ok
}

#[test]
fn neovim_gets_the_warning_on_the_swapped_line_and_the_fix_restores_it() {
    if !nvim_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let n = 120;
    write_platonic_npy(dir.path(), n);
    let line = |k: usize, t: usize| {
        json!({"imagePath": format!("stamps/s{k}.png"), "imageRow": k,
               "caption": format!("caption {t}"), "textRow": t})
        .to_string()
    };
    let mut lines = vec![
        json!({"sotalign_manifest": 1, "embeddings": {"image": "img.npy", "text": "txt.npy"}})
            .to_string(),
    ];
    lines.extend((0..n).map(|k| line(k, k)));
    // Line 0 is the header; item k is line k + 1. Swap the captions of items 40 and 90,
    // caption and textRow together, as a mislabelled scrape would.
    let (a, b) = (41usize, 91usize);
    let clean_a = lines[a].clone();
    lines[a] = line(a - 1, b - 1);
    lines[b] = line(b - 1, a - 1);
    let manifest = dir.path().join("planted.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    let data = dir.path().join("data");
    let result = dir.path().join("result.json");
    let out = Command::new("timeout")
        .arg("300")
        .arg("nvim")
        .args(["--headless", "--clean", "-u", "NONE", "-i", "NONE", "-c"])
        .arg(format!(
            "luafile {}",
            repo_root().join("tests/tests/nvim_lsp.lua").display()
        ))
        .env("REPO", repo_root())
        .env("RESULT", &result)
        .env("PLANTED_LINE", (a as u32).to_string())
        .env("SOTALIGN_BIN", bin())
        .env("DATA_DIR", &data)
        .env("MANIFEST", &manifest)
        .output()
        .expect("run nvim");
    let got = std::fs::read_to_string(&result).unwrap_or_else(|e| {
        panic!(
            "nvim wrote no result ({e}); status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let r: Value = serde_json::from_str(&got).unwrap();
    let ctx = || serde_json::to_string_pretty(&r).unwrap();
    assert_eq!(r["waited"], true, "no warning arrived: {}", ctx());
    let warned: Vec<i64> = r["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["severity"] == 2 && d["source"] == "sotalign")
        .map(|d| d["line"].as_i64().unwrap())
        .collect();
    assert!(
        warned.contains(&(a as i64)),
        "planted line {a} not warned: {}",
        ctx()
    );
    assert!(
        warned.contains(&(b as i64)),
        "its swap partner {b} not warned: {}",
        ctx()
    );
    assert!(
        warned.len() <= 6,
        "warnings on {} lines: {}",
        warned.len(),
        ctx()
    );
    let hover = r["hover"].as_str().unwrap_or_default();
    assert!(hover.contains("Best captions"), "hover: {}", ctx());
    assert!(
        r["actions"].as_array().is_some_and(|a| !a.is_empty()),
        "no code action: {}",
        ctx()
    );
    assert_eq!(
        r["after"].as_str(),
        Some(clean_a.as_str()),
        "fix: {}",
        ctx()
    );
    assert_eq!(
        r["cleared"],
        true,
        "warning stayed after the fix: {}",
        ctx()
    );
}
