//! The SQLite store: the shared suite (`common/store_suite.rs`), each test on its own file in a
//! temporary directory, and what only a file-backed store promises: the data outlives the process.

mod common;

use std::time::Duration;

use common::store_suite::{self, key, object, write};
use nexxus_worker::store::{SqliteStore, Store};
use serde_json::json;

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("store.db")).expect("opening the test store")
}

macro_rules! sqlite_test {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            let dir = tempfile::tempdir().unwrap();
            store_suite::$name(&open(&dir)).await;
        }
    };
}

for_each_store_test!(sqlite_test);

#[tokio::test]
async fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store_suite::objects_round_trip_with_tombstones_and_positions(&store).await;
    store_suite::applications_put_get_list_with_paging(&store).await;
    let child = write("comment", object("comment", "k1", 1, json!({}), Some(7)), false, &[("task", "t1")]);
    store.put_objects("app1", &[child]).await.unwrap();

    let ids = [key("task", "t1"), key("task", "t2"), key("project", "p1"), key("comment", "k1")];
    let objects = store.get_objects("app1", &ids).await.unwrap();
    let mut apps = store.list_applications().await.unwrap();
    drop(store);

    let store = open(&dir);
    assert_eq!(store.get_objects("app1", &ids).await.unwrap(), objects);
    assert_eq!(objects.len(), 4);
    assert!(objects[&key("task", "t2")].deleted);
    assert_eq!(store.children("app1", "task", "t1").await.unwrap(), vec![key("comment", "k1")]);
    let mut again = store.list_applications().await.unwrap();
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    again.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(again, apps);
    assert_eq!(apps.len(), 230);
    store.ping().await.unwrap();
}

/// A row that no longer decodes costs only what depends on it: an application stored before a
/// rule it now breaks is left out of the listing (every role loads the listing at start), and an
/// object row that does not decode is `CorruptRow`, which rejects the one message needing it.
#[tokio::test]
async fn bad_rows_are_skipped_or_blamed_on_their_own_message() {
    use nexxus_worker::error::ProcessError;
    use nexxus_worker::store::StoreError;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put_application(&store_suite::application("good", &["task"])).await.unwrap();
    store.put_objects("good", &[write("task", object("task", "t1", 1, json!({}), Some(1)), false, &[])]).await.unwrap();
    let raw = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    raw.execute(
        "INSERT INTO applications (id, body, updated_at) VALUES ('old', ?1, 0)",
        [r#"{"id":"old","schema":{"index":{}}}"#],
    )
    .unwrap();
    raw.execute("UPDATE objects SET body = 'not json' WHERE app = 'good' AND id = 't1'", []).unwrap();
    drop(raw);

    let apps = store.list_applications().await.unwrap();
    assert_eq!(apps.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["good"]);
    let err = store.get_objects("good", &[key("task", "t1")]).await.unwrap_err();
    assert!(matches!(err, StoreError::CorruptRow(_)), "{err:?}");
    assert!(matches!(ProcessError::from(err), ProcessError::Poison(_)));
}

#[tokio::test]
async fn channel_tombstones_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let retention = Duration::from_secs(1);
    let store = open(&dir).with_tombstone_retention(retention);
    store_suite::channel_tombstones_expire_after_the_retention(&store, retention).await;
}

/// The index is in the file too, and an existing file opened by this build gains the table.
#[tokio::test]
async fn the_channel_index_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store_suite::channel_entries_follow_moves_reentries_and_deletes(&store).await;
    let p2 = store_suite::project_channel("app1", "p2");
    let before = store.channel_changes("app1", &p2, 0, 10).await.unwrap();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.channel_changes("app1", &p2, 0, 10).await.unwrap(), before);
    assert_eq!(store.channel_page("app1", &p2, None, 10).await.unwrap().len(), 1);
}
