//! `sotalign simulate`: the curation loop with an oracle on the reference Tux Paint split.
//!
//! Per seed: start from the reference's n0 = 25 paired rows (`"{seed}_25"`); every other
//! non-test row is the pool (its images and its texts, correspondence hidden). Each round a
//! strategy proposes `b` pairs; the oracle accepts a proposal when the two captions are equal
//! (the metric's rule) and rejects it otherwise; accepted pairs join the paired set and the model
//! is re-fitted (closed-form CCA teacher by default). Every proposal judged is one label,
//! accepted or not. The test split is never touched except for evaluation.
//!
//! `random-pairs` is the passive baseline: each label reveals one randomly chosen true pair
//! (an annotator captioning random images), so it never wastes a label.
//!
//! Selection strategies (`typiclust`) choose *which* images the annotator captions: one label =
//! one captioned image = one true pair. `hybrid` captions `typiclust` picks until the precision
//! of the model's `mnn` proposals, estimated online from the annotator's own answers
//! ([`Hybrid`]), reaches a threshold, then judges `mnn` proposals (one label = one yes/no).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::data_args::ConfigArgs;
use super::plot::{PlotSpec, Scale, Series, line_plot};
use crate::io::reference::Reference;
use sotalign_engine::AlignData;
use sotalign_engine::acquire::{AcquireConfig, Decisions, Strategy, propose};
use sotalign_engine::data::Negatives;
use sotalign_engine::eval::{distinct_rank, evaluate};
use sotalign_engine::methods::{Method, fit_quiet};
use sotalign_engine::select::{Hybrid, HybridConfig, Mode, TypiclustConfig, typiclust};
use sotalign_engine::{Aligned, Matrix};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Directory of the reference fixtures (tests/fixtures/reference).
    #[arg(long, default_value = "tests/fixtures/reference")]
    pub reference: PathBuf,
    /// Strategies: random-pairs, typiclust, hybrid (caption selections) and random,
    /// confidence, mnn, ot, diverse, mnn-ot (judge proposals).
    #[arg(long, value_delimiter = ',', default_values_t = ["random-pairs".to_string(), "random".into(), "confidence".into(), "mnn".into(), "ot".into(), "diverse".into()])]
    pub strategies: Vec<String>,
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
    pub seeds: Vec<u64>,
    /// Initial pairs (a reference split size: 25, 50, 100, 200 or 400).
    #[arg(long, default_value_t = 25)]
    pub n0: usize,
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Proposals judged per round.
    #[arg(long, default_value_t = 20)]
    pub batch: usize,
    /// Feature space `typiclust` clusters in: `encoder` (the image encoder's features) or
    /// `model` (the current model's shared space, re-computed every round) or `centred`
    /// (encoder features minus their mean over pool and paired images: the encoder's
    /// post-ReLU features are all positive, so raw cosines are all high).
    #[arg(long, default_value = "encoder")]
    pub select_space: String,
    /// `hybrid` switches from captioning to judging when the estimated precision of `mnn`
    /// proposals reaches this.
    #[arg(long, default_value_t = 0.5)]
    pub hybrid_threshold: f64,
    /// `typiclust` clusters (default: paired + batch, TypiClust's choice).
    #[arg(long)]
    pub typiclust_k: Option<usize>,
    /// `typiclust` typicality neighbours.
    #[arg(long, default_value_t = 20)]
    pub typiclust_knn: usize,
    /// Re-alignment method (`cca` = the closed-form teacher; `sotalign` is much slower).
    #[arg(long, default_value = "cca")]
    pub method: String,
    /// Markdown to write (table + command); the plot goes beside it.
    #[arg(long, default_value = "docs/CURATION.md")]
    pub out: PathBuf,
    #[arg(long, default_value = "docs/curation.png")]
    pub plot: PathBuf,
    /// Rejected pairs enter the trained methods' loss as negatives (SigLIP cells with z = -1);
    /// `false` measures the same loop without them. The closed-form methods ignore them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub negatives: bool,
    /// Run every strategy twice, with rejected pairs as negatives and without (`--negatives`
    /// is then ignored), same seeds and splits, and report the difference: R@1 per round and
    /// the labels each needs to reach the other's final R@1.
    #[arg(long)]
    pub compare_negatives: bool,
    /// Effort plot (median captions read per pair found, per round).
    #[arg(long, default_value = "docs/curation_effort.png")]
    pub effort_plot: PathBuf,
    /// Effort: past this rank the annotator stops reading the list and searches instead.
    #[arg(long, default_value_t = 50)]
    pub search_after: usize,
    /// Effort: what a search costs, in captions read, on top of the `--search-after` read first.
    #[arg(long, default_value_t = 10)]
    pub search_cost: usize,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    labels: usize,
    /// Labels spent captioning (the rest judged proposals).
    captions: usize,
    pairs: usize,
    correct: usize,
    r1_i2t: f64,
    r1_t2i: f64,
    /// `hybrid` only: its precision estimate after the round's answers, and whether it will
    /// judge (rather than caption) next round.
    hybrid: Option<(f64, bool)>,
    /// Effort of every pair found in the round that starts here, under this point's model: the
    /// rank of its caption in the list the tool shows (captions read, identical ones once), or
    /// for judged proposals the proposals read since the previous pair found. Raw ranks; the
    /// search rule is applied when reporting.
    paid: Vec<usize>,
    /// The same pairs' captions read in store order (no model).
    paid_store: Vec<usize>,
    /// Every pool image not yet paired: the rank of its caption under this point's model.
    remaining: Vec<usize>,
    /// The same in store order.
    remaining_store: Vec<usize>,
}

