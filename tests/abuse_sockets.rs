//! Hostile and careless WebSocket clients against a real `-t all` process (in-process queue,
//! SQLite, in-memory registry): frame and subscription floods, half-sent handshakes, clients
//! that write but never read, reads beyond the ACLs, forged and mutated tokens. After each
//! attack the process is alive and a legitimate client of another application still gets its
//! deliveries.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::all::{log_of, start_with, url_encode, Process};
use common::ws::Client;
use futures::SinkExt;
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "abuse-sockets-test-secret";

fn unique_app(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("ab{}_{}_{name}", nanos % 1_000_000_000_000, std::process::id())
}

/// `item` is open to every device (read_acl 0, as existing applications declare), `task` is
/// author-only, `note` for authenticated users, `secret` for admins only.
fn app_doc(app: &str) -> Value {
    let parent = json!([{"parentModel": "list"}]);
    json!({"id": app, "jwt_secret": SECRET, "schema": {
        "list": {},
        "item": {"belongsTo": parent, "read_acl": 0},
        "task": {"belongsTo": parent, "read_acl": 8, "author_fields": ["owner_id"]},
        "note": {"belongsTo": parent, "read_acl": 2},
        "secret": {"belongsTo": parent, "read_acl": 4}}})
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(app: &str, device: &str, user: Option<&str>) -> String {
    let claims = Claims {
        application_id: app.into(),
        device_id: device.into(),
        exp: now() + 600,
        user_id: user.map(String::from),
    };
    jwt::sign(&claims, SECRET)
}

fn list(model: &str) -> Value {
    json!({"model": model, "parent": {"model": "list", "id": "l1"}})
}

fn create(app: &str, model: &str, id: &str, extra: Value) -> Value {
    let mut object = json!({"type": model, "id": id, "list_id": "l1", "title": id});
    if let (Value::Object(o), Value::Object(e)) = (&mut object, extra) {
        o.extend(e);
    }
    json!({"op": "create", "application_id": app, "object": object})
}

/// A legitimate client of its own application, subscribed to the open `item` list channel.
async fn victim(p: &Process) -> (String, Client) {
    let app = unique_app("victim");
    p.put_app(&app_doc(&app));
    let mut c = Client::ready(p.ws, &token(&app, "v1", None)).await;
    assert_eq!(c.subscribe(list("item"), None).await["event"], "subscribed");
    (app, c)
}

/// The victim still gets a fresh change, within `within`; returns how long it took.
async fn still_served(p: &Process, app: &str, c: &mut Client, within: Duration) -> Duration {
    let id = format!("i{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos());
    let sent = Instant::now();
    p.post_ok("/events", &create(app, "item", &id, json!({})));
    let frame = tokio::time::timeout(within, c.event()).await.expect("the victim's delivery in time");
    assert_eq!(frame["data"]["new"][0]["object"]["id"], id, "{frame}");
    sent.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_flood_gets_limit_exceeded_then_1008_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start_with(dir.path(), None, &[("TP_SCKT_FRAMES_PER_SEC", "20")], None).await;
    let (victim_app, mut v) = victim(&p).await;
    let app = unique_app("flood");
    p.put_app(&app_doc(&app));
    let mut c = Client::ready(p.ws, &token(&app, "f1", None)).await;
    // 2,000 distinct filtered subscriptions as fast as the socket takes them.
    for i in 0..2_000 {
        let frame =
            json!({"event": "subscribe", "data": {"channel": list("item"), "filters": {"and": [{"is": {"n": i}}]}}});
        if c.0.send(Message::Text(frame.to_string().into())).await.is_err() {
            break;
        }
    }
    let (seen, close) = c.until_closed().await;
    assert_eq!(close, Some(1008), "{seen:?}");
    let accepted = seen.get("subscribed").copied().unwrap_or(0);
    // A burst of 40, plus what refilled at 20 a second while the flood lasted.
    assert!((40..=80).contains(&accepted), "{seen:?}");
    assert!(seen.get("LIMIT_EXCEEDED").copied().unwrap_or(0) >= 1, "{seen:?}");
    let closed_at = Instant::now();
    p.alive();
    still_served(&p, &victim_app, &mut v, Duration::from_secs(5)).await;

    // Reconnecting buys no fresh burst: the bucket is the device's, and only refills.
    let mut again = Client::ready(p.ws, &token(&app, "f1", None)).await;
    for i in 0..30 {
        let filters = json!({"and": [{"is": {"again": i}}]});
        again.send(json!({"event": "subscribe", "data": {"channel": list("item"), "filters": filters}})).await;
    }
    let mut accepted_again = 0;
    for _ in 0..30 {
        let e = again.event().await;
        accepted_again += usize::from(e["event"] == "subscribed");
    }
    // What refilled until the last answer: the bucket keeps refilling while the frames are served.
    let refilled = (closed_at.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!(accepted_again < 30 && accepted_again <= refilled + 2, "{accepted_again} accepted, {refilled} refilled");

    // A client that backs off after LIMIT_EXCEEDED keeps its connection.
    let mut polite = Client::ready(p.ws, &token(&app, "f2", None)).await;
    for _ in 0..41 {
        polite.send(json!({"event": "subscribe", "data": {"channel": list("item")}})).await;
    }
    let mut codes = Vec::new();
    for _ in 0..41 {
        let e = polite.event().await;
        codes.push(e["data"]["code"].as_str().or(e["event"].as_str()).unwrap_or("?").to_string());
    }
    assert!(codes.iter().any(|c| c == "LIMIT_EXCEEDED"), "{codes:?}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(polite.subscribe(list("item"), None).await["event"], "subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_handshakes_do_not_keep_a_legitimate_client_out() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [("TP_SCKT_MAX_HANDSHAKES", "32"), ("TP_SCKT_HANDSHAKE_TIMEOUT_MS", "400")];
    // Few enough files that 300 half-open connections accepted at once would exhaust them.
    let mut p = start_with(dir.path(), None, &extra, Some(200)).await;
    let (victim_app, mut v) = victim(&p).await;

    let mut attackers = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", p.ws)).await.unwrap();
        s.write_all(b"GET /?token=x HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n").await.unwrap();
        attackers.push(s);
    }
    // The established client is served during the flood.
    still_served(&p, &victim_app, &mut v, Duration::from_secs(5)).await;
    // A new client waits behind the flood in the accept queue, and gets in once the openings
    // ahead of it time out: 300 / 32 × 0.4 s, about 4 s.
    let started = Instant::now();
    let (app, mut late) =
        tokio::time::timeout(Duration::from_secs(12), victim(&p)).await.expect("served despite the flood");
    assert!(started.elapsed() < Duration::from_secs(9), "took {:?}", started.elapsed());
    still_served(&p, &app, &mut late, Duration::from_secs(5)).await;
    assert!(p.metric("nexxus_sockets_handshake_timeouts_total") >= 32.0);
    drop(attackers);
    p.alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_sigterm_still_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Frame rate unbounded here: only the write bound may close the reader that stopped.
    let extra = [("TP_SCKT_PING_MS", "1000"), ("TP_SCKT_FRAMES_PER_SEC", "1000000")];
    let mut p = start_with(dir.path(), None, &extra, None).await;
    let (victim_app, mut v) = victim(&p).await;
    let app = unique_app("deaf");
    p.put_app(&app_doc(&app));

    // Each frame is answered with an error that quotes it: about 1 KiB back per frame.
    let junk = json!({"event": "x".repeat(1_000)}).to_string();
    let ws_port = p.ws;
    let deaf = |device: &'static str| {
        let (port, t, junk) = (ws_port, token(&app, device, None), junk.clone());
        tokio::spawn(async move {
            let mut c = Client::with_small_buffer(port, &t, 4_096).await;
            for _ in 0..50_000 {
                let send = c.0.send(Message::Text(junk.clone().into()));
                if !matches!(tokio::time::timeout(Duration::from_secs(5), send).await, Ok(Ok(()))) {
                    break;
                }
            }
            // Held, unread, until the test ends.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(c);
        })
    };
    let first = deaf("deaf1");
    common::wait_until(Duration::from_secs(20), "the deaf client closed for its stuck write", || {
        p.metric("nexxus_sockets_write_timeouts_total") >= 1.0
    })
    .await;
    p.alive();
    still_served(&p, &victim_app, &mut v, Duration::from_secs(5)).await;

    // Another one, stuck in a write when SIGTERM comes: the process exits within a couple of
    // seconds, not the 10 s grace.
    let second = deaf("deaf2");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pid = nix::unistd::Pid::from_raw(p.reaper.0.id() as i32);
    let signalled = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut code = None;
    while signalled.elapsed() < Duration::from_secs(8) {
        if let Some(status) = p.reaper.0.try_wait().unwrap() {
            code = status.code();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "exit after SIGTERM: {}", log_of(dir.path()));
    assert!(took < Duration::from_millis(3_000), "SIGTERM took {took:?}");
    // The victim was told the server is going away.
    assert_eq!(v.close_code().await, Some(1001));
    first.abort();
    second.abort();
}

async fn refused(c: &mut Client, channel: Value) -> String {
    let e = c.subscribe(channel.clone(), None).await;
    assert_eq!(e["event"], "error", "{channel}: {e}");
    e["data"]["code"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_acl_is_enforced_on_subscribe_snapshot_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start_with(dir.path(), None, &[], None).await;
    let app = unique_app("acl");
    p.put_app(&app_doc(&app));
    let mut u1 = Client::ready(p.ws, &token(&app, "d1", Some("u1"))).await;
    let by_user =
        |model: &str, user: &str| json!({"model": model, "parent": {"model": "list", "id": "l1"}, "user": user});

    // The built-in user model: own object only.
    assert_eq!(refused(&mut u1, json!({"model": "user"})).await, "FORBIDDEN");
    assert_eq!(refused(&mut u1, json!({"model": "user", "id": "u2"})).await, "FORBIDDEN");
    assert_eq!(u1.subscribe(json!({"model": "user", "id": "u1"}), None).await["event"], "subscribed");
    // Author-only: the device's own user's channels only.
    assert_eq!(refused(&mut u1, list("task")).await, "FORBIDDEN");
    assert_eq!(refused(&mut u1, json!({"model": "task", "id": "t1"})).await, "FORBIDDEN");
    assert_eq!(refused(&mut u1, by_user("task", "u2")).await, "FORBIDDEN");
    assert_eq!(u1.subscribe(by_user("task", "u1"), None).await["event"], "subscribed");
    // Admin-only: no device. Authenticated-only: a token with a user.
    assert_eq!(refused(&mut u1, list("secret")).await, "FORBIDDEN");
    assert_eq!(u1.subscribe(list("note"), None).await["event"], "subscribed");
    let mut anon = Client::ready(p.ws, &token(&app, "d0", None)).await;
    assert_eq!(refused(&mut anon, list("note")).await, "FORBIDDEN");
    assert_eq!(anon.subscribe(list("item"), None).await["event"], "subscribed");
    // Models of the schema only (the device record key and undeclared parents included).
    assert_eq!(refused(&mut anon, json!({"model": "devices", "id": "d1"})).await, "BAD_REQUEST");
    assert_eq!(
        refused(&mut anon, json!({"model": "item", "parent": {"model": "nope", "id": "x"}})).await,
        "BAD_REQUEST"
    );

    // Snapshots go through the same door.
    let auth = format!("Bearer {}", token(&app, "d1", Some("u1")));
    let get = |channel: Value| {
        let path = format!("/objects?channel={}", url_encode(&channel.to_string()));
        p.request("GET", &path, &[("Authorization", &auth)], &Value::Null).0
    };
    assert_eq!(get(json!({"model": "user", "id": "u2"})), 403);
    assert_eq!(get(json!({"model": "task", "id": "t2"})), 403);
    assert_eq!(get(json!({"model": "item", "id": "i1"})), 200);

    // A subscription made behind the socket's back (track) to the whole author-only list
    // still carries nothing: deliveries are checked per channel.
    let track = json!({"op": "subscribe", "application_id": app, "device_id": "d0", "channel": list("task")});
    p.post_ok("/track", &track);
    p.post_ok("/events", &create(&app, "task", "t-mine", json!({"user_id": "u1"})));
    p.post_ok("/events", &create(&app, "task", "t-theirs", json!({"user_id": "u2"})));
    p.post_ok("/events", &create(&app, "item", "i-open", json!({"user_id": "u2"})));
    let got = u1.event().await;
    assert_eq!(got["data"]["new"][0]["object"]["id"], "t-mine", "{got}");
    let got = anon.event().await;
    assert_eq!(got["data"]["new"][0]["object"]["id"], "i-open", "{got}");
    assert_eq!(u1.silent(Duration::from_secs(1)).await, Ok(()), "u1 got what it may not read");
    assert_eq!(anon.silent(Duration::from_millis(500)).await, Ok(()), "d0 got what it may not read");

    // The author's own snapshot of an author-only list: its user-scoped channel, its objects only.
    let mine = json!({"model": "task", "user": "u1", "parent": {"model": "list", "id": "l1"}});
    let path = format!("/objects?channel={}", url_encode(&mine.to_string()));
    let started = Instant::now();
    loop {
        let (code, body) = p.request("GET", &path, &[("Authorization", &auth)], &Value::Null);
        assert_eq!(code, 200, "{body}");
        let ids: Vec<&str> =
            body["objects"].as_array().unwrap().iter().filter_map(|o| o["object"]["id"].as_str()).collect();
        if !ids.is_empty() {
            assert_eq!(ids, ["t-mine"], "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "t-mine never stored: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(list("task")), 403, "the whole author-only list is not the author's to read");
    p.alive();
}

/// A token with arbitrary claims, signed with the application's key.
fn signed(claims: &Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{h}.{c}").as_bytes());
    format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_mutated_tokens_all_get_the_same_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start_with(dir.path(), None, &[("TP_JWT_MAX_LIFETIME_SECS", "3600")], None).await;
    let (victim_app, mut v) = victim(&p).await;
    let app = unique_app("jwt");
    p.put_app(&app_doc(&app));
    let claims = |device: &str, extra: Value| {
        let mut c = json!({"application_id": app, "device_id": device, "exp": now() + 600});
        if let (Value::Object(o), Value::Object(e)) = (&mut c, extra) {
            o.extend(e);
        }
        c
    };
    let good = token(&app, "d1", None);
    let mut bad = vec![
        signed(&claims("d:1", json!({}))),
        signed(&claims("d 1", json!({}))),
        signed(&claims("d\n1", json!({}))),
        signed(&claims("d1", json!({"user_id": "u:2"}))),
        signed(&claims("d1", json!({"exp": now() + 7_200}))),
        signed(&claims("d1", json!({"iat": now() - 7_000, "exp": now() + 600}))),
        signed(&claims("d1", json!({"nbf": now() + 300}))),
        signed(&json!({"application_id": "no-such-app", "device_id": "d1", "exp": now() + 600})),
        jwt::sign(
            &Claims { application_id: app.clone(), device_id: "d1".into(), exp: now() + 600, user_id: None },
            "wrong",
        ),
    ];
    // Bit flips and truncations of a good token.
    for i in (0..good.len()).step_by(3) {
        let mut b = good.clone().into_bytes();
        b[i] ^= 0x04;
        bad.push(String::from_utf8_lossy(&b).into_owned());
        bad.push(good[..i].to_string());
    }
    for t in &bad {
        if t == &good {
            continue;
        }
        let url_safe: String = url_encode(t);
        let mut c = Client::connect(p.ws, Some(&url_safe)).await;
        let e = c.event().await;
        assert_eq!(e["data"]["code"], "UNAUTHORIZED", "{t:?}: {e}");
        assert_eq!(e["data"]["message"], "invalid token", "one answer for every invalid token: {t:?}");
        assert_eq!(c.close_code().await, Some(4001));
    }
    // Expired (and properly signed) stays distinct.
    let mut c = Client::connect(p.ws, Some(&signed(&claims("d1", json!({"exp": now() - 5}))))).await;
    assert_eq!(c.event().await["data"]["code"], "TOKEN_EXPIRED");
    assert_eq!(c.close_code().await, Some(4002));
    Client::ready(p.ws, &good).await;
    p.alive();
    still_served(&p, &victim_app, &mut v, Duration::from_secs(5)).await;
}

/// The registry's bounds reach a socket client as `LIMIT_EXCEEDED` (not `UNAVAILABLE`), leave
/// nothing of the refused subscribe behind, and do not cost the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_limits_answer_limit_exceeded_on_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let extra = [("TP_MAX_DEVICE_SUBSCRIPTIONS", "3"), ("TP_MAX_CHANNEL_FILTERS", "2")];
    let mut p = start_with(dir.path(), None, &extra, None).await;
    let (victim_app, mut v) = victim(&p).await;
    let app = unique_app("limits");
    p.put_app(&app_doc(&app));
    let mut c = Client::ready(p.ws, &token(&app, "d1", Some("u1"))).await;
    let filtered = |n: u32| json!({"and": [{"is": {"n": n}}]});
    assert_eq!(c.subscribe(list("item"), Some(filtered(1))).await["event"], "subscribed");
    assert_eq!(c.subscribe(list("item"), Some(filtered(2))).await["event"], "subscribed");
    // A third distinct filter on the same channel: over TP_MAX_CHANNEL_FILTERS.
    let refused = c.subscribe(list("item"), Some(filtered(3))).await;
    assert_eq!(refused["data"]["code"], "LIMIT_EXCEEDED", "{refused}");
    // Another device may reuse a filter already on the channel.
    let mut other = Client::ready(p.ws, &token(&app, "d2", None)).await;
    assert_eq!(other.subscribe(list("item"), Some(filtered(1))).await["event"], "subscribed");
    // Three subscriptions per device, then the fourth is refused; a held one is always fine.
    assert_eq!(c.subscribe(list("note"), None).await["event"], "subscribed");
    let refused = c.subscribe(list("item"), None).await;
    assert_eq!(refused["data"]["code"], "LIMIT_EXCEEDED", "{refused}");
    assert_eq!(c.subscribe(list("note"), None).await["event"], "subscribed");
    // The refused subscription was not kept: nothing arrives on it.
    p.post_ok("/events", &create(&app, "item", "i1", json!({"n": 7})));
    assert!(c.silent(Duration::from_millis(500)).await.is_ok());
    p.alive();
    still_served(&p, &victim_app, &mut v, Duration::from_secs(5)).await;
}
