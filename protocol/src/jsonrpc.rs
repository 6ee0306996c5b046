//! The JSON-RPC 2.0 envelope: requests, notifications, responses, error objects and ids.
//!
//! Messages are classified by which members are present (JSON-RPC has no type tag), so
//! (de)serialisation goes through [`Message::from_value`] / [`Message::to_value`] rather than
//! derived serde: a derived `Option<Value>` cannot tell `"result": null` (a successful `shutdown`)
//! from a missing `result`, and an untagged enum would give useless error messages.
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::codes;

/// A request id: JSON-RPC allows a number or a string. Fractional numbers are rejected (the
/// spec discourages them and no client we know sends them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Number(i64),
    String(String),
}

impl From<i64> for Id {
    fn from(n: i64) -> Self {
        Id::Number(n)
    }
}

impl From<&str> for Id {
    fn from(s: &str) -> Self {
        Id::String(s.to_owned())
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Number(n) => write!(f, "{n}"),
            Id::String(s) => write!(f, "{s:?}"),
        }
    }
}

/// The error member of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("error {code}: {message}")]
pub struct ErrorObject {
    /// One of [`crate::codes`].
    pub code: i64,
    pub message: String,
    /// Machine-readable details; the shape for each code is documented in [`crate::codes`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("unknown method {method:?}"),
        )
        .with_data(serde_json::json!({ "method": method }))
    }
}

/// A call that expects a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Id,
    pub method: String,
    /// Absent, or an object/array. A `null` on the wire is read as absent.
    pub params: Option<Value>,
}

/// A one-way message (no `id`, never answered).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub method: String,
    pub params: Option<Value>,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// `None` only for errors about a message whose id could not be read (parse errors).
    pub id: Option<Id>,
    pub outcome: Result<Value, ErrorObject>,
}

/// Any JSON-RPC 2.0 message. One frame carries exactly one message (no batches).
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Request(Request),
    Notification(Notification),
    Response(Response),
}

/// Why a JSON value is not a JSON-RPC message; `id` is kept when it could be read, so the
/// error response can be correlated by the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid JSON-RPC message: {reason}")]
pub struct InvalidMessage {
    pub id: Option<Id>,
    pub reason: String,
}

impl InvalidMessage {
    fn new(id: Option<Id>, reason: impl Into<String>) -> Self {
        Self {
            id,
            reason: reason.into(),
        }
    }
}

fn params_to_wire(params: Value) -> Option<Value> {
    match params {
        Value::Null => None,
        other => Some(other),
    }
}

impl Request {
    /// A request whose params are serialised from a typed value; `()` becomes no `params`.
    pub fn new(
        id: impl Into<Id>,
        method: &str,
        params: &impl Serialize,
    ) -> serde_json::Result<Self> {
        Ok(Self {
            id: id.into(),
            method: method.to_owned(),
            params: params_to_wire(serde_json::to_value(params)?),
        })
    }

    /// Parse `params` as `P`; absent or `null` params parse as `{}` so that parameter structs
    /// whose fields all have defaults accept a bare call. Errors are ready to send back.
    pub fn parse_params<P: DeserializeOwned>(&self) -> Result<P, ErrorObject> {
        parse_params(&self.method, self.params.as_ref())
    }
}

impl Notification {
    pub fn new(method: &str, params: &impl Serialize) -> serde_json::Result<Self> {
        Ok(Self {
            method: method.to_owned(),
            params: params_to_wire(serde_json::to_value(params)?),
        })
    }

    pub fn parse_params<P: DeserializeOwned>(&self) -> Result<P, ErrorObject> {
        parse_params(&self.method, self.params.as_ref())
    }
}

/// Shared by requests and notifications: see [`Request::parse_params`].
pub fn parse_params<P: DeserializeOwned>(
    method: &str,
    params: Option<&Value>,
) -> Result<P, ErrorObject> {
    let empty = Value::Object(Map::new());
    let value = params.unwrap_or(&empty);
    match P::deserialize(value) {
        Ok(p) => Ok(p),
        Err(e) => {
            // `()` params (shutdown, exit) read from `null`: accept them absent or as `{}`.
            let empty_object = value.as_object().is_some_and(Map::is_empty);
            if empty_object && let Ok(p) = P::deserialize(&Value::Null) {
                return Ok(p);
            }
            Err(ErrorObject::invalid_params(format!(
                "invalid params for {method}: {e}"
            )))
        }
    }
}