/// Rank (1-based, identical captions once) of caption group `target` in the list the tool shows
/// for pool image `k`: the pool texts not yet confirmed and not rejected with `k`, ranked by
/// `scores` (the model's cosine, row `k`), and the same in store order (the text pool's order).
/// `None` when no visible text carries `target`.
fn effort_ranks(
    scores: &Matrix,
    k: usize,
    text_groups: &[u32],
    target: u32,
    dec: &Decisions,
) -> Result<Option<(usize, usize)>> {
    let taken: std::collections::HashSet<usize> = dec.confirmed.iter().map(|p| p.1).collect();
    let visible: Vec<usize> = (0..text_groups.len())
        .filter(|c| !taken.contains(c) && !dec.rejected.contains(&(k, *c)))
        .collect();
    let labels: Vec<u32> = visible.iter().map(|&c| text_groups[c]).collect();
    let row = scores.row(k);
    let model: Vec<f64> = visible.iter().map(|&c| row[c] as f64).collect();
    let store: Vec<f64> = visible.iter().map(|&c| -(c as f64)).collect();
    Ok(
        match (
            distinct_rank(&model, &labels, target)?,
            distinct_rank(&store, &labels, target)?,
        ) {
            (Some(m), Some(s)) => Some((m, s)),
            _ => None,
        },
    )
}

#[derive(Debug, Clone, Copy)]
enum Space {
    Encoder,
    Centred,
    Model,
}

#[derive(Clone, Copy)]
enum Strat {
    Passive,
    Active(Strategy),
    Typiclust,
    Hybrid,
}

