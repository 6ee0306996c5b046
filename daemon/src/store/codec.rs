//! How the store writes Rust values into its columns: enums as readable TEXT (one table per
//! enum, both directions) and serde enums through their wire name.
use sotalign_protocol::types::{DecisionKind, Modality, PairState, SampleState};

use super::StoreError;

/// The store keeps enums as readable TEXT columns. One table per enum gives both directions,
/// so a variant can never be written under one spelling and read back under another.
macro_rules! text_enum {
    ($ty:ident, $what:literal, $to:ident, $from:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        pub(super) fn $to(v: $ty) -> &'static str {
            match v {
                $($ty::$variant => $text,)+
            }
        }

        pub(super) fn $from(s: &str) -> Result<$ty, StoreError> {
            match s {
                $($text => Ok($ty::$variant),)+
                other => Err(StoreError::Corrupt(format!(concat!($what, " {:?}"), other))),
            }
        }
    };
}

text_enum!(Modality, "modality", modality_str, parse_modality {
    Image => "image",
    Text => "text",
});
text_enum!(SampleState, "sample state", sample_state_str, parse_sample_state {
    Unpaired => "unpaired",
    Paired => "paired",
    HeldOut => "held_out",
});
text_enum!(PairState, "pair state", pair_state_str, parse_pair_state {
    Confirmed => "confirmed",
    Rejected => "rejected",
    HeldOut => "held_out",
});
text_enum!(DecisionKind, "decision kind", kind_str, parse_kind {
    Confirm => "confirm",
    Reject => "reject",
});

pub(super) fn enum_str<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub(super) fn parse_enum<T: serde::de::DeserializeOwned>(
    s: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned()))
        .map_err(|_| StoreError::Corrupt(format!("{what} {s:?}")))
}
