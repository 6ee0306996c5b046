//! `sotalign-tui`: terminal set-up and teardown, the event loop, and finding the daemon.
use std::io::{Stdout, Write, stdout};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use crossterm::event::{Event as TermEvent, EventStream};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use futures::StreamExt;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui_image::picker::Picker;
use ratatui_image::picker::cap_parser::QueryStdioOptions;
use sotalign_protocol::types::AlignParams;
use sotalign_tui::images::Images;
use sotalign_tui::net::{self, Endpoint, NetConfig};
use sotalign_tui::rpc::Call;
use sotalign_tui::state::{App, Event};
use sotalign_tui::ui;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Curate image-text pairs with a sotalign daemon: review suggested pairs, confirm or reject
/// them, re-align, and watch retrieval improve.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address of a running daemon (`sotalign serve --listen ADDR`). Without it, a local
    /// daemon is spawned over stdio.
    #[arg(long, value_name = "HOST:PORT")]
    connect: Option<String>,
    /// Auth token, when the daemon was started with `--token` (default: $SOTALIGN_TOKEN, which
    /// keeps it out of the process list).
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the auth token from this file (surrounding whitespace trimmed).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Data directory for a spawned daemon (default: the daemon's own default).
    #[arg(long, value_name = "DIR", conflicts_with = "connect")]
    data_dir: Option<PathBuf>,
    /// The `sotalign` binary to spawn (default: next to this binary, then on PATH).
    #[arg(long, value_name = "PATH", conflicts_with = "connect")]
    daemon: Option<PathBuf>,
    /// How to draw images: `auto` asks the terminal (kitty, sixel, iTerm2, else
    /// half-blocks); `halfblocks` works everywhere, including plain SSH and tmux.
    #[arg(long, value_enum, default_value_t = ImageMode::Auto)]
    images: ImageMode,
    /// Alignment method `r` starts (sotalign, cca, procrustes, csa, asif, asif_c, siglip, auto;
    /// default: the daemon's default).
    #[arg(long, value_name = "METHOD")]
    align_method: Option<String>,
    /// Named engine preset for `r` (see the daemon's documentation).
    #[arg(long, value_name = "NAME")]
    align_preset: Option<String>,
    /// JSON overrides of the engine configuration for `r`, e.g. '{"optim":{"steps":200}}'.
    #[arg(long, value_name = "JSON")]
    align_config: Option<String>,
    /// Name recorded as the source of your decisions (default: tui:$USER).
    #[arg(long)]
    source: Option<String>,
    /// Who you are, recorded with each decision and counted per annotator on the dashboard
    /// (default: your login name).
    #[arg(long, value_name = "NAME")]
    annotator: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ImageMode {
    Auto,
    Halfblocks,
}

fn align_params(args: &Args) -> Result<AlignParams> {
    let mut p = AlignParams::default();
    if let Some(m) = &args.align_method {
        p.method = serde_json::from_value(serde_json::Value::String(m.clone()))
            .with_context(|| format!("unknown --align-method {m:?}"))?;
    }
    p.preset = args.align_preset.clone();
    if let Some(c) = &args.align_config {
        let v: serde_json::Value =
            serde_json::from_str(c).context("--align-config is not valid JSON")?;
        if !v.is_object() {
            bail!("--align-config must be a JSON object");
        }
        p.config = Some(v);
    }
    Ok(p)
}

fn find_daemon(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let exe_name = format!("sotalign{}", std::env::consts::EXE_SUFFIX);
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let beside = dir.join(&exe_name);
        if beside.is_file() {
            return Ok(beside);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(&exe_name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find the `sotalign` daemon next to this binary or on PATH; \
         pass --daemon PATH or --connect HOST:PORT"
    )
}

fn endpoint(args: &Args) -> Result<Endpoint> {
    if let Some(addr) = &args.connect {
        return Ok(Endpoint::Tcp(addr.clone()));
    }
    let program = find_daemon(args.daemon.clone())?;
    let mut daemon_args = vec!["serve".to_owned(), "--stdio".to_owned()];
    if let Some(dir) = &args.data_dir {
        daemon_args.push("--data-dir".to_owned());
        daemon_args.push(path_arg(dir)?);
    }
    Ok(Endpoint::Spawn {
        program,
        args: daemon_args,
    })
}

fn path_arg(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("data directory {} is not valid UTF-8", p.display()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Term = Terminal<CrosstermBackend<Stdout>>;

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, crossterm::cursor::Show);
}

fn setup_terminal() -> Result<Term> {
    // Restore the terminal before the panic message prints, or it lands in the alternate
    // screen and the user's shell is left in raw mode.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    enable_raw_mode().context("cannot put the terminal in raw mode (is stdout a terminal?)")?;
    execute!(stdout(), EnterAlternateScreen).context("cannot enter the alternate screen")?;
    let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
    Ok(terminal)
}

/// How long the terminal may take to answer the graphics-protocol query.
const QUERY_TIMEOUT: Duration = Duration::from_millis(1000);

/// Ask the terminal which graphics protocol it speaks (ratatui-image's query), without losing
/// a key press to it.
///
/// The query runs on a thread of ratatui-image that reads stdin until the terminal answers
/// the final "device status" request. When nothing answers in time (tmux drops the wrapped
/// query when no outer terminal replies through it), the picker falls back to half-blocks but
/// that thread stays blocked in `read(stdin)`, and swallows the user's first key press (it was
/// `?` or `3` in issue 12). So after a timed-out query we send one more device-status request,
/// unwrapped, which tmux and every terminal answer themselves: the stray reader consumes that
/// answer and ends, and the next key reaches the event loop. If the query had in fact ended,
/// the answer reaches crossterm's parser instead, which drops it (not a key).
fn query_picker() -> Picker {
    let start = Instant::now();
    let options = QueryStdioOptions {
        timeout: QUERY_TIMEOUT,
        ..QueryStdioOptions::default()
    };
    let picker =
        Picker::from_query_stdio_with_options(options).unwrap_or_else(|_| Picker::halfblocks());
    if start.elapsed() >= QUERY_TIMEOUT {
        let mut out = stdout();
        // Device Status Report request; the reply is `ESC [ 0 n`.
        if out.write_all(b"\x1b[5n").and_then(|()| out.flush()).is_ok() {
            // Let the stray reader take the reply before our event stream starts reading.
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    picker
}

fn send_all(tx: &UnboundedSender<Call>, calls: Vec<Call>) {
    for c in calls {
        // The net task only stops when we drop the sender; nothing to do if it died.
        let _ = tx.send(c);
    }
}

async fn run(
    terminal: &mut Term,
    args: &Args,
    endpoint: Endpoint,
    align: AlignParams,
) -> Result<()> {
    let picker = match args.images {
        // Must run after entering the alternate screen and before reading events.
        ImageMode::Auto => query_picker(),
        ImageMode::Halfblocks => Picker::halfblocks(),
    };
    let mut images = Images::new(picker);
    let token = match &args.token_file {
        Some(f) => {
            let t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            let t = t.trim();
            if t.is_empty() {
                bail!("the token file {} is empty", f.display());
            }
            Some(t.to_owned())
        }
        None => args.token.clone().or_else(|| {
            std::env::var("SOTALIGN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
        }),
    };
    if let Some(addr) = &args.connect {
        // The daemon may be on another machine: fetch pictures it has and we cannot read.
        images.set_remote(sotalign_tui::images::Remote::new(
            addr.clone(),
            token.clone(),
        ));
    }

    let mut cfg = NetConfig::new(endpoint);
    cfg.token = token;
    cfg.client_name = args.source.clone().unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "user".to_owned());
        format!("tui:{user}")
    });
    cfg.annotator = args
        .annotator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|a| !a.trim().is_empty());
    let (call_tx, call_rx) = unbounded_channel();
    let (net_tx, mut net_rx) = unbounded_channel();
    let net_task = tokio::spawn(net::run(cfg, call_rx, net_tx));

    let mut app = App::new();
    app.align = align;
    app.handle(Event::Tick { now_ms: now_ms() });
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let result = loop {
        terminal.draw(|f| ui::draw(f, &app, &images))?;
        images.start_wanted();
        if app.should_quit {
            break Ok(());
        }
        tokio::select! {
            ev = keys.next() => match ev {
                Some(Ok(TermEvent::Key(k))) => send_all(&call_tx, app.handle(Event::Key(k))),
                // Resize (and anything else) just redraws.
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("reading terminal events")),
                None => break Ok(()),
            },
            Some(ev) = net_rx.recv() => {
                send_all(&call_tx, app.handle(Event::Net(ev)));
                // Apply whatever else already arrived before redrawing.
                while let Ok(ev) = net_rx.try_recv() {
                    send_all(&call_tx, app.handle(Event::Net(ev)));
                }
            }
            _ = tick.tick() => send_all(&call_tx, app.handle(Event::Tick { now_ms: now_ms() })),
            Some(()) = images.next_ready() => { images.poll(); }
        }
    };
    // Closing the channel makes the net task shut the daemon connection down cleanly.
    drop(call_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), net_task).await;
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
    let endpoint = endpoint(&args)?;
    let align = align_params(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut terminal = setup_terminal()?;
    let result = rt.block_on(run(&mut terminal, &args, endpoint, align));
    restore_terminal();
    let _ = terminal.show_cursor();
    result
}
