//! The attacker of the noisy-neighbour benchmark (`bench_noisy_neighbour --attacker`): floods
//! frames and subscriptions at 10× the limits from several devices and connections,
//! reconnecting at once when closed, and prints its tally as JSON.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{arg, channel, create, num, post, token, ATTACK_CHANNELS};

#[derive(Default)]
struct Tally {
    frames: AtomicU64,
    subscribed: AtomicU64,
    limit_exceeded: AtomicU64,
    other_errors: AtomicU64,
    closes_1008: AtomicU64,
    other_closes: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
}

/// Attacker mode: floods until `--secs` have passed, then prints its tally as JSON and exits.
pub async fn attacker() -> anyhow::Result<()> {
    let (wp, hp, secs) = (num("--ws", 0) as u16, num("--http", 0) as u16, num("--secs", 20));
    let (devices, conns, fps, writes) =
        (num("--attack-devices", 6), num("--attack-conns", 3), num("--attack-fps", 200), num("--attack-writes", 20));
    let app = arg("--app").unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for d in 0..devices {
        let counter = Arc::new(AtomicU64::new(0));
        for _ in 0..conns {
            let (url, tally, counter) = (
                format!("ws://127.0.0.1:{wp}/?token={}", token(&app, &format!("a{d}"))),
                tally.clone(),
                counter.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let Ok(Ok((ws, _))) =
                        tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(&url)).await
                    else {
                        tally.connect_failures.fetch_add(1, Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    tally.connects.fetch_add(1, Relaxed);
                    flood(ws, fps, &counter, &tally, deadline).await;
                }
            }));
        }
    }
    // Its own application's traffic, so the filters it piled up are evaluated.
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / writes.max(1) as f64));
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        n += 1;
        let body = json!([create(&app, &format!("x{n}"), n % ATTACK_CHANNELS, n % 1000)]);
        let _ = post(&http, hp, reqwest::Method::POST, "/events", &body).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let get = |a: &AtomicU64| a.load(Relaxed);
    println!(
        "{}",
        json!({"connections": devices * conns, "frames_sent": get(&tally.frames), "subscribed": get(&tally.subscribed),
            "limit_exceeded": get(&tally.limit_exceeded), "other_errors": get(&tally.other_errors),
            "closes_1008": get(&tally.closes_1008), "other_closes": get(&tally.other_closes),
            "connects": get(&tally.connects), "connect_failures": get(&tally.connect_failures), "writes": n})
    );
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `fps` frames a second on one connection until it closes or the deadline passes: even
/// frames a distinct filter on one of 20 channels, odd ones a fresh unfiltered channel.
async fn flood(ws: Ws, fps: u64, counter: &AtomicU64, tally: &Tally, deadline: tokio::time::Instant) {
    let (mut sink, mut stream) = ws.split();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / fps.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            _ = tick.tick() => {
                let n = counter.fetch_add(1, Relaxed);
                let data = if n.is_multiple_of(2) {
                    json!({"channel": channel((n / 2) % ATTACK_CHANNELS), "filters": {"and": [{"is": {"n": n}}]}})
                } else {
                    json!({"channel": {"model": "item", "context": format!("x{n}")}})
                };
                let frame = json!({"event": "subscribe", "data": data}).to_string();
                if sink.send(Message::Text(frame.into())).await.is_err() {
                    tally.other_closes.fetch_add(1, Relaxed);
                    return;
                }
                tally.frames.fetch_add(1, Relaxed);
            }
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if t.contains("\"subscribed\"") {
                        tally.subscribed.fetch_add(1, Relaxed);
                    } else if t.contains("LIMIT_EXCEEDED") {
                        tally.limit_exceeded.fetch_add(1, Relaxed);
                    } else if t.contains("\"error\"") {
                        tally.other_errors.fetch_add(1, Relaxed);
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code));
                    if code == Some(1008) { &tally.closes_1008 } else { &tally.other_closes }.fetch_add(1, Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                _ => {
                    tally.other_closes.fetch_add(1, Relaxed);
                    return;
                }
            },
        }
    }
}