pub fn run(args: SimulateArgs) -> Result<()> {
    let cfg = args.config.build()?;
    let method: Method = args.method.parse()?;
    let r = Reference::load(&args.reference)
        .with_context(|| format!("loading {}", args.reference.display()))?;
    let test = r.test_set();
    let strats: Vec<(String, Strat)> = args
        .strategies
        .iter()
        .map(|s| {
            let s = s.trim().to_ascii_lowercase();
            Ok(if s == "random-pairs" {
                (s, Strat::Passive)
            } else if s == "typiclust" {
                (s, Strat::Typiclust)
            } else if s == "hybrid" {
                (s, Strat::Hybrid)
            } else {
                (s.clone(), Strat::Active(s.parse()?))
            })
        })
        .collect::<Result<_>>()?;
    let acq = AcquireConfig::default();
    let space = match args.select_space.as_str() {
        "model" => Space::Model,
        "encoder" => Space::Encoder,
        "centred" => Space::Centred,
        other => bail!("--select-space must be `encoder`, `centred` or `model`, got `{other}`"),
    };
    let hcfg = HybridConfig {
        threshold: args.hybrid_threshold,
        ..HybridConfig::default()
    };
    Hybrid::new(hcfg.clone())?;
    // (name suffix, rejected pairs as negatives) of each run of a strategy.
    let variants: Vec<(&str, bool)> = if args.compare_negatives {
        vec![("", true), (NO_NEGATIVES, false)]
    } else {
        vec![("", args.negatives)]
    };
    let shown: Vec<(String, Strat)> = strats
        .iter()
        .flat_map(|(n, s)| {
            variants
                .iter()
                .map(move |(suf, _)| (format!("{n}{suf}"), *s))
        })
        .collect();
    let total = (shown.len() * args.seeds.len() * (args.rounds + 1)) as u64;
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>26} [{bar:40}] {pos}/{len} {elapsed}/{duration}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let t0 = Instant::now();
    // curves[strategy][seed] = points
    let mut curves: BTreeMap<String, Vec<Vec<Point>>> = BTreeMap::new();
    let runs = strats.iter().flat_map(|(n, st)| {
        variants
            .iter()
            .map(move |&(suffix, neg)| (format!("{n}{suffix}"), *st, neg))
    });
    for (name, strat, use_negatives) in runs {
        let strat = &strat;
        for &seed in &args.seeds {
            let split = r.run(seed, args.n0)?;
            let init: Vec<usize> = split.paired.clone();
            let mut pool: Vec<usize> = r
                .nontest
                .iter()
                .copied()
                .filter(|i| !init.contains(i))
                .collect();
            pool.sort_unstable();
            let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
            // Text order hidden from the strategies: an independent shuffle of the pool.
            let mut pool_t = pool.clone();
            pool_t.shuffle(&mut rng);
            let images = r.img.select_rows(&pool);
            let texts = r.txt.select_rows(&pool_t);
            let mut passive_order: Vec<usize> = (0..pool.len()).collect();
            passive_order.shuffle(&mut rng);
            let mut dec = Decisions::default();
            // Position of each reference row in the shuffled text pool (a caption's text).
            let text_pos: std::collections::HashMap<usize, usize> = pool_t
                .iter()
                .enumerate()
                .map(|(c, &row)| (row, c))
                .collect();
            let mut hybrid = Hybrid::new(hcfg.clone())?;
            let text_groups: Vec<u32> = pool_t.iter().map(|&row| r.groups[row]).collect();
            // Judged proposals read since the last pair found (carried across rounds).
            let mut reads_since = 0usize;
            let mut captions = 0usize;
            // Pairs as (image row, text row) in the reference matrices.
            let mut pairs: Vec<(usize, usize)> = init.iter().map(|&i| (i, i)).collect();
            let (mut labels, mut correct) = (0usize, 0usize);
            let mut points = Vec::new();
            for round in 0..=args.rounds {
                pb.set_message(format!("{name} seed {seed} round {round}"));
                let data = build_data(&r, &pairs, &pool, &pool_t, &dec, use_negatives);
                let model = fit_quiet(method, &data, &cfg)?;
                let rep = evaluate(model.as_ref(), &test.x, &test.y, &test.labels)?;
                // The list the tool shows: cosine of the aligned embeddings (the daemon's index).
                let scores = model
                    .embed_x(&images)?
                    .l2_normalized()
                    .matmul_t(&model.embed_y(&texts)?.l2_normalized());
                let paired_imgs: std::collections::HashSet<usize> =
                    dec.confirmed.iter().map(|p| p.0).collect();
                let (mut remaining, mut remaining_store) = (Vec::new(), Vec::new());
                for k in (0..images.rows).filter(|k| !paired_imgs.contains(k)) {
                    if let Some((m, st)) =
                        effort_ranks(&scores, k, &text_groups, r.groups[pool[k]], &dec)?
                    {
                        remaining.push(m);
                        remaining_store.push(st);
                    }
                }
                let (mut paid, mut paid_store) = (Vec::new(), Vec::new());
                points.push(Point {
                    labels,
                    captions,
                    pairs: pairs.len(),
                    correct,
                    r1_i2t: rep.i2t.r1,
                    r1_t2i: rep.t2i.r1,
                    hybrid: matches!(strat, Strat::Hybrid)
                        .then(|| (hybrid.estimate(), hybrid.mode() == Mode::Judge)),
                    paid: Vec::new(),
                    paid_store: Vec::new(),
                    remaining,
                    remaining_store,
                });
                pb.inc(1);
                if round == args.rounds {
                    break;
                }
                // Effort of a caption label: the rank of the image's true caption.
                let mut caption_effort = |k: usize, dec: &Decisions| -> Result<()> {
                    if let Some((m, st)) =
                        effort_ranks(&scores, k, &text_groups, r.groups[pool[k]], dec)?
                    {
                        paid.push(m);
                        paid_store.push(st);
                    }
                    Ok(())
                };
                let mode = match strat {
                    Strat::Typiclust => Some(Mode::Caption),
                    Strat::Hybrid => Some(hybrid.mode()),
                    _ => None,
                };
                match strat {
                    Strat::Typiclust | Strat::Hybrid if mode == Some(Mode::Caption) => {
                        // The model's mutual-NN proposal of each image, for the hybrid's
                        // free precision estimate (computed before this round's decisions).
                        let shadow = if matches!(strat, Strat::Hybrid) {
                            propose(
                                model.as_ref(),
                                &images,
                                &texts,
                                &dec,
                                Strategy::Mnn,
                                images.rows,
                                &acq,
                                &mut rng,
                            )?
                        } else {
                            Vec::new()
                        };
                        let picks = select_images(
                            model.as_ref(),
                            space,
                            &r.img,
                            &images,
                            &pairs,
                            &dec,
                            args.batch,
                            &TypiclustConfig {
                                seed: seed * 1000 + round as u64,
                                clusters: args.typiclust_k,
                                knn: args.typiclust_knn,
                                ..TypiclustConfig::default()
                            },
                        )?;
                        for k in picks {
                            let row = pool[k];
                            if let Some(p) = shadow.iter().find(|p| p.image == k && p.mutual_nn) {
                                hybrid.observe(r.groups[row] == r.groups[pool_t[p.text]]);
                            }
                            let c = *text_pos
                                .get(&row)
                                .context("pool text of a captioned image")?;
                            caption_effort(k, &dec)?;
                            dec.confirm(k, c);
                            pairs.push((row, row));
                            labels += 1;
                            captions += 1;
                            correct += 1;
                        }
                    }
                    Strat::Passive => {
                        for _ in 0..args.batch {
                            if let Some(k) = passive_order.pop() {
                                let c = *text_pos
                                    .get(&pool[k])
                                    .context("pool text of a captioned image")?;
                                caption_effort(k, &dec)?;
                                dec.confirm(k, c);
                                pairs.push((pool[k], pool[k]));
                                labels += 1;
                                captions += 1;
                                correct += 1;
                            }
                        }
                    }
                    Strat::Active(_) | Strat::Typiclust | Strat::Hybrid => {
                        let st = match strat {
                            Strat::Active(st) => *st,
                            _ => Strategy::Mnn,
                        };
                        let props = propose(
                            model.as_ref(),
                            &images,
                            &texts,
                            &dec,
                            st,
                            args.batch,
                            &acq,
                            &mut rng,
                        )?;
                        for p in props {
                            labels += 1;
                            reads_since += 1;
                            let (ri, rt) = (pool[p.image], pool_t[p.text]);
                            let ok = r.groups[ri] == r.groups[rt];
                            hybrid.observe(ok);
                            if ok {
                                paid.push(reads_since);
                                reads_since = 0;
                                if let Some((_, st)) = effort_ranks(
                                    &scores,
                                    p.image,
                                    &text_groups,
                                    r.groups[ri],
                                    &dec,
                                )? {
                                    paid_store.push(st);
                                }
                                dec.confirm(p.image, p.text);
                                pairs.push((ri, rt));
                                correct += 1;
                            } else {
                                dec.reject(p.image, p.text);
                            }
                        }
                    }
                }
                if let Some(pt) = points.last_mut() {
                    pt.paid = paid;
                    pt.paid_store = paid_store;
                }
            }
            curves.entry(name.clone()).or_default().push(points);
        }
    }
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let md = render(&args, &shown, &curves, secs)?;
    println!("{md}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    let series: Vec<Series> = shown
        .iter()
        .filter_map(|(n, _)| {
            let c = curves.get(n)?;
            Some(Series {
                name: n.clone(),
                points: mean_curve(c).iter().map(|p| (p.0, 100.0 * p.1)).collect(),
            })
        })
        .collect();
    line_plot(
        &args.plot,
        &PlotSpec {
            title: &format!("TUX PAINT: TEST R@1 VS LABELS ({})", args.method),
            x_label: "labels spent",
            y_label: "R@1 % (mean i2t,t2i)",
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
        },
        &series,
    )?;
    let effort_series: Vec<Series> = shown
        .iter()
        .filter_map(|(n, _)| {
            let c = curves.get(n)?;
            Some(Series {
                name: n.clone(),
                points: effort_curve(c, &args)
                    .iter()
                    .filter_map(|&(l, m, _)| Some((l, m?.max(1.0))))
                    .collect(),
            })
        })
        .chain(curves.get("random-pairs").map(|c| {
            Series {
                name: "store order".into(),
                points: effort_curve(c, &args)
                    .iter()
                    .filter_map(|&(l, _, s)| Some((l, s?.max(1.0))))
                    .collect(),
            }
        }))
        .collect();
    line_plot(
        &args.effort_plot,
        &PlotSpec {
            title: &format!("TUX PAINT: CAPTIONS READ PER PAIR FOUND ({})", args.method),
            x_label: "labels spent (end of round)",
            y_label: "median captions read",
            x_scale: Scale::Linear,
            y_scale: Scale::Log10,
        },
        &effort_series,
    )?;
    eprintln!(
        "wrote {}, {} and {}",
        args.out.display(),
        args.plot.display(),
        args.effort_plot.display()
    );
    Ok(())
}