impl Response {
    pub fn ok(id: Id, result: &impl Serialize) -> serde_json::Result<Self> {
        Ok(Self {
            id: Some(id),
            outcome: Ok(serde_json::to_value(result)?),
        })
    }

    pub fn error(id: Option<Id>, error: ErrorObject) -> Self {
        Self {
            id,
            outcome: Err(error),
        }
    }
}

fn take_id(obj: &Map<String, Value>) -> Result<Option<Id>, InvalidMessage> {
    match obj.get("id") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Id::deserialize(v).map(Some).map_err(|_| {
            InvalidMessage::new(
                None,
                format!("`id` must be an integer or a string, got {v}"),
            )
        }),
    }
}

fn take_params(
    obj: &mut Map<String, Value>,
    id: &Option<Id>,
) -> Result<Option<Value>, InvalidMessage> {
    match obj.remove("params") {
        None | Some(Value::Null) => Ok(None),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Ok(Some(v)),
        Some(_) => Err(InvalidMessage::new(
            id.clone(),
            "`params` must be an object or an array",
        )),
    }
}

impl Message {
    /// Classify and validate a parsed JSON value.
    pub fn from_value(value: Value) -> Result<Self, InvalidMessage> {
        let mut obj = match value {
            Value::Object(obj) => obj,
            Value::Array(_) => {
                return Err(InvalidMessage::new(
                    None,
                    "batch requests are not supported (one message per frame)",
                ));
            }
            other => {
                return Err(InvalidMessage::new(
                    None,
                    format!("expected a JSON object, got {other}"),
                ));
            }
        };
        let id = take_id(&obj)?;
        if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
            return Err(InvalidMessage::new(id, "`jsonrpc` must be \"2.0\""));
        }
        if let Some(method) = obj.remove("method") {
            let Value::String(method) = method else {
                return Err(InvalidMessage::new(id, "`method` must be a string"));
            };
            let params = take_params(&mut obj, &id)?;
            // A notification has no `id` member at all; `"id": null` on a call is rejected
            // because its response could not be correlated.
            return Ok(match (id, obj.contains_key("id")) {
                (Some(id), _) => Message::Request(Request { id, method, params }),
                (None, true) => {
                    return Err(InvalidMessage::new(
                        None,
                        "`id` must not be null in a request",
                    ));
                }
                (None, false) => Message::Notification(Notification { method, params }),
            });
        }
        if !obj.contains_key("id") {
            return Err(InvalidMessage::new(
                None,
                "message has neither `method` nor `id`",
            ));
        }
        let outcome = match (obj.remove("result"), obj.remove("error")) {
            (Some(result), None) => Ok(result),
            (None, Some(error)) => Err(ErrorObject::deserialize(&error).map_err(|e| {
                InvalidMessage::new(id.clone(), format!("malformed `error` object: {e}"))
            })?),
            (Some(_), Some(_)) => {
                return Err(InvalidMessage::new(
                    id,
                    "a response must not have both `result` and `error`",
                ));
            }
            (None, None) => {
                return Err(InvalidMessage::new(
                    id,
                    "a response needs `result` or `error`",
                ));
            }
        };
        Ok(Message::Response(Response { id, outcome }))
    }

    /// Parse one frame body.
    pub fn from_slice(body: &[u8]) -> Result<Self, crate::framing::FrameError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| crate::framing::FrameError::InvalidJson(e.to_string()))?;
        Message::from_value(value).map_err(crate::framing::FrameError::InvalidMessage)
    }

    pub fn to_value(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("jsonrpc".into(), Value::from("2.0"));
        let id_value = |id: &Id| serde_json::to_value(id).unwrap_or(Value::Null);
        match self {
            Message::Request(r) => {
                obj.insert("id".into(), id_value(&r.id));
                obj.insert("method".into(), Value::from(r.method.clone()));
                if let Some(p) = &r.params {
                    obj.insert("params".into(), p.clone());
                }
            }
            Message::Notification(n) => {
                obj.insert("method".into(), Value::from(n.method.clone()));
                if let Some(p) = &n.params {
                    obj.insert("params".into(), p.clone());
                }
            }
            Message::Response(r) => {
                obj.insert(
                    "id".into(),
                    r.id.as_ref().map(id_value).unwrap_or(Value::Null),
                );
                match &r.outcome {
                    Ok(v) => obj.insert("result".into(), v.clone()),
                    Err(e) => obj.insert(
                        "error".into(),
                        serde_json::to_value(e).unwrap_or(Value::Null),
                    ),
                };
            }
        }
        Value::Object(obj)
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Message::from_value(v).map_err(serde::de::Error::custom)
    }
}

