//! `sotalign experiment`: the evaluation protocol of tests/fixtures/reference/PROTOCOL.md on the
//! exact reference splits.
//!
//! For each budget n: CSA's s is chosen by our own validation exactly as the reference does
//! (seeds 0 and 1, held-out block, mean MRR; the reference's choice is printed beside ours);
//! then every method is fitted on each (seed, n) cell and evaluated on the fixed test split.
//! The summary (mean +- sample std over seeds, percent) goes to `docs/RESULTS.md` between
//! markers, next to the reference implementation's numbers, with the exact command; closed-form
//! cells are also compared count for count.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;

use super::data_args::ConfigArgs;
use crate::io::reference::{Reference, ReferenceResults, load_tuning};
use sotalign_engine::csa::Csa;
use sotalign_engine::eval::evaluate;
use sotalign_engine::methods::{self, Method, Progress};
use sotalign_engine::teacher::CcaTeacher;
use sotalign_engine::validation::Holdout;
use sotalign_engine::{AlignConfig, Aligned};

#[derive(Debug, Args)]
pub struct ExperimentArgs {
    /// Directory of the reference fixtures (embeddings, splits, results).
    #[arg(long)]
    pub reference: PathBuf,
    /// Pair budgets.
    #[arg(long, value_delimiter = ',', default_values_t = vec![25usize, 50, 100, 200, 400])]
    pub budgets: Vec<usize>,
    /// Seeds (split seeds of the reference).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
    pub seeds: Vec<u64>,
    /// Methods (default: all).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Seeds whose validation chooses CSA's s (the reference used 0 and 1).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1])]
    pub tune_seeds: Vec<u64>,
    /// Markdown file to update (the section between the experiment markers is replaced).
    #[arg(long, default_value = "docs/RESULTS.md")]
    pub out: PathBuf,
    /// Also write every cell's metrics as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where SOTAlign's alpha comes from: `validation` (our own, the protocol's held-out block
    /// on the tune seeds, one fit per grid value: slow), `reference` (the value the reference's
    /// validation chose for that n, from tuxpaint_tuning.json: same hyper-parameters, so the
    /// trained numbers are comparable cell for cell) or `config` (klot.alpha as configured).
    #[arg(long, default_value = "validation", value_parser = ["validation", "reference", "config"])]
    pub alpha_from: String,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Candidate s for CSA (1e9 = all components, as in the reference's tuning file).
const CSA_GRID: [usize; 6] = [8, 16, 32, 64, 128, 1_000_000_000];

#[derive(Debug, Clone, Serialize)]
struct CellResult {
    seed: u64,
    n: usize,
    method: String,
    metrics: BTreeMap<String, f64>,
    /// Whether every reference metric of this cell is reproduced to 1e-9 (closed-form only).
    matches_reference: Option<bool>,
    seconds: f64,
    /// What `auto` chose.
    choice: Option<String>,
    /// What `auto`'s tie rule picks without the learning-curve correction (evidence only).
    #[serde(skip_serializing_if = "Option::is_none")]
    plain_choice: Option<String>,
    /// What the fit adjusted on its own (e.g. the unpaired batch capped to a small pool).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    let base_cfg = args.config.build()?;
    let reference = Reference::load(&args.reference)
        .with_context(|| format!("loading {}", args.reference.display()))?;
    let ref_results = ReferenceResults::load(&args.reference).ok();
    let ref_tuning = load_tuning(&args.reference).ok();
    let methods: Vec<Method> = match &args.methods {
        Some(names) => names.iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
        None => Method::ALL.to_vec(),
    };
    let test = reference.test_set();
    let total =
        (args.budgets.len() * (args.seeds.len() * methods.len() + args.tune_seeds.len())) as u64;
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>28} [{bar:40}] {pos}/{len} {elapsed}/{duration}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let t_start = Instant::now();
    let mut cells: Vec<CellResult> = Vec::new();
    let mut chosen_s: BTreeMap<usize, (usize, Option<usize>)> = BTreeMap::new();
    let mut chosen_alpha: BTreeMap<usize, (f64, Option<f64>)> = BTreeMap::new();
    for &n in &args.budgets {
        // CSA's s by validation, exactly as the reference: mean over tune seeds of mean MRR.
        let mut sums = [0.0f64; CSA_GRID.len()];
        for &seed in &args.tune_seeds {
            pb.set_message(format!("tune csa n={n} seed={seed}"));
            let h = Holdout::new(&reference.align_data(reference.run(seed, n)?))?;
            let teacher = CcaTeacher::fit(&h.train, &base_cfg.teacher)?;
            for (i, &s) in CSA_GRID.iter().enumerate() {
                let csa = Csa::from_teacher(teacher.clone(), Some(s))?;
                sums[i] += h.evaluate(&csa)?.mean_mrr();
            }
            pb.inc(1);
        }
        let mut best = 0;
        for i in 0..CSA_GRID.len() {
            if sums[i] > sums[best] {
                best = i;
            }
        }
        let s = CSA_GRID[best];
        chosen_s.insert(
            n,
            (
                s,
                ref_tuning
                    .as_ref()
                    .and_then(|t| t.get(&n))
                    .map(|c| c.best_csa_s),
            ),
        );
        // SOTAlign's alpha by the same validation (only when sotalign is run): each alpha of
        // the grid trains teacher-initialised heads on the held-out split of each tune seed.
        let ref_alpha = ref_tuning
            .as_ref()
            .and_then(|t| t.get(&n))
            .map(|c| c.best_alpha);
        let alpha = if !methods.contains(&Method::Sotalign) || args.alpha_from == "config" {
            base_cfg.klot.alpha
        } else if args.alpha_from == "reference" {
            let a = ref_alpha.with_context(|| {
                format!("--alpha-from reference: no tuning entry for n={n} in the reference")
            })?;
            chosen_alpha.insert(n, (a, Some(a)));
            a
        } else if methods.contains(&Method::Sotalign) {
            let grid: Vec<f64> = base_cfg
                .klot
                .alpha_grid
                .iter()
                .copied()
                .filter(|&a| a > 0.0)
                .collect();
            let mut sums = vec![0.0f64; grid.len()];
            for &seed in &args.tune_seeds {
                let h = Holdout::new(&reference.align_data(reference.run(seed, n)?))?;
                for (i, &a) in grid.iter().enumerate() {
                    pb.set_message(format!("tune alpha={a} n={n} seed={seed}"));
                    let mut cfg = base_cfg.clone();
                    cfg.klot.alpha = a;
                    let model = methods::fit(Method::Sotalign, &h.train, &cfg, &mut |_| {
                        ControlFlow::Continue(())
                    })?;
                    sums[i] += h.evaluate(model.as_ref())?.mean_mrr();
                }
            }
            let best = (0..grid.len()).fold(0, |b, i| if sums[i] > sums[b] { i } else { b });
            let a = grid.get(best).copied().unwrap_or(base_cfg.klot.alpha);
            chosen_alpha.insert(n, (a, ref_alpha));
            a
        } else {
            base_cfg.klot.alpha
        };
        for &seed in &args.seeds {
            let data = reference.align_data(reference.run(seed, n)?);
            let ref_cell = ref_results.as_ref().and_then(|r| r.run(seed, n));
            for &m in &methods {
                pb.set_message(format!("{m} n={n} seed={seed}"));
                let mut cfg: AlignConfig = base_cfg.clone();
                cfg.csa.s = Some(s);
                cfg.klot.alpha = alpha;
                // Trained heads: a different initialisation and batch stream per split seed.
                cfg.seed = base_cfg.seed.wrapping_add(seed);
                let t0 = Instant::now();
                let bar = pb.clone();
                let mut cb = move |p: &Progress| {
                    bar.set_message(format!(
                        "{m} n={n} seed={seed} {} {}/{}",
                        p.stage, p.step, p.total
                    ));
                    ControlFlow::Continue(())
                };
                let model = methods::fit(m, &data, &cfg, &mut cb)?;
                let seconds = t0.elapsed().as_secs_f64();
                let metrics =
                    evaluate(model.as_ref(), &test.x, &test.y, &test.labels)?.reference_keys();
                let matches_reference =
                    ref_cell.and_then(|c| c.metrics.get(m.name())).map(|want| {
                        want.iter()
                            .all(|(k, v)| metrics.get(k).is_some_and(|g| (g - v).abs() < 1e-9))
                    });
                let choice = auto_choice(model.as_ref(), "choice");
                let plain_choice = auto_choice(model.as_ref(), "plain_choice");
                let notes = fit_notes(model.as_ref());
                for note in &notes {
                    pb.println(format!("note: {m} n={n} seed={seed}: {note}"));
                }
                cells.push(CellResult {
                    seed,
                    n,
                    method: m.name().to_string(),
                    metrics,
                    matches_reference,
                    seconds,
                    choice,
                    plain_choice,
                    notes,
                });
                pb.inc(1);
            }
        }
    }
    pb.finish_and_clear();
    let wall = t_start.elapsed().as_secs_f64();
    if let Some(j) = &args.json {
        std::fs::write(j, serde_json::to_string_pretty(&cells)?)
            .with_context(|| format!("writing {}", j.display()))?;
    }
    let mut section = render(
        &args,
        &cells,
        &chosen_s,
        ref_results.as_ref(),
        test.x.rows,
        wall,
    );
    if !chosen_alpha.is_empty() {
        section.push_str(&format!(
            "\nSOTAlign alpha ({}; the reference's validation chose): {}.\n",
            match args.alpha_from.as_str() {
                "reference" => "taken from the reference's tuning",
                "config" => "as configured",
                _ => "chosen by our validation",
            },
            chosen_alpha
                .iter()
                .map(|(n, (a, r))| format!(
                    "n={n}: {a} ({})",
                    r.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    println!("{section}");
    update_markdown(&args.out, &section)?;
    eprintln!("wrote {} ({wall:.0} s)", args.out.display());
    Ok(())
}

/// A field (`choice`, `plain_choice`) of what `auto` recorded about its choice.
fn auto_choice(model: &dyn Aligned, key: &str) -> Option<String> {
    if model.name() != "auto" {
        return None;
    }
    let st = model.export_state().ok()?;
    st.meta
        .get("auto")
        .and_then(|a| a.get(key))
        .and_then(|c| c.as_str())
        .map(str::to_string)
}

/// Notes a fitted model recorded about itself (trained heads: batch capping).
fn fit_notes(model: &dyn Aligned) -> Vec<String> {
    let Ok(st) = model.export_state() else {
        return Vec::new();
    };
    st.meta
        .get("notes")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn fmt_ms(v: &[f64]) -> String {
    let (m, s) = super::mean_std(&v.iter().map(|x| 100.0 * x).collect::<Vec<_>>());
    format!("{m:.1}±{s:.1}")
}

/// Markdown of the summary tables.
fn render(
    args: &ExperimentArgs,
    cells: &[CellResult],
    chosen_s: &BTreeMap<usize, (usize, Option<usize>)>,
    reference: Option<&ReferenceResults>,
    test_items: usize,
    wall: f64,
) -> String {
    let mut md = String::new();
    let cmd = std::env::args().collect::<Vec<_>>();
    let shown = std::iter::once("sotalign".to_string())
        .chain(cmd.into_iter().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let _ = writeln!(md, "## Tux Paint protocol: ours next to the reference\n");
    let _ = writeln!(
        md,
        "Produced by `{shown}` (wall time {wall:.0} s). Percent, mean ± sample std over seeds {:?}; each cell is `ours / reference`, R@1 then R@5. Test split: {test_items} items, gallery = all test items, ties count against.\n",
        args.seeds
    );
    let methods: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for c in cells {
            if !v.contains(&c.method) {
                v.push(c.method.clone());
            }
        }
        v
    };
    let _ = write!(md, "| method | dir |");
    for n in &args.budgets {
        let _ = write!(md, " n={n} |");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|---|{}", "---|".repeat(args.budgets.len()));
    for m in &methods {
        for dir in ["i2t", "t2i"] {
            let _ = write!(md, "| {m} | {dir} |");
            for &n in &args.budgets {
                let ours: Vec<&CellResult> = cells
                    .iter()
                    .filter(|c| &c.method == m && c.n == n)
                    .collect();
                let get = |k: &str| ours.iter().map(|c| c.metrics[k]).collect::<Vec<_>>();
                let r1 = get(&format!("{dir}_R@1"));
                let r5 = get(&format!("{dir}_R@5"));
                let refs = reference.map(|r| {
                    let vals = |k: &str| {
                        args.seeds
                            .iter()
                            .filter_map(|&s| {
                                r.run(s, n)
                                    .and_then(|c| c.metrics.get(m))
                                    .and_then(|mm| mm.get(k))
                                    .copied()
                            })
                            .collect::<Vec<_>>()
                    };
                    (vals(&format!("{dir}_R@1")), vals(&format!("{dir}_R@5")))
                });
                let rs = match refs {
                    Some((a, b)) if a.len() == args.seeds.len() => {
                        format!(" / {} · {}", fmt_ms(&a), fmt_ms(&b))
                    }
                    _ => " / –".to_string(),
                };
                let _ = write!(md, " {} · {}{rs} |", fmt_ms(&r1), fmt_ms(&r5));
            }
            let _ = writeln!(md);
        }
    }
    let compared: Vec<&CellResult> = cells
        .iter()
        .filter(|c| c.matches_reference.is_some())
        .collect();
    let identical = compared
        .iter()
        .filter(|c| c.matches_reference == Some(true))
        .count();
    let _ = writeln!(
        md,
        "\nCells reproduced to 1e-9 on every reference metric (R@1, R@5, MRR, both directions): {identical} of {} compared.",
        compared.len()
    );
    let mismatched: Vec<String> = compared
        .iter()
        .filter(|c| c.matches_reference == Some(false))
        .map(|c| format!("{} seed {} n {}", c.method, c.seed, c.n))
        .collect();
    if !mismatched.is_empty() {
        let _ = writeln!(md, "Not identical: {}.", mismatched.join(", "));
    }
    let _ = writeln!(
        md,
        "\nCSA s chosen by our validation (reference's choice): {}.",
        chosen_s
            .iter()
            .map(|(n, (s, r))| format!(
                "n={n}: {} ({})",
                s_name(*s),
                r.map(s_name).unwrap_or_else(|| "–".into())
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut noted: BTreeMap<(String, usize), Vec<String>> = BTreeMap::new();
    for c in cells.iter().filter(|c| !c.notes.is_empty()) {
        let e = noted.entry((c.method.clone(), c.n)).or_default();
        for note in &c.notes {
            let line = format!("seed {}: {note}", c.seed);
            if !e.contains(&line) {
                e.push(line);
            }
        }
    }
    if !noted.is_empty() {
        let _ = writeln!(md, "\nNotes from the fits:");
        for ((m, n), lines) in &noted {
            let _ = writeln!(md, "- {m}, n={n}: {}.", lines.join("; "));
        }
    }
    let autos: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            c.choice.as_ref().map(|ch| match &c.plain_choice {
                Some(p) if p != ch => {
                    format!("{}_{}: {ch} (without the learning curve: {p})", c.seed, c.n)
                }
                _ => format!("{}_{}: {ch}", c.seed, c.n),
            })
        })
        .collect();
    if !autos.is_empty() {
        let _ = writeln!(
            md,
            "\n`auto` choices (seed_n: candidate): {}.",
            autos.join("; ")
        );
        let _ = writeln!(md, "\n{}", auto_vs_best(args, cells));
    }
    md
}

fn s_name(s: usize) -> String {
    if s >= 1_000_000_000 {
        "all".into()
    } else {
        s.to_string()
    }
}

/// Per n: auto's mean R@1 (both directions averaged) next to the best single method's.
fn auto_vs_best(args: &ExperimentArgs, cells: &[CellResult]) -> String {
    let mut md = String::from(
        "| n | auto mean R@1 | best single method (mean R@1) | auto − best |\n|---|---|---|---|\n",
    );
    for &n in &args.budgets {
        let mean_r1 = |m: &str| {
            let v: Vec<f64> = cells
                .iter()
                .filter(|c| c.method == m && c.n == n)
                .map(|c| 0.5 * (c.metrics["i2t_R@1"] + c.metrics["t2i_R@1"]))
                .collect();
            (!v.is_empty()).then(|| 100.0 * v.iter().sum::<f64>() / v.len() as f64)
        };
        let Some(a) = mean_r1("auto") else { continue };
        let mut best: Option<(String, f64)> = None;
        for c in cells.iter().filter(|c| c.n == n && c.method != "auto") {
            if let Some(v) = mean_r1(&c.method)
                && best.as_ref().is_none_or(|b| v > b.1)
            {
                best = Some((c.method.clone(), v));
            }
        }
        if let Some((bm, bv)) = best {
            let _ = writeln!(md, "| {n} | {a:.1} | {bm} ({bv:.1}) | {:+.1} |", a - bv);
        }
    }
    md
}

const BEGIN: &str = "<!-- sotalign experiment: begin -->";
const END: &str = "<!-- sotalign experiment: end -->";

/// Replace the marked section of `path` (or append it), keeping everything else.
fn update_markdown(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &old[..a], &old[b + END.len()..]),
        _ if old.is_empty() => format!("# Results\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    crate::io::write_atomic(path, new.as_bytes())?;
    Ok(())
}
