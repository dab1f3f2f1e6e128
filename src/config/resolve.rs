//! From the layers to a typed [`Config`]: every key's value from its winning layer or its
//! default in the table, role-dependent defaults, and the checks that span several keys.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::{self, Kind, KEYS};
use super::*;

impl Config {
    pub(super) fn resolve(layers: &Layers, all: bool) -> Result<Config, ConfigError> {
        let get = |name: &'static str| Field {
            name,
            layer: layers.get(name),
            default: keys::find(name).and_then(|k| k.default),
        };
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
                outputs: StageOutputs {
                    aggregation: stage_output(&get("aggregation_output"), msg_que)?,
                    write: stage_output(&get("write_output"), msg_que)?,
                },
            },
            batch_size,
            aggregation_linger: Duration::from_millis(get("aggregation_linger_ms").count_or_default()?),
            redis_url,
            redis_ca_file: get("redis_ca_file").text()?.filter(|p| !p.is_empty()).map(PathBuf::from),
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
                resume: crate::config::ResumeConfig {
                    window: Duration::from_millis(at_least_one("resume_window_ms")? as u64),
                    overlap: Duration::from_millis(get("resume_overlap_ms").count_or_default()?),
                    settle: Duration::from_millis(get("snapshot_settle_ms").count_or_default()?),
                },
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
            log_level: LogLevel::parse(&get("log_level").text_or_default()?, &get("log_level").origin())?,
            shutdown_grace: Duration::from_millis(get("shutdown_grace_ms").count_or_default()?),
            loaded_file: None,
        })
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

/// A stage's output topic: a topic name, and only over Kafka when it is not the default (the
/// in-process queue of `-t all` has no way out to a worker in another process).
fn stage_output(field: &Field<'_>, queue: QueueKind) -> Result<String, ConfigError> {
    let topic = field.text_or_default()?;
    let origin = field.origin();
    if topic.is_empty() {
        return Err(invalid(&origin, "must name a topic"));
    }
    let topic = parse::topic_prefix(&topic, &origin)?;
    if queue == QueueKind::Memory && Some(topic.as_str()) != field.default {
        return Err(invalid(
            &origin,
            "needs Kafka (TP_KFK_BROKERS): the in-process queue of -t all cannot hand records to a worker in another process",
        ));
    }
    Ok(topic)
}

const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
const DEFAULT_SCYLLA_NODES: &str = "127.0.0.1:9042";

pub(super) fn invalid(origin: &Origin, reason: &str) -> ConfigError {
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
