//! Configuration, layered exactly as CONTRACT section 2: built-in defaults < `config.json` <
//! `TP_*` environment variables < command-line flags. Parsing is strict: a bad boolean, a bad
//! port or an unknown file key is an error naming its origin, and `main` exits 64 on it.
//!
//! The environment is read through [`Source`] so tests inject their own instead of mutating the
//! process environment (which races between parallel tests).

mod keys;
mod parse;

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
    /// Connections in the handshake at once.
    pub max_handshakes: usize,
    /// Client frames per second per connection (bursts of twice as many).
    pub frames_per_sec: u32,
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

    fn resolve(layers: &Layers, all: bool) -> Result<Config, ConfigError> {
        let get = |name: &'static str| Field { name, layer: layers.get(name), default: keys::find(name).and_then(|k| k.default) };
        // Check every given value's type, used or not: a bad TP_KFK_PORT is an error even when
        // TP_KFK_BROKERS makes it irrelevant, so a typo never hides until the day it matters.
        for key in KEYS {
            let field = get(key.name);
            match key.kind {
                Kind::Bool => field.boolean().map(drop)?,
                Kind::Port => field.port().map(drop)?,
                Kind::Count | Kind::Millis => field.count().map(drop)?,
                Kind::Text | Kind::Secret => field.text().map(drop)?,
            }
        }

        let brokers = match (get("kfk_brokers").text()?, get("kfk_host").text()?) {
            (Some(list), _) => Some(parse::broker_list(&list, &get("kfk_brokers").origin())?),
            (None, Some(host)) => {
                let port = get("kfk_port").port()?.unwrap_or(9092);
                Some(format!("{host}:{port}"))
            }
            (None, None) => None,
        };
        let broker_configured = brokers.is_some();
        let msg_que = match get("msg_que").text()? {
            Some(v) => parse::queue_kind(&v, &get("msg_que").origin(), all)?,
            None if all && !broker_configured => QueueKind::Memory,
            None => QueueKind::Kafka,
        };
        let scylla_nodes = get("scylla_nodes").text()?;
        let main_db = match get("main_db").text()? {
            Some(v) => parse::store_kind(&v, &get("main_db").origin())?,
            None if all && scylla_nodes.is_none() => StoreKind::Sqlite,
            None => StoreKind::Scylla,
        };
        let scylla_nodes = parse::host_ports(
            &scylla_nodes.unwrap_or_else(|| DEFAULT_SCYLLA_NODES.to_string()),
            &get("scylla_nodes").origin(),
        )?;
        let redis_configured = [get("redis_url"), get("redis_host"), get("redis_port")].iter().any(|f| f.is_set());
        let redis_url = match get("redis_url").text()? {
            Some(url) => parse::redis_url(&url, &get("redis_url").origin())?,
            None => {
                let host = get("redis_host").text_or_default()?;
                let port = get("redis_port").port_or_default()?;
                format!("redis://{host}:{port}")
            }
        };
        let ssl = get("sckt_ssl").boolean_or_default()?;
        // TLS needs a key and a certificate; the culprit is wherever TLS was turned on.
        for (key, var) in [("sckt_key_ssl", "TP_SCKT_KEY_SSL"), ("sckt_cert_file", "TP_SCKT_CERT_FILE")] {
            if ssl && get(key).text()?.is_none() {
                return Err(invalid(&get("sckt_ssl").origin(), &format!("TLS is on but {var} is not set")));
            }
        }
        let sckt_default = if all {
            3000
        } else if ssl {
            443
        } else {
            80
        };
        let http_port = get("http_port").port()?.unwrap_or(if all { 8080 } else { 9000 });
        let at_least_one = |key: &'static str| -> Result<usize, ConfigError> {
            let v = get(key).count_or_default()?;
            if v == 0 {
                return Err(invalid(&get(key).origin(), "must be at least 1"));
            }
            Ok(v as usize)
        };
        let batch_size = at_least_one("batch_size")?;
        let http_host = get("http_host").text()?.unwrap_or_else(|| if all { "127.0.0.1" } else { "0.0.0.0" }.into());
        let ingress = IngressConfig {
            enabled: get("ingress").boolean()?.unwrap_or(all),
            token: get("ingress_token").text()?.filter(|s| !s.is_empty()),
            admin_token: get("admin_token").text()?.filter(|s| !s.is_empty()),
            allow_open: get("ingress_allow_open").boolean_or_default()?,
            allowed_origins: parse::url_list(
                &get("ingress_allowed_origins").text_or_default()?,
                &get("ingress_allowed_origins").origin(),
            )?,
            max_bytes: at_least_one("ingress_max_bytes")?,
            max_messages: at_least_one("ingress_max_messages")?,
            demo_app: get("demo_app").text()?.filter(|s| !s.is_empty()),
        };
        check_ingress_policy(&ingress, &http_host, http_port, &get("admin_token").origin())?;
        Ok(Config {
            msg_que,
            main_db,
            kafka: KafkaConfig {
                brokers: brokers.unwrap_or_else(|| DEFAULT_BROKERS.to_string()),
                opts: KafkaOpts::parse(&get("kafka_opts").text()?.unwrap_or_default(), &get("kafka_opts").origin())?,
                topic_prefix: parse::topic_prefix(
                    &get("topic_prefix").text_or_default()?,
                    &get("topic_prefix").origin(),
                )?,
            },
            batch_size,
            aggregation_linger: Duration::from_millis(get("aggregation_linger_ms").count_or_default()?),
            redis_url,
            scylla_nodes,
            scylla_keyspace: parse::identifier(
                &get("scylla_keyspace").text_or_default()?,
                &get("scylla_keyspace").origin(),
            )?,
            scylla_replication: Replication::parse(
                &get("scylla_replication").text_or_default()?,
                &get("scylla_replication").origin(),
            )?,
            sqlite_path: PathBuf::from(get("sqlite_path").text_or_default()?),
            sockets: SocketsConfig {
                host: get("sckt_host").text_or_default()?,
                port: get("sckt_port").port()?.unwrap_or(sckt_default),
                ssl,
                key_file: get("sckt_key_ssl").text()?.map(PathBuf::from),
                cert_file: get("sckt_cert_file").text()?.map(PathBuf::from),
                key_passphrase: get("sckt_key_passphrase").text()?,
                ca_cert: get("sckt_ca_cert").text()?.map(PathBuf::from),
                max_connections: at_least_one("sckt_max_connections")?,
                queue_frames: at_least_one("sckt_queue")?,
                max_message_bytes: at_least_one("sckt_max_message")?,
                ping_interval: Duration::from_millis(at_least_one("sckt_ping_ms")? as u64),
                handshake_timeout: Duration::from_millis(at_least_one("sckt_handshake_timeout_ms")? as u64),
                max_handshakes: at_least_one("sckt_max_handshakes")?,
                frames_per_sec: u32::try_from(at_least_one("sckt_frames_per_sec")?)
                    .map_err(|_| invalid(&get("sckt_frames_per_sec").origin(), "too large"))?,
            },
            jwt_secret: get("jwt_secret").text()?.filter(|s| !s.is_empty()),
            supervise: SuperviseConfig {
                plan: get("supervise").text_or_default()?,
                recycle_rate: Duration::from_millis(get("recycle_rate_ms").count_or_default()?),
                max_crashes: at_least_one("supervise_max_crashes")?,
            },
            push: PushConfig {
                apns_url: get("apns_url").text()?.filter(|s| !s.is_empty()),
                fcm_url: get("fcm_url").text_or_default()?,
                concurrency: at_least_one("push_concurrency")?,
                rate: at_least_one("push_rate")? as u64,
                token_urls: parse::url_list(
                    &get("push_token_urls").text_or_default()?,
                    &get("push_token_urls").origin(),
                )?,
            },
            http_host,
            http_port: (http_port != 0).then_some(http_port),
            http_limits: HttpLimits {
                max_connections: at_least_one("http_max_connections")?,
                concurrency: at_least_one("http_concurrency")?,
                header_timeout: Duration::from_millis(at_least_one("http_header_timeout_ms")? as u64),
                request_timeout: Duration::from_millis(at_least_one("http_request_timeout_ms")? as u64),
            },
            ingress,
            limits: Limits {
                device_subscriptions: at_least_one("max_device_subscriptions")?,
                channel_filters: at_least_one("max_channel_filters")?,
            },
            jwt_max_lifetime: Duration::from_secs(at_least_one("jwt_max_lifetime_secs")? as u64),
            registry_in_memory: all && !redis_configured,
            memory_queue_capacity: at_least_one("memory_queue_capacity")?,
            log_level: LogLevel::parse(
                &get("log_level").text_or_default()?,
                &get("log_level").origin(),
            )?,
            shutdown_grace: Duration::from_millis(get("shutdown_grace_ms").count_or_default()?),
            loaded_file: None,
        })
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

