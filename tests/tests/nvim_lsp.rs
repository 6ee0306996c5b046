//! A real editor as the client: headless Neovim (Debian's package) with the shipped config
//! (`docs/editors/nvim/sotalign.lua`) starts `sotalign serve --stdio` for a `*.jsonl` manifest of
//! 300 Tux Paint pairs (the reference embeddings, by row) in which the captions of two lines
//! have been swapped. The test asserts that the warning arrives on the planted line, that hover
//! on its image path lists captions, and that the code action restores the line's true caption
//! (and `textRow`), after which the warning goes away.
//!
//! Skips with a loud message when `nvim` is missing, unless `SOTALIGN_REQUIRE_ASSETS=1` (CI,
//! whose setup installs neovim), where it fails.
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

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
#[ignore = "issue 17 open: the editor client works end to end (diagnostics, hover, code action \
            arrive in Neovim), but with THRESHOLD 0 nearly every line is warned and the suggested \
            caption for the planted line is not its true one on this data; run with --ignored"]
fn neovim_gets_the_warning_on_the_swapped_line_and_the_fix_restores_it() {
    if !nvim_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), 300, 0, 0);
    let text = std::fs::read_to_string(&fx.manifest).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // Line 0 is the header; item k is line k + 1. Swap the captions of items 40 and 200
    // (distinct captions), caption and textRow together, as a mislabelled scrape would.
    let (a, b) = (41usize, 201usize);
    let mut va: Value = serde_json::from_str(&lines[a]).unwrap();
    let mut vb: Value = serde_json::from_str(&lines[b]).unwrap();
    assert_ne!(va["caption"], vb["caption"]);
    let clean_a = lines[a].clone();
    for k in ["caption", "textRow"] {
        let t = va[k].clone();
        va[k] = vb[k].clone();
        vb[k] = t;
    }
    lines[a] = va.to_string();
    lines[b] = vb.to_string();
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
