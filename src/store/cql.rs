//! [`Store`] on Cassandra or ScyllaDB through the `scylla` driver (CQL protocol v4).
//!
//! Tables, all in the configured keyspace (created if missing, with `TP_SCYLLA_REPLICATION`):
//!
//! ```text
//! objects      ((app, model, id)) body text (JSON object map), version bigint,
//!              last_topic text, last_partition int, last_offset bigint, deleted boolean,
//!              parents set<frozen<tuple<text, text>>> (the links this object holds in `children`)
//! children     ((app, parent_model, parent_id), child_model, child_id)
//! applications (id) body text (Application JSON), updated_at timestamp
//! channel_objects, channel_log: the channel index (`channels.rs`)
//! ```
//!
//! Every statement is prepared once at connect, idempotent (so the driver may retry it) and runs
//! at LOCAL_QUORUM with a bounded client-side timeout, so an outage surfaces as
//! [`StoreError::Unavailable`] within seconds. Timestamps are generated client side and
//! monotonic, so a link deleted right after it was written stays deleted whichever coordinator
//! handles each statement.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, Statement};
use scylla::value::CqlTimestamp;

use super::index::IndexEntries;
use super::{ChannelRow, ObjectId, ObjectRow, ObjectWrite, Store, StoreError};
use crate::config::Config;
use crate::error::Cause;
use crate::model::{clock, Application, ChannelKey};

mod channels;
mod errors;
mod rebuild;
mod schema;

pub use schema::{put_link_cql, put_object_cql};

use errors::{execution, new_session, next_row, pager, rows, schema_agreement};
use schema::Prepared;

/// Tuning of [`CqlStore`]; the defaults suit production, tests shrink the page size.
#[derive(Clone, Debug)]
pub struct CqlOptions {
    /// Rows per page for `children` and `list_applications`.
    pub page_size: i32,
    /// Bounds the whole session set-up (TCP, handshake, topology), not just one socket.
    pub connect_timeout: Duration,
    /// Client-side bound on one request, driver retries included.
    pub request_timeout: Duration,
    /// Bound on each schema statement and on waiting for schema agreement at connect.
    pub schema_timeout: Duration,
    /// Statements in flight at once within one `get_objects` / `put_objects` call.
    pub concurrency: usize,
    /// How long channel tombstones and change-log rows live (their TTL).
    pub tombstone_retention: Duration,
}

impl Default for CqlOptions {
    fn default() -> Self {
        CqlOptions {
            page_size: 1000,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            schema_timeout: Duration::from_secs(30),
            concurrency: 64,
            tombstone_retention: super::DEFAULT_TOMBSTONE_RETENTION,
        }
    }
}

/// The CQL store: one driver session (connection pools per node) shared by every caller.
pub struct CqlStore {
    session: Session,
    keyspace: String,
    prepared: Prepared,
    concurrency: usize,
    /// Seconds, as `USING TTL` takes them.
    tombstone_ttl: i32,
}

/// `objects` columns after the key, in the order `get_object` selects them.
type ObjectColumns = (String, i64, Option<String>, Option<i32>, Option<i64>, bool);

/// A (parent_model, parent_id) link.
type Link = (String, String);

/// One object write with what it does to the `children` links and the channel index.
struct Planned<'a> {
    write: &'a ObjectWrite,
    id: &'a str,
    /// The row's JSON, which live channel entries hold too, and version.
    body: String,
    version: i64,
    index: &'a IndexEntries,
    /// The links the object holds after the write (none for a tombstone).
    links: BTreeSet<Link>,
    /// Links recorded before that the object no longer holds.
    stale: BTreeSet<Link>,
}

impl CqlStore {
    /// Connects with the default [`CqlOptions`], but for the tombstone retention, which the
    /// configured resume window decides.
    pub async fn connect(cfg: &Config) -> Result<CqlStore, StoreError> {
        let opts =
            CqlOptions { tombstone_retention: cfg.sockets.resume.tombstone_retention(), ..CqlOptions::default() };
        Self::connect_with(cfg, opts).await
    }

