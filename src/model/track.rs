//! Messages on the `track` topic, devices, and the registry's device strings.
//!
//! The device record is stored as JSON at `blg:<app>:devices:<deviceId>` (CONTRACT section 5);
//! [`Device`] is that JSON. A channel set holds device strings
//! `<transport>|<deviceId>|<token>|<appId>`, which [`DeviceAddress`] builds and parses.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::channel::Channel;
use super::error::ModelError;
use super::filter::Filter;
use super::id::validate_ident;
use super::json::{opt_str, req_obj, req_str};
use super::message::{application_id, parse_json_object, DEFAULT_MAX_MESSAGE_BYTES};
use super::schema::Application;

/// Where a device's deliveries go: a push provider or one sockets transport instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Ios,
    Android,
    /// `sockets_transport-<index>`: the socket worker holding the connection.
    Sockets(u32),
}

impl Transport {
    /// Returns the topic / device-string name (`ios_transport`, `sockets_transport-3`).
    pub fn name(self) -> String {
        match self {
            Transport::Ios => "ios_transport".into(),
            Transport::Android => "android_transport".into(),
            Transport::Sockets(i) => format!("sockets_transport-{i}"),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ios_transport" => Some(Transport::Ios),
            "android_transport" => Some(Transport::Android),
            _ => {
                let digits = s.strip_prefix("sockets_transport-")?;
                // Reject "+1" and "01" so one index has exactly one spelling.
                if digits.starts_with('+') || (digits.len() > 1 && digits.starts_with('0')) {
                    return None;
                }
                digits.parse().ok().map(Transport::Sockets)
            }
        }
    }
}

/// A member of a channel set: `<transport>|<deviceId>|<token>|<appId>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    pub transport: Transport,
    pub device_id: String,
    /// Push token for ios/android; the connection token (may be empty) for sockets.
    pub token: String,
    pub application_id: String,
}

impl DeviceAddress {
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let bad = |reason: &str| ModelError::InvalidDevice { reason: format!("device string `{s}`: {reason}") };
        let mut parts = s.split('|');
        let (Some(t), Some(d), Some(tok), Some(app), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected four `|`-separated parts"));
        };
        let transport = Transport::parse(t).ok_or_else(|| bad("unknown transport"))?;
        if d.is_empty() || app.is_empty() {
            return Err(bad("empty device or application id"));
        }
        Ok(DeviceAddress { transport, device_id: d.to_owned(), token: tok.to_owned(), application_id: app.to_owned() })
    }
}

impl std::fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}|{}|{}|{}", self.transport.name(), self.device_id, self.token, self.application_id)
    }
}

/// Push platform of a persistent device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushPlatform {
    Ios,
    Android,
}

/// `persistent{type,token,active}`: the push channel of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistent {
    #[serde(rename = "type")]
    pub platform: PushPlatform,
    pub token: String,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// `volatile{type,token,active,server_name}`: the live socket of a device, set by a sockets
/// transport on `bind_device`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Volatile {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The device record stored at `blg:<app>:devices:<deviceId>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: String,
    pub application_id: String,
    #[serde(default)]
    pub info: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<Persistent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volatile: Option<Volatile>,
}

impl Device {
    /// Returns the address for push delivery, if the device has an active push token.
    pub fn push_address(&self) -> Option<DeviceAddress> {
        let p = self.persistent.as_ref().filter(|p| p.active)?;
        Some(DeviceAddress {
            transport: match p.platform {
                PushPlatform::Ios => Transport::Ios,
                PushPlatform::Android => Transport::Android,
            },
            device_id: self.id.clone(),
            token: p.token.clone(),
            application_id: self.application_id.clone(),
        })
    }

    /// Every address the device is reachable at: its push token, and its live socket if it has
    /// one (the `volatile` part a sockets transport maintains).
    pub fn addresses(&self) -> Vec<DeviceAddress> {
        let mut out: Vec<DeviceAddress> = self.push_address().into_iter().collect();
        if let Some(v) = self.volatile.as_ref().filter(|v| v.active) {
            if let Some(Transport::Sockets(i)) = v.server_name.as_deref().and_then(Transport::parse) {
                out.push(DeviceAddress {
                    transport: Transport::Sockets(i),
                    device_id: self.id.clone(),
                    token: v.token.clone().unwrap_or_default(),
                    application_id: self.application_id.clone(),
                });
            }
        }
        out
    }
}

