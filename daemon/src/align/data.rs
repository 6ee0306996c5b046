//! The inputs of a fit: a few pairs plus unpaired pools, validated once at the boundary.
use super::{AlignError, Matrix};

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
        self.xp.check_finite("paired image features")?;
        self.yp.check_finite("paired text features")?;
        self.xu.check_finite("unpaired image features")?;
        self.yu.check_finite("unpaired text features")?;
        Ok(())
    }
}
