//! Export rows: decided pairs joined with both samples and who decided.
use super::{Store, StoreError};

/// One decided pair as export writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportRow {
    /// `confirmed` or `rejected`.
    pub state: String,
    pub image_key: String,
    pub image_path: Option<String>,
    pub text_key: String,
    pub caption: Option<String>,
    /// `manifest` for pairs that came with the data, else the decision's source.
    pub source: String,
    pub annotator: Option<String>,
    pub at_ms: u64,
}

impl Store {
    /// Confirmed pairs (and rejected ones if asked), oldest decision first, with both
    /// samples and who decided.
    pub fn export_rows(&self, include_rejected: bool) -> Result<Vec<ExportRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT p.state, si.key, si.path, st.key, st.text, p.source, d.annotator, p.at_ms
             FROM pairs p
             JOIN samples si ON si.id = p.image
             JOIN samples st ON st.id = p.text
             LEFT JOIN decisions d ON d.id = p.decision
             WHERE p.state = 'confirmed' OR (?1 AND p.state = 'rejected')
             ORDER BY p.at_ms, p.image, p.text",
        )?;
        let rows = stmt.query_map([include_rejected], |r| {
            Ok(ExportRow {
                state: r.get(0)?,
                image_key: r.get(1)?,
                image_path: r.get(2)?,
                text_key: r.get(3)?,
                caption: r.get(4)?,
                source: r.get(5)?,
                annotator: r.get(6)?,
                at_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
