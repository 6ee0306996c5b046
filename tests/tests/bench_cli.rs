//! The `bench` subcommands scripts/gpu-check.sh runs on a GPU machine (`bench klot`,
//! `bench daemon`), driven here on the CPU with tiny sizes: their lines parse, the two KLOT
//! engines compute the same step, the daemon path ingests, aligns and answers, and a CUDA device
//! on a build without CUDA is a clear error. No timing is checked (figures only come from runs
//! documented in docs/BENCHMARKS.md).
mod common;

use std::collections::HashMap;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(common::bin())
        .args(args)
        .output()
        .expect("run sotalign")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = run(args);
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sotalign {args:?} failed\nstdout:\n{so}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// `key=value` fields of the lines starting with `prefix`.
fn fields(stdout: &str, prefix: &str) -> Vec<HashMap<String, String>> {
    stdout
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn num(f: &HashMap<String, String>, key: &str) -> f64 {
    f.get(key)
        .unwrap_or_else(|| panic!("no {key} in {f:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {f:?}: {e}"))
}

#[test]
fn bench_klot_engines_agree_on_the_cpu() {
    let mut kl = Vec::new();
    for engine in ["fused", "candle"] {
        let so = stdout_ok(&[
            "bench", "klot", "--device", "cpu", "--engine", engine, "--sizes", "48,64", "--iters",
            "2",
        ]);
        let rows = fields(&so, "klot_step ");
        let sizes: Vec<f64> = rows.iter().map(|r| num(r, "B")).collect();
        assert_eq!(sizes, [48.0, 64.0], "{so}");
        for r in &rows {
            assert_eq!(r["device"], "cpu", "{so}");
            assert_eq!(r["engine"], engine, "{so}");
            assert!(num(r, "best_s") <= num(r, "median_s"), "{so}");
            assert_eq!(num(r, "reps"), 2.0, "{so}");
        }
        kl.push(rows.iter().map(|r| num(r, "kl")).collect::<Vec<_>>());
    }
    // Same affinities, same computation: the fused CPU engine and the candle step agree.
    for (f, c) in kl[0].iter().zip(&kl[1]) {
        assert!(f.is_finite() && *f > 0.0, "KL {f}");
        assert!((f - c).abs() <= 1e-3 * f.abs(), "fused {f} vs candle {c}");
    }
}

#[test]
fn bench_refuses_a_device_it_cannot_open() {
    let out = run(&["bench", "klot", "--device", "cuda", "--sizes", "32"]);
    let se = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(se.contains("--device cuda"), "{se}");
    assert!(!se.contains("panicked"), "{se}");
    // This workspace's tests build without `cuda`: the message says how to get it.
    assert!(se.contains("--features cuda"), "{se}");
    let out = run(&["bench", "klot", "--device", "gpu0"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["bench", "klot", "--engine", "fused", "--iters", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--iters"));
}

#[test]
fn bench_daemon_runs_every_stage_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let so = stdout_ok(&[
        "bench",
        "daemon",
        "--device",
        "cpu",
        "--unpaired",
        "300",
        "--pairs",
        "30",
        "--test",
        "20",
        "--dx",
        "48",
        "--dy",
        "32",
        "--batch",
        "64",
        "--steps",
        "3",
        "--queries",
        "7",
        "--work-dir",
        tmp.path().to_str().unwrap(),
    ]);
    let rows = fields(&so, "daemon_e2e ");
    let stage = |s: &str| {
        rows.iter()
            .find(|r| r.get("stage").map(String::as_str) == Some(s))
            .unwrap_or_else(|| panic!("no {s} line in\n{so}"))
    };
    let ingest = stage("ingest");
    // 30 + 20 pairs and 300 unpaired rows on each side.
    assert_eq!(num(ingest, "rows"), 2.0 * 350.0, "{so}");
    assert!(num(ingest, "rows_per_s") > 0.0, "{so}");
    let closed_form = num(stage("closed_form"), "secs");
    let align = stage("align");
    assert!(closed_form <= num(align, "secs"), "{so}");
    assert_eq!(align["B"], "64", "{so}");
    assert!(
        ["trained", "closed_form"].contains(&align["served"].as_str()),
        "{so}"
    );
    let suggest = stage("suggest");
    assert_eq!(num(suggest, "queries"), 7.0, "{so}");
    assert!(num(suggest, "p50_ms") <= num(suggest, "p99_ms"), "{so}");
}