/// Images to caption next by `typiclust`, as pool indices: clustered in the image encoder's
/// space or in the current model's shared space, with the paired images as the labeled rows.
#[allow(clippy::too_many_arguments)]
fn select_images(
    model: &dyn Aligned,
    space: Space,
    all_images: &Matrix,
    images: &Matrix,
    pairs: &[(usize, usize)],
    dec: &Decisions,
    b: usize,
    cfg: &TypiclustConfig,
) -> Result<Vec<usize>> {
    let used: std::collections::HashSet<usize> = dec.confirmed.iter().map(|p| p.0).collect();
    let avail: Vec<usize> = (0..images.rows).filter(|k| !used.contains(k)).collect();
    let pool = images.select_rows(&avail);
    let labeled = all_images.select_rows(&pairs.iter().map(|p| p.0).collect::<Vec<_>>());
    let (pool, labeled) = match space {
        Space::Model => (model.embed_x(&pool)?, model.embed_x(&labeled)?),
        Space::Encoder => (pool, labeled),
        Space::Centred => {
            let n = (pool.rows + labeled.rows).max(1) as f32;
            let mut mean = vec![0f32; pool.cols];
            for m in [&pool, &labeled] {
                for i in 0..m.rows {
                    for (a, &v) in mean.iter_mut().zip(m.row(i)) {
                        *a += v / n;
                    }
                }
            }
            let centre = |m: &Matrix| {
                let mut c = m.clone();
                for i in 0..c.rows {
                    for (v, &a) in c.row_mut(i).iter_mut().zip(&mean) {
                        *v -= a;
                    }
                }
                c
            };
            (centre(&pool), centre(&labeled))
        }
    };
    Ok(typiclust(&pool, &labeled, b, cfg)?
        .into_iter()
        .map(|a| avail[a])
        .collect())
}

