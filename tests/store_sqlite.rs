//! The SQLite store: the shared suite (`common/store_suite.rs`), each test on its own file in a
//! temporary directory, and what only a file-backed store promises: the data outlives the process.

mod common;

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