    /// Connects to `cfg.scylla_nodes`, creates the keyspace and tables if missing, waits for
    /// schema agreement and prepares every statement.
    pub async fn connect_with(cfg: &Config, opts: CqlOptions) -> Result<CqlStore, StoreError> {
        // Unquoted CQL identifiers are case-insensitive: use the name the server will report.
        let keyspace = cfg.scylla_keyspace.to_ascii_lowercase();
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .request_timeout(Some(opts.request_timeout))
            .build();
        let builder = SessionBuilder::new()
            .known_nodes(&cfg.scylla_nodes)
            .connection_timeout(opts.connect_timeout)
            .default_execution_profile_handle(profile.into_handle())
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()))
            .keyspaces_to_fetch([keyspace.clone()])
            .schema_agreement_timeout(opts.schema_timeout);
        let session = tokio::time::timeout(opts.connect_timeout, builder.build())
            .await
            .map_err(|_| {
                StoreError::Unavailable(
                    format!("no CQL node of {:?} answered within {:?}", cfg.scylla_nodes, opts.connect_timeout).into(),
                )
            })?
            .map_err(new_session)?;

        // Schema changes are serialised cluster-wide: on a busy cluster this is the slow part of
        // a start, so say how long it took.
        let started = std::time::Instant::now();
        for ddl in schema::ddl(&keyspace, &cfg.scylla_replication.to_cql()) {
            let mut statement = Statement::new(ddl);
            statement.set_request_timeout(Some(opts.schema_timeout));
            session.query_unpaged(statement, ()).await.map_err(execution("creating the schema"))?;
        }
        session.await_schema_agreement().await.map_err(schema_agreement)?;
        tracing::info!(message = "CQL schema ready", %keyspace, elapsed_ms = started.elapsed().as_millis() as u64);

        let prepared = Prepared::new(&session, &keyspace, opts.page_size).await?;
        Ok(CqlStore {
            session,
            keyspace,
            prepared,
            concurrency: opts.concurrency.max(1),
            tombstone_ttl: channels::tombstone_ttl(opts.tombstone_retention),
        })
    }

    /// The keyspace holding the tables, as the server names it (lower case).
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// The driver session, for administration such as dropping a test keyspace.
    pub fn session(&self) -> &Session {
        &self.session
    }

    async fn write(
        &self,
        what: &'static str,
        stmt: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<(), StoreError> {
        self.session.execute_unpaged(stmt, values).await.map_err(execution(what))?;
        Ok(())
    }

    async fn get_object(&self, app: &str, key: ObjectId) -> Result<Option<(ObjectId, ObjectRow)>, StoreError> {
        let result = self
            .session
            .execute_unpaged(&self.prepared.get_object, (app, &key.0, &key.1))
            .await
            .map_err(execution("reading an object"))?;
        let row = result
            .into_rows_result()
            .map_err(rows("reading an object"))?
            .maybe_first_row::<ObjectColumns>()
            // The row's own columns do not fit: this object is damaged, not the store.
            .map_err(|e| StoreError::CorruptRow(Cause::with(format_args!("object {app}/{}/{}", key.0, key.1), e)))?;
        match row {
            None => Ok(None),
            Some(columns) => {
                let row = decode_object(columns).map_err(|e| {
                    StoreError::CorruptRow(Cause::with(format_args!("object {app}/{}/{}", key.0, key.1), e))
                })?;
                Ok(Some((key, row)))
            }
        }
    }

    /// Decides the link changes of one write from the links its row recorded (read back unless
    /// the write says what they are).
    async fn plan<'a>(
        &self,
        app: &str,
        (write, id, index): (&'a ObjectWrite, &'a str, &'a IndexEntries),
    ) -> Result<Planned<'a>, StoreError> {
        // Before any read: a write that cannot be encoded fails the call before anything lands.
        let (body, version) = write.body_and_version(app)?;
        let recorded = match &write.recorded {
            Some(known) => known.iter().cloned().collect(),
            None => self.recorded_links(app, write, id).await?,
        };
        let (links, stale) = Self::plan_links(write, recorded);
        Ok(Planned { write, id, body, version, index, links, stale })
    }

    /// The links `write`'s row holds now.
    async fn recorded_links(&self, app: &str, write: &ObjectWrite, id: &str) -> Result<BTreeSet<Link>, StoreError> {
        let what = "reading an object's links";
        let result = self
            .session
            .execute_unpaged(&self.prepared.get_parents, (app, &write.model, id))
            .await
            .map_err(execution(what))?;
        Ok(result
            .into_rows_result()
            .map_err(rows(what))?
            .maybe_first_row::<(Option<BTreeSet<Link>>,)>()
            .map_err(rows(what))?
            .and_then(|(parents,)| parents)
            .unwrap_or_default())
    }

    /// The links one write keeps and those it drops, from the links its row recorded.
    fn plan_links(write: &ObjectWrite, recorded: BTreeSet<Link>) -> (BTreeSet<Link>, BTreeSet<Link>) {
        let named: BTreeSet<Link> = write.parents.iter().cloned().collect();
        if write.row.deleted {
            // The named links too: they may predate the `parents` column of the row.
            (BTreeSet::new(), recorded.union(&named).cloned().collect())
        } else {
            let stale = recorded.difference(&named).cloned().collect();
            (named, stale)
        }
    }

    async fn put_object(&self, app: &str, plan: &Planned<'_>) -> Result<(), StoreError> {
        let (w, id) = (plan.write, plan.id);
        let pos = w.row.object.last_applied.as_ref();
        let values = (
            app,
            &w.model,
            id,
            &plan.body,
            plan.version,
            pos.map(|p| p.topic.as_str()),
            pos.map(|p| p.partition),
            pos.map(|p| p.offset),
            w.row.deleted,
            &plan.links,
        );
        self.write("writing an object", &self.prepared.put_object, values).await
    }

    /// Runs `calls`, at most `self.concurrency` at a time, stopping at the first error.
    ///
    /// Takes the futures already built (they do nothing until polled): a lazy `map` closure held
    /// across the await trips the compiler's `Send` check on borrowed arguments.
    async fn each<O, Fut>(&self, calls: Vec<Fut>) -> Result<Vec<O>, StoreError>
    where
        Fut: Future<Output = Result<O, StoreError>>,
    {
        futures::stream::iter(calls).buffer_unordered(self.concurrency).try_collect().await
    }
}