/// Training data: the pairs, and the pool items not yet confirmed as unpaired data.
fn build_data(
    r: &Reference,
    pairs: &[(usize, usize)],
    pool: &[usize],
    pool_t: &[usize],
    dec: &Decisions,
    negatives: bool,
) -> AlignData {
    let ci: std::collections::HashSet<usize> = dec.confirmed.iter().map(|p| p.0).collect();
    let ct: std::collections::HashSet<usize> = dec.confirmed.iter().map(|p| p.1).collect();
    let ui: Vec<usize> = (0..pool.len())
        .filter(|k| !ci.contains(k))
        .map(|k| pool[k])
        .collect();
    let ut: Vec<usize> = (0..pool_t.len())
        .filter(|k| !ct.contains(k))
        .map(|k| pool_t[k])
        .collect();
    let pi: Vec<usize> = pairs.iter().map(|p| p.0).collect();
    let pt: Vec<usize> = pairs.iter().map(|p| p.1).collect();
    let rejected = dec.negatives();
    let negatives = (negatives && !rejected.is_empty()).then(|| Negatives {
        x: r.img
            .select_rows(&rejected.iter().map(|p| pool[p.0]).collect::<Vec<_>>()),
        y: r.txt
            .select_rows(&rejected.iter().map(|p| pool_t[p.1]).collect::<Vec<_>>()),
    });
    AlignData {
        xp: r.img.select_rows(&pi),
        yp: r.txt.select_rows(&pt),
        xu: r.img.select_rows(&ui),
        yu: r.txt.select_rows(&ut),
        pair_groups: pt.iter().map(|&i| r.groups[i]).collect(),
        yu_groups: Some(ut.iter().map(|&i| r.groups[i]).collect()),
        negatives,
    }
}

/// (labels, mean over seeds of the mean of both directions' R@1) per round.
fn mean_curve(c: &[Vec<Point>]) -> Vec<(f64, f64)> {
    let rounds = c.iter().map(|v| v.len()).min().unwrap_or(0);
    (0..rounds)
        .map(|k| {
            let n = c.len() as f64;
            let l = c.iter().map(|v| v[k].labels as f64).sum::<f64>() / n;
            let y = c
                .iter()
                .map(|v| 0.5 * (v[k].r1_i2t + v[k].r1_t2i))
                .sum::<f64>()
                / n;
            (l, y)
        })
        .collect()
}