/// CONTRACT section 9, secure by default: an ingress reachable from other hosts needs both
/// tokens (distinct), unless the development switch says otherwise (`main` logs it loudly).
fn check_ingress_policy(
    ingress: &IngressConfig,
    http_host: &str,
    http_port: u16,
    admin_origin: &Origin,
) -> Result<(), ConfigError> {
    if let (Some(event), Some(admin)) = (&ingress.token, &ingress.admin_token) {
        if event == admin {
            return Err(invalid(
                admin_origin,
                "must differ from TP_INGRESS_TOKEN (the event token must not open operator routes)",
            ));
        }
    }
    if !ingress.enabled || http_port == 0 || ingress.allow_open || is_loopback_host(http_host) {
        return Ok(());
    }
    for (var, value) in [("TP_INGRESS_TOKEN", &ingress.token), ("TP_ADMIN_TOKEN", &ingress.admin_token)] {
        if value.is_none() {
            return Err(invalid(
                &Origin::Env(var.into()),
                &format!(
                    "not set, and the HTTP ingress listens on {http_host} (TP_HTTP_HOST), which is not loopback-only: \
                     set {var}, listen on 127.0.0.1, or set TP_INGRESS_ALLOW_OPEN=true for development"
                ),
            ));
        }
    }
    Ok(())
}

