//! What devices receive: deltas, Telepat's `{new, updated, deleted}` grouping (CONTRACT
//! section 7) and push payloads split to the providers' 4 KB limit (section 8).
//!
//! A change becomes, per channel, one of three kinds:
//!
//! | channel    | create | update             | delete  |
//! |------------|--------|--------------------|---------|
//! | unfiltered | new    | updated            | deleted |
//! | filtered   | enter → new, stay → updated, leave → deleted, none → nothing |
//!
//! `new` carries the after-image. `deleted` carries the before-image, also for a leave: it
//! is the last state the subscriber was entitled to see, whereas the after-image no longer
//! matches its filter (for an author filter, it may belong to someone else). `updated`
//! carries one delta per patch, Telepat's shape, with that patch's own `version`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::channel::ChannelKey;
use super::event::{ChangeEvent, ChangeOp};
use super::filter::{Filter, Transition};
use super::message::Patch;
use super::schema::AppSchema;

/// APNs and FCM data payload limit.
pub const DEFAULT_PUSH_LIMIT: usize = 4096;

/// The delta's `op` as clients know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeltaOp {
    Create,
    Update,
    Delete,
}

/// `{"op","object"|"patch","subscriptions","application_id","timestamp","version"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Delta {
    pub op: DeltaOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
    pub subscriptions: Vec<ChannelKey>,
    pub application_id: String,
    pub timestamp: u64,
    pub version: u64,
}

impl Delta {
    /// Returns a copy whose `subscriptions` keep only the channels `holds` accepts (those the
    /// receiving device subscribed to), or `None` if none is left.
    pub fn narrowed(&self, holds: impl Fn(&ChannelKey) -> bool) -> Option<Delta> {
        let subscriptions: Vec<ChannelKey> = self.subscriptions.iter().filter(|k| holds(k)).cloned().collect();
        (!subscriptions.is_empty()).then(|| Delta { subscriptions, ..self.clone() })
    }
}

/// Tests a filtered channel's filter on the change's before- and after-images.
pub fn transition_for(event: &ChangeEvent, filter: &Filter) -> Transition {
    let test = |image: &Option<Map<String, Value>>| image.as_ref().is_some_and(|m| filter.matches(m));
    match (test(&event.before), test(&event.after)) {
        (false, true) => Transition::Enter,
        (true, true) => Transition::Stay,
        (true, false) => Transition::Leave,
        (false, false) => Transition::None,
    }
}

/// The deltas of `event` for `channels`: each channel key with `None` if it is unfiltered,
/// or the [`Transition`] of its filter (evaluate each distinct filter once per change).
///
/// Channels sharing a kind share one delta, whose `subscriptions` lists them all.
pub fn plan_deliveries(event: &ChangeEvent, channels: &[(ChannelKey, Option<Transition>)]) -> Vec<Delta> {
    let (mut new, mut updated, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for (key, transition) in channels {
        let bucket = match (transition, event.op) {
            (None, ChangeOp::Create) | (Some(Transition::Enter), _) => &mut new,
            (None, ChangeOp::Update) | (Some(Transition::Stay), ChangeOp::Update) => &mut updated,
            (None, ChangeOp::Delete) | (Some(Transition::Leave), _) => &mut deleted,
            // A create cannot stay nor a delete; treat them as their plain kind.
            (Some(Transition::Stay), ChangeOp::Create) => &mut new,
            (Some(Transition::Stay), ChangeOp::Delete) => &mut deleted,
            (Some(Transition::None), _) => continue,
        };
        if !bucket.contains(key) {
            bucket.push(key.clone());
        }
    }

    let delta = |op, object: Option<&Map<String, Value>>, subscriptions: Vec<ChannelKey>| Delta {
        op,
        object: object.cloned(),
        patch: None,
        subscriptions,
        application_id: event.application_id.clone(),
        timestamp: event.timestamp,
        version: event.version,
    };
    let mut out = Vec::new();
    if !new.is_empty() {
        out.push(delta(DeltaOp::Create, event.after.as_ref(), new));
    }
    if !updated.is_empty() {
        let n = event.patches.len() as u64;
        for (i, p) in event.patches.iter().enumerate() {
            let i = i as u64;
            out.push(Delta {
                op: DeltaOp::Update,
                object: None,
                patch: Some(p.for_clients()),
                subscriptions: updated.clone(),
                application_id: event.application_id.clone(),
                timestamp: event.timestamp.saturating_add(i),
                version: event.version.saturating_sub(n - 1 - i),
            });
        }
    }
    if !deleted.is_empty() {
        out.push(delta(DeltaOp::Delete, event.before.as_ref(), deleted));
    }
    out
}

/// Telepat's grouping of deltas by kind, the `data` of a `message` frame or a push.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct DeliveryBatch {
    pub new: Vec<Delta>,
    pub updated: Vec<Delta>,
    pub deleted: Vec<Delta>,
}

