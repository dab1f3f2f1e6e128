//! What only the SQLite store does: files, pragmas, transactions, locks. What every store does is
//! in `tests/common/store_suite.rs`, run against this store by `tests/store_sqlite.rs`.

use std::time::Instant;

use serde_json::{json, Map};

use super::*;
use crate::model::{SourcePosition, StoredObject};

fn write(id: &str, version: u64, deleted: bool, parents: &[(&str, &str)]) -> ObjectWrite {
    let mut object = Map::new();
    object.insert("id".into(), id.into());
    object.insert("type".into(), "task".into());
    object.insert("title".into(), json!(format!("v{version}")));
    let last_applied = Some(SourcePosition { topic: "p.write".into(), partition: 1, offset: version as i64 });
    let parents = parents.iter().map(|(m, i)| (m.to_string(), i.to_string())).collect();
    let row = ObjectRow { object: StoredObject { object, version, last_applied }, deleted };
    ObjectWrite { model: "task".into(), row, parents, recorded: None, index: Default::default() }
}

fn key(id: &str) -> ObjectId {
    ("task".to_string(), id.to_string())
}

fn application(id: &str) -> Application {
    let body = json!({"id": id, "schema": {"task": {"write_acl": 2, "read_acl": 1}}});
    Application::from_json(body.to_string().as_bytes()).unwrap()
}

/// A second connection to the file, as another process or an operator's shell would have.
fn raw(store: &SqliteStore) -> Connection {
    Connection::open(store.path()).unwrap()
}

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    (dir, path)
}

#[tokio::test]
async fn data_survives_a_restart() {
    let (dir, _) = temp();
    let path = dir.path().join("not/yet/there/store.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    let (live, tomb) = (write("t1", 2, false, &[("project", "p1")]), write("t2", 3, true, &[]));
    store.put_objects("a", &[live.clone(), tomb.clone()]).await.unwrap();
    store.put_application(&application("a")).await.unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let got = store.get_objects("a", &[key("t1"), key("t2")]).await.unwrap();
    assert_eq!(got[&key("t1")], live.row);
    assert_eq!(got[&key("t2")], tomb.row);
    assert_eq!(store.children("a", "project", "p1").await.unwrap(), vec![key("t1")]);
    assert_eq!(store.get_application("a").await.unwrap(), Some(application("a")));
    let version: i64 = raw(&store).pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
}

#[tokio::test]
async fn wal_full_sync_and_foreign_keys_are_on() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let mode: String = raw(&store).pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let pragma = |conn: &Connection, name: &str| conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0)).unwrap();
    {
        let writer = store.inner.writer.lock().unwrap();
        assert_eq!(pragma(&writer, "synchronous"), 2, "FULL");
        assert_eq!(pragma(&writer, "foreign_keys"), 1);
    }
    store.ping().await.unwrap();
    let readers = store.inner.readers.lock().unwrap();
    assert_eq!(readers.len(), 1, "the ping's connection went back to the pool");
    assert_eq!(pragma(&readers[0], "query_only"), 1);
    assert_eq!(pragma(&readers[0], "synchronous"), 2);
}

#[tokio::test]
async fn corrupt_rows_are_errors_not_panics() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let conn = raw(&store);
    let insert = |values: &str| {
        conn.execute(
            &format!(
                "INSERT INTO objects (app, model, id, body, version, last_topic, last_partition, last_offset, \
                 deleted) VALUES ('a', 'task', {values})"
            ),
            [],
        )
    };
    let rows = [
        ("bad_json", "'bad_json', '[1', 1, NULL, NULL, NULL, 0"),
        ("not_an_object", "'not_an_object', '[1]', 1, NULL, NULL, NULL, 0"),
        ("half_pos", "'half_pos', '{}', 1, 'write', NULL, NULL, 0"),
        ("bad_flag", "'bad_flag', '{}', 1, NULL, NULL, NULL, 2"),
        ("negative", "'negative', '{}', -1, NULL, NULL, NULL, 0"),
        ("huge_partition", "'huge_partition', '{}', 1, 'write', 4294967296, 1, 0"),
    ];
    for (_, values) in rows {
        insert(values).unwrap();
    }
    for (id, _) in rows {
        let got = store.get_objects("a", &[key(id)]).await;
        // Blamed on the one message that needs the object, not on the whole stream.
        assert!(matches!(&got, Err(StoreError::CorruptRow(m)) if m.to_string().contains(id)), "{id}: {got:?}");
    }
    // STRICT tables refuse a value of the wrong type outright.
    assert!(insert("'typed', '{}', 'one', NULL, NULL, NULL, 0").is_err());

    conn.execute("INSERT INTO applications (id, body, updated_at) VALUES ('x', '{\"id\":\"y\"}', 0)", []).unwrap();
    assert!(matches!(store.get_application("x").await, Err(StoreError::Corrupt(_))));
    // A listing leaves the bad row out (every role loads it at start) rather than fail whole.
    assert!(store.list_applications().await.unwrap().iter().all(|a| a.id != "x"));
    conn.execute("UPDATE applications SET body = 'nope' WHERE id = 'x'", []).unwrap();
    assert!(matches!(store.get_application("x").await, Err(StoreError::Corrupt(_))));
}

