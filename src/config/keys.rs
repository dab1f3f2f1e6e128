//! The table of every configuration key: its `config.json` name, its environment variable(s),
//! its default and its meaning. `--help`, README, `config.example.json` and the loader all read
//! this one table, so a key cannot be documented in one place and forgotten in another.

/// How a key's value is parsed; the loader turns each into a typed field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Secret,
    Bool,
    Port,
    Count,
    Millis,
}

/// One configuration key. The file key is the environment variable without `TP_`, lower-cased.
/// Keys whose default depends on the role (`-t all` picks embedded parts when no broker or CQL
/// node is *configured*) have no literal default, so copying `config.example.json` to
/// `config.json` cannot accidentally configure one.
#[derive(Debug)]
pub struct Key {
    pub name: &'static str,
    pub env: &'static str,
    /// Older spellings still accepted (Telepat's README and spec disagreed on some names).
    pub aliases: &'static [&'static str],
    pub kind: Kind,
    /// The default as written in `config.example.json`; `None` means unset (JSON `null`).
    pub default: Option<&'static str>,
    pub help: &'static str,
}

const fn key(
    name: &'static str,
    env: &'static str,
    kind: Kind,
    default: Option<&'static str>,
    help: &'static str,
) -> Key {
    Key { name, env, aliases: &[], kind, default, help }
}

