//! Subscribe with a snapshot, and resume after a disconnect (`docs/protocol.md`), against `-t all`
//! on SQLite with real WebSocket clients: every channel shape, paging, the race between
//! subscribes and a stream of changes, a compacted catch-up, the resume window's edge.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::all::*;
use common::view::{Seen, View};
use common::ws::Client;
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};

const AUTH: [(&str, &str); 1] = [("Authorization", "Bearer in")];

async fn start_app(dir: &std::path::Path, extra: &[(&str, &str)]) -> (Process, String) {
    let mut env = vec![("TP_INGRESS_TOKEN", "in"), ("TP_ADMIN_TOKEN", "adm")];
    env.extend_from_slice(extra);
    let p = start(dir, None, &env).await;
    let app = unique_app("snap");
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[("Authorization", "Bearer adm")], &app_doc(&app)).0, 200);
    (p, app)
}

fn user_token(app: &str, device: &str, user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    jwt::sign(&Claims { application_id: app.into(), device_id: device.into(), exp, user_id: Some(user.into()) }, SECRET)
}

/// A task create: `(id, list, context, user, status)`.
fn task(app: &str, id: &str, list: &str, ctx: &str, user: Option<&str>, status: &str) -> Value {
    let mut object =
        json!({"type": "task", "id": id, "list_id": list, "context_id": ctx, "status": status, "votes": 0});
    if let Some(u) = user {
        object["user_id"] = json!(u);
    }
    json!({"op": "create", "application_id": app, "object": object})
}

fn replace(app: &str, id: &str, field: &str, value: Value) -> Value {
    json!({"op": "update", "application_id": app,
           "patches": [{"op": "replace", "path": format!("task/{id}/{field}"), "value": value}]})
}

fn delete(app: &str, id: &str) -> Value {
    json!({"op": "delete", "application_id": app, "object": {"model": "task", "id": id}})
}

fn post(p: &Process, events: Value) {
    let (code, body) = p.request("POST", "/events", &AUTH, &events);
    assert_eq!(code, 202, "{body}");
}

