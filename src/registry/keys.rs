//! Names of the registry's Redis keys: Telepat's (CONTRACT section 5) and the index keys of our
//! own. Every key lives under `blg:<app>:`.
//!
//! Our own keys put a `|` right after `blg:<app>:filters` / `blg:<app>:index`. Telepat
//! identifiers (application, model, context, user and object ids) cannot contain `|` (see
//! [`crate::model::id::validate_ident`]), and a filter suffix is base64, so no Telepat channel,
//! device or subscription key can ever be spelled like one of ours.

pub use crate::model::channel::{base_of, is_variant_of};
use crate::model::channel::{filter_suffix_of, ChannelKey, KEY_PREFIX};
use crate::model::id::validate_ident;
use crate::model::Transport;

/// The kinds of key the registry stores, each with one Redis type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`device`]: a string.
    DeviceRecord,
    /// [`device_subscriptions`]: a set.
    Subscriptions,
    /// [`filter_index`]: a set.
    FilterIndex,
    /// [`device_index`]: a set.
    DeviceIndex,
    /// [`socket_index`]: a set.
    SocketIndex,
    /// A channel key ([`ChannelKey::parse`] accepts it): a set.
    Channel,
}

impl Kind {
    /// Whether keys of this kind hold a set (the others hold a string).
    pub fn is_set(self) -> bool {
        self != Kind::DeviceRecord
    }
}

/// Which kind of registry key `key` is, `None` for a key the registry never writes. The
/// spellings are disjoint (a unit test checks it over every channel mask), so a key has one
/// kind, and a value of another Redis type under it is corruption the registry may repair.
pub fn kind_of(key: &str) -> Option<Kind> {
    let app = app_of(key)?;
    let rest = &key[KEY_PREFIX.len() + app.len() + 2..];
    if let Some(base) = rest.strip_prefix("filters|") {
        return (app_of(base) == Some(app) && ChannelKey::parse(base).is_ok()).then_some(Kind::FilterIndex);
    }
    if let Some(name) = rest.strip_prefix("index|") {
        return match name {
            "devices" => Some(Kind::DeviceIndex),
            _ => matches!(Transport::parse(name), Some(Transport::Sockets(_))).then_some(Kind::SocketIndex),
        };
    }
    if let Some(id) = rest.strip_prefix("devices:") {
        return validate_ident("device id", id).is_ok().then_some(Kind::DeviceRecord);
    }
    if let Some(id) = rest.strip_prefix("device:").and_then(|r| r.strip_suffix(":subscriptions")) {
        return validate_ident("device id", id).is_ok().then_some(Kind::Subscriptions);
    }
    ChannelKey::parse(key).is_ok().then_some(Kind::Channel)
}

/// Whether `key` is a channel key of application `app`, the only thing a device's
/// subscription set should hold.
pub fn is_channel_of(key: &str, app: &str) -> bool {
    app_of(key) == Some(app) && kind_of(key) == Some(Kind::Channel)
}

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

