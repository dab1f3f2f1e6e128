//! Channels: the `<Channel>` JSON of subscriptions, its Redis key, and which channels an
//! object change touches.
//!
//! Key masks (CONTRACT section 5, Telepat `lib/Channel.js`; `<rest>` follows `blg:<app>:`):
//!
//! | parts                  | Telepat mask | `<rest>`                                  |
//! |------------------------|--------------|-------------------------------------------|
//! | model (built-in only)  | 4            | `<model>`                                 |
//! | context + model        | 5            | `context:<ctx>:<model>`                   |
//! | context + user + model | 7            | `context:<ctx>:users:<uid>:<model>`       |
//! | parent + model         | 12           | `<parentModel>:<parentId>:<model>`        |
//! | user + parent + model  | 14           | `users:<uid>:<parentModel>:<parentId>:<model>` |
//! | model + id             | 20           | `<model>:<id>`                            |
//!
//! A filtered channel appends `:filter:<base64>` (see [`Filter::key_suffix`]). So that every key
//! parses back to exactly one channel, and no channel key can spell a registry key of another
//! kind (a device record, a subscription set), a few names are reserved: no part may be
//! `filter`, no model or parent model may be one of [`super::schema::RESERVED_MODELS`], and a
//! parent model may not be `context`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ModelError;
use super::filter::Filter;
use super::id::validate_ident;
use super::json::scalar_to_key_part;
use super::schema::{is_builtin, is_reserved, AppSchema, Application};

/// Prefix of every key of the registry.
pub const KEY_PREFIX: &str = "blg";
const FILTER_MARK: &str = ":filter:";

/// `key` without its `:filter:<suffix>`: [`ChannelKey::base`], and the same cut for a key read
/// back from Redis as a plain string.
pub fn base_of(key: &str) -> &str {
    key.rfind(FILTER_MARK).map_or(key, |i| &key[..i])
}

/// The filter suffix of `key`, if it is filtered: [`ChannelKey::filter_suffix`], and the same
/// for a plain string.
pub fn filter_suffix_of(key: &str) -> Option<&str> {
    key.rfind(FILTER_MARK).map(|i| &key[i + FILTER_MARK.len()..])
}

/// Whether `key` is a filtered variant (`<base>:filter:<suffix>`) of the channel `base`.
pub fn is_variant_of(key: &str, base: &str) -> bool {
    key.strip_prefix(base).and_then(|rest| rest.strip_prefix(FILTER_MARK)).is_some_and(|suffix| !suffix.is_empty())
}

/// `{"model":"project","id":"p1"}` inside a channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParentRef {
    pub model: String,
    pub id: String,
}

/// The `<Channel>` of subscribe/unsubscribe (CONTRACT section 4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Channel {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn bad(reason: &'static str) -> ModelError {
    ModelError::InvalidChannel { reason }
}

fn check_part(field: &str, v: &str) -> Result<(), ModelError> {
    validate_ident(field, v)?;
    if v == "filter" {
        return Err(bad("`filter` is reserved in channel keys"));
    }
    Ok(())
}

impl Channel {
    /// Decodes and validates a `<Channel>` JSON value.
    pub fn from_value(value: &Value) -> Result<Self, ModelError> {
        match value {
            Value::Null => return Err(ModelError::missing("channel")),
            Value::Object(_) => {}
            _ => return Err(ModelError::wrong_type("channel", "an object")),
        }
        let channel: Channel = serde_json::from_value(value.clone())
            .map_err(|_| ModelError::wrong_type("channel", "{model, context?, user?, parent?, id?} of strings"))?;
        channel.validate()?;
        Ok(channel)
    }