fn render(
    args: &SimulateArgs,
    strats: &[(String, Strat)],
    curves: &BTreeMap<String, Vec<Vec<Point>>>,
    secs: f64,
) -> Result<String> {
    let mut md = String::new();
    let cmd = format!(
        "sotalign simulate --reference {} --strategies {} --seeds {} --n0 {} --rounds {} --batch {} --method {} --select-space {} --hybrid-threshold {} --negatives {} --search-after {} --search-cost {}",
        args.reference.display(),
        args.strategies.join(","),
        args.seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.n0,
        args.rounds,
        args.batch,
        args.method,
        args.select_space,
        args.hybrid_threshold,
        args.negatives,
        args.search_after,
        args.search_cost
    ) + if args.compare_negatives {
        " --compare-negatives"
    } else {
        ""
    };
    writeln!(
        md,
        "## Measured ({} seeds, {:.0} s)\n",
        args.seeds.len(),
        secs
    )?;
    writeln!(md, "Command: `{cmd}`\n")?;
    writeln!(md, "![R@1 vs labels](curation.png)\n")?;
    writeln!(
        md,
        "Final round, percent, mean ± std over seeds. `labels` = captions written + proposals judged (accepted or rejected), one label each; `pairs` = paired set size (n0 + captions + accepted); `precision` = accepted / judged (– when nothing was judged).\n"
    )?;
    writeln!(
        md,
        "| strategy | labels | captions | judged | pairs | precision | i2t R@1 | t2i R@1 | mean R@1 |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for (name, _) in strats {
        let Some(c) = curves.get(name) else { continue };
        let last: Vec<&Point> = c.iter().filter_map(|v| v.last()).collect();
        let f = |g: &dyn Fn(&Point) -> f64| {
            super::mean_std(&last.iter().map(|p| g(p)).collect::<Vec<_>>())
        };
        let (l, _) = f(&|p| p.labels as f64);
        let (np, _) = f(&|p| p.pairs as f64);
        let (cap, _) = f(&|p| p.captions as f64);
        let judged: usize = last.iter().map(|p| p.labels - p.captions).sum();
        let accepted: usize = last.iter().map(|p| p.correct - p.captions).sum();
        let pr = if judged > 0 {
            format!("{:.0}%", 100.0 * accepted as f64 / judged as f64)
        } else {
            "–".to_string()
        };
        let (a, sa) = f(&|p| 100.0 * p.r1_i2t);
        let (b, sb) = f(&|p| 100.0 * p.r1_t2i);
        let (m, sm) = f(&|p| 50.0 * (p.r1_i2t + p.r1_t2i));
        writeln!(
            md,
            "| {name} | {l:.0} | {cap:.0} | {:.0} | {np:.1} | {pr} | {a:.1}±{sa:.1} | {b:.1}±{sb:.1} | {m:.1}±{sm:.1} |",
            l - cap
        )?;
    }
    writeln!(
        md,
        "\nMean R@1 (percent, mean of both directions and of seeds) after each round:\n"
    )?;
    let mut header = "| strategy |".to_string();
    let mut sep = "|---|".to_string();
    for k in 0..=args.rounds {
        write!(header, " {} |", k * args.batch)?;
        sep.push_str("---|");
    }
    writeln!(md, "{header}\n{sep}")?;
    for (name, _) in strats {
        let Some(c) = curves.get(name) else { continue };
        let mut line = format!("| {name} |");
        for (_, y) in mean_curve(c) {
            write!(line, " {:.1} |", 100.0 * y)?;
        }
        writeln!(md, "{line}")?;
    }
    // The hybrid's trace: precision estimate after each round, `J` where it judged next.
    if let Some(c) = curves.get("hybrid") {
        writeln!(
            md,
            "\n`hybrid` (threshold {}): estimated `mnn` precision after each round, per seed (`*` = the next round judged proposals):\n",
            args.hybrid_threshold
        )?;
        for (seed, v) in args.seeds.iter().zip(c) {
            let cells: Vec<String> = v
                .iter()
                .filter_map(|p| p.hybrid)
                .map(|(e, j)| format!("{:.2}{}", e, if j { "*" } else { "" }))
                .collect();
            writeln!(md, "- seed {seed}: {}", cells.join(" "))?;
        }
    }
    if args.compare_negatives {
        render_negatives(&mut md, args, strats, curves)?;
    }
    render_effort(&mut md, args, strats, curves)?;
    // The goal: labels the best strategy needs to reach random labelling's final R@1.
    // Also an intermediate target: the baseline's R@1 at half its final labels.
    if let Some(base) = curves.get("random-pairs").map(|c| mean_curve(c)) {
        let Some(&(bl_final, _)) = base.last() else {
            bail!("empty baseline")
        };
        let mid = base
            .iter()
            .min_by(|p, q| {
                (p.0 - bl_final / 2.0)
                    .abs()
                    .total_cmp(&(q.0 - bl_final / 2.0).abs())
            })
            .copied();
        let targets = [base.last().copied(), mid];
        for (which, t) in ["final", "intermediate"].iter().zip(targets) {
            let Some((bl, target)) = t else { continue };
            writeln!(
                md,
                "\nTarget ({which}): `random-pairs` reaches {:.1}% mean R@1 with {bl:.0} labels.\n",
                100.0 * target
            )?;
            for (name, _) in strats {
                if name == "random-pairs" {
                    continue;
                }
                let Some(c) = curves.get(name) else { continue };
                match mean_curve(c).iter().find(|p| p.1 >= target) {
                    Some(&(l, _)) => writeln!(
                        md,
                        "- {name}: reaches it at {l:.0} labels ({:.2} x the baseline's labels)",
                        l / bl.max(1.0)
                    )?,
                    None => writeln!(
                        md,
                        "- {name}: does not reach it within {bl_final:.0} labels"
                    )?,
                }
            }
        }
    }
    Ok(md)
}