/// `GET /objects`: id → (version, object), once `done` accepts it (the pipeline is asynchronous).
async fn stored(
    p: &Process,
    app: &str,
    channel: Value,
    filters: Option<Value>,
    done: impl Fn(&BTreeMap<String, (u64, Value)>) -> bool,
) -> BTreeMap<String, (u64, Value)> {
    let mut path = format!("/objects?channel={}", url_encode(&channel.to_string()));
    if let Some(f) = filters {
        path.push_str(&format!("&filters={}", url_encode(&f.to_string())));
    }
    let bearer = format!("Bearer {}", user_token(app, "reader", "u1"));
    let started = Instant::now();
    loop {
        let (code, body) = p.request("GET", &path, &[("Authorization", &bearer)], &Value::Null);
        assert_eq!(code, 200, "{body}");
        let objects: BTreeMap<String, (u64, Value)> = body["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (o["object"]["id"].as_str().unwrap().to_string(), (o["version"].as_u64().unwrap(), o["object"].clone()))
            })
            .collect();
        if done(&objects) {
            return objects;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not stored in time: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes asking for `sync` (`("snapshot", true)` or `("resume", cursor)`) and applies
/// frames to `view` until the snapshot or catch-up ends. The answer frame.
async fn sync(c: &mut Client, view: &mut View, channel: Value, filters: Option<Value>, sync: (&str, Value)) -> Value {
    let mut data = json!({"channel": channel});
    if let Some(f) = filters {
        data["filters"] = f;
    }
    data[sync.0] = sync.1;
    c.send(json!({"event": "subscribe", "data": data})).await;
    let (answer, _) = c.sized().await;
    if answer["event"] != "subscribed" {
        return answer;
    }
    view.key = answer["data"]["channel"].as_str().unwrap().to_string();
    loop {
        let (frame, len) = c.sized().await;
        assert!(!frame.is_null(), "connection ended during a sync");
        if matches!(view.apply(&frame, len), Seen::SnapshotEnd | Seen::CatchupEnd) {
            return answer;
        }
    }
}

fn ids(view: &View) -> Vec<String> {
    view.objects.keys().cloned().collect()
}

#[tokio::test]
async fn a_snapshot_serves_every_channel_shape_and_follows_moves_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (p, app) = start_app(dir.path(), &[]).await;
    post(
        &p,
        json!([
            task(&app, "t1", "l1", "c1", Some("u1"), "open"),
            task(&app, "t2", "l1", "c1", Some("u2"), "done"),
            task(&app, "t3", "l2", "c1", None, "open"),
            task(&app, "t4", "l1", "c2", Some("u1"), "open"),
        ]),
    );
    stored(&p, &app, json!({"model": "task", "context": "c1"}), None, |o| o.len() == 3).await;
    stored(&p, &app, list_channel(), None, |o| o.len() == 3).await;

    let mut c = Client::ready(p.ws, &user_token(&app, "d1", "u1")).await;
    let open = json!({"and": [{"is": {"status": "open"}}]});
    let shapes: Vec<(Value, Option<Value>, Vec<&str>)> = vec![
        (list_channel(), None, vec!["t1", "t2", "t4"]),
        (json!({"model": "task", "context": "c1"}), None, vec!["t1", "t2", "t3"]),
        (json!({"model": "task", "context": "c1", "user": "u1"}), None, vec!["t1"]),
        (json!({"model": "task", "user": "u1", "parent": {"model": "list", "id": "l1"}}), None, vec!["t1", "t4"]),
        (json!({"model": "task", "id": "t3"}), None, vec!["t3"]),
        (json!({"model": "task", "id": "nope"}), None, vec![]),
        (list_channel(), Some(open.clone()), vec!["t1", "t4"]),
    ];
    for (channel, filters, want) in &shapes {
        let mut view = View::default();
        let answer = sync(&mut c, &mut view, channel.clone(), filters.clone(), ("snapshot", json!(true))).await;
        assert_eq!(answer["event"], "subscribed", "{channel}: {answer}");
        assert_eq!(ids(&view), *want, "{channel} {filters:?}");
        assert!(view.objects.values().all(|(v, _)| *v == 1), "versions: {:?}", view.objects);
        assert!(view.cursor.as_deref().is_some_and(|c| c.starts_with("1.")), "{:?}", view.cursor);
    }

    // t1 moves to list l2 (it leaves l1's channel), t2 is deleted, t4 is done (it leaves the filter).
    post(
        &p,
        json!([
            replace(&app, "t1", "list_id", json!("l2")),
            delete(&app, "t2"),
            replace(&app, "t4", "status", json!("done"))
        ]),
    );
    stored(&p, &app, list_channel(), None, |o| o.keys().eq(["t4"])).await;
    let mut fresh = Client::ready(p.ws, &user_token(&app, "d2", "u1")).await;
    for (channel, filters, want) in [
        (list_channel(), None, vec!["t4"]),
        (json!({"model": "task", "parent": {"model": "list", "id": "l2"}}), None, vec!["t1", "t3"]),
        (list_channel(), Some(open), vec![]),
        (json!({"model": "task", "context": "c1"}), None, vec!["t1", "t3"]),
    ] {
        let mut view = View::default();
        sync(&mut fresh, &mut view, channel.clone(), filters, ("snapshot", json!(true))).await;
        assert_eq!(ids(&view), want, "{channel}");
    }
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn a_large_channel_comes_in_bounded_pages() {
    let dir = tempfile::tempdir().unwrap();
    let (p, app) = start_app(dir.path(), &[]).await;
    for batch in 0..9 {
        let events: Vec<Value> =
            (0..50).map(|i| task(&app, &format!("p{:03}", batch * 50 + i), "l1", "c1", None, "open")).collect();
        post(&p, Value::Array(events));
    }
    stored(&p, &app, list_channel(), None, |o| o.len() == 450).await;
    let mut c = Client::ready(p.ws, &token(&app, "pager")).await;
    c.send(json!({"event": "subscribe", "data": {"channel": list_channel(), "snapshot": true}})).await;
    assert_eq!(c.event().await["event"], "subscribed");
    let (mut sizes, mut seen) = (Vec::new(), Vec::new());
    let end = loop {
        let (frame, len) = c.sized().await;
        match frame["event"].as_str().unwrap() {
            "snapshot" => {
                assert!(len < 100 * 1024, "a page of {len} bytes");
                let objects = frame["data"]["objects"].as_array().unwrap();
                sizes.push(objects.len());
                seen.extend(objects.iter().map(|o| o["object"]["id"].as_str().unwrap().to_string()));
            }
            "snapshot_end" => break frame,
            other => panic!("unexpected {other}: {frame}"),
        }
    };
    assert_eq!(sizes, [200, 200, 50]);
    assert_eq!(end["data"]["count"], 450);
    let want: Vec<String> = (0..450).map(|i| format!("p{i:03}")).collect();
    assert_eq!(seen, want, "every object once, in id order");
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn subscribes_racing_a_stream_of_changes_end_with_the_stored_state() {
    let dir = tempfile::tempdir().unwrap();
    let (p, app) = start_app(dir.path(), &[("TP_SNAPSHOT_SETTLE_MS", "500")]).await;
    let p = Arc::new(p);
    let seed: Vec<Value> = (0..40).map(|i| task(&app, &format!("r{i:02}"), "l1", "c1", None, "open")).collect();
    post(&p, Value::Array(seed));
    stored(&p, &app, list_channel(), None, |o| o.len() == 40).await;

    // The stream: increments on every object, creates and deletes, for about four seconds.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (p, app, writing) = (p.clone(), app.clone(), writing.clone());
        tokio::task::spawn_blocking(move || {
            let mut votes: BTreeMap<String, i64> = (0..40).map(|i| (format!("r{i:02}"), 0)).collect();
            for round in 0..80u32 {
                let mut events = Vec::new();
                for i in (round as usize % 4..40).step_by(4) {
                    let id = format!("r{i:02}");
                    if votes.contains_key(&id) {
                        events.push(json!({"op": "update", "application_id": app,
                            "patches": [{"op": "increment", "path": format!("task/{id}/votes"), "value": 1}]}));
                        *votes.get_mut(&id).unwrap() += 1;
                    }
                }
                let new_id = format!("n{round:03}");
                events.push(task(&app, &new_id, "l1", "c1", None, "open"));
                votes.insert(new_id, 0);
                if round % 10 == 9 {
                    let gone = format!("n{:03}", round - 5);
                    events.push(delete(&app, &gone));
                    votes.remove(&gone);
                }
                post(&p, Value::Array(events));
                std::thread::sleep(Duration::from_millis(50));
            }
            writing.store(false, Ordering::SeqCst);
            votes
        })
    };

    // Clients subscribing with a snapshot at every moment of the stream, each reading until
    // the stream is over and its channel quiet.
    let mut clients = Vec::new();
    for n in 0..300u64 {
        let (ws, app, writing) = (p.ws, app.clone(), writing.clone());
        clients.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(n * 13)).await;
            let mut c = Client::ready(ws, &token(&app, &format!("racer{n}"))).await;
            let mut view = View::default();
            let answer = sync(&mut c, &mut view, list_channel(), None, ("snapshot", json!(true))).await;
            assert_eq!(answer["event"], "subscribed", "{answer}");
            while writing.load(Ordering::SeqCst) {
                if let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(200), futures::StreamExt::next(&mut c.0)).await
                {
                    let text = m.into_text().unwrap_or_default();
                    view.apply(&serde_json::from_str(&text).unwrap_or_default(), text.len());
                }
            }
            // Whatever is still on its way, the settle catch-up included.
            while let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_millis(2500), futures::StreamExt::next(&mut c.0)).await
            {
                let text = m.into_text().unwrap_or_default();
                view.apply(&serde_json::from_str(&text).unwrap_or_default(), text.len());
            }
            view
        }));
    }
    let votes = writer.await.unwrap();
    let want: BTreeMap<String, Value> = votes.iter().map(|(id, v)| (id.clone(), json!(v))).collect();
    stored(&p, &app, list_channel(), None, |o| {
        o.len() == want.len() && o.iter().all(|(id, (_, ob))| ob["votes"] == want[id])
    })
    .await;
    let (mut duplicates, mut applied) = (0, 0);
    for (n, client) in clients.into_iter().enumerate() {
        let view = client.await.unwrap();
        assert_eq!(view.gaps(), 0, "client {n} kept patches no state covered");
        assert_eq!(view.field("votes"), want, "client {n}'s final view");
        duplicates += view.duplicates;
        applied += view.applied;
    }
    eprintln!("300 subscribes racing the stream: {applied} entries applied, {duplicates} received again and dropped by version");
    if let Some(p) = Arc::into_inner(p) {
        assert_eq!(p.stop(), Some(0));
    }
}

