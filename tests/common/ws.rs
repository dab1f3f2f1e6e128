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

    /// The next text frame within 20 s, parsed, with its length in bytes; `Value::Null` if the
    /// connection ended.
    pub async fn sized(&mut self) -> (Value, usize) {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.0.next()).await.expect("a frame within 20 s") {
                Some(Ok(Message::Text(t))) => return (serde_json::from_str(&t).unwrap(), t.len()),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return (Value::Null, 0),
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