    /// Checks that the parts form one of Telepat's masks and can be put in a key.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_part("channel.model", &self.model)?;
        // A reserved name as model or parent model would spell a registry key of another kind
        // (`devices:<id>` is a device record, `device:<id>:subscriptions` a subscription set).
        if is_reserved(&self.model) {
            return Err(bad("the model is a reserved name (`devices`, `device`, `users`, `filter`, `index`)"));
        }
        for (field, v) in [("channel.context", &self.context), ("channel.user", &self.user), ("channel.id", &self.id)] {
            if let Some(v) = v {
                check_part(field, v)?;
            }
        }
        if let Some(p) = &self.parent {
            check_part("channel.parent.model", &p.model)?;
            check_part("channel.parent.id", &p.id)?;
            if p.model == "context" || is_reserved(&p.model) {
                return Err(bad("a parent model cannot be `context` or a reserved name"));
            }
        }
        let builtin = is_builtin(&self.model);
        match (&self.context, &self.user, &self.parent, &self.id) {
            (None, None, None, None) if builtin => Ok(()),
            (None, None, None, None) => {
                Err(bad("a model alone is a channel only for the built-in `user` and `context`"))
            }
            (None, None, None, Some(_)) => Ok(()),
            (_, _, _, Some(_)) => Err(bad("`id` cannot be combined with other parts")),
            _ if builtin => Err(bad("built-in models have only model and id channels")),
            (Some(_), _, None, None) => Ok(()),
            (None, _, Some(_), None) => Ok(()),
            (Some(_), _, Some(_), None) => Err(bad("`context` and `parent` cannot be combined")),
            (None, Some(_), None, None) => Err(bad("`user` needs a `context` or a `parent`")),
        }
    }

    /// Checks the channel against the application's schema: its model is declared (or one of
    /// the built-in `user` and `context`), and a parent is one the model `belongsTo`. A channel
    /// of anything else could never receive an object, and (before this check) could spell
    /// another registry key, such as `{"model":"devices","id":"d2"}` = d2's device record.
    pub fn check_models(&self, app: &Application) -> Result<(), ModelError> {
        let unknown = |model: &str| ModelError::UnknownModel { model: model.to_owned() };
        if is_reserved(&self.model) {
            return Err(unknown(&self.model));
        }
        let schema = app.model(&self.model);
        if schema.is_none() && !is_builtin(&self.model) {
            return Err(unknown(&self.model));
        }
        if let Some(parent) = &self.parent {
            let declared = schema.is_some_and(|m| m.belongs_to.iter().any(|b| b.parent_model == parent.model));
            if !declared {
                return Err(bad("the parent is not one the model belongsTo in the application's schema"));
            }
        }
        Ok(())
    }

    /// Rejects filters on single-object channels, as Telepat's API never set them there.
    pub fn check_filter_allowed(&self, filter: Option<&Filter>) -> Result<(), ModelError> {
        if filter.is_some() && self.id.is_some() {
            return Err(bad("a channel with an `id` cannot have filters"));
        }
        Ok(())
    }

    /// Builds the Redis key of this channel in `application_id`, optionally filtered.
    pub fn key(&self, application_id: &str, filter: Option<&Filter>) -> Result<ChannelKey, ModelError> {
        validate_ident("application_id", application_id)?;
        self.validate()?;
        self.check_filter_allowed(filter)?;
        let m = &self.model;
        let rest = match (&self.context, &self.user, &self.parent, &self.id) {
            (None, None, None, None) => m.clone(),
            (None, None, None, Some(id)) => format!("{m}:{id}"),
            (Some(c), None, None, None) => format!("context:{c}:{m}"),
            (Some(c), Some(u), None, None) => format!("context:{c}:users:{u}:{m}"),
            (None, None, Some(p), None) => format!("{}:{}:{m}", p.model, p.id),
            (None, Some(u), Some(p), None) => format!("users:{u}:{}:{}:{m}", p.model, p.id),
            _ => return Err(bad("unsupported combination of parts")),
        };
        let mut key = format!("{KEY_PREFIX}:{application_id}:{rest}");
        if let Some(f) = filter {
            key.push_str(FILTER_MARK);
            key.push_str(&f.key_suffix());
        }
        Ok(ChannelKey(key))
    }
}

/// A channel key string, as stored in Redis and sent to clients in `subscriptions`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct ChannelKey(String);

/// A channel key taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedChannelKey {
    pub application_id: String,
    pub channel: Channel,
    pub filter: Option<Filter>,
}

impl ParsedChannelKey {
    /// Rebuilds the key in canonical form (a Telepat filter suffix becomes ours).
    pub fn canonical_key(&self) -> Result<ChannelKey, ModelError> {
        self.channel.key(&self.application_id, self.filter.as_ref())
    }
}

