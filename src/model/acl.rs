//! The author check (Telepat's `validateAuthor`, telepat-original 5.3), and who may read
//! what ([`read_access`], [`channel_carries_readable`]).
//!
//! When a model's ACL has the author bit (8) and the change names a `user_id`, the change is
//! allowed only if that user is an author of the stored object: `object[f] == user_id` for
//! some `f` in `author_fields ∪ ["user_id"]`. No `user_id` means an admin or internal path and
//! passes, as do built-in models and models the schema does not declare. Telepat compared with
//! JavaScript `==`, so a numeric author field matches the same digits as a string.

use serde_json::{Map, Value};

use super::channel::Channel;
use super::error::ModelError;
use super::schema::{is_builtin, AppSchema, ACL_AUTHENTICATED, ACL_AUTHOR, ACL_UNAUTHENTICATED};

/// Which ACL of the model to consult.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclKind {
    Read,
    Write,
}

/// Checks that `user_id` may change (or read) `object` of `model`.
pub fn validate_author(
    schema: &AppSchema,
    model: &str,
    object: &Map<String, Value>,
    kind: AclKind,
    user_id: Option<&str>,
) -> Result<(), ModelError> {
    if is_builtin(model) {
        return Ok(());
    }
    let Some(m) = schema.get(model) else {
        return Ok(());
    };
    let acl = match kind {
        AclKind::Read => m.read_acl,
        AclKind::Write => m.write_acl,
    };
    let Some(user) = user_id else {
        return Ok(());
    };
    if acl & ACL_AUTHOR == 0 {
        return Ok(());
    }
    if is_author(&m.author_fields, object, user) {
        Ok(())
    } else {
        Err(ModelError::NotAuthor {
            model: model.to_owned(),
            id: object.get("id").and_then(Value::as_str).unwrap_or("?").to_owned(),
            user_id: user.to_owned(),
        })
    }
}

/// Whether `user` is an author of `object`: `object[f] == user` for some `f` in `author_fields`
/// or `user_id` (a number matches its digits, as Telepat's JavaScript `==` did).
fn is_author(author_fields: &[String], object: &Map<String, Value>, user: &str) -> bool {
    author_fields.iter().map(String::as_str).chain(std::iter::once("user_id")).any(|f| match object.get(f) {
        Some(Value::String(s)) => s == user,
        Some(Value::Number(n)) => n.to_string() == user,
        _ => false,
    })
}

/// What a device may read of one model: the model's `read_acl` (Telepat's bits: 1
/// unauthenticated, 2 authenticated, 4 admin, 8 author) applied to the device's token.
///
/// - A device is *authenticated* when its token names a `user_id`; admins are operators, never
///   devices, so bit 4 alone grants devices nothing.
/// - `read_acl` 0 (absent) keeps the behaviour applications had before ACLs were enforced:
///   any device of the application reads the model (applications such as
///   deploy/local/demo-app.json declare nothing).
/// - The built-in `user` model, unless the schema declares it, is readable by its own user
///   only (its object id is the user id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAccess {
    /// Every object of the model.
    All,
    /// Objects the reader authored: a channel scoped to the reader's own user (every object
    /// on it has `user_id` = that user); for the `user` model, the reader's own object.
    Authored,
    /// Nothing (admin-only models, or an authenticated-only model and a token without a user).
    Nothing,
}

/// The access to `model` of a reader whose token names a user (`authenticated`) or not.
pub fn read_access(schema: &AppSchema, model: &str, authenticated: bool) -> ReadAccess {
    let acl = match schema.get(model) {
        Some(m) => m.read_acl,
        None if model == "user" => ACL_AUTHOR,
        None => 0,
    };
    if acl == 0 || acl & ACL_UNAUTHENTICATED != 0 || (authenticated && acl & ACL_AUTHENTICATED != 0) {
        ReadAccess::All
    } else if authenticated && acl & ACL_AUTHOR != 0 {
        ReadAccess::Authored
    } else {
        ReadAccess::Nothing
    }
}

/// Whether `channel` delivers only what a reader with [`ReadAccess::Authored`] and user
/// `user_id` may read: a channel scoped to that user (context or parent), or for the `user`
/// model the reader's own object. Single-object channels of other models are refused: which
/// user authored the object is not known when subscribing.
pub fn authored_channel(channel: &Channel, user_id: &str) -> bool {
    if channel.model == "user" {
        return channel.id.as_deref() == Some(user_id);
    }
    channel.user.as_deref() == Some(user_id) && (channel.context.is_some() || channel.parent.is_some())
}

