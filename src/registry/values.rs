//! Decoding of the replies the registry reads. Stored data never panics the worker: a reply of
//! an unexpected shape or a record that does not parse becomes [`RegistryError::Corrupt`].

use redis::Value;

use super::RegistryError;
use crate::error::Cause;
use crate::model::Device;

/// A set (SMEMBERS) as strings, sorted. A missing key is an empty set. Members that are not
/// UTF-8 (nothing the registry writes) are decoded lossily rather than failing a whole route.
pub fn members(key: &str, v: Value) -> Result<Vec<String>, RegistryError> {
    let items = match v {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) | Value::Set(items) => items,
        other => return Err(unexpected(key, "a set", &other)),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::BulkString(b) => {
                out.push(String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
            }
            Value::SimpleString(s) => out.push(s),
            other => return Err(unexpected(key, "set members", &other)),
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// An integer reply (SCARD, SADD, SREM).
pub fn int(key: &str, v: Value) -> Result<i64, RegistryError> {
    match v {
        Value::Int(n) => Ok(n),
        other => Err(unexpected(key, "an integer", &other)),
    }
}

/// A device record (GET), `None` when the key does not exist.
pub fn device(key: &str, v: Value) -> Result<Option<Device>, RegistryError> {
    let bytes = match v {
        Value::Nil => return Ok(None),
        Value::BulkString(b) => b,
        Value::SimpleString(s) => s.into_bytes(),
        other => return Err(unexpected(key, "a string", &other)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        let shown: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
        RegistryError::Corrupt(Cause::with(format_args!("{key}: not a device record ({shown})"), e))
    })
}

fn unexpected(key: &str, wanted: &str, got: &Value) -> RegistryError {
    let shown: String = format!("{got:?}").chars().take(200).collect();
    RegistryError::Corrupt(format!("{key}: expected {wanted}, got {shown}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_decode_any_set_shape() {
        let v = Value::Array(vec![Value::BulkString(b"b".to_vec()), Value::BulkString(vec![0xff, b'a'])]);
        assert_eq!(members("k", v).unwrap(), vec!["b".to_string(), "\u{fffd}a".to_string()]);
        assert_eq!(members("k", Value::Nil).unwrap(), Vec::<String>::new());
        assert!(matches!(members("k", Value::Int(3)), Err(RegistryError::Corrupt(_))));
    }

    #[test]
    fn device_records_that_do_not_parse_are_corrupt_not_panics() {
        assert!(device("k", Value::Nil).unwrap().is_none());
        for junk in [&b"{"[..], b"[]", b"{\"id\":1}", b"\xff\xfe"] {
            assert!(matches!(device("k", Value::BulkString(junk.to_vec())), Err(RegistryError::Corrupt(_))));
        }
        let ok = br#"{"id":"d1","application_id":"a","persistent":{"type":"ios","token":"t"}}"#;
        let d = device("k", Value::BulkString(ok.to_vec())).unwrap().unwrap();
        assert_eq!(d.id, "d1");
        assert!(d.persistent.unwrap().active);
    }
}
