//! The inputs of a fit: a few pairs plus unpaired pools, validated once at the boundary.
use crate::{AlignError, Matrix};

/// Training data for any method.
///
/// Row i of `xp` (image features) is paired with row i of `yp` (text features). `xu` and `yu`
/// are unpaired pools with no correspondence between them (either may have 0 rows).
/// `pair_groups[i]` identifies the caption of pair i: two pairs with the same group are both
/// positives for each other (e.g. several stamps sharing one caption).
///
/// `yu_groups`, when known, gives each unpaired text a group in the same id space as
/// `pair_groups` (an unpaired text *is* a caption, so its caption is known even though its image
/// is not). Validation uses it: an unpaired text with the query's caption counts as a correct
/// retrieval, while unpaired images are never correct (their captions are unknown).
#[derive(Debug, Clone)]
pub struct AlignData {
    pub xp: Matrix,
    pub yp: Matrix,
    pub xu: Matrix,
    pub yu: Matrix,
    pub pair_groups: Vec<u32>,
    pub yu_groups: Option<Vec<u32>>,
    /// Rejected pairs, when the caller has them: the trained methods add each as a SigLIP cell
    /// with label -1; the closed-form methods ignore them.
    pub negatives: Option<Negatives>,
}

/// Pairs known not to match (an annotator's rejections): row i of `x` (image features) with row
/// i of `y` (text features). Same feature dimensions as the pairs.
#[derive(Debug, Clone)]
pub struct Negatives {
    pub x: Matrix,
    pub y: Matrix,
}

impl AlignData {
    /// Pairs only, each pair its own group.
    pub fn from_pairs(xp: Matrix, yp: Matrix) -> Self {
        let n = xp.rows;
        Self {
            xu: Matrix::zeros(0, xp.cols),
            yu: Matrix::zeros(0, yp.cols),
            xp,
            yp,
            pair_groups: (0..n as u32).collect(),
            yu_groups: None,
            negatives: None,
        }
    }

    pub fn n_pairs(&self) -> usize {
        self.xp.rows
    }

    pub fn dx(&self) -> usize {
        self.xp.cols
    }

    pub fn dy(&self) -> usize {
        self.yp.cols
    }

    /// Shape and finiteness checks every method relies on. At least two pairs are required
    /// (a centred single pair carries no information).
    pub fn validate(&self) -> Result<(), AlignError> {
        let n = self.xp.rows;
        if self.yp.rows != n {
            return Err(AlignError::DimensionMismatch {
                what: "number of paired texts (must equal paired images)".into(),
                expected: n,
                got: self.yp.rows,
            });
        }
        if n < 2 {
            return Err(AlignError::NotEnoughData(format!(
                "{n} pair(s) given; at least 2 are needed"
            )));
        }
        if self.pair_groups.len() != n {
            return Err(AlignError::DimensionMismatch {
                what: "pair_groups length".into(),
                expected: n,
                got: self.pair_groups.len(),
            });
        }
        if let Some(g) = &self.yu_groups
            && g.len() != self.yu.rows
        {
            return Err(AlignError::DimensionMismatch {
                what: "yu_groups length (must equal unpaired texts)".into(),
                expected: self.yu.rows,
                got: g.len(),
            });
        }
        if self.xu.cols != self.xp.cols && self.xu.rows > 0 {
            return Err(AlignError::DimensionMismatch {
                what: "unpaired image feature dimension".into(),
                expected: self.xp.cols,
                got: self.xu.cols,
            });
        }
        if self.yu.cols != self.yp.cols && self.yu.rows > 0 {
            return Err(AlignError::DimensionMismatch {
                what: "unpaired text feature dimension".into(),
                expected: self.yp.cols,
                got: self.yu.cols,
            });
        }
        if let Some(neg) = &self.negatives {
            if neg.x.rows != neg.y.rows {
                return Err(AlignError::DimensionMismatch {
                    what: "negative texts (must equal negative images)".into(),
                    expected: neg.x.rows,
                    got: neg.y.rows,
                });
            }
            if neg.x.rows > 0 && neg.x.cols != self.xp.cols {
                return Err(AlignError::DimensionMismatch {
                    what: "negative image feature dimension".into(),
                    expected: self.xp.cols,
                    got: neg.x.cols,
                });
            }
            if neg.y.rows > 0 && neg.y.cols != self.yp.cols {
                return Err(AlignError::DimensionMismatch {
                    what: "negative text feature dimension".into(),
                    expected: self.yp.cols,
                    got: neg.y.cols,
                });
            }
            neg.x.check_finite("negative image features")?;
            neg.y.check_finite("negative text features")?;
        }
        self.xp.check_finite("paired image features")?;
        self.yp.check_finite("paired text features")?;
        self.xu.check_finite("unpaired image features")?;
        self.yu.check_finite("unpaired text features")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{Method, fit_quiet};
    use crate::{AlignConfig, Matrix};

    fn pairs(n: usize, dx: usize, dy: usize) -> AlignData {
        let x = Matrix::from_vec(
            n,
            dx,
            (0..n * dx).map(|i| ((i * 7) % 13) as f32 - 6.0).collect(),
        )
        .unwrap();
        let y = Matrix::from_vec(
            n,
            dy,
            (0..n * dy).map(|i| ((i * 5) % 11) as f32 - 5.0).collect(),
        )
        .unwrap();
        AlignData::from_pairs(x, y)
    }

    /// Every method, closed-form or trained, answers bad input with a typed error (no panic).
    #[test]
    fn bad_input_is_a_typed_error_for_every_method() {
        let cfg = AlignConfig::default();
        for m in Method::ALL {
            // Empty and single pair.
            for n in [0, 1] {
                assert!(
                    matches!(
                        fit_quiet(m, &pairs(n, 4, 3), &cfg),
                        Err(AlignError::NotEnoughData(_))
                    ),
                    "{m} with {n} pairs"
                );
            }
            // Paired counts disagree.
            let mut d = pairs(8, 4, 3);
            d.yp = pairs(7, 4, 3).yp;
            assert!(
                matches!(
                    fit_quiet(m, &d, &cfg),
                    Err(AlignError::DimensionMismatch { .. })
                ),
                "{m}: 8 images vs 7 texts"
            );
            // Unpaired features of another dimension.
            let mut d = pairs(8, 4, 3);
            d.xu = Matrix::zeros(5, 6);
            assert!(
                matches!(
                    fit_quiet(m, &d, &cfg),
                    Err(AlignError::DimensionMismatch { .. })
                ),
                "{m}: unpaired 6-d images next to 4-d pairs"
            );
            // A NaN row, reported with its row.
            let mut d = pairs(8, 4, 3);
            d.yp.data[2 * 3 + 1] = f32::NAN;
            match fit_quiet(m, &d, &cfg) {
                Err(AlignError::NonFinite { row, .. }) => assert_eq!(row, 2, "{m}"),
                other => panic!("{m}: expected NonFinite, got {:?}", other.map(|_| ())),
            }
        }
    }
}