/// A validated message from the `track` topic.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackCommand {
    DeviceRegister { application_id: String, device: Device },
    DeviceRemove { application_id: String, device_id: String },
    Subscribe { application_id: String, device_id: String, channel: Channel, filter: Option<Filter> },
    Unsubscribe { application_id: String, device_id: String, channel: Channel, filter: Option<Filter> },
}

impl TrackCommand {
    /// Decodes with the default size bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, ModelError> {
        decode_track(bytes, DEFAULT_MAX_MESSAGE_BYTES)
    }

    pub fn application_id(&self) -> &str {
        match self {
            TrackCommand::DeviceRegister { application_id, .. }
            | TrackCommand::DeviceRemove { application_id, .. }
            | TrackCommand::Subscribe { application_id, .. }
            | TrackCommand::Unsubscribe { application_id, .. } => application_id,
        }
    }
}

/// Checks a decoded command against its application (the one rule for the `track` role and the
/// ingress's `POST /track`, so both give the same reason): a subscribe's channel must be of a
/// model the schema declares or a built-in one, and name a parent the model `belongsTo`
/// ([`Channel::check_models`]). An unsubscribe is not checked against the schema, so a device
/// can still leave a channel of a model the schema has since dropped; its key is a channel key
/// all the same (reserved names are refused when it is decoded, [`Channel::validate`]). The
/// caller has checked that `app` is the command's application.
pub fn check_track_command(command: &TrackCommand, app: &Application) -> Result<(), ModelError> {
    match command {
        TrackCommand::Subscribe { channel, .. } => channel.check_models(app),
        TrackCommand::DeviceRegister { .. } | TrackCommand::DeviceRemove { .. } | TrackCommand::Unsubscribe { .. } => {
            Ok(())
        }
    }
}

fn device_id(map: &Map<String, Value>) -> Result<String, ModelError> {
    let id = req_str(map, "device_id", "device_id")?;
    validate_ident("device_id", id)?;
    Ok(id.to_owned())
}

fn decode_device(map: &Map<String, Value>, application_id: &str) -> Result<Device, ModelError> {
    let dev = req_obj(map, "device", "device")?;
    let id = req_str(dev, "id", "device.id")?;
    validate_ident("device.id", id)?;
    let info = match dev.get("info") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ModelError::wrong_type("device.info", "an object")),
    };
    let persistent = match dev.get("persistent") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            let platform = match req_str(p, "type", "device.persistent.type")? {
                "ios" => PushPlatform::Ios,
                "android" => PushPlatform::Android,
                _ => return Err(ModelError::wrong_type("device.persistent.type", "`ios` or `android`")),
            };
            let token = req_str(p, "token", "device.persistent.token")?;
            validate_push_token(token)?;
            Some(Persistent {
                platform,
                token: token.to_owned(),
                active: flag(p.get("active"), "device.persistent.active")?.unwrap_or(true),
            })
        }
        Some(_) => return Err(ModelError::wrong_type("device.persistent", "an object")),
    };
    // A register never binds a socket: `volatile` is owned by the sockets transport, so a
    // client-sent one is kept only as a hint of its type and never as active.
    let volatile = match dev.get("volatile") {
        None | Some(Value::Null) => None,
        Some(Value::Object(v)) => Some(Volatile {
            kind: opt_str(v, "type", "device.volatile.type")?.map(str::to_owned),
            ..Volatile::default()
        }),
        Some(_) => return Err(ModelError::wrong_type("device.volatile", "an object")),
    };
    Ok(Device { id: id.to_owned(), application_id: application_id.to_owned(), info, persistent, volatile })
}

/// Longest push token accepted (FCM registration tokens are about 160 bytes, APNs ones 64).
pub const MAX_PUSH_TOKEN_LEN: usize = 4096;

/// A push token is opaque to us but sits inside a device string (`…|<token>|…`): it may hold
/// `:` (FCM registration tokens do) but not `|`, whitespace or control characters. The APNs
/// client checks its own stricter shape before a token reaches a URL path.
fn validate_push_token(token: &str) -> Result<(), ModelError> {
    let reason = if token.is_empty() {
        "it is empty"
    } else if token.len() > MAX_PUSH_TOKEN_LEN {
        "it is longer than 4096 bytes"
    } else if token.chars().any(|c| c == '|' || c.is_whitespace() || c.is_control()) {
        "it contains `|`, whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(ModelError::InvalidIdentifier { field: "device.persistent.token".into(), reason })
}

/// Telepat stores flags as `true/false` or `1/0`.
fn flag(v: Option<&Value>, field: &str) -> Result<Option<bool>, ModelError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
        Some(_) => Err(ModelError::wrong_type(field, "a boolean or 0/1")),
    }
}

