//! Reference clients: one live subscription each, never dropped; what they receive is what a
//! churner's offline period would have cost to replay.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{lock, Client, ClientAudit, Expected};
use super::{Control, Params};
use crate::plan::Shape;
use crate::socket;
use crate::view::View;
use nexxus_worker::model::clock;

/// A reference client: one live subscription, never dropped; every `message` frame's arrival
/// (unix µs), bytes and deltas, and the view those deltas build.
pub struct Reference {
    pub channel: usize,
    pub filtered: bool,
    pub(super) key: Option<String>,
    pub frames: Vec<(u64, u64, u64)>,
    pub(super) view: View,
}

impl Reference {
    /// Bytes and deltas of its frames that arrived in [from, to).
    pub(super) fn between(&self, from: u64, to: u64) -> (u64, u64) {
        let start = self.frames.partition_point(|f| f.0 < from);
        let end = self.frames.partition_point(|f| f.0 < to);
        self.frames[start..end.max(start)].iter().fold((0, 0), |(b, d), f| (b + f.1, d + f.2))
    }
}

/// Connects the reference of (channel, filtered) and subscribes it (live only).
pub async fn reference(
    params: &Params,
    (channel, filtered): (usize, bool),
    n: usize,
) -> anyhow::Result<(socket::Ws, Reference)> {
    let base = &params.ws[n % params.ws.len()];
    let mut ws = socket::connect(base, &params.app, &params.secret, &format!("ref{n}")).await?;
    let mut data = json!({"channel": Shape::channel(channel)});
    if filtered {
        data["filters"] = Shape::filter();
    }
    socket::send(&mut ws, json!({"event": "subscribe", "data": data}).to_string()).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), socket::next_text(&mut ws))
        .await?
        .ok_or_else(|| anyhow::anyhow!("reference closed while subscribing"))?;
    let frame: Value = serde_json::from_str(&answer)?;
    anyhow::ensure!(frame["event"] == "subscribed", "reference subscribe refused: {answer}");
    let key = frame["data"]["channel"].as_str().map(str::to_string);
    Ok((ws, Reference { channel, filtered, key, frames: Vec::new(), view: View::default() }))
}

/// Records the reference's frames until `finish`.
pub async fn record(mut ws: socket::Ws, state: Arc<Mutex<Reference>>, ctl: Arc<Control>) {
    loop {
        let text = tokio::select! {
            () = ctl.finish.cancelled() => return,
            t = socket::next_text(&mut ws) => match t { Some(t) => t, None => return },
        };
        let now = clock::now_micros();
        ctl.frames.fetch_add(1, Ordering::Relaxed);
        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
        if frame["event"] != "message" {
            continue;
        }
        let mut r = state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut deltas = 0;
        let key = r.key.clone().unwrap_or_default();
        for kind in ["new", "updated", "deleted"] {
            for d in frame["data"][kind].as_array().into_iter().flatten() {
                deltas += 1;
                if d["subscriptions"].as_array().is_some_and(|s| s.iter().any(|k| k == key.as_str())) {
                    r.view.delta(kind, d);
                }
            }
        }
        r.frames.push((now, text.len() as u64, deltas));
    }
}

/// The churners and references of a run.
pub struct Fleet {
    pub clients: Vec<Arc<Mutex<Client>>>,
    pub references: Vec<Arc<Mutex<Reference>>>,
}

impl Fleet {
    pub fn new(shape: &Shape) -> Fleet {
        let clients =
            (0..shape.clients).map(|i| Arc::new(Mutex::new(Client::new(i, &shape.subscriptions(i))))).collect();
        Fleet { clients, references: Vec::new() }
    }

    /// Every churner online with each subscription whole.
    pub fn settled(&self) -> usize {
        self.clients.iter().filter(|c| lock(c).settled()).count()
    }

    /// Churners and references whose views match `expected` (a quick test while draining).
    pub fn matching(&self, expected: &Expected) -> (usize, usize) {
        let churners = self.clients.iter().filter(|c| lock(c).check(expected).wrong() == 0).count();
        let references = self
            .references
            .iter()
            .filter(|r| {
                let r = r.lock().unwrap_or_else(PoisonError::into_inner);
                reference_audit(&r, expected).wrong() == 0
            })
            .count();
        (churners, references)
    }
}

pub(super) fn reference_audit(r: &Reference, expected: &Expected) -> ClientAudit {
    let mut probe = Client::new(usize::MAX, &[(r.channel, r.filtered)]);
    if let Some(sub) = probe.subs.first_mut() {
        sub.view.objects.clone_from(&r.view.objects);
        sub.view.counts = r.view.counts;
    }
    let mut a = probe.check(expected);
    a.gaps = r.view.gaps();
    a
}
