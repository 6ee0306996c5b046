//! File formats at the edge of the engine: embeddings (`.npy`, safetensors), the JSONL manifest,
//! the reference fixtures and checkpoints. The engine (`crate::align`) never does IO; everything
//! that touches the file system lives here and returns [`IoError`] with the path in it.
use std::path::{Path, PathBuf};

use thiserror::Error;

use sotalign_engine::AlignError;

pub mod checkpoint;
pub mod manifest;
pub mod npy;
pub mod reference;
pub mod tensors;

pub use checkpoint::{Checkpoint, read_checkpoint, write_checkpoint};
pub use npy::{read_npy, write_npy};
pub use tensors::{read_embeddings, read_safetensors, write_safetensors};

#[derive(Debug, Error)]
pub enum IoError {
    #[error("{}: {source}", path.display())]
    Fs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a supported .npy file: {msg}", path.display())]
    Npy { path: PathBuf, msg: String },
    #[error("{}: safetensors: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}:{line}: {msg}", path.display())]
    Manifest {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error(transparent)]
    Align(#[from] AlignError),
}

impl IoError {
    pub(crate) fn fs(path: &Path, source: std::io::Error) -> Self {
        IoError::Fs {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, msg: impl Into<String>) -> Self {
        IoError::Format {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

/// Read a whole file, with the path in the error.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, IoError> {
    std::fs::read(path).map_err(|e| IoError::fs(path, e))
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync the directory, so a crash leaves either the old file or the new one, never a torn
/// one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| IoError::format(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| IoError::fs(&tmp, e))?;
        f.write_all(bytes).map_err(|e| IoError::fs(&tmp, e))?;
        f.sync_all().map_err(|e| IoError::fs(&tmp, e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| IoError::fs(path, e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            // Directory fsync makes the rename durable; not supported everywhere, so best effort.
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
