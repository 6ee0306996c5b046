//! `sotalign bench daemon`: the daemon end to end on a device, as a client sees it over
//! JSON-RPC: ingest of synthetic unpaired rows, one re-align (SOTAlign at a given unpaired batch
//! B), then the latency of `sotalign/suggestForSample` on the new model (p50 / p99 over many
//! samples). scripts/gpu-check.sh runs it with `--device cuda`; with `--device cpu` and small
//! sizes it is the same path on any machine.
//!
//! Data: synthetic platonic rows at the real encoders' widths (1280 / 384), `--pairs` confirmed
//! pairs, `--test` held out, `--unpaired` rows per side (written as `.npy` + a manifest, as
//! `bench realign` does). One line per figure:
//! `daemon_e2e device=D unpaired=N stage=ingest|closed_form|align|suggest ...`: `closed_form`
//! is the time until the align's closed-form stage was served, `align` until the job ended.
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use sotalign_protocol::types::*;
use sotalign_protocol::{Client, methods};

#[derive(Args)]
pub struct DaemonBench {
    /// The daemon's `--device` (cpu, cuda, cuda:N).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Unpaired rows per side.
    #[arg(long, default_value_t = 100_000)]
    pub unpaired: usize,
    #[command(flatten)]
    pub shape: super::bench_realign::SyntheticShape,
    /// Method of the measured align.
    #[arg(long, default_value = "sotalign")]
    pub method: String,
    /// Unpaired batch B of each KLOT step (`klot.batch`; the paper's is 32768).
    #[arg(long, default_value_t = 32768)]
    pub batch: usize,
    /// Training steps of the heads (`optim.steps`): bounds the align's time at large B.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Timed `suggestForSample` calls (distinct unpaired images, k = 10).
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// Where data and the daemon's store go (default: a temporary directory, removed after).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

pub fn run(a: DaemonBench) -> Result<()> {
    let method: AlignMethod = serde_json::from_value(serde_json::Value::String(a.method.clone()))
        .with_context(|| format!("unknown method {:?}", a.method))?;
    if a.queries == 0 {
        bail!("--queries must be at least 1");
    }
    let work = a.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("sotalign-bench-daemon-{}", std::process::id()))
    });
    std::fs::create_dir_all(&work)?;
    let result = measure(&a, &work, method);
    if a.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

fn measure(a: &DaemonBench, work: &std::path::Path, method: AlignMethod) -> Result<()> {
    let t = Instant::now();
    let data = work.join("data");
    let manifest = super::bench_realign::write_synthetic(&a.shape, a.unpaired, &data)?;
    eprintln!(
        "bench daemon: {} unpaired rows per side written in {:.1} s",
        a.unpaired,
        t.elapsed().as_secs_f64()
    );
    let store = work.join("store");
    let _ = std::fs::remove_dir_all(&store);
    let mut daemon = super::demo::Daemon::spawn("127.0.0.1:0", &store, &data, &a.device)?;
    let stream = TcpStream::connect(&daemon.addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
    let mut c = Client::new(stream.try_clone()?, stream);
    c.initialize("sotalign-bench", None)?;
    let tag = format!("daemon_e2e device={} unpaired={}", a.device, a.unpaired);

    let t = Instant::now();
    let ing = c.call::<methods::Ingest>(IngestParams {
        source: IngestSource::Manifest(manifest.display().to_string()),
    })?;
    super::bench_realign::wait_finished(&mut c, ing.job).context("ingest")?;
    let secs = t.elapsed().as_secs_f64();
    let counts = c.call::<methods::Status>(Empty {})?.counts;
    let rows = counts.images + counts.texts;
    println!(
        "{tag} stage=ingest rows={rows} secs={secs:.2} rows_per_s={:.0}",
        rows as f64 / secs.max(1e-9)
    );

    let config = serde_json::json!({"klot": {"batch": a.batch}, "optim": {"steps": a.steps}});
    let t = Instant::now();
    let job = c.call::<methods::Align>(AlignParams {
        method,
        config: Some(config),
        ..AlignParams::default()
    })?;
    let ended =
        super::bench_realign::wait_first_stage(&mut c, job.job, &mut |_| {}).context("align")?;
    let first = t.elapsed().as_secs_f64();
    // Printed now: a run cut short by its time budget still has this figure.
    println!(
        "{tag} stage=closed_form method={} secs={first:.2}",
        a.method
    );
    if !ended {
        super::bench_realign::wait_finished(&mut c, job.job).context("align")?;
    }
    let secs = t.elapsed().as_secs_f64();
    let model = c.call::<methods::Status>(Empty {})?.model;
    let stage = match model.as_ref().and_then(|m| m.stage) {
        Some(ModelStage::Trained) => "trained",
        Some(ModelStage::ClosedForm) => "closed_form",
        None => "none",
    };
    let fitted = model.and_then(|m| m.fitted).unwrap_or_default();
    println!(
        "{tag} stage=align method={} B={} steps={} secs={secs:.2} served={stage} fitted={:?}",
        a.method, a.batch, a.steps, fitted
    );

    let samples = unpaired_images(&mut c, a.queries)?;
    let mut lat = Vec::with_capacity(samples.len());
    for id in samples {
        let t = Instant::now();
        let s = c.call::<methods::SuggestForSample>(SuggestForSampleParams {
            sample: id,
            k: 10,
            include_rejected: false,
        })?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        if s.run != job.run {
            bail!(
                "suggestions came from run {}, not the measured run {}",
                s.run,
                job.run
            );
        }
    }
    let (p50, p99) = percentiles(&mut lat);
    println!(
        "{tag} stage=suggest k=10 queries={} p50_ms={p50:.2} p99_ms={p99:.2}",
        lat.len()
    );
    let _ = c.shutdown();
    daemon.stop();
    Ok(())
}

/// Up to `n` unpaired image ids, spread over the whole collection (pages at even offsets).
fn unpaired_images<R: std::io::Read, W: std::io::Write>(
    c: &mut Client<R, W>,
    n: usize,
) -> Result<Vec<SampleId>> {
    let page = |c: &mut Client<R, W>, offset: u64, limit: u32| {
        c.call::<methods::ListSamples>(ListSamplesParams {
            modality: Modality::Image,
            state: Some(SampleState::Unpaired),
            filter: None,
            offset,
            limit,
        })
    };
    let total = page(c, 0, 1)?.total;
    if total == 0 {
        bail!("no unpaired image to ask suggestions for");
    }
    let n = (n as u64).min(total);
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        let r = page(c, i * total / n, 1)?;
        ids.extend(r.items.first().map(|s| s.id));
    }
    Ok(ids)
}

/// Nearest-rank p50 and p99 of `v` (sorted in place); `v` must not be empty.
fn percentiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.50), at(0.99))
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentiles(&mut v), (50.0, 99.0));
        let mut one = vec![7.0];
        assert_eq!(percentiles(&mut one), (7.0, 7.0));
    }
}
