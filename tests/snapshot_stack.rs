//! Snapshot and resume in the distributed layout: every role its own process over Kafka, the
//! store on Cassandra, two sockets transports. Clients subscribe with a snapshot while changes
//! flow; one transport is SIGKILLed; its clients reconnect, half to the other index and half to
//! the restarted one, and resume from their cursors. Every client ends holding exactly the
//! stored state, with no patch left unapplied.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::stack::{pipeline_topics, TestStack};
use common::view::{Seen, View};
use common::ws::Client;
use futures::StreamExt;
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};
use tokio::net::TcpStream;

const SECRET: &str = "secret-of-the-resume-app";
const OBJECTS: usize = 30;
const CLIENTS: usize = 24;

fn token(app: &str, device: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    jwt::sign(&Claims { application_id: app.into(), device_id: device.into(), exp, user_id: None }, SECRET)
}

fn micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

async fn listen(stack: &TestStack, index: u32, port: u16) -> common::Reaper {
    let proc = stack.start("sockets_transport", index, &[("TP_SCKT_PORT", port.to_string())]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "sockets_transport-{index} did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proc
}

fn channel() -> Value {
    json!({"model": "task", "context": "c1"})
}

/// Subscribes with `sync` and applies frames until its end; the answer.
async fn sync(c: &mut Client, view: &mut View, sync: (&str, Value)) -> Value {
    let mut data = json!({"channel": channel()});
    data[sync.0] = sync.1;
    c.send(json!({"event": "subscribe", "data": data})).await;
    loop {
        let (frame, len) = c.sized().await;
        match frame["event"].as_str() {
            Some("subscribed") => view.key = frame["data"]["channel"].as_str().unwrap().to_string(),
            Some("error") | None => return frame,
            _ => {
                if matches!(view.apply(&frame, len), Seen::SnapshotEnd | Seen::CatchupEnd) {
                    return json!({"event": "subscribed"});
                }
            }
        }
    }
}

/// One client: subscribes with a snapshot on `first`, reads until its transport dies, then
/// reconnects to `then` and resumes, and reads until `quiet` passes without a frame after
/// `until`.
async fn client(app: String, n: usize, first: u16, then: u16, until: Instant) -> View {
    let device = format!("resumer{n}");
    let mut c = Client::ready(first, &token(&app, &device)).await;
    let mut view = View::default();
    let answer = sync(&mut c, &mut view, ("snapshot", json!(true))).await;
    assert_eq!(answer["event"], "subscribed", "{answer}");
    // Until the connection breaks (the transport is killed).
    while let Some(Ok(m)) = c.0.next().await {
        if let Ok(text) = m.into_text() {
            view.apply(&serde_json::from_str(&text).unwrap_or_default(), text.len());
        }
    }
    let cursor = view.cursor.clone().expect("a cursor before the transport died");
    let started = Instant::now();
    let mut c = loop {
        match tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{then}/?token={}", token(&app, &device))).await {
            Ok((ws, _)) => {
                let mut c = Client(ws);
                if c.event().await["event"] == "ready" {
                    break c;
                }
            }
            Err(_) => assert!(started.elapsed() < Duration::from_secs(90), "no transport to reconnect to"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let answer = sync(&mut c, &mut view, ("resume", json!(cursor))).await;
    assert_eq!(answer["event"], "subscribed", "client {n}: {answer}");
    // Until the stream is over and whatever was on its way arrived (pings and cursor frames keep
    // coming, so read to a deadline rather than until quiet).
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(left, c.0.next()).await {
            if let Ok(text) = m.into_text() {
                view.apply(&serde_json::from_str(&text).unwrap_or_default(), text.len());
            }
        }
    }
    view
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_resume_after_their_sockets_transport_is_killed() {
    let mut topics = pipeline_topics(2);
    topics.extend([("sockets_transport-0", 1), ("sockets_transport-1", 1)]);
    let env = [("TP_SCKT_HOST", "127.0.0.1"), ("TP_SNAPSHOT_SETTLE_MS", "1000"), ("TP_SCKT_PING_MS", "2000")];
    let stack = TestStack::new("snap-resume", true, &env, &topics).await;
    let app = format!("{}res", stack.unique);
    common::app_put(&stack.env, &json!({"id": app, "jwt_secret": SECRET, "schema": {"task": {}}}));
    let _procs = ["aggregation", "write", "track", "transport_manager"].map(|r| stack.start(r, 0, &[]));
    let (p0, p1) = (common::free_port(), common::free_port());
    let s0 = listen(&stack, 0, p0).await;
    let _s1 = listen(&stack, 1, p1).await;

    let mut votes: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..OBJECTS {
        let id = format!("o{i:02}");
        let object = json!({"id": id, "type": "task", "context_id": "c1", "votes": 0});
        stack
            .send(
                "aggregation",
                &id,
                &[json!({"op": "create", "application_id": app, "timestamp": micros(), "object": object})],
            )
            .await;
        votes.insert(id, 0);
    }

    // Changes flow for the whole test; the transport dies in the middle of them.
    let stream_for = Duration::from_secs(16);
    let until = Instant::now() + stream_for + Duration::from_secs(8);
    let mut clients = Vec::new();
    for n in 0..CLIENTS {
        let then = if n % 2 == 0 { p1 } else { p0 };
        clients.push(tokio::spawn(client(app.clone(), n, p0, then, until)));
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let started = Instant::now();
    let mut s0 = Some(s0);
    let mut restarted = None;
    let mut round = 0u64;
    while started.elapsed() < stream_for {
        round += 1;
        for i in (round as usize % 3..OBJECTS).step_by(3) {
            let id = format!("o{i:02}");
            let inc = json!({"op": "update", "application_id": app, "timestamp": micros(),
                "patches": [{"op": "increment", "path": format!("task/{id}/votes"), "value": 1}]});
            stack.send("aggregation", &id, &[inc]).await;
            *votes.get_mut(&id).unwrap() += 1;
        }
        if started.elapsed() > Duration::from_secs(4) {
            if let Some(mut killed) = s0.take() {
                let _ = killed.0.kill(); // SIGKILL
                let _ = killed.0.wait();
                // The killed index comes back on the same port while changes flow: half the
                // clients reconnect to it, the other half to index 1.
                restarted = Some(stack.start("sockets_transport", 0, &[("TP_SCKT_PORT", p0.to_string())]));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(restarted.is_some(), "the transport was killed during the stream");
    let want: BTreeMap<String, Value> = votes.iter().map(|(id, v)| (id.clone(), json!(v))).collect();
    let (mut duplicates, mut applied, mut sync_bytes, mut delta_bytes) = (0, 0, 0, 0);
    for (n, client) in clients.into_iter().enumerate() {
        let view = client.await.unwrap();
        assert_eq!(view.gaps(), 0, "client {n} kept patches no state covered");
        assert_eq!(view.field("votes"), want, "client {n}'s final view");
        (duplicates, applied) = (duplicates + view.duplicates, applied + view.applied);
        (sync_bytes, delta_bytes) = (sync_bytes + view.sync_bytes, delta_bytes + view.delta_bytes);
    }
    eprintln!(
        "{CLIENTS} clients: {applied} entries applied, {duplicates} received again and dropped by version; \
         {sync_bytes} bytes of snapshots and catch-ups, {delta_bytes} of deltas"
    );
    stack.finish().await;
}
