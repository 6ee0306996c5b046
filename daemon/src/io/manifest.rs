//! The sotalign manifest (version 1): the one JSONL schema every part of sotalign reads and
//! writes (the daemon's `sotalign/ingest`, `sotalign ingest`, `sotalign encode --manifest`,
//! `sotalign align --manifest`, `sotalign export --format jsonl`, the demo).
//!
//! The first non-blank, non-`#` line is the header; every other line is one entry:
//! ```text
//! {"sotalign_manifest": 1, "embeddings": {"image": "img.npy", "text": "txt.npy"}, "encoders": {"image": "efficientnet-lite0", "text": "all-MiniLM-L6-v2"}}
//! {"key": "penguin", "imagePath": "stamps/penguin.png", "imageRow": 17, "caption": "A penguin.", "textRow": 17, "split": "train"}
//! {"key": "frog", "imagePath": "stamps/frog.png"}
//! {"caption": "A cat on a mat."}
//! ```
//! A file path and an embedding row are different fields (`imagePath` / `imageRow`, `caption` /
//! `textRow`), so a number can never be read as a path or the other way round. An entry with an
//! image side and a text side is a pair: `split` `train` (default) is a known (seed) pair,
//! `test` a held-out pair, `unpaired` stores both sides unpaired; an entry with one side is an
//! unpaired item (`test` is refused for it). `caption` also defines equality for retrieval
//! (two pairs with the same caption are both correct). Relative paths are resolved against the
//! manifest's folder. `decision` is written by `sotalign export` (who decided what, when) and
//! ignored on input.
//!
//! Manifests without the header (the three older dialects, where `"image"` was a row number in
//! one and a path in the others) are refused with [`ManifestError::Unversioned`], whose message
//! shows the new form; nothing guesses which dialect a file is in.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::IoError;
use sotalign_engine::{AlignData, Matrix};

/// The version this sotalign reads and writes.
pub const VERSION: u64 = 1;
/// Bad rows kept with their messages; the rest are only counted.
pub const MAX_BAD_ROWS: usize = 100;

/// The header line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub sotalign_manifest: u64,
    /// `.npy` files (2-D little-endian f32) that `imageRow` / `textRow` index, relative to
    /// the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Sides>,
    /// The encoders that produced those embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoders: Option<Sides>,
}

impl Header {
    pub fn v1() -> Self {
        Header {
            sotalign_manifest: VERSION,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    #[default]
    Train,
    Test,
    Unpaired,
}

/// Who decided a pair and when (written by export; informational on input).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DecisionInfo {
    /// `confirmed` or `rejected`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotator: Option<String>,
    pub source: String,
    pub at_ms: u64,
}

/// One entry line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_row: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_row: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionInfo>,
}

impl Entry {
    pub fn has_image(&self) -> bool {
        self.image_path.is_some() || self.image_row.is_some()
    }
    pub fn has_text(&self) -> bool {
        self.caption.is_some() || self.text_row.is_some()
    }
    pub fn split(&self) -> Split {
        self.split.unwrap_or_default()
    }
}

/// A line that could not be used, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadRow {
    pub line: usize,
    pub msg: String,
}

/// Bad rows of one source: the first [`MAX_BAD_ROWS`] with their messages, and how many in all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BadRows {
    pub rows: Vec<BadRow>,
    pub total: usize,
}

impl BadRows {
    pub fn push(&mut self, line: usize, msg: impl Into<String>) {
        self.total += 1;
        if self.rows.len() < MAX_BAD_ROWS {
            self.rows.push(BadRow {
                line,
                msg: msg.into(),
            });
        }
    }
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
    /// `line 3: ...; line 9: ...` (and `N more`).
    pub fn describe(&self) -> String {
        let mut s: Vec<String> = self
            .rows
            .iter()
            .map(|r| format!("line {}: {}", r.line, r.msg))
            .collect();
        if self.total > self.rows.len() {
            s.push(format!("{} more", self.total - self.rows.len()));
        }
        s.join("; ")
    }
}

