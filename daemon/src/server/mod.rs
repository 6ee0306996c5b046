//! The resident daemon: `sotalign serve --stdio | --listen ADDR`.
//!
//! Code map:
//! - [`transport`]: one connection's bytes: frames decoded once, one writer.
//! - [`dispatch`]: the one request path: typed method table ([`dispatch::Router`]) and the LSP
//!   lifecycle, written once ([`dispatch::Connection`], a tower `Service`).
//! - [`backend`]: every `sotalign/*` handler and the table registering them.
//! - [`state`]: what connections and jobs share (store, served model, jobs, notifications).
//! - [`jobs`]: job registry, cancellation, ordered progress and job-finished notifications.
//! - [`align_job`], [`ingest_job`]: the two background jobs; [`fit`]: the engine entry point
//!   and checkpoints; [`model`]: the served model (search, suggestions, evaluation).
//! - [`errors`]: every failure mapped to the protocol's error codes.
//!
//! Invariants: a handler never blocks an async worker (store calls run on blocking threads,
//! fits in jobs); an acknowledged decision is committed; one slow or broken connection never
//! stalls another; the served model is swapped atomically and never half-built.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use sotalign_protocol::framing::DEFAULT_MAX_BODY;

pub mod align_job;
pub mod audit;
pub mod backend;
pub mod dispatch;
pub mod encode;
pub mod errors;
pub mod fit;
pub mod ingest_job;
pub mod jobs;
pub mod lsp_doc;
pub mod lsp_handlers;
pub mod lsp_manifest;
pub mod model;
pub mod state;
pub mod transport;

use backend::ConnState;
use state::{Options, Shared};

/// `sotalign serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Serve one client over stdin/stdout (as editors run language servers).
    #[arg(long, conflicts_with = "listen")]
    pub stdio: bool,
    /// Serve TCP clients on this address (e.g. 127.0.0.1:7878). Binding a non-loopback
    /// address requires --token.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Shared secret TCP clients must send in `initialize` (initializationOptions.token).
    #[arg(long)]
    pub token: Option<String>,
    /// Where the database, checkpoints and logs live (default: the user's data directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// cpu, or cuda[:N] when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Encoder weights (`sotalign fetch`'s layout; default: $SOTALIGN_ASSETS, else the
    /// user's cache directory). Loaded on the first free-text search or raw ingest.
    #[arg(long, value_name = "DIR")]
    pub assets_dir: Option<PathBuf>,
    /// Frame body cap in bytes, both directions.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Serve a modality with exact search below this many samples, with an HNSW graph from
    /// this size on (measured crossover: docs/BENCHMARKS.md, "Index").
    #[arg(long, value_name = "N", default_value_t = crate::index::DEFAULT_EXACT_BELOW)]
    pub exact_below: usize,
}

pub fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("sotalign")
}

fn parse_device(d: &str) -> anyhow::Result<String> {
    match d {
        "cpu" => Ok("cpu".into()),
        d if d == "cuda" || d.starts_with("cuda:") => {
            if cfg!(feature = "cuda") {
                let n = d.strip_prefix("cuda:").unwrap_or("0");
                let n: usize = n
                    .parse()
                    .with_context(|| format!("bad CUDA device index in {d:?}"))?;
                Ok(format!("cuda:{n}"))
            } else {
                bail!(
                    "--device {d}: this sotalign was built without the `cuda` feature (cargo build --features cuda)"
                )
            }
        }
        other => bail!("unknown --device {other:?} (cpu, cuda, cuda:N)"),
    }
}

/// Entry point of `sotalign serve`.
pub fn run_cli(args: ServeArgs) -> anyhow::Result<()> {
    if args.stdio == args.listen.is_some() {
        bail!("give exactly one of --stdio or --listen ADDR");
    }
    if let Some(addr) = args.listen
        && !addr.ip().is_loopback()
        && args.token.is_none()
    {
        bail!(
            "--listen {addr} is not a loopback address: clients on the network could reach the daemon, so --token is required"
        );
    }
    let device = parse_device(&args.device)?;
    // On a CUDA build, open the device now: a missing GPU is a start-up error, not a failure
    // at the first encode.
    crate::encoders::parse_device(&device)
        .map_err(|e| anyhow::anyhow!("--device {device}: {e}"))?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    // Logs go to stderr: over --stdio, stdout carries the protocol and nothing else.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sotalign-serve")
        .build()?;
    let result = rt.block_on(serve(args, data_dir, device));
    // A blocking read of stdin may still be pending: do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    result
}

