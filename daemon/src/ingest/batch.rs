//! The one ingest door: every source format becomes a [`Batch`] (samples + known pairs) here,
//! by a pure `source -> batch` function per format. The daemon's ingest job (and through it
//! `sotalign ingest`) only runs them and stores the result in one transaction.
//!
//! | format | function | pairs / unpaired |
//! |---|---|---|
//! | folder of images + caption file | [`from_folders`] | everything unpaired |
//! | sotalign manifest v1 (`io::manifest`) | [`from_manifest`] | entries with both sides are pairs (`split`) |
//! | Hugging Face `imagefolder` (`metadata.jsonl`) | [`from_imagefolder`] | a row with a caption is a pair, without one an unpaired image |
//! | CSV table | [`from_csv`] | a row with both cells is a pair, one empty cell: unpaired |
//! | parquet table | [`from_parquet`] | same columns as CSV |
//! | inline embedded samples (protocol) | [`from_embedded`] | unpaired |
//!
//! Table columns (CSV, parquet, imagefolder metadata): the image is `image_path`, `imagePath`,
//! `image` or `file_name`; the caption `caption` or `text`; optional `key`, `split`
//! (`train`/`test`/`unpaired`) and `label`. Relative image paths are resolved against the
//! table's folder. Any bad row fails the whole batch with every bad row listed by line (data
//! lines count from 2 in CSV, the header being line 1; parquet rows from 1), so a failed
//! ingest stores nothing.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sotalign_protocol::types::{EmbeddedSample, Modality};

use crate::io::manifest::{BadRows, ManifestError, ManifestFile, Split};
use crate::store::{NewPair, NewSample};

/// A validated batch, ready to insert.
#[derive(Debug, Default)]
pub struct Batch {
    pub samples: Vec<NewSample>,
    pub pairs: Vec<NewPair>,
    /// Encoders named by the source (a manifest header) for the vectors it carries.
    pub encoders: (Option<String>, Option<String>),
    /// Indices into `samples` stored without a vector, to encode in the background.
    pub pending: Vec<usize>,
}

