//! `sotalign ingest` and `sotalign export`: one's own data in and curated pairs out, through
//! the daemon's own methods (`sotalign/ingest`, `sotalign/export`), so the CLI, the TUI and
//! any client share one code path. With `--data-dir` the CLI starts a private daemon on that
//! directory over stdio (`sotalign serve --stdio`) and stops it at the end; with `--connect`
//! it talks to a running daemon (paths are then paths on the daemon's machine).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use clap::Args;
use sotalign_protocol::client::{Client, RpcError};
use sotalign_protocol::methods;
use sotalign_protocol::types::{ExportFormat, ExportParams, IngestParams, IngestSource};

/// Where the daemon is: a data directory (a private daemon is started on it) or a running one.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Work on this data directory directly (a private `sotalign serve --stdio` is started).
    #[arg(long, value_name = "DIR", conflicts_with = "connect")]
    pub data_dir: Option<PathBuf>,
    /// A running daemon (`sotalign serve --listen ADDR`), e.g. 127.0.0.1:7878.
    #[arg(long, value_name = "ADDR")]
    pub connect: Option<String>,
    /// File holding the daemon's token (else $SOTALIGN_TOKEN); only with --connect.
    #[arg(long, value_name = "FILE", requires = "connect")]
    pub token_file: Option<PathBuf>,
    /// Encoder weights for the private daemon (default: $SOTALIGN_ASSETS or the user cache).
    #[arg(long, value_name = "DIR", conflicts_with = "connect")]
    pub assets_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub target: Target,
    /// A sotalign manifest (JSONL, version 1; docs/MANIFEST.md).
    #[arg(long, value_name = "FILE", group = "source")]
    pub manifest: Option<PathBuf>,
    /// A folder of images (recursive), stored unpaired; combine with --texts.
    #[arg(long, value_name = "DIR", group = "source")]
    pub images: Option<PathBuf>,
    /// A caption file (one caption per line), stored unpaired.
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// A Hugging Face `imagefolder` directory (metadata.jsonl with file_name and text).
    #[arg(long, value_name = "DIR", group = "source")]
    pub imagefolder: Option<PathBuf>,
    /// A CSV table (image_path / file_name, caption / text, optional key, split).
    #[arg(long, value_name = "FILE", group = "source")]
    pub csv: Option<PathBuf>,
    /// A parquet table with the same columns as --csv.
    #[arg(long, value_name = "FILE", group = "source")]
    pub parquet: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: Target,
    /// jsonl (sotalign manifest), csv, imagefolder (Hugging Face) or webdataset (tar shards).
    #[arg(long, value_parser = parse_format)]
    pub format: ExportFormat,
    /// Output file (jsonl, csv) or new/empty folder (imagefolder, webdataset).
    #[arg(long, short, value_name = "PATH")]
    pub out: PathBuf,
    /// Rejected pairs too (marked state=rejected).
    #[arg(long)]
    pub include_rejected: bool,
    /// WebDataset: pairs per shard.
    #[arg(long, value_name = "N")]
    pub shard_size: Option<u32>,
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("unknown format {s:?} (jsonl, csv, imagefolder, webdataset)"))
}

/// The token for `--connect`: `--token-file` (trimmed), else `$SOTALIGN_TOKEN`; an empty one
/// is an error, not "no token".
pub fn client_token(file: Option<&Path>) -> Result<Option<String>> {
    let t = match file {
        Some(f) => Some(crate::server::read_token_file(f)?),
        None => match std::env::var("SOTALIGN_TOKEN") {
            Ok(t) if t.trim().is_empty() => bail!("SOTALIGN_TOKEN is set but empty"),
            Ok(t) => Some(t.trim().to_string()),
            Err(_) => None,
        },
    };
    Ok(t)
}

/// Run `f` with a client of the target's daemon, then shut the connection (and a private
/// daemon) down.
fn with_daemon(target: &Target, f: impl FnOnce(&mut dyn ClientOps) -> Result<()>) -> Result<()> {
    if let Some(addr) = &target.connect {
        let token = client_token(target.token_file.as_deref())?;
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        let mut c = Client::new(s.try_clone()?, s);
        c.initialize("sotalign-cli", token)
            .with_context(|| format!("initialize with the daemon at {addr}"))?;
        let r = f(&mut c);
        let _ = c.shutdown();
        return r;
    }
    let exe = std::env::current_exe().context("locating the sotalign binary")?;
    let mut cmd = Command::new(exe);
    // The private daemon's only client is this command, run by the user who named the files:
    // a stdio daemon has no read scope (docs/PROTOCOL.md, Security).
    cmd.args(["serve", "--stdio"]);
    if let Some(d) = &target.data_dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        cmd.arg("--data-dir").arg(d);
    }
    if let Some(a) = &target.assets_dir {
        cmd.arg("--assets-dir").arg(a);
    }
    let mut child: Child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting `sotalign serve --stdio`")?;
    let (Some(out), Some(inp)) = (child.stdout.take(), child.stdin.take()) else {
        bail!("no pipes to the daemon");
    };
    let mut c = Client::new(out, inp);
    let r = c
        .initialize("sotalign-cli", None)
        .context("initialize with the private daemon")
        .map(|_| ())
        .and_then(|()| f(&mut c));
    // `shutdown` + `exit` end a stdio daemon; closing its stdin does too.
    let _ = c.shutdown();
    drop(c);
    let _ = child.wait();
    r
}

