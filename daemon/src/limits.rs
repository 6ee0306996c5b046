//! Every cap on a size a client controls, in one place.
//!
//! A client chooses training lengths, dimensions, batch sizes, iteration counts, page sizes,
//! which files the daemon reads and how many connections it opens. Each of those has a cap here
//! with a default, a `sotalign serve` flag to change it ([`LimitArgs`]), and a typed error
//! ([`LimitError`]) that names the cap, the value asked for and the flag. Handlers check params
//! where they enter (`server/`); the lower layers (file reading, folder walks, image decoding)
//! read the process-wide caps through [`current`], set once by `sotalign serve` ([`install`]).
//! The engine checks its own sizes too (allocation sizes by `checked_mul`), so a caller that
//! skips these caps still gets an error, never an abort.
//!
//! Reading a client-named path goes through [`read_file`]: scope check, regular files only
//! (a FIFO, a device such as `/dev/zero` or a directory is refused before any byte is read),
//! and a size cap checked on the open file and enforced while reading.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The caps. Defaults are generous for real use and small enough that one request cannot take
/// the machine down; docs/PROTOCOL.md ("Limits") lists each with its flag.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Limits {
    /// Cap on `config.optim.steps` (training steps of one alignment).
    #[arg(long = "max-steps", default_value_t = 100_000)]
    pub max_steps: usize,
    /// Cap on `config.heads.dim` (output dimension of the student heads).
    #[arg(long = "max-head-dim", default_value_t = 8192)]
    pub max_head_dim: usize,
    /// Cap on `config.klot.batch` (unpaired batch B; memory grows as B^2).
    #[arg(long = "max-batch", default_value_t = 8192)]
    pub max_batch: usize,
    /// Cap on `config.klot.iters` (Sinkhorn iterations per plan).
    #[arg(long = "max-sinkhorn-iters", default_value_t = 10_000)]
    pub max_sinkhorn_iters: usize,
    /// Cap on `config.auto.splits`, the length of every `config` grid, `config.asif.k` and
    /// `config.teacher.maxComponents`.
    #[arg(long = "max-grid", default_value_t = 64)]
    pub max_grid: usize,
    /// Cap on `k` of suggestForSample / search (larger is clamped, as documented).
    #[arg(long = "max-k", default_value_t = 100)]
    pub max_k: u32,
    /// Cap on every `limit` (page size; larger is clamped, as documented).
    #[arg(long = "max-page", default_value_t = 1000)]
    pub max_page: u32,
    /// Cap on the size of a manifest or caption file.
    #[arg(long = "max-text-file-bytes", default_value_t = 256 << 20)]
    pub max_text_file_bytes: u64,
    /// Cap on the size of an embeddings file (`.npy`) named by a manifest.
    #[arg(long = "max-array-file-bytes", default_value_t = 4 << 30)]
    pub max_array_file_bytes: u64,
    /// Cap on the size of one image file.
    #[arg(long = "max-image-file-bytes", default_value_t = 64 << 20)]
    pub max_image_file_bytes: u64,
    /// Cap on the pixels of one decoded or rendered image (width x height).
    #[arg(long = "max-image-pixels", default_value_t = 64 << 20)]
    pub max_image_pixels: u64,
    /// Cap on the depth of an image-folder walk (symbolic links to directories are not followed).
    #[arg(long = "max-walk-depth", default_value_t = 32)]
    pub max_walk_depth: usize,
    /// Cap on the directory entries one image-folder walk visits.
    #[arg(long = "max-walk-entries", default_value_t = 1_000_000)]
    pub max_walk_entries: usize,
    /// Cap on the items (samples) of one ingest.
    #[arg(long = "max-ingest-items", default_value_t = 2_000_000)]
    pub max_ingest_items: usize,
    /// Cap on simultaneous TCP connections; further ones are closed at once.
    #[arg(long = "max-connections", default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a TCP connection may stay open without a successful `initialize`.
    #[arg(long = "init-timeout-secs", default_value_t = 30)]
    pub init_timeout_secs: u64,
    /// JSON values allowed per KiB of `--max-body` in one incoming body (the body-to-memory
    /// ratio: a decoded value costs 32-100 bytes); at least 65,536 values whatever this says.
    /// Counted before the body is decoded.
    #[arg(
        long = sotalign_protocol::framing::JSON_VALUES_CAP,
        default_value_t = sotalign_protocol::framing::DEFAULT_VALUES_PER_KIB
    )]
    pub max_json_values_per_kib: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steps: 100_000,
            max_head_dim: 8192,
            max_batch: 8192,
            max_sinkhorn_iters: 10_000,
            max_grid: 64,
            max_k: 100,
            max_page: 1000,
            max_text_file_bytes: 256 << 20,
            max_array_file_bytes: 4 << 30,
            max_image_file_bytes: 64 << 20,
            max_image_pixels: 64 << 20,
            max_walk_depth: 32,
            max_walk_entries: 1_000_000,
            max_ingest_items: 2_000_000,
            max_connections: 256,
            init_timeout_secs: 30,
            max_json_values_per_kib: sotalign_protocol::framing::DEFAULT_VALUES_PER_KIB,
        }
    }
}