impl From<Request> for Message {
    fn from(r: Request) -> Self {
        Message::Request(r)
    }
}
impl From<Notification> for Message {
    fn from(n: Notification) -> Self {
        Message::Notification(n)
    }
}
impl From<Response> for Message {
    fn from(r: Response) -> Self {
        Message::Response(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rt(v: Value) -> Message {
        let m = Message::from_value(v.clone()).expect("valid message");
        assert_eq!(m.to_value(), v, "round trip changed the message");
        m
    }

    #[test]
    fn classifies_and_round_trips_every_kind() {
        assert!(matches!(
            rt(json!({"jsonrpc":"2.0","id":1,"method":"sotalign/status","params":{}})),
            Message::Request(Request {
                id: Id::Number(1),
                ..
            })
        ));
        assert!(matches!(
            rt(json!({"jsonrpc":"2.0","id":"abc","method":"shutdown"})),
            Message::Request(Request {
                id: Id::String(_),
                params: None,
                ..
            })
        ));
        assert!(matches!(
            rt(json!({"jsonrpc":"2.0","method":"exit"})),
            Message::Notification(_)
        ));
        // `result: null` is a success, not a missing result.
        match rt(json!({"jsonrpc":"2.0","id":7,"result":null})) {
            Message::Response(Response {
                outcome: Ok(Value::Null),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match rt(json!({"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}})) {
            Message::Response(Response {
                id: None,
                outcome: Err(e),
            }) => assert_eq!(e.code, codes::PARSE_ERROR),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_invalid_envelopes_keeping_the_id() {
        let cases = [
            (json!([1, 2]), None),
            (json!("x"), None),
            (json!({"id":3,"method":"a"}), Some(Id::Number(3))),
            (
                json!({"jsonrpc":"1.0","id":3,"method":"a"}),
                Some(Id::Number(3)),
            ),
            (
                json!({"jsonrpc":"2.0","id":4,"method":5}),
                Some(Id::Number(4)),
            ),
            (
                json!({"jsonrpc":"2.0","id":5,"method":"a","params":3}),
                Some(Id::Number(5)),
            ),
            (json!({"jsonrpc":"2.0","id":1.5,"method":"a"}), None),
            (json!({"jsonrpc":"2.0","id":null,"method":"a"}), None),
            (json!({"jsonrpc":"2.0","id":6}), Some(Id::Number(6))),
            (
                json!({"jsonrpc":"2.0","id":6,"result":1,"error":{"code":1,"message":""}}),
                Some(Id::Number(6)),
            ),
            (
                json!({"jsonrpc":"2.0","id":6,"error":{"code":"x"}}),
                Some(Id::Number(6)),
            ),
            (json!({"jsonrpc":"2.0"}), None),
        ];
        for (v, id) in cases {
            let e = Message::from_value(v.clone()).expect_err(&v.to_string());
            assert_eq!(e.id, id, "{v}");
        }
    }

    #[test]
    fn absent_params_parse_as_defaults_and_unit() {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct P {
            k: u32,
        }
        let r = Request::new(1, "m", &()).unwrap();
        assert_eq!(r.params, None);
        assert_eq!(r.parse_params::<P>().unwrap().k, 0);
        r.parse_params::<()>().unwrap();
        let with_empty = Request::new(1, "shutdown", &json!({})).unwrap();
        with_empty.parse_params::<()>().unwrap();
        let with_junk = Request::new(1, "shutdown", &json!({"x": 1})).unwrap();
        assert!(with_junk.parse_params::<()>().is_err());
        let bad = Request {
            id: 1.into(),
            method: "m".into(),
            params: Some(json!({"k": "many"})),
        };
        let e = bad.parse_params::<P>().err().unwrap();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(e.message.contains("invalid params for m"), "{}", e.message);
    }
}
