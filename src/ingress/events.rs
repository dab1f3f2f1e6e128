//! `POST /events`, `POST /track` and `POST /broadcast`: one message or a JSON array of them, checked as the
//! consuming role will decode them, then produced keyed by object (or device) id, in order.
//!
//! All or nothing at the door: if any message is rejected the answer is 400 with a reason per
//! rejected message and nothing is produced, so a client can fix the batch and send it again
//! without duplicating the good part. What passes here can still be refused deeper (schema,
//! author ACL): that goes to `dead_letter` with its reason, as from any producer.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::{error, Ingress};
use crate::apps::Apps;
use crate::model::clock;
use crate::model::key::message_key;
use crate::model::{
    check_broadcast, check_track_command, decode_aggregation_object, decode_broadcast_object, decode_track_object,
    ModelError, DEFAULT_MAX_MESSAGE_BYTES,
};
use crate::queue::outbox::Sink;
use crate::queue::topic;

/// How long a request waits for room in a full in-process queue before answering 503.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Kind {
    Events,
    Track,
    Broadcast,
}

pub async fn post_events(State(ingress): State<Arc<Ingress>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(&ingress, &headers, &body, Kind::Events).await
}

pub async fn post_track(State(ingress): State<Arc<Ingress>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(&ingress, &headers, &body, Kind::Track).await
}

/// `POST /broadcast`: ephemeral objects (`model::broadcast`), straight to the transport manager.
pub async fn post_broadcast(State(ingress): State<Arc<Ingress>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(&ingress, &headers, &body, Kind::Broadcast).await
}

