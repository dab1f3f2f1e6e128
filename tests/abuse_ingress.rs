//! The HTTP port of `-t all` under attack (issue 14 items 2, 4, 6, 7, 13): who may call what,
//! from where, with which bodies; half-sent requests and floods; oversize and hostile bodies.
//! After every attack the process is alive and a legitimate client still gets its deliveries.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::all::*;
use common::ws::Client;
use common::{http_get, http_request};
use serde_json::{json, Value};

/// `-t all` with `env` (nothing else configured), run to its exit: (status, stderr).
fn exit_of(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::BIN)
        .args(["-t", "all"])
        .env_clear()
        .env("TP_SQLITE_PATH", dir.path().join("nexxus.db"))
        .env("TP_HTTP_PORT", common::free_port().to_string())
        .env("TP_SCKT_PORT", common::free_port().to_string())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_reachable_ingress_without_both_tokens_refuses_to_start() {
    let (code, err) = exit_of(&[("TP_HTTP_HOST", "0.0.0.0")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("TP_INGRESS_TOKEN") && err.lines().count() <= 2, "{err}");
    let (code, err) = exit_of(&[("TP_HTTP_HOST", "0.0.0.0"), ("TP_INGRESS_TOKEN", "e")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("TP_ADMIN_TOKEN"), "{err}");
    let (code, err) = exit_of(&[("TP_INGRESS_TOKEN", "same"), ("TP_ADMIN_TOKEN", "same")]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("TP_ADMIN_TOKEN") && err.contains("differ"), "{err}");
}

#[tokio::test]
async fn the_development_switch_runs_open_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), None, &[("TP_HTTP_HOST", "0.0.0.0"), ("TP_INGRESS_ALLOW_OPEN", "true")]).await;
    let log = log_of(dir.path());
    assert!(log.contains("TP_INGRESS_ALLOW_OPEN") && log.contains("WARN"), "{log}");
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn ready_without_traffic_and_loopback_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let (http, ws) = (common::free_port(), common::free_port());
    let child = Command::new(common::BIN)
        .args(["-t", "all"])
        .env_clear()
        .env("TP_SQLITE_PATH", dir.path().join("nexxus.db"))
        .env("TP_HTTP_PORT", http.to_string())
        .env("TP_SCKT_PORT", ws.to_string())
        .stderr(std::fs::File::create(dir.path().join("worker.log")).unwrap())
        .spawn()
        .unwrap();
    let mut reaper = common::Reaper(child);
    let started = Instant::now();
    // Nothing is sent: readiness must not wait for the first record.
    while http_get(http, "/readyz").map(|(c, _)| c) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(30), "never ready: {:?}", http_get(http, "/readyz"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = log_of(dir.path());
    let listening = format!("addr=127.0.0.1:{http}");
    assert!(log.contains(&listening), "the HTTP port listens on loopback by default: {log}");
    let pid = nix::unistd::Pid::from_raw(reaper.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(reaper.0.wait().unwrap().code(), Some(0));
}

#[tokio::test]
async fn only_json_from_this_site_or_allowed_origins() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("origin");
    let p = start(dir.path(), None, &[("TP_INGRESS_ALLOWED_ORIGINS", "https://app.example")]).await;
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    let body = create(&app, Some("o1"), "x").to_string();
    let post = |headers: &[(&str, &str)]| http_request(p.http, "POST", "/events", headers, &body).unwrap();
    // The cross-site "simple request" of a browser: text/plain, no preflight.
    let (code, text) = post(&[("Content-Type", "text/plain")]);
    assert_eq!(code, 415, "{text}");
    let (code, text) = post(&[("Origin", "https://evil.example")]);
    assert_eq!(code, 403, "{text}");
    assert_eq!(post(&[("Origin", "https://app.example")]).0, 202);
    let (code, _) = post(&[("Origin", "http://localhost")]);
    assert_eq!(code, 202, "same origin as the Host header");
    // An open ingress answers loopback names only (DNS rebinding).
    let raw = format!(
        "POST /events HTTP/1.0\r\nHost: rebound.example:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        p.http,
        body.len()
    );
    assert!(raw_status(p.http, &raw).starts_with("421"), "{}", raw_status(p.http, &raw));
    // A configured origin's preflight is answered with CORS headers; another's is not.
    let preflight = |origin: &str| {
        raw_response(
            p.http,
            &format!(
                "OPTIONS /events HTTP/1.0\r\nHost: localhost\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: content-type\r\n\r\n"
            ),
        )
        .to_ascii_lowercase()
    };
    assert!(preflight("https://app.example").contains("access-control-allow-origin: https://app.example"));
    assert!(!preflight("https://evil.example").contains("access-control-allow-origin"));
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn demo_tokens_are_for_anonymous_ids_the_server_picks() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), None, &[("TP_DEMO_APP", "demo")]).await;
    assert!(log_of(dir.path()).contains("demo tokens are on"), "{}", log_of(dir.path()));
    let mut demo = app_doc("demo");
    demo["schema"]["task"]["read_acl"] = json!(0);
    assert_eq!(p.request("PUT", "/apps/demo", &[], &demo).0, 200);
    let (code, a) = p.post("/demo/token", &json!({"device_id": "victim", "user_id": "admin"}));
    assert_eq!(code, 200, "{a}");
    let (_, b) = p.post("/demo/token", &json!({}));
    for t in [&a, &b] {
        let device = t["device_id"].as_str().unwrap();
        assert!(device.starts_with("demo-") && device.len() > 20, "{t}");
        assert!(t["user_id"].as_str().unwrap().starts_with("anon-"), "{t}");
    }
    assert_ne!(a["device_id"], b["device_id"]);
    let client = Client::ready(p.ws, a["token"].as_str().unwrap()).await;
    drop(client);
    assert_eq!(p.stop(), Some(0));

    // With an event token set, demo tokens need it like any event route.
    let dir = tempfile::tempdir().unwrap();
    let env = [("TP_DEMO_APP", "demo"), ("TP_INGRESS_TOKEN", "ev"), ("TP_ADMIN_TOKEN", "ad")];
    let p = start(dir.path(), None, &env).await;
    assert_eq!(p.request("PUT", "/apps/demo", &[("Authorization", "Bearer ad")], &demo).0, 200);
    assert_eq!(p.post("/demo/token", &json!({})).0, 401);
    assert_eq!(p.request("POST", "/demo/token", &[("Authorization", "Bearer ev")], &json!({})).0, 200);
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn half_sent_requests_and_floods_do_not_stop_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("slow");
    let env = [
        ("TP_HTTP_MAX_CONNECTIONS", "64"),
        ("TP_HTTP_HEADER_TIMEOUT_MS", "1000"),
        ("TP_HTTP_REQUEST_TIMEOUT_MS", "1500"),
        ("TP_HTTP_CONCURRENCY", "2"),
    ];
    let p = start(dir.path(), None, &env).await;
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    let pid = p.reaper.0.id();
    // 500 connections that send half a request line and then nothing.
    let mut slow: Vec<TcpStream> = Vec::new();
    for _ in 0..500 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", p.http)) {
            let _ = s.write_all(b"POST /events HTTP/1.1\r\nHost: local");
            slow.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(open < 64 + 100, "the connection cap holds the process's descriptors: {open} open");
    // The WebSocket listener still accepts, and a legitimate client is served.
    let mut client = Client::ready(p.ws, &token(&app, "d1")).await;
    client.subscribe(list_channel(), None).await;
    // The half-sent ones are dropped by the header timeout, so the health check gets through.
    let started = Instant::now();
    while http_get(p.http, "/healthz").map(|(c, _)| c) != Some(200) {
        assert!(started.elapsed() < Duration::from_secs(20), "healthz never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let closed = slow.iter_mut().map(is_closed).filter(|c| *c).count();
    assert!(closed > 450, "only {closed} of {} half-sent connections were closed", slow.len());
    drop(slow);

    // A body that never completes holds a request slot only until the request timeout.
    let mut stuck = TcpStream::connect(("127.0.0.1", p.http)).unwrap();
    write!(
        stuck,
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    let mut second = TcpStream::connect(("127.0.0.1", p.http)).unwrap();
    write!(
        second,
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, _) = p.post("/events", &create(&app, Some("busy"), "x"));
    assert_eq!(code, 503, "two requests in process, TP_HTTP_CONCURRENCY=2");
    stuck.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = stuck.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // After all that, a change still reaches the client.
    assert_eq!(p.post("/events", &create(&app, Some("after"), "after")).0, 202);
    let got = deltas(&mut client, 1).await;
    assert_eq!(got[0].1, "after", "{got:?}");
    assert_eq!(p.stop(), Some(0));
}

#[tokio::test]
async fn hostile_bodies_cost_a_small_multiple_of_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("bodies");
    let p = start(dir.path(), None, &[]).await;
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    let pid = p.reaper.0.id();
    // 1 MiB of `{}` items: refused while reading, with a short answer.
    let body = format!("[{}]", vec!["{}"; 340_000].join(","));
    assert!(body.len() < 1 << 20);
    let before = peak_rss_kib(pid);
    // Four at once, twice over (the old ingress reached 856 MiB for four).
    for _ in 0..2 {
        let sends: Vec<_> = (0..4)
            .map(|_| {
                let (port, body) = (p.http, body.clone());
                std::thread::spawn(move || http_request(port, "POST", "/events", &[], &body).unwrap())
            })
            .collect();
        for send in sends {
            let (code, text) = send.join().unwrap();
            assert_eq!(code, 400, "{text}");
            assert!(text.len() < 1024 && text.contains("TP_INGRESS_MAX_MESSAGES"), "{text}");
        }
    }
    let grown = peak_rss_kib(pid).saturating_sub(before);
    // 4 MiB of bodies in flight; the allocator keeps some freed pages, so allow a small multiple.
    assert!(grown < 40 * 1024, "peak RSS grew by {grown} KiB for four 1 MiB bodies at once");
    eprintln!("peak RSS grew by {grown} KiB for four 1 MiB bodies at once");
    // 1,000 bad messages: the first reasons and a count, not 1,000 reasons.
    let bad: Vec<Value> = (0..1000).map(|_| json!({"op": "create"})).collect();
    let (code, answer) = p.post("/events", &json!(bad));
    assert_eq!(code, 400);
    assert_eq!(answer["rejected"].as_array().unwrap().len(), 20, "{answer}");
    assert_eq!(answer["rejected_count"], 1000);
    // Still serving.
    assert_eq!(p.post("/events", &create(&app, Some("ok"), "x")).0, 202);
    assert_eq!(p.stop(), Some(0));
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => true, // an error answer, then the close
        Err(e) => matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
    }
}

fn raw_response(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn raw_status(port: u16, request: &str) -> String {
    raw_response(port, request).split_whitespace().nth(1).unwrap_or("").to_string()
}

#[tokio::test]
async fn applications_cannot_name_where_the_workers_connect() {
    let dir = tempfile::tempdir().unwrap();
    let app = unique_app("endpoints");
    let p = start(dir.path(), None, &[]).await;
    let path = format!("/apps/{app}");
    let mut doc = app_doc(&app);
    doc["fcm"] = json!({"service_account": {"project_id": "p1", "client_email": "a@b", "private_key": "k",
        "token_uri": "http://127.0.0.1:9/token"}});
    let (code, body) = p.request("PUT", &path, &[], &doc);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("TP_PUSH_TOKEN_URLS"), "{body}");
    let mut doc = app_doc(&app);
    doc["fcm"] = json!({"service_account": {"project_id": "p1", "client_email": "a@b", "private_key": "k"},
        "url": "http://127.0.0.1:9"});
    let (code, body) = p.request("PUT", &path, &[], &doc);
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("url"), "{body}");
    assert_eq!(p.request("PUT", &path, &[], &app_doc(&app)).0, 200);
    assert_eq!(p.stop(), Some(0));
}
