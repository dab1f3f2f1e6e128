//! What Cassandra alone does on this machine for the writer's store calls, with the same driver
//! session (`CqlStore::connect`: LOCAL_QUORUM, 5 s request timeout, client-side monotonic
//! timestamps, idempotent prepared statements) and the same concurrency (64 statements in flight
//! per call).
//!
//! Batches of `TP_BATCH_SIZE` (500) objects of ~300 bytes, each with `--links` parent links, back
//! to back for `--seconds` per round:
//!
//! - `raw_put`: only the writes `CqlStore::put_objects` makes, prepared here with the same
//!   statement shapes: every link upsert of the batch (64 at a time), then every object row
//!   upsert. No reads: the floor of a batch persist.
//! - `store_put`: `CqlStore::put_objects` itself, which first reads each object's recorded links
//!   (one more round of 500 reads per batch).
//! - `store_get`: `CqlStore::get_objects` of the batch, the writer's read before processing.
//!
//! A fresh keyspace per run, dropped at the end. Prints one JSON line per round, with the CPU of
//! this process and of `--cassandra-pid`.
//!
//!     cargo run --release --example bench_raw_cql -- --seconds 15 --cassandra-pid "$(pgrep -f CassandraDaemon)"
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the environment

#[path = "support/limits.rs"]
mod limits;
#[path = "support/proc.rs"]
#[allow(dead_code)]
mod proc;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use nexxus_worker::config::{Config, Overrides, ProcessEnv};
use nexxus_worker::model::{SourcePosition, StoredObject};
use nexxus_worker::store::{CqlOptions, CqlStore, ObjectId, ObjectRow, ObjectWrite, Store};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use serde_json::{json, Map, Value};

const APP: &str = "limits";
const MODEL: &str = "task";

/// The object of `index` at `version`: about 300 bytes of JSON, like a task of the load tool.
fn write(index: u64, version: u64, links: u64) -> ObjectWrite {
    let mut object = Map::new();
    object.insert("id".into(), json!(format!("o{index}")));
    object.insert("type".into(), json!(MODEL));
    object.insert("application_id".into(), json!(APP));
    object.insert("context_id".into(), json!(format!("c{}", index % 100)));
    object.insert("project_id".into(), json!(format!("p{}", index % 100)));
    object.insert("title".into(), json!(format!("task {index} {}", "x".repeat(120))));
    object.insert("status".into(), json!("open"));
    object.insert("votes".into(), json!(version));
    object.insert("created".into(), json!(1_700_000_000u64));
    object.insert("modified".into(), json!(1_700_000_000u64 + version));
    let position =
        SourcePosition { topic: "limits.write".into(), partition: (index % 12) as i32, offset: version as i64 };
    ObjectWrite {
        model: MODEL.into(),
        row: ObjectRow { object: StoredObject { object, version, last_applied: Some(position) }, deleted: false },
        parents: (0..links).map(|l| (format!("project{l}"), format!("p{}", index % 100))).collect(),
        recorded: None,
        index: Default::default(),
    }
}

/// The writes of `CqlStore::put_objects`, prepared with the same statement shapes (see
/// `src/store/cql/schema.rs`), so the loop below costs what the store's writes cost.
struct RawWrites {
    put_object: PreparedStatement,
    put_link: PreparedStatement,
}

impl RawWrites {
    async fn prepare(session: &Session, ks: &str) -> anyhow::Result<Self> {
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql).await?;
            p.set_is_idempotent(true);
            Ok::<_, anyhow::Error>(p)
        };
        Ok(RawWrites {
            put_object: prep(nexxus_worker::store::cql::put_object_cql(ks)).await?,
            put_link: prep(nexxus_worker::store::cql::put_link_cql(ks)).await?,
        })
    }

    /// Links first, then rows, each round `concurrency` statements at a time; every statement's
    /// latency goes to `each`.
    async fn put(
        &self,
        session: &Session,
        writes: &[ObjectWrite],
        concurrency: usize,
        each: &mut Histogram<u64>,
    ) -> anyhow::Result<()> {
        let timed = |started: Instant| started.elapsed().as_micros() as u64;
        let links: Vec<_> = writes
            .iter()
            .flat_map(|w| w.parents.iter().map(move |(pm, pid)| (w.row.object.id(), pm.as_str(), pid.as_str())))
            .map(|(id, pm, pid)| async move {
                let started = Instant::now();
                session.execute_unpaged(&self.put_link, (APP, pm, pid, MODEL, id)).await?;
                Ok::<_, anyhow::Error>(timed(started))
            })
            .collect();
        let link_times: Vec<u64> = stream::iter(links).buffer_unordered(concurrency).try_collect().await?;
        let mut rows = Vec::with_capacity(writes.len());
        for w in writes {
            let (body, version) = w.body_and_version(APP)?;
            let parents: BTreeSet<(String, String)> = w.parents.iter().cloned().collect();
            rows.push((w, body, version, parents));
        }
        let rows: Vec<_> = rows
            .iter()
            .map(|(w, body, version, parents)| async move {
                let pos = w.row.object.last_applied.as_ref();
                let values = (
                    APP,
                    MODEL,
                    w.row.object.id(),
                    body,
                    version,
                    pos.map(|p| p.topic.as_str()),
                    pos.map(|p| p.partition),
                    pos.map(|p| p.offset),
                    w.row.deleted,
                    parents,
                );
                let started = Instant::now();
                session.execute_unpaged(&self.put_object, values).await?;
                Ok::<_, anyhow::Error>(timed(started))
            })
            .collect();
        let row_times: Vec<u64> = stream::iter(rows).buffer_unordered(concurrency).try_collect().await?;
        for us in link_times.into_iter().chain(row_times) {
            each.saturating_record(us.max(1));
        }
        Ok(())
    }
}

