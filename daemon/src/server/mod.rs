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
//! - [`publish`]: the serving core, the one way a model (align, restore) or new samples
//!   (ingest) become served; [`view`]: the in-memory curation view (hidden ids, rejections,
//!   caption groups, words); [`query`]: suggestions, search, decisions; [`queue`]: what to
//!   label next.
//! - [`errors`]: every failure mapped to the protocol's error codes.
//! - [`in_process`]: the same state and method table without a socket (tests, fuzzing).
//!
//! Invariants: a handler never blocks an async worker (store calls run on blocking threads,
//! fits in jobs); an acknowledged decision is committed; one slow or broken connection never
//! stalls another; the served model is swapped atomically and never half-built.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::future::Future;

use anyhow::{Context, bail};
use sotalign_protocol::framing::DEFAULT_MAX_BODY;

pub mod align_job;
pub mod audit;
pub mod backend;
pub mod caps;
pub mod data_methods;
pub mod dispatch;
pub mod encode;
pub mod errors;
pub mod fit;
pub mod in_process;
pub mod ingest_job;
pub mod jobs;
pub mod lsp_doc;
pub mod lsp_handlers;
pub mod lsp_manifest;
pub mod model;
pub mod publish;
pub mod query;
pub mod queue;
pub mod state;
pub mod transport;
pub mod view;

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
    /// Visible in `ps`: prefer --token-file or $SOTALIGN_TOKEN. Empty or blank is refused.
    #[arg(long, conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from this file (surrounding whitespace trimmed).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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
    /// A directory whose files clients may ingest (repeatable). The data and assets
    /// directories are always allowed; any other path is refused (docs/PROTOCOL.md, Security).
    /// With `--stdio` and no `--allow-dir`, there is no scope: the one client is the process
    /// that started this daemon, with the same rights (an editor, the TUI, the CLI).
    #[arg(long = "allow-dir", value_name = "DIR")]
    pub allow_dir: Vec<PathBuf>,
    /// Let clients ingest any file this process can read (no directory scope).
    #[arg(long, conflicts_with = "allow_dir")]
    pub allow_any_dir: bool,
    /// Caps on every size a client controls (docs/PROTOCOL.md, Limits).
    #[command(flatten)]
    pub limits: crate::limits::Limits,
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

/// Largest token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// A token from a file: trimmed, refused when empty or blank.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("token file {}", path.display()))?
        .len();
    if len > MAX_TOKEN_FILE {
        bail!(
            "token file {} is {len} bytes; a token is at most {MAX_TOKEN_FILE}",
            path.display()
        );
    }
    let t =
        std::fs::read_to_string(path).with_context(|| format!("token file {}", path.display()))?;
    let t = t.trim();
    if t.is_empty() {
        bail!("token file {} is empty", path.display());
    }
    Ok(t.to_string())
}

