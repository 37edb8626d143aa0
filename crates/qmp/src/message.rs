//! The messages QEMU sends: greeting, responses and events (QMP spec, "Server
//! Greeting", "Commands Responses", "Asynchronous events").

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;
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
///
/// The `return` value is kept as raw JSON text, so a large reply (such as
/// `query-qmp-schema`) is parsed once, straight into the type the caller wants.
#[derive(Debug, Clone)]
pub struct Response {
    /// The `id` of the command, echoed verbatim by QEMU (any JSON value), if it had one.
    pub id: Option<Value>,
    /// `Ok(return value)` or `Err(error body)`.
    pub outcome: Result<Box<RawValue>, QmpError>,
}

impl Response {
    /// Deserializes the `return` value into `T`; `Ok(Err(_))` when QEMU answered
    /// with an error.
    pub fn parse_return<T: DeserializeOwned>(&self) -> serde_json::Result<Result<T, QmpError>> {
        match &self.outcome {
            Ok(raw) => serde_json::from_str(raw.get()).map(Ok),
            Err(e) => Ok(Err(e.clone())),
        }
    }
}

impl PartialEq for Response {
    /// Raw return values compare by their JSON text.
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && match (&self.outcome, &other.outcome) {
                (Ok(a), Ok(b)) => a.get() == b.get(),
                (Err(a), Err(b)) => a == b,
                _ => false,
            }
    }
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

fn excerpt(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(frame);
    let mut text = text.trim_end().to_owned();
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

fn shape_error(reason: impl Into<String>, frame: &[u8]) -> Error {
    Error::UnknownShape {
        reason: reason.into(),
        message: excerpt(frame),
    }
}

/// Deserializes a member that is present (even as `null`) into `Some`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// Every member a server message may have; which are present decides its kind.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "QMP", default)]
    qmp: Option<Greeting>,
    #[serde(rename = "return", borrow, default, deserialize_with = "present")]
    ret: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<QmpError>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    timestamp: Option<Timestamp>,
}

impl Message {
    /// Parses one complete JSON object (a frame from [`Codec::decode_frame`](crate::Codec::decode_frame)).
    pub fn from_slice(frame: &[u8]) -> Result<Message> {
        let wire: Wire<'_> = match serde_json::from_slice(frame) {
            Ok(wire) => wire,
            // Valid JSON of the wrong shape (`"event": 5`, an array, ...).
            Err(e) if e.classify() == Category::Data => {
                return Err(shape_error(e.to_string(), frame))
            }
            Err(source) => return Err(Error::InvalidJson { source }),
        };
        if let Some(greeting) = wire.qmp {
            return Ok(Message::Greeting(greeting));
        }
        if let Some(ret) = wire.ret {
            return Ok(Message::Response(Response {
                id: wire.id,
                outcome: Ok(ret.to_owned()),
            }));
        }
        if let Some(error) = wire.error {
            return Ok(Message::Response(Response {
                id: wire.id,
                outcome: Err(error),
            }));
        }
        if let Some(event) = wire.event {
            let Some(timestamp) = wire.timestamp else {
                return Err(shape_error("event without a timestamp", frame));
            };
            return Ok(Message::Event(Event {
                event,
                data: wire.data.unwrap_or(Value::Null),
                timestamp,
            }));
        }
        Err(shape_error("no QMP, return, error or event member", frame))
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
                    // A RawValue always holds valid JSON.
                    Ok(ret) => map.insert(
                        "return".into(),
                        serde_json::from_str(ret.get()).unwrap_or(Value::Null),
                    ),
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

    fn parse(v: Value) -> Result<Message> {
        Message::from_slice(v.to_string().as_bytes())
    }

    fn raw(v: Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    #[test]
    fn classifies_each_shape() {
        let g = parse(json!({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "x"}, "capabilities": ["oob"]}})).unwrap();
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

        let r = parse(json!({"return": {}, "id": 3})).unwrap();
        assert_eq!(
            r,
            Message::Response(Response {
                id: Some(json!(3)),
                outcome: Ok(raw(json!({})))
            })
        );

        // `null` members are present, not absent.
        let r = parse(json!({"return": null, "id": null})).unwrap();
        assert_eq!(
            r,
            Message::Response(Response {
                id: Some(Value::Null),
                outcome: Ok(raw(Value::Null))
            })
        );

        let e =
            parse(json!({"id": "x", "error": {"class": "GenericError", "desc": "no"}})).unwrap();
        let Message::Response(Response {
            id,
            outcome: Err(err),
        }) = e
        else {
            panic!()
        };
        assert_eq!(id, Some(json!("x")));
        assert_eq!(err.class, "GenericError");

        let ev = parse(json!({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}))
            .unwrap();
        let Message::Event(ev) = ev else { panic!() };
        assert_eq!(ev.event, "STOP");
        assert!(ev.data.is_null());
    }

    #[test]
    fn return_values_parse_into_any_type() {
        let Message::Response(r) = parse(json!({"return": [1, 2], "id": 1})).unwrap() else {
            panic!()
        };
        assert_eq!(r.parse_return::<Vec<u8>>().unwrap(), Ok(vec![1, 2]));
        assert!(r.parse_return::<String>().is_err());
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
            let err = parse(bad.clone()).unwrap_err();
            assert!(matches!(err, Error::UnknownShape { .. }), "{bad}: {err}");
        }
        let err = Message::from_slice(b"{\"return\": tru}").unwrap_err();
        assert!(matches!(err, Error::InvalidJson { .. }), "{err}");
    }

    #[test]
    fn excerpt_is_bounded_and_char_safe() {
        let long = json!({"x": "é".repeat(1000)});
        let err = parse(long).unwrap_err().to_string();
        assert!(err.len() < 400, "{err}");
    }

    #[test]
    fn to_value_round_trips() {
        for v in [
            json!({"return": [1, 2], "id": 9}),
            json!({"error": {"class": "C", "desc": "d"}}),
            json!({"event": "RESET", "data": {"guest": false}, "timestamp": {"seconds": 1, "microseconds": 2}}),
        ] {
            let m = parse(v.clone()).unwrap();
            assert_eq!(m.to_value(), v);
        }
    }
}