/// `channel` and optional `filters` of a subscribe or unsubscribe (track command or socket frame).
pub fn channel_and_filter(map: &Map<String, Value>) -> Result<(Channel, Option<Filter>), ModelError> {
    let channel = Channel::from_value(map.get("channel").unwrap_or(&Value::Null))?;
    let filter = match map.get("filters") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Filter::parse(v)?),
    };
    channel.check_filter_allowed(filter.as_ref())?;
    Ok((channel, filter))
}

/// Decodes and validates one `track` message of at most `max_bytes` bytes.
pub fn decode_track(bytes: &[u8], max_bytes: usize) -> Result<TrackCommand, ModelError> {
    decode_track_object(&parse_json_object(bytes, max_bytes)?)
}

/// Validates one `track` command its caller parsed (and bounded in size) itself: the HTTP
/// ingress, which produces the bytes it parsed rather than a re-serialisation.
pub fn decode_track_object(map: &Map<String, Value>) -> Result<TrackCommand, ModelError> {
    let op = req_str(map, "op", "op")?;
    let application_id = application_id(map)?;
    match op {
        "device_register" => {
            let device = decode_device(map, &application_id)?;
            Ok(TrackCommand::DeviceRegister { application_id, device })
        }
        "device_remove" => Ok(TrackCommand::DeviceRemove { device_id: device_id(map)?, application_id }),
        "subscribe" | "unsubscribe" => {
            let device_id = device_id(map)?;
            let (channel, filter) = channel_and_filter(map)?;
            Ok(if op == "subscribe" {
                TrackCommand::Subscribe { application_id, device_id, channel, filter }
            } else {
                TrackCommand::Unsubscribe { application_id, device_id, channel, filter }
            })
        }
        other => Err(ModelError::UnknownOp { op: other.to_owned(), topic: "track" }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fcm_registration_tokens_with_colons_register() {
        let fcm = "dGVzdA:APA91bH-xyz_0123";
        assert!(validate_push_token(fcm).is_ok());
        for bad in ["", "a|b", "a b", "a\nb"] {
            assert!(validate_push_token(bad).is_err(), "{bad:?}");
        }
        assert!(validate_push_token(&"x".repeat(MAX_PUSH_TOKEN_LEN + 1)).is_err());
    }

    fn app() -> Application {
        Application::from_json(
            br#"{"id":"a1","schema":{"task":{"belongsTo":[{"parentModel":"project"}]},"project":{}}}"#,
        )
        .unwrap()
    }

    fn subscribe(channel: &str) -> Result<TrackCommand, ModelError> {
        let msg = format!(r#"{{"op":"subscribe","application_id":"a1","device_id":"d1","channel":{channel}}}"#);
        decode_track(msg.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES)
    }

    #[test]
    fn subscribes_name_models_and_parents_of_the_schema() {
        let app = app();
        for ok in [
            r#"{"model":"task","context":"c1"}"#,
            r#"{"model":"task","parent":{"model":"project","id":"p1"}}"#,
            r#"{"model":"user"}"#,
            r#"{"model":"context","id":"c1"}"#,
        ] {
            check_track_command(&subscribe(ok).unwrap(), &app).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for refused in [
            r#"{"model":"nope","id":"x"}"#,
            r#"{"model":"task","parent":{"model":"user","id":"u1"}}"#,
            r#"{"model":"project","parent":{"model":"task","id":"t1"}}"#,
        ] {
            assert!(check_track_command(&subscribe(refused).unwrap(), &app).is_err(), "{refused}");
        }
        // The poison subscribe of issue 14 and its relatives do not even decode.
        for reserved in [
            r#"{"model":"devices","id":"d2"}"#,
            r#"{"model":"subscriptions","parent":{"model":"device","id":"d2"}}"#,
            r#"{"model":"index","id":"x"}"#,
        ] {
            assert!(subscribe(reserved).is_err(), "{reserved}");
        }
        let leave =
            br#"{"op":"unsubscribe","application_id":"a1","device_id":"d1","channel":{"model":"gone","id":"x"}}"#;
        let leave = decode_track(leave, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        check_track_command(&leave, &app).expect("a device may leave a channel of a dropped model");
    }
}
