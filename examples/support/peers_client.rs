//! `bench_peers --client`: a child process holding up to 9,500 connections from its own source
//! address, each counting what it receives (losses, duplicates, latency) in the server's own
//! protocol.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use nexxus_worker::transport::jwt::{self, Claims};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{arg, now_ns, num, Server, Ws, APP, CF_CHANNEL, LIST_ID};

struct Conn {
    server: Server,
    port: u16,
    ip: std::net::Ipv4Addr,
    secret: String,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    unique: u64,
    received: u64,
    duplicates: u64,
    unexpected: u64,
    closed: bool,
    latency_us: Vec<u32>,
}

pub async fn client() -> anyhow::Result<()> {
    let server = Server::parse(&arg("--server").unwrap_or_default())?;
    let conn = Conn {
        server,
        port: num("--port", 0) as u16,
        ip: arg("--ip").unwrap_or_else(|| "127.0.0.2".into()).parse().context("--ip")?,
        secret: arg("--secret").context("--secret")?,
    };
    let (count, first, messages) = (num("--count", 1) as usize, num("--first", 0) as usize, num("--messages", 0));
    let stop = tokio_util::sync::CancellationToken::new();
    let conn = std::sync::Arc::new(conn);
    let opened: Vec<anyhow::Result<Ws>> = futures::stream::iter(0..count)
        .map(|i| {
            let conn = conn.clone();
            async move { open(&conn, first + i).await }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut failed = 0u64;
    let mut tasks = Vec::with_capacity(count);
    for ws in opened {
        let ws = match ws {
            Ok(ws) => ws,
            Err(e) => {
                if failed < 3 {
                    eprintln!("client {}: connect failed: {e:#}", conn.ip);
                }
                failed += 1;
                continue;
            }
        };
        tasks.push(tokio::spawn(receive(ws, server, messages, stop.clone())));
    }
    println!("ready {}", tasks.len());
    let mut line = String::new();
    BufReader::new(tokio::io::stdin()).read_line(&mut line).await?;
    stop.cancel();
    let connected = tasks.len() as u64;
    let (mut unique, mut received, mut dups, mut unexpected, mut lost, mut closed) = (0, 0, 0, 0, 0, 0);
    let (mut with_loss, mut with_dups, mut latency) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let seen = t.await?;
        unique += seen.unique;
        received += seen.received;
        dups += seen.duplicates;
        unexpected += seen.unexpected;
        lost += messages - seen.unique.min(messages);
        with_loss += u64::from(seen.unique < messages);
        with_dups += u64::from(seen.duplicates > 0);
        closed += u64::from(seen.closed);
        latency.extend(seen.latency_us);
    }
    println!(
        "{}",
        json!({"connected": connected, "connect_failed": failed, "closed_early": closed, "unique": unique,
            "received": received, "duplicates": dups, "unexpected": unexpected, "lost": lost,
            "clients_with_loss": with_loss, "clients_with_duplicates": with_dups, "latency_us": latency})
    );
    Ok(())
}

/// Opens one authenticated, subscribed connection, in the server's own protocol.
async fn open(conn: &Conn, i: usize) -> anyhow::Result<Ws> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let url = match conn.server {
        Server::Nexxus => {
            let claims =
                Claims { application_id: APP.into(), device_id: format!("d{i}"), exp, user_id: Some(format!("u{i}")) };
            format!("ws://127.0.0.1:{}/?token={}", conn.port, jwt::sign(&claims, &conn.secret))
        }
        Server::Centrifugo => format!("ws://127.0.0.1:{}/connection/websocket", conn.port),
    };
    let socket = TcpSocket::new_v4()?;
    socket.bind((conn.ip, 0).into()).with_context(|| format!("bind {}", conn.ip))?;
    let tcp = socket.connect(([127, 0, 0, 1], conn.port).into()).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    let deadline = Duration::from_secs(30);
    match conn.server {
        Server::Nexxus => {
            await_frame(&mut ws, deadline, |f| event_of(f) == Some("ready")).await.context("ready")?;
            let channel = json!({"model": "task", "parent": {"model": "list", "id": LIST_ID}});
            ws.send(Message::text(json!({"event": "subscribe", "data": {"channel": channel}}).to_string())).await?;
            let answer = await_frame(&mut ws, deadline, |f| matches!(event_of(f), Some("subscribed" | "error")))
                .await
                .context("subscribed")?;
            anyhow::ensure!(event_of(&answer) == Some("subscribed"), "subscribe refused: {answer}");
        }
        Server::Centrifugo => {
            let token = hs256(&json!({"sub": format!("u{i}"), "exp": exp}), &conn.secret);
            ws.send(Message::text(json!({"id": 1, "connect": {"token": token, "name": "bench_peers"}}).to_string()))
                .await?;
            let reply = await_reply(&mut ws, deadline, 1).await.context("connect reply")?;
            anyhow::ensure!(reply.get("connect").is_some(), "connect refused: {reply}");
            ws.send(Message::text(json!({"id": 2, "subscribe": {"channel": CF_CHANNEL}}).to_string())).await?;
            let reply = await_reply(&mut ws, deadline, 2).await.context("subscribe reply")?;
            anyhow::ensure!(reply.get("subscribe").is_some(), "subscribe refused: {reply}");
        }
    }
    Ok(ws)
}