/// Why a manifest could not be read at all (bad single entries are [`BadRows`] instead).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Out of scope, not a regular file, over `--max-text-file-bytes`, or unreadable.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
    #[error(
        "{}: not a sotalign manifest (line {line}): the first line must be the header \
         {{\"sotalign_manifest\": 1}}. Version 1 names paths and embedding rows apart: \
         {{\"key\": \"cat\", \"imagePath\": \"cat.png\", \"caption\": \"A cat.\"}} or \
         {{\"imageRow\": 3, \"textRow\": 3}}; older manifests whose \"image\"/\"text\" held either \
         are not read (see docs/MANIFEST.md)",
        path.display()
    )]
    Unversioned { path: PathBuf, line: usize },
    #[error("{}: manifest version {found} is not supported (this sotalign reads version {VERSION})", path.display())]
    Version { path: PathBuf, found: u64 },
    #[error("{}:{line}: bad header: {msg}", path.display())]
    Header {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: the manifest holds no entries", path.display())]
    Empty { path: PathBuf },
}

impl ManifestError {
    /// The line the error is about, where there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ManifestError::Unversioned { line, .. } | ManifestError::Header { line, .. } => {
                Some(*line)
            }
            _ => None,
        }
    }
}

/// A parsed manifest file: header, usable entries (with their line numbers), bad rows.
#[derive(Debug, Clone, Default)]
pub struct ManifestFile {
    pub path: PathBuf,
    pub header: Header,
    pub entries: Vec<(usize, Entry)>,
    pub bad: BadRows,
}

impl ManifestFile {
    /// The folder relative paths are resolved against.
    pub fn base(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Resolve a path of the manifest (relative to its folder).
    pub fn resolve(&self, p: &str) -> PathBuf {
        self.base().join(p)
    }

    /// Read a manifest a client named: in the read scope, a regular file, at most
    /// `--max-text-file-bytes` (`limits`).
    pub fn read(path: &Path) -> Result<ManifestFile, ManifestError> {
        let cap = crate::limits::current().max_text_file_bytes;
        let bytes = crate::limits::read_file(path, cap, "max-text-file-bytes")?;
        Self::parse(&bytes, path)
    }

    /// Parse manifest bytes; `path` names the file in messages and anchors relative paths.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<ManifestFile, ManifestError> {
        let mut out = ManifestFile {
            path: path.to_path_buf(),
            ..Default::default()
        };
        let mut header_seen = false;
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let Ok(s) = std::str::from_utf8(raw) else {
                if !header_seen {
                    return Err(ManifestError::Unversioned {
                        path: path.to_path_buf(),
                        line,
                    });
                }
                out.bad.push(line, "line is not valid UTF-8");
                continue;
            };
            let s = s.trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            if !header_seen {
                out.header = parse_header(s, path, line)?;
                header_seen = true;
                continue;
            }
            match parse_entry(s) {
                Err(msg) => out.bad.push(line, msg),
                Ok(e) => out.entries.push((line, e)),
            }
        }
        if !header_seen {
            return Err(ManifestError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(out)
    }
}

/// The header line (`line` is 1-based, for messages); anything but a version-1 header is an
/// error. Also used by the manifest language server on an editor's buffer.
pub fn parse_header(s: &str, path: &Path, line: usize) -> Result<Header, ManifestError> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|_| ManifestError::Unversioned {
        path: path.to_path_buf(),
        line,
    })?;
    let Some(version) = v.get("sotalign_manifest") else {
        return Err(ManifestError::Unversioned {
            path: path.to_path_buf(),
            line,
        });
    };
    match version.as_u64() {
        Some(VERSION) => {}
        Some(found) => {
            return Err(ManifestError::Version {
                path: path.to_path_buf(),
                found,
            });
        }
        None => {
            return Err(ManifestError::Header {
                path: path.to_path_buf(),
                line,
                msg: format!("\"sotalign_manifest\" must be the number {VERSION}, got {version}"),
            });
        }
    }
    serde_json::from_value(v).map_err(|e| ManifestError::Header {
        path: path.to_path_buf(),
        line,
        msg: e.to_string(),
    })
}

