//! `POST /broadcast` against `-t all` with real WebSocket clients: an ephemeral object reaches
//! the subscribers a create of it would reach (filters, user scope, read ACL), or every
//! connected device of its application, and is never stored.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::all::*;
use common::ws::Client;
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};

const QUIET: Duration = Duration::from_millis(700);

fn user_token(app: &str, device: &str, user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    jwt::sign(&Claims { application_id: app.into(), device_id: device.into(), exp, user_id: Some(user.into()) }, SECRET)
}

/// The demo schema plus `note`, readable by its author only.
fn doc(app: &str) -> Value {
    let mut doc = app_doc(app);
    doc["schema"]["note"] = json!({"read_acl": 8, "write_acl": 0});
    doc
}

/// The next frame, which must be a broadcast: (its object, its subscriptions).
async fn broadcast(c: &mut Client) -> (Value, Vec<String>) {
    let frame = c.event().await;
    assert_eq!(frame["event"], "broadcast", "{frame}");
    let subs = frame["data"]["subscriptions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().into()).collect();
    (frame["data"]["object"].clone(), subs)
}

async fn subscribed(c: &mut Client, channel: Value, filters: Option<Value>) -> String {
    let answer = c.subscribe(channel, filters).await;
    assert_eq!(answer["event"], "subscribed", "{answer}");
    answer["data"]["channel"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_broadcast_reaches_whom_a_create_would_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("broadcast");
    let p = start(dir.path(), None, &[("TP_INGRESS_TOKEN", "in"), ("TP_ADMIN_TOKEN", "adm")]).await;
    let (auth, admin) = ([("Authorization", "Bearer in")], [("Authorization", "Bearer adm")]);
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &admin, &doc(&app)).0, 200);
    let post = |body: Value| p.request("POST", "/broadcast", &auth, &body);

    let mut plain = Client::ready(p.ws, &token(&app, "plain")).await;
    let list = subscribed(&mut plain, list_channel(), None).await;
    let mut open = Client::ready(p.ws, &token(&app, "open")).await;
    let open_key = subscribed(&mut open, list_channel(), Some(json!({"and": [{"is": {"status": "open"}}]}))).await;
    let mut closed = Client::ready(p.ws, &token(&app, "closed")).await;
    subscribed(&mut closed, list_channel(), Some(json!({"and": [{"is": {"status": "closed"}}]}))).await;
    let mut other = Client::ready(p.ws, &token(&app, "other")).await;
    subscribed(&mut other, json!({"model": "task", "parent": {"model": "list", "id": "l2"}}), None).await;
    let mut u1 = Client::ready(p.ws, &user_token(&app, "u1-phone", "u1")).await;
    let u1_notes = subscribed(&mut u1, json!({"model": "note", "context": "c1", "user": "u1"}), None).await;
    let mut u2 = Client::ready(p.ws, &user_token(&app, "u2-phone", "u2")).await;
    subscribed(&mut u2, json!({"model": "note", "context": "c1", "user": "u2"}), None).await;

    // Unauthenticated, malformed, unknown model, on no channel, or app-wide for a private model: 4xx, reasons.
    let cursor = json!({"type": "task", "list_id": "l1", "status": "open", "typing": "u9"});
    let request = json!({"application_id": app, "object": cursor});
    assert_eq!(p.request("POST", "/broadcast", &[], &request).0, 401);
    let (code, body) = post(json!([
        {"application_id": app},
        {"application_id": app, "object": {"type": "nope", "list_id": "l1"}},
        {"application_id": app, "object": {"type": "task", "title": "nowhere"}},
        {"application_id": app, "to": "application", "object": {"type": "note"}},
        {"application_id": "nobody", "object": cursor},
    ]));
    assert_eq!(code, 400, "{body}");
    let reasons: Vec<&str> =
        body["rejected"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    for (reason, want) in reasons.iter().zip([
        "`object` is missing",
        "not in the application's schema",
        "names no channel",
        "read_acl",
        "unknown application",
    ]) {
        assert!(reason.contains(want), "{reason} / {want}");
    }
    assert_eq!(reasons.len(), 5);

    // On the list channel: its plain subscriber, and the filtered one whose filter matches.
    assert_eq!(post(request.clone()), (202, json!({"accepted": 1})));
    assert_eq!(broadcast(&mut plain).await, (cursor.clone(), vec![list.clone()]));
    assert_eq!(broadcast(&mut open).await, (cursor.clone(), vec![open_key]));
    for c in [&mut closed, &mut other, &mut u1, &mut u2] {
        assert_eq!(c.silent(QUIET).await, Ok(()), "not on its channel, or its filter does not match");
    }

    // A user-scoped channel of an author-only model: its own user only.
    let note = json!({"type": "note", "context_id": "c1", "user_id": "u1", "text": "typing"});
    assert_eq!(post(json!({"application_id": app, "object": note})).0, 202);
    assert_eq!(broadcast(&mut u1).await, (note, vec![u1_notes]));
    for c in [&mut u2, &mut plain, &mut other] {
        assert_eq!(c.silent(QUIET).await, Ok(()));
    }

    // To the whole application: every connected device, on no channel.
    let notice = json!({"type": "task", "list_id": "l1", "text": "maintenance at 5"});
    assert_eq!(post(json!({"application_id": app, "to": "application", "object": notice})).0, 202);
    for c in [&mut plain, &mut open, &mut closed, &mut other, &mut u1, &mut u2] {
        assert_eq!(broadcast(c).await, (notice.clone(), vec![]));
    }

    // Nothing stored: the channel's snapshot is empty, and the next create is version 1.
    assert!(snapshot(&p, &app, "plain").is_empty());
    let (code, _) = p.request("POST", "/events", &auth, &create(&app, Some("t1"), "real"));
    assert_eq!(code, 202);
    assert_eq!(deltas(&mut plain, 1).await, vec![("new".into(), "t1".into(), 1, json!("real"))]);
    assert_eq!(p.stop(), Some(0), "{}", log_of(dir.path()));
}

/// With 32 or more members on the transport the transport manager addresses the broadcast by
/// channel, and the transport narrows it for each device to the channels it holds.
#[tokio::test]
async fn a_broadcast_to_a_large_audience_is_narrowed_per_device_by_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("bcast-many");
    let p = start(dir.path(), None, &[]).await;
    p.put_app(&doc(&app));
    let open = json!({"and": [{"is": {"status": "open"}}]});
    let mut plain = Vec::new();
    for i in 0..40 {
        let mut c = Client::ready(p.ws, &token(&app, &format!("p{i}"))).await;
        subscribed(&mut c, list_channel(), None).await;
        plain.push(c);
    }
    let mut both = Client::ready(p.ws, &token(&app, "both")).await;
    let list = subscribed(&mut both, list_channel(), None).await;
    let filtered = subscribed(&mut both, list_channel(), Some(open.clone())).await;
    let mut only_filtered = Client::ready(p.ws, &token(&app, "only-filtered")).await;
    subscribed(&mut only_filtered, list_channel(), Some(open)).await;

    let cursor = json!({"type": "task", "list_id": "l1", "status": "open", "x": 7});
    p.post_ok("/broadcast", &json!({"application_id": app, "object": cursor}));
    for c in &mut plain {
        assert_eq!(broadcast(c).await, (cursor.clone(), vec![list.clone()]));
    }
    assert_eq!(broadcast(&mut both).await, (cursor.clone(), vec![list, filtered.clone()]), "once, with both channels");
    assert_eq!(broadcast(&mut only_filtered).await, (cursor, vec![filtered]));
    assert_eq!(both.silent(QUIET).await, Ok(()));
    assert!(p.metric("nexxus_transport_channel_messages_total") >= 1.0, "addressed by channel, not by device lists");
    assert_eq!(p.stop(), Some(0));
}