#[tokio::test]
async fn a_resume_sends_each_changed_object_once_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TP_RESUME_OVERLAP_MS", "300"), ("TP_SNAPSHOT_SETTLE_MS", "200")];
    let (p, app) = start_app(dir.path(), &env).await;
    let ctx = list_channel();
    let open = json!({"and": [{"is": {"status": "open"}}]});
    let mut seed = vec![
        task(&app, "a", "l1", "c1", None, "open"),
        task(&app, "b", "l1", "c1", None, "open"),
        task(&app, "c", "l1", "c1", None, "done"),
        task(&app, "d", "l1", "c1", None, "open"),
        task(&app, "f", "l1", "c1", None, "open"),
    ];
    seed.extend((0..30).map(|i| task(&app, &format!("q{i:02}"), "l1", "c1", None, "open")));
    post(&p, Value::Array(seed));
    stored(&p, &app, ctx.clone(), None, |o| o.len() == 35).await;
    // Older than the overlap before the cursor: the catch-up leaves these out.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut live = Client::ready(p.ws, &token(&app, "stays")).await;
    let mut live_view = View::default();
    sync(&mut live, &mut live_view, ctx.clone(), Some(open.clone()), ("snapshot", json!(true))).await;
    let mut c = Client::ready(p.ws, &token(&app, "leaves")).await;
    let mut view = View::default();
    sync(&mut c, &mut view, ctx.clone(), Some(open.clone()), ("snapshot", json!(true))).await;
    assert_eq!(view.objects.len(), 34);
    let cursor = view.cursor.clone().unwrap();
    drop(c);

    // Offline: five increments of a, b done (leaves the filter), c open (enters), d deleted,
    // e created, f moved to another list (leaves the channel).
    let mut changes: Vec<Value> = (0..5)
        .map(|_| json!({"op": "update", "application_id": app, "patches": [{"op": "increment", "path": "task/a/votes", "value": 1}]}))
        .collect();
    changes.extend([
        replace(&app, "b", "status", json!("done")),
        replace(&app, "c", "status", json!("open")),
        delete(&app, "d"),
        task(&app, "e", "l1", "c1", None, "open"),
        replace(&app, "f", "list_id", json!("l2")),
    ]);
    post(&p, Value::Array(changes));
    let want = stored(&p, &app, ctx.clone(), Some(open.clone()), |o| {
        o.contains_key("e")
            && o.contains_key("c")
            && !o.contains_key("f")
            && o.get("a").is_some_and(|(_, a)| a["votes"] == 5)
    })
    .await;
    // The client that stayed saw every change as it happened: its bytes are what a replay costs.
    while live_view.objects.get("a").is_none_or(|(_, a)| a["votes"] != 5) || !live_view.objects.contains_key("e") {
        let (frame, len) = live.sized().await;
        live_view.apply(&frame, len);
    }

    let mut back = Client::ready(p.ws, &token(&app, "leaves")).await;
    let before = view.sync_bytes;
    let answer = sync(&mut back, &mut view, ctx.clone(), Some(open.clone()), ("resume", json!(cursor))).await;
    assert_eq!(answer["event"], "subscribed", "{answer}");
    let held: BTreeMap<String, u64> = view.objects.iter().map(|(id, (v, _))| (id.clone(), *v)).collect();
    let stored_versions: BTreeMap<String, u64> = want.iter().map(|(id, (v, _))| (id.clone(), *v)).collect();
    assert_eq!(held, stored_versions, "the resumed view is the stored one");
    assert_eq!(view.objects["a"].1["votes"], 5);
    for gone in ["b", "d", "f"] {
        assert!(view.tombstones.contains_key(gone), "{gone} reported gone: {:?}", view.tombstones);
    }
    // Compacted: a, b, c, d, e, f once each, none of the thirty unchanged objects.
    let catchup_bytes = view.sync_bytes - before;
    eprintln!("catch-up {catchup_bytes} bytes; the same changes live: {} bytes", live_view.delta_bytes);
    assert!(catchup_bytes < 4096, "the catch-up holds the six changed objects only: {catchup_bytes} bytes");
    assert!(p.stop() == Some(0));
}

