//! The daemon as a language server for JSONL manifests: what an editor shows for one document.
//!
//! On open/change the document is parsed ([`super::lsp_doc`]), every item's embeddings are read
//! from the header's `.npy` files (`imageRow` / `textRow`), and the document's pairs are audited
//! (`sotalign_engine::audit`, cross-fitted CCA: a line never vouches for itself). Then:
//! - diagnostics (warnings) on the `text` value of the lines whose pair the audit suspects, with
//!   the suspicion and the suggested caption (and the line it comes from); errors on lines that
//!   do not parse or name rows that do not exist;
//! - hover on an image path: the captions of the document that score best with it; on a caption:
//!   the best images (path, score, line), under a model fitted on all the document's pairs;
//! - a quick-fix code action replacing a suspected line's caption (and `textRow`) with the
//!   suggested one.
//!
//! Everything here is a pure function of (document text, embedding matrices): the handlers in
//! `lsp_handlers.rs` do the IO (reading `.npy` files) and the messaging.
use std::collections::HashMap;

use sotalign_engine::audit::{Audit, AuditConfig, Partner, audit};
use sotalign_engine::methods::{Method, fit_quiet};
use sotalign_engine::progress::ignore;
use sotalign_engine::{AlignConfig, AlignData, Aligned, Matrix};
use tower_lsp_server::ls_types as lsp;

use super::lsp_doc::{Doc, Item, byte_of_utf16, utf16_col};

/// Source name on every diagnostic.
pub const SOURCE: &str = "sotalign";
/// Fewest pairs a document needs before it is audited.
pub const MIN_PAIRS: usize = 8;
/// Most pairs audited per document (bounded work per edit).
pub const MAX_PAIRS: usize = 3000;
/// Lines shown in a hover.
const HOVER_TOP: usize = 5;

/// The embedding matrices named by the header, as loaded (or why not).
#[derive(Default)]
pub struct Embeddings {
    pub image: Option<Result<Matrix, String>>,
    pub text: Option<Result<Matrix, String>>,
}

/// One analysed document.
pub struct Analysis {
    pub doc: Doc,
    /// Items with an image vector (item index) and their vectors, same order.
    image_items: Vec<usize>,
    images: Matrix,
    text_items: Vec<usize>,
    texts: Matrix,
    /// Audit of each audited pair, keyed by item index; `alt` is the item whose caption is
    /// suggested.
    pub suspects: HashMap<usize, Suspect>,
    /// Model on all pairs (hover), when the document has enough pairs.
    model: Option<Box<dyn Aligned>>,
    /// Problems found while reading (line, message, error?).
    pub problems: Vec<(u32, String)>,
    /// Why there is no audit (too few pairs, no embeddings), for the status line.
    pub note: Option<String>,
}

/// A suspected pair.
#[derive(Debug, Clone)]
pub struct Suspect {
    pub suspicion: f64,
    pub score: f64,
    /// Above the audit's own outlier threshold (`sotalign_engine::audit::flag_threshold`):
    /// warned about and offered a fix.
    pub flagged: bool,
    /// The line (item) whose caption this line should have if the two were swapped, and the
    /// swap's gain (> 0: better for both lines).
    pub swap: Option<(usize, f64)>,
    /// Item whose caption the fix brings (`PairAudit::suggested_text`).
    pub suggested: Option<usize>,
    /// Item whose caption the model prefers for this line's image, and its score.
    pub alt_text: Option<(usize, f64)>,
    /// Item whose image the model prefers for this line's caption.
    pub alt_image: Option<(usize, f64)>,
}

