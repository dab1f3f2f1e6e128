//! Declarative topics: one JSON file per topic under `topics/` (embedded in the binary too, so a
//! Kubernetes Job needs nothing but the image), and `topics apply`, which creates what is missing
//! and reports drift without touching data. `--fix` also raises partition counts and aligns
//! topic configs; it never lowers partitions (Kafka cannot) nor changes replication (a
//! reassignment is an operator's decision).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;

use crate::config::Config;
use crate::error::WorkerError;

/// The files shipped with the binary, used when no `--dir` is given and `./topics` is absent.
const EMBEDDED: &[(&str, &str)] = &[
    ("aggregation.json", include_str!("../../topics/aggregation.json")),
    ("write.json", include_str!("../../topics/write.json")),
    ("transport_manager.json", include_str!("../../topics/transport_manager.json")),
    ("track.json", include_str!("../../topics/track.json")),
    ("android_transport.json", include_str!("../../topics/android_transport.json")),
    ("ios_transport.json", include_str!("../../topics/ios_transport.json")),
    ("sockets_transport.json", include_str!("../../topics/sockets_transport.json")),
    ("sockets_transport-index.json", include_str!("../../topics/sockets_transport-index.json")),
    ("dead_letter.json", include_str!("../../topics/dead_letter.json")),
    ("system.json", include_str!("../../topics/system.json")),
];

