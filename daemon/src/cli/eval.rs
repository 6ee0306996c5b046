//! `sotalign eval`: metrics of a checkpoint on a test split.
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use super::data_args::DataArgs;
use crate::io::read_checkpoint;
use sotalign_engine::eval::{RetrievalReport, evaluate};
use sotalign_engine::methods;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint written by `sotalign align`.
    #[arg(long, short)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The metrics table, in percent.
pub fn print_report(name: &str, r: &RetrievalReport) {
    println!(
        "{:<14} {:>4} {:>7} {:>7} {:>7} {:>7}",
        "method", "dir", "R@1", "R@5", "R@10", "MRR"
    );
    for (dir, d) in [("i2t", &r.i2t), ("t2i", &r.t2i)] {
        println!(
            "{:<14} {:>4} {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
            name,
            dir,
            100.0 * d.r1,
            100.0 * d.r5,
            100.0 * d.r10,
            100.0 * d.mrr
        );
    }
    if let Some(f) = r.foscttm {
        println!(
            "FOSCTTM {f:.4} (0 = perfect, 0.5 = chance); {} queries per direction",
            r.i2t.n_queries
        );
    }
}

pub fn run(args: EvalArgs) -> Result<()> {
    let ck = read_checkpoint(&args.checkpoint)?;
    let model = methods::restore(&ck.state)?;
    let (_, test) = args.data.load()?;
    let Some(t) = test else {
        bail!(
            "the inputs define no test split (mark pairs with \"split\": \"test\" in the manifest)"
        );
    };
    let r = evaluate(model.as_ref(), &t.x, &t.y, &t.labels)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"method": model.name(), "metrics": r})
            )?
        );
    } else {
        print_report(model.name(), &r);
    }
    Ok(())
}