/// Analyse a document given its header's embedding matrices.
pub fn analyse(doc: Doc, emb: &Embeddings) -> Analysis {
    let mut problems: Vec<(u32, String)> = doc
        .bad
        .iter()
        .map(|b| (b.line, b.message.clone()))
        .collect();
    let header_line = 0;
    for (what, m) in [("image", &emb.image), ("text", &emb.text)] {
        if let Some(Err(e)) = m {
            problems.push((
                header_line,
                format!("cannot read the {what} embeddings: {e}"),
            ));
        }
    }
    let img = emb.image.as_ref().and_then(|r| r.as_ref().ok());
    let txt = emb.text.as_ref().and_then(|r| r.as_ref().ok());
    let (mut image_items, mut image_rows) = (Vec::new(), Vec::new());
    let (mut text_items, mut text_rows) = (Vec::new(), Vec::new());
    for (k, it) in doc.items.iter().enumerate() {
        for (row, mat, items, rows, what) in [
            (
                it.entry.image_row,
                img,
                &mut image_items,
                &mut image_rows,
                "imageRow",
            ),
            (
                it.entry.text_row,
                txt,
                &mut text_items,
                &mut text_rows,
                "textRow",
            ),
        ] {
            let Some(r) = row else { continue };
            match mat {
                Some(m) if r < m.rows => {
                    items.push(k);
                    rows.push(r);
                }
                Some(m) => problems.push((
                    it.line,
                    format!("{what} {r} is out of range (the file has {} rows)", m.rows),
                )),
                None => problems.push((
                    it.line,
                    format!("{what} given but the header names no readable embeddings file for it"),
                )),
            }
        }
    }
    let images = img
        .map(|m| m.select_rows(&image_rows))
        .unwrap_or_else(|| Matrix::zeros(0, 0));
    let texts = txt
        .map(|m| m.select_rows(&text_rows))
        .unwrap_or_else(|| Matrix::zeros(0, 0));
    let mut a = Analysis {
        doc,
        image_items,
        images,
        text_items,
        texts,
        suspects: HashMap::new(),
        model: None,
        problems,
        note: None,
    };
    a.run_audit();
    a
}

impl Analysis {
    fn image_pos(&self, item: usize) -> Option<usize> {
        self.image_items.binary_search(&item).ok()
    }
    fn text_pos(&self, item: usize) -> Option<usize> {
        self.text_items.binary_search(&item).ok()
    }

    /// The hover list's de-duplication key of an item's text: its caption group's key
    /// (`sotalign_engine::groups`), else its row.
    fn group_key(it: &Item) -> String {
        match (&it.entry.caption, it.entry.text_row) {
            (Some(t), _) => sotalign_engine::groups::caption_key(t).to_string(),
            (None, Some(r)) => format!("#row{r}"),
            _ => String::new(),
        }
    }

    fn run_audit(&mut self) {
        let items = &self.doc.items;
        let pairs: Vec<usize> = (0..items.len())
            .filter(|&k| {
                items[k].is_pair() && self.image_pos(k).is_some() && self.text_pos(k).is_some()
            })
            .collect();
        if pairs.len() < MIN_PAIRS {
            self.note = Some(format!(
                "{} embedded pairs; the audit needs at least {MIN_PAIRS}",
                pairs.len()
            ));
            return;
        }
        if pairs.len() > MAX_PAIRS {
            self.note = Some(format!(
                "{} pairs; the editor audit checks at most {MAX_PAIRS}",
                pairs.len()
            ));
            return;
        }
        let in_pair: std::collections::HashSet<usize> = pairs.iter().copied().collect();
        let ui: Vec<usize> = self
            .image_items
            .iter()
            .copied()
            .filter(|k| !in_pair.contains(k))
            .collect();
        let ut: Vec<usize> = self
            .text_items
            .iter()
            .copied()
            .filter(|k| !in_pair.contains(k))
            .collect();
        // Caption groups by the engine's one rule (equal captions = one group).
        let mut groups = sotalign_engine::groups::CaptionGroups::new();
        let mut gid = |it: &Item| groups.assign(it.entry.caption.as_deref());
        let pair_groups: Vec<u32> = pairs.iter().map(|&k| gid(&items[k])).collect();
        let yu_groups: Vec<u32> = ut.iter().map(|&k| gid(&items[k])).collect();
        let rows = |idx: &[usize], pos: &dyn Fn(usize) -> Option<usize>, m: &Matrix| {
            m.select_rows(&idx.iter().filter_map(|&k| pos(k)).collect::<Vec<_>>())
        };
        let ip = |k| self.image_pos(k);
        let tp = |k| self.text_pos(k);
        let data = AlignData {
            xp: rows(&pairs, &ip, &self.images),
            yp: rows(&pairs, &tp, &self.texts),
            xu: rows(&ui, &ip, &self.images),
            yu: rows(&ut, &tp, &self.texts),
            pair_groups,
            yu_groups: Some(yu_groups),
            negatives: None,
        };
        let cfg = AlignConfig::default();
        let audits: Audit = match audit(
            Method::Cca,
            &data,
            &cfg,
            &AuditConfig::default(),
            &mut ignore,
        ) {
            Ok(a) => a,
            Err(e) => {
                self.note = Some(format!("audit failed: {e}"));
                return;
            }
        };
        let item_of = |p: Partner, unpaired: &[usize]| match p {
            Partner::Pair(j) => pairs.get(j).copied(),
            Partner::Unpaired(u) => unpaired.get(u).copied(),
        };
        let flags = audits.flagged();
        for (a, &flag) in audits.pairs.iter().zip(&flags) {
            self.suspects.insert(
                pairs[a.pair],
                Suspect {
                    suspicion: a.suspicion,
                    score: a.score,
                    flagged: flag,
                    swap: a.swap.and_then(|(j, g)| Some((*pairs.get(j)?, g))),
                    suggested: audits
                        .suggested_text(a.pair, &flags)
                        .and_then(|p| item_of(p, &ut)),
                    alt_text: a.alt_text.and_then(|(p, s)| Some((item_of(p, &ut)?, s))),
                    alt_image: a.alt_image.and_then(|(p, s)| Some((item_of(p, &ui)?, s))),
                },
            );
        }
        self.model = fit_quiet(Method::Cca, &data, &cfg).ok();
    }