impl Batch {
    pub fn needs(&self, m: Modality) -> bool {
        self.pending.iter().any(|&i| self.samples[i].modality == m)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{}: {msg}", path.display())]
    Read { path: PathBuf, msg: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An embeddings file a manifest names.
    #[error(transparent)]
    File(#[from] crate::io::IoError),
    #[error("{}: {} bad row{}: {}", path.display(), bad.total, if bad.total == 1 { "" } else { "s" }, bad.describe())]
    BadRows { path: PathBuf, bad: BadRows },
    #[error("{}: holds no images or captions", path.display())]
    Empty { path: PathBuf },
    #[error("{item}: vector has {actual} components, expected {expected}")]
    Dimension {
        item: String,
        expected: usize,
        actual: usize,
    },
    #[error("{item}: vector component {index} is not finite")]
    NonFinite { item: String, index: usize },
    #[error("{0}")]
    Params(String),
    /// A cap (`--max-*`) or the read scope (`--allow-dir`), see `limits`.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

impl BatchError {
    fn read(path: &Path, msg: impl std::fmt::Display) -> Self {
        BatchError::Read {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
    /// The file the error is about, where there is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            BatchError::Read { path, .. }
            | BatchError::BadRows { path, .. }
            | BatchError::Empty { path } => Some(path),
            BatchError::File(
                crate::io::IoError::Fs { path, .. }
                | crate::io::IoError::Npy { path, .. }
                | crate::io::IoError::Format { path, .. },
            ) => Some(path),
            BatchError::Manifest(
                ManifestError::Unversioned { path, .. }
                | ManifestError::Version { path, .. }
                | ManifestError::Header { path, .. }
                | ManifestError::Empty { path },
            ) => Some(path),
            _ => None,
        }
    }
}

/// Check a vector against the modality's dimension (the stored one, else the first in the
/// batch) and for finiteness.
fn check_vector(
    v: &[f32],
    item: &str,
    dims: &mut [Option<usize>; 2],
    m: Modality,
) -> Result<(), BatchError> {
    let slot = if m == Modality::Image { 0 } else { 1 };
    let expected = *dims[slot].get_or_insert(v.len());
    if v.len() != expected {
        return Err(BatchError::Dimension {
            item: item.to_string(),
            expected,
            actual: v.len(),
        });
    }
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(BatchError::NonFinite {
            item: item.to_string(),
            index,
        });
    }
    Ok(())
}

/// The default key of an image: its path under `base` without extension (so equal stems in
/// sub-folders stay distinct), else its file stem.
fn image_key(base: &Path, path: &Path) -> String {
    match path.strip_prefix(base) {
        Ok(rel) => rel.with_extension("").to_string_lossy().replace('\\', "/"),
        Err(_) => path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string()),
    }
}

/// The default key of a caption: its content hash, so re-ingesting adds nothing twice.
fn text_key(text: &str) -> String {
    format!(
        "text-{}",
        &super::content_hash("text", text.as_bytes())[..16]
    )
}

/// One row of any source, before it becomes samples.
#[derive(Default)]
struct Row {
    key: Option<String>,
    image_path: Option<PathBuf>,
    image_vec: Option<Vec<f32>>,
    caption: Option<String>,
    text_vec: Option<Vec<f32>>,
    split: Split,
    /// A default key when the row has neither a key nor an image path (`image-<line>`).
    line: usize,
}

/// Accumulates rows into a batch.
struct Builder {
    base: PathBuf,
    batch: Batch,
}

impl Builder {
    fn new(base: &Path) -> Self {
        Builder {
            base: base.to_path_buf(),
            batch: Batch::default(),
        }
    }

    fn push(&mut self, r: Row) {
        let has_image = r.image_path.is_some() || r.image_vec.is_some();
        let has_text = r.caption.is_some() || r.text_vec.is_some();
        let key = r
            .key
            .clone()
            .or_else(|| r.image_path.as_deref().map(|p| image_key(&self.base, p)));
        let b = &mut self.batch;
        let img = has_image.then(|| {
            if r.image_vec.is_none() {
                b.pending.push(b.samples.len());
            }
            b.samples.push(NewSample {
                modality: Modality::Image,
                key: key.clone().unwrap_or_else(|| format!("image-{}", r.line)),
                path: r.image_path.as_ref().map(|p| p.display().to_string()),
                text: None,
                vector: r.image_vec,
            });
            b.samples.len() - 1
        });
        let txt = has_text.then(|| {
            if r.text_vec.is_none() {
                b.pending.push(b.samples.len());
            }
            let key = key.clone().unwrap_or_else(|| match &r.caption {
                Some(c) => text_key(c),
                None => format!("text-{}", r.line),
            });
            b.samples.push(NewSample {
                modality: Modality::Text,
                key,
                path: None,
                text: r.caption,
                vector: r.text_vec,
            });
            b.samples.len() - 1
        });
        if let (Some(image), Some(text)) = (img, txt) {
            match r.split {
                Split::Train => b.pairs.push(NewPair {
                    image,
                    text,
                    held_out: false,
                }),
                Split::Test => b.pairs.push(NewPair {
                    image,
                    text,
                    held_out: true,
                }),
                Split::Unpaired => {}
            }
        }
    }

    /// [`Builder::finish`] unless a row was bad: then every bad row, and nothing.
    fn finish_rows(self, path: &Path, bad: BadRows) -> Result<Batch, BatchError> {
        if !bad.is_empty() {
            return Err(BatchError::BadRows {
                path: path.to_path_buf(),
                bad,
            });
        }
        self.finish(path)
    }

    fn finish(self, path: &Path) -> Result<Batch, BatchError> {
        check_items(self.batch.samples.len())?;
        if self.batch.samples.is_empty() {
            return Err(BatchError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(self.batch)
    }
}

/// A `.npy` a manifest names: in scope, a regular file, at most `--max-array-file-bytes`,
/// header checked against the data (`io::npy`, overflow-checked).
fn npy_rows(path: &Path) -> Result<sotalign_engine::Matrix, BatchError> {
    let cap = crate::limits::current().max_array_file_bytes;
    let bytes = crate::limits::read_file(path, cap, "max-array-file-bytes")?;
    crate::io::npy::parse_npy(&bytes)
        .map_err(|e| BatchError::read(path, format!("not a supported .npy file: {e}")))
}

/// The number of samples of one ingest against `--max-ingest-items`.
fn check_items(n: usize) -> Result<(), BatchError> {
    let cap = crate::limits::current().max_ingest_items;
    crate::limits::check(
        "items in one ingest",
        n as u64,
        cap as u64,
        "max-ingest-items",
    )?;
    Ok(())
}

/// A sotalign manifest (version 1): paths and captions to encode, and/or rows of the `.npy`
/// files its header names.
pub fn from_manifest(path: &Path, mut dims: [Option<usize>; 2]) -> Result<Batch, BatchError> {
    let f = ManifestFile::read(path)?;
    if !f.bad.is_empty() {
        return Err(BatchError::BadRows {
            path: path.to_path_buf(),
            bad: f.bad,
        });
    }
    let mut mats = [None, None];
    if let Some(e) = &f.header.embeddings {
        for (slot, file) in [(0, &e.image), (1, &e.text)] {
            if let Some(file) = file {
                mats[slot] = Some(npy_rows(&f.resolve(file))?);
            }
        }
    }
    let mut bad = BadRows::default();
    let mut b = Builder::new(f.base());
    if let Some(e) = &f.header.encoders {
        b.batch.encoders = (e.image.clone(), e.text.clone());
    }
    for (line, e) in &f.entries {
        let mut side = |slot: usize,
                        m: Modality,
                        row: Option<usize>|
         -> Result<Option<Vec<f32>>, BatchError> {
            let Some(r) = row else { return Ok(None) };
            let what = if slot == 0 { "image" } else { "text" };
            let Some(mat) = &mats[slot] else {
                bad.push(
                    *line,
                    format!("{what}Row given but the header names no {what} embeddings file"),
                );
                return Ok(None);
            };
            if r >= mat.rows {
                bad.push(
                    *line,
                    format!(
                        "{what}Row {r} is out of range (the file has {} rows)",
                        mat.rows
                    ),
                );
                return Ok(None);
            }
            let v = mat.row(r).to_vec();
            check_vector(&v, &format!("{}:{line}", path.display()), &mut dims, m)?;
            Ok(Some(v))
        };
        let image_vec = side(0, Modality::Image, e.image_row)?;
        let text_vec = side(1, Modality::Text, e.text_row)?;
        b.push(Row {
            key: e.key.clone(),
            image_path: e.image_path.as_deref().map(|p| f.resolve(p)),
            image_vec,
            caption: e.caption.clone(),
            text_vec,
            split: e.split(),
            line: *line,
        });
    }
    b.finish_rows(path, bad)
}

/// A source reader's error: caps and scope keep their type, the rest name the file.
fn from_source(path: &Path, e: super::IngestError) -> BatchError {
    match e {
        super::IngestError::Limit(l) => BatchError::Limit(l),
        e => BatchError::read(path, e),
    }
}

/// A folder of images (recursive) and/or a caption file (one caption per line), unpaired.
pub fn from_folders(images: Option<&Path>, texts: Option<&Path>) -> Result<Batch, BatchError> {
    use super::sources;
    let (root, anchor) = match (images, texts) {
        (None, None) => {
            return Err(BatchError::Params(
                "`folders` needs `images` (a folder) and/or `texts` (a caption file)".into(),
            ));
        }
        (Some(d), _) => (d, d),
        (None, Some(t)) => (t.parent().unwrap_or(Path::new(".")), t),
    };
    let mut b = Builder::new(root);
    if let Some(dir) = images {
        // In scope (links resolved) before anything under it is listed.
        crate::limits::scope().resolve(dir)?;
        let ds = sources::image_dir(dir).map_err(|e| from_source(dir, e))?;
        for it in ds.items {
            b.push(Row {
                image_path: it.image,
                split: Split::Unpaired,
                ..Default::default()
            });
        }
    }
    if let Some(file) = texts {
        if file.is_dir() {
            return Err(BatchError::read(
                file,
                "`texts` must be a caption file (one caption per line), not a folder",
            ));
        }
        let ds = sources::text_file(file).map_err(|e| from_source(file, e))?;
        for it in ds.items {
            b.push(Row {
                caption: it.text,
                split: Split::Unpaired,
                ..Default::default()
            });
        }
    }
    b.finish(anchor)
}

/// Column names of a table, mapped to the row's fields.
#[derive(Default)]
struct Columns {
    image: Option<usize>,
    caption: Option<usize>,
    key: Option<usize>,
    split: Option<usize>,
}

impl Columns {
    fn find(names: &[String], path: &Path) -> Result<Columns, BatchError> {
        let pos = |cands: &[&str]| {
            cands
                .iter()
                .find_map(|c| names.iter().position(|n| n.trim() == *c))
        };
        let c = Columns {
            image: pos(&["image_path", "imagePath", "image", "file_name"]),
            caption: pos(&["caption", "text"]),
            key: pos(&["key"]),
            split: pos(&["split"]),
        };
        if c.image.is_none() && c.caption.is_none() {
            return Err(BatchError::read(
                path,
                format!(
                    "no image column (image_path, image, file_name) and no caption column \
                     (caption, text) among {names:?}"
                ),
            ));
        }
        Ok(c)
    }
}

/// Turn one table row (cells by column index, `None` = empty/null) into a [`Row`].
fn table_row(
    c: &Columns,
    cell: &dyn Fn(usize) -> Option<String>,
    base: &Path,
    line: usize,
) -> Result<Row, String> {
    let get = |i: Option<usize>| i.and_then(cell).filter(|s| !s.trim().is_empty());
    let image_path = get(c.image).map(|p| base.join(p));
    let caption = get(c.caption).map(|s| s.trim().to_string());
    if image_path.is_none() && caption.is_none() {
        return Err("neither an image nor a caption".into());
    }
    let split = match get(c.split).as_deref() {
        None => Split::Train,
        Some(s) => serde_json::from_value(serde_json::Value::String(s.trim().to_string()))
            .map_err(|_| format!("split must be train, test or unpaired, got {s:?}"))?,
    };
    if split == Split::Test && (image_path.is_none() || caption.is_none()) {
        return Err("only pairs (an image and a caption) can be in the test split".into());
    }
    Ok(Row {
        key: get(c.key),
        image_path,
        caption,
        split,
        line,
        ..Default::default()
    })
}

/// A table a client named (CSV, parquet, metadata.jsonl): in scope, a regular file, at most
/// `--max-text-file-bytes`; returned open, with its length.
fn open_table(path: &Path) -> Result<std::fs::File, BatchError> {
    let (f, len) = crate::limits::open_regular(path)?;
    let cap = crate::limits::current().max_text_file_bytes;
    crate::limits::check(
        &format!("size of {} in bytes", path.display()),
        len,
        cap,
        "max-text-file-bytes",
    )?;
    Ok(f)
}

/// A CSV table with a header row.
pub fn from_csv(path: &Path) -> Result<Batch, BatchError> {
    let file = open_table(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut rd = csv::ReaderBuilder::new().flexible(false).from_reader(file);
    let names: Vec<String> = rd
        .headers()
        .map_err(|e| BatchError::read(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let cols = Columns::find(&names, path)?;
    let mut b = Builder::new(base);
    let mut bad = BadRows::default();
    for (i, rec) in rd.records().enumerate() {
        let fallback = i + 2;
        match rec {
            Err(e) => {
                let line = e.position().map_or(fallback, |p| p.line() as usize);
                bad.push(line, e.to_string());
            }
            Ok(r) => {
                let line = r.position().map_or(fallback, |p| p.line() as usize);
                let cell = |k: usize| r.get(k).map(str::to_string);
                match table_row(&cols, &cell, base, line) {
                    Ok(row) => b.push(row),
                    Err(msg) => bad.push(line, msg),
                }
            }
        }
    }
    b.finish_rows(path, bad)
}

/// A parquet table (string columns, as `datasets`/pandas/pyarrow write them).
pub fn from_parquet(path: &Path) -> Result<Batch, BatchError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = open_table(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let reader = SerializedFileReader::new(file).map_err(|e| BatchError::read(path, e))?;
    let names: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let cols = Columns::find(&names, path)?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| BatchError::read(path, e))?;
    let mut b = Builder::new(base);
    let mut bad = BadRows::default();
    for (i, row) in rows.enumerate() {
        let line = i + 1;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                bad.push(line, e.to_string());
                continue;
            }
        };
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        let mut wrong = None;
        let cell = |k: usize| match fields.get(k) {
            None | Some(Field::Null) => None,
            Some(Field::Str(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        for k in [cols.image, cols.caption, cols.key, cols.split]
            .into_iter()
            .flatten()
        {
            if let Some(f) = fields.get(k)
                && !matches!(f, Field::Null | Field::Str(_))
            {
                wrong = Some(format!("column {:?} must hold strings, got {f}", names[k]));
            }
        }
        if let Some(msg) = wrong {
            bad.push(line, msg);
            continue;
        }
        match table_row(&cols, &cell, base, line) {
            Ok(row) => b.push(row),
            Err(msg) => bad.push(line, msg),
        }
    }
    b.finish_rows(path, bad)
}

/// A Hugging Face `imagefolder` directory: `metadata.jsonl` (one JSON object per line with
/// `file_name` relative to the directory and a caption column) next to the images. Rows
/// without a caption are unpaired images; images the metadata does not list are ignored.
pub fn from_imagefolder(dir: &Path) -> Result<Batch, BatchError> {
    let meta = dir.join("metadata.jsonl");
    if !meta.is_file() {
        return Err(BatchError::read(
            dir,
            "not an imagefolder: no metadata.jsonl (with file_name and text columns) in it",
        ));
    }
    let cap = crate::limits::current().max_text_file_bytes;
    let bytes = crate::limits::read_file(&meta, cap, "max-text-file-bytes")?;
    let mut b = Builder::new(dir);
    let mut bad = BadRows::default();
    let mut seen = HashSet::new();
    for (i, raw) in bytes.split(|&c| c == b'\n').enumerate() {
        let line = i + 1;
        let Ok(s) = std::str::from_utf8(raw) else {
            bad.push(line, "line is not valid UTF-8");
            continue;
        };
        if s.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(s) {
            Ok(o) => o,
            Err(e) => {
                bad.push(line, format!("not a JSON object: {e}"));
                continue;
            }
        };
        let names: Vec<String> = obj.keys().cloned().collect();
        let cols = match Columns::find(&names, &meta) {
            Ok(c) => c,
            Err(e) => {
                bad.push(line, e.to_string());
                continue;
            }
        };
        if cols.image.is_none() {
            bad.push(line, "no file_name");
            continue;
        }
        let wrong = [cols.image, cols.caption, cols.key, cols.split]
            .into_iter()
            .flatten()
            .find_map(|k| match &obj[&names[k]] {
                serde_json::Value::Null | serde_json::Value::String(_) => None,
                v => Some(format!("{:?} must be a string, got {v}", names[k])),
            });
        if let Some(msg) = wrong {
            bad.push(line, msg);
            continue;
        }
        let cell = |k: usize| {
            obj.get(&names[k])
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let row = table_row(&cols, &cell, dir, line);
        match row {
            Ok(row) => {
                if let Some(p) = &row.image_path
                    && !seen.insert(p.clone())
                {
                    bad.push(line, format!("{} is listed twice", p.display()));
                    continue;
                }
                b.push(row)
            }
            Err(msg) => bad.push(line, msg),
        }
    }
    if !bad.is_empty() {
        return Err(BatchError::BadRows { path: meta, bad });
    }
    b.finish(&meta)
}

/// Samples given inline with their encoder-space vectors (unpaired).
pub fn from_embedded(
    items: Vec<EmbeddedSample>,
    mut dims: [Option<usize>; 2],
) -> Result<Batch, BatchError> {
    if items.is_empty() {
        return Err(BatchError::Params("`embedded` holds no samples".into()));
    }
    check_items(items.len())?;
    let mut samples = Vec::with_capacity(items.len());
    for (n, it) in items.into_iter().enumerate() {
        check_vector(
            &it.vector.0,
            &format!("sample {n} ({:?})", it.key),
            &mut dims,
            it.modality,
        )?;
        if it.key.is_empty() {
            return Err(BatchError::Params(format!("sample {n}: empty key")));
        }
        samples.push(NewSample {
            modality: it.modality,
            key: it.key,
            path: it.path,
            text: it.text,
            vector: Some(it.vector.0),
        });
    }
    Ok(Batch {
        samples,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn keys(b: &Batch) -> Vec<(Modality, String)> {
        b.samples
            .iter()
            .map(|s| (s.modality, s.key.clone()))
            .collect()
    }

    #[test]
    fn manifest_pairs_unpaired_and_rows() {
        let d = tempfile::tempdir().unwrap();
        crate::io::npy::write_npy(
            &d.path().join("i.npy"),
            &sotalign_engine::Matrix::zeros(3, 4),
        )
        .unwrap();
        let m = d.path().join("m.jsonl");
        fs::write(
            &m,
            "{\"sotalign_manifest\": 1, \"embeddings\": {\"image\": \"i.npy\"}, \"encoders\": {\"image\": \"enc\"}}\n\
             {\"key\": \"a\", \"imagePath\": \"x/a.png\", \"caption\": \"An a.\"}\n\
             {\"imagePath\": \"x/b.png\", \"caption\": \"A b.\", \"split\": \"test\"}\n\
             {\"imageRow\": 2, \"caption\": \"A c.\", \"split\": \"unpaired\"}\n\
             {\"caption\": \"Only text.\"}\n",
        )
        .unwrap();
        let b = from_manifest(&m, [None, None]).unwrap();
        assert_eq!(b.samples.len(), 7);
        assert_eq!(b.pairs.len(), 2);
        assert!(!b.pairs[0].held_out && b.pairs[1].held_out);
        assert_eq!(b.samples[2].key, "x/b");
        assert_eq!(
            b.samples[2].path.as_deref(),
            Some(d.path().join("x/b.png").to_str().unwrap())
        );
        assert_eq!(b.samples[4].vector.as_deref(), Some(&[0.0f32; 4][..]));
        assert!(!b.pending.contains(&4));
        assert_eq!(b.encoders.0.as_deref(), Some("enc"));
        // Every bad row at once, by line; nothing half-built.
        fs::write(
            &m,
            "{\"sotalign_manifest\": 1}\n{\"imageRow\": 0}\n{\"imagePath\": \"ok.png\"}\n{\"imagePath\": 3}\n",
        )
        .unwrap();
        let e = from_manifest(&m, [None, None]).unwrap_err();
        let BatchError::BadRows { bad, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(bad.rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![4]);
        fs::write(&m, "{\"sotalign_manifest\": 1}\n{\"imageRow\": 0}\n").unwrap();
        let e = from_manifest(&m, [None, None]).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 2: imageRow given but the header names no image"),
            "{e}"
        );
        // Dimension against the stored one.
        fs::write(
            &m,
            "{\"sotalign_manifest\": 1, \"embeddings\": {\"image\": \"i.npy\"}}\n{\"imageRow\": 0}\n",
        )
        .unwrap();
        assert!(matches!(
            from_manifest(&m, [Some(5), None]),
            Err(BatchError::Dimension {
                expected: 5,
                actual: 4,
                ..
            })
        ));
    }

    #[test]
    fn csv_rows_pairs_unpaired_and_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.csv");
        fs::write(
            &p,
            "image_path,caption,split\na.png,\"A cat, sitting.\",\nb.png,,\n,Only text.,\nc.png,A c.,dev\n,,\n",
        )
        .unwrap();
        let e = from_csv(&p).unwrap_err();
        let BatchError::BadRows { bad, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(
            bad.rows.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![5, 6],
            "{e}"
        );
        fs::write(
            &p,
            "key,image_path,caption\nk1,a.png,\"A cat, sitting.\"\n,b.png,\n,,Only text.\n",
        )
        .unwrap();
        let b = from_csv(&p).unwrap();
        assert_eq!(
            keys(&b),
            vec![
                (Modality::Image, "k1".into()),
                (Modality::Text, "k1".into()),
                (Modality::Image, "b".into()),
                (Modality::Text, text_key("Only text.")),
            ]
        );
        assert_eq!(b.samples[1].text.as_deref(), Some("A cat, sitting."));
        assert_eq!(b.pairs.len(), 1);
        assert_eq!(b.pending.len(), 4);
        fs::write(&p, "foo,bar\n1,2\n").unwrap();
        assert!(
            from_csv(&p)
                .unwrap_err()
                .to_string()
                .contains("no image column")
        );
    }

    #[test]
    fn imagefolder_metadata() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("metadata.jsonl"),
            "{\"file_name\": \"a.png\", \"text\": \"An a.\", \"annotator\": \"x\"}\n\
             {\"file_name\": \"sub/b.png\", \"text\": null}\n",
        )
        .unwrap();
        let b = from_imagefolder(d.path()).unwrap();
        assert_eq!(b.samples.len(), 3);
        assert_eq!(b.pairs.len(), 1);
        assert_eq!(b.samples[2].key, "sub/b");
        fs::write(
            d.path().join("metadata.jsonl"),
            "{\"file_name\": \"a.png\", \"text\": 3}\n{\"text\": \"x\"}\n[1]\n",
        )
        .unwrap();
        let e = from_imagefolder(d.path()).unwrap_err();
        let BatchError::BadRows { bad, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(bad.total, 3, "{e}");
        assert!(from_imagefolder(&d.path().join("none")).is_err());
    }

    #[test]
    fn folders_are_unpaired() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("img/s")).unwrap();
        fs::write(d.path().join("img/s/a.png"), b"x").unwrap();
        fs::write(d.path().join("caps.txt"), "one\ntwo\n").unwrap();
        let b = from_folders(
            Some(&d.path().join("img")),
            Some(&d.path().join("caps.txt")),
        )
        .unwrap();
        assert_eq!(b.samples.len(), 3);
        assert!(b.pairs.is_empty());
        assert_eq!(b.samples[0].key, "s/a");
        assert!(from_folders(None, None).is_err());
    }
}
