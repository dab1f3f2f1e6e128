//! The CQL store against the real Cassandra of the local stack: each test works in its own
//! keyspace (`t_<nanos>_<pid>_<name>`) and drops it at the end. The behaviour every store shares
//! is in `common/store_suite.rs`; this file runs it and adds what is particular to CQL.

mod common;

use std::time::{Duration, Instant};

use common::store_suite::{self, context_channel, key, task_on};
use nexxus_worker::config::{Config, Overrides};
use nexxus_worker::store::{CqlOptions, CqlStore, Store, StoreError};
use scylla::statement::Statement;
use serde_json::json;

fn keyspace(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    // CQL names are at most 48 characters; the time and process id keep a shortened one unique.
    let mut ks = format!("t_{}_{}_{name}", nanos % 1_000_000_000_000, std::process::id());
    ks.truncate(48);
    ks
}

fn config(ks: &str) -> Config {
    let mut env = common::env_for(&common::unique_prefix("store"));
    env.insert("TP_SCYLLA_KEYSPACE".into(), ks.into());
    Config::load(&Overrides::default(), &env).expect("test config")
}

async fn store(name: &str, opts: CqlOptions) -> CqlStore {
    let ks = keyspace(name);
    CqlStore::connect_with(&config(&ks), opts).await.expect("connecting to the local Cassandra (make up)")
}

async fn drop_keyspace(store: CqlStore) {
    let mut statement = Statement::new(format!("DROP KEYSPACE IF EXISTS {}", store.keyspace()));
    statement.set_request_timeout(Some(Duration::from_secs(60)));
    store.session().query_unpaged(statement, ()).await.expect("dropping the test keyspace");
}

/// The suite's tests, each on a store in its own keyspace. Small pages make `children` and
/// `list_applications` walk many of them.
macro_rules! cql_test {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let opts = CqlOptions { page_size: 50, ..CqlOptions::default() };
            let store = store(stringify!($name), opts).await;
            store_suite::$name(&store).await;
            drop_keyspace(store).await;
        }
    };
}

for_each_store_test!(cql_test);

#[tokio::test]
async fn connecting_again_keeps_the_schema_and_sees_the_data() {
    let store = store("reconnect", CqlOptions::default()).await;
    store_suite::objects_round_trip_with_tombstones_and_positions(&store).await;
    // Connecting again to an existing keyspace is a no-op on the schema and sees the data.
    let again = CqlStore::connect(&config(store.keyspace())).await.unwrap();
    assert_eq!(again.get_objects("app1", &[key("task", "t1")]).await.unwrap().len(), 1);
    drop_keyspace(store).await;
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let store = store("corrupt", CqlOptions::default()).await;
    let ks = store.keyspace().to_string();
    let session = store.session();
    let insert = format!(
        "INSERT INTO {ks}.objects (app, model, id, body, version, last_topic, deleted) \
         VALUES ('a', 'task', 'bad_json', '[1', 1, null, false)"
    );
    session.query_unpaged(insert, ()).await.unwrap();
    let insert = format!(
        "INSERT INTO {ks}.objects (app, model, id, body, version, last_topic, deleted) \
         VALUES ('a', 'task', 'half_pos', '{{}}', 1, 'write', false)"
    );
    session.query_unpaged(insert, ()).await.unwrap();
    let insert =
        format!("INSERT INTO {ks}.objects (app, model, id, body, version) VALUES ('a', 'task', 'no_flag', '{{}}', 1)");
    session.query_unpaged(insert, ()).await.unwrap();
    for id in ["bad_json", "half_pos", "no_flag"] {
        let got = store.get_objects("a", &[key("task", id)]).await;
        // Blamed on the one message that needs the object, not on the whole stream.
        assert!(matches!(got, Err(StoreError::CorruptRow(_))), "{id}: {got:?}");
    }

    session
        .query_unpaged(format!("INSERT INTO {ks}.applications (id, body) VALUES ('x', '{{\"id\":\"y\"}}')"), ())
        .await
        .unwrap();
    assert!(matches!(store.get_application("x").await, Err(StoreError::Corrupt(_))));
    // A listing leaves the bad row out (every role loads it at start) rather than fail whole.
    assert!(store.list_applications().await.unwrap().iter().all(|a| a.id != "x"));

    // A channel entry written by hand without its columns spoils the reads that meet it.
    let c1 = context_channel("a", "c1");
    let insert =
        format!("INSERT INTO {ks}.channel_objects (app, channel, id, body) VALUES ('a', '{c1}', 'part', '{{}}')");
    session.query_unpaged(insert, ()).await.unwrap();
    let insert = format!("INSERT INTO {ks}.channel_log (app, channel, changed_at, id) VALUES ('a', '{c1}', 5, 'part')");
    session.query_unpaged(insert, ()).await.unwrap();
    let page = store.channel_page("a", &c1, None, 10).await;
    assert!(matches!(&page, Err(StoreError::CorruptRow(m)) if m.to_string().contains("/part")), "{page:?}");
    assert!(matches!(store.channel_changes("a", &c1, 0, 10).await, Err(StoreError::CorruptRow(_))));
    assert!(store.channel_page("a", &context_channel("a", "c2"), None, 10).await.unwrap().is_empty());
    drop_keyspace(store).await;
}