    fn line_range(&self, line: u32, span: Option<&std::ops::Range<usize>>) -> lsp::Range {
        let text = self
            .doc
            .lines
            .get(line as usize)
            .map(String::as_str)
            .unwrap_or("");
        let (s, e) = match span {
            Some(r) => (utf16_col(text, r.start), utf16_col(text, r.end)),
            None => (0, utf16_col(text, text.len())),
        };
        lsp::Range::new(lsp::Position::new(line, s), lsp::Position::new(line, e))
    }

    fn describe(&self, k: usize) -> String {
        let it = &self.doc.items[k];
        let what = it
            .entry
            .caption
            .clone()
            .or_else(|| it.entry.image_path.clone())
            .or_else(|| it.entry.key.clone())
            .unwrap_or_default();
        format!("{what:?} (line {})", it.line + 1)
    }

    fn image_name(&self, k: usize) -> String {
        let it = &self.doc.items[k];
        it.entry
            .image_path
            .clone()
            .or_else(|| it.entry.key.clone())
            .or_else(|| it.entry.image_row.map(|r| format!("imageRow {r}")))
            .unwrap_or_default()
    }

    /// The diagnostics of the document: reading problems (errors) and suspected pairs
    /// (warnings, on the caption).
    pub fn diagnostics(&self) -> Vec<lsp::Diagnostic> {
        let mut out: Vec<lsp::Diagnostic> = self
            .problems
            .iter()
            .map(|(line, msg)| lsp::Diagnostic {
                range: self.line_range(*line, None),
                severity: Some(lsp::DiagnosticSeverity::ERROR),
                source: Some(SOURCE.into()),
                message: msg.clone(),
                ..Default::default()
            })
            .collect();
        let mut sus: Vec<(&usize, &Suspect)> =
            self.suspects.iter().filter(|(_, s)| s.flagged).collect();
        sus.sort_by_key(|(k, _)| **k);
        for (&k, s) in sus {
            let it = &self.doc.items[k];
            let mut msg = format!(
                "this pair looks wrong (suspicion {:.3}, pair score {:.3})",
                s.suspicion, s.score
            );
            match (s.swap, s.alt_text) {
                (Some((j, g)), _) if g > 0.0 => msg.push_str(&format!(
                    "; swapping captions with line {} fits both lines better (gain {g:.3}): this image would get {}",
                    self.doc.items[j].line + 1,
                    self.describe(j)
                )),
                (_, Some((t, sc))) => msg.push_str(&format!(
                    "; the image matches {} better ({sc:.3})",
                    self.describe(t)
                )),
                _ => {}
            }
            if let Some((i, sc)) = s.alt_image {
                msg.push_str(&format!(
                    "; the caption matches {} (line {}) better ({sc:.3})",
                    self.image_name(i),
                    self.doc.items[i].line + 1
                ));
            }
            out.push(lsp::Diagnostic {
                range: self
                    .line_range(it.line, it.text_span.as_ref().or(it.text_row_span.as_ref())),
                severity: Some(lsp::DiagnosticSeverity::WARNING),
                code: Some(lsp::NumberOrString::String("suspect-pair".into())),
                source: Some(SOURCE.into()),
                message: msg,
                data: s
                    .suggested
                    .map(|t| serde_json::json!({ "altLine": self.doc.items[t].line })),
                ..Default::default()
            });
        }
        out
    }

    fn item_at_line(&self, line: u32) -> Option<usize> {
        self.doc
            .items
            .binary_search_by_key(&line, |it| it.line)
            .ok()
    }

