//! Server-sent events on the sockets port (`docs/sse.md`), against `-t all` with curl as the
//! client: the answer's headers, a snapshot then live deltas, cursors as event ids, a resume
//! with `Last-Event-ID` after a disconnect, a refused resume followed by a snapshot, and the
//! refusals (no token, a bad token, a malformed subscription, another user's channel).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::all::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const AUTH: [(&str, &str); 1] = [("Authorization", "Bearer in")];

/// One event of the stream: its id (if any) and its frame.
#[derive(Debug)]
struct Event {
    id: Option<String>,
    frame: Value,
}

/// `curl -N` reading one event stream; its headers go to stdout first (`-i`).
struct Stream {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// The newest id seen, as `EventSource` keeps it.
    last_id: Option<String>,
}

impl Stream {
    async fn open(port: u16, query: &str, headers: &[&str]) -> Stream {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-N", "-i", "--max-time", "60"]);
        for h in headers {
            cmd.args(["-H", h]);
        }
        cmd.arg(format!("http://127.0.0.1:{port}/sse?{query}"));
        let mut child = cmd.stdout(Stdio::piped()).kill_on_drop(true).spawn().expect("curl runs");
        let stdout = child.stdout.take().expect("piped");
        Stream { child, lines: BufReader::new(stdout).lines(), last_id: None }
    }

    async fn line(&mut self) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(20), self.lines.next_line())
            .await
            .expect("a line within 20 s")
            .expect("readable")
    }

    /// The status line and headers (lower-cased names).
    async fn head(&mut self) -> (String, Vec<(String, String)>) {
        let status = self.line().await.expect("a status line");
        let mut headers = Vec::new();
        while let Some(line) = self.line().await {
            let line = line.trim_end_matches('\r').to_string();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        (status.trim_end().to_string(), headers)
    }

    /// The next event with data (comments and id-only heartbeats update `last_id` only).
    async fn event(&mut self) -> Event {
        let (mut id, mut data): (Option<String>, String) = (None, String::new());
        loop {
            let line = self.line().await.expect("the stream goes on");
            if line.is_empty() {
                if let Some(i) = &id {
                    self.last_id = Some(i.clone());
                }
                if !data.is_empty() {
                    let frame = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("data is not a JSON frame ({e}): {data:?}"));
                    return Event { id, frame };
                }
                id = None;
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push_str(v);
            }
        }
    }

    /// Lines until an event with an id and no data (a heartbeat, one ping interval at most);
    /// returns its id. Events with data before it (the settle catch-up) are passed over.
    async fn heartbeat(&mut self) -> String {
        let (mut id, mut data): (Option<String>, bool) = (None, false);
        loop {
            let line = self.line().await.expect("the stream goes on");
            if line.is_empty() {
                match (id.take(), std::mem::take(&mut data)) {
                    (Some(i), false) => {
                        self.last_id = Some(i.clone());
                        return i;
                    }
                    (Some(i), true) => self.last_id = Some(i),
                    (None, _) => {}
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_string());
            }
            data |= line.starts_with("data: ");
        }
    }

    /// Events until one whose frame is `event` (returned), with the ones before it.
    async fn until(&mut self, event: &str) -> (Event, Vec<Event>) {
        let mut before = Vec::new();
        loop {
            let e = self.event().await;
            if e.frame["event"] == event {
                return (e, before);
            }
            before.push(e);
        }
    }

    async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

fn subscribe(value: Value) -> String {
    format!("subscribe={}", url_encode(&value.to_string()))
}

fn post(p: &Process, events: Value) {
    let (code, body) = p.request("POST", "/events", &AUTH, &events);
    assert_eq!(code, 202, "{body}");
}

async fn start_app() -> (tempfile::TempDir, Process, String) {
    let dir = tempfile::tempdir().unwrap();
    let p =
        start(dir.path(), None, &[("TP_INGRESS_TOKEN", "in"), ("TP_ADMIN_TOKEN", "adm"), ("TP_SCKT_PING_MS", "1000")])
            .await;
    let app = unique_app("sse");
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[("Authorization", "Bearer adm")], &app_doc(&app)).0, 200);
    (dir, p, app)
}