#[tokio::test]
async fn unreachable_node_is_unavailable_quickly() {
    let mut env = common::env_for(&common::unique_prefix("store"));
    env.insert("TP_SCYLLA_NODES".into(), "127.0.0.1:1".into());
    env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace("unreachable"));
    let cfg = Config::load(&Overrides::default(), &env).unwrap();
    let started = Instant::now();
    let result = CqlStore::connect(&cfg).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{:?}", result.err());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn silent_node_is_unavailable_within_the_connect_timeout() {
    // A listener that accepts and never answers: the CQL handshake hangs until the timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut env = common::env_for(&common::unique_prefix("store"));
    env.insert("TP_SCYLLA_NODES".into(), listener.local_addr().unwrap().to_string());
    env.insert("TP_SCYLLA_KEYSPACE".into(), keyspace("silent"));
    let cfg = Config::load(&Overrides::default(), &env).unwrap();
    let opts = CqlOptions { connect_timeout: Duration::from_secs(1), ..CqlOptions::default() };
    let started = Instant::now();
    let result = CqlStore::connect_with(&cfg, opts).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))), "{:?}", result.err());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn channel_tombstones_expire_after_the_retention() {
    let retention = Duration::from_secs(1);
    let store = store("expiry", CqlOptions { tombstone_retention: retention, ..CqlOptions::default() }).await;
    store_suite::channel_tombstones_expire_after_the_retention(&store, retention).await;
    // The change log has only key columns, so no TTL() to read: its rows are seen to go instead.
    let cql = format!("SELECT id FROM {}.channel_log", store.keyspace());
    let rows = store.session().query_unpaged(cql, ()).await.unwrap().into_rows_result().unwrap();
    let ids: Vec<String> = rows.rows::<(String,)>().unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(ids, ["later"], "the earlier log rows expired");
    drop_keyspace(store).await;
}

/// Tombstones carry the retention as TTL (`connect` takes it from the resume settings); live
/// entries carry none, also when they replace a tombstone.
#[tokio::test]
async fn tombstones_expire_live_entries_do_not() {
    let ks = keyspace("ttl");
    let mut cfg = config(&ks);
    cfg.sockets.resume.window = Duration::from_secs(3600);
    cfg.sockets.resume.overlap = Duration::from_secs(60);
    let store = CqlStore::connect(&cfg).await.unwrap();
    let c1 = context_channel("app1", "c1");
    let writes =
        [task_on("live", 1, &[&c1], &[], 10), task_on("gone", 1, &[], &[&c1], 10), task_on("back", 1, &[], &[&c1], 10)];
    store.put_objects("app1", &writes).await.unwrap();
    store.put_objects("app1", &[task_on("back", 2, &[&c1], &[], 20)]).await.unwrap();
    let cql = format!("SELECT id, TTL(model), TTL(body), TTL(version), TTL(changed_at) FROM {ks}.channel_objects");
    let rows = store.session().query_unpaged(cql, ()).await.unwrap().into_rows_result().unwrap();
    type Ttls = (String, Option<i32>, Option<i32>, Option<i32>, Option<i32>);
    let ttls: Vec<Ttls> = rows.rows::<Ttls>().unwrap().map(|r| r.unwrap()).collect();
    let of = |id: &str| ttls.iter().find(|t| t.0 == id).map(|t| [t.1, t.2, t.3, t.4]);
    assert_eq!(of("live"), Some([None; 4]), "{ttls:?}");
    assert_eq!(of("back"), Some([None; 4]), "re-entry lifts the TTL: {ttls:?}");
    let near = |t: &Option<i32>| t.is_some_and(|t| (3600..=3660).contains(&t));
    let gone = of("gone").unwrap_or_default();
    // A tombstone's body is null: no cell, no TTL.
    assert!(near(&gone[0]) && gone[1].is_none() && near(&gone[2]) && near(&gone[3]), "{ttls:?}");
    drop_keyspace(store).await;
}

