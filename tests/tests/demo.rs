//! `sotalign demo` end to end on a slice of the real Tux Paint stamps with the real encoders:
//! the table has a row per method with sane numbers, the daemon starts, ingests, aligns and
//! stops, and a second run reads every embedding back from the cache.
//!
//! Needs the fetched assets (CI fetches them and sets `SOTALIGN_REQUIRE_ASSETS=1`, which turns
//! a missing asset into a failure); elsewhere it skips loudly.
mod common;

use std::process::Command;

/// Parse the markdown table rows `| method | 6 numbers | secs |`.
fn table_rows(stdout: &str) -> Vec<(String, Vec<f64>)> {
    stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| method"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            let nums = cells[1..]
                .iter()
                .map(|c| c.parse::<f64>().expect("numeric cell"))
                .collect();
            (cells[0].to_string(), nums)
        })
        .collect()
}

#[test]
fn demo_runs_end_to_end_and_caches() {
    if common::assets_or_skip("demo").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let cache = tmp.path().join("cache");
    let run = |extra: &[&str]| {
        let out = Command::new(common::bin())
            .args(["demo", "--limit", "150", "--pairs", "40", "--steps", "10"])
            .args(["--methods", "procrustes,cca,asif,sotalign"])
            .arg("--dir")
            .arg(&dir)
            .arg("--cache")
            .arg(&cache)
            .args(extra)
            .output()
            .expect("run sotalign demo");
        let so = String::from_utf8_lossy(&out.stdout).into_owned();
        let se = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "demo failed\nstdout:\n{so}\nstderr:\n{se}"
        );
        (so, se)
    };

    let (so, se) = run(&["--listen", "127.0.0.1:0", "--exit-when-ready"]);
    let rows = table_rows(&so);
    let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(names, ["procrustes", "cca", "asif", "sotalign"], "{so}");
    for (m, v) in &rows {
        assert_eq!(v.len(), 7, "{m}: {v:?}");
        for k in 0..3 {
            // R@1 <= R@5 <= R@10 per direction, all percentages.
            assert!((0.0..=100.0).contains(&v[k]) && (0.0..=100.0).contains(&v[k + 3]));
        }
        assert!(v[0] <= v[1] && v[1] <= v[2], "{m} i2t not monotone: {v:?}");
        assert!(v[3] <= v[4] && v[4] <= v[5], "{m} t2i not monotone: {v:?}");
    }
    // Better than chance (about 1/45 for R@1 on 45 test pairs) in at least one direction
    // for the closed-form teacher: the real encoders carry signal.
    let cca = &rows[1].1;
    assert!(
        cca[2] > 30.0 || cca[5] > 30.0,
        "CCA R@10 near chance: {cca:?}"
    );
    assert!(so.contains("sotalign-tui --connect 127.0.0.1:"), "{so}");
    assert!(se.contains("ingested"), "{se}");
    assert!(dir.join("results.md").is_file());
    assert!(dir.join("embeddings/images.npy").is_file());
    assert!(dir.join("daemon").is_dir());

    // Second run: every embedding comes from the cache.
    let (_, se2) = run(&["--no-serve"]);
    let line = se2
        .lines()
        .find(|l| l.contains("from the cache"))
        .unwrap_or_else(|| panic!("no cache line:\n{se2}"));
    // "  N items (S skipped) in T s (I images and C captions from the cache)"
    let nums: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| !t.is_empty())
        .filter_map(|t| t.parse().ok())
        .collect();
    let items = nums[0];
    let (img_hits, txt_hits) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!((100..=150).contains(&items), "{line}");
    assert_eq!(img_hits, items, "second run re-encoded images: {line}");
    assert!(txt_hits > 0 && txt_hits <= items, "{line}");
}
