//! One Redis connection for either topology, running batches of single-key commands with one
//! retry on a connection error.
//!
//! - Single node: a [`ConnectionManager`] (a multiplexed connection that reconnects itself). After
//!   a server restart its first command fails with an I/O error and only then triggers the
//!   reconnect, so every batch here is retried once on such an error.
//! - Cluster: a [`ClusterConnection`] (routes by slot, follows MOVED/ASK, reconnects to nodes).
//!   redis-rs sends a whole pipeline to the node of its first key and rejects a pipeline whose
//!   keys hash to different slots (`route_for_pipeline`: "Received crossed slots in pipeline").
//!   So a batch is split into one pipeline per slot, and those run concurrently over the
//!   connection's multiplexed node connections: one round trip of latency, several requests.
//!   Commands on the same key stay in one pipeline, in batch order. Nothing spans slots: no
//!   MULTI, no Lua, no multi-key command.
//!
//! Every command the registry sends is idempotent in effect (SADD, SREM, SET, DEL, GET,
//! SMEMBERS, SCARD), which is what makes the blind retry of a whole batch safe.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{ErrorKind, Pipeline, RedisError, Value};

use super::memory::MemoryDb;
use super::op::{Op, WRONGTYPE};
use super::secure;
use super::RegistryError;
use crate::error::Cause;

/// Bound on establishing a connection (each node for a cluster).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one response from one node.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one attempt of one batch, whatever the driver does inside it (its own reconnects
/// and redirections; redis-rs#1528: timeouts not always honoured when nodes are unreachable).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(12);

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// `-t all` without Redis.
    Memory(MemoryDb),
}

/// A cheap-to-clone handle; clones share the underlying connection and the retry counter.
#[derive(Clone)]
pub struct Conn {
    inner: Inner,
    retries: Arc<AtomicU64>,
}

/// A batch encoded once, run once or twice, with the connection that runs it.
enum Prepared {
    Single(ConnectionManager, Pipeline),
    /// (positions in the batch, the pipeline of one slot)
    Cluster(ClusterConnection, Vec<(Vec<usize>, Pipeline)>),
}

