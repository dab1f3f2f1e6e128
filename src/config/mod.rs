//! Configuration, layered exactly as CONTRACT section 2: built-in defaults < `config.json` <
//! `TP_*` environment variables < command-line flags. Parsing is strict: a bad boolean, a bad
//! port or an unknown file key is an error naming its origin, and `main` exits 64 on it.
//!
//! The environment is read through [`Source`] so tests inject their own instead of mutating the
//! process environment (which races between parallel tests).

mod keys;
mod parse;

/// A URL with any user information replaced by `***`, for logs and errors (one rule for all).
pub use parse::redact_url;
mod resolve;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use keys::{env_help, Key, Kind, KEYS};
pub use parse::{KafkaOpts, LogLevel, QueueKind, Replication, StoreKind};

/// Where a value came from; every error names it so an operator knows what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File { path: PathBuf, key: String },
    Env(String),
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File { path, key } => write!(f, "{} key `{key}`", path.display()),
            Origin::Env(var) => f.write_str(var),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {reason}")]
    Invalid { origin: Origin, reason: String },
    #[error("{path}: unknown config key `{key}` (see config.example.json)")]
    UnknownKey { path: PathBuf, key: String },
    #[error("{origin}: cannot read config file {path}: {reason}")]
    File { origin: Origin, path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("flag --set: expected KEY=VALUE with a config.json key, got `{0}`")]
    BadSet(String),
}

/// The process environment, or a map in tests.
pub trait Source {
    fn var(&self, name: &str) -> Option<String>;
    /// Every `TP_*` variable, to warn about misspelt ones.
    fn tp_vars(&self) -> Vec<String>;
}

pub struct ProcessEnv;

// The one place the process environment is read as configuration (clippy.toml).
#[allow(clippy::disallowed_methods)]
impl Source for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn tp_vars(&self) -> Vec<String> {
        std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()).filter(|k| k.starts_with("TP_")).collect()
    }
}

impl Source for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
    fn tp_vars(&self) -> Vec<String> {
        self.keys().filter(|k| k.starts_with("TP_")).cloned().collect()
    }
}

/// What the command line contributes to the configuration.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `-c <file>`.
    pub config_file: Option<PathBuf>,
    /// `--set key=value`, in order; later wins.
    pub sets: Vec<String>,
    /// `-t all`: the defaults that differ for the single process (embedded queue, store and
    /// registry when none is configured, its own ports, a loopback HTTP listener). A flag rather
    /// than the role, so configuration sits below the roles it configures.
    pub single_process: bool,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub msg_que: QueueKind,
    pub main_db: StoreKind,
    pub kafka: KafkaConfig,
    pub batch_size: usize,
    /// Aggregation coalescing window; zero means no coalescing.
    pub aggregation_linger: Duration,
    pub redis_url: String,
    /// The CA to trust for `rediss://` (PEM); the system's roots when `None`.
    pub redis_ca_file: Option<PathBuf>,
    pub scylla_nodes: Vec<String>,
    pub scylla_keyspace: String,
    pub scylla_replication: Replication,
    pub sqlite_path: PathBuf,
    pub sockets: SocketsConfig,
    pub jwt_secret: Option<String>,
    pub push: PushConfig,
    pub supervise: SuperviseConfig,
    pub http_host: String,
    /// `None` when `TP_HTTP_PORT=0` turned the endpoint off.
    pub http_port: Option<u16>,
    pub http_limits: HttpLimits,
    pub ingress: IngressConfig,
    /// What one device may hold in the registry, through any door (sockets or `track`).
    pub limits: Limits,
    /// Longest lifetime of a device token (`TP_JWT_MAX_LIFETIME_SECS`).
    pub jwt_max_lifetime: Duration,
    /// `-t all` without Redis: the in-process registry.
    pub registry_in_memory: bool,
    pub memory_queue_capacity: usize,
    pub log_level: LogLevel,
    pub shutdown_grace: Duration,
    /// The file that was loaded, if any, for the start-up log line.
    pub loaded_file: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// Serve `/events`, `/track`, `PUT /apps`, `/objects` on the HTTP port.
    pub enabled: bool,
    /// Bearer token of the event routes (`TP_INGRESS_TOKEN`).
    pub token: Option<String>,
    /// Bearer token of the operator routes (`TP_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// `TP_INGRESS_ALLOW_OPEN`: the development switch that lets a non-loopback ingress run
    /// without tokens.
    pub allow_open: bool,
    /// Origins allowed to call the ingress from a browser on another site (exact matches).
    pub allowed_origins: Vec<String>,
    pub max_bytes: usize,
    /// Most messages one request may carry.
    pub max_messages: usize,
    /// The application `POST /demo/token` mints tokens for (`None`: the route answers 404).
    pub demo_app: Option<String>,
}

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub opts: KafkaOpts,
    pub topic_prefix: String,
    /// Where the aggregation and the writer produce (before the prefix): `write` and
    /// `transport_manager`, or a custom worker's input topic between stages.
    pub outputs: StageOutputs,
}

