//! A real WebSocket client for the socket tests: connect, read frames as JSON, subscribe.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client(pub Ws);

impl Client {
    pub async fn connect(port: u16, token: Option<&str>) -> Client {
        let url = match token {
            Some(t) => format!("ws://127.0.0.1:{port}/?token={t}"),
            None => format!("ws://127.0.0.1:{port}/"),
        };
        Client(tokio_tungstenite::connect_async(url).await.expect("websocket upgrade").0)
    }

    /// Connects with `?token=` and expects `ready`.
    pub async fn ready(port: u16, token: &str) -> Client {
        let mut c = Client::connect(port, Some(token)).await;
        let r = c.event().await;
        assert_eq!(r["event"], "ready", "{r}");
        c
    }

    pub async fn send(&mut self, v: Value) {
        self.0.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    /// The next text frame within 20 s, parsed; `Value::Null` if the connection ended.
    pub async fn event(&mut self) -> Value {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.0.next()).await.expect("a frame within 20 s") {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Value::Null,
                Some(Ok(_)) => {}
            }
        }
    }

    /// No text frame for `quiet`.
    pub async fn silent(&mut self, quiet: Duration) -> Result<(), Value> {
        match tokio::time::timeout(quiet, self.0.next()).await {
            Err(_) => Ok(()),
            Ok(Some(Ok(Message::Text(t)))) => Err(serde_json::from_str(&t).unwrap()),
            Ok(other) => Err(json!(format!("{other:?}"))),
        }
    }

    /// Reads until the close frame; its code (`None` if the stream ended without one).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.0.next()).await.expect("closed within 30 s") {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    }

    pub async fn subscribe(&mut self, channel: Value, filters: Option<Value>) -> Value {
        let mut data = json!({"channel": channel});
        if let Some(f) = filters {
            data["filters"] = f;
        }
        self.send(json!({"event":"subscribe","data":data})).await;
        self.event().await
    }
}

impl Client {
    /// Connects with `?token=` over a socket whose receive buffer is `recv_buffer` bytes: a
    /// client that then stops reading fills it quickly and pushes back on the server.
    pub async fn with_small_buffer(port: u16, token: &str, recv_buffer: u32) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(recv_buffer).unwrap();
        let tcp = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        let url = format!("ws://127.0.0.1:{port}/?token={token}");
        let (ws, _) =
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)).await.expect("websocket upgrade");
        Client(ws)
    }

    /// Reads until the connection ends: how many frames of each kind came (by `data.code`, else
    /// `event`), and the close code.
    pub async fn until_closed(&mut self) -> (std::collections::BTreeMap<String, usize>, Option<u16>) {
        let mut seen = std::collections::BTreeMap::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.0.next()).await.expect("closed within 30 s");
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let kind = v["data"]["code"].as_str().or(v["event"].as_str()).unwrap_or("?").to_string();
                    *seen.entry(kind).or_default() += 1;
                }
                Some(Ok(Message::Close(f))) => return (seen, f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return (seen, None),
            }
        }
    }
}

/// `nexxus-worker -t all` on loopback ports with SQLite in a test directory and nothing else
/// (in-process queue, in-memory registry), for socket tests that need a whole process.
pub struct AllProcess {
    pub reaper: super::Reaper,
    pub http: u16,
    pub ws: u16,
}

impl AllProcess {
    /// Starts `-t all` in `dir` with `extra`; `fd_limit` caps its open files (`ulimit -n`).
    pub async fn start(dir: &std::path::Path, extra: &[(&str, &str)], fd_limit: Option<u32>) -> AllProcess {
        use std::process::{Command, Stdio};
        let (http, ws) = (super::free_port(), super::free_port());
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
        let p = AllProcess { reaper: super::Reaper(child), http, ws };
        let started = std::time::Instant::now();
        while super::http_get(http, "/objects?channel=%7B%7D").map(|(code, _)| code) != Some(401) {
            assert!(started.elapsed() < Duration::from_secs(30), "-t all not ready: {}", log_of(dir));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    /// A request with a JSON body (`null`: none); the status and the answer as JSON.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &Value) -> (u16, Value) {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        let (code, text) = super::http_request(self.http, method, path, &all, &body)
            .unwrap_or_else(|| panic!("no HTTP answer to {method} {path} on {}", self.http));
        (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub fn put_app(&self, doc: &Value) {
        let (code, body) = self.request("PUT", &format!("/apps/{}", doc["id"].as_str().unwrap()), &[], doc);
        assert_eq!(code, 200, "{body}");
    }

    /// POST, expecting 202.
    pub fn post(&self, path: &str, body: &Value) {
        let (code, answer) = self.request("POST", path, &[], body);
        assert_eq!(code, 202, "{path}: {answer}");
    }

    /// Still running, and `/healthz` answers.
    pub fn alive(&mut self) {
        assert!(self.reaper.0.try_wait().unwrap().is_none(), "the process exited");
        assert_eq!(super::http_get(self.http, "/healthz").map(|(c, _)| c), Some(200));
    }

    /// The sum of a metric's series in `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = super::http_get(self.http, "/metrics").unwrap_or_default();
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// The process's log (stderr), for failure messages.
pub fn log_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
}

/// Percent-encodes everything but unreserved characters.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