impl Conn {
    /// Connects to one node (`redis://host:port[/db]`, `rediss://` for TLS) or, given a comma
    /// list of URLs, to the cluster they belong to. `ca_pem`: the CA to trust for `rediss://`
    /// instead of the system's roots. Errors show the URL without its password.
    pub async fn connect(url: &str, ca_pem: Option<&[u8]>) -> Result<Conn, RegistryError> {
        secure::install_crypto();
        let shown = crate::config::redact_url(url);
        let urls: Vec<&str> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        let inner = match urls.as_slice() {
            [] => return Err(RegistryError::Unavailable("empty Redis URL".into())),
            [one] => {
                let client = match secure::certificates(ca_pem) {
                    Some(certs) => redis::Client::build_with_tls(*one, certs),
                    None => redis::Client::open(*one),
                }
                .map_err(|e| RegistryError::Unavailable(Cause::with(format_args!("invalid Redis URL `{shown}`"), e)))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(3)
                    .set_max_delay(Duration::from_secs(1));
                let connecting = ConnectionManager::new_with_config(client, config);
                let manager = tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting)
                    .await
                    .map_err(|_| {
                        RegistryError::Unavailable(format!("connecting to Redis at {shown}: timed out").into())
                    })?
                    .map_err(|e| secure::connect_failure(&format!("Redis at {shown}"), e))?;
                Inner::Single(manager)
            }
            many => {
                let mut builder = ClusterClientBuilder::new(many.to_vec())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .overall_response_timeout(Some(RESPONSE_TIMEOUT * 2))
                    .retries(3);
                if let Some(certs) = secure::certificates(ca_pem) {
                    builder = builder.certs(certs);
                }
                let client = builder.build().map_err(|e| {
                    RegistryError::Unavailable(Cause::with(format_args!("invalid Redis Cluster URLs `{shown}`"), e))
                })?;
                // redis-rs#1953: the initial connection can hang; bound it.
                let conn = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_connection())
                    .await
                    .map_err(|_| {
                        RegistryError::Unavailable(format!("connecting to Redis Cluster {shown}: timed out").into())
                    })?
                    .map_err(|e| secure::connect_failure(&format!("Redis Cluster {shown}"), e))?;
                Inner::Cluster(conn)
            }
        };
        Ok(Conn { inner, retries: Arc::new(AtomicU64::new(0)) })
    }

    /// The in-process backend: same commands, same replies, no server.
    pub fn memory() -> Conn {
        Conn { inner: Inner::Memory(MemoryDb::default()), retries: Arc::new(AtomicU64::new(0)) }
    }

    pub fn memory_db(&self) -> Option<MemoryDb> {
        match &self.inner {
            Inner::Memory(db) => Some(db.clone()),
            _ => None,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Batches retried after a connection error since connect (shared by clones).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Sends `PING` (to some node of a cluster).
    pub async fn ping(&self) -> Result<(), RegistryError> {
        let ping = Op::ping();
        self.run("PING", std::slice::from_ref(&ping)).await.map(drop)
    }

    /// Runs one command; see [`Conn::run`].
    pub async fn run_one(&self, what: &str, op: Op) -> Result<Value, RegistryError> {
        let mut out = self.run(what, std::slice::from_ref(&op)).await?;
        out.pop().ok_or_else(|| RegistryError::Unavailable(format!("{what}: empty reply").into()))
    }

    /// Runs a batch as one round trip (per slot on a cluster, concurrently) and returns one
    /// reply per command, in order. Not atomic. On a connection error (I/O, timeout, cluster
    /// down/redirect, lost node) the whole batch runs once more; a second failure is
    /// `Unavailable`. A `WRONGTYPE` reply means a key holds something else than the registry
    /// stored there: `Corrupt` (see [`Conn::run_each`] to have the other replies as well).
    pub async fn run(&self, what: &str, ops: &[Op]) -> Result<Vec<Value>, RegistryError> {
        self.run_each(what, ops).await?.into_iter().collect()
    }

    /// [`Conn::run`], except that a command Redis refused because its key holds another type
    /// (`WRONGTYPE`) is a `Corrupt` in its place while the others' replies stand (Redis runs
    /// every command of a pipeline whatever the others answer), so a caller can repair or skip
    /// that one key. Any other error reply fails the batch as [`Conn::run`] does.
    pub async fn run_each(&self, what: &str, ops: &[Op]) -> Result<Vec<Result<Value, RegistryError>>, RegistryError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let prepared = match &self.inner {
            Inner::Single(manager) => prepare_single(manager, ops),
            Inner::Cluster(cluster) => prepare_cluster(cluster, ops),
            Inner::Memory(db) => return Ok(db.run_each(what, ops)),
        };
        let replies = match self.attempt(&prepared, ops.len()).await {
            Ok(v) => v,
            Err(Failure::Redis(e)) if retryable(&e) => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(message = "redis batch failed, retrying once", what, error = %e);
                self.attempt(&prepared, ops.len()).await.map_err(|f| f.into_error(what))?
            }
            Err(f) => return Err(f.into_error(what)),
        };
        Ok(replies
            .into_iter()
            .map(|v| match v {
                Value::ServerError(e) => Err(wrong_type(what, RedisError::from(e))),
                v => Ok(v),
            })
            .collect())
    }

    async fn attempt(&self, prepared: &Prepared, n: usize) -> Result<Vec<Value>, Failure> {
        let work = async {
            match prepared {
                Prepared::Single(manager, pipe) => {
                    let mut con = manager.clone();
                    pipe.query_async::<Vec<Value>>(&mut con).await.map_err(Failure::Redis)
                }
                Prepared::Cluster(cluster, groups) => {
                    // Built eagerly (no lazy stream closure), which keeps the future `Send` for
                    // callers in `async fn`s of traits.
                    let calls = groups.iter().map(|(positions, pipe)| query_group(cluster.clone(), positions, pipe));
                    let replies = futures::future::try_join_all(calls).await.map_err(Failure::Redis)?;
                    let mut out = vec![Value::Nil; n];
                    for (positions, values) in replies {
                        if positions.len() != values.len() {
                            return Err(Failure::Shape(values.len(), positions.len()));
                        }
                        for (&i, v) in positions.iter().zip(values) {
                            out[i] = v;
                        }
                    }
                    Ok(out)
                }
            }
        };
        let out = tokio::time::timeout(ATTEMPT_TIMEOUT, work).await.map_err(|_| Failure::TimedOut)??;
        if out.len() != n {
            return Err(Failure::Shape(out.len(), n));
        }
        // Pipelines run with `ignore_errors`, so error replies arrive in place. Only WRONGTYPE is
        // a per-key matter; any other (LOADING, CLUSTERDOWN, READONLY, ...) is the server's.
        if let Some(e) = out.iter().find_map(|v| match v {
            Value::ServerError(e) if e.code() != WRONGTYPE => Some(e.clone()),
            _ => None,
        }) {
            return Err(Failure::Redis(e.into()));
        }
        Ok(out)
    }
}