impl ChannelKey {
    /// A key read back from the registry, where only keys this crate built are stored. Not
    /// validated: use [`ChannelKey::parse`] for keys from outside.
    pub fn from_stored(key: String) -> ChannelKey {
        ChannelKey(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// The key without its `:filter:...` suffix.
    pub fn base(&self) -> &str {
        base_of(&self.0)
    }

    /// The base64 filter suffix, if the key is filtered.
    pub fn filter_suffix(&self) -> Option<&str> {
        filter_suffix_of(&self.0)
    }

    /// Returns this (unfiltered) key with `filter` appended.
    pub fn with_filter(&self, filter: &Filter) -> ChannelKey {
        ChannelKey(format!("{}{FILTER_MARK}{}", self.base(), filter.key_suffix()))
    }

    /// Parses any key of the table above, decoding a filter suffix (ours or Telepat's).
    pub fn parse(key: &str) -> Result<ParsedChannelKey, ModelError> {
        let bad = |reason| ModelError::InvalidChannelKey { key: key.chars().take(200).collect(), reason };
        let (base, filter) = match key.rfind(FILTER_MARK) {
            Some(i) => {
                let suffix = &key[i + FILTER_MARK.len()..];
                (&key[..i], Some(Filter::from_key_suffix(suffix)?))
            }
            None => (key, None),
        };
        let parts: Vec<&str> = base.split(':').collect();
        let (prefix, app, rest) = match parts.as_slice() {
            [prefix, app, rest @ ..] => (*prefix, *app, rest),
            _ => return Err(bad("too few `:`-separated parts")),
        };
        if prefix != KEY_PREFIX {
            return Err(bad("does not start with `blg:`"));
        }
        let s = |v: &str| Some(v.to_owned());
        let channel = match rest {
            [m] => Channel { model: (*m).to_owned(), ..Channel::default() },
            [m, id] => Channel { model: (*m).to_owned(), id: s(id), ..Channel::default() },
            ["context", c, m] => Channel { model: (*m).to_owned(), context: s(c), ..Channel::default() },
            [pm, pid, m] => Channel {
                model: (*m).to_owned(),
                parent: Some(ParentRef { model: (*pm).to_owned(), id: (*pid).to_owned() }),
                ..Channel::default()
            },
            ["context", c, "users", u, m] => {
                Channel { model: (*m).to_owned(), context: s(c), user: s(u), ..Channel::default() }
            }
            ["users", u, pm, pid, m] => Channel {
                model: (*m).to_owned(),
                user: s(u),
                parent: Some(ParentRef { model: (*pm).to_owned(), id: (*pid).to_owned() }),
                ..Channel::default()
            },
            _ => return Err(bad("does not match any channel mask")),
        };
        validate_ident("application_id", app)?;
        channel.validate()?;
        channel.check_filter_allowed(filter.as_ref())?;
        Ok(ParsedChannelKey { application_id: app.to_owned(), channel, filter })
    }
}

impl std::fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn part(object: &Map<String, Value>, field: &str) -> Option<String> {
    let v = scalar_to_key_part(object.get(field)?)?;
    // An unusable value cannot be subscribed to either, so it simply yields no channel.
    (validate_ident(field, &v).is_ok() && v != "filter").then_some(v)
}

/// Returns the unfiltered channel keys an object of `application_id` appears on
/// (telepat-original 5.2, without its crash on unknown models).
///
/// The model is `object.type`; it must be built-in or declared in `schema`. Channels whose
/// parts are missing from the object (no `user_id`, no `<parent>_id`) are left out.
pub fn affected_channels(
    application_id: &str,
    object: &Map<String, Value>,
    schema: &AppSchema,
) -> Result<Vec<ChannelKey>, ModelError> {
    let model = match object.get("type") {
        Some(Value::String(m)) => m.as_str(),
        Some(_) => return Err(ModelError::wrong_type("object.type", "a string")),
        None => return Err(ModelError::missing("object.type")),
    };
    let model_schema = schema.get(model);
    if model_schema.is_none() && !is_builtin(model) {
        return Err(ModelError::UnknownModel { model: model.to_owned() });
    }
    let mut out = Vec::with_capacity(8);
    let mut push = |c: Channel| {
        if let Ok(k) = c.key(application_id, None) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    };
    let base = Channel { model: model.to_owned(), ..Channel::default() };
    if is_builtin(model) {
        push(base.clone());
    }
    if let Some(id) = part(object, "id") {
        push(Channel { id: Some(id), ..base.clone() });
    }
    let (Some(ms), false) = (model_schema, is_builtin(model)) else {
        return Ok(out);
    };
    let user = part(object, "user_id");
    if let Some(ctx) = part(object, "context_id") {
        push(Channel { context: Some(ctx.clone()), ..base.clone() });
        if let Some(u) = &user {
            push(Channel { context: Some(ctx), user: Some(u.clone()), ..base.clone() });
        }
    }
    for b in &ms.belongs_to {
        let Some(pid) = part(object, &b.parent_field()) else {
            continue;
        };
        let parent = Some(ParentRef { model: b.parent_model.clone(), id: pid });
        push(Channel { parent: parent.clone(), ..base.clone() });
        if let Some(u) = &user {
            push(Channel { parent, user: Some(u.clone()), ..base.clone() });
        }
    }
    Ok(out)
}

/// The channels of a change: those of the after-image, then those only the before-image had
/// (an update that moves an object to another parent must reach the old parent's subscribers).
pub fn affected_channels_for_change(
    application_id: &str,
    before: Option<&Map<String, Value>>,
    after: Option<&Map<String, Value>>,
    schema: &AppSchema,
) -> Result<Vec<ChannelKey>, ModelError> {
    let mut out = match after {
        Some(a) => affected_channels(application_id, a, schema)?,
        None => Vec::new(),
    };
    if let Some(b) = before {
        for k in affected_channels(application_id, b, schema)? {
            if !out.contains(&k) {
                out.push(k);
            }
        }
    }
    Ok(out)
}
