//! `sotalign fetch` and `sotalign encode`.
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::assets::{self, Assets};
use crate::encoders::{ImageEncoder, TextEncoder, parse_device};
use crate::ingest::{self, EncodeOptions, Progress, Stage, sources};

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Assets directory (default: $SOTALIGN_ASSETS, else <user cache dir>/sotalign/assets).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Fetch only these assets (minilm, effnet-lite0, tuxpaint, openclipart); default all but
    /// openclipart (a second check set, fetched only when named).
    #[arg(long = "only")]
    pub only: Vec<String>,
}

pub fn fetch(args: FetchArgs) -> Result<()> {
    let root = args.dir.unwrap_or_else(assets::default_root);
    let out = assets::fetch::fetch(&root, &args.only, &mut |m| eprintln!("fetch: {m}"))?;
    let fetched = out
        .iter()
        .filter(|(_, o)| *o != assets::fetch::Outcome::AlreadyPresent)
        .count();
    println!(
        "assets in {}: {} fetched, {} already present",
        root.display(),
        fetched,
        out.len() - fetched
    );
    Ok(())
}

/// Model selection shared by commands that load encoders.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Assets directory holding the default models (see `sotalign fetch`).
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Image model: an EfficientNet-Lite legacy `.pth` file (default: the fetched Lite0).
    #[arg(long)]
    pub image_model: Option<PathBuf>,
    /// Text model: an HF-format BERT-family directory (default: the fetched all-MiniLM-L6-v2).
    #[arg(long)]
    pub text_model: Option<PathBuf>,
    /// cpu, cuda or cuda:N (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    /// The assets location these flags point at.
    pub fn assets_dir(&self) -> Assets {
        Assets::new(self.assets.clone().unwrap_or_else(assets::default_root))
    }

    fn assets(&self) -> Assets {
        self.assets_dir()
    }

    pub fn load_image(&self) -> Result<ImageEncoder> {
        let dev = parse_device(&self.device)?;
        let p = self
            .image_model
            .clone()
            .unwrap_or_else(|| self.assets().effnet_pth());
        ImageEncoder::load(&p, &dev).with_context(|| format!("loading image model {}", p.display()))
    }

    /// The text model's directory these flags name.
    pub fn text_dir(&self) -> PathBuf {
        self.text_model
            .clone()
            .unwrap_or_else(|| self.assets().minilm_dir())
    }

    pub fn load_text(&self) -> Result<TextEncoder> {
        let dev = parse_device(&self.device)?;
        let p = self.text_dir();
        TextEncoder::load(&p, &dev).with_context(|| format!("loading text model {}", p.display()))
    }
}

#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// A built-in dataset: `tuxpaint` (the fetched Tux Paint stamps) or `openclipart` (the
    /// fetched clip art, captions from its metadata: `ingest::openclipart`).
    #[arg(long, conflicts_with_all = ["manifest", "images", "texts"])]
    pub dataset: Option<String>,
    /// A sotalign manifest (version 1, docs/MANIFEST.md): entries with `imagePath` and/or
    /// `caption` (`label`, `split` carried to the output).
    #[arg(long, conflicts_with_all = ["images", "texts"])]
    pub manifest: Option<PathBuf>,
    /// A folder of (unpaired) images, scanned recursively.
    #[arg(long, conflicts_with = "texts")]
    pub images: Option<PathBuf>,
    /// A text file of (unpaired) captions, one per line.
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Output folder for images.npy, texts.npy, items.jsonl, report.json (default: ./embeddings/<name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Embedding cache root (default: $SOTALIGN_CACHE, else <user cache dir>/sotalign/embeddings).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Encode everything, neither reading nor writing the cache.
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    pub models: ModelArgs,
}

pub fn encode(args: EncodeArgs) -> Result<()> {
    let (ds, name) = if let Some(d) = &args.dataset {
        match d.as_str() {
            "tuxpaint" => {
                let stamps = args.models.assets().tuxpaint_stamps();
                if !stamps.is_dir() {
                    bail!(
                        "Tux Paint stamps not found in {} (run `sotalign fetch` first)",
                        stamps.display()
                    );
                }
                (sources::tuxpaint(&stamps)?, "tuxpaint".to_string())
            }
            "openclipart" => {
                let svg = args.models.assets().openclipart_svg();
                if !svg.is_dir() {
                    bail!(
                        "openclipart SVGs not found in {} (run `sotalign fetch --only openclipart` first)",
                        svg.display()
                    );
                }
                (
                    ingest::openclipart::openclipart(&svg)?,
                    "openclipart".to_string(),
                )
            }
            other => bail!("unknown dataset `{other}` (known: tuxpaint, openclipart)"),
        }
    } else if let Some(m) = &args.manifest {
        (sources::manifest(m)?, stem(m))
    } else if let Some(d) = &args.images {
        (sources::image_dir(d)?, stem(d))
    } else if let Some(t) = &args.texts {
        (sources::text_file(t)?, stem(t))
    } else {
        bail!("say what to encode: --dataset tuxpaint, --manifest F, --images DIR or --texts F");
    };
    let needs_image = ds.items.iter().any(|i| i.image.is_some());
    let needs_text = ds.items.iter().any(|i| i.text.is_some());
    let image = if needs_image {
        Some(args.models.load_image()?)
    } else {
        None
    };
    let text = if needs_text {
        Some(args.models.load_text()?)
    } else {
        None
    };
    let cache_root = args
        .cache
        .clone()
        .unwrap_or_else(ingest::cache::default_root);
    let opts = EncodeOptions {
        image: image.as_ref(),
        text: text.as_ref(),
        cache_root: if args.no_cache {
            None
        } else {
            Some(&cache_root)
        },
        batch: args.batch,
    };
    eprintln!(
        "encode: {} items from {} ({} already skipped by the reader)",
        ds.items.len(),
        ds.name,
        ds.skipped.len()
    );
    let t0 = std::time::Instant::now();
    let enc = encode_with_bars(&ds, &opts)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("embeddings").join(&name));
    ingest::write_output(&out, &enc)?;
    println!("{}", enc.report.summary(5));
    if let Some(m) = &enc.images {
        println!(
            "images: {} x {} ({} from cache, {} encoded)",
            m.rows, m.cols, enc.image_cache_hits, enc.images_encoded
        );
    }
    if let Some(m) = &enc.texts {
        println!(
            "texts:  {} x {} ({} from cache, {} encoded)",
            m.rows, m.cols, enc.text_cache_hits, enc.texts_encoded
        );
    }
    println!(
        "wrote {} in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// [`ingest::encode_dataset`] with one progress bar per stage (images, texts) on stderr.
pub fn encode_with_bars(ds: &ingest::Dataset, opts: &EncodeOptions) -> Result<ingest::Encoded> {
    let style =
        ProgressStyle::with_template("{prefix:>7} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut bar: Option<ProgressBar> = None;
    let enc = ingest::encode_dataset(ds, opts, &mut |p| match p {
        Progress::Start { stage, total } => {
            let b = ProgressBar::new(total as u64).with_style(style.clone());
            b.set_prefix(match stage {
                Stage::Images => "images",
                Stage::Texts => "texts",
            });
            bar = Some(b);
        }
        Progress::Advance { done, .. } => {
            if let Some(b) = &bar {
                b.set_position(done as u64)
            }
        }
        Progress::Finish { .. } => {
            if let Some(b) = bar.take() {
                b.finish()
            }
        }
    })?;
    Ok(enc)
}

fn stem(p: &std::path::Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}
