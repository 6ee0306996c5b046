//! Every failure a handler can meet, mapped to the protocol's error codes in one place.
use serde_json::json;
use sotalign_protocol::{ErrorObject, codes};

use crate::store::StoreError;

/// Handler result: the protocol's error object, sent as the response's `error`.
pub type HResult<T> = Result<T, ErrorObject>;

pub fn internal(msg: impl std::fmt::Display) -> ErrorObject {
    ErrorObject::new(codes::INTERNAL_ERROR, msg.to_string())
}

pub fn not_ready(reason: &str, msg: impl Into<String>) -> ErrorObject {
    ErrorObject::new(codes::NOT_READY, msg).with_data(json!({ "reason": reason }))
}

pub fn invalid_input(msg: impl Into<String>, path: Option<&str>) -> ErrorObject {
    let e = ErrorObject::new(codes::INVALID_INPUT, msg);
    match path {
        Some(p) => e.with_data(json!({ "path": p })),
        None => e,
    }
}

impl From<StoreError> for ErrorObject {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::UnknownSample(id) => {
                ErrorObject::new(codes::UNKNOWN_SAMPLE, msg).with_data(json!({ "sample": id }))
            }
            StoreError::WrongModality {
                sample, expected, ..
            } => ErrorObject::new(codes::WRONG_MODALITY, msg)
                .with_data(json!({ "sample": sample, "expected": expected })),
            StoreError::UnknownDecision(id) => {
                ErrorObject::new(codes::UNKNOWN_DECISION, msg).with_data(json!({ "decision": id }))
            }
            StoreError::UnknownRun(id) => {
                ErrorObject::new(codes::UNKNOWN_RUN, msg).with_data(json!({ "run": id }))
            }
            StoreError::Conflict { reason, .. } => ErrorObject::new(codes::DECISION_CONFLICT, msg)
                .with_data(json!({ "reason": reason })),
            StoreError::NothingToUndo => ErrorObject::new(codes::DECISION_CONFLICT, msg)
                .with_data(json!({ "reason": "nothing_to_undo" })),
            StoreError::Dimension {
                expected, actual, ..
            } => ErrorObject::new(codes::DIMENSION_MISMATCH, msg)
                .with_data(json!({ "expected": expected, "actual": actual })),
            StoreError::Sqlite(_)
            | StoreError::Io { .. }
            | StoreError::SchemaTooNew { .. }
            | StoreError::Corrupt(_) => ErrorObject::new(
                codes::STORAGE_ERROR,
                format!("{msg}; the operation was not recorded"),
            ),
        }
    }
}