fn event_of(frame: &Value) -> Option<&str> {
    frame.get("event").and_then(Value::as_str)
}

/// The next text frame; other frames are skipped, a close or an error ends the wait.
async fn next_text(ws: &mut Ws) -> anyhow::Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(c))) => anyhow::bail!("closed: {c:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("closed"),
        }
    }
}

/// Ours: the next frame for which `want` holds (others are skipped).
async fn await_frame(ws: &mut Ws, limit: Duration, want: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    tokio::time::timeout(limit, async {
        loop {
            let t = next_text(ws).await?;
            let frame: Value = serde_json::from_str(&t).with_context(|| format!("not JSON: {t}"))?;
            if want(&frame) {
                return Ok(frame);
            }
        }
    })
    .await
    .context("timed out")?
}

/// Centrifugo: the reply to command `id`; answers pings (`{}`) meanwhile. A frame may hold
/// several newline-separated replies.
async fn await_reply(ws: &mut Ws, limit: Duration, id: u64) -> anyhow::Result<Value> {
    tokio::time::timeout(limit, async {
        loop {
            let t = next_text(ws).await?;
            for line in t.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if line == "{}" {
                    ws.send(Message::text("{}")).await?;
                    continue;
                }
                let reply: Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
                if reply.get("id").and_then(Value::as_u64) == Some(id) {
                    return Ok(reply);
                }
            }
        }
    })
    .await
    .context("timed out")?
}

/// An HS256 JWT of `claims` (Centrifugo's connection token: `sub`, `exp`).
fn hs256(claims: &Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

/// Reads one connection until told to stop: every publication's sequence number (deduplicated)
/// and latency; answers Centrifugo's `{}` pings (WebSocket pings are answered by tungstenite).
async fn receive(mut ws: Ws, server: Server, messages: u64, stop: tokio_util::sync::CancellationToken) -> Seen {
    let mut seen = Seen::default();
    let mut got = vec![false; messages as usize + 1];
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = now_ns();
                    if server == Server::Centrifugo && t.lines().any(|l| l.trim() == "{}") && ws.send(Message::text("{}")).await.is_err() {
                        seen.closed = true;
                        break;
                    }
                    for (seq, sent) in numbers(&t, "\"bench_seq\":").zip(numbers(&t, "\"bench_sent_ns\":")) {
                        if seq == 0 {
                            continue; // the warm-up
                        }
                        seen.received += 1;
                        match got.get_mut(seq as usize) {
                            Some(slot) if !*slot => {
                                *slot = true;
                                seen.unique += 1;
                                seen.latency_us.push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
                            }
                            Some(_) => seen.duplicates += 1,
                            None => seen.unexpected += 1,
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    seen.closed = true;
                    break;
                }
            },
        }
    }
    seen
}

/// Every integer that follows `key` in `text`, in order (each publication carries each key once).
fn numbers<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = u64> + 'a {
    text.match_indices(key).filter_map(move |(at, _)| {
        let rest = text[at + key.len()..].trim_start();
        let digits = rest.find(|c: char| !c.is_ascii_digit()).map_or(rest, |end| &rest[..end]);
        digits.parse().ok()
    })
}
