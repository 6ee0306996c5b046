//! `sotalign/audit`: the confirmed pairs that look most wrong, each scored by a model fitted
//! without it (`sotalign_engine::audit`), with the partners the model suggests instead.
//!
//! Bounded work: the store's confirmed pairs are audited only up to [`MAX_AUDIT_PAIRS`] (more is
//! a typed `INVALID_INPUT`, not a minute-long request), and at most [`MAX_CANDIDATES`] unpaired
//! items per modality compete as alternatives (the first ones in store order), so the score
//! matrix of one fold stays under (3000 + 1000)^2 f64 values. Only closed-form scorers are
//! accepted: the trained ones would train `folds x rounds` heads per request.
use std::collections::HashMap;

use sotalign_engine::audit::{AuditConfig, Partner, audit, most_suspicious};
use sotalign_engine::progress::ignore;
use sotalign_protocol::types::*;

use super::align_job::{align_data, embedded_pairs};
use super::backend::Backend;
use super::errors::{HResult, internal, invalid_input};
use super::fit::engine_method;

/// Most confirmed pairs one audit request scores.
pub const MAX_AUDIT_PAIRS: usize = 3000;
/// Most unpaired items per modality that compete as alternatives.
pub const MAX_CANDIDATES: usize = 1000;
const MAX_LIMIT: u32 = 1000;

impl Backend {
    pub(crate) async fn do_audit(&self, p: AuditParams) -> HResult<AuditResult> {
        let method = engine_method(p.method);
        if !method.is_closed_form() {
            return Err(invalid_input(
                format!(
                    "audit method `{}` trains per fold; use a closed-form one (cca, procrustes, csa, asif, asif_c)",
                    method.name()
                ),
                None,
            ));
        }
        let folds = p.folds.unwrap_or(5);
        if !(2..=20).contains(&folds) {
            return Err(invalid_input(
                format!("folds must be in 2..=20, got {folds}"),
                None,
            ));
        }
        let acfg = AuditConfig {
            folds: folds as usize,
            seed: p.seed.unwrap_or(0),
            ..AuditConfig::default()
        };
        let limit = p.limit.clamp(1, MAX_LIMIT) as usize;
        let mut snap = self.shared.store(|s| s.training_snapshot()).await?;
        snap.unpaired_images.truncate(MAX_CANDIDATES);
        snap.unpaired_texts.truncate(MAX_CANDIDATES);
        let pairs = embedded_pairs(&snap);
        if pairs.len() > MAX_AUDIT_PAIRS {
            return Err(invalid_input(
                format!(
                    "{} confirmed pairs; an audit request scores at most {MAX_AUDIT_PAIRS}",
                    pairs.len()
                ),
                None,
            ));
        }
        let data = align_data(&snap);
        let cfg = sotalign_engine::AlignConfig::default();
        let audits =
            tokio::task::spawn_blocking(move || audit(method, &data, &cfg, &acfg, &mut ignore))
                .await
                .map_err(|e| internal(format!("audit task failed: {e}")))?
                .map_err(|e| invalid_input(format!("audit failed: {e}"), None))?;
        let audited = audits.pairs.len() as u64;
        let flags = audits.flagged();
        let flagged = flags.iter().filter(|&&f| f).count() as u64;
        // The suggested caption (swap-aware) replaces the plain best competitor, with its score.
        let suggested: Vec<Option<(Partner, f64)>> = (0..flags.len())
            .map(|i| {
                let pt = audits.suggested_text(i, &flags)?;
                let score = match pt {
                    Partner::Pair(j) => audits.pair_text_score(i, j)?,
                    Partner::Unpaired(_) => audits.pairs[i]
                        .alt_text
                        .filter(|(p, _)| *p == pt)
                        .map(|(_, s)| s)?,
                };
                Some((pt, score))
            })
            .collect();
        let top: Vec<_> = most_suspicious(audits.pairs)
            .into_iter()
            .take(limit)
            .map(|mut a| {
                a.alt_text = suggested[a.pair];
                a
            })
            .collect();
        let image_of = |pt: Partner| match pt {
            Partner::Pair(j) => pairs.get(j).map(|p| p.0),
            Partner::Unpaired(u) => snap.unpaired_images.get(u).copied(),
        };
        let text_of = |pt: Partner| match pt {
            Partner::Pair(j) => pairs.get(j).map(|p| p.1),
            Partner::Unpaired(u) => snap.unpaired_texts.get(u).copied(),
        };
        let mut ids = Vec::new();
        for a in &top {
            let (i, t) = pairs[a.pair];
            ids.extend([i, t]);
            ids.extend(a.alt_text.and_then(|(pt, _)| text_of(pt)));
            ids.extend(a.alt_image.and_then(|(pt, _)| image_of(pt)));
        }
        let samples = self.shared.store(move |s| s.samples(&ids)).await?;
        let by_id: HashMap<SampleId, Sample> = samples.into_iter().map(|s| (s.id, s)).collect();
        let partner = |id: Option<SampleId>, score: f64| {
            id.and_then(|id| by_id.get(&id)).map(|s| AuditPartner {
                sample: s.clone(),
                score,
            })
        };
        let out = top
            .iter()
            .filter_map(|a| {
                let (i, t) = pairs[a.pair];
                Some(AuditedPair {
                    image: by_id.get(&i)?.clone(),
                    text: by_id.get(&t)?.clone(),
                    suspicion: a.suspicion,
                    score: a.score,
                    flagged: flags[a.pair],
                    alt_text: a.alt_text.and_then(|(pt, s)| partner(text_of(pt), s)),
                    alt_image: a.alt_image.and_then(|(pt, s)| partner(image_of(pt), s)),
                })
            })
            .collect();
        Ok(AuditResult {
            method: p.method,
            audited,
            flagged,
            pairs: out,
        })
    }
}