/// One topic file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicFile {
    /// Base name (before `TP_TOPIC_PREFIX`); `{index}` expands to `0..indexes`.
    pub name: String,
    #[serde(default)]
    pub indexes: Option<u32>,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms`; -1 keeps forever.
    pub retention_ms: i64,
    /// `delete` or `compact` (or `compact,delete`).
    pub cleanup_policy: String,
    /// Any further topic configs, verbatim.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub about: String,
}

/// A concrete topic to create or check.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

impl TopicFile {
    fn validate(&self, file: &str) -> Result<(), String> {
        let bad = |what: &str| Err(format!("{file}: {what}"));
        if self.partitions < 1 {
            return bad("partitions must be at least 1");
        }
        if self.replication_factor < 1 {
            return bad("replication_factor must be at least 1");
        }
        if self.name.contains("{index}") != self.indexes.is_some() {
            return bad("`{index}` in the name and `indexes` go together");
        }
        if !["delete", "compact", "compact,delete", "delete,compact"].contains(&self.cleanup_policy.as_str()) {
            return bad("cleanup_policy must be delete, compact or compact,delete");
        }
        Ok(())
    }

    /// The concrete topics this file declares, with the prefix applied.
    pub fn expand(&self, prefix: &str) -> Vec<TopicSpec> {
        let mut config = self.config.clone();
        config.insert("retention.ms".into(), self.retention_ms.to_string());
        config.insert("cleanup.policy".into(), self.cleanup_policy.clone());
        let names: Vec<String> = match self.indexes {
            Some(n) => (0..n).map(|i| self.name.replace("{index}", &i.to_string())).collect(),
            None => vec![self.name.clone()],
        };
        names
            .into_iter()
            .map(|n| TopicSpec {
                name: format!("{prefix}{n}"),
                partitions: self.partitions,
                replication_factor: self.replication_factor,
                config: config.clone(),
            })
            .collect()
    }
}

/// Reads `dir/*.json`, or the embedded files when `dir` is `None`.
pub fn load(dir: Option<&Path>) -> Result<Vec<TopicFile>, WorkerError> {
    let mut sources: Vec<(String, String)> = Vec::new();
    match dir {
        Some(dir) => {
            let entries = std::fs::read_dir(dir).map_err(WorkerError::io(format!("reading {}", dir.display())))?;
            for entry in entries {
                let path = entry.map_err(WorkerError::io(format!("reading {}", dir.display())))?.path();
                if path.extension().is_some_and(|e| e == "json") {
                    let text = std::fs::read_to_string(&path)
                        .map_err(WorkerError::io(format!("reading {}", path.display())))?;
                    sources.push((path.display().to_string(), text));
                }
            }
        }
        None => sources.extend(EMBEDDED.iter().map(|(n, t)| (format!("(embedded) topics/{n}"), t.to_string()))),
    }
    sources.sort();
    let mut files = Vec::new();
    for (name, text) in sources {
        let file: TopicFile = serde_json::from_str(&text).map_err(|e| WorkerError::Data(format!("{name}: {e}")))?;
        file.validate(&name).map_err(WorkerError::Data)?;
        files.push(file);
    }
    if files.is_empty() {
        return Err(WorkerError::Data("no topic files found".into()));
    }
    Ok(files)
}

/// What `apply` did or found for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    Created(String),
    Unchanged(String),
    Drift { topic: String, what: Vec<String> },
    Fixed { topic: String, what: Vec<String> },
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Created(t) => write!(f, "created   {t}"),
            Report::Unchanged(t) => write!(f, "ok        {t}"),
            Report::Drift { topic, what } => write!(f, "drift     {topic}: {}", what.join("; ")),
            Report::Fixed { topic, what } => write!(f, "fixed     {topic}: {}", what.join("; ")),
        }
    }
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `apply` waits for what it created to show in metadata; see [`await_visible`].
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Creates missing topics and compares existing ones with their declaration. Idempotent.
pub async fn apply(cfg: &Config, files: &[TopicFile], fix: bool) -> Result<Vec<Report>, WorkerError> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        super::kafka::base_config(cfg, "nexxus-topics")
            .create()
            .map_err(WorkerError::kafka("creating admin client"))?,
    );
    // Metadata is a blocking librdkafka call: keep it off the async threads.
    let probe = admin.clone();
    let metadata = tokio::task::spawn_blocking(move || probe.inner().fetch_metadata(None, ADMIN_TIMEOUT))
        .await
        .map_err(|e| WorkerError::Fatal(format!("metadata task: {e}")))?
        .map_err(WorkerError::kafka("fetching metadata"))?;
    let brokers = metadata.brokers().len().max(1) as i32;
    let existing: BTreeMap<String, (i32, i32)> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| {
            let rf = t.partitions().first().map_or(0, |p| p.replicas().len() as i32);
            (t.name().to_string(), (t.partitions().len() as i32, rf))
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let mut reports = Vec::new();
    for spec in files.iter().flat_map(|f| f.expand(&cfg.kafka.topic_prefix)) {
        let spec = fit_to_cluster(spec, brokers);
        match existing.get(&spec.name) {
            None => reports.push(create(&admin, &opts, &spec).await?),
            Some(&(partitions, rf)) => reports.push(check(&admin, &opts, &spec, partitions, rf, fix).await?),
        }
    }
    let created: Vec<String> =
        reports.iter().filter_map(|r| if let Report::Created(t) = r { Some(t.clone()) } else { None }).collect();
    await_visible(&admin, created).await?;
    Ok(reports)
}

/// CreateTopics answers when the controller has the topic, before every broker's metadata has
/// it: a producer started right after `apply` could still be told it does not exist. Returning
/// only once metadata shows every partition with a leader makes `apply` a real barrier. A broker
/// busy creating hundreds of partitions for other clients took more than 30 s in a loaded CI
/// run, so the wait is longer than one admin call and its failure says what was still missing.
async fn await_visible(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    created: Vec<String>,
) -> Result<(), WorkerError> {
    let deadline = tokio::time::Instant::now() + VISIBLE_TIMEOUT;
    let mut pending: BTreeMap<String, String> =
        created.into_iter().map(|t| (t, "not in metadata yet".to_string())).collect();
    while !pending.is_empty() {
        let probe = admin.clone();
        let md = tokio::task::spawn_blocking(move || probe.inner().fetch_metadata(None, ADMIN_TIMEOUT))
            .await
            .map_err(|e| WorkerError::Fatal(format!("metadata task: {e}")))?
            .map_err(WorkerError::kafka("fetching metadata"))?;
        for t in md.topics() {
            if let Some(state) = pending.get_mut(t.name()) {
                *state = unready(t).unwrap_or_default();
            }
        }
        pending.retain(|_, state| !state.is_empty());
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let what: Vec<String> = pending.iter().map(|(t, s)| format!("{t} ({s})")).collect();
            return Err(WorkerError::Fatal(format!(
                "created topics not visible in metadata after {} s: {}",
                VISIBLE_TIMEOUT.as_secs(),
                what.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Why a topic's metadata is not yet usable, or `None` when every partition has a leader.
fn unready(t: &rdkafka::metadata::MetadataTopic) -> Option<String> {
    if let Some(e) = t.error() {
        return Some(format!("topic error: {}", rdkafka::types::RDKafkaErrorCode::from(e)));
    }
    if t.partitions().is_empty() {
        return Some("no partitions yet".into());
    }
    t.partitions().iter().find_map(|p| match p.error() {
        Some(e) => Some(format!("partition {} error: {}", p.id(), rdkafka::types::RDKafkaErrorCode::from(e))),
        None if p.leader() < 0 => Some(format!("partition {} has no leader", p.id())),
        None => None,
    })
}

/// A replication factor above the broker count cannot be created; a development cluster of one
/// broker gets RF 1 (and `min.insync.replicas` no higher than the RF, or every write would fail).
fn fit_to_cluster(mut spec: TopicSpec, brokers: i32) -> TopicSpec {
    if spec.replication_factor > brokers {
        tracing::warn!(message = "replication factor capped to the broker count", topic = %spec.name,
            declared = spec.replication_factor, brokers);
        spec.replication_factor = brokers;
    }
    if let Some(isr) = spec.config.get("min.insync.replicas").and_then(|v| v.parse::<i32>().ok()) {
        if isr > spec.replication_factor {
            spec.config.insert("min.insync.replicas".into(), spec.replication_factor.to_string());
        }
    }
    spec
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    opts: &AdminOptions,
    spec: &TopicSpec,
) -> Result<Report, WorkerError> {
    let mut topic = NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication_factor));
    for (k, v) in &spec.config {
        topic = topic.set(k, v);
    }
    let results =
        admin.create_topics([&topic], opts).await.map_err(WorkerError::kafka(format!("creating {}", spec.name)))?;
    for result in results {
        match result {
            Ok(_) => {}
            // Another `apply` won the race: fine, the topic exists.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(Report::Unchanged(spec.name.clone())),
            Err((name, code)) => return Err(WorkerError::Fatal(format!("creating topic {name}: {code}"))),
        }
    }
    Ok(Report::Created(spec.name.clone()))
}

async fn check(
    admin: &AdminClient<DefaultClientContext>,
    opts: &AdminOptions,
    spec: &TopicSpec,
    partitions: i32,
    rf: i32,
    fix: bool,
) -> Result<Report, WorkerError> {
    let mut drift = Vec::new();
    let mut fixable_partitions = false;
    if partitions < spec.partitions {
        drift.push(format!("partitions {partitions} < declared {}", spec.partitions));
        fixable_partitions = true;
    } else if partitions > spec.partitions {
        drift.push(format!(
            "partitions {partitions} > declared {} (Kafka cannot shrink; update the file)",
            spec.partitions
        ));
    }
    if rf != spec.replication_factor {
        drift.push(format!("replication factor {rf} != declared {} (needs a reassignment)", spec.replication_factor));
    }
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], opts)
        .await
        .map_err(WorkerError::kafka(format!("describing {}", spec.name)))?;
    let mut wrong_configs = BTreeMap::new();
    if let Some(Ok(resource)) = described.into_iter().next() {
        let actual: BTreeMap<&str, Option<&str>> =
            resource.entries.iter().map(|e| (e.name.as_str(), e.value.as_deref())).collect();
        for (k, v) in &spec.config {
            let have = actual.get(k.as_str()).copied().flatten();
            if have != Some(v.as_str()) {
                drift.push(format!("{k}={} (declared {v})", have.unwrap_or("unset")));
                wrong_configs.insert(k.clone(), v.clone());
            }
        }
    }
    if drift.is_empty() {
        return Ok(Report::Unchanged(spec.name.clone()));
    }
    if !fix {
        return Ok(Report::Drift { topic: spec.name.clone(), what: drift });
    }
    if fixable_partitions {
        let np = NewPartitions::new(&spec.name, spec.partitions as usize);
        for r in admin.create_partitions([&np], opts).await.map_err(WorkerError::kafka("adding partitions"))? {
            r.map_err(|(t, c)| WorkerError::Fatal(format!("adding partitions to {t}: {c}")))?;
        }
    }
    if !wrong_configs.is_empty() {
        // AlterConfigs replaces the whole set, so send every declared value, not just the wrong ones.
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&spec.name));
        for (k, v) in &spec.config {
            alter = alter.set(k, v);
        }
        for r in admin.alter_configs([&alter], opts).await.map_err(WorkerError::kafka("altering configs"))? {
            r.map_err(|(_, c)| WorkerError::Fatal(format!("altering configs of {}: {c}", spec.name)))?;
        }
    }
    Ok(Report::Fixed { topic: spec.name.clone(), what: drift })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_parse_and_expand() {
        let files = load(None).unwrap();
        let specs: Vec<TopicSpec> = files.iter().flat_map(|f| f.expand("p.")).collect();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        for expected in [
            "p.aggregation",
            "p.write",
            "p.transport_manager",
            "p.track",
            "p.android_transport",
            "p.ios_transport",
            "p.sockets_transport",
            "p.sockets_transport-0",
            "p.sockets_transport-3",
            "p.dead_letter",
            "p.system",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        let system = specs.iter().find(|s| s.name == "p.system").unwrap();
        assert_eq!(system.config["cleanup.policy"], "compact");
        assert_eq!(system.config["retention.ms"], "-1");
    }

    #[test]
    fn repo_files_match_embedded_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("topics");
        assert_eq!(load(Some(&dir)).unwrap(), load(None).unwrap(), "a file was added to topics/ but not to EMBEDDED");
    }

    #[test]
    fn replication_is_capped_to_the_cluster() {
        let spec = TopicFile {
            name: "t".into(),
            indexes: None,
            partitions: 3,
            replication_factor: 3,
            retention_ms: 1,
            cleanup_policy: "delete".into(),
            config: [("min.insync.replicas".to_string(), "2".to_string())].into(),
            about: String::new(),
        }
        .expand("")
        .remove(0);
        let fitted = fit_to_cluster(spec.clone(), 1);
        assert_eq!(fitted.replication_factor, 1);
        assert_eq!(fitted.config["min.insync.replicas"], "1");
        assert_eq!(fit_to_cluster(spec.clone(), 5), spec);
    }

    #[test]
    fn bad_files_are_rejected_with_their_name() {
        let f = TopicFile {
            name: "x-{index}".into(),
            indexes: None,
            partitions: 1,
            replication_factor: 1,
            retention_ms: 1,
            cleanup_policy: "delete".into(),
            config: BTreeMap::new(),
            about: String::new(),
        };
        assert!(f.validate("x.json").unwrap_err().starts_with("x.json"));
        let f = TopicFile { name: "x".into(), cleanup_policy: "shred".into(), ..f };
        assert!(f.validate("x.json").is_err());
    }
}