async fn serve(args: ServeArgs, data_dir: PathBuf, device: String) -> anyhow::Result<()> {
    let mut store = crate::store::Store::open(&data_dir)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let interrupted = store.fail_interrupted_runs()?;
    if interrupted > 0 {
        tracing::warn!("{interrupted} run(s) were interrupted by an earlier stop; marked failed");
    }
    let last = store.latest_servable_run()?;
    let shared = Shared::new(
        Options {
            data_dir: data_dir.clone(),
            device,
            token: args.token.clone(),
            max_body: args.max_body,
            assets_dir: args
                .assets_dir
                .clone()
                .unwrap_or_else(crate::assets::default_root),
            index: crate::index::IndexConfig {
                exact_below: args.exact_below,
                ..Default::default()
            },
        },
        store,
    );
    if let Some(run) = last {
        // Serve the last good model from its checkpoint, in the background.
        let sh = shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = load_run(&sh, run) {
                tracing::warn!("could not restore the last model: {}", e);
            }
        });
    }
    spawn_signal_handler(shared.clone());
    let router = Arc::new(backend::Backend::router());
    if args.stdio {
        let conn = Arc::new(ConnState::new(shared.next_connection_id(), false));
        transport::serve_connection(
            tokio::io::stdin(),
            tokio::io::stdout(),
            shared.clone(),
            router,
            conn,
        )
        .await;
    } else if let Some(addr) = args.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        // Tests and scripts read this line to learn the port (with --listen 127.0.0.1:0).
        eprintln!("sotalign: listening on {local}");
        let mut shutdown = shared.shutdown_signal();
        loop {
            tokio::select! {
                acc = listener.accept() => {
                    let (sock, peer) = match acc {
                        Ok(x) => x,
                        Err(e) => { tracing::warn!("accept failed: {e}"); continue; }
                    };
                    let _ = sock.set_nodelay(true);
                    let conn = Arc::new(ConnState::new(shared.next_connection_id(), shared.opts.token.is_some()));
                    tracing::info!("connection {} from {peer}", conn.id);
                    let (r, w) = sock.into_split();
                    tokio::spawn(transport::serve_connection(r, w, shared.clone(), router.clone(), conn));
                }
                _ = shutdown.changed() => break,
            }
        }
    }
    finish(&shared).await;
    Ok(())
}

/// Graceful stop: cancel jobs, give them a moment to record their end, fold the WAL back.
async fn finish(shared: &Arc<Shared>) {
    shared.trigger_shutdown();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !shared.jobs.active().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    match shared.store(|s| s.checkpoint()).await {
        Ok(()) => tracing::info!("store flushed"),
        Err(e) => tracing::error!("store flush failed: {}", e.message),
    }
}

fn spawn_signal_handler(shared: Arc<Shared>) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        shared.trigger_shutdown();
    });
}

/// Rebuild the served model of a stored run from its checkpoint: the model, then its indexes
/// over every stored sample (status says `rebuilding` meanwhile).
fn load_run(shared: &Arc<Shared>, run: crate::store::StoredRun) -> Result<(), String> {
    let Some(path) = run.checkpoint.as_deref() else {
        return Err("the run has no checkpoint".into());
    };
    let (model, fitted) = fit::restore(std::path::Path::new(path))?;
    let snap = shared
        .store_blocking(|s| s.training_snapshot())
        .map_err(|e| e.message)?;
    let mut served = model::Served::new(
        run.info.id,
        run.info.method,
        fitted,
        model,
        run.info.pairs,
        run.info.finished_at_ms.unwrap_or(run.info.started_at_ms),
        run.info.metrics,
        shared.opts.index,
    );
    let rebuild = shared.begin_rebuild();
    let built = served.index_samples(&snap.images, &snap.texts, &mut |_, _, _| {});
    drop(rebuild);
    built.map_err(|e| e.to_string())?;
    if shared.model().is_none() {
        shared.set_model(Arc::new(served));
    }
    Ok(())
}
