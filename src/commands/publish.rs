//! `nexxus-worker publish [--topic T] [FILE|-]`: produces JSON lines, keyed by the object or
//! device id when the message names one, so per-object ordering holds from the first hop.
//! Every line is checked before anything is sent: a bad line aborts the whole input.
//! `--broadcast`: each line is a broadcast request (`model::broadcast`), produced to
//! `transport_manager` as its ephemeral event.

use std::io::Read;
use std::path::Path;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use crate::error::WorkerError;
use crate::model::decode_broadcast_object;
use crate::model::key::message_key;
use crate::queue::kafka::Producer;

/// How many produces may be in flight at once.
const IN_FLIGHT: usize = 1000;

/// Reads `input` (a path, or `-`/`None` for stdin) into (key, line) pairs.
pub fn read_lines(input: Option<&Path>) -> Result<Vec<(Option<String>, String)>, WorkerError> {
    let mut text = String::new();
    match input {
        Some(p) if p != Path::new("-") => {
            text = std::fs::read_to_string(p).map_err(WorkerError::io(format!("reading {}", p.display())))?;
        }
        _ => {
            std::io::stdin().read_to_string(&mut text).map_err(WorkerError::io("reading stdin"))?;
        }
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| WorkerError::Data(format!("line {}: not JSON: {e}", n + 1)))?;
        if !value.is_object() {
            return Err(WorkerError::Data(format!("line {}: expected a JSON object", n + 1)));
        }
        out.push((message_key(&value), line.to_string()));
    }
    Ok(out)
}

/// Each line, a broadcast request, as the `transport_manager` event it becomes (keyed by the
/// object's id, or the broadcast's own). Its model is checked against the schema by the
/// transport manager, which dead-letters one it does not know.
pub fn broadcasts(lines: Vec<(Option<String>, String)>) -> Result<Vec<(Option<String>, String)>, WorkerError> {
    let mut out = Vec::with_capacity(lines.len());
    for (n, (_, line)) in lines.into_iter().enumerate() {
        let bad = |e: &dyn std::fmt::Display| WorkerError::Data(format!("broadcast {}: {e}", n + 1));
        let value: Value = serde_json::from_str(&line).map_err(|e| bad(&e))?;
        let request = decode_broadcast_object(value.as_object().ok_or_else(|| bad(&"expected a JSON object"))?)
            .map_err(|e| bad(&e))?;
        let (key, event) = request.accept();
        out.push((Some(key), serde_json::to_string(&event).map_err(|e| bad(&e))?));
    }
    Ok(out)
}

/// Produces every line to `topic` (full name) and waits for all acknowledgements.
pub async fn publish(
    producer: &Producer,
    topic: &str,
    lines: Vec<(Option<String>, String)>,
) -> Result<usize, WorkerError> {
    let count = lines.len();
    stream::iter(lines)
        .map(|(key, line)| async move {
            producer.send(topic, key.as_deref().map(str::as_bytes), line.as_bytes(), &[]).await.map(|_| ())
        })
        .buffered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .map_err(WorkerError::kafka(format!("producing to {topic}")))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_line_is_reported_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"op\":\"create\"}\n\n[1]\n").unwrap();
        let err = read_lines(Some(&path)).unwrap_err();
        assert_eq!(err.to_string(), "bad input: line 3: expected a JSON object");
        std::fs::write(&path, "{\"op\":\"create\"}\n{oops\n").unwrap();
        assert!(read_lines(Some(&path)).unwrap_err().to_string().starts_with("bad input: line 2: not JSON"));
    }

    #[test]
    fn broadcast_lines_become_ephemeral_events_keyed_by_object() {
        let line = |s: &str| (None, s.to_string());
        let events = broadcasts(vec![
            line(r#"{"application_id":"a","object":{"type":"cursor","id":"o1","context_id":"c1"}}"#),
            line(r#"{"application_id":"a","to":"application","object":{"type":"notice"}}"#),
        ])
        .unwrap();
        let decoded: Vec<Value> = events.iter().map(|(_, e)| serde_json::from_str(e).unwrap()).collect();
        assert_eq!(events[0].0.as_deref(), Some("o1"));
        assert_eq!(events[1].0.as_deref(), decoded[1]["id"].as_str(), "no object id: the broadcast's own");
        assert!(decoded.iter().all(|e| e["ephemeral"] == true && e["version"] == 0 && e["op"] == "create"));
        assert_eq!((decoded[0]["broadcast"].clone(), decoded[1]["broadcast"].clone()), (false.into(), true.into()));
        let err = broadcasts(vec![line(r#"{"application_id":"a"}"#)]).unwrap_err().to_string();
        assert_eq!(err, "bad input: broadcast 1: `object` is missing");
    }
}