#[tokio::test]
async fn a_failing_call_writes_nothing() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    store.put_objects("a", &[write("t1", 1, false, &[("project", "p1")])]).await.unwrap();
    // A failure after the first object was written, inside the same call.
    raw(&store)
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON objects WHEN NEW.id = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END",
        )
        .unwrap();
    let call = [write("t1", 2, false, &[("project", "p2")]), write("t9", 1, false, &[]), write("boom", 1, false, &[])];
    let result = store.put_objects("a", &call).await;
    assert!(matches!(&result, Err(StoreError::Corrupt(m)) if m.to_string().contains("boom")), "{result:?}");

    let got = store.get_objects("a", &[key("t1"), key("t9")]).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[&key("t1")].object.version, 1);
    assert_eq!(store.children("a", "project", "p1").await.unwrap(), vec![key("t1")]);
    assert!(store.children("a", "project", "p2").await.unwrap().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn a_lock_held_elsewhere_is_unavailable_without_blocking_the_runtime() {
    let (_dir, path) = temp();
    let store = Arc::new(SqliteStore::open_with(&path, Duration::from_secs(1)).unwrap());
    let other = raw(&store);
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let pending = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.put_objects("a", &[write("t1", 1, false, &[])]).await }
    });
    // The one runtime thread stays free while the call waits for the lock.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(started.elapsed() < Duration::from_millis(800), "runtime blocked for {:?}", started.elapsed());
    let result = pending.await.unwrap();
    assert!(matches!(&result, Err(StoreError::Unavailable(_))), "{result:?}");

    other.execute_batch("ROLLBACK").unwrap();
    store.put_objects("a", &[write("t1", 1, false, &[])]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_from_many_tasks() {
    let (_dir, path) = temp();
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for i in 0..25 {
                let id = format!("t{t}_{i}");
                store.put_objects("a", &[write(&id, 1, false, &[("project", "p")])]).await.unwrap();
                let got = store.get_objects("a", &[key(&id)]).await.unwrap();
                assert_eq!(got[&key(&id)].object.id(), id, "a write is visible to the next read");
                store.children("a", "project", "p").await.unwrap();
            }
        });
    }
    for _ in 0..4 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            for _ in 0..50 {
                store.ping().await.unwrap();
                store.list_applications().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(store.children("a", "project", "p").await.unwrap().len(), 200);
    assert!(store.inner.readers.lock().unwrap().len() <= IDLE_READERS);
}

#[tokio::test]
async fn a_poisoned_connection_is_an_error_not_a_panic() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let inner = Arc::clone(&store.inner);
    let panicked = std::thread::spawn(move || {
        let _held = inner.writer.lock();
        panic!("poisoning the writer on purpose");
    })
    .join();
    assert!(panicked.is_err());
    let result = store.put_objects("a", &[write("t1", 1, false, &[])]).await;
    assert!(matches!(&result, Err(StoreError::Corrupt(m)) if m.to_string().contains("panicked")), "{result:?}");
    // Reads use other connections and still answer.
    store.ping().await.unwrap();
}

#[test]
fn unknown_schema_versions_and_foreign_files_are_refused() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    raw(&store).pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1).unwrap();
    drop(store);
    let result = SqliteStore::open(&path);
    assert!(
        matches!(&result, Err(StoreError::Corrupt(m)) if m.to_string().contains("schema version")),
        "{:?}",
        result.err()
    );

    let (_dir, path) = temp();
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let result = SqliteStore::open(&path);
    assert!(matches!(&result, Err(StoreError::Corrupt(_))), "{:?}", result.err());
}