/// The daemon's token: --token, else --token-file, else $SOTALIGN_TOKEN. An empty or blank
/// token is an error (it would let anyone in), never "no token".
pub fn resolve_token(
    token: Option<&str>,
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> anyhow::Result<Option<String>> {
    let (t, from) = match (token, file, env) {
        (Some(t), _, _) => (t.to_string(), "--token"),
        (None, Some(f), _) => return read_token_file(f).map(Some),
        (None, None, Some(e)) => (e, "SOTALIGN_TOKEN"),
        (None, None, None) => return Ok(None),
    };
    if t.trim().is_empty() {
        bail!(
            "{from} is empty or blank: an empty token would let anyone in; give a secret or no token"
        );
    }
    Ok(Some(t))
}

/// Entry point of `sotalign serve`.
pub fn run_cli(mut args: ServeArgs) -> anyhow::Result<()> {
    if args.stdio == args.listen.is_some() {
        bail!("give exactly one of --stdio or --listen ADDR");
    }
    args.token = resolve_token(
        args.token.as_deref(),
        args.token_file.as_deref(),
        std::env::var("SOTALIGN_TOKEN").ok(),
    )?;
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
    let assets_dir = args
        .assets_dir
        .clone()
        .unwrap_or_else(crate::assets::default_root);
    // Over stdio the only client holds the pipes of the process it started: it can read
    // whatever this daemon could. The scope guards TCP daemons (and stdio ones that ask).
    let stdio_unscoped = args.stdio && args.allow_dir.is_empty();
    let scope = if args.allow_any_dir || stdio_unscoped {
        crate::limits::Scope::unrestricted()
    } else {
        let mut dirs = vec![data_dir.clone(), assets_dir.clone()];
        dirs.extend(args.allow_dir.iter().cloned());
        crate::limits::Scope::only(&dirs)
    };
    crate::limits::install(args.limits.clone(), scope);
    let shared = Shared::new(
        Options {
            data_dir: data_dir.clone(),
            device,
            token: args.token.clone(),
            max_body: args.max_body,
            assets_dir,
            index: crate::index::IndexConfig {
                exact_below: args.exact_below,
                ..Default::default()
            },
        },
        store,
    );
    if let Err(e) = shared.reload_view() {
        anyhow::bail!("reading the store into memory: {}", e.message);
    }
    if let Some(run) = last {
        // Serve the last good model from its checkpoint, in the background. Marked before the
        // first connection is accepted, so no client ever sees "no model" meanwhile.
        shared.begin_restore(run.info.id);
        let sh = shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = load_run(&sh, run) {
                tracing::warn!("could not restore the last model: {}", e);
            }
            sh.end_restore();
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
        accept_loop(listener, shared.clone(), router.clone()).await;
    }
    finish(&shared).await;
    Ok(())
}

/// Accept TCP clients until shutdown. Survives running out of file descriptors (EMFILE/ENFILE:
/// back off, 5 ms doubling to 1 s, one log line per episode, existing connections keep being
/// served, accepting resumes once descriptors free up), caps simultaneous connections
/// (`--max-connections`: later ones are closed at once) and closes a connection that has not
/// initialized within `--init-timeout-secs`.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    router: Arc<dispatch::Router>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let limits = crate::limits::current().clone();
    let open = Arc::new(AtomicUsize::new(0));
    let mut shutdown = shared.shutdown_signal();
    let mut backoff = std::time::Duration::ZERO;
    let mut refused: u64 = 0;
    loop {
        let acc = tokio::select! {
            acc = listener.accept() => acc,
            _ = shutdown.changed() => break,
        };
        let (sock, peer) = match acc {
            Ok(x) => {
                if !backoff.is_zero() {
                    tracing::warn!("accepting connections again");
                    backoff = std::time::Duration::ZERO;
                }
                x
            }
            Err(e) => {
                // Out of descriptors (or another transient error): the pending connection stays
                // in the kernel's queue, so retrying at once would spin. Wait, then retry.
                if backoff.is_zero() {
                    tracing::warn!("accept failed: {e}; backing off until it succeeds");
                    backoff = std::time::Duration::from_millis(5);
                } else {
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= limits.max_connections {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "{refused} connection(s) refused: {} open (--max-connections)",
                    limits.max_connections
                );
            }
            drop(sock);
            continue;
        }
        let _ = sock.set_nodelay(true);
        let conn = Arc::new(ConnState::new(
            shared.next_connection_id(),
            shared.opts.token.is_some(),
        ));
        tracing::info!("connection {} from {peer}", conn.id);
        let (r, w) = sock.into_split();
        let r = InitGate::new(
            r,
            conn.clone(),
            std::time::Duration::from_secs(limits.init_timeout_secs),
        );
        open.fetch_add(1, Ordering::SeqCst);
        let (sh, open2, router) = (shared.clone(), open.clone(), router.clone());
        tokio::spawn(async move {
            transport::serve_connection(r, w, sh, router, conn).await;
            open2.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A connection's read side that ends (EOF) when `initialize` has not succeeded in time, so an
/// idle or silent client cannot hold a connection slot and a descriptor forever.
struct InitGate<R> {
    inner: R,
    conn: Arc<ConnState>,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<R> InitGate<R> {
    fn new(inner: R, conn: Arc<ConnState>, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            conn,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
        }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for InitGate<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.deadline.is_some()
            && this
                .conn
                .initialized
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            this.deadline = None;
        }
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            tracing::info!(
                "connection {}: no initialize in time (--init-timeout-secs); closing",
                this.conn.id
            );
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
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

/// Serve a stored run again from its checkpoint (through [`publish::publish`], unless an
/// alignment finished meanwhile); status says `rebuilding` while its indexes are built.
fn load_run(shared: &Arc<Shared>, run: crate::store::StoredRun) -> Result<(), String> {
    let Some(path) = run.checkpoint.as_deref() else {
        return Err("the run has no checkpoint".into());
    };
    let (model, fitted, stage) = fit::restore(std::path::Path::new(path))?;
    shared.restore_progress(0.05);
    let snap = shared
        .store_blocking(|s| s.training_snapshot())
        .map_err(|e| e.message)?;
    shared.restore_progress(0.2);
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
    served.stage = stage;
    publish::publish(
        shared,
        served,
        &snap,
        publish::When::IfNoneServing,
        &mut |m, done, total| {
            // Images then texts, each half of the remaining 0.2..1.
            let f = if total > 0 {
                done as f64 / total as f64
            } else {
                1.0
            };
            let base = if m == sotalign_protocol::types::Modality::Image {
                0.2
            } else {
                0.6
            };
            shared.restore_progress(base + 0.4 * f);
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn empty_or_blank_tokens_are_refused_from_every_source() {
        for t in ["", "   ", "\t\n"] {
            assert!(resolve_token(Some(t), None, None).is_err(), "{t:?}");
            assert!(resolve_token(None, None, Some(t.into())).is_err(), "{t:?}");
        }
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tok");
        std::fs::write(&f, " \n").unwrap();
        assert!(
            resolve_token(None, Some(&f), None)
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(
            resolve_token(None, Some(&f), Some("env".into()))
                .unwrap()
                .as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            resolve_token(None, None, Some("env".into()))
                .unwrap()
                .as_deref(),
            Some("env")
        );
        assert_eq!(
            resolve_token(Some("flag"), None, Some("env".into()))
                .unwrap()
                .as_deref(),
            Some("flag")
        );
        assert_eq!(resolve_token(None, None, None).unwrap(), None);
        assert!(resolve_token(None, Some(&d.path().join("missing")), None).is_err());
        std::fs::write(&f, vec![b'x'; 5000]).unwrap();
        assert!(resolve_token(None, Some(&f), None).is_err());
    }
}