/// Whether a channel key is filtered (as [`crate::model::ChannelKey::filter_suffix`]).
pub fn is_filtered(key: &str) -> bool {
    filter_suffix_of(key).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::channel::{Channel, ChannelKey, ParentRef};

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

    #[test]
    fn a_variant_is_its_base_and_a_filter() {
        let f = crate::model::Filter::parse_str(r#"{"and":[{"is":{"a":1}}]}"#).unwrap();
        let c = Channel { model: "task".into(), context: Some("c1".into()), ..Channel::default() };
        let (base, variant) = (c.key("app1", None).unwrap(), c.key("app1", Some(&f)).unwrap());
        assert!(is_variant_of(variant.as_str(), base.as_str()));
        assert!(!is_variant_of(base.as_str(), base.as_str()));
        assert!(!is_variant_of(&format!("{base}:filter:"), base.as_str()), "an empty suffix");
        assert!(!is_variant_of(&format!("{base}x:filter:abc"), base.as_str()), "another channel's");
        assert!(!is_variant_of(variant.as_str(), "blg:app1:context:c2:task"));
    }

    /// Every channel of every mask over names chosen to collide (the reserved ones, the words
    /// of our own keys, ids of a device) that [`Channel::validate`] accepts (a superset of what
    /// `check_models` lets through) spells a key of kind `Channel` and of no other kind.
    #[test]
    fn no_channel_key_is_a_registry_key_of_another_kind() {
        let words = [
            "devices",
            "device",
            "subscriptions",
            "filters",
            "filter",
            "index",
            "users",
            "user",
            "context",
            "d2",
            "sockets_transport-0",
        ];
        let some = |w: &str| Some(w.to_owned());
        let mut channels = Vec::new();
        for m in words {
            let base = Channel { model: m.into(), ..Channel::default() };
            channels.push(base.clone());
            for a in words {
                channels.push(Channel { id: some(a), ..base.clone() });
                channels.push(Channel { context: some(a), ..base.clone() });
                for b in words {
                    channels.push(Channel { context: some(a), user: some(b), ..base.clone() });
                    let parent = Some(ParentRef { model: a.into(), id: b.into() });
                    channels.push(Channel { parent: parent.clone(), ..base.clone() });
                    for u in words {
                        channels.push(Channel { parent: parent.clone(), user: some(u), ..base.clone() });
                    }
                }
            }
        }
        let f = crate::model::Filter::parse_str(r#"{"and":[{"is":{"a":1}}]}"#).unwrap();
        let app = "a1";
        let mut others = vec![device_index(app), socket_index(app, "sockets_transport-0")];
        for w in words {
            others.extend([device(app, w), device_subscriptions(app, w)]);
        }
        let mut valid = 0;
        for c in channels.iter().filter(|c| c.validate().is_ok()) {
            for filter in [None, Some(&f)] {
                let Ok(key) = c.key(app, filter) else { continue };
                valid += 1;
                let key = key.as_str();
                assert_eq!(kind_of(key), Some(Kind::Channel), "{key}");
                assert!(is_channel_of(key, app));
                assert!(!others.iter().any(|o| o == key), "{c:?} spells {key}, a registry key of another kind");
                assert!(!key.contains('|'), "{key} could be a filter, device or socket index");
                let index = filter_index(ChannelKey::parse(key).unwrap().canonical_key().unwrap().base()).unwrap();
                assert_eq!(kind_of(&index), Some(Kind::FilterIndex), "{index}");
            }
        }
        assert!(valid > 1000, "only {valid} valid channel keys were generated");
        // A channel key belongs to the application it names and to no other, not even one whose
        // id it starts with (ids hold no `:`).
        let key = Channel { model: "item".into(), id: Some("1".into()), ..Channel::default() }.key(app, None).unwrap();
        assert!(is_channel_of(key.as_str(), app));
        assert!(!is_channel_of(key.as_str(), "a"), "a prefix of the id is another application");
        assert!(!is_channel_of(key.as_str(), "a2"));
        assert!(!is_channel_of("blg:a1", app), "nothing after the application");
        assert!(!is_channel_of("xyz:a1:item", app));
        // And every key of another kind is classified as that kind, never as a channel.
        for w in words.iter().filter(|w| validate_ident("id", w).is_ok()) {
            assert_eq!(kind_of(&device(app, w)), Some(Kind::DeviceRecord));
            assert_eq!(kind_of(&device_subscriptions(app, w)), Some(Kind::Subscriptions));
        }
        assert_eq!(kind_of(&device_index(app)), Some(Kind::DeviceIndex));
        assert_eq!(kind_of(&socket_index(app, "sockets_transport-3")), Some(Kind::SocketIndex));
        for junk in ["blg:a1:index|nope", "blg:a1:filters|blg:a2:x:1", "nope", "blg:a1:devices:a b", "blg:a1:x:y:z:w"] {
            assert_eq!(kind_of(junk), None, "{junk}");
        }
    }
}