/// Titles of the objects of `message` frames' `new` deltas, in order.
fn created(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.frame["event"] == "message")
        .flat_map(|e| e.frame["data"]["new"].as_array().cloned().unwrap_or_default())
        .map(|d| d["object"]["title"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn an_event_stream_sends_a_snapshot_then_live_deltas_and_resumes_from_its_last_id() {
    let (_dir, p, app) = start_app().await;
    post(&p, json!([create(&app, Some("t1"), "one"), create(&app, Some("t2"), "two")]));
    // Until both are stored: a snapshot must hold them.
    let mut probe = Stream::open(
        p.ws,
        &format!("token={}&{}", token(&app, "probe"), subscribe(json!({"channel": list_channel(), "snapshot": true}))),
        &[],
    )
    .await;
    probe.head().await;
    loop {
        let (end, _) = probe.until("snapshot_end").await;
        if end.frame["data"]["count"] == 2 {
            break;
        }
        probe.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        probe = Stream::open(
            p.ws,
            &format!(
                "token={}&{}",
                token(&app, "probe"),
                subscribe(json!({"channel": list_channel(), "snapshot": true}))
            ),
            &[],
        )
        .await;
        probe.head().await;
    }
    probe.close().await;

    let query =
        format!("token={}&{}", token(&app, "reader"), subscribe(json!({"channel": list_channel(), "snapshot": true})));
    let mut s = Stream::open(p.ws, &query, &[]).await;
    let (status, headers) = s.head().await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let header = |n: &str| headers.iter().find(|h| h.0 == n).map(|h| h.1.clone()).unwrap_or_default();
    assert!(header("content-type").starts_with("text/event-stream"), "{headers:?}");
    assert_eq!(header("cache-control"), "no-cache, no-transform");
    assert_eq!(header("x-accel-buffering"), "no");
    assert_eq!(header("access-control-allow-origin"), "*");
    let ready = s.event().await;
    assert_eq!(ready.frame["event"], "ready", "{:?}", ready.frame);
    assert!(ready.id.is_none(), "no cursor before a subscription is whole");
    // One stream open: this one (the probes are closed, which the server notices by itself).
    let started = std::time::Instant::now();
    while p.metric("nexxus_sockets_event_streams") != 1.0 {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", p.metric("nexxus_sockets_event_streams"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (end, before) = s.until("snapshot_end").await;
    assert_eq!(before[0].frame["event"], "subscribed");
    let snapshot: Vec<&Value> = before
        .iter()
        .filter(|e| e.frame["event"] == "snapshot")
        .flat_map(|e| e.frame["data"]["objects"].as_array().unwrap())
        .collect();
    assert_eq!(snapshot.len(), 2, "{before:?}");
    assert!(end.frame["data"]["cursor"].as_str().is_some_and(|c| c.starts_with("1.")));

    post(&p, json!([create(&app, Some("t3"), "three")]));
    let (live, _) = s.until("message").await;
    assert_eq!(created(&[live]), ["three"]);
    assert!(s.last_id.as_deref().is_some_and(|c| c.starts_with("1.")), "events carry cursors once whole");
    // Heartbeats (a comment and an id, no data) move the resume point too, with nothing sent.
    let before_beat = s.last_id.clone();
    let beat = s.heartbeat().await;
    assert!(beat.starts_with("1."), "{beat}");
    assert_ne!(Some(beat), before_beat);
    post(&p, json!([create(&app, Some("t4"), "four")]));
    s.until("message").await;
    let resume_from = s.last_id.clone().expect("an id");
    s.close().await;

    // Changed while away: one update, one delete, one create.
    post(&p, json!([increment(&app, "t1")]));
    post(&p, json!([{"op": "delete", "application_id": app, "object": {"model": "task", "id": "t2"}}]));
    post(&p, json!([create(&app, Some("t5"), "five")]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last_event_id = format!("Last-Event-ID: {resume_from}");
    let mut again = Stream::open(p.ws, &query, &[&last_event_id]).await;
    again.head().await;
    let (end, before) = again.until("catchup_end").await;
    assert!(end.frame["data"]["cursor"].as_str().is_some());
    let pages: Vec<&Event> = before.iter().filter(|e| e.frame["event"] == "catchup").collect();
    let objects: Vec<String> = pages
        .iter()
        .flat_map(|e| e.frame["data"]["objects"].as_array().unwrap())
        .map(|o| o["object"]["id"].as_str().unwrap().to_string())
        .collect();
    let deleted: Vec<String> = pages
        .iter()
        .flat_map(|e| e.frame["data"]["deleted"].as_array().unwrap())
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect();
    assert!(objects.contains(&"t1".to_string()) && objects.contains(&"t5".to_string()), "{objects:?}");
    assert_eq!(deleted, ["t2"]);
    assert!(before.iter().all(|e| e.frame["event"] != "snapshot"), "a resume, not a snapshot");
    again.close().await;

    // A cursor this server never issued: RESYNC_REQUIRED, then a snapshot of the subscription.
    let mut foreign = Stream::open(p.ws, &query, &["Last-Event-ID: 9.123"]).await;
    foreign.head().await;
    let (end, before) = foreign.until("snapshot_end").await;
    let refused = before.iter().find(|e| e.frame["event"] == "error").expect("a refusal first");
    assert_eq!(refused.frame["data"]["code"], "RESYNC_REQUIRED");
    assert_eq!(end.frame["data"]["count"], 4, "t1, t3, t4, t5");
    foreign.close().await;
    p.stop();
}

#[tokio::test]
async fn event_streams_are_refused_with_a_reason_and_keep_the_websocket_rules() {
    let (_dir, p, app) = start_app().await;
    let refused = |query: String, headers: Vec<String>| {
        let port = p.ws;
        async move {
            let mut s = Stream::open(port, &query, &headers.iter().map(String::as_str).collect::<Vec<_>>()).await;
            let (status, _) = s.head().await;
            let body = s.line().await.unwrap_or_default();
            s.close().await;
            (status, body)
        }
    };
    let (status, body) = refused(subscribe(json!({"channel": list_channel()})), vec![]).await;
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    assert!(body.starts_with("UNAUTHORIZED") && body.contains("token is required"), "{body}");
    let (status, body) = refused("token=nope".into(), vec![]).await;
    assert!(status.starts_with("HTTP/1.1 401") && body.starts_with("UNAUTHORIZED"), "{status} {body}");
    let (status, body) = refused(format!("token={}&subscribe=%7Bnope", token(&app, "d")), vec![]).await;
    assert!(status.starts_with("HTTP/1.1 400") && body.contains("subscribe 1"), "{status} {body}");
    // The token may come as a bearer header instead.
    let bearer = format!("Authorization: Bearer {}", token(&app, "d"));
    let mut s = Stream::open(p.ws, "", &[&bearer]).await;
    assert!(s.head().await.0.starts_with("HTTP/1.1 200"));
    assert_eq!(s.event().await.frame["event"], "ready");
    s.close().await;

    // Another user's channel: FORBIDDEN inside the stream, which goes on for the rest.
    let other = json!({"model": "task", "context": "c1", "user": "someone-else"});
    let query = format!(
        "token={}&{}&{}",
        token(&app, "d2"),
        subscribe(json!({"channel": other})),
        subscribe(json!({"channel": list_channel()}))
    );
    let mut s = Stream::open(p.ws, &query, &[]).await;
    s.head().await;
    let (ok, before) = s.until("subscribed").await;
    let forbidden = before.iter().find(|e| e.frame["event"] == "error").expect("a refusal");
    assert_eq!(forbidden.frame["data"]["code"], "FORBIDDEN");
    assert!(ok.frame["data"]["channel"].as_str().is_some());
    post(&p, json!([create(&app, None, "live")]));
    let (live, _) = s.until("message").await;
    assert_eq!(created(&[live]), ["live"]);
    s.close().await;
    p.stop();
}
