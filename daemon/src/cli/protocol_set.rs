//! `sotalign protocol-set`: turn an `encode` output directory into a check set laid out like the
//! reference fixtures (`tests/fixtures/reference`), so `experiment`, `align --reference`,
//! `simulate` and `bench realign --reference` run on it unchanged.
//!
//! Splits follow PROTOCOL.md's rule with this command's own seeded permutations: test = the
//! first round(`test_fraction` N) rows of a permutation; for seed s, paired = the first n of a
//! permutation of the non-test rows (nested in n), the rest is the unpaired pool, its images and
//! its texts shuffled independently. File names keep the fixtures' `tuxpaint_` prefix, which
//! the loader expects; `tuxpaint_index.json`'s `meta` says what the set really is.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::json;

use crate::io::{read_npy, write_npy};

#[derive(Args)]
pub struct ProtocolSetArgs {
    /// An `encode` output directory (images.npy, texts.npy, items.jsonl).
    #[arg(long, value_name = "DIR")]
    pub embeddings: PathBuf,
    /// Where the reference-style files go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0.3)]
    pub test_fraction: f64,
    #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
    pub seeds: Vec<u64>,
    #[arg(long, value_delimiter = ',', default_values_t = vec![25usize, 50, 100, 200, 400])]
    pub budgets: Vec<usize>,
    /// Seed of the test permutation.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
}

#[derive(Deserialize)]
struct ItemLine {
    text: Option<String>,
    source: String,
    label: Option<String>,
    image_row: Option<usize>,
    text_row: Option<usize>,
}

pub fn run(a: ProtocolSetArgs) -> Result<()> {
    let img = read_npy(&a.embeddings.join("images.npy"))?;
    let txt = read_npy(&a.embeddings.join("texts.npy"))?;
    let items_path = a.embeddings.join("items.jsonl");
    let body = std::fs::read_to_string(&items_path)
        .with_context(|| format!("reading {}", items_path.display()))?;
    // Items with both an image and a caption row, in file order.
    let mut rows = Vec::new();
    for (k, line) in body
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let it: ItemLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}", items_path.display(), k + 1))?;
        if let (Some(i), Some(t), Some(c)) = (it.image_row, it.text_row, it.text) {
            if i >= img.rows || t >= txt.rows {
                bail!("{}:{}: row out of range", items_path.display(), k + 1);
            }
            rows.push((i, t, c, it.source, it.label));
        }
    }
    let n = rows.len();
    if !(0.0..1.0).contains(&a.test_fraction) {
        bail!("--test-fraction must be in [0, 1)");
    }
    let mut perm: Vec<usize> = (0..n).collect();
    perm.shuffle(&mut ChaCha8Rng::seed_from_u64(a.split_seed));
    let n_test = (a.test_fraction * n as f64).round() as usize;
    let mut test = perm[..n_test].to_vec();
    let mut nontest = perm[n_test..].to_vec();
    test.sort_unstable();
    nontest.sort_unstable();
    if let Some(&big) = a.budgets.iter().find(|&&b| b + 2 > nontest.len()) {
        bail!(
            "budget {big} leaves no unpaired pool ({} non-test rows)",
            nontest.len()
        );
    }
    let mut runs = BTreeMap::new();
    for &s in &a.seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + s);
        let mut order = nontest.clone();
        order.shuffle(&mut rng);
        for &b in &a.budgets {
            let paired = order[..b].to_vec();
            let mut ui = order[b..].to_vec();
            let mut ut = ui.clone();
            ui.shuffle(&mut rng);
            ut.shuffle(&mut rng);
            runs.insert(
                format!("{s}_{b}"),
                json!({"paired": paired, "unpaired_img": ui, "unpaired_txt": ut}),
            );
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let pick = |m: &sotalign_engine::Matrix, idx: Vec<usize>| m.select_rows(&idx);
    write_npy(
        &a.out.join("tuxpaint_img.npy"),
        &pick(&img, rows.iter().map(|r| r.0).collect()),
    )?;
    write_npy(
        &a.out.join("tuxpaint_txt.npy"),
        &pick(&txt, rows.iter().map(|r| r.1).collect()),
    )?;
    let distinct: std::collections::HashSet<&str> = rows.iter().map(|r| r.2.trim()).collect();
    let index = json!({
        "meta": {
            "dataset": a.embeddings.display().to_string(),
            "n": n,
            "n_distinct_captions": distinct.len(),
            "made_by": "sotalign protocol-set",
        },
        "rows": rows.iter().enumerate().map(|(k, r)| json!({
            "row": k, "caption": r.2, "source": r.3, "label": r.4,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        a.out.join("tuxpaint_index.json"),
        serde_json::to_string(&index)?,
    )?;
    let splits = json!({"config": "protocol-set", "n_rows": n, "test": test, "nontest": nontest, "runs": runs});
    std::fs::write(
        a.out.join("tuxpaint_splits.json"),
        serde_json::to_string(&splits)?,
    )?;
    println!(
        "{}: {n} rows ({} distinct captions), {} test, {} non-test, {} cells",
        a.out.display(),
        distinct.len(),
        n_test,
        n - n_test,
        runs.len()
    );
    Ok(())
}