impl Limits {
    /// The decoder of incoming frames: the body cap `max_body` and the JSON-value cap
    /// (`--max-json-values-per-kib`; refused bodies are `LIMIT_EXCEEDED` naming that flag).
    pub fn frame_codec(&self, max_body: usize) -> sotalign_protocol::FrameCodec {
        sotalign_protocol::FrameCodec::new(max_body)
            .with_values_per_kib(self.max_json_values_per_kib)
    }
}

/// The caps of this process: those [`install`]ed by `sotalign serve`, else the defaults.
pub fn current() -> &'static Limits {
    static DEFAULT: OnceLock<Limits> = OnceLock::new();
    GLOBAL
        .get()
        .unwrap_or_else(|| DEFAULT.get_or_init(Limits::default))
}

static GLOBAL: OnceLock<Limits> = OnceLock::new();
static SCOPE: OnceLock<Scope> = OnceLock::new();

/// Set the process-wide caps and read scope (once, at start; later calls are ignored).
pub fn install(limits: Limits, scope: Scope) {
    let _ = GLOBAL.set(limits);
    let _ = SCOPE.set(scope);
}

/// The read scope of this process: [`install`]ed by `sotalign serve`, else unrestricted (the
/// CLI reads what its user names).
pub fn scope() -> &'static Scope {
    static OPEN: OnceLock<Scope> = OnceLock::new();
    SCOPE
        .get()
        .unwrap_or_else(|| OPEN.get_or_init(Scope::unrestricted))
}

/// A cap was exceeded, or a path is not readable under the daemon's rules.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    /// `what` asked for `got`, over the cap `cap` (`--flag`).
    #[error("{what} = {got} exceeds the cap {limit} (sotalign serve --{flag})")]
    Exceeded {
        what: String,
        got: u64,
        limit: u64,
        flag: &'static str,
    },
    #[error("{path}: not a regular file ({kind}); only regular files are read")]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path} is outside the directories this daemon may read ({allowed}); start it with --allow-dir"
    )]
    OutsideScope { path: String, allowed: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::sync::Arc<std::io::Error>,
    },
}

impl LimitError {
    /// The cap's flag name, for the error's `data.cap`.
    pub fn cap(&self) -> Option<&'static str> {
        match self {
            LimitError::Exceeded { flag, .. } => Some(flag),
            _ => None,
        }
    }

    fn io(path: &Path, e: std::io::Error) -> Self {
        LimitError::Io {
            path: path.display().to_string(),
            source: std::sync::Arc::new(e),
        }
    }
}

/// `Ok` when `got <= limit`, else the error naming `what` and the cap's `flag`.
pub fn check(what: &str, got: u64, limit: u64, flag: &'static str) -> Result<(), LimitError> {
    if got <= limit {
        Ok(())
    } else {
        Err(LimitError::Exceeded {
            what: what.to_string(),
            got,
            limit,
            flag,
        })
    }
}

/// The directories a daemon may read client-named paths under (`--allow-dir`, plus its data
/// and assets directories). Paths are compared after resolving symbolic links and `..`, so a
/// link inside an allowed directory that points outside it is outside.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Canonical allowed roots; `None`: unrestricted.
    roots: Option<Vec<PathBuf>>,
}

impl Scope {
    pub fn unrestricted() -> Self {
        Self { roots: None }
    }

    /// Only below these directories (those that do not exist yet are kept as given).
    pub fn only(dirs: &[PathBuf]) -> Self {
        let roots = dirs
            .iter()
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
            .collect();
        Self { roots: Some(roots) }
    }

    pub fn is_unrestricted(&self) -> bool {
        self.roots.is_none()
    }

