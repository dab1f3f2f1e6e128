//! The task of one churning client: connects, syncs its subscriptions, drops at random times.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{lock, Action, Client, Mode};
use super::{Control, Params};
use crate::plan::unit;
use crate::socket;
use nexxus_worker::model::clock;

/// A small deterministic random source per client (splitmix64 over a counter).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 += 1;
        unit(self.0)
    }

    /// Exponentially distributed with this mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }
}

/// How a connection ended.
enum End {
    /// Dropped by the client, on schedule.
    Dropped,
    /// Closed or failed on the server's side.
    Lost,
    /// The run is over.
    Finish,
}

/// One churning client: connects, syncs its subscriptions, drops at random, until `finish`.
pub async fn churner(params: Arc<Params>, state: Arc<Mutex<Client>>, ctl: Arc<Control>) {
    let index = lock(&state).index;
    let mut rng = Rng(index as u64 * 1_000_003 + 11);
    let base = params.ws[index % params.ws.len()].clone();
    let device = format!("churn{index}");
    loop {
        if ctl.finish.is_cancelled() {
            return;
        }
        let mut ws = match socket::connect(&base, &params.app, &params.secret, &device).await {
            Ok(ws) => ws,
            Err(e) => {
                {
                    let mut c = lock(&state);
                    c.audit.connect_failures += 1;
                    if c.errors.len() < 5 {
                        c.errors.push(format!("connect: {e}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let first: Vec<String> = {
            let mut c = lock(&state);
            c.epoch += 1;
            c.online = true;
            (0..c.subs.len()).map(|j| c.request(j, Mode::Resume)).collect()
        };
        let mut end = End::Lost;
        let mut sent_ok = true;
        for text in first {
            sent_ok &= socket::send(&mut ws, text).await.is_ok();
        }
        let far = Duration::from_secs(86_400);
        let mut drop_at = tokio::time::Instant::now() + Duration::from_secs_f64(rng.exp(params.every_s));
        let mut later: Vec<(tokio::time::Instant, usize, Mode)> = Vec::new();
        while sent_ok {
            let retry_at = later.iter().map(|l| l.0).min().unwrap_or(tokio::time::Instant::now() + far);
            let out: Vec<String> = tokio::select! {
                () = ctl.finish.cancelled() => { end = End::Finish; break }
                () = tokio::time::sleep_until(drop_at) => {
                    if !ctl.active.load(Ordering::Relaxed) {
                        drop_at = tokio::time::Instant::now() + Duration::from_secs_f64(rng.exp(params.every_s));
                        continue;
                    }
                    end = End::Dropped;
                    break;
                }
                () = tokio::time::sleep_until(retry_at) => {
                    let now = tokio::time::Instant::now();
                    let due: Vec<(usize, Mode)> = later.iter().filter(|l| l.0 <= now).map(|l| (l.1, l.2)).collect();
                    later.retain(|l| l.0 > now);
                    let mut c = lock(&state);
                    due.into_iter().map(|(j, mode)| c.request(j, mode)).collect()
                }
                text = socket::next_text(&mut ws) => {
                    let Some(text) = text else { break };
                    // Cursors come every ping interval, changes or not: they do not end a quiet spell.
                    if !text.starts_with(r#"{"event":"cursor""#) {
                        ctl.frames.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut c = lock(&state);
                    let mut out = Vec::new();
                    for action in c.on_frame(&text, &ctl) {
                        match action {
                            Action::Now(j, mode) => out.push(c.request(j, mode)),
                            Action::Later(j, mode) => later.push((tokio::time::Instant::now() + Duration::from_millis(500), j, mode)),
                        }
                    }
                    out
                }
            };
            for text in out {
                sent_ok &= socket::send(&mut ws, text).await.is_ok();
            }
        }
        // An abrupt drop: no close handshake, as when a phone loses its network.
        drop(ws);
        lock(&state).dropped(clock::now_micros());
        match end {
            End::Finish => return,
            End::Dropped => {
                let (lo, hi) = params.offline_ms;
                let offline = lo + ((hi.saturating_sub(lo)) as f64 * rng.unit()) as u64;
                {
                    let mut c = lock(&state);
                    c.audit.drops += 1;
                    c.offline_ms.push(offline);
                }
                tokio::select! {
                    () = ctl.finish.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(offline)) => {}
                }
            }
            End::Lost => {
                lock(&state).audit.server_closes += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
