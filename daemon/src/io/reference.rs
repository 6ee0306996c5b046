//! Loading the independent reference fixtures (`tests/fixtures/reference/`, see PROTOCOL.md):
//! raw Tux Paint embeddings, the row index (captions), the exact splits, and the reference
//! implementation's results and validation tuning.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{IoError, read_bytes, read_npy};
use sotalign_engine::{AlignData, Matrix};

/// Row indices of one (seed, n) cell.
#[derive(Debug, Clone, Deserialize)]
pub struct RunSplit {
    pub paired: Vec<usize>,
    pub unpaired_img: Vec<usize>,
    pub unpaired_txt: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct SplitsFile {
    test: Vec<usize>,
    nontest: Vec<usize>,
    runs: BTreeMap<String, RunSplit>,
}

#[derive(Debug, Deserialize)]
struct IndexRow {
    row: usize,
    caption: String,
}

#[derive(Debug, Deserialize)]
struct IndexFile {
    rows: Vec<IndexRow>,
}

/// The reference inputs: features, caption groups and splits.
#[derive(Debug, Clone)]
pub struct Reference {
    pub dir: PathBuf,
    /// Raw image features (N x 1280) and text features (N x 384).
    pub img: Matrix,
    pub txt: Matrix,
    pub captions: Vec<String>,
    /// Caption group of each row (equal captions = equal groups).
    pub groups: Vec<u32>,
    pub test: Vec<usize>,
    pub nontest: Vec<usize>,
    /// Keyed `"{seed}_{n}"`.
    pub runs: BTreeMap<String, RunSplit>,
}

fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, IoError> {
    let bytes = read_bytes(path)?;
    serde_json::from_slice(&bytes).map_err(|e| IoError::format(path, e.to_string()))
}

impl Reference {
    /// Load `tuxpaint_{img,txt}.npy`, `tuxpaint_index.json` and `tuxpaint_splits.json` from `dir`,
    /// checking that every index is in range.
    pub fn load(dir: &Path) -> Result<Reference, IoError> {
        let img = read_npy(&dir.join("tuxpaint_img.npy"))?;
        let txt = read_npy(&dir.join("tuxpaint_txt.npy"))?;
        let index_path = dir.join("tuxpaint_index.json");
        let index: IndexFile = parse_json(&index_path)?;
        let splits_path = dir.join("tuxpaint_splits.json");
        let splits: SplitsFile = parse_json(&splits_path)?;
        let n = img.rows;
        if txt.rows != n || index.rows.len() != n {
            return Err(IoError::format(
                &index_path,
                format!(
                    "row counts disagree: {} images, {} texts, {} index rows",
                    n,
                    txt.rows,
                    index.rows.len()
                ),
            ));
        }
        let mut captions = vec![String::new(); n];
        for r in index.rows {
            if r.row >= n {
                return Err(IoError::format(
                    &index_path,
                    format!("row {} out of range", r.row),
                ));
            }
            captions[r.row] = r.caption;
        }
        let groups =
            sotalign_engine::groups::caption_groups(captions.iter().map(|c| Some(c.as_str())));
        let all = splits
            .test
            .iter()
            .chain(&splits.nontest)
            .chain(splits.runs.values().flat_map(|r| {
                r.paired
                    .iter()
                    .chain(&r.unpaired_img)
                    .chain(&r.unpaired_txt)
            }));
        if let Some(bad) = all.copied().find(|&i| i >= n) {
            return Err(IoError::format(
                &splits_path,
                format!("row {bad} out of range ({n} rows)"),
            ));
        }
        Ok(Reference {
            dir: dir.to_path_buf(),
            img,
            txt,
            captions,
            groups,
            test: splits.test,
            nontest: splits.nontest,
            runs: splits.runs,
        })
    }

    /// The split of one (seed, n) cell.
    pub fn run(&self, seed: u64, n: usize) -> Result<&RunSplit, IoError> {
        self.runs.get(&format!("{seed}_{n}")).ok_or_else(|| {
            IoError::format(
                &self.dir.join("tuxpaint_splits.json"),
                format!("no split for seed {seed}, n {n}"),
            )
        })
    }

    /// Training data of a cell: pairs, unpaired pools, caption groups of pairs and unpaired texts.
    pub fn align_data(&self, run: &RunSplit) -> AlignData {
        AlignData {
            xp: self.img.select_rows(&run.paired),
            yp: self.txt.select_rows(&run.paired),
            xu: self.img.select_rows(&run.unpaired_img),
            yu: self.txt.select_rows(&run.unpaired_txt),
            pair_groups: run.paired.iter().map(|&i| self.groups[i]).collect(),
            yu_groups: Some(run.unpaired_txt.iter().map(|&i| self.groups[i]).collect()),
            negatives: None,
        }
    }

    /// The fixed test set: (images, texts, caption groups).
    pub fn test_set(&self) -> super::manifest::EvalSet {
        super::manifest::EvalSet {
            x: self.img.select_rows(&self.test),
            y: self.txt.select_rows(&self.test),
            labels: self.test.iter().map(|&i| self.groups[i]).collect(),
        }
    }
}

/// One cell of `tuxpaint_results.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceRun {
    pub n: usize,
    pub seed: u64,
    pub csa_s: usize,
    pub alpha: f64,
    pub cca_k: usize,
    #[serde(default)]
    pub cca_rho_top5: Vec<f64>,
    /// method -> metric key (`i2t_R@1`, ...) -> fraction.
    pub metrics: BTreeMap<String, BTreeMap<String, f64>>,
}

#[derive(Debug, Deserialize)]
pub struct ReferenceResults {
    pub runs: BTreeMap<String, ReferenceRun>,
}

impl ReferenceResults {
    pub fn load(dir: &Path) -> Result<Self, IoError> {
        parse_json(&dir.join("tuxpaint_results.json"))
    }

    pub fn run(&self, seed: u64, n: usize) -> Option<&ReferenceRun> {
        self.runs.get(&format!("{seed}_{n}"))
    }
}

/// Validation scores of one candidate in `tuxpaint_tuning.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct TuningScore {
    #[serde(rename = "i2t_MRR")]
    pub i2t_mrr: f64,
    #[serde(rename = "t2i_MRR")]
    pub t2i_mrr: f64,
    pub score: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TuningCell {
    pub val: BTreeMap<String, TuningScore>,
    pub best_alpha: f64,
    pub best_csa_s: usize,
    pub seeds: Vec<u64>,
}

/// `tuxpaint_tuning.json`: per budget n.
pub fn load_tuning(dir: &Path) -> Result<BTreeMap<usize, TuningCell>, IoError> {
    let path = dir.join("tuxpaint_tuning.json");
    let raw: BTreeMap<String, TuningCell> = parse_json(&path)?;
    raw.into_iter()
        .map(|(k, v)| {
            k.parse::<usize>()
                .map(|n| (n, v))
                .map_err(|_| IoError::format(&path, format!("budget key `{k}` is not a number")))
        })
        .collect()
}
