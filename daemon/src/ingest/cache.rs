//! Embedding cache keyed by (model id, content hash), so re-encoding a dataset only encodes
//! what changed.
//!
//! Layout: `<root>/<model id, sanitised>/shard-<time>-<pid>.npy` plus a same-stem `.keys` file
//! (one content hash per row). A shard is written (npy first, then keys, each via a temporary
//! file and a rename), never modified; a shard without its keys file is ignored, so an
//! interrupted write loses nothing already cached. Shards are memory-mapped when read.
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::IngestError;
use crate::io::npy::{NpyF32, write_npy};
use sotalign_engine::Matrix;

/// Environment variable overriding the embedding cache root.
pub const ENV_VAR: &str = "SOTALIGN_CACHE";

/// `$SOTALIGN_CACHE`, else `<user cache dir>/sotalign/embeddings`.
pub fn default_root() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::cache_dir()
        .map(|c| c.join("sotalign").join("embeddings"))
        .unwrap_or_else(|| PathBuf::from(".sotalign-cache"))
}

/// Content hash of bytes (hex sha256), domain-separated so an image and a caption with the
/// same bytes never collide.
pub fn content_hash(domain: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0u8]);
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn sanitise(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// All cached rows of one model.
pub struct ModelCache {
    dir: PathBuf,
    dim: usize,
    shards: Vec<NpyF32>,
    index: HashMap<String, (usize, usize)>,
}

impl ModelCache {
    /// Open (creating if needed) the cache of `model_id` under `root`; rows must be `dim` wide.
    pub fn open(root: &Path, model_id: &str, dim: usize) -> Result<Self, IngestError> {
        let dir = root.join(sanitise(model_id));
        fs::create_dir_all(&dir).map_err(|e| IngestError::io(&dir, e))?;
        let mut keys_files: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| IngestError::io(&dir, e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "keys"))
            .collect();
        keys_files.sort();
        let mut cache = Self {
            dir,
            dim,
            shards: Vec::new(),
            index: HashMap::new(),
        };
        for kf in keys_files {
            let keys = fs::read_to_string(&kf).map_err(|e| IngestError::io(&kf, e))?;
            let shard = NpyF32::open(&kf.with_extension("npy"))?;
            let keys: Vec<&str> = keys.lines().collect();
            if shard.cols != dim || shard.rows != keys.len() {
                return Err(IngestError::Format {
                    path: kf.clone(),
                    what: format!(
                        "shard is {}x{} with {} keys; expected {dim} columns",
                        shard.rows,
                        shard.cols,
                        keys.len()
                    ),
                });
            }
            let s = cache.shards.len();
            for (r, k) in keys.into_iter().enumerate() {
                cache.index.insert(k.to_string(), (s, r));
            }
            cache.shards.push(shard);
        }
        Ok(cache)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, hash: &str) -> bool {
        self.index.contains_key(hash)
    }

    /// Copy the cached row for `hash` into `out`; false when absent.
    pub fn read(&self, hash: &str, out: &mut [f32]) -> bool {
        match self.index.get(hash) {
            Some(&(s, r)) => {
                self.shards[s].read_row(r, out);
                true
            }
            None => false,
        }
    }

    /// Store new rows (one per hash) as a new shard.
    pub fn insert(&mut self, hashes: &[String], rows: &Matrix) -> Result<(), IngestError> {
        if hashes.is_empty() {
            return Ok(());
        }
        if rows.rows != hashes.len() || rows.cols != self.dim {
            return Err(IngestError::Format {
                path: self.dir.clone(),
                what: format!(
                    "insert of {}x{} rows with {} keys into a {}-wide cache",
                    rows.rows,
                    rows.cols,
                    hashes.len(),
                    self.dim
                ),
            });
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let stem = format!("shard-{nanos:024}-{}", std::process::id());
        let npy_path = self.dir.join(format!("{stem}.npy"));
        write_npy(&npy_path, rows)?;
        let keys_path = self.dir.join(format!("{stem}.keys"));
        let tmp = self.dir.join(format!("{stem}.keys.tmp"));
        fs::write(&tmp, hashes.join("\n") + "\n").map_err(|e| IngestError::io(&tmp, e))?;
        fs::rename(&tmp, &keys_path).map_err(|e| IngestError::io(&keys_path, e))?;
        let s = self.shards.len();
        self.shards.push(NpyF32::open(&npy_path)?);
        for (r, h) in hashes.iter().enumerate() {
            self.index.insert(h.clone(), (s, r));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_reopen_and_dims_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let mut c = ModelCache::open(d.path(), "image:m:abc", 2).unwrap();
        assert!(c.is_empty());
        let h = vec![content_hash("img", b"a"), content_hash("img", b"b")];
        c.insert(
            &h,
            &Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap(),
        )
        .unwrap();
        let c2 = ModelCache::open(d.path(), "image:m:abc", 2).unwrap();
        let mut row = [0f32; 2];
        assert!(c2.read(&h[1], &mut row));
        assert_eq!(row, [3.0, 4.0]);
        assert!(!c2.read(&content_hash("img", b"c"), &mut row));
        assert!(ModelCache::open(d.path(), "image:m:abc", 3).is_err());
        // another model id is another cache
        assert!(
            ModelCache::open(d.path(), "image:m:other", 3)
                .unwrap()
                .is_empty()
        );
        assert_ne!(content_hash("img", b"a"), content_hash("txt", b"a"));
    }
}