/// The calls the commands need, over either transport.
pub trait ClientOps {
    fn ingest(
        &mut self,
        p: IngestParams,
    ) -> Result<sotalign_protocol::types::IngestResult, RpcError>;
    fn export(
        &mut self,
        p: ExportParams,
    ) -> Result<sotalign_protocol::types::ExportResult, RpcError>;
    fn wait(
        &mut self,
        job: sotalign_protocol::types::JobId,
        what: &str,
    ) -> Result<sotalign_protocol::types::JobFinishedParams>;
}

impl<R: Read, W: Write> ClientOps for Client<R, W> {
    fn ingest(
        &mut self,
        p: IngestParams,
    ) -> Result<sotalign_protocol::types::IngestResult, RpcError> {
        self.call::<methods::Ingest>(p)
    }
    fn export(
        &mut self,
        p: ExportParams,
    ) -> Result<sotalign_protocol::types::ExportResult, RpcError> {
        self.call::<methods::Export>(p)
    }
    fn wait(
        &mut self,
        job: sotalign_protocol::types::JobId,
        what: &str,
    ) -> Result<sotalign_protocol::types::JobFinishedParams> {
        super::demo::wait_job(self, job, what)
    }
}

/// Paths sent to a private daemon are made absolute (it may run elsewhere than here); for
/// `--connect`, a path that exists here is made absolute too, others are sent as given.
fn daemon_path(target: &Target, p: &Path) -> Result<String> {
    match std::fs::canonicalize(p) {
        Ok(abs) => Ok(abs.display().to_string()),
        Err(e) if target.connect.is_none() => Err(e).with_context(|| format!("{}", p.display())),
        Err(_) => Ok(p.display().to_string()),
    }
}

/// Print a refused call: the daemon's message, then every bad row it listed.
fn explain(e: RpcError) -> anyhow::Error {
    if let RpcError::Server(obj) = &e {
        let mut msg = obj.message.clone();
        if let Some(rows) = obj
            .data
            .as_ref()
            .and_then(|d| d.get("rows"))
            .and_then(|r| r.as_array())
        {
            msg.push_str("\nbad rows:");
            for r in rows {
                msg.push_str(&format!(
                    "\n  line {}: {}",
                    r.get("line").and_then(|l| l.as_u64()).unwrap_or(0),
                    r.get("msg").and_then(|m| m.as_str()).unwrap_or("")
                ));
            }
            if let Some(t) = obj
                .data
                .as_ref()
                .and_then(|d| d.get("total"))
                .and_then(|t| t.as_u64())
                && t as usize > rows.len()
            {
                msg.push_str(&format!("\n  ... {} more", t as usize - rows.len()));
            }
            msg.push_str("\nnothing was stored");
        }
        return anyhow::anyhow!(msg);
    }
    anyhow::Error::new(e)
}

pub fn ingest(a: IngestArgs) -> Result<()> {
    let t = &a.target;
    let source = if let Some(m) = &a.manifest {
        IngestSource::Manifest(daemon_path(t, m)?)
    } else if let Some(d) = &a.imagefolder {
        IngestSource::Imagefolder(daemon_path(t, d)?)
    } else if let Some(f) = &a.csv {
        IngestSource::Csv(daemon_path(t, f)?)
    } else if let Some(f) = &a.parquet {
        IngestSource::Parquet(daemon_path(t, f)?)
    } else if a.images.is_some() || a.texts.is_some() {
        IngestSource::Folders {
            images: a.images.as_deref().map(|p| daemon_path(t, p)).transpose()?,
            texts: a.texts.as_deref().map(|p| daemon_path(t, p)).transpose()?,
        }
    } else {
        bail!(
            "say what to ingest: --manifest F, --images DIR [--texts F], --texts F, --imagefolder DIR, --csv F or --parquet F"
        );
    };
    with_daemon(t, |c| {
        let r = c.ingest(IngestParams { source }).map_err(explain)?;
        let f = c.wait(r.job, "ingest")?;
        println!(
            "ingested: {} new samples ({} in the source)",
            f.ingested.unwrap_or(0),
            r.accepted
        );
        Ok(())
    })
}

pub fn export(a: ExportArgs) -> Result<()> {
    let t = &a.target;
    let out = if t.connect.is_none() || a.out.is_absolute() {
        std::path::absolute(&a.out).with_context(|| format!("{}", a.out.display()))?
    } else {
        a.out.clone()
    };
    let params = ExportParams {
        format: a.format,
        dest: out.display().to_string(),
        include_rejected: a.include_rejected,
        shard_size: a.shard_size,
    };
    with_daemon(t, |c| {
        let r = c.export(params).map_err(explain)?;
        println!(
            "exported {} pairs ({} files) to {}",
            r.pairs, r.files, r.dest
        );
        Ok(())
    })
}
