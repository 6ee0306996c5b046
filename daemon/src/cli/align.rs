//! `sotalign align`: fit a method and write a checkpoint.
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::data_args::{ConfigArgs, DataArgs};
use super::eval::print_report;
use sotalign_engine::eval::evaluate;
use sotalign_engine::methods::{self, Method, Progress};
use crate::io::write_checkpoint;

#[derive(Debug, Args)]
pub struct AlignArgs {
    /// Method to fit: procrustes, procrustes_w, cca, csa, asif, asif_c, siglip, siglip_tinit,
    /// sotalign, auto (docs/RESULTS.md compares them).
    #[arg(long, short, default_value = "cca")]
    pub method: String,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Checkpoint to write (`.safetensors`; a `.json` sidecar is written beside it).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// A progress-bar callback for fits (hidden when stderr is not a terminal).
pub fn progress_bar() -> (
    indicatif::ProgressBar,
    impl FnMut(&Progress) -> ControlFlow<()>,
) {
    let pb = indicatif::ProgressBar::new(1);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let bar = pb.clone();
    let cb = move |p: &Progress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.step as u64);
        match p.loss {
            Some(l) => bar.set_message(format!("{} {l:.4}", p.stage)),
            None => bar.set_message(p.stage.clone()),
        }
        ControlFlow::Continue(())
    };
    (pb, cb)
}

pub fn run(args: AlignArgs) -> Result<()> {
    let method: Method = args.method.parse()?;
    let cfg = args.config.build()?;
    let (data, test) = args.data.load()?;
    let t0 = Instant::now();
    let (pb, mut cb) = progress_bar();
    let model = methods::fit(method, &data, &cfg, &mut cb);
    pb.finish_and_clear();
    let model = model?;
    let secs = t0.elapsed().as_secs_f64();
    let info = json!({
        "n_pairs": data.n_pairs(),
        "n_unpaired_images": data.xu.rows,
        "n_unpaired_texts": data.yu.rows,
        "dx": data.dx(),
        "dy": data.dy(),
        "fit_seconds": secs,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let state = model.export_state()?;
    if let Some(dir) = args.out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    write_checkpoint(&args.out, &state, &cfg, info)?;
    eprintln!(
        "fitted {} on {} pairs ({} + {} unpaired) in {secs:.2} s; wrote {}",
        model.name(),
        data.n_pairs(),
        data.xu.rows,
        data.yu.rows,
        args.out.display()
    );
    if let Some(auto) = state.meta.get("auto") {
        eprintln!("auto chose {}", auto["choice"]);
    }
    if let Some(t) = test {
        let r = evaluate(model.as_ref(), &t.x, &t.y, &t.labels)?;
        print_report(model.name(), &r);
    }
    Ok(())
}