    /// Hover: on an image path the best captions, on a caption the best images.
    pub fn hover(&self, pos: lsp::Position) -> Option<lsp::Hover> {
        let k = self.item_at_line(pos.line)?;
        let it = &self.doc.items[k];
        let line = self.doc.lines.get(pos.line as usize)?;
        let b = byte_of_utf16(line, pos.character);
        let inside =
            |r: &Option<std::ops::Range<usize>>| r.as_ref().is_some_and(|r| r.contains(&b));
        let model = self.model.as_ref()?;
        let (title, rows, range) = if inside(&it.image_span) {
            let i = self.image_pos(k)?;
            let s = model
                .score(&self.images.select_rows(&[i]), &self.texts)
                .ok()?;
            let mut best: Vec<(usize, f64)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut order: Vec<usize> = (0..s.cols).collect();
            order.sort_by(|&a, &b| s.data[b].total_cmp(&s.data[a]));
            for j in order {
                let t = self.text_items[j];
                if seen.insert(Self::group_key(&self.doc.items[t])) {
                    best.push((t, s.data[j] as f64));
                }
                if best.len() == HOVER_TOP {
                    break;
                }
            }
            let rows: Vec<String> = best
                .iter()
                .map(|&(t, sc)| format!("{sc:.3}  {}", self.describe(t)))
                .collect();
            ("Best captions for this image", rows, &it.image_span)
        } else if inside(&it.text_span) {
            let t = self.text_pos(k)?;
            let s = model
                .score(&self.images, &self.texts.select_rows(&[t]))
                .ok()?;
            let mut order: Vec<usize> = (0..s.rows).collect();
            order.sort_by(|&a, &b| s.data[b].total_cmp(&s.data[a]));
            let rows: Vec<String> = order
                .iter()
                .take(HOVER_TOP)
                .map(|&i| {
                    let item = self.image_items[i];
                    format!(
                        "{:.3}  {} (line {})",
                        s.data[i],
                        self.image_name(item),
                        self.doc.items[item].line + 1
                    )
                })
                .collect();
            ("Best images for this caption", rows, &it.text_span)
        } else {
            return None;
        };
        let mut text = format!("{title} (cca on this file's pairs):\n");
        for r in rows {
            text.push_str(&format!("- {r}\n"));
        }
        if let Some(s) = self.suspects.get(&k) {
            text.push_str(&format!(
                "\nAudit: suspicion {:.3} (cross-fitted)\n",
                s.suspicion
            ));
        }
        Some(lsp::Hover {
            contents: lsp::HoverContents::Markup(lsp::MarkupContent {
                kind: lsp::MarkupKind::PlainText,
                value: text,
            }),
            range: Some(self.line_range(pos.line, range.as_ref())),
        })
    }

    /// Quick fixes for the suspected lines in `range`: replace the caption (and `textRow`) with
    /// the suggested one.
    pub fn code_actions(&self, uri: &lsp::Uri, range: lsp::Range) -> Vec<lsp::CodeAction> {
        let mut out = Vec::new();
        for line in range.start.line..=range.end.line.min(range.start.line + 1000) {
            let Some(k) = self.item_at_line(line) else {
                continue;
            };
            let Some(s) = self.suspects.get(&k).filter(|s| s.flagged) else {
                continue;
            };
            let Some(alt) = s.suggested else { continue };
            if let Some(a) = self.replace_caption(uri, k, alt) {
                out.push(a);
            }
        }
        out
    }