/// A catch-up reads a bounded part of the change log: an object rewritten far more often than
/// the limit allows makes it answer "too many" (take a snapshot) rather than read on.
#[tokio::test]
async fn a_catch_up_reads_a_bounded_part_of_the_change_log() {
    let store = store("bounded", CqlOptions { page_size: 50, ..CqlOptions::default() }).await;
    let c1 = context_channel("app1", "c1");
    for version in 1..=40 {
        store.put_objects("app1", &[task_on("hot", version, &[&c1], &[], 100 + version)]).await.unwrap();
    }
    assert_eq!(store.channel_changes("app1", &c1, 0, 1).await.unwrap(), None);
    let rows = store.channel_changes("app1", &c1, 0, 10).await.unwrap().expect("40 log rows fit 10 changes");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].version, rows[0].changed_at, rows[0].body.as_ref().map(|b| b["title"].clone())),
        (40, 140, Some(json!("hot v40")))
    );
    drop_keyspace(store).await;
}

/// `index rebuild` on a keyspace that held objects before the channel index existed: every live
/// object gets its entries; an entry a writer wrote meanwhile (newer than the row the rebuild
/// read) is never overridden; running it again changes nothing.
#[tokio::test]
async fn a_rebuild_indexes_older_objects_and_never_overrides_a_writer() {
    let store = store("rebuild", CqlOptions::default()).await;
    let doc = json!({"id": "a", "schema": {"task": {}}});
    let app = nexxus_worker::model::Application::from_json(doc.to_string().as_bytes()).unwrap();
    store.put_application(&app).await.unwrap();
    let before = |id: &str, version: u64, deleted: bool| {
        let obj = store_suite::object("task", id, version, json!({"context_id": "c1"}), Some(version as i64));
        store_suite::write("task", obj, deleted, &[])
    };
    store.put_objects("a", &[before("t1", 1, false), before("t2", 4, false), before("t3", 2, true)]).await.unwrap();
    let c1 = context_channel("a", "c1");
    assert!(store.channel_page("a", &c1, None, 10).await.unwrap().is_empty(), "no entries yet");
    // A writer indexes t2 at version 5 while the rebuild reads its row at version 4.
    let now = nexxus_worker::model::clock::now_millis() as u64;
    store.put_objects("a", &[task_on("t2", 5, &[&c1], &[], now)]).await.unwrap();
    let ks = store.keyspace().to_string();
    let body = r#"{"id":"t2","type":"task","context_id":"c1"}"#;
    let rewind = format!(
        "UPDATE {ks}.objects SET version = 4, body = '{body}' WHERE app = 'a' AND model = 'task' AND id = 't2'"
    );
    store.session().query_unpaged(rewind, ()).await.unwrap();

    let apps = std::collections::HashMap::from([("a".to_string(), app)]);
    assert_eq!(store.rebuild_index(&apps).await.unwrap(), 2, "t1 and t2; the deleted t3 has none");
    for round in 0..2 {
        let page = store.channel_page("a", &c1, None, 10).await.unwrap();
        let entries: Vec<(&str, u64)> = page.iter().map(|r| (r.id.as_str(), r.version)).collect();
        assert_eq!(entries, [("t1", 1), ("t2", 5)], "round {round}: the writer's entry stays");
        store.rebuild_index(&apps).await.unwrap();
    }
    drop_keyspace(store).await;
}