#[tokio::test]
async fn a_resume_beyond_the_window_or_from_a_foreign_cursor_requires_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TP_RESUME_WINDOW_MS", "1500"), ("TP_RESUME_OVERLAP_MS", "100")];
    let (p, app) = start_app(dir.path(), &env).await;
    post(&p, json!([task(&app, "w1", "l1", "c1", None, "open")]));
    stored(&p, &app, list_channel(), None, |o| o.len() == 1).await;
    let mut c = Client::ready(p.ws, &token(&app, "edge")).await;
    let mut view = View::default();
    sync(&mut c, &mut view, list_channel(), None, ("snapshot", json!(true))).await;
    let cursor = view.cursor.clone().unwrap();

    // Within the window: a catch-up.
    let answer = sync(&mut c, &mut view, list_channel(), None, ("resume", json!(cursor))).await;
    assert_eq!(answer["event"], "subscribed", "{answer}");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    for (cursor, why) in
        [(cursor.as_str(), "older than the resume window"), ("1.abc", "not a cursor"), ("9.1", "not a cursor")]
    {
        c.send(json!({"event": "subscribe", "data": {"channel": list_channel(), "resume": cursor}})).await;
        let answer = c.event().await;
        assert_eq!(answer["event"], "error", "{answer}");
        assert_eq!(answer["data"]["code"], "RESYNC_REQUIRED", "{answer}");
        assert!(answer["data"]["message"].as_str().unwrap().contains(why), "{answer}");
        assert!(answer["data"]["channel"].as_str().unwrap().ends_with(":list:l1:task"), "{answer}");
    }
    // Still subscribed: changes keep coming.
    post(&p, json!([replace(&app, "w1", "status", json!("done"))]));
    let frame = c.event().await;
    assert_eq!(frame["event"], "message", "{frame}");
    c.send(json!({"event": "subscribe", "data": {"channel": list_channel(), "resume": "1.5", "snapshot": true}})).await;
    let answer = c.event().await;
    assert_eq!(
        (answer["data"]["code"].as_str(), answer["event"].as_str()),
        (Some("BAD_REQUEST"), Some("error")),
        "{answer}"
    );
    assert_eq!(p.stop(), Some(0));
}
