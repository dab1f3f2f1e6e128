//! `-t all` as a test starts it: a child process on a temporary SQLite file, its ingress and
//! WebSocket ports, and the requests and documents the `-t all` suites share.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};

use super::ws::Client;
use super::{http_get, http_request, Reaper};

pub const SECRET: &str = "single-process-test-secret";

pub struct Process {
    pub reaper: Reaper,
    pub http: u16,
    pub ws: u16,
    /// Where `worker.log` is, so a failed stop can show why.
    pub dir: std::path::PathBuf,
}

/// Starts `-t all` on `dir/nexxus.db` with nothing but `extra` configured, and waits until its
/// ingress answers.
pub async fn start(dir: &Path, ports: Option<(u16, u16)>, extra: &[(&str, &str)]) -> Process {
    start_with(dir, ports, extra, None).await
}

/// [`start`], with the process's open files capped at `fd_limit` (`ulimit -n`) when given.
pub async fn start_with(
    dir: &Path,
    ports: Option<(u16, u16)>,
    extra: &[(&str, &str)],
    fd_limit: Option<u32>,
) -> Process {
    let (http, ws) = ports.unwrap_or_else(|| (super::free_port(), super::free_port()));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("worker.log")).unwrap();
    let mut cmd = match fd_limit {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" -t all"), super::BIN]);
            c
        }
        None => {
            let mut c = Command::new(super::BIN);
            c.args(["-t", "all"]);
            c
        }
    };
    let child = cmd
        .env_clear()
        .env("TP_SQLITE_PATH", dir.join("nexxus.db"))
        .env("TP_HTTP_HOST", "127.0.0.1")
        .env("TP_HTTP_PORT", http.to_string())
        .env("TP_SCKT_HOST", "127.0.0.1")
        .env("TP_SCKT_PORT", ws.to_string())
        .envs(extra.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting -t all");
    let p = Process { reaper: Reaper(child), http, ws, dir: dir.to_path_buf() };
    // On SQLite alone readiness takes a second; with Kafka and a CQL keyspace configured it
    // includes the keyspace's DDL, which took 30 s in a loaded CI run: the stack tests' 120 s.
    let deadline = Duration::from_secs(120);
    let started = std::time::Instant::now();
    // Ready: every role's loop runs and the WebSocket listener is bound (before, a client could
    // find the ingress answering and the socket port still closed).
    while http_get(http, "/readyz").map(|(code, _)| code) != Some(200) {
        assert!(started.elapsed() < deadline, "-t all not ready: {}", log_of(dir));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

impl Process {
    /// SIGTERM, then the exit status (graceful shutdown must exit 0).
    pub fn stop(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.reaper.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let code = self.reaper.0.wait().unwrap().code();
        if code != Some(0) {
            // Printed, not returned: the caller's assertion fails and the test output shows why.
            let log = log_of(&self.dir);
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("-t all exited {code:?}; the end of its log:");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        code
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        // No body for `null`: a server that answers without reading an unexpected body resets
        // the connection, which can cut the answer short.
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let (code, text) = http_request(self.http, method, path, headers, &body)
            .unwrap_or_else(|| panic!("no HTTP answer to {method} {path} on {}", self.http));
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request("POST", path, &[], body)
    }

    /// POST, expecting 202.
    pub fn post_ok(&self, path: &str, body: &Value) {
        let (code, answer) = self.post(path, body);
        assert_eq!(code, 202, "{path}: {answer}");
    }

    pub fn put_app(&self, doc: &Value) {
        let (code, body) = self.request("PUT", &format!("/apps/{}", doc["id"].as_str().unwrap()), &[], doc);
        assert_eq!(code, 200, "{body}");
    }

    /// Still running, and `/healthz` answers.
    pub fn alive(&mut self) {
        assert!(self.reaper.0.try_wait().unwrap().is_none(), "the process exited");
        assert_eq!(http_get(self.http, "/healthz").map(|(c, _)| c), Some(200));
    }

    /// The sum of a metric's series in `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.http, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Over Kafka the sockets transport listens once its consumer joined and knows the application
/// from `system`: connects until `ready` (60 s at most).
pub async fn ready_client(p: &Process, app: &str, device: &str) -> Client {
    let started = std::time::Instant::now();
    loop {
        let url = format!("ws://127.0.0.1:{}/?token={}", p.ws, token(app, device));
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
            if let Some(Ok(m)) = futures::StreamExt::next(&mut ws).await {
                if m.to_text().unwrap_or_default().contains("\"ready\"") {
                    return Client(ws);
                }
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no ready from the sockets transport: {}", log_of(&p.dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts `events` until a frame reaches `client` (the roles follow `system` and learn of the
/// application a moment later; until the ingress has it, 400 "unknown application"). The frame.
pub async fn post_until_delivered(p: &Process, client: &mut Client, events: &Value) -> Value {
    for _ in 0..30 {
        let (code, body) = p.post("/events", events);
        assert!(code == 202 || (code == 400 && body.to_string().contains("unknown application")), "{code} {body}");
        if let Err(frame) = client.silent(Duration::from_millis(700)).await {
            return frame;
        }
    }
    panic!("no delivery through Kafka: {}", log_of(&p.dir))
}

pub fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
}

pub fn unique_app(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("sp{}_{}_{name}", nanos % 1_000_000_000_000, std::process::id())
}

pub fn app_doc(app: &str) -> Value {
    json!({"id": app, "jwt_secret": SECRET, "schema": {
        "list": {"write_acl": 0, "read_acl": 0},
        "task": {"belongsTo": [{"parentModel": "list"}], "write_acl": 0, "read_acl": 0}}})
}

pub fn token(app: &str, device: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    jwt::sign(&Claims { application_id: app.into(), device_id: device.into(), exp, user_id: None }, SECRET)
}

pub fn list_channel() -> Value {
    json!({"model": "task", "parent": {"model": "list", "id": "l1"}})
}

pub fn create(app: &str, id: Option<&str>, title: &str) -> Value {
    let mut object =
        json!({"type": "task", "application_id": app, "context_id": "c1", "list_id": "l1", "title": title});
    if let Some(id) = id {
        object["id"] = json!(id);
    }
    json!({"op": "create", "application_id": app, "object": object})
}

pub fn increment(app: &str, id: &str) -> Value {
    json!({"op": "update", "application_id": app, "patches": [{"op": "increment", "path": format!("task/{id}/votes"), "value": 1}]})
}

/// Reads frames until `want` deltas arrived; (kind, object id, version, title) of each.
pub async fn deltas(client: &mut Client, want: usize) -> Vec<(String, String, u64, Value)> {
    let mut out = Vec::new();
    while out.len() < want {
        let frame = client.event().await;
        assert_eq!(frame["event"], "message", "{frame}");
        for kind in ["new", "updated", "deleted"] {
            for d in frame["data"][kind].as_array().unwrap() {
                let id = match d["object"]["id"].as_str() {
                    Some(id) => id.to_string(),
                    None => d["patch"]["path"].as_str().unwrap().split('/').nth(1).unwrap().to_string(),
                };
                out.push((kind.to_string(), id, d["version"].as_u64().unwrap(), d["object"]["title"].clone()));
            }
        }
    }
    out
}

/// `GET /objects` of the list channel: object id → (version, object).
pub fn snapshot(p: &Process, app: &str, device: &str) -> std::collections::BTreeMap<String, (u64, Value)> {
    let channel = list_channel().to_string();
    let path = format!("/objects?channel={}", url_encode(&channel));
    let auth = format!("Bearer {}", token(app, device));
    let (code, body) = p.request("GET", &path, &[("Authorization", &auth)], &Value::Null);
    assert_eq!(code, 200, "{body}");
    body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (o["object"]["id"].as_str().unwrap().to_string(), (o["version"].as_u64().unwrap(), o["object"].clone()))
        })
        .collect()
}

pub fn url_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
