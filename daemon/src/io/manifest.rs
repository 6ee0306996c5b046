//! The JSONL manifest that says which embedding rows are pairs, unpaired items and test items.
//!
//! One JSON object per line (blank lines and lines starting with `#` are skipped):
//! - `{"image": 3, "text": 7, "caption": "A frog."}`: a pair (row 3 of the image embeddings with
//!   row 7 of the text embeddings); `"split": "test"` holds it out for evaluation;
//! - `{"image": 5}`: an unpaired image;
//! - `{"text": 9, "caption": "A cat."}`: an unpaired text.
//!
//! `caption` defines equality for retrieval (two items with the same caption are both correct);
//! without it, texts are compared by row. Row indices are checked against the embedding files.
use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{IoError, read_bytes};
use sotalign_engine::{AlignData, Matrix};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    image: Option<usize>,
    text: Option<usize>,
    caption: Option<String>,
    split: Option<String>,
    /// Free-form id, carried for the user's benefit.
    #[allow(dead_code)]
    id: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PairEntry {
    pub image: usize,
    pub text: usize,
    pub caption: Option<String>,
    pub split: Split,
}

/// A parsed manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    pub pairs: Vec<PairEntry>,
    pub images: Vec<usize>,
    pub texts: Vec<(usize, Option<String>)>,
}

/// A held-out paired evaluation set: row i of `x` pairs with row i of `y`; `labels` are caption
/// groups.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub x: Matrix,
    pub y: Matrix,
    pub labels: Vec<u32>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, IoError> {
        let bytes = read_bytes(path)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| IoError::format(path, "manifest is not UTF-8"))?;
        Self::parse(text).map_err(|(line, msg)| IoError::Manifest {
            path: path.to_path_buf(),
            line,
            msg,
        })
    }

    /// Parse manifest text; errors carry the 1-based line number.
    pub fn parse(text: &str) -> Result<Manifest, (usize, String)> {
        let mut m = Manifest::default();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let s = raw.trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            let l: Line = serde_json::from_str(s).map_err(|e| (line_no, e.to_string()))?;
            let split = match l.split.as_deref() {
                None | Some("train") => Split::Train,
                Some("test") => Split::Test,
                Some(o) => {
                    return Err((
                        line_no,
                        format!("split must be \"train\" or \"test\", got {o:?}"),
                    ));
                }
            };
            match (l.image, l.text) {
                (Some(image), Some(text)) => m.pairs.push(PairEntry {
                    image,
                    text,
                    caption: l.caption,
                    split,
                }),
                (Some(image), None) if split == Split::Train => m.images.push(image),
                (None, Some(text)) if split == Split::Train => m.texts.push((text, l.caption)),
                (None, None) => {
                    return Err((line_no, "entry needs \"image\", \"text\" or both".into()));
                }
                _ => return Err((line_no, "only pairs can be in the test split".into())),
            }
        }
        Ok(m)
    }

    /// Assemble the training data (train pairs + unpaired pools) and the test set (if any test
    /// pairs) from the two embedding matrices, checking every row index.
    pub fn assemble(
        &self,
        img: &Matrix,
        txt: &Matrix,
    ) -> Result<(AlignData, Option<EvalSet>), String> {
        // Caption groups by the engine's one rule; a pair or text without a caption is keyed
        // by its text row, so the same row is one group wherever it appears.
        let mut groups = sotalign_engine::groups::CaptionGroups::new();
        let mut by_row: HashMap<usize, u32> = HashMap::new();
        let mut group_of = |caption: &Option<String>, text: usize| match caption {
            Some(c) => groups.assign(Some(c)),
            None => *by_row.entry(text).or_insert_with(|| groups.assign(None)),
        };
        let check = |what: &str, r: usize, m: &Matrix| {
            if r >= m.rows {
                Err(format!("{what} row {r} is out of range ({} rows)", m.rows))
            } else {
                Ok(())
            }
        };
        let (mut tr, mut te) = (Vec::new(), Vec::new());
        for p in &self.pairs {
            check("image", p.image, img)?;
            check("text", p.text, txt)?;
            let g = group_of(&p.caption, p.text);
            match p.split {
                Split::Train => tr.push((p.image, p.text, g)),
                Split::Test => te.push((p.image, p.text, g)),
            }
        }
        for &i in &self.images {
            check("image", i, img)?;
        }
        let mut yu_groups = Vec::with_capacity(self.texts.len());
        for (t, c) in &self.texts {
            check("text", *t, txt)?;
            yu_groups.push(group_of(c, *t));
        }
        let data = AlignData {
            xp: img.select_rows(&tr.iter().map(|p| p.0).collect::<Vec<_>>()),
            yp: txt.select_rows(&tr.iter().map(|p| p.1).collect::<Vec<_>>()),
            xu: img.select_rows(&self.images),
            yu: txt.select_rows(&self.texts.iter().map(|t| t.0).collect::<Vec<_>>()),
            pair_groups: tr.iter().map(|p| p.2).collect(),
            yu_groups: Some(yu_groups),
            negatives: None,
        };
        let test = (!te.is_empty()).then(|| EvalSet {
            x: img.select_rows(&te.iter().map(|p| p.0).collect::<Vec<_>>()),
            y: txt.select_rows(&te.iter().map(|p| p.1).collect::<Vec<_>>()),
            labels: te.iter().map(|p| p.2).collect(),
        });
        Ok((data, test))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_assembles() {
        let text = r#"
# pairs
{"image": 0, "text": 0, "caption": "a"}
{"image": 1, "text": 1, "caption": "a"}
{"image": 2, "text": 2, "split": "test", "caption": "b"}
{"image": 3, "text": 2, "split": "test", "caption": "b"}
{"image": 3}
{"text": 1, "caption": "a"}
"#;
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.pairs.len(), 4);
        let img = Matrix::zeros(4, 2);
        let txt = Matrix::zeros(3, 5);
        let (d, t) = m.assemble(&img, &txt).unwrap();
        assert_eq!((d.xp.rows, d.yp.cols, d.xu.rows, d.yu.rows), (2, 5, 1, 1));
        assert_eq!(d.pair_groups, vec![0, 0]);
        assert_eq!(d.yu_groups, Some(vec![0]));
        let t = t.unwrap();
        assert_eq!(t.labels, vec![1, 1]);
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(Manifest::parse("{\"image\": 0}\n{oops").unwrap_err().0, 2);
        assert_eq!(Manifest::parse("{}").unwrap_err().0, 1);
        assert_eq!(
            Manifest::parse("{\"image\": 1, \"split\": \"dev\"}")
                .unwrap_err()
                .0,
            1
        );
        assert_eq!(
            Manifest::parse("{\"image\": 1, \"colour\": 2}")
                .unwrap_err()
                .0,
            1
        );
        let m = Manifest::parse("{\"image\": 9, \"text\": 0}").unwrap();
        assert!(
            m.assemble(&Matrix::zeros(2, 2), &Matrix::zeros(2, 2))
                .unwrap_err()
                .contains("out of range")
        );
    }
}
