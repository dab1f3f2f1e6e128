//! `POST /events` and `POST /track`: one message or a JSON array of them, checked as the
//! consuming role will decode them, then produced keyed by object (or device) id, in order.
//!
//! All or nothing at the door: if any message is rejected the answer is 400 with a reason per
//! rejected message and nothing is produced, so a client can fix the batch and send it again
//! without duplicating the good part. What passes here can still be refused deeper (schema,
//! author ACL): that goes to `dead_letter` with its reason, as from any producer.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{error, Ingress};
use crate::commands::publish;
use crate::model::{decode_aggregation, decode_track, DEFAULT_MAX_MESSAGE_BYTES};
use crate::queue::outbox::Sink;
use crate::queue::topic;
use crate::workers::apps::Apps;

/// How long a request waits for room in a full in-process queue before answering 503.
const QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Kind {
    Events,
    Track,
}

pub async fn post_events(State(ingress): State<Arc<Ingress>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(&ingress, &headers, &body, Kind::Events).await
}

pub async fn post_track(State(ingress): State<Arc<Ingress>>, headers: HeaderMap, body: Bytes) -> Response {
    accept(&ingress, &headers, &body, Kind::Track).await
}

async fn accept(ingress: &Ingress, headers: &HeaderMap, body: &[u8], kind: Kind) -> Response {
    if let Err(refused) = ingress.authorize_write(headers) {
        return refused.into_response();
    }
    let backend = match ingress.backend() {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let items = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => items,
        Ok(one @ Value::Object(_)) => vec![one],
        Ok(_) => return error(StatusCode::BAD_REQUEST, "expected a JSON object or an array of objects"),
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("not JSON: {e}")),
    };
    if items.is_empty() {
        return error(StatusCode::BAD_REQUEST, "no messages");
    }
    let total = items.len();
    let mut records = Vec::with_capacity(total);
    let mut rejected = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match check(kind, item, &backend.apps) {
            Ok(record) => records.push(record),
            Err(reason) => rejected.push(json!({ "index": index, "reason": reason })),
        }
    }
    if !rejected.is_empty() {
        let body = json!({
            "error": format!("{} of {total} messages rejected; none accepted", rejected.len()),
            "rejected": rejected,
        });
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let name = match kind {
        Kind::Events => topic::AGGREGATION,
        Kind::Track => topic::TRACK,
    };
    match send_all(&backend.sink, &ingress.config.topic(name), records).await {
        Ok(n) => (StatusCode::ACCEPTED, Json(json!({ "accepted": n }))).into_response(),
        Err((accepted, reason)) => {
            let body = json!({ "error": reason, "accepted": accepted });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Decodes `item` as its role will; returns (partition key, bytes to produce).
fn check(kind: Kind, mut item: Value, apps: &Apps) -> Result<(Option<String>, String), String> {
    if let (Kind::Events, Some(map)) = (kind, item.as_object_mut()) {
        // The API stamps writes; so does its stand-in when the client did not.
        map.entry("timestamp").or_insert_with(|| json!(now_micros()));
    }
    let text = item.to_string();
    let app = match kind {
        Kind::Events => decode_aggregation(text.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES)
            .map(|m| m.application_id().to_owned())
            .map_err(|e| e.to_string())?,
        Kind::Track => decode_track(text.as_bytes(), DEFAULT_MAX_MESSAGE_BYTES)
            .map(|c| c.application_id().to_owned())
            .map_err(|e| e.to_string())?,
    };
    if apps.get(&app).is_none() {
        return Err(format!("unknown application `{app}`"));
    }
    Ok((publish::message_key(&item), text))
}

/// Produces in order. On failure: how many went through, and why the rest did not.
async fn send_all(sink: &Sink, topic: &str, records: Vec<(Option<String>, String)>) -> Result<usize, (usize, String)> {
    match sink {
        Sink::Kafka(producer) => {
            let n = records.len();
            // Sent concurrently but enqueued in order; the idempotent producer keeps that order.
            publish::publish(producer, topic, records)
                .await
                .map_err(|e| (0, format!("{e} (some may have been accepted)")))?;
            Ok(n)
        }
        Sink::Memory(broker) => {
            let n = records.len();
            for (i, (key, payload)) in records.into_iter().enumerate() {
                let append = broker.append(topic, key.map(String::into_bytes), payload.into_bytes());
                if tokio::time::timeout(QUEUE_WAIT, append).await.is_err() {
                    return Err((i, format!("the in-process queue stayed full for {QUEUE_WAIT:?}")));
                }
            }
            Ok(n)
        }
    }
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
    if let Err(refused) = ingress.authorize_write(&headers) {
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

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}
