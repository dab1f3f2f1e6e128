//! Strict value parsers. Each error says what was expected and what was given, never guesses:
//! Telepat read any non-empty string (even "false") as true, which is exactly what we refuse.

use super::resolve::invalid;
use super::{ConfigError, Origin};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Kafka,
    Memory,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Scylla,
    Sqlite,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(text: &str, origin: &Origin) -> Result<Self, ConfigError> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(invalid(origin, &format!("expected off, error, warn, info, debug or trace, got {text:?}")))
            }
        })
    }

    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Keyspace replication for a keyspace the store creates on first start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    Simple(u32),
    PerDatacenter(Vec<(String, u32)>),
}

impl Replication {
    pub fn parse(text: &str, origin: &Origin) -> Result<Self, ConfigError> {
        let bad = || invalid(origin, &format!("expected N or dc1:N,dc2:N, got {text:?}"));
        if let Ok(n) = text.trim().parse::<u32>() {
            return if n == 0 { Err(bad()) } else { Ok(Replication::Simple(n)) };
        }
        let mut dcs = Vec::new();
        for part in text.split(',') {
            let (dc, n) = part.trim().split_once(':').ok_or_else(bad)?;
            let n: u32 = n.trim().parse().map_err(|_| bad())?;
            if dc.trim().is_empty() || n == 0 {
                return Err(bad());
            }
            dcs.push((dc.trim().to_string(), n));
        }
        Ok(Replication::PerDatacenter(dcs))
    }

    /// The CQL `replication = {...}` map.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::Simple(n) => format!("{{'class': 'SimpleStrategy', 'replication_factor': {n}}}"),
            Replication::PerDatacenter(dcs) => {
                let parts: Vec<String> = dcs.iter().map(|(dc, n)| format!("'{dc}': {n}")).collect();
                format!("{{'class': 'NetworkTopologyStrategy', {}}}", parts.join(", "))
            }
        }
    }
}

/// Extra librdkafka properties from `TP_KAFKA_OPTS`. Values may hold secrets (SASL passwords), so
/// only the keys are ever logged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaOpts(pub Vec<(String, String)>);

impl KafkaOpts {
    pub fn parse(text: &str, origin: &Origin) -> Result<Self, ConfigError> {
        let mut pairs = Vec::new();
        for item in split_unescaped(text, ',') {
            if item.trim().is_empty() {
                continue;
            }
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| invalid(origin, &format!("expected key=value, got {:?}", item.trim())))?;
            let k = k.trim();
            if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
                return Err(invalid(origin, &format!("bad librdkafka property name {k:?}")));
            }
            pairs.push((k.to_string(), v.trim().to_string()));
        }
        Ok(KafkaOpts(pairs))
    }

    pub fn redacted(&self) -> String {
        let keys: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
        format!("[{}]", keys.join(","))
    }
}

/// Splits on `sep`, honouring `\<sep>` as a literal (SASL JAAS strings contain commas).
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&sep) {
            current.push(sep);
            chars.next();
        } else if c == sep {
            out.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    out.push(current);
    out
}

pub fn boolean(text: &str, origin: &Origin) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(origin, &format!("expected true/false/1/0/yes/no, got {text:?}"))),
    }
}

pub fn port(text: &str, origin: &Origin) -> Result<u16, ConfigError> {
    text.trim().parse::<u16>().map_err(|_| invalid(origin, &format!("expected a port number 0-65535, got {text:?}")))
}

pub fn count(text: &str, origin: &Origin) -> Result<u64, ConfigError> {
    text.trim().parse::<u64>().map_err(|_| invalid(origin, &format!("expected a non-negative integer, got {text:?}")))
}

pub fn queue_kind(text: &str, origin: &Origin, all: bool) -> Result<QueueKind, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "kafka" => Ok(QueueKind::Kafka),
        "memory" if all => Ok(QueueKind::Memory),
        "memory" => Err(invalid(origin, "memory queue only works with -t all (one process)")),
        _ => Err(invalid(origin, &format!("expected kafka or memory, got {text:?}"))),
    }
}

pub fn store_kind(text: &str, origin: &Origin) -> Result<StoreKind, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "scylla" | "cassandra" | "cql" => Ok(StoreKind::Scylla),
        "sqlite" => Ok(StoreKind::Sqlite),
        _ => Err(invalid(origin, &format!("expected scylla or sqlite, got {text:?}"))),
    }
}

/// `host:port,host:port`, each part checked so a typo fails at start, not at first connect.
pub fn host_ports(text: &str, origin: &Origin) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (host, p) =
            part.rsplit_once(':').ok_or_else(|| invalid(origin, &format!("expected host:port, got {part:?}")))?;
        if host.is_empty() || port(p, origin)? == 0 {
            return Err(invalid(origin, &format!("expected host:port with a port 1-65535, got {part:?}")));
        }
        out.push(part.to_string());
    }
    if out.is_empty() {
        return Err(invalid(origin, "expected at least one host:port"));
    }
    Ok(out)
}

pub fn broker_list(text: &str, origin: &Origin) -> Result<String, ConfigError> {
    Ok(host_ports(text, origin)?.join(","))
}

pub fn redis_url(text: &str, origin: &Origin) -> Result<String, ConfigError> {
    for part in text.split(',').map(str::trim) {
        if !(part.starts_with("redis://") || part.starts_with("rediss://")) {
            return Err(invalid(origin, &format!("expected redis:// or rediss:// URLs, got {:?}", redact_url(part))));
        }
    }
    Ok(text.trim().to_string())
}

/// Drops the password of `redis://user:pass@host` for logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Kafka topic names allow `[a-zA-Z0-9._-]`; the prefix must keep every name legal.
/// A comma-separated list of `http(s)://` URLs or origins (empty: none), each without a trailing `/`.
pub fn url_list(text: &str, origin: &Origin) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ok = (item.starts_with("https://") || item.starts_with("http://"))
            && !item.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(invalid(origin, &format!("expected http(s):// URLs separated by commas, got {item:?}")));
        }
        out.push(item.trim_end_matches('/').to_string());
    }
    Ok(out)
}

pub fn topic_prefix(text: &str, origin: &Origin) -> Result<String, ConfigError> {
    if text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) && text.len() <= 200 {
        Ok(text.to_string())
    } else {
        Err(invalid(origin, &format!("topic prefix may only contain a-z A-Z 0-9 . _ -, got {text:?}")))
    }
}

/// A CQL identifier we interpolate into DDL: letters, digits, underscore, 1-48 chars.
pub fn identifier(text: &str, origin: &Origin) -> Result<String, ConfigError> {
    let ok = !text.is_empty()
        && text.len() <= 48
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && text.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(text.to_string())
    } else {
        Err(invalid(origin, &format!("expected a CQL identifier (letter, then letters/digits/_), got {text:?}")))
    }
}
