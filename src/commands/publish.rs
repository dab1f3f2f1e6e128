//! `nexxus-worker publish [--topic T] [FILE|-]`: produces JSON lines, keyed by the object or
//! device id when the message names one, so per-object ordering holds from the first hop.
//! Every line is checked before anything is sent: a bad line aborts the whole input.

use std::io::Read;
use std::path::Path;

use futures::stream::{self, StreamExt, TryStreamExt};
use serde_json::Value;

use crate::error::WorkerError;
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
}