    fn replace_caption(&self, uri: &lsp::Uri, k: usize, alt: usize) -> Option<lsp::CodeAction> {
        let it = &self.doc.items[k];
        let src = &self.doc.items[alt];
        let mut edits = Vec::new();
        match (&it.text_span, &src.entry.caption) {
            (Some(span), Some(caption)) => edits.push(lsp::TextEdit {
                range: self.line_range(it.line, Some(span)),
                new_text: serde_json::to_string(caption).ok()?,
            }),
            (None, None) => {}
            // One side has a caption and the other does not: no consistent edit.
            _ => return None,
        }
        match (&it.text_row_span, src.entry.text_row) {
            (Some(span), Some(row)) => edits.push(lsp::TextEdit {
                range: self.line_range(it.line, Some(span)),
                new_text: row.to_string(),
            }),
            (None, _) => {}
            (Some(_), None) => return None,
        }
        if edits.is_empty() {
            return None;
        }
        let label = src
            .entry
            .caption
            .clone()
            .unwrap_or_else(|| format!("textRow {}", src.entry.text_row.unwrap_or(0)));
        Some(lsp::CodeAction {
            title: format!("Replace the caption with {label:?} (line {})", src.line + 1),
            kind: Some(lsp::CodeActionKind::QUICKFIX),
            edit: Some(lsp::WorkspaceEdit {
                changes: Some(HashMap::from([(uri.clone(), edits)])),
                ..Default::default()
            }),
            is_preferred: Some(true),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::lsp_doc::parse;
    use rand::SeedableRng;
    use sotalign_engine::testing::small_platonic;

    /// 40 platonic pairs; line 1 + k holds pair k, with pairs 5 and 17 swapped in the text.
    fn planted() -> (String, Embeddings) {
        let p = small_platonic(5);
        let (x, y) = p.pairs(40, &mut rand_chacha::ChaCha8Rng::seed_from_u64(2));
        let mut text = String::from(
            "{\"sotalign_manifest\": 1, \"embeddings\": {\"image\": \"img.npy\", \"text\": \"txt.npy\"}}\n",
        );
        for k in 0..40 {
            let t = match k {
                5 => 17,
                17 => 5,
                k => k,
            };
            text.push_str(&format!(
                "{{\"imagePath\": \"stamps/s{k}.png\", \"imageRow\": {k}, \"caption\": \"caption {t}\", \"textRow\": {t}}}\n"
            ));
        }
        (
            text,
            Embeddings {
                image: Some(Ok(x)),
                text: Some(Ok(y)),
            },
        )
    }

    #[test]
    fn the_planted_swap_is_diagnosed_hovered_and_fixed() {
        let (text, emb) = planted();
        let a = analyse(parse(&text), &emb);
        let d = a.diagnostics();
        let warned: Vec<u32> = d
            .iter()
            .filter(|d| d.severity == Some(lsp::DiagnosticSeverity::WARNING))
            .map(|d| d.range.start.line)
            .collect();
        assert!(warned.contains(&6) && warned.contains(&18), "{warned:?}");
        // The threshold is calibrated: the 38 clean lines are not warned about wholesale.
        assert!(warned.len() <= 4, "{warned:?}");
        // Line 6 (pair 5) carries caption 17; the fix brings caption 5 from line 18.
        let uri: lsp::Uri = "file:///tmp/m.jsonl".parse().unwrap();
        let acts = a.code_actions(
            &uri,
            lsp::Range::new(lsp::Position::new(6, 0), lsp::Position::new(6, 0)),
        );
        assert_eq!(acts.len(), 1);
        let edits = &acts[0].edit.as_ref().unwrap().changes.as_ref().unwrap()[&uri];
        let texts: Vec<&str> = edits.iter().map(|e| e.new_text.as_str()).collect();
        assert_eq!(texts, vec!["\"caption 5\"", "5"]);
        // Applying the edits gives back the clean line.
        let mut line = a.doc.lines[6].clone();
        let mut es = edits.clone();
        es.sort_by_key(|e| std::cmp::Reverse(e.range.start.character));
        for e in es {
            let s = byte_of_utf16(&line, e.range.start.character);
            let t = byte_of_utf16(&line, e.range.end.character);
            line.replace_range(s..t, &e.new_text);
        }
        assert_eq!(
            line,
            "{\"imagePath\": \"stamps/s5.png\", \"imageRow\": 5, \"caption\": \"caption 5\", \"textRow\": 5}"
        );
        // Hover on the image path lists captions with scores and lines.
        let col = a.doc.lines[3].find("stamps").unwrap() as u32 + 2;
        let h = a.hover(lsp::Position::new(3, col)).unwrap();
        let lsp::HoverContents::Markup(m) = h.contents else {
            panic!()
        };
        assert!(
            m.value.contains("Best captions") && m.value.contains("caption 2"),
            "{}",
            m.value
        );
        // Inside the caption's value (the first "caption" on the line is the key).
        let col = a.doc.lines[3].find("\"caption 2\"").unwrap() as u32 + 2;
        let h = a.hover(lsp::Position::new(3, col)).unwrap();
        let lsp::HoverContents::Markup(m) = h.contents else {
            panic!()
        };
        assert!(m.value.contains("stamps/s2.png (line 4)"), "{}", m.value);
    }

    #[test]
    fn bad_rows_and_small_files_are_reported_not_fatal() {
        let text = "{\"sotalign_manifest\": 1, \"embeddings\": {\"image\": \"img.npy\"}}\n{\"imagePath\": \"a.png\", \"imageRow\": 99, \"caption\": \"A.\"}\n{\"caption\": \"B.\", \"textRow\": 0}\nnot json\n";
        let emb = Embeddings {
            image: Some(Ok(Matrix::zeros(3, 4))),
            text: None,
        };
        let a = analyse(parse(text), &emb);
        let lines: Vec<u32> = a.diagnostics().iter().map(|d| d.range.start.line).collect();
        assert_eq!(lines, vec![3, 1, 2]);
        assert!(a.note.is_some());
        assert!(a.hover(lsp::Position::new(1, 12)).is_none());
    }
}