/// Name suffix of a strategy's run without rejected pairs as negatives (`--compare-negatives`).
const NO_NEGATIVES: &str = " (no negatives)";

/// `--compare-negatives`: each strategy with and without rejected pairs as negatives, same
/// seeds: mean R@1 per round and the per-seed difference, pairs found, and the labels each
/// run needs to reach the other's final R@1.
fn render_negatives(
    md: &mut String,
    args: &SimulateArgs,
    shown: &[(String, Strat)],
    curves: &BTreeMap<String, Vec<Vec<Point>>>,
) -> Result<()> {
    writeln!(
        md,
        "\n### Rejected pairs as negatives vs not (`--compare-negatives`, method `{}`)\n",
        args.method
    )?;
    writeln!(
        md,
        "Mean R@1 in percent (both directions, mean over seeds) after each round: with the rejections as SigLIP negatives / without / difference (mean ± std over seeds of the per-seed difference). `judged` and `rejected` are per seed, cumulative.\n"
    )?;
    writeln!(
        md,
        "| strategy | labels | judged | rejected | pairs (with / without) | with | without | difference |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    let mut reach = Vec::new();
    for (name, _) in shown.iter().filter(|(n, _)| !n.ends_with(NO_NEGATIVES)) {
        let (Some(w), Some(wo)) = (
            curves.get(name),
            curves.get(&format!("{name}{NO_NEGATIVES}")),
        ) else {
            continue;
        };
        let rounds = w.iter().chain(wo).map(|v| v.len()).min().unwrap_or(0);
        let mean_r1 = |p: &Point| 50.0 * (p.r1_i2t + p.r1_t2i);
        for k in 0..rounds {
            let at = |c: &[Vec<Point>], g: &dyn Fn(&Point) -> f64| {
                super::mean_std(&c.iter().map(|v| g(&v[k])).collect::<Vec<_>>()).0
            };
            let diffs: Vec<f64> = w
                .iter()
                .zip(wo)
                .map(|(a, b)| mean_r1(&a[k]) - mean_r1(&b[k]))
                .collect();
            let (d, sd) = super::mean_std(&diffs);
            let judged = at(w, &|p| (p.labels - p.captions) as f64);
            let rejected = at(w, &|p| (p.labels - p.correct) as f64);
            writeln!(
                md,
                "| {name} | {:.0} | {judged:.0} | {rejected:.0} | {:.1} / {:.1} | {:.1} | {:.1} | {d:+.1} ± {sd:.1} |",
                at(w, &|p| p.labels as f64),
                at(w, &|p| p.pairs as f64),
                at(wo, &|p| p.pairs as f64),
                at(w, &mean_r1),
                at(wo, &mean_r1),
            )?;
        }
        let (cw, cwo) = (mean_curve(w), mean_curve(wo));
        let first_at = |c: &[(f64, f64)], target: f64| {
            c.iter()
                .find(|p| p.1 >= target - 1e-12)
                .map_or("not within the run".to_string(), |p| {
                    format!("{:.0} labels", p.0)
                })
        };
        if let (Some(&(lw, fw)), Some(&(lwo, fwo))) = (cw.last(), cwo.last()) {
            reach.push(format!(
                "- {name}: with negatives it reaches the final R@1 of the run without them ({:.1}% at {lwo:.0} labels) at {}; without them it reaches the final R@1 of the run with them ({:.1}% at {lw:.0} labels) at {}.",
                100.0 * fwo,
                first_at(&cw, fwo),
                100.0 * fw,
                first_at(&cwo, fw)
            ));
        }
    }
    writeln!(md, "\nLabels to target:\n")?;
    for line in reach {
        writeln!(md, "{line}")?;
    }
    Ok(())
}

/// What one pair found costs the annotator, in captions read: its rank, or past
/// `search_after` the ranks read plus a search.
fn effort_cost(rank: usize, args: &SimulateArgs) -> usize {
    if rank <= args.search_after {
        rank
    } else {
        args.search_after + args.search_cost
    }
}

fn median(v: &[usize]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2] as f64
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2]) as f64
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |x| format!("{x:.0}"))
}

