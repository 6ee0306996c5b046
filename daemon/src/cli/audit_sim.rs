//! `sotalign audit-sim`: how well the pair audit finds wrong pairs on Tux Paint.
//!
//! Per cell (reference split `"{seed}_{n}"`, corruption rate, corruption draw): take the
//! split's n pairs and unpaired pools, swap the captions of `round(rate * n / 2)` disjoint
//! couples of pairs whose captions differ (a swapped pair is wrong by the metric's own rule),
//! run the audit with each method as the scorer, and report AUROC and precision at the number
//! of corrupted pairs (and how often the audit's suggested caption for a corrupted image is its
//! true one) next to the no-alignment baseline (`audit::linear_baseline`: a ridge linear map
//! fitted on all pairs, corrupted included). The test split is never read.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::data_args::ConfigArgs;
use super::plot::{PlotSpec, Scale, Series, line_plot};
use crate::io::reference::Reference;
use sotalign_engine::AlignData;
use sotalign_engine::audit::{AuditConfig, Partner, audit, auroc, linear_baseline, precision_at};
use sotalign_engine::methods::Method;
use sotalign_engine::progress::ignore;

#[derive(Debug, Args)]
pub struct AuditSimArgs {
    /// Directory of the reference fixtures (tests/fixtures/reference).
    #[arg(long, default_value = "tests/fixtures/reference")]
    pub reference: PathBuf,
    /// Scoring methods (any of `sotalign align`'s).
    #[arg(long, value_delimiter = ',', default_values_t = ["cca".to_string(), "procrustes_w".into(), "csa".into(), "asif_c".into()])]
    pub methods: Vec<String>,
    /// Pair counts (reference split sizes: 25, 50, 100, 200, 400).
    #[arg(long, value_delimiter = ',', default_values_t = vec![200usize, 400])]
    pub sizes: Vec<usize>,
    /// Shares of pairs corrupted.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0.05f64, 0.1, 0.2])]
    pub rates: Vec<f64>,
    /// Reference split seeds.
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
    pub seeds: Vec<u64>,
    /// Corruption draws per split (seeds of which pairs are swapped).
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1])]
    pub draws: Vec<u64>,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 0.1)]
    pub trim: f64,
    #[arg(long, default_value_t = 10)]
    pub hub_k: usize,
    /// Component caps the audit chooses from for cca / csa (`all` = every kept component);
    /// `config` = no choice, the configured cap.
    #[arg(long, value_delimiter = ',', default_values_t = ["16".to_string(), "32".into(), "64".into(), "128".into(), "all".into()])]
    pub components: Vec<String>,
    /// Also run the ablations of the first method, all with the configured component cap (no
    /// choice): one round without hub correction (the plain cross-fitted margin), one round
    /// with it, and every round with it.
    #[arg(long)]
    pub ablation: bool,
    /// Markdown file whose audit section (between `<!-- audit-sim -->` markers) is replaced, or
    /// appended when absent; `-` prints only.
    #[arg(long, default_value = "docs/CURATION.md")]
    pub out: PathBuf,
    #[arg(long, default_value = "docs/audit.png")]
    pub plot: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// One scorer: a label, the method and the audit settings.
struct Scorer {
    label: String,
    method: Option<Method>,
    acfg: AuditConfig,
}

#[derive(Default, Clone)]
struct Cell {
    auroc: Vec<f64>,
    prec: Vec<f64>,
    /// Corrupted pairs whose suggested caption has the image's true caption group.
    repair: Vec<f64>,
    /// Of the pairs `audit::flagged` calls out: the share that is wrong, and the share of wrong
    /// pairs called out.
    flag_prec: Vec<f64>,
    flag_recall: Vec<f64>,
    /// How often the audit chose each component cap.
    caps: BTreeMap<String, usize>,
}

fn cap_name(cap: Option<usize>) -> String {
    cap.map_or_else(|| "all".to_string(), |c| c.to_string())
}

/// `--components`: caps, `all`, or `config` alone (no choice).
fn component_grid(v: &[String]) -> Result<Vec<Option<usize>>> {
    if v.len() == 1 && v[0] == "config" {
        return Ok(Vec::new());
    }
    v.iter()
        .map(|c| match c.as_str() {
            "all" => Ok(None),
            c => match c.parse::<usize>() {
                Ok(k) if k > 0 => Ok(Some(k)),
                _ => bail!("--components takes positive integers, `all` or `config`, got `{c}`"),
            },
        })
        .collect()
}

const BEGIN: &str = "<!-- audit-sim:begin -->";
const END: &str = "<!-- audit-sim:end -->";