    /// The canonical form of `path` if it lies in scope; the error names the allowed roots.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, LimitError> {
        let canon = std::fs::canonicalize(path).map_err(|e| LimitError::io(path, e))?;
        match &self.roots {
            None => Ok(canon),
            Some(roots) if roots.iter().any(|r| canon.starts_with(r)) => Ok(canon),
            Some(roots) => Err(LimitError::OutsideScope {
                path: path.display().to_string(),
                allowed: roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// Check that `path` is in scope and a regular file, open it without blocking (a FIFO swapped
/// in after the check cannot hang the open), and return the file with its size.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64), LimitError> {
    let canon = scope().resolve(path)?;
    let meta = std::fs::metadata(&canon).map_err(|e| LimitError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(LimitError::NotRegular {
            path: path.display().to_string(),
            kind: kind_of(&meta.file_type()),
        });
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let f = opts.open(&canon).map_err(|e| LimitError::io(path, e))?;
    // The same checks on what was opened (the path may have changed since).
    let meta = f.metadata().map_err(|e| LimitError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(LimitError::NotRegular {
            path: path.display().to_string(),
            kind: kind_of(&meta.file_type()),
        });
    }
    Ok((f, meta.len()))
}

/// Read a client-named file whole: in scope, regular, at most `max` bytes (`flag` names the
/// cap). The cap is enforced while reading too, so a file that grows meanwhile cannot exceed it.
pub fn read_file(path: &Path, max: u64, flag: &'static str) -> Result<Vec<u8>, LimitError> {
    let (f, len) = open_regular(path)?;
    let what = format!("size of {} in bytes", path.display());
    check(&what, len, max, flag)?;
    let mut out = Vec::new();
    f.take(max.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| LimitError::io(path, e))?;
    check(&what, out.len() as u64, max, flag)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_the_cap() {
        assert!(check("x", 5, 5, "max-x").is_ok());
        let e = check("optim.steps", 6, 5, "max-steps").unwrap_err();
        assert_eq!(e.cap(), Some("max-steps"));
        assert!(e.to_string().contains("--max-steps"), "{e}");
    }

    /// The JSON-value cap is a flag: lowering it refuses a body the default accepts, with
    /// `LIMIT_EXCEEDED` naming the flag and keeping the request's id.
    #[test]
    fn lowered_json_value_cap_refuses_a_body_the_default_accepts() {
        use clap::Parser;
        use tokio_util::codec::Decoder;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            limits: Limits,
        }
        let parsed = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
                .expect("flags parse")
                .limits
        };
        let default = parsed(&[]);
        assert_eq!(default, Limits::default());
        let lowered = parsed(&["--max-json-values-per-kib", "1"]);
        let max_body = sotalign_protocol::framing::DEFAULT_MAX_BODY;
        let (loose, strict) = (
            default.frame_codec(max_body).max_values(),
            lowered.frame_codec(max_body).max_values(),
        );
        assert!(strict < loose, "{strict} vs {loose}");
        // A body with a few more values than the lowered cap allows (fewer than the default).
        let n = strict + 1000;
        let mut body = String::from(
            r#"{"jsonrpc":"2.0","id":9,"method":"sotalign/status","params":{"pad":[0"#,
        );
        body.push_str(&",0".repeat(n));
        body.push_str("]}}");
        let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        let decode = |l: &Limits| {
            let mut buf = bytes::BytesMut::from(frame.as_bytes());
            l.frame_codec(max_body)
                .decode(&mut buf)
                .expect("never a fatal error")
                .expect("one whole frame")
        };
        assert!(
            decode(&default).is_ok(),
            "the default cap accepts {n} values"
        );
        let refused = decode(&lowered).expect_err("the lowered cap refuses them");
        let e = refused.to_error();
        assert_eq!(e.code, sotalign_protocol::codes::LIMIT_EXCEEDED);
        let data = e.data.expect("data names the cap");
        assert_eq!(data["cap"], "max-json-values-per-kib");
        assert_eq!(data["limit"], strict);
        assert!(
            e.message.contains("--max-json-values-per-kib"),
            "{}",
            e.message
        );
        assert_eq!(refused.id(), Some(sotalign_protocol::Id::Number(9)));
    }

    #[test]
    fn reads_regular_files_only_and_caps_their_size() {
        let dir = std::env::temp_dir().join(format!("sotalign-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("a.txt");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_file(&f, 5, "max-text-file-bytes").unwrap(), b"hello");
        let e = read_file(&f, 4, "max-text-file-bytes").unwrap_err();
        assert_eq!(e.cap(), Some("max-text-file-bytes"));
        assert!(matches!(
            read_file(&dir, 10, "x"),
            Err(LimitError::NotRegular { .. })
        ));
        #[cfg(unix)]
        assert!(matches!(
            read_file(Path::new("/dev/zero"), 10, "x"),
            Err(LimitError::NotRegular { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn scope_resolves_links_and_dots() {
        let base = std::env::temp_dir().join(format!("sotalign-scope-{}", std::process::id()));
        let inside = base.join("in");
        let outside = base.join("out");
        std::fs::create_dir_all(&inside).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::fs::write(inside.join("ok"), b"x").unwrap();
        let s = Scope::only(std::slice::from_ref(&inside));
        assert!(s.resolve(&inside.join("ok")).is_ok());
        assert!(matches!(
            s.resolve(&inside.join("../out/secret")),
            Err(LimitError::OutsideScope { .. })
        ));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(outside.join("secret"), inside.join("link")).unwrap();
            assert!(matches!(
                s.resolve(&inside.join("link")),
                Err(LimitError::OutsideScope { .. })
            ));
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