pub const KEYS: &[Key] = &[
    key(
        "msg_que",
        "TP_MSG_QUE",
        Kind::Text,
        None,
        "message queue: kafka, or memory (only with -t all) [default: kafka; memory for -t all without a broker]",
    ),
    key(
        "main_db",
        "TP_MAIN_DB",
        Kind::Text,
        None,
        "main store: scylla (any CQL server) or sqlite [default: scylla; sqlite for -t all without a CQL node]",
    ),
    key(
        "kfk_brokers",
        "TP_KFK_BROKERS",
        Kind::Text,
        None,
        "Kafka bootstrap list host:port,host:port, wins over TP_KFK_HOST/TP_KFK_PORT [default: 127.0.0.1:9092]",
    ),
    key("kfk_host", "TP_KFK_HOST", Kind::Text, None, "one Kafka bootstrap broker host (Telepat name)"),
    key("kfk_port", "TP_KFK_PORT", Kind::Port, None, "port of TP_KFK_HOST (default 9092)"),
    key(
        "kafka_opts",
        "TP_KAFKA_OPTS",
        Kind::Secret,
        None,
        "extra librdkafka properties key=value,key=value (TLS, SASL, tuning); write \\, for a literal comma",
    ),
    key("topic_prefix", "TP_TOPIC_PREFIX", Kind::Text, Some(""), "prefix added to every topic name"),
    key(
        "aggregation_output",
        "TP_AGGREGATION_OUTPUT",
        Kind::Text,
        Some("write"),
        "topic (before TP_TOPIC_PREFIX) the aggregation produces to: a custom worker's input (docs/custom-workers.md); Kafka only",
    ),
    key(
        "write_output",
        "TP_WRITE_OUTPUT",
        Kind::Text,
        Some("transport_manager"),
        "topic (before TP_TOPIC_PREFIX) the writer sends change events to: a custom worker's input (docs/custom-workers.md); Kafka only",
    ),
    key(
        "batch_size",
        "TP_BATCH_SIZE",
        Kind::Count,
        Some("500"),
        "most messages a worker takes from Kafka before processing and committing them",
    ),
    key(
        "aggregation_linger_ms",
        "TP_AGGREGATION_LINGER_MS",
        Kind::Millis,
        Some("5"),
        "how long the aggregator waits for more changes to coalesce per object; 0 turns coalescing off",
    ),
    key("redis_host", "TP_REDIS_HOST", Kind::Text, Some("127.0.0.1"), "Redis host"),
    key("redis_port", "TP_REDIS_PORT", Kind::Port, Some("6379"), "Redis port"),
    key(
        "redis_url",
        "TP_REDIS_URL",
        Kind::Secret,
        None,
        "redis:// or rediss:// URL; a comma list of nodes means Redis Cluster (default: from host and port)",
    ),
    key(
        "redis_ca_file",
        "TP_REDIS_CA_FILE",
        Kind::Text,
        None,
        "PEM file of the CA that signs the Redis servers' certificates, for rediss:// (default: the system's roots)",
    ),
    key(
        "scylla_nodes",
        "TP_SCYLLA_NODES",
        Kind::Text,
        None,
        "CQL contact points host:port,... [default: 127.0.0.1:9042]",
    ),
    key("scylla_keyspace", "TP_SCYLLA_KEYSPACE", Kind::Text, Some("nexxus"), "CQL keyspace"),
    key(
        "scylla_replication",
        "TP_SCYLLA_REPLICATION",
        Kind::Text,
        Some("1"),
        "replication of a keyspace created on first start: N (SimpleStrategy) or dc1:3,dc2:3 (NetworkTopologyStrategy)",
    ),
    key("sqlite_path", "TP_SQLITE_PATH", Kind::Text, Some("./nexxus.db"), "embedded store file"),
    key("sckt_host", "TP_SCKT_HOST", Kind::Text, Some("0.0.0.0"), "sockets transport listening address"),
    key(
        "sckt_port",
        "TP_SCKT_PORT",
        Kind::Port,
        None,
        "sockets transport listening port (default 80, 443 with TLS, 3000 with -t all)",
    ),
    key("sckt_ssl", "TP_SCKT_SSL", Kind::Bool, Some("false"), "serve wss:// instead of ws://"),
    key("sckt_key_ssl", "TP_SCKT_KEY_SSL", Kind::Text, None, "PEM private key file (may be encrypted PKCS#8)"),
    Key {
        name: "sckt_cert_file",
        env: "TP_SCKT_CERT_FILE",
        aliases: &["TP_SCKT_CERT_SSL"],
        kind: Kind::Text,
        default: None,
        help: "PEM certificate (chain) file (alias TP_SCKT_CERT_SSL)",
    },
    key(
        "sckt_key_passphrase",
        "TP_SCKT_KEY_PASSPHRASE",
        Kind::Secret,
        None,
        "passphrase of the private key; never logged",
    ),
    key("sckt_ca_cert", "TP_SCKT_CA_CERT", Kind::Text, None, "intermediate certificate(s) appended to the chain"),
    key(
        "sckt_max_connections",
        "TP_SCKT_MAX_CONNECTIONS",
        Kind::Count,
        Some("100000"),
        "connections one sockets transport accepts; more are refused with HTTP 503",
    ),
    key(
        "sckt_queue",
        "TP_SCKT_QUEUE",
        Kind::Count,
        Some("256"),
        "frames queued per connection; a client that falls this far behind is closed with 4008",
    ),
    key(
        "sckt_max_message",
        "TP_SCKT_MAX_MESSAGE",
        Kind::Count,
        Some("65536"),
        "largest frame or message a client may send, in bytes (larger: close 1009)",
    ),
    key(
        "sckt_ping_ms",
        "TP_SCKT_PING_MS",
        Kind::Millis,
        Some("25000"),
        "server ping interval; a peer silent for two intervals is dropped",
    ),
    key(
        "resume_window_ms",
        "TP_RESUME_WINDOW_MS",
        Kind::Millis,
        Some("86400000"),
        "how far back a subscription may resume (older cursors: RESYNC_REQUIRED); channel tombstones are kept this long plus the overlap",
    ),
    key(
        "resume_overlap_ms",
        "TP_RESUME_OVERLAP_MS",
        Kind::Millis,
        Some("60000"),
        "a resume's catch-up starts this long before its cursor: the bound on clock skew and on a change's delay between the store and the sockets",
    ),
    key(
        "snapshot_settle_ms",
        "TP_SNAPSHOT_SETTLE_MS",
        Kind::Millis,
        Some("2000"),
        "after a snapshot, a catch-up this much later sends what was stored late (a writer stores a change after routing it)",
    ),
    key(
        "sckt_handshake_timeout_ms",
        "TP_SCKT_HANDSHAKE_TIMEOUT_MS",
        Kind::Millis,
        Some("10000"),
        "time a client has for the TLS and WebSocket handshakes, and then to bind a token",
    ),
    key(
        "sckt_max_handshakes",
        "TP_SCKT_MAX_HANDSHAKES",
        Kind::Count,
        Some("1024"),
        "connections in the handshake at once; more wait in the kernel's accept queue",
    ),
    key(
        "sckt_frames_per_sec",
        "TP_SCKT_FRAMES_PER_SEC",
        Kind::Count,
        Some("20"),
        "client frames per second per device, all its connections and reconnections together (bursts of twice that); beyond: LIMIT_EXCEEDED, then close 1008",
    ),
    key(
        "max_device_subscriptions",
        "TP_MAX_DEVICE_SUBSCRIPTIONS",
        Kind::Count,
        Some("1000"),
        "subscriptions one device may hold (sockets and track); beyond: LIMIT_EXCEEDED / dead_letter",
    ),
    key(
        "max_channel_filters",
        "TP_MAX_CHANNEL_FILTERS",
        Kind::Count,
        Some("100"),
        "distinct filters on one channel of an application (each is evaluated per change); beyond: LIMIT_EXCEEDED",
    ),
    key(
        "apns_url",
        "TP_APNS_URL",
        Kind::Text,
        None,
        "APNs base URL for every app (default: Apple's, per app production or sandbox)",
    ),
    key("fcm_url", "TP_FCM_URL", Kind::Text, Some("https://fcm.googleapis.com"), "FCM base URL for every app"),
    key(
        "push_token_urls",
        "TP_PUSH_TOKEN_URLS",
        Kind::Text,
        Some("https://oauth2.googleapis.com/token"),
        "OAuth token endpoints a service account's token_uri may name, comma-separated (applications never choose endpoints)",
    ),
    key(
        "push_concurrency",
        "TP_PUSH_CONCURRENCY",
        Kind::Count,
        Some("512"),
        "push requests in flight per process (HTTP/2 streams)",
    ),
    key(
        "push_rate",
        "TP_PUSH_RATE",
        Kind::Count,
        Some("10000"),
        "pushes per second per application (FCM's default quota is 600,000 a minute)",
    ),
    key("jwt_secret", "TP_JWT_SECRET", Kind::Secret, None, "fallback HS256 secret for apps that have none"),
    key(
        "jwt_max_lifetime_secs",
        "TP_JWT_MAX_LIFETIME_SECS",
        Kind::Count,
        Some("604800"),
        "longest device token lifetime accepted (exp minus iat, or minus now without iat), in seconds",
    ),
    key(
        "supervise",
        "TP_SUPERVISE",
        Kind::Text,
        Some("aggregation=1,write=1,track=1,transport_manager=1,sockets_transport=1"),
        "`supervise`: children per role, role=count,...",
    ),
    key(
        "recycle_rate_ms",
        "TP_RECYCLE_RATE_MS",
        Kind::Millis,
        Some("0"),
        "`supervise`: recycle each child after this long (0: never)",
    ),
    key(
        "supervise_max_crashes",
        "TP_SUPERVISE_MAX_CRASHES",
        Kind::Count,
        Some("5"),
        "`supervise`: crashes of one child within a minute before it is given up on",
    ),
    key(
        "http_host",
        "TP_HTTP_HOST",
        Kind::Text,
        None,
        "health, metrics (and ingress) listening address [default: 0.0.0.0; 127.0.0.1 for -t all]",
    ),
    key(
        "http_port",
        "TP_HTTP_PORT",
        Kind::Port,
        None,
        "/healthz, /readyz, /metrics port (default 9000, 8080 with -t all); 0 turns it off",
    ),
    key(
        "http_max_connections",
        "TP_HTTP_MAX_CONNECTIONS",
        Kind::Count,
        Some("512"),
        "open connections the HTTP port holds; more wait in the kernel's accept queue",
    ),
    key(
        "http_concurrency",
        "TP_HTTP_CONCURRENCY",
        Kind::Count,
        Some("64"),
        "HTTP requests processed at once; more get 503 with Retry-After",
    ),
    key(
        "http_header_timeout_ms",
        "TP_HTTP_HEADER_TIMEOUT_MS",
        Kind::Millis,
        Some("10000"),
        "time a client has to send a request's headers, and most a kept-alive connection waits for the next; then it is closed",
    ),
    key(
        "http_request_timeout_ms",
        "TP_HTTP_REQUEST_TIMEOUT_MS",
        Kind::Millis,
        Some("30000"),
        "time a request may take, body included (408 after)",
    ),
    key(
        "ingress_token",
        "TP_INGRESS_TOKEN",
        Kind::Secret,
        None,
        "bearer token of the ingress's event routes (POST /events, POST /track)",
    ),
    key(
        "admin_token",
        "TP_ADMIN_TOKEN",
        Kind::Secret,
        None,
        "bearer token of the operator routes (PUT /apps, GET /dead_letter); must differ from TP_INGRESS_TOKEN",
    ),
    key(
        "ingress_allow_open",
        "TP_INGRESS_ALLOW_OPEN",
        Kind::Bool,
        Some("false"),
        "development only: serve the ingress on a non-loopback address without TP_INGRESS_TOKEN/TP_ADMIN_TOKEN",
    ),
    key(
        "ingress_allowed_origins",
        "TP_INGRESS_ALLOWED_ORIGINS",
        Kind::Text,
        Some(""),
        "origins (scheme://host[:port], comma-separated) whose browsers may call the ingress cross-site",
    ),
    key(
        "ingress",
        "TP_INGRESS",
        Kind::Bool,
        None,
        "serve the HTTP ingress on TP_HTTP_PORT beside any role [default: true with -t all, else false]",
    ),
    key(
        "ingress_max_bytes",
        "TP_INGRESS_MAX_BYTES",
        Kind::Count,
        Some("1048576"),
        "largest HTTP ingress request body in bytes (413 beyond)",
    ),
    key(
        "ingress_max_messages",
        "TP_INGRESS_MAX_MESSAGES",
        Kind::Count,
        Some("1000"),
        "most messages in one POST /events or /track body (400 beyond)",
    ),
    key(
        "demo_app",
        "TP_DEMO_APP",
        Kind::Text,
        Some(""),
        "application whose development tokens POST /demo/token mints for the demo page (empty: off)",
    ),
    key(
        "memory_queue_capacity",
        "TP_MEMORY_QUEUE_CAPACITY",
        Kind::Count,
        Some("10000"),
        "-t all in-process queue: unconsumed records per topic before producers wait",
    ),
    key("log_level", "TP_LOG_LEVEL", Kind::Text, Some("info"), "off, error, warn, info, debug or trace"),
    key(
        "shutdown_grace_ms",
        "TP_SHUTDOWN_GRACE_MS",
        Kind::Millis,
        Some("10000"),
        "graceful shutdown bound in milliseconds",
    ),
];

/// The variables the loader reads that are not configuration keys.
pub const OTHER_ENV: &[(&str, &str)] =
    &[("TP_CONFIG", "path of the config.json to load (else ./config.json if present)")];

/// The table's default of a count key, for the few types that also exist outside a loaded
/// [`super::Config`]; 0 if the key has no numeric default (a test checks every default parses).
pub fn count_default(name: &str) -> usize {
    find(name).and_then(|k| k.default).and_then(|d| d.parse().ok()).unwrap_or(0)
}

pub fn find(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

pub fn find_env(var: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.env == var || k.aliases.contains(&var))
}

/// The text `--help` prints after the options: every environment variable with its meaning.
pub fn env_help() -> String {
    let mut out = String::from("Environment variables (each also a config.json key: lower case, no TP_):\n");
    for k in KEYS {
        let default = match k.default {
            Some("") => " [default: empty]".to_string(),
            Some(d) => format!(" [default: {d}]"),
            None => String::new(),
        };
        out.push_str(&format!("  {:<24} {}{}\n", k.env, k.help, default));
    }
    for (var, help) in OTHER_ENV {
        out.push_str(&format!("  {var:<24} {help}\n"));
    }
    out
}
