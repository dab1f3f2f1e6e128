//! The keyspace, the tables and the statements on them.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;

use super::errors::prepare;
use crate::store::StoreError;

/// The prepared statements, one per operation.
pub(super) struct Prepared {
    pub(super) get_object: PreparedStatement,
    pub(super) get_parents: PreparedStatement,
    pub(super) put_object: PreparedStatement,
    pub(super) put_link: PreparedStatement,
    pub(super) delete_link: PreparedStatement,
    pub(super) children: PreparedStatement,
    pub(super) put_app: PreparedStatement,
    pub(super) get_app: PreparedStatement,
    pub(super) list_apps: PreparedStatement,
    pub(super) ping: PreparedStatement,
    pub(super) put_entry: PreparedStatement,
    pub(super) put_log: PreparedStatement,
    pub(super) channel_page: PreparedStatement,
    pub(super) channel_log: PreparedStatement,
    pub(super) channel_entries: PreparedStatement,
}

impl Prepared {
    pub(super) async fn new(session: &Session, ks: &str, page_size: i32) -> Result<Prepared, StoreError> {
        let prep = |cql: String| async move {
            let mut p = session.prepare(cql).await.map_err(prepare)?;
            p.set_is_idempotent(true);
            p.set_page_size(page_size.max(1));
            Ok::<_, StoreError>(p)
        };
        let mut ping = prep("SELECT release_version FROM system.local".into()).await?;
        // system.local is node-local: any one replica is the whole answer.
        ping.set_consistency(Consistency::One);
        Ok(Prepared {
            get_object: prep(format!(
                "SELECT body, version, last_topic, last_partition, last_offset, deleted FROM {ks}.objects \
                 WHERE app = ? AND model = ? AND id = ?"
            ))
            .await?,
            get_parents: prep(format!("SELECT parents FROM {ks}.objects WHERE app = ? AND model = ? AND id = ?"))
                .await?,
            put_object: prep(put_object_cql(ks)).await?,
            put_link: prep(put_link_cql(ks)).await?,
            delete_link: prep(format!(
                "DELETE FROM {ks}.children WHERE app = ? AND parent_model = ? AND parent_id = ? \
                 AND child_model = ? AND child_id = ?"
            ))
            .await?,
            children: prep(format!(
                "SELECT child_model, child_id FROM {ks}.children WHERE app = ? AND parent_model = ? AND parent_id = ?"
            ))
            .await?,
            put_app: prep(format!("INSERT INTO {ks}.applications (id, body, updated_at) VALUES (?, ?, ?)")).await?,
            get_app: prep(format!("SELECT id, body FROM {ks}.applications WHERE id = ?")).await?,
            list_apps: prep(format!("SELECT id, body FROM {ks}.applications")).await?,
            ping,
            // TTL 0 (live entries) means none.
            put_entry: prep(format!(
                "INSERT INTO {ks}.channel_objects (app, channel, id, model, body, version, changed_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            put_log: prep(format!(
                "INSERT INTO {ks}.channel_log (app, channel, changed_at, id) VALUES (?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            channel_page: prep(format!(
                "SELECT {ENTRY_COLUMNS} FROM {ks}.channel_objects WHERE app = ? AND channel = ? AND id > ?"
            ))
            .await?,
            channel_log: prep(format!(
                "SELECT id FROM {ks}.channel_log WHERE app = ? AND channel = ? AND changed_at >= ?"
            ))
            .await?,
            channel_entries: prep(format!(
                "SELECT {ENTRY_COLUMNS} FROM {ks}.channel_objects WHERE app = ? AND channel = ? AND id IN ?"
            ))
            .await?,
        })
    }
}

/// What the channel index selects read, in the order `channels::EntryColumns` decodes.
const ENTRY_COLUMNS: &str = "model, id, body, version, changed_at";

/// The keyspace and tables; every statement is a no-op when its object exists, so an existing
/// keyspace gains the tables it lacks (empty: the index fills as objects are written).
pub(super) fn ddl(ks: &str, replication: &str) -> [String; 6] {
    [
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.objects (app text, model text, id text, body text, version bigint, \
             last_topic text, last_partition int, last_offset bigint, deleted boolean, \
             parents set<frozen<tuple<text, text>>>, PRIMARY KEY ((app, model, id)))"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.children (app text, parent_model text, parent_id text, \
             child_model text, child_id text, PRIMARY KEY ((app, parent_model, parent_id), child_model, child_id))"
        ),
        format!("CREATE TABLE IF NOT EXISTS {ks}.applications (id text PRIMARY KEY, body text, updated_at timestamp)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.channel_objects (app text, channel text, id text, model text, \
             body text, version bigint, changed_at bigint, PRIMARY KEY ((app, channel), id))"
        ),
        // Every row expires and rows arrive in time order: time windows let whole SSTables expire.
        format!(
            "CREATE TABLE IF NOT EXISTS {ks}.channel_log (app text, channel text, changed_at bigint, id text, \
             PRIMARY KEY ((app, channel), changed_at, id)) WITH compaction = {{'class': \
             'TimeWindowCompactionStrategy', 'compaction_window_unit': 'HOURS', 'compaction_window_size': 1}}"
        ),
    ]
}

/// The upsert of an object row (values: app, model, id, body, version, last topic, partition,
/// offset, deleted, parents). Public so the dependency benchmark writes exactly what a persist does.
pub fn put_object_cql(ks: &str) -> String {
    format!(
        "INSERT INTO {ks}.objects (app, model, id, body, version, last_topic, last_partition, last_offset, \
         deleted, parents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
}

/// The upsert of a parent → child link (values: app, parent model, parent id, child model, child id).
pub fn put_link_cql(ks: &str) -> String {
    format!("INSERT INTO {ks}.children (app, parent_model, parent_id, child_model, child_id) VALUES (?, ?, ?, ?, ?)")
}