/// One round: batches back to back for `seconds`, over `objects` ids in turn.
struct Round<'a> {
    name: &'static str,
    store: &'a CqlStore,
    raw: &'a RawWrites,
    batch: u64,
    objects: u64,
    links: u64,
    concurrency: usize,
    seconds: u64,
    cassandra_pid: u32,
}

impl Round<'_> {
    async fn run(&self) -> anyhow::Result<Value> {
        let (mut per_batch, mut per_statement) = (limits::histogram()?, limits::histogram()?);
        let load_before = limits::load_average();
        let cpu = limits::CpuWindow::start(&[("bench", std::process::id()), ("cassandra", self.cassandra_pid)]);
        let started = Instant::now();
        let (mut batches, mut version) = (0u64, 1u64);
        while started.elapsed() < Duration::from_secs(self.seconds) {
            let first = (batches * self.batch) % self.objects;
            let indexes = (first..first + self.batch).map(|i| i % self.objects);
            let batch_started = Instant::now();
            match self.name {
                "store_get" => {
                    let ids: Vec<ObjectId> = indexes.map(|i| (MODEL.to_string(), format!("o{i}"))).collect();
                    let found = self.store.get_objects(APP, &ids).await?;
                    anyhow::ensure!(found.len() == ids.len(), "read {} of {} objects", found.len(), ids.len());
                }
                name => {
                    let writes: Vec<ObjectWrite> = indexes.map(|i| write(i, version, self.links)).collect();
                    if name == "raw_put" {
                        self.raw.put(self.store.session(), &writes, self.concurrency, &mut per_statement).await?;
                    } else {
                        self.store.put_objects(APP, &writes).await?;
                    }
                }
            }
            per_batch.saturating_record(batch_started.elapsed().as_micros() as u64);
            batches += 1;
            version += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let statements = match self.name {
            "raw_put" => 1 + self.links,
            "store_put" => 2 + self.links,
            _ => 1,
        };
        Ok(json!({
            "bench": "raw_cql",
            "round": self.name,
            "seconds": self.seconds,
            "batch": self.batch,
            "links": self.links,
            "concurrency": self.concurrency,
            "batches": batches,
            "objects_per_s": ((batches * self.batch) as f64 / elapsed).round(),
            "statements_per_s": ((batches * self.batch * statements) as f64 / elapsed).round(),
            "batch_latency": limits::summary(&per_batch),
            "statement_latency": (self.name == "raw_put").then(|| limits::summary(&per_statement)),
            "cpu_cores": cpu.cores(),
            "load_average_before": load_before,
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cfg = Config::load(&Overrides::default(), &ProcessEnv)?;
    // `--keyspace K --rounds none` drops the keyspace of a run that could not drop its own.
    cfg.scylla_keyspace = limits::arg_text("--keyspace").unwrap_or_else(|| format!("limits{}", limits::unique()));
    let opts = CqlOptions::default();
    let concurrency = opts.concurrency;
    let store = CqlStore::connect_with(&cfg, opts).await?;
    let measured = measure(&store, &cfg, concurrency).await;
    // Whatever happened: one keyspace per run must not pile up on a shared server.
    let drop = format!("DROP KEYSPACE IF EXISTS {}", store.keyspace());
    store.session().query_unpaged(drop, ()).await?;
    measured
}

/// Fills the keyspace, then runs each round of `--rounds`, printing its JSON line.
async fn measure(store: &CqlStore, cfg: &Config, concurrency: usize) -> anyhow::Result<()> {
    let names = limits::arg_text("--rounds").unwrap_or_else(|| "raw_put,store_put,store_get".into());
    let mut rounds = Vec::new();
    for name in names.split(',').filter(|n| !n.is_empty() && *n != "none") {
        rounds.push(match name {
            "raw_put" => "raw_put",
            "store_put" => "store_put",
            "store_get" => "store_get",
            other => anyhow::bail!("unknown round {other}: raw_put, store_put, store_get or none"),
        });
    }
    if rounds.is_empty() {
        return Ok(());
    }
    let raw = RawWrites::prepare(store.session(), store.keyspace()).await?;
    let mut round = Round {
        name: "raw_put",
        store,
        raw: &raw,
        batch: limits::arg("--batch", cfg.batch_size as u64).max(1),
        objects: limits::arg("--objects", 10_000).max(1),
        links: limits::arg("--links", 1),
        concurrency,
        seconds: limits::arg("--seconds", 15),
        cassandra_pid: limits::arg("--cassandra-pid", 0) as u32,
    };
    // Every object exists before any round, so reads find rows and writes overwrite, as in use.
    let all: Vec<ObjectWrite> = (0..round.objects).map(|i| write(i, 0, round.links)).collect();
    for chunk in all.chunks(round.batch as usize) {
        store.put_objects(APP, chunk).await?;
    }
    for name in rounds {
        round.name = name;
        println!("{}", round.run().await?);
    }
    Ok(())
}