#[tokio::test]
async fn a_file_of_the_first_schema_gets_its_objects_indexed() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let doc = json!({"id": "a", "schema": {"task": {"belongsTo": [{"parentModel": "list"}]}}});
    store.put_application(&Application::from_json(doc.to_string().as_bytes()).unwrap()).await.unwrap();
    let mut t1 = write("t1", 1, false, &[]);
    t1.row.object.object.insert("context_id".into(), json!("c1"));
    t1.row.object.object.insert("list_id".into(), json!("l1"));
    let mut t2 = write("t2", 3, false, &[]);
    t2.row.object.object.insert("context_id".into(), json!("c1"));
    store.put_objects("a", &[t1, t2, write("gone", 2, true, &[])]).await.unwrap();
    // Back to what the previous build left: no index table, schema version 1.
    raw(&store).execute_batch("DROP TABLE channel_objects; PRAGMA user_version = 1").unwrap();
    drop(store);

    let store = SqliteStore::open(&path).unwrap();
    let version: i64 = raw(&store).pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    let context = ChannelKey::from_stored("blg:a:context:c1:task".into());
    let page = store.channel_page("a", &context, None, 10).await.unwrap();
    let ids: Vec<(&str, u64)> = page.iter().map(|r| (r.id.as_str(), r.version)).collect();
    assert_eq!(ids, [("t1", 1), ("t2", 3)], "the stored objects are indexed, the deleted one is not");
    let list = ChannelKey::from_stored("blg:a:list:l1:task".into());
    assert_eq!(store.channel_page("a", &list, None, 10).await.unwrap().len(), 1);
    let mut w = write("t1", 2, false, &[]);
    w.index.channels.push(context.clone());
    store.put_objects("a", &[w]).await.unwrap();
    assert_eq!(store.channel_page("a", &context, None, 10).await.unwrap()[0].version, 2);
}

/// What keeps catch-ups and purges cheap: they read through their indexes, not the table.
#[test]
fn catch_ups_and_purges_use_their_indexes() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    let conn = raw(&store);
    let plan = |statement: &str, values: &[&dyn rusqlite::ToSql]| {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {statement}")).unwrap();
        let rows = stmt.query_map(values, |r| r.get::<_, String>(3)).unwrap();
        rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
    };
    let changes = plan(channels::CHANGES, &[&"a", &"c", &0, &10]);
    assert!(changes.contains("channel_objects_by_time") && !changes.contains("TEMP B-TREE"), "{changes}");
    let purge = plan(channels::PURGE, &[&0]);
    assert!(purge.contains("channel_tombstones_by_expiry"), "{purge}");
    let page = plan(channels::PAGE, &[&"a", &"c", &"", &10]);
    assert!(page.contains("PRIMARY KEY") && !page.contains("TEMP B-TREE"), "{page}");
}

#[tokio::test]
async fn expired_tombstones_go_at_the_next_write_after_the_retention() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap().with_tombstone_retention(Duration::from_millis(200));
    let channel = ChannelKey::from_stored("blg:a:context:c1:task".into());
    let mut gone = write("t1", 1, false, &[]);
    gone.index.left.push(channel.clone());
    store.put_objects("a", &[gone]).await.unwrap();
    let count = || raw(&store).query_row("SELECT count(*) FROM channel_objects", [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(), 1, "nothing purges between writes");
    store.put_objects("a", &[write("t2", 1, false, &[])]).await.unwrap();
    assert_eq!(count(), 0);
}

#[tokio::test]
async fn a_corrupt_channel_entry_spoils_only_the_reads_that_meet_it() {
    let (_dir, path) = temp();
    let store = SqliteStore::open(&path).unwrap();
    raw(&store)
        .execute_batch(
            "INSERT INTO channel_objects (app, channel, id, model, body, version, changed_at) VALUES \
             ('a', 'c', 'bad', 'task', '[1', 1, 5), ('a', 'c', 'neg', 'task', '{}', -1, 5), \
             ('a', 'd', 'ok', 'task', '{}', 1, 5)",
        )
        .unwrap();
    let (c, d) = (ChannelKey::from_stored("c".into()), ChannelKey::from_stored("d".into()));
    let page = store.channel_page("a", &c, None, 10).await;
    assert!(matches!(&page, Err(StoreError::CorruptRow(m)) if m.to_string().contains("a/c/bad")), "{page:?}");
    let page = store.channel_page("a", &c, Some("bad"), 10).await;
    assert!(matches!(&page, Err(StoreError::CorruptRow(m)) if m.to_string().contains("a/c/neg")), "{page:?}");
    assert!(matches!(store.channel_changes("a", &c, 0, 10).await, Err(StoreError::CorruptRow(_))));
    assert_eq!(store.channel_page("a", &d, None, 10).await.unwrap().len(), 1);
}
