//! The `sotalign` command line: one binary with subcommands (align, eval, experiment, ...).
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sotalign",
    version,
    about = "Align frozen vision and text encoders with few pairs (SOTAlign)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print version and build information.
    Info,
    /// Benchmark the nearest-neighbour index: HNSW vs exact search (build rate, latency, recall).
    BenchIndex(sotalign::cli::index::BenchIndexArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info => {
            println!("sotalign {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::BenchIndex(a) => sotalign::cli::index::bench_index(a),
    }
}
