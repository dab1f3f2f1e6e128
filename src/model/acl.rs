//! The author check (Telepat's `validateAuthor`, telepat-original 5.3).
//!
//! When a model's ACL has the author bit (8) and the change names a `user_id`, the change is
//! allowed only if that user is an author of the stored object: `object[f] == user_id` for
//! some `f` in `author_fields ∪ ["user_id"]`. No `user_id` means an admin or internal path and
//! passes, as do built-in models and models the schema does not declare. Telepat compared with
//! JavaScript `==`, so a numeric author field matches the same digits as a string.

use serde_json::{Map, Value};

use super::error::ModelError;
use super::schema::{is_builtin, AppSchema, ACL_AUTHOR};

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
    let is_author =
        m.author_fields.iter().map(String::as_str).chain(std::iter::once("user_id")).any(|f| match object.get(f) {
            Some(Value::String(s)) => s == user,
            Some(Value::Number(n)) => n.to_string() == user,
            _ => false,
        });
    if is_author {
        Ok(())
    } else {
        Err(ModelError::NotAuthor {
            model: model.to_owned(),
            id: object.get("id").and_then(Value::as_str).unwrap_or("?").to_owned(),
            user_id: user.to_owned(),
        })
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

    #[test]
    fn passes_without_author_bit_for_builtins_and_unknown_models() {
        let o = obj(json!({"id": "t1", "user_id": 7}));
        assert!(validate_author(&schema(2), "task", &o, AclKind::Write, Some("u3")).is_ok());
        assert!(validate_author(&schema(8), "user", &o, AclKind::Write, Some("u3")).is_ok());
        assert!(validate_author(&schema(8), "other", &o, AclKind::Write, Some("u3")).is_ok());
        assert!(validate_author(&schema(8), "task", &o, AclKind::Write, Some("7")).is_ok());
    }
}
