//! Embedding vectors on the wire, with non-finite values kept visible.
//!
//! JSON has no NaN or Infinity, and serde_json writes a NaN `f32` as `null`. A vector that is
//! silently rejected as "invalid type: null" would hide the real problem from the user, so
//! [`Vector`] accepts numbers, `null` (read as NaN) and the strings `"NaN"`, `"Infinity"`,
//! `"-Infinity"`, and the daemon reports the first bad component with
//! [`crate::codes::NON_FINITE_VECTOR`] via [`Vector::validate`].
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codes;
use crate::jsonrpc::ErrorObject;

#[derive(Debug, Clone, Default)]
pub struct Vector(pub Vec<f32>);

/// Bitwise equality: a wire value equals itself even when it holds NaN (a bad vector is
/// still the same bad vector after a round trip).
impl PartialEq for Vector {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Vector {
    /// Check the dimension and finiteness; the error is ready to send as a response.
    pub fn validate(&self, expected_dim: usize) -> Result<(), ErrorObject> {
        if self.0.len() != expected_dim {
            return Err(ErrorObject::new(
                codes::DIMENSION_MISMATCH,
                format!(
                    "vector has {} components, expected {expected_dim}",
                    self.0.len()
                ),
            )
            .with_data(serde_json::json!({ "expected": expected_dim, "actual": self.0.len() })));
        }
        if let Some(i) = self.0.iter().position(|v| !v.is_finite()) {
            return Err(ErrorObject::new(
                codes::NON_FINITE_VECTOR,
                format!("vector component {i} is {}", self.0[i]),
            )
            .with_data(serde_json::json!({ "index": i })));
        }
        Ok(())
    }
}

impl Serialize for Vector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for v in &self.0 {
            if v.is_finite() {
                seq.serialize_element(v)?;
            } else if v.is_nan() {
                seq.serialize_element("NaN")?;
            } else if *v > 0.0 {
                seq.serialize_element("Infinity")?;
            } else {
                seq.serialize_element("-Infinity")?;
            }
        }
        seq.end()
    }
}

/// One component: a number, null or a named non-finite value.
struct Component(f32);

impl<'de> Deserialize<'de> for Component {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Component;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number, null, \"NaN\", \"Infinity\" or \"-Infinity\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Component, E> {
                // Out-of-range values become +-inf and are reported as non-finite later.
                Ok(Component(v as f32))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Component, E> {
                Ok(Component(v as f32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Component, E> {
                Ok(Component(v as f32))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Component, E> {
                Ok(Component(f32::NAN))
            }
            fn visit_none<E: de::Error>(self) -> Result<Component, E> {
                Ok(Component(f32::NAN))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Component, E> {
                match v {
                    "NaN" | "nan" => Ok(Component(f32::NAN)),
                    "Infinity" | "inf" => Ok(Component(f32::INFINITY)),
                    "-Infinity" | "-inf" => Ok(Component(f32::NEG_INFINITY)),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Vector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vector;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vector, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(Component(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Vector(out))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_survive_the_wire_and_are_reported() {
        let v = Vector(vec![0.5, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"[0.5,"NaN","Infinity","-Infinity"]"#);
        let back: Vector = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0[0], 0.5);
        assert!(back.0[1].is_nan() && back.0[2] == f32::INFINITY && back.0[3] == f32::NEG_INFINITY);

        let e = back.validate(4).unwrap_err();
        assert_eq!(e.code, codes::NON_FINITE_VECTOR);
        assert_eq!(e.data, Some(serde_json::json!({"index": 1})));

        let from_null: Vector = serde_json::from_str("[1, null]").unwrap();
        assert!(from_null.0[1].is_nan());
        let overflow: Vector = serde_json::from_str("[1e39]").unwrap();
        assert_eq!(
            overflow.validate(1).unwrap_err().code,
            codes::NON_FINITE_VECTOR
        );
    }

    #[test]
    fn wrong_dimension_and_garbage() {
        let v: Vector = serde_json::from_str("[1, 2, 3]").unwrap();
        let e = v.validate(4).unwrap_err();
        assert_eq!(e.code, codes::DIMENSION_MISMATCH);
        assert_eq!(
            e.data,
            Some(serde_json::json!({"expected": 4, "actual": 3}))
        );
        assert!(v.validate(3).is_ok());
        assert!(serde_json::from_str::<Vector>(r#"[1, "two"]"#).is_err());
        assert!(serde_json::from_str::<Vector>("3").is_err());
    }
}