/// The delivery-side check, per channel of a change (not per device: the transport manager
/// knows a device's address, not its user). `object` is the image delivered (the after-image,
/// or the before-image of a delete).
///
/// A model every reader may read passes. An author-only one passes only on channels that can
/// hold only its author: a user-scoped channel whose user authored `object` (`user_id` or an
/// `author_fields` field), or the `user` model's own-object channel. Anything else (model-wide,
/// context, parent or id channels of author-only models; admin-only models) carries nothing,
/// whatever a subscription made before the ACL was set, or through `track`, says.
pub fn channel_carries_readable(
    schema: &AppSchema,
    model: &str,
    channel: &Channel,
    object: Option<&Map<String, Value>>,
) -> bool {
    // A reader with a user is the most a device can be.
    match read_access(schema, model, true) {
        ReadAccess::All => true,
        ReadAccess::Nothing => false,
        ReadAccess::Authored if model == "user" => {
            channel.id.is_some() && object.and_then(|o| o.get("id")).and_then(Value::as_str) == channel.id.as_deref()
        }
        ReadAccess::Authored => {
            let (Some(user), Some(object)) = (channel.user.as_deref(), object) else { return false };
            let fields = schema.get(model).map(|m| m.author_fields.as_slice()).unwrap_or_default();
            is_author(fields, object, user)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::schema::ModelSchema;

    fn schema(write_acl: u32) -> AppSchema {
        let mut s = AppSchema::new();
        s.insert(
            "task".into(),
            ModelSchema { write_acl, author_fields: vec!["owner_id".into()], ..ModelSchema::default() },
        );
        s
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn author_bit_requires_a_matching_field() {
        let s = schema(8 | 2);
        let o = obj(json!({"id": "t1", "user_id": "u1", "owner_id": "u2"}));
        let w = AclKind::Write;
        assert!(validate_author(&s, "task", &o, w, Some("u1")).is_ok());
        assert!(validate_author(&s, "task", &o, w, Some("u2")).is_ok());
        let err = validate_author(&s, "task", &o, w, Some("u3")).unwrap_err();
        assert_eq!(err.to_string(), "user `u3` is not an author of task `t1`");
        assert!(validate_author(&s, "task", &o, w, None).is_ok());
        assert!(validate_author(&s, "task", &o, AclKind::Read, Some("u3")).is_ok());
    }

    fn reads(acl: u32) -> AppSchema {
        let mut s = AppSchema::new();
        s.insert(
            "task".into(),
            ModelSchema { read_acl: acl, author_fields: vec!["owner_id".into()], ..Default::default() },
        );
        s
    }

    #[test]
    fn read_acl_bits_decide_access_and_zero_keeps_the_old_openness() {
        use ReadAccess::*;
        let cases = [(0, All, All), (1, All, All), (2, Nothing, All), (3, All, All), (4, Nothing, Nothing)];
        for (acl, anonymous, user) in cases {
            assert_eq!(read_access(&reads(acl), "task", false), anonymous, "acl {acl} without user");
            assert_eq!(read_access(&reads(acl), "task", true), user, "acl {acl} with user");
        }
        assert_eq!(read_access(&reads(8), "task", true), Authored);
        assert_eq!(read_access(&reads(8), "task", false), Nothing);
        assert_eq!(read_access(&reads(8 | 2), "task", true), All, "authenticated wins over author");
        // The built-in user model: its own user only, unless the schema says otherwise.
        assert_eq!(read_access(&reads(0), "user", true), Authored);
        assert_eq!(read_access(&reads(0), "user", false), Nothing);
        let mut open = reads(0);
        open.insert("user".into(), ModelSchema { read_acl: 2, ..Default::default() });
        assert_eq!(read_access(&open, "user", true), All);
        assert_eq!(read_access(&reads(0), "context", false), All);
    }

    #[test]
    fn author_only_channels_are_the_readers_own() {
        let ch = |v: Value| serde_json::from_value::<Channel>(v).unwrap_or_default();
        assert!(authored_channel(&ch(json!({"model":"task","context":"c","user":"u1"})), "u1"));
        assert!(authored_channel(&ch(json!({"model":"task","parent":{"model":"p","id":"1"},"user":"u1"})), "u1"));
        assert!(!authored_channel(&ch(json!({"model":"task","context":"c"})), "u1"));
        assert!(!authored_channel(&ch(json!({"model":"task","id":"t1"})), "u1"));
        assert!(authored_channel(&ch(json!({"model":"user","id":"u1"})), "u1"));
        assert!(!authored_channel(&ch(json!({"model":"user","id":"u2"})), "u1"));
        assert!(!authored_channel(&ch(json!({"model":"user"})), "u1"));
    }

    #[test]
    fn deliveries_of_author_only_models_stay_on_their_authors_channels() {
        let ch = |v: Value| serde_json::from_value::<Channel>(v).unwrap_or_default();
        let s = reads(8);
        let by = |owner: &str| obj(json!({"id":"t1","type":"task","user_id":"u1","owner_id":owner}));
        let o = by("u2");
        let mine = ch(json!({"model":"task","context":"c","user":"u1"}));
        let owner = ch(json!({"model":"task","context":"c","user":"u2"}));
        let other = ch(json!({"model":"task","context":"c","user":"u3"}));
        assert!(channel_carries_readable(&s, "task", &mine, Some(&o)));
        assert!(channel_carries_readable(&s, "task", &owner, Some(&o)), "author_fields count");
        assert!(!channel_carries_readable(&s, "task", &other, Some(&o)));
        assert!(!channel_carries_readable(&s, "task", &ch(json!({"model":"task","context":"c"})), Some(&o)));
        assert!(!channel_carries_readable(&s, "task", &ch(json!({"model":"task","id":"t1"})), Some(&o)));
        assert!(channel_carries_readable(&reads(0), "task", &ch(json!({"model":"task","id":"t1"})), Some(&o)));
        assert!(!channel_carries_readable(&reads(4), "task", &mine, Some(&o)), "admin-only: no device");
        let u = obj(json!({"id":"u1","type":"user"}));
        assert!(channel_carries_readable(&s, "user", &ch(json!({"model":"user","id":"u1"})), Some(&u)));
        assert!(!channel_carries_readable(&s, "user", &ch(json!({"model":"user"})), Some(&u)));
    }

    #[test]
    fn passes_without_author_bit_for_builtins_and_unknown_models() {
        let o = obj(json!({"id": "t1", "user_id": 7}));
        assert!(validate_author(&schema(2), "task", &o, AclKind::Write, Some("u3")).is_ok());
        assert!(validate_author(&schema(8), "user", &o, AclKind::Write, Some("u3")).is_ok());
        assert!(validate_author(&schema(8), "other", &o, AclKind::Write, Some("u3")).is_ok());
        assert!(validate_author(&schema(8), "task", &o, AclKind::Write, Some("7")).is_ok());
    }
}