/// The topics two stages produce to, so a worker outside this binary can sit between them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageOutputs {
    pub aggregation: String,
    pub write: String,
}

#[derive(Clone, Debug, Default)]
pub struct SocketsConfig {
    pub host: String,
    pub port: u16,
    pub ssl: bool,
    pub key_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_passphrase: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub max_connections: usize,
    /// Frames queued per connection before it counts as too slow (close 4008).
    pub queue_frames: usize,
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
    pub handshake_timeout: Duration,
    /// Snapshots and resumes of subscriptions.
    pub resume: ResumeConfig,
    /// Connections in the handshake at once.
    pub max_handshakes: usize,
    /// Client frames per second per connection (bursts of twice as many).
    pub frames_per_sec: u32,
}

/// Snapshot on subscribe and resume after a disconnect (`docs/protocol.md`).
#[derive(Clone, Debug)]
pub struct ResumeConfig {
    /// How far back a cursor may be (older: `RESYNC_REQUIRED`).
    pub window: Duration,
    /// A catch-up starts this long before its cursor.
    pub overlap: Duration,
    /// The delay of the catch-up that follows a snapshot.
    pub settle: Duration,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            window: Duration::from_secs(24 * 3600),
            overlap: Duration::from_secs(60),
            settle: Duration::from_secs(2),
        }
    }
}

impl ResumeConfig {
    /// How long the stores keep channel tombstones: every cursor the window accepts, minus the
    /// overlap, still finds the deletions after it.
    pub fn tombstone_retention(&self) -> Duration {
        self.window + self.overlap
    }
}

/// Bounds of the HTTP listener (health, metrics, ingress).
#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// Requests in process at once (more: 503).
    pub concurrency: usize,
    /// Also bounds how long a kept-alive connection waits idle for its next request.
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

/// Per-device and per-channel bounds of the registry, so one client cannot make routing
/// expensive for everybody.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Subscriptions one device may hold.
    pub device_subscriptions: usize,
    /// Distinct filtered variants of one channel (each is evaluated for every change).
    pub channel_filters: usize,
}