pub fn run(args: AuditSimArgs) -> Result<()> {
    let cfg = args.config.build()?;
    for &rate in &args.rates {
        if !(rate > 0.0 && rate <= 0.5) {
            bail!("--rates must be in (0, 0.5], got {rate}");
        }
    }
    let base = AuditConfig {
        folds: args.folds,
        rounds: args.rounds,
        trim: args.trim,
        hub_k: args.hub_k,
        seed: 0,
        component_grid: component_grid(&args.components)?,
    };
    base.validate()?;
    let mut scorers = vec![Scorer {
        label: "baseline (linear map, all pairs)".into(),
        method: None,
        acfg: base.clone(),
    }];
    for (k, m) in args.methods.iter().enumerate() {
        let method: Method = m.parse()?;
        if k == 0 && args.ablation {
            let configured = AuditConfig {
                component_grid: Vec::new(),
                ..base.clone()
            };
            scorers.push(Scorer {
                label: format!("{method} (1 round, raw margin, configured cap)"),
                method: Some(method),
                acfg: AuditConfig {
                    rounds: 1,
                    hub_k: 0,
                    ..configured.clone()
                },
            });
            scorers.push(Scorer {
                label: format!("{method} (1 round, hub-corrected, configured cap)"),
                method: Some(method),
                acfg: AuditConfig {
                    rounds: 1,
                    ..configured.clone()
                },
            });
            scorers.push(Scorer {
                label: format!("{method} ({} rounds, configured cap)", base.rounds),
                method: Some(method),
                acfg: configured,
            });
        }
        scorers.push(Scorer {
            label: method.to_string(),
            method: Some(method),
            acfg: base.clone(),
        });
    }
    let r = Reference::load(&args.reference)
        .with_context(|| format!("loading {}", args.reference.display()))?;
    let t0 = Instant::now();
    // results[(n, rate in per-mille)][scorer] = cell
    let mut results: BTreeMap<(usize, u32), Vec<Cell>> = BTreeMap::new();
    let total = args.sizes.len() * args.rates.len() * args.seeds.len() * args.draws.len();
    let mut done = 0;
    for &n in &args.sizes {
        for &rate in &args.rates {
            for &seed in &args.seeds {
                for &draw in &args.draws {
                    let split = r.run(seed, n)?;
                    let data = r.align_data(split);
                    let (data, wrong, truth) = corrupt(&data, rate, seed * 1000 + draw)?;
                    let m = wrong.iter().filter(|&&w| w).count();
                    let cells = results
                        .entry((n, (rate * 1000.0).round() as u32))
                        .or_insert_with(|| vec![Cell::default(); scorers.len()]);
                    for (s, cell) in scorers.iter().zip(cells.iter_mut()) {
                        let (scores, alts) = match s.method {
                            None => (linear_baseline(&data)?, None),
                            Some(method) => {
                                let acfg = AuditConfig {
                                    seed: draw,
                                    ..s.acfg.clone()
                                };
                                let a = audit(method, &data, &cfg, &acfg, &mut ignore)?;
                                if let Some(cap) = a.components {
                                    *cell.caps.entry(cap_name(cap)).or_default() += 1;
                                }
                                let scores = a.pairs.iter().map(|p| p.suspicion).collect();
                                let f = a.flagged();
                                let alts: Vec<Option<Partner>> =
                                    (0..f.len()).map(|i| a.suggested_text(i, &f)).collect();
                                let hit = (0..f.len()).filter(|&i| f[i] && wrong[i]).count();
                                let n_flag = f.iter().filter(|&&x| x).count();
                                if n_flag > 0 {
                                    cell.flag_prec.push(hit as f64 / n_flag as f64);
                                }
                                cell.flag_recall.push(hit as f64 / m as f64);
                                (scores, Some(alts))
                            }
                        };
                        cell.auroc
                            .push(auroc(&scores, &wrong).context("no corrupted pair")?);
                        cell.prec
                            .push(precision_at(&scores, &wrong, m).context("m = 0")?);
                        if let Some(alts) = alts {
                            let fixed = (0..wrong.len())
                                .filter(|&i| wrong[i])
                                .filter(|&i| {
                                    let g = match alts[i] {
                                        Some(Partner::Pair(j)) => Some(data.pair_groups[j]),
                                        Some(Partner::Unpaired(u)) => {
                                            data.yu_groups.as_ref().and_then(|g| g.get(u).copied())
                                        }
                                        None => None,
                                    };
                                    g == Some(truth[i])
                                })
                                .count();
                            cell.repair.push(fixed as f64 / m as f64);
                        }
                    }
                    done += 1;
                    eprintln!(
                        "[{done}/{total}] n {n} rate {rate} seed {seed} draw {draw} ({:.0} s)",
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let md = render(&args, &scorers, &results, secs)?;
    println!("{md}");
    if args.out.as_os_str() != "-" {
        let old = std::fs::read_to_string(&args.out).unwrap_or_default();
        let section = format!("{BEGIN}\n{md}{END}\n");
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(a), Some(b)) if b > a => {
                format!(
                    "{}{section}{}",
                    &old[..a],
                    old[b + END.len()..].trim_start_matches('\n')
                )
            }
            _ => format!("{old}\n{section}"),
        };
        std::fs::write(&args.out, new)
            .with_context(|| format!("writing {}", args.out.display()))?;
        let mut series = Vec::new();
        for &n in &args.sizes {
            for (k, s) in scorers.iter().enumerate() {
                let points: Vec<(f64, f64)> = args
                    .rates
                    .iter()
                    .filter_map(|&rate| {
                        let c = results.get(&(n, (rate * 1000.0).round() as u32))?;
                        Some((100.0 * rate, super::mean_std(&c[k].auroc).0))
                    })
                    .collect();
                let short = s.label.split(' ').next().unwrap_or("");
                series.push(Series {
                    name: format!("{short} N{n}"),
                    points,
                });
            }
        }
        line_plot(
            &args.plot,
            &PlotSpec {
                title: "TUX PAINT PAIR AUDIT: AUROC VS CORRUPTION",
                x_label: "captions swapped %",
                y_label: "AUROC",
                x_scale: Scale::Linear,
                y_scale: Scale::Linear,
            },
            &series,
        )?;
        eprintln!("wrote {} and {}", args.out.display(), args.plot.display());
    }
    Ok(())
}

/// Swap the captions of disjoint couples of pairs with different caption groups until
/// `round(rate * n)` pairs (rounded down to even) are wrong. Returns the corrupted data, which
/// pairs are wrong, and every pair's true caption group.
fn corrupt(d: &AlignData, rate: f64, seed: u64) -> Result<(AlignData, Vec<bool>, Vec<u32>)> {
    let n = d.n_pairs();
    let target = ((rate * n as f64).round() as usize / 2).max(1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let mut perm: Vec<usize> = (0..n).collect();
    let mut used = vec![false; n];
    let mut couples = 0;
    for a in 0..n {
        if couples == target {
            break;
        }
        let i = order[a];
        if used[i] {
            continue;
        }
        let Some(&j) = order[a + 1..]
            .iter()
            .find(|&&j| !used[j] && d.pair_groups[j] != d.pair_groups[i])
        else {
            continue;
        };
        used[i] = true;
        used[j] = true;
        perm.swap(i, j);
        couples += 1;
    }
    if couples < target {
        bail!("could only plant {couples} of {target} swaps");
    }
    let mut out = d.clone();
    out.yp = d.yp.select_rows(&perm);
    out.pair_groups = perm.iter().map(|&k| d.pair_groups[k]).collect();
    let wrong = (0..n)
        .map(|i| out.pair_groups[i] != d.pair_groups[i])
        .collect();
    Ok((out, wrong, d.pair_groups.clone()))
}

fn render(
    args: &AuditSimArgs,
    scorers: &[Scorer],
    results: &BTreeMap<(usize, u32), Vec<Cell>>,
    secs: f64,
) -> Result<String> {
    let join = |v: &[String]| v.join(",");
    let nums = |v: &[u64]| {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut md = String::new();
    writeln!(
        md,
        "## Measured: pair audit ({} split seeds x {} draws, {:.0} s)\n",
        args.seeds.len(),
        args.draws.len(),
        secs
    )?;
    writeln!(
        md,
        "Command: `sotalign audit-sim --reference {} --methods {} --sizes {} --rates {} --seeds {} --draws {} --folds {} --rounds {} --trim {} --hub-k {} --components {}{} --preset {}`\n",
        args.reference.display(),
        join(&args.methods),
        args.sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.rates
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        nums(&args.seeds),
        nums(&args.draws),
        args.folds,
        args.rounds,
        args.trim,
        args.hub_k,
        join(&args.components),
        if args.ablation { " --ablation" } else { "" },
        args.config.preset,
    )?;
    if let Some(name) = args.plot.file_name() {
        writeln!(
            md,
            "![audit AUROC vs corruption]({})\n",
            name.to_string_lossy()
        )?;
    }
    writeln!(
        md,
        "Mean ± std over cells. AUROC: wrong pairs vs right ones by suspicion; P@m: share of wrong pairs among the m most suspicious (m = number of wrong pairs); re-pair: share of wrong pairs whose suggested caption is their image's true one (the baseline suggests none); flagged: the pairs above `audit::flag_threshold` (what an editor warns about), precision / recall; caps: the component caps the audit chose (cells per cap).\n"
    )?;
    writeln!(
        md,
        "| pairs | swapped | scorer | AUROC | P@m | re-pair | flagged prec. | flagged recall | caps |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for (&(n, pm), cells) in results {
        for (s, c) in scorers.iter().zip(cells) {
            let (a, sa) = super::mean_std(&c.auroc);
            let (p, sp) = super::mean_std(&c.prec);
            let cell = |v: &[f64]| {
                if v.is_empty() {
                    "–".to_string()
                } else {
                    let (r, sr) = super::mean_std(v);
                    format!("{r:.2} ± {sr:.2}")
                }
            };
            let (rp, fp, fr) = (cell(&c.repair), cell(&c.flag_prec), cell(&c.flag_recall));
            let caps = if c.caps.is_empty() {
                "–".to_string()
            } else {
                c.caps
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                md,
                "| {n} | {:.0}% | {} | {a:.3} ± {sa:.3} | {p:.2} ± {sp:.2} | {rp} | {fp} | {fr} | {caps} |",
                pm as f64 / 10.0,
                s.label
            )?;
        }
    }
    writeln!(md)?;
    Ok(md)
}