/// One entry line (trimmed, not blank or a comment): its fields and the rules the types alone
/// do not say. The one entry parser, for files and editor buffers alike.
pub fn parse_entry(s: &str) -> Result<Entry, String> {
    let e: Entry = serde_json::from_str(s).map_err(|e| e.to_string())?;
    check_entry(&e)?;
    Ok(e)
}

/// Rules of one entry that the types alone do not say.
fn check_entry(e: &Entry) -> Result<(), String> {
    if !e.has_image() && !e.has_text() {
        return Err(
            "an entry needs an image (\"imagePath\" or \"imageRow\") or a text \
                    (\"caption\" or \"textRow\")"
                .into(),
        );
    }
    if let Some(c) = &e.caption
        && c.trim().is_empty()
    {
        return Err("empty caption".into());
    }
    if let Some(p) = &e.image_path
        && p.trim().is_empty()
    {
        return Err("empty imagePath".into());
    }
    if let Some(k) = &e.key
        && k.is_empty()
    {
        return Err("empty key".into());
    }
    if e.split() == Split::Test && !(e.has_image() && e.has_text()) {
        return Err("only pairs (an image and a text) can be in the test split".into());
    }
    Ok(())
}

/// A held-out paired evaluation set: row i of `x` pairs with row i of `y`; `labels` are caption
/// groups.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub x: Matrix,
    pub y: Matrix,
    pub labels: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairEntry {
    pub image: usize,
    pub text: usize,
    pub caption: Option<String>,
    pub held_out: bool,
}

/// The row view of a manifest, for fitting on embedding files (`sotalign align --manifest`):
/// every side must be a row (`imageRow` / `textRow`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    pub pairs: Vec<PairEntry>,
    pub images: Vec<usize>,
    pub texts: Vec<(usize, Option<String>)>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, IoError> {
        let f = ManifestFile::read(path).map_err(|e| IoError::Manifest {
            path: path.to_path_buf(),
            line: e.line().unwrap_or(0),
            msg: e.to_string(),
        })?;
        Self::from_file(&f).map_err(|(line, msg)| IoError::Manifest {
            path: path.to_path_buf(),
            line,
            msg,
        })
    }

    /// Rows of a parsed manifest; the first bad row (or a side given only as a path) is an
    /// error with its 1-based line number.
    pub fn from_file(f: &ManifestFile) -> Result<Manifest, (usize, String)> {
        if let Some(b) = f.bad.rows.first() {
            return Err((b.line, f.bad.describe()));
        }
        let mut m = Manifest::default();
        for (line, e) in &f.entries {
            let need_row = |what: &str| {
                (
                    *line,
                    format!(
                        "the {what} is given without a row; fitting on embedding files needs \"{what}Row\""
                    ),
                )
            };
            if e.image_path.is_some() && e.image_row.is_none() {
                return Err(need_row("image"));
            }
            if e.caption.is_some() && e.text_row.is_none() {
                return Err(need_row("text"));
            }
            match (e.image_row, e.text_row, e.split()) {
                (Some(image), Some(text), Split::Unpaired) => {
                    m.images.push(image);
                    m.texts.push((text, e.caption.clone()));
                }
                (Some(image), Some(text), split) => m.pairs.push(PairEntry {
                    image,
                    text,
                    caption: e.caption.clone(),
                    held_out: split == Split::Test,
                }),
                (Some(image), None, _) => m.images.push(image),
                (None, Some(text), _) => m.texts.push((text, e.caption.clone())),
                (None, None, _) => return Err(need_row("text")),
            }
        }
        Ok(m)
    }

    /// Parse manifest text (tests and tools); errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Manifest, (usize, String)> {
        let f = ManifestFile::parse(text.as_bytes(), Path::new("manifest.jsonl"))
            .map_err(|e| (e.line().unwrap_or(0), e.to_string()))?;
        Self::from_file(&f)
    }

    /// Assemble the training data (train pairs + unpaired pools) and the test set (if any test
    /// pairs) from the two embedding matrices, checking every row index.
    pub fn assemble(
        &self,
        img: &Matrix,
        txt: &Matrix,
    ) -> Result<(AlignData, Option<EvalSet>), String> {
        // Caption groups by the engine's one rule; a pair or text without a caption is keyed
        // by its text row, so the same row is one group wherever it appears.
        let mut groups = sotalign_engine::groups::CaptionGroups::new();
        let mut by_row: HashMap<usize, u32> = HashMap::new();
        let mut group_of = |caption: &Option<String>, text: usize| match caption {
            Some(c) => groups.assign(Some(c)),
            None => *by_row.entry(text).or_insert_with(|| groups.assign(None)),
        };
        let check = |what: &str, r: usize, m: &Matrix| {
            if r >= m.rows {
                Err(format!("{what} row {r} is out of range ({} rows)", m.rows))
            } else {
                Ok(())
            }
        };
        let (mut tr, mut te) = (Vec::new(), Vec::new());
        for p in &self.pairs {
            check("image", p.image, img)?;
            check("text", p.text, txt)?;
            let g = group_of(&p.caption, p.text);
            if p.held_out {
                te.push((p.image, p.text, g));
            } else {
                tr.push((p.image, p.text, g));
            }
        }
        for &i in &self.images {
            check("image", i, img)?;
        }
        let mut yu_groups = Vec::with_capacity(self.texts.len());
        for (t, c) in &self.texts {
            check("text", *t, txt)?;
            yu_groups.push(group_of(c, *t));
        }
        let data = AlignData {
            xp: img.select_rows(&tr.iter().map(|p| p.0).collect::<Vec<_>>()),
            yp: txt.select_rows(&tr.iter().map(|p| p.1).collect::<Vec<_>>()),
            xu: img.select_rows(&self.images),
            yu: txt.select_rows(&self.texts.iter().map(|t| t.0).collect::<Vec<_>>()),
            pair_groups: tr.iter().map(|p| p.2).collect(),
            yu_groups: Some(yu_groups),
            negatives: None,
        };
        let test = (!te.is_empty()).then(|| EvalSet {
            x: img.select_rows(&te.iter().map(|p| p.0).collect::<Vec<_>>()),
            y: txt.select_rows(&te.iter().map(|p| p.1).collect::<Vec<_>>()),
            labels: te.iter().map(|p| p.2).collect(),
        });
        Ok((data, test))
    }
}

