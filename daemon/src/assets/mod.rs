//! Where the real model weights and data sets live on disk, and how they get there.
//!
//! Layout under the assets root (`$SOTALIGN_ASSETS`, else `<user cache dir>/sotalign/assets`):
//!
//! ```text
//! minilm/          all-MiniLM-L6-v2, HF format (config.json, model.safetensors, tokenizer.json, ...)
//! effnet-lite0/    efficientnet-lite0-57934424.pth (legacy PyTorch format)
//! tuxpaint/stamps/ Tux Paint stamps: <category>/<sub>/<name>.{png,svg,txt}
//! openclipart/svg/ openclipart clip art (optional): <category>/.../<name>.svg
//! ```
//!
//! Each asset directory holds a `.sotalign-complete.json` marker written last; a directory
//! without it is treated as absent. See [`fetch`] for how assets are obtained.
pub mod fetch;

use std::path::{Path, PathBuf};

/// Environment variable that overrides the assets root.
pub const ENV_VAR: &str = "SOTALIGN_ASSETS";
/// Name of the marker file written when an asset is completely in place.
pub const MARKER: &str = ".sotalign-complete.json";

/// The assets root: `$SOTALIGN_ASSETS`, else `<cache dir>/sotalign/assets`, else `./.sotalign-assets`.
pub fn default_root() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    match dirs::cache_dir() {
        Some(c) => c.join("sotalign").join("assets"),
        None => PathBuf::from(".sotalign-assets"),
    }
}

/// Paths of the known assets under one root.
#[derive(Debug, Clone)]
pub struct Assets {
    pub root: PathBuf,
}

impl Assets {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Assets at [`default_root`].
    pub fn default_location() -> Self {
        Self::new(default_root())
    }

    /// HF-format directory of all-MiniLM-L6-v2.
    pub fn minilm_dir(&self) -> PathBuf {
        self.root.join("minilm")
    }

    /// The EfficientNet-Lite0 legacy `.pth` weights.
    pub fn effnet_pth(&self) -> PathBuf {
        self.root
            .join("effnet-lite0")
            .join("efficientnet-lite0-57934424.pth")
    }

    /// Root of the Tux Paint stamp tree (`<category>/<sub>/<stamp>.{png,svg,txt}`).
    pub fn tuxpaint_stamps(&self) -> PathBuf {
        self.root.join("tuxpaint").join("stamps")
    }

    /// The openclipart SVGs (`sotalign fetch openclipart`): `<category>/.../<name>.svg`.
    pub fn openclipart_svg(&self) -> PathBuf {
        self.root.join("openclipart").join("svg")
    }

    /// True when the named asset (`minilm`, `effnet-lite0`, `tuxpaint`) is completely in place.
    pub fn is_complete(&self, name: &str) -> bool {
        is_complete_dir(&self.root.join(name))
    }

    /// For tests that need real assets: the default location when every one of `names` is in
    /// place; otherwise `None` after a loud `SOTALIGN-SKIPPED-NO-ASSETS` message, or a panic
    /// when `SOTALIGN_REQUIRE_ASSETS=1` (as in CI), so that a missing fetch cannot pass as a
    /// skipped test there. Shared by the test suites of every crate.
    pub fn for_test(test: &str, names: &[&str]) -> Option<Assets> {
        let a = Assets::default_location();
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !a.is_complete(n))
            .collect();
        if missing.is_empty() {
            return Some(a);
        }
        let msg = format!(
            "SOTALIGN-SKIPPED-NO-ASSETS: {test}: assets {missing:?} not found under {} (run `sotalign fetch`)",
            a.root.display()
        );
        if std::env::var("SOTALIGN_REQUIRE_ASSETS").is_ok_and(|v| v == "1") {
            panic!("{msg} and SOTALIGN_REQUIRE_ASSETS=1");
        }
        let bar = "!".repeat(86);
        eprintln!("\n{bar}\n!!! {msg}\n{bar}\n");
        None
    }
}

/// A directory counts as complete when its marker exists and every file it lists has its size.
pub fn is_complete_dir(dir: &Path) -> bool {
    let Ok(s) = std::fs::read_to_string(dir.join(MARKER)) else {
        return false;
    };
    let Ok(m) = serde_json::from_str::<fetch::Marker>(&s) else {
        return false;
    };
    m.files.iter().all(|(rel, size)| {
        std::fs::metadata(dir.join(rel))
            .map(|md| md.len() == *size)
            .unwrap_or(false)
    })
}