impl DeliveryBatch {
    /// Files a delta under its kind.
    pub fn push(&mut self, delta: Delta) {
        match delta.op {
            DeltaOp::Create => self.new.push(delta),
            DeltaOp::Update => self.updated.push(delta),
            DeltaOp::Delete => self.deleted.push(delta),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.new.is_empty() && self.updated.is_empty() && self.deleted.is_empty()
    }

    pub fn len(&self) -> usize {
        self.new.len() + self.updated.len() + self.deleted.len()
    }
}

impl FromIterator<Delta> for DeliveryBatch {
    fn from_iter<I: IntoIterator<Item = Delta>>(iter: I) -> Self {
        let mut b = DeliveryBatch::default();
        iter.into_iter().for_each(|d| b.push(d));
        b
    }
}

/// One silent push: `{"data":{"new":[...],"updated":[...],"deleted":[...]}}`, or
/// `{"sync":[channel keys]}` for changes too large to send, telling the app to fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PushPayload {
    Data { data: DeliveryBatch },
    Sync { sync: Vec<ChannelKey> },
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// Splits a batch into payloads of at most `limit` serialized bytes, keeping delta order.
///
/// Deltas are packed greedily in `new`, `updated`, `deleted` order. A delta that cannot fit
/// even alone is replaced by its channel keys in trailing `{"sync":[...]}` payloads (keys
/// deduplicated). A transport that wraps the payload (APNs `aps`) passes `limit` minus its
/// envelope. Only a single channel key longer than `limit` can exceed it.
pub fn split_push(batch: &DeliveryBatch, limit: usize) -> Vec<PushPayload> {
    let empty = json_len(&PushPayload::Data { data: DeliveryBatch::default() });
    let mut out = Vec::new();
    let mut cur = DeliveryBatch::default();
    let mut cur_len = empty;
    let mut sync: Vec<ChannelKey> = Vec::new();

    let all = batch.new.iter().chain(&batch.updated).chain(&batch.deleted);
    for d in all {
        let size = json_len(d);
        if empty.saturating_add(size) > limit {
            for k in &d.subscriptions {
                if !sync.contains(k) {
                    sync.push(k.clone());
                }
            }
            continue;
        }
        let list_len = match d.op {
            DeltaOp::Create => cur.new.len(),
            DeltaOp::Update => cur.updated.len(),
            DeltaOp::Delete => cur.deleted.len(),
        };
        let add = size + usize::from(list_len > 0);
        if cur_len + add > limit {
            out.push(PushPayload::Data { data: std::mem::take(&mut cur) });
            cur_len = empty;
            cur.push(d.clone());
            cur_len += size;
        } else {
            cur.push(d.clone());
            cur_len += add;
        }
    }
    if !cur.is_empty() {
        out.push(PushPayload::Data { data: cur });
    }

    let sync_empty = json_len(&PushPayload::Sync { sync: Vec::new() });
    let mut keys: Vec<ChannelKey> = Vec::new();
    let mut len = sync_empty;
    for k in sync {
        let add = json_len(&k) + usize::from(!keys.is_empty());
        if !keys.is_empty() && len + add > limit {
            out.push(PushPayload::Sync { sync: std::mem::take(&mut keys) });
            len = sync_empty;
            len += json_len(&k);
        } else {
            len += add;
        }
        keys.push(k);
    }
    if !keys.is_empty() {
        out.push(PushPayload::Sync { sync: keys });
    }
    out
}

/// The visible APNs alert for a create of a model with `ios_push_field`: that field's text.
pub fn push_alert(schema: &AppSchema, model: &str, delta: &Delta) -> Option<String> {
    if delta.op != DeltaOp::Create {
        return None;
    }
    let field = schema.get(model)?.ios_push_field.as_deref()?;
    match delta.object.as_ref()?.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