/// `127.0.0.0/8`, `::1` or `localhost`: reachable from this host only.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
const DEFAULT_SCYLLA_NODES: &str = "127.0.0.1:9042";

fn invalid(origin: &Origin, reason: &str) -> ConfigError {
    ConfigError::Invalid { origin: origin.clone(), reason: reason.to_string() }
}

/// A key's winning layer, with typed accessors that name the origin in their errors.
struct Field<'a> {
    name: &'static str,
    layer: Option<&'a (Raw, Origin)>,
    /// The key's default in the table of `keys.rs`, the one place a default is written.
    default: Option<&'static str>,
}

impl Field<'_> {
    /// Given by some layer (a default is not "configured").
    fn is_set(&self) -> bool {
        self.layer.is_some()
    }

    fn origin(&self) -> Origin {
        self.layer.map_or(Origin::Default, |(_, o)| o.clone())
    }

    fn text(&self) -> Result<Option<String>, ConfigError> {
        match self.layer {
            None => Ok(None),
            Some((Raw::Text(s), _)) => Ok(Some(s.clone())),
            Some((Raw::Json(serde_json::Value::String(s)), _)) => Ok(Some(s.clone())),
            Some((Raw::Json(v @ serde_json::Value::Number(_)), _)) => Ok(Some(v.to_string())),
            Some((Raw::Json(v), o)) => Err(invalid(o, &format!("expected a string for `{}`, got {v}", self.name))),
        }
    }

    fn boolean(&self) -> Result<Option<bool>, ConfigError> {
        match self.layer {
            Some((Raw::Json(serde_json::Value::Bool(b)), _)) => Ok(Some(*b)),
            Some((_, o)) => self.text()?.map(|t| parse::boolean(&t, o)).transpose(),
            None => Ok(None),
        }
    }

    fn port(&self) -> Result<Option<u16>, ConfigError> {
        let origin = self.origin();
        self.text()?.map(|t| parse::port(&t, &origin)).transpose()
    }

    fn count(&self) -> Result<Option<u64>, ConfigError> {
        let origin = self.origin();
        self.text()?.map(|t| parse::count(&t, &origin)).transpose()
    }

    /// The given value, else the table's default (empty if it has none).
    fn text_or_default(&self) -> Result<String, ConfigError> {
        Ok(self.text()?.unwrap_or_else(|| self.default.unwrap_or_default().to_string()))
    }

    fn boolean_or_default(&self) -> Result<bool, ConfigError> {
        match self.boolean()? {
            Some(b) => Ok(b),
            None => parse::boolean(self.required_default()?, &Origin::Default),
        }
    }

    fn port_or_default(&self) -> Result<u16, ConfigError> {
        match self.port()? {
            Some(p) => Ok(p),
            None => parse::port(self.required_default()?, &Origin::Default),
        }
    }

    fn count_or_default(&self) -> Result<u64, ConfigError> {
        match self.count()? {
            Some(n) => Ok(n),
            None => parse::count(self.required_default()?, &Origin::Default),
        }
    }

    /// A key read with `*_or_default` must have a default in the table (a test checks each parses).
    fn required_default(&self) -> Result<&'static str, ConfigError> {
        self.default.ok_or_else(|| invalid(&Origin::Default, &format!("`{}` has no default and is not set", self.name)))
    }
}

#[cfg(test)]
mod tests;