async fn accept(ingress: &Ingress, headers: &HeaderMap, body: &[u8], kind: Kind) -> Response {
    if let Err(refused) = ingress.authorize_events(headers) {
        return refused.into_response();
    }
    let backend = match ingress.backend() {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let max = ingress.config.ingress.max_messages;
    // Each item stays a slice of the body until it is checked on its own, so the memory of a
    // request is its body plus one message at a time, whatever the body holds.
    let items = match split(body, max) {
        Ok(items) => items,
        Err(reason) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let total = items.len();
    let mut records = Vec::with_capacity(total);
    let mut rejected = Vec::new();
    let mut rejected_count = 0usize;
    for (index, item) in items.into_iter().enumerate() {
        match check(kind, item, &backend.apps) {
            Ok(record) if rejected_count == 0 => records.push(record),
            Ok(_) => {}
            Err(reason) => {
                rejected_count += 1;
                // The answer stays small however many are wrong: the first reasons and a count.
                if rejected.len() < MAX_REASONS {
                    rejected.push(json!({ "index": index, "reason": reason }));
                }
                records = Vec::new();
            }
        }
    }
    if rejected_count > 0 {
        let body = json!({
            "error": format!("{rejected_count} of {total} messages rejected; none accepted"),
            "rejected": rejected,
            "rejected_count": rejected_count,
        });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let name = match kind {
        Kind::Events => topic::AGGREGATION,
        Kind::Track => topic::TRACK,
        Kind::Broadcast => topic::TRANSPORT_MANAGER,
    };
    let records = records.into_iter().map(|(key, payload)| (key, payload.into_owned())).collect();
    // All or nothing (`publish`): a failure means none of the request went in.
    match backend.publisher.publish(&ingress.config.topic(name), records, QUEUE_WAIT).await {
        Ok(n) => (StatusCode::ACCEPTED, Json(json!({ "accepted": n }))).into_response(),
        Err(reason) => {
            let body = json!({ "error": reason, "accepted": 0 });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Reasons listed in a 400 answer; the rest are counted in `rejected_count`.
pub const MAX_REASONS: usize = 20;

/// The messages of a body: one JSON object, or an array of at most `max` items (each left
/// unparsed). Refuses a longer array while reading it, before anything is kept for its items.
fn split(body: &[u8], max: usize) -> Result<Vec<&RawValue>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'[') {
        return match serde_json::from_slice::<&RawValue>(body) {
            Ok(one) if one.get().starts_with('{') => Ok(vec![one]),
            Ok(_) => Err("expected a JSON object or an array of objects".into()),
            Err(e) => Err(format!("not JSON: {e}")),
        };
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let items = Bounded { max }.deserialize(&mut de).map_err(|e| format!("not JSON: {e}"))?;
    de.end().map_err(|e| format!("not JSON: {e}"))?;
    if items.is_empty() {
        return Err("no messages".into());
    }
    Ok(items)
}

/// A JSON array of at most `max` raw values.
struct Bounded {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for Bounded {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Bounded {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of at most {} messages", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            if out.len() == self.max {
                return Err(A::Error::custom(format!(
                    "more than {} messages in one request (TP_INGRESS_MAX_MESSAGES)",
                    self.max
                )));
            }
            out.push(item);
        }
        Ok(out)
    }
}

/// Decodes `item` as its role will; returns (partition key, bytes to produce). The bytes are
/// the client's own, parsed once here: only a message without `timestamp` is copied, to stamp it.
fn check<'a>(kind: Kind, item: &'a RawValue, apps: &Apps) -> Result<(Option<String>, Cow<'a, str>), String> {
    let mut value: Value = serde_json::from_str(item.get()).map_err(|e| format!("not JSON: {e}"))?;
    let Some(map) = value.as_object_mut() else {
        return Err("expected a JSON object".into());
    };
    let text = match kind {
        // The API stamps writes; so does its stand-in when the client did not.
        Kind::Events if !map.contains_key("timestamp") => {
            let now = clock::now_micros();
            let text = stamped(item.get(), !map.is_empty(), now);
            map.insert("timestamp".into(), json!(now));
            Cow::Owned(text)
        }
        _ => Cow::Borrowed(item.get()),
    };
    // The bound the consuming role applies to these same bytes.
    if text.len() > DEFAULT_MAX_MESSAGE_BYTES {
        return Err(ModelError::TooLarge { size: text.len(), limit: DEFAULT_MAX_MESSAGE_BYTES }.to_string());
    }
    match kind {
        Kind::Events => {
            let msg = decode_aggregation_object(map).map_err(|e| e.to_string())?;
            apps.require(msg.application_id()).map_err(|e| e.to_string())?;
        }
        Kind::Track => {
            let command = decode_track_object(map).map_err(|e| e.to_string())?;
            let app = apps.require(command.application_id()).map_err(|e| e.to_string())?;
            // The track role's rule, here too, so the client hears it instead of a dead letter.
            check_track_command(&command, &app).map_err(|e| e.to_string())?;
        }
        Kind::Broadcast => {
            let request = decode_broadcast_object(map).map_err(|e| e.to_string())?;
            let app = apps.require(&request.application_id).map_err(|e| e.to_string())?;
            check_broadcast(&request, &app).map_err(|e| e.to_string())?;
            let (key, event) = request.accept();
            // Our own type, of string-keyed maps, strings and integers: it always encodes.
            let bytes = serde_json::to_string(&event).map_err(|e| format!("encoding the broadcast: {e}"))?;
            return Ok((Some(key), Cow::Owned(bytes)));
        }
    }
    Ok((message_key(&value), text))
}

/// `object`, the text of a JSON object without `timestamp`, with `"timestamp":now` added as its
/// last member (where inserting into the parsed object puts it).
fn stamped(object: &str, has_members: bool, now: u64) -> String {
    let open = object.trim_end();
    let open = open.strip_suffix('}').unwrap_or(open);
    let comma = if has_members { "," } else { "" };
    format!("{open}{comma}\"timestamp\":{now}}}")
}

#[derive(serde::Deserialize)]
pub struct DeadLetterQuery {
    limit: Option<usize>,
}

/// `GET /dead_letter?limit=N` (ingress token): the newest dead-letter envelopes of a process on
/// the in-process queue, which has no `dead_letter` topic to read. Over Kafka, 404: read the
/// topic (`dead-letter replay` puts them back).
pub async fn get_dead_letters(
    State(ingress): State<Arc<Ingress>>,
    Query(q): Query<DeadLetterQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = ingress.authorize_admin(&headers) {
        return refused.into_response();
    }
    let backend = match ingress.backend() {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Sink::Memory(broker) = &backend.sink else {
        return error(StatusCode::NOT_FOUND, "dead letters are on the Kafka topic dead_letter");
    };
    let topic = ingress.config.topic(topic::DEAD_LETTER);
    let envelopes: Vec<Value> = broker
        .tail(&topic, q.limit.unwrap_or(100).min(10_000))
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .collect();
    let body = json!({ "dead_letters": envelopes, "dropped": broker.dropped(&topic) });
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_is_the_last_member_and_the_rest_stays_the_clients_bytes() {
        let text = "{\"op\" : \"delete\",\n \"n\":1.50 }\n";
        let out = stamped(text, true, 7);
        assert_eq!(out, "{\"op\" : \"delete\",\n \"n\":1.50 ,\"timestamp\":7}");
        let mut expected: Value = serde_json::from_str(text).unwrap_or_default();
        if let Some(map) = expected.as_object_mut() {
            map.insert("timestamp".into(), json!(7));
        }
        let parsed: Value = serde_json::from_str(&out).unwrap_or_default();
        assert_eq!(parsed, expected);
        let keys: Vec<&String> = parsed.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["op", "n", "timestamp"], "where inserting into the parsed object puts it");
        assert_eq!(stamped("{ }", false, 7), "{ \"timestamp\":7}");
    }
}
