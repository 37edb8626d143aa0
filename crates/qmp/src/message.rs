//! The messages QEMU sends: greeting, responses and events (QMP spec, "Server
//! Greeting", "Commands Responses", "Asynchronous events").

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A QEMU version triple plus the distributor's package string, as in the greeting
/// and in the `query-version` return value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The numeric version.
    pub qemu: VersionTriple,
    /// Distributor package string, e.g. `Debian 1:7.2+dfsg-7`.
    #[serde(default)]
    pub package: String,
}

/// `major.minor.micro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VersionTriple {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Micro version.
    pub micro: u32,
}

/// The server greeting, `{"QMP": {"version": ..., "capabilities": [...]}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    /// QEMU's version.
    pub version: VersionInfo,
    /// Capabilities QEMU offers (e.g. `oob`).
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// The body of an `error` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpError {
    /// Error class, e.g. `GenericError`.
    pub class: String,
    /// Human-readable description.
    pub desc: String,
}

/// A command's answer: a `return` value or an `error`, with the `id` the command carried.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The `id` of the command, echoed verbatim by QEMU (any JSON value), if it had one.
    pub id: Option<Value>,
    /// `Ok(return value)` or `Err(error body)`.
    pub outcome: Result<Value, QmpError>,
}

/// When QEMU emitted an event (seconds and microseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub seconds: i64,
    /// Microseconds within the second.
    pub microseconds: i64,
}

/// An asynchronous event, e.g. `STOP`, `RESUME`, `SHUTDOWN`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The event's name.
    pub event: String,
    /// Event-specific data; `Value::Null` when the event has none.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
    /// When QEMU emitted it.
    pub timestamp: Timestamp,
}

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// The greeting, first thing on every connection.
    Greeting(Greeting),
    /// The answer to a command.
    Response(Response),
    /// An asynchronous event.
    Event(Event),
}

/// Longest excerpt of an offending message kept in an error.
const EXCERPT: usize = 200;

fn excerpt(value: &Value) -> String {
    let mut text = value.to_string();
    if text.len() > EXCERPT {
        let mut cut = EXCERPT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

fn shape_error(reason: impl Into<String>, value: &Value) -> Error {
    Error::UnknownShape {
        reason: reason.into(),
        message: excerpt(value),
    }
}

impl Message {
    /// Classifies a parsed JSON value as a QMP message.
    pub fn from_value(value: Value) -> Result<Message> {
        let Value::Object(mut map) = value else {
            return Err(shape_error("not a json object", &value));
        };
        if let Some(greeting) = map.remove("QMP") {
            return serde_json::from_value(greeting)
                .map(Message::Greeting)
                .map_err(|e| shape_error(format!("bad greeting: {e}"), &Value::Object(map)));
        }
        if let Some(ret) = map.remove("return") {
            return Ok(Message::Response(Response {
                id: map.remove("id"),
                outcome: Ok(ret),
            }));
        }
        if let Some(error) = map.remove("error") {
            let body: QmpError = match serde_json::from_value(error) {
                Ok(body) => body,
                Err(e) => {
                    return Err(shape_error(
                        format!("bad error body: {e}"),
                        &Value::Object(map),
                    ))
                }
            };
            return Ok(Message::Response(Response {
                id: map.remove("id"),
                outcome: Err(body),
            }));
        }
        if map.contains_key("event") {
            let value = Value::Object(map);
            return match Event::deserialize(&value) {
                Ok(event) => Ok(Message::Event(event)),
                Err(e) => Err(shape_error(format!("bad event: {e}"), &value)),
            };
        }
        Err(shape_error(
            "no QMP, return, error or event member",
            &Value::Object(map),
        ))
    }

    /// The wire form of this message, as QEMU would send it.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        match self {
            Message::Greeting(g) => {
                // Serializing these plain structs cannot fail.
                map.insert("QMP".into(), serde_json::to_value(g).unwrap_or(Value::Null));
            }
            Message::Response(r) => {
                match &r.outcome {
                    Ok(ret) => map.insert("return".into(), ret.clone()),
                    Err(err) => map.insert(
                        "error".into(),
                        serde_json::to_value(err).unwrap_or(Value::Null),
                    ),
                };
                if let Some(id) = &r.id {
                    map.insert("id".into(), id.clone());
                }
            }
            Message::Event(e) => return serde_json::to_value(e).unwrap_or(Value::Null),
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_each_shape() {
        let g = Message::from_value(json!({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "x"}, "capabilities": ["oob"]}})).unwrap();
        let Message::Greeting(g) = g else {
            panic!("{g:?}")
        };
        assert_eq!(
            g.version.qemu,
            VersionTriple {
                major: 7,
                minor: 2,
                micro: 22
            }
        );
        assert_eq!(g.capabilities, ["oob"]);

        let r = Message::from_value(json!({"return": {}, "id": 3})).unwrap();
        assert_eq!(
            r,
            Message::Response(Response {
                id: Some(json!(3)),
                outcome: Ok(json!({}))
            })
        );

        let e = Message::from_value(
            json!({"id": "x", "error": {"class": "GenericError", "desc": "no"}}),
        )
        .unwrap();
        let Message::Response(Response {
            id,
            outcome: Err(err),
        }) = e
        else {
            panic!()
        };
        assert_eq!(id, Some(json!("x")));
        assert_eq!(err.class, "GenericError");

        let ev = Message::from_value(
            json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}),
        )
        .unwrap();
        let Message::Event(ev) = ev else { panic!() };
        assert_eq!(ev.event, "STOP");
        assert!(ev.data.is_null());
    }

    #[test]
    fn rejects_unknown_shapes_with_context() {
        for bad in [
            json!({"hello": 1}),
            json!({"event": 5, "timestamp": {"seconds": 1, "microseconds": 2}}),
            json!({"event": "STOP"}),
            json!({"error": "oops"}),
            json!({"QMP": {}}),
            json!([1, 2]),
        ] {
            let err = Message::from_value(bad.clone()).unwrap_err();
            assert!(matches!(err, Error::UnknownShape { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn excerpt_is_bounded_and_char_safe() {
        let long = json!({"x": "é".repeat(1000)});
        let err = Message::from_value(long).unwrap_err().to_string();
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn to_value_round_trips() {
        for v in [
            json!({"return": [1, 2], "id": 9}),
            json!({"error": {"class": "C", "desc": "d"}}),
            json!({"event": "RESET", "data": {"guest": false}, "timestamp": {"seconds": 1, "microseconds": 2}}),
        ] {
            let m = Message::from_value(v.clone()).unwrap();
            assert_eq!(m.to_value(), v);
        }
    }
}
