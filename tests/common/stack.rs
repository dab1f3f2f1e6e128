//! A test's own slice of the local stack: topics under a unique prefix, optionally its own CQL
//! keyspace, and workers started with exactly its environment.

use std::collections::HashMap;
use std::process::{Command, Stdio};

use nexxus_worker::config::Config;
use serde_json::Value;

use super::Reaper;

/// Every topic of the pipeline, the three keyed by object id with `partitions` partitions.
pub fn pipeline_topics(partitions: i32) -> Vec<(&'static str, i32)> {
    let mut topics = vec![("aggregation", partitions), ("write", partitions), ("transport_manager", partitions)];
    for t in ["track", "ios_transport", "android_transport", "sockets_transport", "dead_letter", "system"] {
        topics.push((t, 1));
    }
    topics
}

pub struct TestStack {
    pub cfg: Config,
    pub env: HashMap<String, String>,
    /// The topic prefix without separators: unique, and usable in application ids.
    pub unique: String,
    keyspace: bool,
}

impl TestStack {
    /// `extra` variables on top of the stack's, then `topics` (base name, partitions) created.
    pub async fn new(name: &str, with_store: bool, extra: &[(&str, &str)], topics: &[(&str, i32)]) -> TestStack {
        let prefix = super::unique_prefix(name);
        let mut env = super::env_for(&prefix);
        if with_store {
            let keyspace: String = format!("k{}", prefix.replace(['-', '.'], "_")).chars().take(48).collect();
            env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace);
        }
        env.insert("TP_HTTP_PORT".into(), "0".into());
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let cfg = Config::load(&Default::default(), &env).unwrap();
        super::create_topics(&cfg, topics).await;
        TestStack { cfg, env, unique: prefix.replace(['-', '.'], ""), keyspace: with_store }
    }

    /// `nexxus-worker -t role -i index` with this stack's environment plus `extra`.
    pub fn start(&self, role: &str, index: u32, extra: &[(&str, String)]) -> Reaper {
        let mut cmd = Command::new(super::BIN);
        cmd.args(["-t", role, "-i", &index.to_string()]).env_clear().envs(&self.env);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Reaper(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap())
    }

    /// Produces `lines` to `topic` (base name) with `key`, in order.
    pub async fn send(&self, topic: &str, key: &str, lines: &[Value]) {
        let producer = super::producer(&self.cfg);
        for l in lines {
            producer.send(&self.cfg.topic(topic), Some(key.as_bytes()), l.to_string().as_bytes(), &[]).await.unwrap();
        }
    }

    /// Drops the keyspace, if the stack has one.
    pub async fn finish(&self) {
        if self.keyspace {
            super::drop_keyspace(&self.cfg).await;
        }
    }
}