impl Default for Limits {
    /// The table's defaults of `TP_MAX_DEVICE_SUBSCRIPTIONS` and `TP_MAX_CHANNEL_FILTERS`.
    fn default() -> Self {
        Limits {
            device_subscriptions: keys::count_default("max_device_subscriptions"),
            channel_filters: keys::count_default("max_channel_filters"),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SuperviseConfig {
    pub plan: String,
    pub recycle_rate: Duration,
    pub max_crashes: usize,
}

#[derive(Clone, Debug, Default)]
pub struct PushConfig {
    pub apns_url: Option<String>,
    pub fcm_url: String,
    pub concurrency: usize,
    pub rate: u64,
    /// OAuth token endpoints a service account's `token_uri` may name (`TP_PUSH_TOKEN_URLS`).
    pub token_urls: Vec<String>,
}

/// One layer's raw value: file values keep their JSON type, env and flags are text.
#[derive(Clone, Debug)]
enum Raw {
    Json(serde_json::Value),
    Text(String),
}

type Layers = BTreeMap<&'static str, (Raw, Origin)>;

impl Config {
    /// Loads defaults, the config file, the environment and the flags, in that order.
    pub fn load(overrides: &Overrides, env: &dyn Source) -> Result<Config, ConfigError> {
        let mut layers = Layers::new();
        let loaded_file = Self::file_layer(overrides, env, &mut layers)?;
        for key in KEYS {
            for var in std::iter::once(&key.env).chain(key.aliases) {
                if let Some(value) = env.var(var) {
                    layers.insert(key.name, (Raw::Text(value), Origin::Env((*var).to_string())));
                }
            }
        }
        for set in &overrides.sets {
            let (name, value) = set.split_once('=').ok_or_else(|| ConfigError::BadSet(set.clone()))?;
            let key = keys::find(name.trim()).ok_or_else(|| ConfigError::BadSet(set.clone()))?;
            layers.insert(key.name, (Raw::Text(value.to_string()), Origin::Flag(format!("--set {}", key.name))));
        }
        let mut cfg = Self::resolve(&layers, overrides.single_process)?;
        cfg.loaded_file = loaded_file;
        Ok(cfg)
    }

    /// `TP_*` variables that match no key: probably a typo, so `main` warns about them.
    pub fn unknown_env(env: &dyn Source) -> Vec<String> {
        let mut vars: Vec<String> = env
            .tp_vars()
            .into_iter()
            .filter(|v| keys::find_env(v).is_none() && !keys::OTHER_ENV.iter().any(|(o, _)| o == v))
            .collect();
        vars.sort();
        vars
    }

    fn file_layer(
        overrides: &Overrides,
        env: &dyn Source,
        layers: &mut Layers,
    ) -> Result<Option<PathBuf>, ConfigError> {
        let (path, origin, required) = match (&overrides.config_file, env.var("TP_CONFIG")) {
            (Some(p), _) => (p.clone(), Origin::Flag("-c".into()), true),
            (None, Some(p)) => (PathBuf::from(p), Origin::Env("TP_CONFIG".into()), true),
            (None, None) => (PathBuf::from("config.json"), Origin::Default, false),
        };
        if !required && !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::File {
            origin,
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let map = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Err(ConfigError::Json { path, reason: "the top level must be an object".into() }),
            Err(e) => return Err(ConfigError::Json { path, reason: format!("not valid JSON: {e}") }),
        };
        for (name, value) in map {
            let key =
                keys::find(&name).ok_or_else(|| ConfigError::UnknownKey { path: path.clone(), key: name.clone() })?;
            if !value.is_null() {
                layers.insert(key.name, (Raw::Json(value), Origin::File { path: path.clone(), key: name }));
            }
        }
        Ok(Some(path))
    }

    /// The topic name with `TP_TOPIC_PREFIX` in front.
    pub fn topic(&self, base: &str) -> String {
        format!("{}{}", self.kafka.topic_prefix, base)
    }

    /// The effective configuration with secrets masked, for the start-up log line.
    pub fn redacted(&self) -> String {
        format!(
            "msg_que={:?} main_db={:?} brokers={} topic_prefix={:?} kafka_opts={} batch_size={} redis={} \
             scylla={:?}/{} sckt={}:{} ssl={} http={}:{} log_level={:?} grace={:?} file={}",
            self.msg_que,
            self.main_db,
            self.kafka.brokers,
            self.kafka.topic_prefix,
            self.kafka.opts.redacted(),
            self.batch_size,
            parse::redact_url(&self.redis_url),
            self.scylla_nodes,
            self.scylla_keyspace,
            self.sockets.host,
            self.sockets.port,
            self.sockets.ssl,
            self.http_host,
            self.http_port.map_or("off".to_string(), |p| p.to_string()),
            self.log_level,
            self.shutdown_grace,
            self.loaded_file.as_deref().map_or("none".to_string(), |p| p.display().to_string()),
        )
    }
}

/// `127.0.0.0/8`, `::1` or `localhost`: reachable from this host only.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests;