/// Write a manifest: the header, then one line per entry (atomically: temp file + rename).
pub fn write(path: &Path, header: &Header, entries: &[Entry]) -> Result<(), IoError> {
    let mut out =
        serde_json::to_string(header).map_err(|e| IoError::format(path, e.to_string()))?;
    out.push('\n');
    for e in entries {
        out.push_str(&serde_json::to_string(e).map_err(|e| IoError::format(path, e.to_string()))?);
        out.push('\n');
    }
    super::write_atomic(path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "{\"sotalign_manifest\": 1}\n";

    #[test]
    fn parses_and_assembles() {
        let text = format!(
            "# pairs\n{H}{}",
            r#"
{"imageRow": 0, "textRow": 0, "caption": "a"}
{"imageRow": 1, "textRow": 1, "caption": "a"}
{"imageRow": 2, "textRow": 2, "split": "test", "caption": "b"}
{"imageRow": 3, "textRow": 2, "split": "test", "caption": "b"}
{"imageRow": 3}
{"textRow": 1, "caption": "a"}
"#
        );
        let m = Manifest::parse(&text).unwrap();
        assert_eq!(m.pairs.len(), 4);
        let img = Matrix::zeros(4, 2);
        let txt = Matrix::zeros(3, 5);
        let (d, t) = m.assemble(&img, &txt).unwrap();
        assert_eq!((d.xp.rows, d.yp.cols, d.xu.rows, d.yu.rows), (2, 5, 1, 1));
        assert_eq!(d.pair_groups, vec![0, 0]);
        assert_eq!(d.yu_groups, Some(vec![0]));
        let t = t.unwrap();
        assert_eq!(t.labels, vec![1, 1]);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let p = |s: &str| Manifest::parse(&format!("{H}{s}")).unwrap_err().0;
        assert_eq!(p("{\"imageRow\": 0}\n{oops"), 3);
        assert_eq!(p("{}"), 2);
        assert_eq!(
            p("{\"imageRow\": 1, \"textRow\": 1, \"split\": \"dev\"}"),
            2
        );
        assert_eq!(p("{\"imageRow\": 1, \"colour\": 2}"), 2);
        assert_eq!(p("{\"imageRow\": 1, \"split\": \"test\"}"), 2);
        // A path where the row view needs a row.
        assert_eq!(
            p("{\"imagePath\": \"a.png\", \"imageRow\": 0}\n{\"imagePath\": \"b.png\"}"),
            3
        );
        let m = Manifest::parse(&format!("{H}{{\"imageRow\": 9, \"textRow\": 0}}")).unwrap();
        assert!(
            m.assemble(&Matrix::zeros(2, 2), &Matrix::zeros(2, 2))
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn old_dialects_are_refused_with_the_new_form() {
        for old in [
            "{\"image\": 3, \"text\": 7, \"caption\": \"A frog.\"}",
            "{\"image\": \"a.png\", \"text\": \"A cat.\"}",
            "{\"embeddings\": {\"image\": \"i.npy\"}}\n{\"key\": \"k\", \"imageRow\": 0}",
            "not json at all",
        ] {
            let e = ManifestFile::parse(old.as_bytes(), Path::new("m.jsonl")).unwrap_err();
            assert!(
                matches!(e, ManifestError::Unversioned { line: 1, .. }),
                "{e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("\"sotalign_manifest\": 1") && msg.contains("imagePath"),
                "{msg}"
            );
        }
        let e = ManifestFile::parse(b"{\"sotalign_manifest\": 2}", Path::new("m")).unwrap_err();
        assert!(matches!(e, ManifestError::Version { found: 2, .. }), "{e}");
        let e = ManifestFile::parse(b"# only a comment\n", Path::new("m")).unwrap_err();
        assert!(matches!(e, ManifestError::Empty { .. }), "{e}");
    }

    #[test]
    fn bad_rows_are_all_listed_and_good_ones_kept() {
        let mut body = H.as_bytes().to_vec();
        body.extend_from_slice(
            b"{\"imagePath\": \"a.png\", \"caption\": \"A cat.\", \"label\": \"animal\"}\n",
        );
        body.extend_from_slice(b"{\"caption\": \"only text\"}\n");
        body.extend_from_slice(b"not json\n");
        body.extend_from_slice(b"{\"imagePath\": \"b.png\", \"caption\": \"  \"}\n");
        body.extend_from_slice(b"{\"caption\": \"bad \xff utf8\"}\n");
        body.extend_from_slice(b"{\"label\": \"x\"}\n");
        body.extend_from_slice(b"{\"image\": \"old.png\"}\n\n");
        let f = ManifestFile::parse(&body, Path::new("/d/m.jsonl")).unwrap();
        assert_eq!(f.entries.len(), 2);
        assert_eq!(f.entries[0].0, 2);
        assert_eq!(f.resolve("a.png"), Path::new("/d/a.png"));
        let lines: Vec<usize> = f.bad.rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8], "{:?}", f.bad);
        assert_eq!(f.bad.rows[1].msg, "empty caption");
        assert_eq!(f.bad.rows[2].msg, "line is not valid UTF-8");
        assert!(
            f.bad.rows[4].msg.contains("unknown field `image`"),
            "{:?}",
            f.bad.rows[4]
        );
        assert!(f.bad.describe().starts_with("line 4: "));
    }

    #[test]
    fn written_manifests_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let entries = vec![
            Entry {
                key: Some("k".into()),
                image_path: Some("a.png".into()),
                caption: Some("A \"quoted\" cat.".into()),
                decision: Some(DecisionInfo {
                    state: "confirmed".into(),
                    annotator: Some("ann".into()),
                    source: "tui".into(),
                    at_ms: 5,
                }),
                ..Default::default()
            },
            Entry {
                text_row: Some(2),
                split: Some(Split::Unpaired),
                ..Default::default()
            },
        ];
        write(&p, &Header::v1(), &entries).unwrap();
        let f = ManifestFile::read(&p).unwrap();
        assert!(f.bad.is_empty());
        let back: Vec<Entry> = f.entries.into_iter().map(|(_, e)| e).collect();
        assert_eq!(back, entries);
    }
}
