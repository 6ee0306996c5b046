//! `sotalign/audit` on the real daemon: a manifest of 80 seed pairs (embeddings from the
//! engine's synthetic platonic generator, where retrieval is strong enough for a single swap to
//! be visible) with the captions of two pairs swapped. The audit must put both swapped pairs
//! first, flag them and few others (the decoy-calibrated cut), and suggest each image's true
//! caption (the swap-aware re-pairing). How well it does on Tux Paint is measured by
//! `sotalign audit-sim` (docs/CURATION.md), not asserted here.
mod common;

use common::*;
use serde_json::json;
use sotalign_protocol::methods;
use sotalign_protocol::types::*;

#[test]
fn the_swapped_pairs_come_first_flagged_with_their_true_captions() {
    let dir = tempfile::tempdir().unwrap();
    let n = 80;
    write_platonic_npy(dir.path(), n);
    let (a, b) = (10usize, 50usize);
    let mut lines = vec![
        json!({"sotalign_manifest": 1, "embeddings": {"image": "img.npy", "text": "txt.npy"}})
            .to_string(),
    ];
    for k in 0..n {
        let t = if k == a {
            b
        } else if k == b {
            a
        } else {
            k
        };
        lines.push(
            json!({"key": format!("s{k}"), "imageRow": k, "caption": format!("caption {t}"),
                   "textRow": t, "split": "train"})
            .to_string(),
        );
    }
    let manifest = dir.path().join("m.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();

    let (_d, mut c, _) = spawn_stdio(&dir.path().join("data"), &[]);
    c.initialize("audit-test", None).unwrap();
    ingest(&mut c, &manifest);
    let r = c
        .call::<methods::Audit>(AuditParams {
            method: AlignMethod::Cca,
            limit: 10,
            folds: None,
            seed: None,
        })
        .unwrap();
    assert_eq!(r.audited, n as u64);
    let top: Vec<&str> = r
        .pairs
        .iter()
        .take(2)
        .map(|p| p.image.key.as_str())
        .collect();
    assert!(
        top.contains(&"s10") && top.contains(&"s50"),
        "top: {:?}",
        r.pairs
            .iter()
            .map(|p| (&p.image.key, p.suspicion, p.flagged))
            .collect::<Vec<_>>()
    );
    assert!(r.pairs[0].flagged && r.pairs[1].flagged);
    assert!(
        (2..=6).contains(&r.flagged),
        "{} of {n} flagged: the cut is calibrated",
        r.flagged
    );
    for p in r.pairs.iter().take(2) {
        let want = format!("caption {}", &p.image.key[1..]);
        let got = p.alt_text.as_ref().and_then(|t| t.sample.text.clone());
        assert_eq!(
            got.as_deref(),
            Some(want.as_str()),
            "suggestion for {}",
            p.image.key
        );
    }
    // The list is most suspicious first and unflagged pairs follow the flagged ones.
    assert!(r.pairs.windows(2).all(|w| w[0].suspicion >= w[1].suspicion));
    assert!(r.pairs.windows(2).all(|w| w[0].flagged || !w[1].flagged));
}
