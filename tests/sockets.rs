//! The sockets transport with real WebSocket clients, real Kafka and Redis (and, for the end to
//! end case, Cassandra and every upstream role as separate processes): routing per socket
//! index, broadcasts per application, authentication and authorization, malformed and oversize
//! frames, a slow reader, the connection limit, and kill -9 then restart on the same index.

mod common;

use common::stack::{pipeline_topics, TestStack};
use common::ws::Client;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use nexxus_worker::model::members::MembersDigest;
use nexxus_worker::model::transport_message::ChannelRef;
use nexxus_worker::queue::dead_letter::Envelope;
use nexxus_worker::registry::Registry;
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const SECRET1: &str = "secret-of-app-1";
const FALLBACK: &str = "process-wide-fallback";

struct Stack {
    base: TestStack,
    /// a1 has its own jwt_secret, a2 relies on TP_JWT_SECRET.
    a1: String,
    a2: String,
}

impl std::ops::Deref for Stack {
    type Target = TestStack;
    fn deref(&self) -> &TestStack {
        &self.base
    }
}

impl Stack {
    async fn new(name: &str, with_store: bool) -> Stack {
        let mut topics = pipeline_topics(2);
        topics.extend([("sockets_transport-0", 1), ("sockets_transport-1", 1)]);
        let env = [("TP_SCKT_HOST", "127.0.0.1"), ("TP_JWT_SECRET", FALLBACK)];
        let base = TestStack::new(name, with_store, &env, &topics).await;
        let (a1, a2) = (format!("{}a1", base.unique), format!("{}a2", base.unique));
        let stack = Stack { base, a1, a2 };
        let schema = json!({"task": {"belongsTo": [{"parentModel": "project"}]}, "project": {}});
        for (app, secret) in [(&stack.a1, Some(SECRET1)), (&stack.a2, None)] {
            let mut doc = json!({"id": app, "schema": schema});
            if let Some(s) = secret {
                doc["jwt_secret"] = s.into();
            }
            common::app_put(&stack.env, &doc);
        }
        stack
    }

    /// A sockets transport on a free port; returns once it accepts connections.
    async fn sockets(&self, index: u32, extra: &[(&str, String)]) -> (common::Reaper, u16) {
        let port = common::free_port();
        let mut vars = vec![("TP_SCKT_PORT", port.to_string())];
        vars.extend(extra.iter().cloned());
        let proc = self.start("sockets_transport", index, &vars);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "sockets_transport-{index} did not listen");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (proc, port)
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(app: &str, device: &str, user: Option<&str>, secret: &str, exp: u64) -> String {
    let claims = Claims { application_id: app.into(), device_id: device.into(), exp, user_id: user.map(String::from) };
    jwt::sign(&claims, secret)
}

/// The object ids of a `message` frame's deltas of `kind`, with their versions.
fn ids(frame: &Value, kind: &str) -> Vec<(String, u64)> {
    assert_eq!(frame["event"], "message", "{frame}");
    frame["data"][kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let id = d["object"]["id"].as_str().or_else(|| d["patch"]["path"].as_str()).unwrap_or_default();
            (id.to_string(), d["version"].as_u64().unwrap())
        })
        .collect()
}

