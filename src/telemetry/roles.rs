//! Recording the metrics of the roles: the registry and routing, writes, the sockets and push
//! transports. Names and help text are in [`super::names`].
#![allow(clippy::disallowed_macros)] // the one home of the metric macros (see clippy.toml)

use std::time::Duration;

use super::names;

/// A damaged registry value found; `action` is `replaced`, `skipped` or `removed`.
pub fn registry_corrupt(action: &'static str) {
    metrics::counter!(names::REGISTRY_CORRUPT, "action" => action).increment(1);
}

/// A subscribe refused by a registry limit.
pub fn registry_limit_exceeded() {
    metrics::counter!(names::REGISTRY_LIMIT_EXCEEDED).increment(1);
}

/// The registry round trips one route lookup took.
pub fn registry_round_trips(round_trips: u32) {
    metrics::histogram!(names::REGISTRY_ROUND_TRIPS).record(f64::from(round_trips));
}

/// A change event routed to its subscribers.
pub fn change_routed() {
    metrics::counter!(names::CHANGES_ROUTED).increment(1);
}

/// Channels of one event withheld by `read_acl`.
pub fn acl_channels_withheld(channels: usize) {
    metrics::counter!(names::ACL_CHANNELS_WITHHELD).increment(channels as u64);
}

/// A channel filter evaluated against a change.
pub fn filter_evaluated() {
    metrics::counter!(names::FILTERS_EVALUATED).increment(1);
}

/// The devices holding a channel of one change.
pub fn devices_per_change(devices: usize) {
    metrics::histogram!(names::DEVICES_PER_CHANGE).record(devices as f64);
}

/// A track command applied to the registry.
pub fn track_command() {
    metrics::counter!(names::TRACK_COMMANDS).increment(1);
}

/// A write record already applied, skipped on replay.
pub fn write_replay_skipped() {
    metrics::counter!(names::WRITE_REPLAYS_SKIPPED).increment(1);
}

/// Child deletes sent by one cascading delete.
pub fn cascade_deletes(children: usize) {
    metrics::counter!(names::WRITE_CASCADE_DELETES).increment(children as u64);
}

/// Write records the aggregation forwarded.
pub fn aggregation_forwarded(records: usize) {
    metrics::counter!(names::AGGREGATION_RECORDS, "stage" => "forwarded").increment(records as u64);
}

/// A WebSocket connection opened (served); pair with [`socket_closed`].
pub fn socket_opened() {
    metrics::gauge!(names::SOCKETS_CONNECTIONS).increment(1.0);
}

/// A WebSocket connection closed.
pub fn socket_closed() {
    metrics::gauge!(names::SOCKETS_CONNECTIONS).decrement(1.0);
}

/// A server-sent event stream opened (it is a connection too: [`socket_opened`] as well).
pub fn event_stream_opened() {
    metrics::gauge!(names::SOCKETS_EVENT_STREAMS).increment(1.0);
}

/// A server-sent event stream closed.
pub fn event_stream_closed() {
    metrics::gauge!(names::SOCKETS_EVENT_STREAMS).decrement(1.0);
}

/// Frames queued to sockets.
pub fn sockets_frames_out(frames: usize) {
    metrics::counter!(names::SOCKETS_FRAMES_OUT).increment(frames as u64);
}

/// Bytes queued to sockets.
pub fn sockets_bytes_out(bytes: usize) {
    metrics::counter!(names::SOCKETS_BYTES_OUT).increment(bytes as u64);
}

/// Connections closed because their queue was full.
pub fn sockets_queue_drops(connections: usize) {
    metrics::counter!(names::SOCKETS_QUEUE_DROPS).increment(connections as u64);
}

/// Objects sent by one subscribe snapshot.
pub fn sockets_snapshot(objects: usize) {
    metrics::counter!(names::SOCKETS_SNAPSHOT_OBJECTS).increment(objects as u64);
}

/// Entries sent by one catch-up.
pub fn sockets_catchup(entries: usize) {
    metrics::counter!(names::SOCKETS_CATCHUP_ENTRIES).increment(entries as u64);
}

/// Recipients no longer connected, or addressed to an earlier life of the transport.
pub fn sockets_absent_recipients(recipients: usize) {
    metrics::counter!(names::SOCKETS_ABSENT_RECIPIENTS).increment(recipients as u64);
}

/// Channel views a sockets transport read again (a subscription it did not see, or a view it lost).
pub fn sockets_channel_reads(channels: usize) {
    metrics::counter!(names::SOCKETS_CHANNEL_READS).increment(channels as u64);
}

/// A transport message the transport manager addressed to a sockets transport by channel.
pub fn transport_channel_message() {
    metrics::counter!(names::TRANSPORT_CHANNEL_MESSAGES).increment(1);
}

pub fn sockets_replay_suppressed() {
    metrics::counter!(names::SOCKETS_REPLAYS_SUPPRESSED).increment(1);
}

/// The time from a change's timestamp to its frames queued.
pub fn sockets_delivery_latency(latency: Duration) {
    metrics::histogram!(names::SOCKETS_DELIVERY_LATENCY).record(latency.as_secs_f64());
}

/// An opening refused because the transport is full.
pub fn sockets_refused() {
    metrics::counter!(names::SOCKETS_REFUSED).increment(1);
}

/// An opening (TLS or WebSocket handshake) that ran out of time.
pub fn sockets_handshake_timeout() {
    metrics::counter!(names::SOCKETS_HANDSHAKE_TIMEOUTS).increment(1);
}

/// A socket refused for its token; `reason` is the detail kept out of the close frame.
pub fn sockets_auth_failure(reason: &'static str) {
    metrics::counter!(names::SOCKETS_AUTH_FAILURES, "reason" => reason).increment(1);
}

/// A client closed because it stopped reading.
pub fn sockets_write_timeout() {
    metrics::counter!(names::SOCKETS_WRITE_TIMEOUTS).increment(1);
}

/// A client closed because it stopped answering pings.
pub fn sockets_dead_peer() {
    metrics::counter!(names::SOCKETS_DEAD_PEERS).increment(1);
}

/// A client closed with 1008 for exceeding its limits repeatedly.
pub fn sockets_policy_close() {
    metrics::counter!(names::SOCKETS_POLICY_CLOSES).increment(1);
}

/// `pushes` of `provider` ended with `outcome` (`delivered`, `invalid_token`, `failed`,
/// `refused`).
pub fn push_sent(provider: &'static str, outcome: &'static str, pushes: usize) {
    metrics::counter!(names::PUSH_SENT, "provider" => provider, "outcome" => outcome).increment(pushes as u64);
}

/// A push attempt of `provider` retried.
pub fn push_retried(provider: &'static str) {
    metrics::counter!(names::PUSH_RETRIES, "provider" => provider).increment(1);
}

/// A device token `provider` called invalid, removed.
pub fn push_invalid_token(provider: &'static str) {
    metrics::counter!(names::PUSH_INVALID_TOKENS, "provider" => provider).increment(1);
}

/// A transport message `provider` did not push again: an exact repeat of one it pushed.
pub fn push_replay_suppressed(provider: &'static str) {
    metrics::counter!(names::PUSH_REPLAYS_SUPPRESSED, "provider" => provider).increment(1);
}
