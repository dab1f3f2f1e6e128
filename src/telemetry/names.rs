//! Every metric of the process in one table: its Prometheus name, kind, labels and help text.
//! Dashboards, README and tests read these names, so a name here never changes silently; the
//! help text is what `/metrics` shows as `# HELP`. Code records a metric only through the
//! functions of [`super::record`] and [`super::roles`] (clippy's `disallowed-macros` enforces it).

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

/// Declares each metric's name constant and the list [`ALL`] from the same rows, so the list
/// cannot miss a name.
macro_rules! table {
    ($($(#[$doc:meta])* $id:ident: $kind:ident $name:literal [$($label:literal),*] $help:literal;)*) => {
        $($(#[$doc])* pub const $id: &str = $name;)*
        /// Every metric, in table order.
        pub const ALL: &[Metric] = &[$(Metric { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help }),*];
    };
}

table! {
    // The pipeline and the queues.
    CONSUMED: Counter "nexxus_messages_consumed_total" ["topic"] "Records taken from Kafka (or the in-process queue).";
    PRODUCED: Counter "nexxus_messages_produced_total" ["topic"] "Records acknowledged by the broker.";
    FAILED: Counter "nexxus_messages_failed_total" ["topic", "class"] "Processing failures by class: poison, transient or fatal.";
    DEAD_LETTERED: Counter "nexxus_dead_letter_total" ["topic"] "Records sent to dead_letter, by the topic they came from.";
    PROCESSING_SECONDS: Histogram "nexxus_processing_seconds" ["topic"] "Seconds to process one record.";
    BATCH_SIZE: Histogram "nexxus_batch_messages" [] "Records per batch.";
    /// Seconds per phase of a batch: in line process, end_batch, previous, finish_last; in the background settle, persist, commit; transactional settle, commit_transaction, persist.
    BATCH_PHASE_SECONDS: Histogram "nexxus_batch_phase_seconds" ["phase"]
        "Seconds per batch phase: process, end_batch, previous, finish_last, settle, commit_transaction, persist, commit.";
    CONSUMER_LAG: Gauge "nexxus_consumer_lag" ["topic", "partition"] "Consumer lag from librdkafka statistics (every second).";
    /// Kafka's CPU follows requests rather than records (BENCHMARKS): which client sends which.
    KAFKA_REQUESTS: Counter "nexxus_kafka_requests_total" ["client", "request"]
        "Requests sent to Kafka by client id and request type (librdkafka statistics).";
    REBALANCES: Counter "nexxus_rebalances_total" [] "Consumer group rebalances seen.";
    /// A hanging transaction (ARCHITECTURE): an owned partition without a fetch position, or whose last stable offset stopped.
    PARTITION_STALLS: Counter "nexxus_partition_stalls_total" ["kind"]
        "Owned partitions found stalled: no_position (committed offset unstable) or stable_offset_stuck.";
    RETRIES: Counter "nexxus_retries_total" ["topic"] "Processing retries by input topic (topic=\"persist\" for the store).";
    COMMIT_FAILURES: Counter "nexxus_commit_failures_total" [] "Offsets that could not be stored or committed (their records are processed again).";
    /// `-t all`: records dropped from an in-process topic nobody consumes (`dead_letter`).
    MEMORY_QUEUE_DROPPED: Counter "nexxus_memory_queue_dropped_total" ["topic"]
        "Records dropped from an in-process topic nobody consumes (-t all).";

    // The process around the roles.
    SUPERVISOR_EVENTS: Counter "nexxus_supervisor_events_total" ["role", "event"]
        "Child processes started, crashed, recycled, stopped or given up by the supervisor.";
    INGRESS_REFUSED: Counter "nexxus_ingress_refused_total" ["reason"]
        "Ingress requests refused before a handler: busy, content_type, origin, host.";

    // The registry and routing.
    REGISTRY_CORRUPT: Counter "nexxus_registry_corrupt_total" ["action"] "Damaged registry values replaced, skipped or removed.";
    REGISTRY_LIMIT_EXCEEDED: Counter "nexxus_registry_limit_exceeded_total" []
        "Subscribes refused by TP_MAX_DEVICE_SUBSCRIPTIONS or TP_MAX_CHANNEL_FILTERS.";
    REGISTRY_ROUND_TRIPS: Histogram "nexxus_registry_round_trips_per_batch" [] "Registry round trips to route one batch.";
    CHANGES_ROUTED: Counter "nexxus_changes_routed_total" [] "Change events routed to their subscribers.";
    ACL_CHANNELS_WITHHELD: Counter "nexxus_acl_channels_withheld_total" [] "Channels of an event withheld by read_acl.";
    FILTERS_EVALUATED: Counter "nexxus_filters_evaluated_total" [] "Channel filters evaluated against a change.";
    DEVICES_PER_CHANGE: Histogram "nexxus_devices_per_change" [] "Devices holding a channel of one change.";
    TRANSPORT_CHANNEL_MESSAGES: Counter "nexxus_transport_channel_messages_total" []
        "Transport messages addressed to a sockets transport by channel instead of device lists.";
    TRACK_COMMANDS: Counter "nexxus_track_commands_total" [] "Track commands applied to the registry.";

    // Writes and aggregation.
    WRITE_REPLAYS_SKIPPED: Counter "nexxus_write_replays_skipped_total" [] "Write records already applied, skipped on replay.";
    WRITE_CASCADE_DELETES: Counter "nexxus_write_cascade_deletes_total" [] "Child deletes sent by a cascading delete.";
    AGGREGATION_RECORDS: Counter "nexxus_aggregation_records_total" ["stage"] "Write records the aggregation forwarded.";

    // The sockets transport.
    SOCKETS_CONNECTIONS: Gauge "nexxus_sockets_connections" [] "Open client connections: WebSockets and event streams.";
    SOCKETS_EVENT_STREAMS: Gauge "nexxus_sockets_event_streams" [] "Open server-sent event streams (GET /sse), also counted in nexxus_sockets_connections.";
    SOCKETS_FRAMES_OUT: Counter "nexxus_sockets_frames_out_total" [] "Frames queued to sockets.";
    SOCKETS_BYTES_OUT: Counter "nexxus_sockets_bytes_out_total" [] "Bytes queued to sockets.";
    SOCKETS_QUEUE_DROPS: Counter "nexxus_sockets_queue_drops_total" [] "Connections closed because their queue was full.";
    SOCKETS_SNAPSHOT_OBJECTS: Counter "nexxus_sockets_snapshot_objects_total" [] "Objects sent in subscribe snapshots.";
    SOCKETS_CATCHUP_ENTRIES: Counter "nexxus_sockets_catchup_entries_total" []
        "Entries (current states and deletions) sent in resume and settle catch-ups.";
    SOCKETS_ABSENT_RECIPIENTS: Counter "nexxus_sockets_absent_recipients_total" []
        "Recipients no longer connected or addressed to an earlier life of the transport.";
    SOCKETS_CHANNEL_READS: Counter "nexxus_sockets_channel_reads_total" []
        "Channel views read again from the registry: their members' digest differed from the routed one.";
    SOCKETS_REPLAYS_SUPPRESSED: Counter "nexxus_sockets_replays_suppressed_total" []
        "Transport messages dropped as an exact repeat of one already delivered (a replay upstream).";
    SOCKETS_DELIVERY_LATENCY: Histogram "nexxus_sockets_delivery_latency_seconds" []
        "Seconds from a change's timestamp to its frames queued.";
    SOCKETS_REFUSED: Counter "nexxus_sockets_refused_total" [] "Openings refused because the transport is full.";
    SOCKETS_HANDSHAKE_TIMEOUTS: Counter "nexxus_sockets_handshake_timeouts_total" [] "Openings that ran out of time.";
    SOCKETS_AUTH_FAILURES: Counter "nexxus_sockets_auth_failures_total" ["reason"] "Sockets refused for their token.";
    SOCKETS_WRITE_TIMEOUTS: Counter "nexxus_sockets_write_timeouts_total" [] "Non-reading clients closed.";
    SOCKETS_DEAD_PEERS: Counter "nexxus_sockets_dead_peers_total" [] "Clients closed for not answering pings.";
    SOCKETS_POLICY_CLOSES: Counter "nexxus_sockets_policy_closes_total" [] "Clients closed with 1008 for exceeding their limits.";

    // The push transports.
    PUSH_SENT: Counter "nexxus_push_sent_total" ["provider", "outcome"]
        "Pushes by outcome: delivered, invalid_token, failed or refused.";
    PUSH_RETRIES: Counter "nexxus_push_retries_total" ["provider"] "Push attempts retried.";
    PUSH_INVALID_TOKENS: Counter "nexxus_push_invalid_tokens_total" ["provider"] "Device tokens removed as invalid.";
    PUSH_REPLAYS_SUPPRESSED: Counter "nexxus_push_replays_suppressed_total" ["provider"]
        "Transport messages not pushed again: an exact repeat of one already pushed (a replay upstream).";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("nexxus_"), "{}", m.name);
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total"), "only counters end in _total: {}", m.name);
            assert!(!m.help.is_empty(), "{} has no help", m.name);
        }
    }
}