fn task(app: &str, id: &str, ctx: &str) -> Value {
    json!({"op":"create","application_id":app,"timestamp":1_700_000_000_000_000u64,
        "object":{"id":id,"type":"task","context_id":ctx,"user_id":"u1","project_id":"p1","title":"x"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_reach_their_socket_index_only_and_broadcasts_stay_in_their_application() {
    let stack = Stack::new("sock-e2e", true).await;
    let (a1, a2) = (stack.a1.clone(), stack.a2.clone());
    let _procs = ["aggregation", "write", "transport_manager"].map(|r| stack.start(r, 0, &[]));
    let (_s0, p0) = stack.sockets(0, &[]).await;
    let (_s1, p1) = stack.sockets(1, &[]).await;
    let exp = now() + 600;

    // Client on index 0 by query token; client on index 1 by bind_device; an app2 client.
    let mut c0 = Client::ready(p0, &token(&a1, "d0", None, SECRET1, exp)).await;
    let mut c1 = Client::connect(p1, None).await;
    c1.send(json!({"event":"bind_device","data":{"token": token(&a1, "d1", None, SECRET1, exp)}})).await;
    let ready = c1.event().await;
    assert_eq!(ready, json!({"event":"ready","data":{"device_id":"d1","server":"sockets_transport-1"}}));
    let mut c2 = Client::ready(p0, &token(&a2, "d2", None, FALLBACK, exp)).await;
    // A second connection of d0 on the same index receives too.
    let mut c0b = Client::ready(p0, &token(&a1, "d0", None, SECRET1, exp)).await;

    let sub = c0.subscribe(json!({"model":"task","context":"c1"}), None).await;
    assert_eq!(sub, json!({"event":"subscribed","data":{"channel":format!("blg:{a1}:context:c1:task")}}));
    assert_eq!(c1.subscribe(json!({"model":"task","context":"c2"}), None).await["event"], "subscribed");
    assert_eq!(c2.subscribe(json!({"model":"task","context":"c1"}), None).await["event"], "subscribed");

    stack.send("aggregation", "t1", &[task(&a1, "t1", "c1")]).await;
    let m = c0.event().await;
    assert_eq!(ids(&m, "new"), vec![("t1".to_string(), 1)]);
    assert_eq!(m["data"]["new"][0]["subscriptions"], json!([format!("blg:{a1}:context:c1:task")]));
    assert_eq!(ids(&c0b.event().await, "new"), vec![("t1".to_string(), 1)]);
    stack.send("aggregation", "t2", &[task(&a1, "t2", "c2")]).await;
    assert_eq!(ids(&c1.event().await, "new"), vec![("t2".to_string(), 1)]);

    // An update to t1, then a broadcast of app1: every app1 connection, no app2 one.
    let update = json!({"op":"update","application_id":a1,"timestamp":1_700_000_000_000_100u64,
        "patches":[{"op":"increment","path":"task/t1/n","value":1}]});
    stack.send("aggregation", "t1", &[update]).await;
    for c in [&mut c0, &mut c0b] {
        assert_eq!(ids(&c.event().await, "updated"), vec![("task/t1/n".to_string(), 2)]);
    }
    let broadcast = json!({"application_id":a1,"op":"update","model":"task","id":"t1","version":3,
        "timestamp":1_700_000_000_000_200u64,"channels":[format!("blg:{a1}:context:c1:task")],"broadcast":true,
        "before":{"id":"t1","type":"task"},"after":{"id":"t1","type":"task"},
        "patches":[{"op":"replace","path":"task/t1/title","value":"y"}]});
    stack.send("transport_manager", "t1", &[broadcast]).await;
    for c in [&mut c0, &mut c0b, &mut c1] {
        assert_eq!(ids(&c.event().await, "updated"), vec![("task/t1/title".to_string(), 3)]);
    }
    for (name, c) in [("c0", &mut c0), ("c0b", &mut c0b), ("c1", &mut c1), ("c2", &mut c2)] {
        assert_eq!(c.silent(Duration::from_secs(2)).await, Ok(()), "{name} got a frame meant for no one");
    }
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_subscriptions_and_frames_are_checked() {
    let stack = Stack::new("sock-auth", false).await;
    let (a1, a2) = (stack.a1.clone(), stack.a2.clone());
    let (_s, port) = stack.sockets(0, &[("TP_SCKT_MAX_MESSAGE", "1024".into())]).await;
    let exp = now() + 600;

    let refusals = [
        (Some("not-a-jwt".to_string()), "UNAUTHORIZED", 4001),
        (Some(token(&a1, "d", None, SECRET1, now() - 5)), "TOKEN_EXPIRED", 4002),
        (Some(token(&a1, "d", None, FALLBACK, exp)), "UNAUTHORIZED", 4001),
        (Some(token(&a2, "d", None, SECRET1, exp)), "UNAUTHORIZED", 4001),
        (Some(token("no-such-app", "d", None, SECRET1, exp)), "UNAUTHORIZED", 4001),
        (None, "UNAUTHORIZED", 4001),
    ];
    for (t, code, close) in refusals {
        let mut c = Client::connect(port, t.as_deref()).await;
        if t.is_none() {
            // Missing token: anything but bind_device first is refused.
            c.send(json!({"event":"subscribe","data":{"channel":{"model":"task","context":"c1"}}})).await;
        }
        let e = c.event().await;
        assert_eq!((e["event"].as_str(), e["data"]["code"].as_str()), (Some("error"), Some(code)), "{t:?}: {e}");
        assert_eq!(c.close_code().await, Some(close), "{t:?}");
    }

    let mut c = Client::ready(port, &token(&a1, "d1", Some("u1"), SECRET1, exp)).await;
    let forbidden = [
        json!({"event":"subscribe","data":{"channel":{"model":"task","context":"c1","user":"u2"}}}),
        json!({"event":"subscribe","data":{"channel":{"model":"task","context":"c1"},"application_id":a2}}),
    ];
    for f in forbidden {
        c.send(f.clone()).await;
        let e = c.event().await;
        assert_eq!(e["data"]["code"], "FORBIDDEN", "{f}: {e}");
    }
    let malformed = ["{", "[]", r#"{"event":"dance"}"#, r#"{"event":"subscribe","data":{"channel":{"model":"a:b"}}}"#];
    for m in malformed {
        c.0.send(Message::Text(m.into())).await.unwrap();
        let e = c.event().await;
        assert_eq!(e["data"]["code"], "BAD_REQUEST", "{m}: {e}");
    }
    // Still open: a permitted subscription works, own user included.
    let ok = c.subscribe(json!({"model":"task","context":"c1","user":"u1"}), None).await;
    assert_eq!(ok["data"]["channel"], format!("blg:{a1}:context:c1:users:u1:task"));
    let registry = Registry::connect(&stack.cfg.redis_url).await.unwrap();
    assert_eq!(
        registry.device_subscriptions(&a1, "d1").await.unwrap(),
        vec![format!("blg:{a1}:context:c1:users:u1:task")]
    );
    // `nexxus-worker token` mints what the transport accepts (app2 has no secret of its own:
    // TP_JWT_SECRET signs), and refuses an unknown application with exit 64.
    let mint = |app: &str| {
        Command::new(common::BIN)
            .args(["token", "--app", app, "--device", "minted", "--user", "u9"])
            .env_clear()
            .envs(&stack.env)
            .output()
            .unwrap()
    };
    let out = mint(&a2);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let minted = String::from_utf8(out.stdout).unwrap();
    let mut m = Client::connect(port, Some(minted.trim())).await;
    assert_eq!(m.event().await["data"]["device_id"], "minted");
    assert_eq!(mint("no-such-app").status.code(), Some(64));
    // Oversize: closed with 1009 (message too big).
    c.0.send(Message::Text("x".repeat(2048).into())).await.unwrap();
    assert_eq!(c.close_code().await, Some(1009));
    stack.finish().await;
}

/// A transport message as the transport manager writes it: one `new` delta of `object`.
fn transport_message(app: &str, version: u64, object: Value, to: Option<(&str, &str)>) -> Value {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
    let delta = json!({"op":"create","object":object,"subscriptions":[],"application_id":app,
        "timestamp":micros,"version":version});
    let devices = to.map(|(d, t)| json!([{"device_id": d, "token": t}])).unwrap_or(json!([]));
    json!({"application_id":app,"object_id":object["id"],"version":version,"timestamp":micros,
        "devices":devices,"broadcast":to.is_none(),"message":{"new":[delta],"updated":[],"deleted":[]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_reader_is_closed_with_4008_while_others_keep_receiving_and_the_limit_refuses() {
    let stack = Stack::new("sock-slow", false).await;
    let a1 = stack.a1.clone();
    let http = common::free_port();
    let extra = [
        // Room for bursts, so the client that does read is never the one found too slow when
        // the machine is loaded; the one that stops reading still overflows it many times.
        ("TP_SCKT_QUEUE", "64".to_string()),
        ("TP_SCKT_MAX_CONNECTIONS", "3".to_string()),
        ("TP_HTTP_PORT", http.to_string()),
        ("TP_HTTP_HOST", "127.0.0.1".to_string()),
    ];
    let (_s, port) = stack.sockets(0, &extra).await;
    let exp = now() + 600;
    let mut fast = Client::ready(port, &token(&a1, "fast", None, SECRET1, exp)).await;
    let mut slow = Client::ready(port, &token(&a1, "slow", None, SECRET1, exp)).await;

    // The limit: a third connection is accepted, a fourth refused with 503.
    let third = Client::ready(port, &token(&a1, "third", None, SECRET1, exp)).await;
    let url = format!("ws://127.0.0.1:{port}/?token={}", token(&a1, "fourth", None, SECRET1, exp));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("the fourth connection must be refused with 503, got {other:?}"),
    }
    drop(third);

    // 600 broadcasts of 64 KiB (38 MiB): far more than the 64-frame queue (4 MiB) and the
    // loopback socket buffers (about 10 MiB at most) hold for the reader that stopped.
    const N: u64 = 600;
    let reader = tokio::spawn(async move {
        let mut versions = Vec::new();
        while versions.len() < N as usize {
            let m = fast.event().await;
            versions.extend(ids(&m, "new").into_iter().map(|(_, v)| v));
        }
        versions
    });
    let big = "x".repeat(64 * 1024);
    let producer = common::producer(&stack.cfg);
    for v in 1..=N {
        let m = transport_message(&a1, v, json!({"id":"o","type":"task","big":big}), None);
        producer.send(&stack.cfg.topic("sockets_transport"), Some(b"o"), m.to_string().as_bytes(), &[]).await.unwrap();
    }
    let versions = tokio::time::timeout(Duration::from_secs(120), reader).await.expect("fast client kept up").unwrap();
    assert_eq!(versions, (1..=N).collect::<Vec<_>>(), "the fast client got everything, in order");

    // The slow one was closed: the drop is counted, and its stream ends (with 4008 if the close
    // frame fit in what it had not read).
    let drops =
        |body: &str| body.lines().any(|l| l.starts_with("nexxus_sockets_queue_drops_total") && l.ends_with(" 1"));
    common::wait_until(Duration::from_secs(30), "the queue drop in /metrics", || {
        common::http_get(http, "/metrics").is_some_and(|(_, b)| drops(&b))
    })
    .await;
    assert!(matches!(slow.close_code().await, Some(4008) | None));
    stack.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_transport_message_reaches_a_client_once() {
    let stack = Stack::new("sock-replay", false).await;
    let a1 = stack.a1.clone();
    let http = common::free_port();
    let extra = [("TP_HTTP_PORT", http.to_string()), ("TP_HTTP_HOST", "127.0.0.1".to_string())];
    let (_s, port) = stack.sockets(0, &extra).await;
    let mut client = Client::ready(port, &token(&a1, "d1", None, SECRET1, now() + 600)).await;
    let producer = common::producer(&stack.cfg);
    let topic = stack.cfg.topic("sockets_transport");
    // What a crashed upstream role sends again: the same bytes. Then a newer version, then the
    // older version with other content (not a repeat: it must pass).
    let v1 = transport_message(&a1, 1, json!({"id":"o","type":"task","n":1}), None).to_string();
    let v2 = transport_message(&a1, 2, json!({"id":"o","type":"task","n":2}), None).to_string();
    let v1_other = transport_message(&a1, 1, json!({"id":"o","type":"task","n":3}), None).to_string();
    for m in [&v1, &v1, &v2, &v1, &v1_other] {
        producer.send(&topic, Some(b"o"), m.as_bytes(), &[]).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = client.event().await;
        got.extend(ids(&m, "new").into_iter().map(|(_, v)| v));
    }
    assert_eq!(got, [1, 2, 1], "each repeat dropped, the different delivery of version 1 kept");
    let suppressed = |body: &str| {
        body.lines().any(|l| l.starts_with("nexxus_sockets_replays_suppressed_total") && l.ends_with(" 2"))
    };
    common::wait_until(Duration::from_secs(30), "two replays suppressed in /metrics", || {
        common::http_get(http, "/metrics").is_some_and(|(_, b)| suppressed(&b))
    })
    .await;
    stack.finish().await;
}

/// SMEMBERS of a Redis set, for checking the registry from outside.
async fn members(url: &str, key: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut m: Vec<String> = redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await.unwrap();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_and_restart_on_the_same_index_leaves_no_stale_routing() {
    let stack = Stack::new("sock-kill", false).await;
    let a1 = stack.a1.clone();
    let url = stack.cfg.redis_url.clone();
    let registry = Registry::connect(&url).await.unwrap();
    let exp = now() + 600;
    let channel = format!("blg:{a1}:context:c1:task");

    let (mut first, port) = stack.sockets(0, &[]).await;
    let mut c = Client::ready(port, &token(&a1, "d1", None, SECRET1, exp)).await;
    assert_eq!(c.subscribe(json!({"model":"task","context":"c1"}), None).await["event"], "subscribed");
    let entries = registry.socket_entries(&a1, 0).await.unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let old_token = entries[0].strip_prefix("d1|").unwrap().to_string();
    assert_eq!(members(&url, &channel).await, vec![format!("sockets_transport-0|d1|{old_token}|{a1}")]);

    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let (_second, port) = stack.sockets(0, &[]).await;
    // Listening comes after the purge: nothing of the earlier life is left.
    assert!(registry.socket_entries(&a1, 0).await.unwrap().is_empty());
    assert!(members(&url, &channel).await.is_empty());
    let device = registry.get_device(&a1, "d1").await.unwrap().unwrap();
    assert!(!device.volatile.unwrap().active, "the dead socket is no longer the device's");
    assert_eq!(registry.device_subscriptions(&a1, "d1").await.unwrap(), vec![channel.clone()], "the list stays");

    // The device comes back: its stored subscription is restored on the new life's address.
    drop(c);
    let mut c = Client::ready(port, &token(&a1, "d1", None, SECRET1, exp)).await;
    let entries = registry.socket_entries(&a1, 0).await.unwrap();
    let new_token = entries[0].strip_prefix("d1|").unwrap().to_string();
    assert_ne!(new_token, old_token);
    assert_eq!(members(&url, &channel).await, vec![format!("sockets_transport-0|d1|{new_token}|{a1}")]);
    let to_old = transport_message(&a1, 1, json!({"id":"old","type":"task"}), Some(("d1", &old_token)));
    let to_new = transport_message(&a1, 2, json!({"id":"new","type":"task"}), Some(("d1", &new_token)));
    stack.send("sockets_transport-0", "o", &[to_old, to_new]).await;
    assert_eq!(ids(&c.event().await, "new"), vec![("new".to_string(), 2)], "only the live address delivers");

    // A clean close detaches: entries go, the subscription list stays.
    c.0.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !registry.socket_entries(&a1, 0).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "entries not removed on disconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(members(&url, &channel).await.is_empty());
    assert_eq!(registry.device_subscriptions(&a1, "d1").await.unwrap(), vec![channel]);
    stack.finish().await;
}

/// A CA, and a leaf for localhost signed by it whose key is passphrase-protected PKCS#8: the
/// openssl CLI, as an operator would make them.
fn tls_material(dir: &std::path::Path) -> HashMap<&'static str, String> {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).output().expect("the openssl CLI");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(p("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n")
        .unwrap();
    run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &p("ca.key")]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        &p("ca.key"),
        "-subj",
        "/CN=nexxus test CA",
        "-days",
        "2",
        "-out",
        &p("ca.pem"),
    ]);
    run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &p("leaf.key")]);
    run(&[
        "pkcs8",
        "-topk8",
        "-v2",
        "aes-256-cbc",
        "-passout",
        "pass:open sesame",
        "-in",
        &p("leaf.key"),
        "-out",
        &p("leaf.enc"),
    ]);
    run(&["req", "-new", "-key", &p("leaf.key"), "-subj", "/CN=localhost", "-out", &p("leaf.csr")]);
    run(&[
        "x509",
        "-req",
        "-in",
        &p("leaf.csr"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &p("ext.cnf"),
        "-out",
        &p("leaf.pem"),
    ]);
    HashMap::from([("ca", p("ca.pem")), ("cert", p("leaf.pem")), ("key", p("leaf.enc"))])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wss_with_an_encrypted_pkcs8_key_and_an_intermediate_appended() {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    let stack = Stack::new("sock-tls", false).await;
    let dir = tempfile::tempdir().unwrap();
    let m = tls_material(dir.path());
    let extra = [
        ("TP_SCKT_SSL", "true".to_string()),
        ("TP_SCKT_KEY_SSL", m["key"].clone()),
        ("TP_SCKT_CERT_FILE", m["cert"].clone()),
        ("TP_SCKT_CA_CERT", m["ca"].clone()),
        ("TP_SCKT_KEY_PASSPHRASE", "open sesame".to_string()),
    ];
    let (_s, port) = stack.sockets(0, &extra).await;

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&m["ca"]).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake against the test CA");
    let t = token(&stack.a1, "d1", None, SECRET1, now() + 600);
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{port}/?token={t}"), tls).await.expect("wss upgrade");
    let ready = ws.next().await.unwrap().unwrap();
    let ready: Value = serde_json::from_str(ready.to_text().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready");

    // A wrong passphrase is a configuration error naming the variable: exit 64.
    let out = Command::new(common::BIN)
        .args(["-t", "sockets_transport", "-i", "1"])
        .env_clear()
        .envs(&stack.env)
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TP_SCKT_KEY_PASSPHRASE", "not-the-passphrase-9")
        .env("TP_SCKT_PORT", common::free_port().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TP_SCKT_KEY_PASSPHRASE") && !stderr.contains("not-the-passphrase-9"), "{stderr}");
    stack.finish().await;
}

/// A transport message names channels of its own application only, and at most 1,000: one that
/// names another application's channel, or more channels (only a forged or corrupted record
/// can), is dead-lettered before any member is read, the other application's subscriber gets
/// nothing, and the transport goes on with the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transport_message_naming_another_applications_channel_is_dead_lettered() {
    let stack = Stack::new("sock-foreign", false).await;
    let (a1, a2) = (stack.a1.clone(), stack.a2.clone());
    let (_s, port) = stack.sockets(0, &[]).await;
    let exp = now() + 600;
    let mut own = Client::ready(port, &token(&a1, "d1", None, SECRET1, exp)).await;
    let mut other = Client::ready(port, &token(&a2, "d1", None, FALLBACK, exp)).await;
    assert_eq!(other.subscribe(json!({"model":"task","context":"c1"}), None).await["event"], "subscribed");
    let foreign = ChannelRef { key: format!("blg:{a2}:context:c1:task"), members: MembersDigest::of(["d1"]) };
    let mut forged = transport_message(&a1, 1, json!({"id":"o1","type":"task","context_id":"c1"}), None);
    forged["broadcast"] = false.into();
    forged["channels"] = serde_json::to_value([&foreign]).unwrap();
    // One naming more channels than a message may (all of its own application).
    let mut flood = forged.clone();
    let own_channels: Vec<ChannelRef> = (0..1_001)
        .map(|i| ChannelRef { key: format!("blg:{a1}:task:t{i}"), members: MembersDigest::default() })
        .collect();
    flood["channels"] = serde_json::to_value(&own_channels).unwrap();
    let next = transport_message(&a1, 2, json!({"id":"o2","type":"task"}), None);
    let producer = common::producer(&stack.cfg);
    let topic = stack.cfg.topic("sockets_transport");
    for m in [&forged, &flood, &next] {
        producer.send(&topic, Some(b"o"), m.to_string().as_bytes(), &[]).await.unwrap();
    }
    assert_eq!(
        ids(&own.event().await, "new"),
        [("o2".to_string(), 2)],
        "the forged message is skipped, the next one delivered"
    );
    let mut reason = String::new();
    common::wait_until(Duration::from_secs(30), "the forged message in dead_letter", || {
        let dead = common::read_all(&stack.cfg, &stack.cfg.topic("dead_letter"), 1);
        let found = dead
            .into_iter()
            .filter_map(|(_, payload)| serde_json::from_slice::<Envelope>(&payload).ok())
            .find(|e| e.reason.contains("is not a channel of application"));
        found.map(|e| reason = e.reason).is_some()
    })
    .await;
    assert!(reason.contains(&format!("blg:{a2}:context:c1:task")), "{reason}");
    common::wait_until(Duration::from_secs(30), "the message naming 1,001 channels in dead_letter", || {
        common::read_all(&stack.cfg, &stack.cfg.topic("dead_letter"), 1)
            .into_iter()
            .filter_map(|(_, payload)| serde_json::from_slice::<Envelope>(&payload).ok())
            .any(|e| e.reason.contains("1001 channels named, at most 1000"))
    })
    .await;
    assert!(other.silent(Duration::from_millis(500)).await.is_ok(), "another application's subscriber got nothing");
    stack.finish().await;
}