fn prepare_single(manager: &ConnectionManager, ops: &[Op]) -> Prepared {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for op in ops {
        pipe.add_command(op.cmd().clone());
    }
    Prepared::Single(manager.clone(), pipe)
}

/// One pipeline per slot; commands keep their batch order within it.
fn prepare_cluster(cluster: &ClusterConnection, ops: &[Op]) -> Prepared {
    let mut groups: Vec<(Vec<usize>, Pipeline)> = Vec::new();
    let mut by_slot: HashMap<Slot, usize> = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        let g = *by_slot.entry(Slot::for_key(op.key())).or_insert_with(|| {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            groups.push((Vec::new(), pipe));
            groups.len() - 1
        });
        groups[g].0.push(i);
        groups[g].1.add_command(op.cmd().clone());
    }
    Prepared::Cluster(cluster.clone(), groups)
}

async fn query_group<'a>(
    mut con: ClusterConnection,
    positions: &'a [usize],
    pipe: &Pipeline,
) -> Result<(&'a [usize], Vec<Value>), RedisError> {
    pipe.query_async::<Vec<Value>>(&mut con).await.map(|v| (positions, v))
}

enum Failure {
    Redis(RedisError),
    TimedOut,
    /// (replies, commands)
    Shape(usize, usize),
}

impl Failure {
    fn into_error(self, what: &str) -> RegistryError {
        match self {
            Failure::Redis(e) if e.code() == Some(WRONGTYPE) => wrong_type(what, e),
            Failure::Redis(e) => RegistryError::Unavailable(Cause::with(what, e)),
            Failure::TimedOut => {
                RegistryError::Unavailable(format!("{what}: no reply within {ATTEMPT_TIMEOUT:?}").into())
            }
            Failure::Shape(got, want) => {
                RegistryError::Unavailable(format!("{what}: {got} replies to {want} commands").into())
            }
        }
    }
}

fn wrong_type(what: &str, e: RedisError) -> RegistryError {
    RegistryError::Corrupt(Cause::with(format_args!("{what}: a key holds another type than the registry's"), e))
}

/// Errors a fresh attempt can cure: the connection broke or the cluster was moving.
fn retryable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || e.kind() == ErrorKind::ClusterConnectionNotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{in_chain, ProcessError};

    #[test]
    fn a_redis_failure_is_transient_and_keeps_the_redis_error() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = Failure::Redis(RedisError::from(refused)).into_error("GET k");
        assert!(matches!(e, RegistryError::Unavailable(_)), "{e:?}");
        assert!(e.to_string().starts_with("redis unavailable: GET k: "), "{e}");
        let process = ProcessError::from(e.clone());
        assert!(matches!(process, ProcessError::Transient(_)), "{process:?}");
        assert!(in_chain::<RedisError>(&process).is_some_and(RedisError::is_connection_refusal));
        // A clone shares the source rather than dropping it.
        assert!(in_chain::<RedisError>(&e).is_some());
    }
}
