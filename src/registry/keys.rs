//! Names of the registry's Redis keys: Telepat's (CONTRACT section 5) and the index keys of our
//! own. Every key lives under `blg:<app>:`.
//!
//! Our own keys put a `|` right after `blg:<app>:filters` / `blg:<app>:index`. Telepat
//! identifiers (application, model, context, user and object ids) cannot contain `|` (see
//! [`crate::model::id::validate_ident`]), and a filter suffix is base64, so no Telepat channel,
//! device or subscription key can ever be spelled like one of ours.

use crate::model::channel::KEY_PREFIX;

/// `blg:<app>:devices:<deviceId>`: the device record (a JSON string).
pub fn device(app: &str, device_id: &str) -> String {
    format!("{KEY_PREFIX}:{app}:devices:{device_id}")
}

/// `blg:<app>:device:<deviceId>:subscriptions`: the set of channel keys a device subscribed.
pub fn device_subscriptions(app: &str, device_id: &str) -> String {
    format!("{KEY_PREFIX}:{app}:device:{device_id}:subscriptions")
}

/// `blg:<app>:index|devices`: our set of the device ids of an application (for broadcasts,
/// which must never SCAN).
pub fn device_index(app: &str) -> String {
    format!("{KEY_PREFIX}:{app}:index|devices")
}

/// `blg:<app>:index|sockets_transport-<i>`: our set of `<deviceId>|<token>` attached to socket
/// transport `i`, so a restarted transport finds what its earlier life left behind.
pub fn socket_index(app: &str, server: &str) -> String {
    format!("{KEY_PREFIX}:{app}:index|{server}")
}

/// `blg:<app>:filters|<base channel key>`: our set of the filtered variants
/// (`<base>:filter:<suffix>`) of one unfiltered channel, so routing finds them without SCAN.
///
/// The application is read from the base key itself (`blg:<app>:...`), so a key routed
/// without its application at hand maps to the same index as at subscribe time. Returns `None`
/// for a string that is not `blg:<app>:<something>`.
pub fn filter_index(base_channel_key: &str) -> Option<String> {
    let app = app_of(base_channel_key)?;
    Some(format!("{KEY_PREFIX}:{app}:filters|{base_channel_key}"))
}

/// The `<app>` part of `blg:<app>:<rest>` (with a non-empty rest).
pub fn app_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?.strip_prefix(':')?;
    let (app, tail) = rest.split_once(':')?;
    (!app.is_empty() && !tail.is_empty()).then_some(app)
}

/// The key without its `:filter:<suffix>` (as [`crate::model::ChannelKey::base`], for a key
/// read back from Redis as a plain string).
pub fn base_of(key: &str) -> &str {
    key.rfind(FILTER_MARK).map_or(key, |i| &key[..i])
}

/// Whether a channel key is filtered (as [`crate::model::ChannelKey::filter_suffix`]).
pub fn is_filtered(key: &str) -> bool {
    key.contains(FILTER_MARK)
}

const FILTER_MARK: &str = ":filter:";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::channel::{Channel, ChannelKey};

    #[test]
    fn telepat_key_names() {
        assert_eq!(device("app1", "d1"), "blg:app1:devices:d1");
        assert_eq!(device_subscriptions("app1", "d1"), "blg:app1:device:d1:subscriptions");
    }

    #[test]
    fn our_keys_live_under_the_application() {
        assert_eq!(device_index("app1"), "blg:app1:index|devices");
        assert_eq!(
            filter_index("blg:app1:context:c1:task").as_deref(),
            Some("blg:app1:filters|blg:app1:context:c1:task")
        );
        assert_eq!(filter_index("blg:app1:user").as_deref(), Some("blg:app1:filters|blg:app1:user"));
        assert_eq!(filter_index("nope"), None);
        assert_eq!(filter_index("blg::x"), None);
        assert_eq!(filter_index("blg:app1"), None);
    }

    #[test]
    fn our_keys_never_parse_as_channel_keys() {
        for k in [
            device_index("app1"),
            filter_index("blg:app1:context:c1:task").unwrap(),
            filter_index("blg:a:user").unwrap(),
        ] {
            assert!(ChannelKey::parse(&k).is_err(), "{k} parsed as a channel key");
        }
        // And a real channel key is not mistaken for ours.
        let real = Channel { model: "task".into(), context: Some("c1".into()), ..Channel::default() };
        let key = real.key("app1", None).unwrap();
        assert!(!key.as_str().contains('|'));
    }

    #[test]
    fn base_and_filter_agree_with_channel_key() {
        let f = crate::model::Filter::parse_str(r#"{"and":[{"is":{"a":1}}]}"#).unwrap();
        let c = Channel { model: "task".into(), context: Some("c1".into()), ..Channel::default() };
        for key in [c.key("app1", None).unwrap(), c.key("app1", Some(&f)).unwrap()] {
            assert_eq!(base_of(key.as_str()), key.base());
            assert_eq!(is_filtered(key.as_str()), key.filter_suffix().is_some());
        }
    }
}
