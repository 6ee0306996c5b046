//! Dataset sources: a JSONL manifest, a folder of images, a text file of captions, and the
//! Tux Paint stamp tree. Every source returns a [`Dataset`] whose `skipped` list names each input
//! it could not use and why; nothing is dropped silently.
use std::path::{Path, PathBuf};

use super::{Dataset, IngestError, Item};
use crate::encoders::Skipped;

/// File extensions treated as images when scanning folders.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "svg", "svgz"];

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn skip(index: usize, item: impl Into<String>, reason: impl Into<String>) -> Skipped {
    Skipped {
        index,
        item: item.into(),
        reason: reason.into(),
    }
}

/// Recursively list files under `dir`, sorted; unreadable sub-directories are reported.
///
/// Bounded whatever the tree holds: a directory (resolved through symbolic links) is entered
/// at most once, so a link to `.` or to a parent is reported as a loop instead of walked
/// forever; depth is capped at `--max-walk-depth` and the entries visited at
/// `--max-walk-entries` (both typed errors naming the cap). Linked files are listed; reading
/// them later checks the read scope.
/// Every file below `dir` (sorted, links followed once, under the walk limits).
pub(super) fn walk_files(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), IngestError> {
    walk(dir, out, skipped)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>) -> Result<(), IngestError> {
    let l = crate::limits::current();
    let mut w = Walk {
        visited: 0,
        seen: std::collections::HashSet::new(),
        l,
    };
    if let Ok(c) = std::fs::canonicalize(dir) {
        w.seen.insert(c);
    }
    w.at(dir, 0, out, skipped)
}

struct Walk<'l> {
    visited: usize,
    /// Canonical directories entered so far.
    seen: std::collections::HashSet<PathBuf>,
    l: &'l crate::limits::Limits,
}

impl Walk<'_> {
    fn at(
        &mut self,
        dir: &Path,
        depth: usize,
        out: &mut Vec<PathBuf>,
        skipped: &mut Vec<Skipped>,
    ) -> Result<(), IngestError> {
        let l = self.l;
        crate::limits::check(
            &format!("folder depth at {}", dir.display()),
            depth as u64,
            l.max_walk_depth as u64,
            "max-walk-depth",
        )?;
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                skipped.push(skip(
                    skipped.len(),
                    dir.display().to_string(),
                    format!("cannot list directory: {e}"),
                ));
                return Ok(());
            }
        };
        let mut entries = Vec::new();
        for e in rd.flatten() {
            self.visited += 1;
            crate::limits::check(
                "entries visited in one folder walk",
                self.visited as u64,
                l.max_walk_entries as u64,
                "max-walk-entries",
            )?;
            let p = e.path();
            let is_dir = match e.file_type() {
                Ok(t) if t.is_dir() => true,
                Ok(t) if t.is_symlink() => p.is_dir(),
                _ => false,
            };
            entries.push((p, is_dir));
        }
        entries.sort();
        for (p, is_dir) in entries {
            if !is_dir {
                out.push(p);
                continue;
            }
            match std::fs::canonicalize(&p) {
                Ok(c) if !self.seen.insert(c.clone()) => skipped.push(skip(
                    skipped.len(),
                    p.display().to_string(),
                    "directory already walked (a symbolic link loop or a second link to it)",
                )),
                _ => self.at(&p, depth + 1, out, skipped)?,
            }
        }
        Ok(())
    }
}

/// A client-named text file (manifest, captions): in scope, regular, at most
/// `--max-text-file-bytes`.
fn read_text_file(path: &Path) -> Result<Vec<u8>, IngestError> {
    let l = crate::limits::current();
    Ok(crate::limits::read_file(
        path,
        l.max_text_file_bytes,
        "max-text-file-bytes",
    )?)
}

