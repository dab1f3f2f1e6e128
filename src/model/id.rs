//! Identifiers: what a valid name looks like, and deterministic object ids.
//!
//! Application ids, model names, object, context, user and device ids all end up inside Redis
//! keys (`blg:<app>:context:<ctx>:<model>`) and device strings (`<transport>|<id>|<token>|<app>`),
//! so they must not contain the separators `:` `|` `/`, whitespace or control characters, or
//! a key built from them could not be parsed back, or could alias another key.

use sha2::{Digest, Sha256};

use super::error::ModelError;

/// Longest identifier accepted, in bytes.
pub const MAX_IDENT_LEN: usize = 256;

/// Checks that `value` can be used as one segment of a channel key or device string.
pub fn validate_ident(field: &str, value: &str) -> Result<(), ModelError> {
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_IDENT_LEN {
        "it is longer than 256 bytes"
    } else if value.chars().any(|c| matches!(c, ':' | '|' | '/') || c.is_whitespace() || c.is_control()) {
        "it contains `:`, `|`, `/`, whitespace or a control character"
    } else {
        return Ok(());
    };
    Err(ModelError::InvalidIdentifier { field: field.to_owned(), reason })
}

/// Derives the id of an object created by the message at `topic`/`partition`/`offset`.
///
/// Formula: `SHA-256("nexxus-object-id\0" ‖ application_id ‖ "\0" ‖ topic ‖ "\0" ‖
/// partition as decimal ‖ "\0" ‖ offset as decimal)`; the first 16 bytes are formatted as a
/// UUID (`8-4-4-4-12` lowercase hex) with the version nibble set to 8 and the RFC 9562 variant
/// bits set, i.e. a valid UUIDv8. A replayed message has the same position, so it yields the
/// same id and overwrites instead of duplicating (Telepat's writer drew a fresh UUID v4).
///
/// Pass the full topic name as consumed; two deployments sharing a store must use distinct
/// topic names (prefixes) or their ids could collide.
pub fn object_id_from_position(application_id: &str, topic: &str, partition: i32, offset: i64) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"nexxus-object-id\0");
    hasher.update(application_id.as_bytes());
    hasher.update(b"\0");
    hasher.update(topic.as_bytes());
    hasher.update(b"\0");
    hasher.update(partition.to_string().as_bytes());
    hasher.update(b"\0");
    hasher.update(offset.to_string().as_bytes());
    let digest = hasher.finalize();

    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // variant 10xx

    let mut out = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents() {
        assert!(validate_ident("id", "task-1_A.b").is_ok());
        for bad in ["", "a:b", "a|b", "a/b", "a b", "a\nb"] {
            assert!(validate_ident("id", bad).is_err(), "{bad:?}");
        }
        assert!(validate_ident("id", &"x".repeat(257)).is_err());
    }

    #[test]
    fn ids_are_deterministic_uuid_v8() {
        let a = object_id_from_position("app1", "aggregation", 3, 42);
        assert_eq!(a, object_id_from_position("app1", "aggregation", 3, 42));
        assert_ne!(a, object_id_from_position("app1", "aggregation", 3, 43));
        assert_ne!(a, object_id_from_position("app2", "aggregation", 3, 42));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
        assert!(validate_ident("id", &a).is_ok());
    }
}
