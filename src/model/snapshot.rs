//! Snapshots and resumes of subscriptions (`docs/protocol.md`): the channels the store indexes
//! an object under, cursors, and what a channel's index entry means to one subscription.
//!
//! ```text
//! writer:   indexed_channels(after) ─▶ live entries;  before − after ─▶ tombstones (the window)
//! snapshot: live entries of the channel ─▶ entry_for(filter) ─▶ State ─▶ pages
//! resume:   resume_since(cursor) ─▶ entries changed since ─▶ entry_for(filter) ─▶ State | Gone
//! ```

use std::time::Duration;

use serde_json::{Map, Value};

use super::channel::{affected_channels, Channel, ChannelKey};
use super::filter::Filter;
use super::schema::AppSchema;

/// Objects per `snapshot`/`catchup` frame, at most.
pub const PAGE_OBJECTS: usize = 200;
/// A page closes once its entries exceed this many bytes (one larger object goes alone).
pub const PAGE_BYTES: usize = 64 * 1024;
/// Entries read from the store per round trip of a snapshot.
pub const STORE_PAGE: usize = 500;
/// A catch-up of more changed objects than this is refused with `RESYNC_REQUIRED`: a snapshot
/// costs less, and a catch-up is read whole before it is sent.
pub const CATCHUP_LIMIT: usize = 10_000;

/// The channels the store indexes `object` under: every channel it is routed to but its own
/// `{model, id}` one, which its row serves. An object that routes nowhere (an unknown model, a
/// missing `type`) is indexed nowhere.
pub fn indexed_channels(
    application_id: &str,
    model: &str,
    object: &Map<String, Value>,
    schema: &AppSchema,
) -> Vec<ChannelKey> {
    let Ok(mut channels) = affected_channels(application_id, object, schema) else { return Vec::new() };
    let own = object.get("id").and_then(Value::as_str).and_then(|id| {
        Channel { model: model.to_owned(), id: Some(id.to_owned()), ..Channel::default() }
            .key(application_id, None)
            .ok()
    });
    if let Some(own) = own {
        channels.retain(|k| *k != own);
    }
    channels
}

/// The channels of `before` that `after` no longer has.
pub fn left_channels(before: &[ChannelKey], after: &[ChannelKey]) -> Vec<ChannelKey> {
    before.iter().filter(|k| !after.contains(k)).cloned().collect()
}

/// A resume point: the server's clock (milliseconds since the epoch) when it was issued. Sent
/// to clients as an opaque string with a format tag, so its form can change later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub u64);

const CURSOR_TAG: &str = "1.";

impl Cursor {
    pub fn encode(self) -> String {
        format!("{CURSOR_TAG}{}", self.0)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let digits = text.strip_prefix(CURSOR_TAG)?;
        if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Cursor)
    }
}

/// Where the catch-up of a resume from `cursor` starts (milliseconds), or why the client must
/// take a fresh snapshot instead (`RESYNC_REQUIRED`).
pub fn resume_since(cursor: &str, now_ms: u64, window: Duration, overlap: Duration) -> Result<u64, &'static str> {
    let Some(Cursor(at)) = Cursor::decode(cursor) else {
        return Err("not a cursor this server issued");
    };
    let overlap = overlap.as_millis() as u64;
    if at > now_ms.saturating_add(overlap) {
        return Err("a cursor from the future: not one this server issued");
    }
    if now_ms.saturating_sub(at) > window.as_millis() as u64 {
        return Err("the cursor is older than the resume window");
    }
    Ok(at.saturating_sub(overlap))
}

/// What one channel entry is to a subscription.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// The object as it is now: the subscriber should hold it at this version.
    State { object: Map<String, Value>, version: u64 },
    /// Deleted, left the channel, or no longer matching the filter, at this version.
    Gone { id: String, model: String, version: u64 },
}

/// An entry (`body` `None`: a tombstone) as the subscription with `filter` sees it.
pub fn entry_for(
    id: &str,
    model: &str,
    body: Option<Map<String, Value>>,
    version: u64,
    filter: Option<&Filter>,
) -> Entry {
    match body {
        Some(object) if filter.is_none_or(|f| f.matches(&object)) => Entry::State { object, version },
        _ => Entry::Gone { id: id.to_owned(), model: model.to_owned(), version },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::Application;
    use serde_json::json;

    fn app() -> Application {
        let doc = json!({"id":"a1","schema":{"task":{"belongsTo":[{"parentModel":"project"}]}}});
        Application::from_json(doc.to_string().as_bytes()).expect("valid application")
    }

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_object_is_indexed_on_its_channels_but_its_own() {
        let app = app();
        let o = object(json!({"id":"t1","type":"task","context_id":"c1","user_id":"u1","project_id":"p1"}));
        let keys: Vec<String> =
            indexed_channels("a1", "task", &o, &app.schema).into_iter().map(ChannelKey::into_string).collect();
        assert!(keys.contains(&"blg:a1:context:c1:task".to_string()), "{keys:?}");
        assert!(keys.contains(&"blg:a1:users:u1:project:p1:task".to_string()), "{keys:?}");
        assert!(!keys.contains(&"blg:a1:task:t1".to_string()), "its own channel is its row: {keys:?}");
        let moved = object(json!({"id":"t1","type":"task","context_id":"c1","user_id":"u1","project_id":"p2"}));
        let after = indexed_channels("a1", "task", &moved, &app.schema);
        let before = indexed_channels("a1", "task", &o, &app.schema);
        let left: Vec<String> = left_channels(&before, &after).into_iter().map(ChannelKey::into_string).collect();
        assert_eq!(left, ["blg:a1:project:p1:task", "blg:a1:users:u1:project:p1:task"]);
        assert!(indexed_channels("a1", "nope", &object(json!({"id":"x","type":"nope"})), &app.schema).is_empty());
    }

    #[test]
    fn cursors_round_trip_and_resume_refuses_what_it_cannot_honour() {
        let c = Cursor(1_700_000_000_000);
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "1.", "2.5", "1.-5", "1.5x", "1.123456789012345678901", "5"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
        let (window, overlap) = (Duration::from_secs(3600), Duration::from_secs(60));
        let now = 10_000_000;
        assert_eq!(resume_since(&Cursor(now - 1000).encode(), now, window, overlap), Ok(now - 61_000));
        assert_eq!(resume_since(&Cursor(now - 3_600_000).encode(), now, window, overlap), Ok(now - 3_660_000));
        assert!(resume_since(&Cursor(now - 3_600_001).encode(), now, window, overlap).is_err(), "beyond the window");
        assert!(resume_since(&Cursor(now + 60_001).encode(), now, window, overlap).is_err(), "from the future");
        assert!(resume_since("garbage", now, window, overlap).is_err());
    }

    #[test]
    fn an_entry_outside_the_filter_or_a_tombstone_is_gone() {
        let f = Filter::parse_str(r#"{"and":[{"is":{"done":false}}]}"#).expect("filter");
        let open = object(json!({"id":"t1","type":"task","done":false}));
        let done = object(json!({"id":"t1","type":"task","done":true}));
        assert!(matches!(entry_for("t1", "task", Some(open.clone()), 3, Some(&f)), Entry::State { version: 3, .. }));
        assert!(matches!(entry_for("t1", "task", Some(done), 4, Some(&f)), Entry::Gone { version: 4, .. }));
        assert!(matches!(entry_for("t1", "task", None, 5, None), Entry::Gone { version: 5, .. }));
        assert!(matches!(entry_for("t1", "task", Some(open), 3, None), Entry::State { .. }));
    }
}