/// A sotalign manifest (version 1, `io::manifest`): entries with `imagePath` and/or `caption`
/// become items (`label`, `split` carried); entries that give only embedding rows have
/// nothing to encode and are skipped, as are bad lines, each with its reason. A file that is
/// not a version-1 manifest is an error.
pub fn manifest(path: &Path) -> Result<Dataset, IngestError> {
    use crate::io::manifest::{ManifestFile, Split};
    let f = ManifestFile::read(path).map_err(|e| IngestError::Format {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    let mut ds = Dataset::new(format!("manifest:{}", path.display()));
    let where_ = |line: usize| format!("{}:{line}", path.display());
    for b in &f.bad.rows {
        ds.skipped
            .push(skip(b.line - 1, where_(b.line), b.msg.clone()));
    }
    for (line, e) in &f.entries {
        if e.image_path.is_none() && e.caption.is_none() {
            ds.skipped.push(skip(
                line - 1,
                where_(*line),
                "only embedding rows: nothing to encode (give imagePath and/or caption)",
            ));
            continue;
        }
        let split = match e.split() {
            Split::Train => "train",
            Split::Test => "test",
            Split::Unpaired => "unpaired",
        };
        ds.items.push(Item {
            image: e.image_path.as_deref().map(|p| f.resolve(p)),
            text: e.caption.clone(),
            label: e.label.clone(),
            split: e.split.map(|_| split.to_string()),
            source: where_(*line),
        });
    }
    Ok(ds)
}

/// Lines of a byte buffer without their terminators; a final empty piece after the last
/// newline is not a line.
fn split_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines
}

/// Every image under a folder (recursive, sorted), unpaired.
pub fn image_dir(dir: &Path) -> Result<Dataset, IngestError> {
    if !dir.is_dir() {
        return Err(IngestError::NotFound(dir.to_path_buf()));
    }
    let mut ds = Dataset::new(format!("images:{}", dir.display()));
    let mut files = Vec::new();
    walk(dir, &mut files, &mut ds.skipped)?;
    for f in files.into_iter().filter(|f| is_image(f)) {
        let label = f
            .parent()
            .and_then(|p| p.strip_prefix(dir).ok())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty());
        ds.items.push(Item {
            source: f.display().to_string(),
            image: Some(f),
            text: None,
            label,
            split: None,
        });
    }
    Ok(ds)
}

/// One caption per line, unpaired. Empty and non-UTF-8 lines are skipped and reported.
pub fn text_file(path: &Path) -> Result<Dataset, IngestError> {
    let bytes = read_text_file(path)?;
    let mut ds = Dataset::new(format!("texts:{}", path.display()));
    for (n, raw) in split_lines(&bytes).into_iter().enumerate() {
        let where_ = format!("{}:{}", path.display(), n + 1);
        match std::str::from_utf8(raw) {
            Err(_) => ds.skipped.push(skip(n, where_, "line is not valid UTF-8")),
            Ok(s) if s.trim().is_empty() => ds.skipped.push(skip(n, where_, "empty caption")),
            Ok(s) => ds.items.push(Item {
                image: None,
                text: Some(s.trim().to_string()),
                label: None,
                split: None,
                source: where_,
            }),
        }
    }
    Ok(ds)
}