/// Per round (pooled over seeds): median cost of the pairs found in that round, with the search
/// rule, and the median store-order count of the same pairs.
fn effort_curve(c: &[Vec<Point>], args: &SimulateArgs) -> Vec<(f64, Option<f64>, Option<f64>)> {
    let rounds = c.iter().map(|v| v.len()).min().unwrap_or(0);
    (0..rounds.saturating_sub(1))
        .map(|k| {
            let paid: Vec<usize> = c
                .iter()
                .flat_map(|v| v[k].paid.iter().map(|&r| effort_cost(r, args)))
                .collect();
            let store: Vec<usize> = c.iter().flat_map(|v| v[k].paid_store.clone()).collect();
            let labels = c.iter().map(|v| v[k + 1].labels as f64).sum::<f64>() / c.len() as f64;
            (labels, median(&paid), median(&store))
        })
        .collect()
}

fn render_effort(
    md: &mut String,
    args: &SimulateArgs,
    strats: &[(String, Strat)],
    curves: &BTreeMap<String, Vec<Vec<Point>>>,
) -> Result<()> {
    writeln!(
        md,
        "\n### Effort: captions read per pair found\n\nFor every pair found, the rank of its caption in the list the tool shows for its image (pool captions not yet paired and not rejected with it, by the model's cosine; identical captions count once); for judged proposals, the proposals read since the previous pair found. Past rank {} the annotator searches instead, counted as {} + {} = {} captions read. `store` = the same pairs' captions read in store order without a model (no search rule). Median over the pairs found in the round, all seeds pooled; `model (store)`.\n",
        args.search_after,
        args.search_after,
        args.search_cost,
        args.search_after + args.search_cost
    )?;
    let mut header = "| strategy |".to_string();
    let mut sep = "|---|".to_string();
    for k in 0..args.rounds {
        write!(header, " {}-{} |", k * args.batch, (k + 1) * args.batch)?;
        sep.push_str("---|");
    }
    writeln!(md, "{header}\n{sep}")?;
    for (name, _) in strats {
        let Some(c) = curves.get(name) else { continue };
        let mut line = format!("| {name} |");
        for (_, m, st) in effort_curve(c, args) {
            write!(line, " {} ({}) |", fmt_opt(m), fmt_opt(st))?;
        }
        writeln!(md, "{line}")?;
    }
    writeln!(
        md,
        "\nLast round (labels {}-{}) and the final model: `found` = pairs found in the last round (all seeds); `median`, `mean`, `searched` = their cost and the share past rank {}; `every image` = the median rank of the caption of every pool image still unpaired under the model after {} labels (what captioning a random next image would cost), store order beside it.\n",
        args.rounds.saturating_sub(1) * args.batch,
        args.rounds * args.batch,
        args.search_after,
        args.rounds * args.batch
    )?;
    writeln!(
        md,
        "| strategy | found | median | mean | searched | store median | every image: model (store) |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for (name, _) in strats {
        let Some(c) = curves.get(name) else { continue };
        let rounds = c.iter().map(|v| v.len()).min().unwrap_or(0);
        if rounds < 2 {
            continue;
        }
        let last = rounds - 2;
        let raw: Vec<usize> = c.iter().flat_map(|v| v[last].paid.clone()).collect();
        let cost: Vec<usize> = raw.iter().map(|&r| effort_cost(r, args)).collect();
        let store: Vec<usize> = c.iter().flat_map(|v| v[last].paid_store.clone()).collect();
        let rem: Vec<usize> = c
            .iter()
            .flat_map(|v| {
                v[rounds - 1]
                    .remaining
                    .iter()
                    .map(|&r| effort_cost(r, args))
            })
            .collect();
        let rem_store: Vec<usize> = c
            .iter()
            .flat_map(|v| v[rounds - 1].remaining_store.clone())
            .collect();
        let mean = if cost.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{:.1}",
                cost.iter().sum::<usize>() as f64 / cost.len() as f64
            )
        };
        let searched = if raw.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{:.0}%",
                100.0 * raw.iter().filter(|&&r| r > args.search_after).count() as f64
                    / raw.len() as f64
            )
        };
        writeln!(
            md,
            "| {name} | {} | {} | {mean} | {searched} | {} | {} ({}) |",
            raw.len(),
            fmt_opt(median(&cost)),
            fmt_opt(median(&store)),
            fmt_opt(median(&rem)),
            fmt_opt(median(&rem_store)),
        )?;
    }
    Ok(())
}