impl Store for CqlStore {
    async fn get_objects(&self, app: &str, ids: &[ObjectId]) -> Result<HashMap<ObjectId, ObjectRow>, StoreError> {
        let found = self.each(ids.iter().map(|key| self.get_object(app, key.clone())).collect()).await?;
        Ok(found.into_iter().flatten().collect())
    }

    async fn put_objects(&self, app: &str, writes: &[ObjectWrite]) -> Result<(), StoreError> {
        let writes = super::index::last_writes(app, writes)?;
        // Check every id before writing anything, so a bad call writes nothing.
        let mut keyed = Vec::with_capacity(writes.len());
        for (w, index) in &writes {
            let id = w.row.object.id();
            if id.is_empty() || w.model.is_empty() {
                return Err(StoreError::Corrupt(format!("object of model {:?} in {app} has no id", w.model).into()));
            }
            keyed.push((*w, id, index));
        }
        let plans = self.each(keyed.iter().map(|&planned| self.plan(app, planned)).collect()).await?;
        // Links and channel entries first: a replay skips objects whose row already holds its
        // position, so a row must never be visible before they are (see `Store::put_objects`).
        // Present links and entries are written again, which repairs any lost earlier; each is
        // an idempotent upsert. Boxed: the statements take differently typed values.
        let mut before_rows: channels::Pending<'_> = Vec::new();
        for plan in &plans {
            for (parent_model, parent_id) in &plan.links {
                let values = (app, parent_model.as_str(), parent_id.as_str(), plan.write.model.as_str(), plan.id);
                before_rows.push(self.write("writing a parent link", &self.prepared.put_link, values).boxed());
            }
            for (parent_model, parent_id) in &plan.stale {
                let values = (app, parent_model.as_str(), parent_id.as_str(), plan.write.model.as_str(), plan.id);
                before_rows.push(self.write("removing a parent link", &self.prepared.delete_link, values).boxed());
            }
            self.index_writes(app, plan, &mut before_rows);
        }
        self.each(before_rows).await?;
        self.each(plans.iter().map(|plan| self.put_object(app, plan)).collect()).await?;
        Ok(())
    }

    async fn channel_page(
        &self,
        app: &str,
        channel: &ChannelKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ChannelRow>, StoreError> {
        self.page(app, channel, after, limit).await
    }

    async fn channel_changes(
        &self,
        app: &str,
        channel: &ChannelKey,
        since: u64,
        limit: usize,
    ) -> Result<Option<Vec<ChannelRow>>, StoreError> {
        self.changes(app, channel, since, limit).await
    }

    async fn children(&self, app: &str, parent_model: &str, parent_id: &str) -> Result<Vec<ObjectId>, StoreError> {
        let what = "listing children";
        let pager = self
            .session
            .execute_iter(self.prepared.children.clone(), (app, parent_model, parent_id))
            .await
            .map_err(pager(what))?;
        let stream = pager.rows_stream::<(String, String)>().map_err(rows(what))?;
        stream.map_err(next_row(what)).try_collect().await
    }

    async fn put_application(&self, app: &Application) -> Result<(), StoreError> {
        app.validate().map_err(|e| {
            StoreError::Corrupt(Cause::with(format_args!("refusing to store application {}", app.id), e))
        })?;
        let body = serde_json::to_string(app).map_err(|e| {
            StoreError::Corrupt(Cause::with(format_args!("application {} does not serialize", app.id), e))
        })?;
        let updated_at = CqlTimestamp(clock::now_millis());
        self.write("writing an application", &self.prepared.put_app, (&app.id, body, updated_at)).await
    }

    async fn get_application(&self, id: &str) -> Result<Option<Application>, StoreError> {
        let what = "reading an application";
        let result = self.session.execute_unpaged(&self.prepared.get_app, (id,)).await.map_err(execution(what))?;
        let row =
            result.into_rows_result().map_err(rows(what))?.maybe_first_row::<(String, String)>().map_err(rows(what))?;
        row.map(|(id, body)| super::decode_application(&id, &body)).transpose()
    }

    async fn list_applications(&self) -> Result<Vec<Application>, StoreError> {
        let what = "listing applications";
        let pager = self.session.execute_iter(self.prepared.list_apps.clone(), ()).await.map_err(pager(what))?;
        let stream = pager.rows_stream::<(String, String)>().map_err(rows(what))?;
        stream
            .map_err(next_row(what))
            .try_filter_map(|(id, body)| {
                futures::future::ready(Ok(super::keep_valid_application(super::decode_application(&id, &body))))
            })
            .try_collect()
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.write("ping", &self.prepared.ping, ()).await
    }
}

fn decode_object((body, version, topic, partition, offset, deleted): ObjectColumns) -> Result<ObjectRow, Cause> {
    super::decode_row(&body, version, (topic, partition, offset), deleted)
}