/// The Tux Paint stamps: each `<stamp>.png|svg` with a same-stem `.txt` whose FIRST line is the
/// English description (later lines are translations). The label is the folder path relative
/// to the stamps root (`animals/mammals`). `<x>_mirror.png` files are Tux Paint's mirrored
/// variants of stamp `<x>`, not stamps of their own: they are reported as skipped.
pub fn tuxpaint(stamps: &Path) -> Result<Dataset, IngestError> {
    if !stamps.is_dir() {
        return Err(IngestError::NotFound(stamps.to_path_buf()));
    }
    let mut ds = Dataset::new("tuxpaint".to_string());
    let mut files = Vec::new();
    walk(stamps, &mut files, &mut ds.skipped)?;
    let mut n = 0;
    for f in files {
        let ext = f
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("png") | Some("svg")) {
            continue;
        }
        let rel = f
            .strip_prefix(stamps)
            .unwrap_or(&f)
            .to_string_lossy()
            .replace('\\', "/");
        let index = n;
        n += 1;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if stem.ends_with("_mirror") {
            ds.skipped.push(skip(
                index,
                rel,
                "mirrored variant of another stamp (Tux Paint `_mirror` convention)",
            ));
            continue;
        }
        let txt = f.with_extension("txt");
        let bytes = match std::fs::read(&txt) {
            Ok(b) => b,
            Err(e) => {
                ds.skipped.push(skip(
                    index,
                    rel,
                    format!("no description ({}: {e})", txt.display()),
                ));
                continue;
            }
        };
        let first = split_lines(&bytes).into_iter().next().unwrap_or_default();
        let caption = match std::str::from_utf8(first) {
            Err(_) => {
                ds.skipped
                    .push(skip(index, rel, "description is not valid UTF-8"));
                continue;
            }
            Ok(s) if s.trim().is_empty() => {
                ds.skipped.push(skip(index, rel, "empty description"));
                continue;
            }
            Ok(s) => s.trim().to_string(),
        };
        let label = rel.rsplit_once('/').map(|(dir, _)| dir.to_string());
        ds.items.push(Item {
            image: Some(f.clone()),
            text: Some(caption),
            label,
            split: None,
            source: rel,
        });
    }
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn manifest_reports_every_bad_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"sotalign_manifest\": 1}\n");
        body.extend_from_slice(b"{\"imagePath\": \"a.png\", \"caption\": \"A cat.\", \"label\": \"animal\", \"split\": \"train\"}\n");
        body.extend_from_slice(b"{\"caption\": \"only text\"}\n");
        body.extend_from_slice(b"not json\n");
        body.extend_from_slice(b"{\"imagePath\": \"b.png\", \"caption\": \"  \"}\n");
        body.extend_from_slice(b"{\"caption\": \"bad \xff utf8\"}\n");
        body.extend_from_slice(b"{\"label\": \"x\"}\n");
        body.extend_from_slice(b"{\"imageRow\": 3}\n");
        body.extend_from_slice(b"\n");
        fs::write(&p, body).unwrap();
        let ds = manifest(&p).unwrap();
        assert_eq!(ds.items.len(), 2);
        assert_eq!(
            ds.items[0].image.as_deref(),
            Some(d.path().join("a.png").as_path())
        );
        assert_eq!(ds.items[0].label.as_deref(), Some("animal"));
        assert_eq!(ds.items[0].split.as_deref(), Some("train"));
        assert!(ds.items[1].image.is_none());
        let reasons: Vec<&str> = ds.skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(ds.skipped.len(), 5, "{reasons:?}");
        assert!(reasons[0].starts_with("expected"), "{reasons:?}");
        assert_eq!(reasons[1], "empty caption");
        assert_eq!(reasons[2], "line is not valid UTF-8");
        assert!(reasons[3].contains("needs an image"));
        assert!(reasons[4].contains("only embedding rows"));
        assert!(ds.skipped[0].item.ends_with("m.jsonl:4"));
        // An old (unversioned) manifest is an error, not a pile of skipped lines.
        fs::write(&p, "{\"image\": \"a.png\", \"text\": \"A cat.\"}\n").unwrap();
        assert!(
            manifest(&p)
                .unwrap_err()
                .to_string()
                .contains("sotalign_manifest")
        );
    }

    #[test]
    fn text_file_skips_empty_and_non_utf8() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.txt");
        fs::write(&p, b"a dog\r\n\n  \nbad \xc3\x28\nlast line").unwrap();
        let ds = text_file(&p).unwrap();
        let texts: Vec<_> = ds.items.iter().map(|i| i.text.clone().unwrap()).collect();
        assert_eq!(texts, vec!["a dog", "last line"]);
        assert_eq!(ds.skipped.len(), 3);
        assert!(ds.skipped[2].item.ends_with(":4"));
    }

    #[test]
    fn tuxpaint_adapter_reads_first_line_and_folder_label() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path();
        fs::create_dir_all(s.join("animals/mammals")).unwrap();
        fs::write(s.join("animals/mammals/cat.png"), b"png").unwrap();
        fs::write(
            s.join("animals/mammals/cat.txt"),
            "A cat.\nfr.utf8=Un chat.\n",
        )
        .unwrap();
        fs::write(s.join("animals/mammals/cat_mirror.png"), b"png").unwrap();
        fs::write(s.join("animals/mammals/dog.svg"), b"<svg/>").unwrap();
        fs::write(s.join("animals/mammals/dog.txt"), "\n").unwrap();
        fs::write(s.join("animals/mammals/owl.png"), b"png").unwrap();
        let ds = tuxpaint(s).unwrap();
        assert_eq!(ds.items.len(), 1);
        assert_eq!(ds.items[0].text.as_deref(), Some("A cat."));
        assert_eq!(ds.items[0].label.as_deref(), Some("animals/mammals"));
        assert_eq!(ds.items[0].source, "animals/mammals/cat.png");
        assert_eq!(ds.skipped.len(), 3);
        assert!(tuxpaint(&s.join("missing")).is_err());
    }
}
