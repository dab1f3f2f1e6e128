//! The frames of CONTRACT section 7: `{"event": <name>, "data": <object>}` text frames, and the
//! close codes.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::model::{channel_and_filter, Channel, Filter};

/// Bad or missing token.
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
/// Expired token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;
/// The client did not read fast enough.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Policy violation: a client that kept sending after `LIMIT_EXCEEDED`.
pub const CLOSE_POLICY: u16 = 1008;
/// Server going away (shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// No pong or frame for two ping intervals.
pub const CLOSE_DEAD_PEER: u16 = 1011;
/// The registry could not record the connection.
pub const CLOSE_UNAVAILABLE: u16 = 1013;

pub fn close_code(code: u16) -> CloseCode {
    CloseCode::from(code)
}

/// The `code` of an `error` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Unauthorized,
    TokenExpired,
    Forbidden,
    BadRequest,
    Unavailable,
    /// A frame over the connection's rate, or a subscription over the device's or channel's
    /// limit.
    LimitExceeded,
    /// A resume the server cannot honour: take a snapshot (`docs/protocol.md`).
    ResyncRequired,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::ResyncRequired => "RESYNC_REQUIRED",
        }
    }
}

/// What a client may send.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    BindDevice { token: String },
    Subscribe(Subscription),
    Unsubscribe(Subscription),
}

/// The `data` of `subscribe` / `unsubscribe`; `application_id` only if the client named one.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub channel: Channel,
    pub filter: Option<Filter>,
    pub application_id: Option<String>,
    pub sync: Sync,
}

/// What a `subscribe` asks for beyond the live deltas (`docs/protocol.md`).
#[derive(Debug, Clone, PartialEq)]
pub enum Sync {
    /// Live deltas only (the contract's subscribe).
    Live,
    /// `"snapshot": true`: the channel's current objects first.
    Snapshot,
    /// `"resume": <cursor>`: what changed since the cursor first.
    Resume(String),
}

fn sync_of(data: &Map<String, Value>) -> Result<Sync, String> {
    let snapshot = match data.get("snapshot") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err("`snapshot` must be a boolean".into()),
    };
    match (snapshot, data.get("resume")) {
        (false, None | Some(Value::Null)) => Ok(Sync::Live),
        (true, None | Some(Value::Null)) => Ok(Sync::Snapshot),
        (false, Some(Value::String(cursor))) if cursor.len() <= 64 => Ok(Sync::Resume(cursor.clone())),
        (false, Some(_)) => Err("`resume` must be a cursor the server gave (a string)".into()),
        (true, Some(_)) => Err("`snapshot` and `resume` exclude each other".into()),
    }
}

/// Parses a client text frame; the error is the `BAD_REQUEST` message.
pub fn parse(text: &str) -> Result<ClientFrame, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut frame) = value else {
        return Err("a frame is a JSON object {\"event\", \"data\"}".into());
    };
    let event = match frame.remove("event") {
        Some(Value::String(e)) => e,
        _ => return Err("`event` must be a string".into()),
    };
    let data = match frame.remove("data") {
        Some(Value::Object(d)) => d,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err("`data` must be an object".into()),
    };
    match event.as_str() {
        "bind_device" => match data.get("token") {
            Some(Value::String(t)) => Ok(ClientFrame::BindDevice { token: t.clone() }),
            _ => Err("bind_device needs data.token (a string)".into()),
        },
        "subscribe" | "unsubscribe" => {
            let (channel, filter) = channel_and_filter(&data).map_err(|e| e.to_string())?;
            let application_id = match data.get("application_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(a)) => Some(a.clone()),
                Some(_) => return Err("`application_id` must be a string".into()),
            };
            let subscribe = event == "subscribe";
            let sync = if subscribe { sync_of(&data)? } else { Sync::Live };
            let s = Subscription { channel, filter, application_id, sync };
            Ok(if subscribe { ClientFrame::Subscribe(s) } else { ClientFrame::Unsubscribe(s) })
        }
        other => Err(format!("unknown event `{other}` (bind_device, subscribe, unsubscribe)")),
    }
}

fn frame(event: &str, data: impl Serialize) -> Utf8Bytes {
    #[derive(Serialize)]
    struct Frame<'a, D> {
        event: &'a str,
        data: D,
    }
    // Maps of strings and numbers always serialize.
    Utf8Bytes::from(serde_json::to_string(&Frame { event, data }).unwrap_or_default())
}

pub fn ready(device_id: &str, server: &str) -> Utf8Bytes {
    frame("ready", json!({"device_id": device_id, "server": server}))
}

pub fn subscribed(event: &str, channel_key: &str) -> Utf8Bytes {
    frame(event, json!({"channel": channel_key}))
}

pub fn error(code: ErrorCode, message: &str) -> Utf8Bytes {
    frame("error", json!({"code": code.as_str(), "message": message}))
}

/// An `error` answering a subscribe in place of `subscribed`, naming its channel.
pub fn channel_error(code: ErrorCode, message: &str, channel_key: &str) -> Utf8Bytes {
    frame("error", json!({"code": code.as_str(), "message": message, "channel": channel_key}))
}

/// `snapshot_end` or `catchup_end`: the channel's `count` objects are sent; resume from `cursor`.
pub fn sync_end(event: &str, channel_key: &str, cursor: &str, count: usize) -> Utf8Bytes {
    frame(event, json!({"channel": channel_key, "cursor": cursor, "count": count}))
}

/// `{"event":"cursor","data":{"cursor":...}}`: a newer resume point for the connection's
/// resumable subscriptions.
pub fn cursor(cursor: &str) -> Utf8Bytes {
    frame("cursor", json!({ "cursor": cursor }))
}

/// The `message` frame around a delivery as the transport manager serialised it: built once
/// per transport message and shared by every receiving connection. The bytes are those of
/// `frame("message", batch)` for the same batch, without decoding it.
pub fn message(batch: &RawValue) -> Utf8Bytes {
    wrap(r#"{"event":"message","data":"#, batch)
}

/// `{"event":"broadcast","data":<delivery>}`: a broadcast's object (`model::broadcast`), around
/// its bytes as they arrived.
pub fn broadcast(delivery: &RawValue) -> Utf8Bytes {
    wrap(r#"{"event":"broadcast","data":"#, delivery)
}

/// The frame of a transport message's delivery: `broadcast` for an ephemeral object, else
/// `message`.
pub fn delivery(ephemeral: bool, delivery: &RawValue) -> Utf8Bytes {
    match ephemeral {
        true => broadcast(delivery),
        false => message(delivery),
    }
}

fn wrap(head: &str, data: &RawValue) -> Utf8Bytes {
    let mut text = String::with_capacity(head.len() + data.get().len() + 1);
    text.push_str(head);
    text.push_str(data.get());
    text.push('}');
    Utf8Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_into_commands_or_a_reason() {
        assert_eq!(
            parse(r#"{"event":"bind_device","data":{"token":"t"}}"#),
            Ok(ClientFrame::BindDevice { token: "t".into() })
        );
        let sub = parse(
            r#"{"event":"subscribe","data":{"channel":{"model":"task","context":"c1"},"filters":{"and":[{"is":{"done":false}}]}}}"#,
        );
        match sub {
            Ok(ClientFrame::Subscribe(s)) => {
                assert_eq!(s.channel.model, "task");
                assert!(s.filter.is_some());
                assert_eq!(s.application_id, None);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"event":1}"#,
            r#"{"event":"x"}"#,
            r#"{"event":"subscribe","data":{}}"#,
            r#"{"event":"bind_device","data":[]}"#,
            r#"{"event":"subscribe","data":{"channel":{"model":"a:b"}}}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_frames_have_the_contract_shape() {
        let v: Value = serde_json::from_str(ready("d1", "sockets_transport-2").as_str()).unwrap_or_default();
        assert_eq!(v, json!({"event":"ready","data":{"device_id":"d1","server":"sockets_transport-2"}}));
        let v: Value = serde_json::from_str(error(ErrorCode::Forbidden, "no").as_str()).unwrap_or_default();
        assert_eq!(v["data"]["code"], "FORBIDDEN");
        let batch = crate::model::DeliveryBatch::default();
        let raw = serde_json::value::to_raw_value(&batch).unwrap_or_default();
        let shared = message(&raw);
        assert_eq!(shared.as_str(), frame("message", &batch).as_str(), "the bytes a serialised frame has");
        let v: Value = serde_json::from_str(shared.as_str()).unwrap_or_default();
        assert_eq!(v, json!({"event":"message","data":{"new":[],"updated":[],"deleted":[]}}));
    }
}
