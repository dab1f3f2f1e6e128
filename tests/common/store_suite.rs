//! What every [`Store`] must do, whatever is behind it: one suite, run against each
//! implementation by its own test file (`tests/store_cql.rs`, `tests/store_sqlite.rs`).
//!
//! Each function takes a fresh, empty store of its own (its own keyspace, its own file), so the
//! tests run in parallel; the application ids inside may repeat across functions.
//! [`for_each_store_test!`](crate::for_each_store_test) names every function, so an
//! implementation's file cannot forget one. The channel index's functions are in `channels.rs`.

mod channels;

use std::collections::{BTreeSet, HashMap};

use nexxus_worker::model::{Application, SourcePosition, StoredObject};
use nexxus_worker::store::{ChannelIndexWrite, ObjectId, ObjectRow, ObjectWrite, Store, StoreError};
use serde_json::{json, Map, Value};

// Every test binary compiles `common`, but only the store tests call these.
#[allow(unused_imports)]
pub use channels::*;

/// Calls `$test!(name)` for every suite function; each store's test file turns that into a
/// `#[tokio::test]` that builds its store and calls `store_suite::name(&store)`.
#[macro_export]
macro_rules! for_each_store_test {
    ($test:ident) => {
        $test!(objects_round_trip_with_tombstones_and_positions);
        $test!(children_page_and_tombstones_remove_links);
        $test!(links_follow_the_last_write);
        $test!(links_given_by_the_writer_are_trusted_and_kept_exact);
        $test!(applications_put_get_list_with_paging);
        $test!(empty_calls_are_no_ops);
        $test!(concurrent_calls_on_one_store);
        $test!(ping_answers);
        $test!(channel_pages_in_id_order_without_tombstones);
        $test!(channel_entries_follow_moves_reentries_and_deletes);
        $test!(channel_changes_since_a_time_each_object_once);
        $test!(channel_index_replays_and_repeats_within_a_call);
    };
}

pub fn object(model: &str, id: &str, version: u64, fields: Value, offset: Option<i64>) -> StoredObject {
    let mut object: Map<String, Value> = fields.as_object().cloned().unwrap_or_default();
    object.insert("id".into(), id.into());
    object.insert("type".into(), model.into());
    let last_applied = offset.map(|offset| SourcePosition { topic: "p.write".into(), partition: 3, offset });
    StoredObject { object, version, last_applied }
}

pub fn write(model: &str, obj: StoredObject, deleted: bool, parents: &[(&str, &str)]) -> ObjectWrite {
    let parents = parents.iter().map(|(m, i)| (m.to_string(), i.to_string())).collect();
    let index = ChannelIndexWrite::default();
    ObjectWrite { model: model.into(), row: ObjectRow { object: obj, deleted }, parents, recorded: None, index }
}

pub fn key(model: &str, id: &str) -> ObjectId {
    (model.to_string(), id.to_string())
}

pub fn application(id: &str, models: &[&str]) -> Application {
    let schema: Map<String, Value> =
        models.iter().map(|m| (m.to_string(), json!({"write_acl": 2, "read_acl": 1}))).collect();
    let body = json!({"id": id, "jwt_secret": "s3cret", "schema": schema});
    Application::from_json(body.to_string().as_bytes()).unwrap()
}

/// Leaves `app1` with objects task/t1 (version 5), task/t2 (a tombstone) and project/p1.
pub async fn objects_round_trip_with_tombstones_and_positions<S: Store>(store: &S) {
    let app = "app1";
    let missing = store.get_objects(app, &[key("task", "nope")]).await.unwrap();
    assert!(missing.is_empty());

    let live =
        write("task", object("task", "t1", 3, json!({"title": "x", "n": [1, {"a": null}]}), Some(41)), false, &[]);
    let tomb = write("task", object("task", "t2", 7, json!({}), Some(9)), true, &[]);
    let no_pos = write("project", object("project", "p1", 1, json!({"name": "é \"q\""}), None), false, &[]);
    let writes = vec![live.clone(), tomb.clone(), no_pos.clone()];
    store.put_objects(app, &writes).await.unwrap();
    // Idempotent: the same call again leaves the same state.
    store.put_objects(app, &writes).await.unwrap();

    let ids = [key("task", "t1"), key("task", "t2"), key("project", "p1"), key("task", "t3")];
    let got = store.get_objects(app, &ids).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[&key("task", "t1")], live.row);
    assert_eq!(got[&key("task", "t2")], tomb.row);
    assert!(got[&key("task", "t2")].deleted);
    assert_eq!(got[&key("project", "p1")], no_pos.row);
    // Applications are separate namespaces.
    assert!(store.get_objects("app2", &ids).await.unwrap().is_empty());

    // The last write of one object within a call wins; a newer state replaces the older one.
    let v4 = write("task", object("task", "t1", 4, json!({"title": "y"}), Some(42)), false, &[]);
    let v5 = write("task", object("task", "t1", 5, json!({"title": "z"}), Some(43)), false, &[]);
    store.put_objects(app, &[v4, v5.clone()]).await.unwrap();
    let got = store.get_objects(app, &[key("task", "t1")]).await.unwrap();
    assert_eq!(got[&key("task", "t1")], v5.row);

    // An object without an id is refused before anything is written.
    let bad = write("task", StoredObject { object: Map::new(), version: 1, last_applied: None }, false, &[]);
    assert!(matches!(store.put_objects(app, &[bad]).await, Err(StoreError::Corrupt(_))));
}

pub async fn children_page_and_tombstones_remove_links<S: Store>(store: &S) {
    let app = "app1";
    let n = 2500;
    let writes: Vec<ObjectWrite> = (0..n)
        .map(|i| {
            let id = format!("c{i:05}");
            write("task", object("task", &id, 1, json!({"project_id": "p1"}), Some(i)), false, &[("project", "p1")])
        })
        .collect();
    store.put_objects(app, &writes).await.unwrap();
    // A child of two parents, and a child of another parent.
    let both =
        write("comment", object("comment", "k1", 1, json!({}), None), false, &[("project", "p1"), ("task", "c00000")]);
    let other = write("task", object("task", "o1", 1, json!({}), None), false, &[("project", "p2")]);
    store.put_objects(app, &[both, other]).await.unwrap();

    let children: BTreeSet<ObjectId> = store.children(app, "project", "p1").await.unwrap().into_iter().collect();
    assert_eq!(children.len(), n as usize + 1);
    assert!(children.contains(&key("task", "c02499")));
    assert!(children.contains(&key("comment", "k1")));
    assert_eq!(store.children(app, "task", "c00000").await.unwrap(), vec![key("comment", "k1")]);
    assert_eq!(store.children(app, "project", "p2").await.unwrap(), vec![key("task", "o1")]);
    assert!(store.children(app, "project", "nope").await.unwrap().is_empty());
    assert!(store.children("app2", "project", "p1").await.unwrap().is_empty());

    // Tombstones remove their own links (all of them, whether or not they name them) and stay
    // readable as tombstones.
    let mut tombs: Vec<ObjectWrite> = writes[..5].iter().cloned().map(|mut w| (w.row.deleted = true, w).1).collect();
    let unnamed = writes[5..10].iter().cloned().map(|mut w| {
        w.row.deleted = true;
        w.parents.clear();
        w
    });
    tombs.extend(unnamed);
    tombs.push(write("comment", object("comment", "k1", 2, json!({}), None), true, &[]));
    store.put_objects(app, &tombs).await.unwrap();
    store.put_objects(app, &tombs).await.unwrap();
    let children = store.children(app, "project", "p1").await.unwrap();
    assert_eq!(children.len(), n as usize - 10);
    assert!(!children.contains(&key("task", "c00000")));
    assert!(!children.contains(&key("task", "c00009")));
    assert!(store.children(app, "task", "c00000").await.unwrap().is_empty());
    let got = store.get_objects(app, &[key("task", "c00000"), key("task", "c00009")]).await.unwrap();
    assert!(got[&key("task", "c00000")].deleted && got[&key("task", "c00009")].deleted);

    // A changed parent moves the link; dropping every parent removes them all.
    let moved = write("task", object("task", "o1", 2, json!({}), None), false, &[("project", "p3")]);
    store.put_objects(app, &[moved]).await.unwrap();
    assert!(store.children(app, "project", "p2").await.unwrap().is_empty());
    assert_eq!(store.children(app, "project", "p3").await.unwrap(), vec![key("task", "o1")]);
    let orphan = write("task", object("task", "o1", 3, json!({}), None), false, &[]);
    store.put_objects(app, &[orphan]).await.unwrap();
    assert!(store.children(app, "project", "p3").await.unwrap().is_empty());
}

/// The links of an object are those of its last write: within one call, and after a tombstone
/// once the object is written live again.
pub async fn links_follow_the_last_write<S: Store>(store: &S) {
    let app = "app1";
    let first = write("task", object("task", "t1", 1, json!({}), Some(1)), false, &[("project", "p1")]);
    let second = write("task", object("task", "t1", 2, json!({}), Some(2)), false, &[("project", "p2"), ("user", "u")]);
    store.put_objects(app, &[first, second.clone()]).await.unwrap();
    assert!(store.children(app, "project", "p1").await.unwrap().is_empty());
    assert_eq!(store.children(app, "project", "p2").await.unwrap(), vec![key("task", "t1")]);
    assert_eq!(store.children(app, "user", "u").await.unwrap(), vec![key("task", "t1")]);

    // A live write followed by its tombstone in one call: the tombstone wins, no link is left.
    let tomb = write("task", object("task", "t1", 3, json!({}), Some(3)), true, &[("project", "p2")]);
    store.put_objects(app, &[second, tomb.clone()]).await.unwrap();
    assert!(store.children(app, "project", "p2").await.unwrap().is_empty());
    assert!(store.children(app, "user", "u").await.unwrap().is_empty());
    assert_eq!(store.get_objects(app, &[key("task", "t1")]).await.unwrap()[&key("task", "t1")], tomb.row);

    // Written live again (the tombstone is a state, not a barrier), its links are back.
    let again = write("task", object("task", "t1", 4, json!({}), Some(4)), false, &[("project", "p1")]);
    store.put_objects(app, std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(store.children(app, "project", "p1").await.unwrap(), vec![key("task", "t1")]);
    assert_eq!(store.get_objects(app, &[key("task", "t1")]).await.unwrap()[&key("task", "t1")], again.row);
}

/// A write that says which links its row holds (the writer knows, for objects it wrote) moves
/// them exactly as one the store reads back: a re-parented object leaves its old parent, a
/// tombstone leaves every parent, and a write with no links leaves none behind.
pub async fn links_given_by_the_writer_are_trusted_and_kept_exact<S: Store>(store: &S) {
    let app = "app1";
    let first = write("task", object("task", "t1", 1, json!({}), Some(1)), false, &[("project", "p1")]);
    store.put_objects(app, &[first]).await.unwrap();
    let mut moved = write("task", object("task", "t1", 2, json!({}), Some(2)), false, &[("project", "p2")]);
    moved.recorded = Some(vec![("project".into(), "p1".into())]);
    store.put_objects(app, std::slice::from_ref(&moved)).await.unwrap();
    assert!(store.children(app, "project", "p1").await.unwrap().is_empty(), "the old parent is left");
    assert_eq!(store.children(app, "project", "p2").await.unwrap(), vec![key("task", "t1")]);

    let mut tomb = write("task", object("task", "t1", 3, json!({}), Some(3)), true, &[]);
    tomb.recorded = Some(vec![("project".into(), "p2".into())]);
    store.put_objects(app, std::slice::from_ref(&tomb)).await.unwrap();
    assert!(store.children(app, "project", "p2").await.unwrap().is_empty(), "a tombstone leaves every parent");
    assert_eq!(store.get_objects(app, &[key("task", "t1")]).await.unwrap()[&key("task", "t1")], tomb.row);

    let mut again = write("task", object("task", "t1", 4, json!({}), Some(4)), false, &[("project", "p1")]);
    again.recorded = Some(Vec::new());
    store.put_objects(app, std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(store.children(app, "project", "p1").await.unwrap(), vec![key("task", "t1")]);
}

pub async fn applications_put_get_list_with_paging<S: Store>(store: &S) {
    assert_eq!(store.get_application("nope").await.unwrap(), None);
    assert!(store.list_applications().await.unwrap().is_empty());

    let apps: Vec<Application> = (0..230).map(|i| application(&format!("app{i}"), &["project", "task"])).collect();
    for app in &apps {
        store.put_application(app).await.unwrap();
    }
    assert_eq!(store.get_application("app7").await.unwrap().as_ref(), Some(&apps[7]));

    let updated = application("app7", &["project", "task", "comment"]);
    store.put_application(&updated).await.unwrap();
    store.put_application(&updated).await.unwrap();
    assert_eq!(store.get_application("app7").await.unwrap(), Some(updated.clone()));

    let listed: HashMap<String, Application> =
        store.list_applications().await.unwrap().into_iter().map(|a| (a.id.clone(), a)).collect();
    assert_eq!(listed.len(), 230);
    assert_eq!(listed["app7"], updated);
    assert_eq!(listed["app229"], apps[229]);
}

pub async fn empty_calls_are_no_ops<S: Store>(store: &S) {
    assert!(store.get_objects("app1", &[]).await.unwrap().is_empty());
    store.put_objects("app1", &[]).await.unwrap();
    assert!(store.children("app1", "project", "p1").await.unwrap().is_empty());
}

/// Many calls in flight at once on one store, as the writer's batches and the readiness probe do.
pub async fn concurrent_calls_on_one_store<S: Store>(store: &S) {
    let app = "app1";
    let puts = (0..32).map(|i| {
        let w =
            write("task", object("task", &format!("t{i}"), 1, json!({"i": i}), Some(i)), false, &[("project", "p")]);
        async move { store.put_objects(app, &[w]).await }
    });
    for result in futures::future::join_all(puts).await {
        result.unwrap();
    }
    let ids: Vec<ObjectId> = (0..32).map(|i| key("task", &format!("t{i}"))).collect();
    let reads = (0..8).map(|_| async {
        let (objects, children, ping) =
            tokio::join!(store.get_objects(app, &ids), store.children(app, "project", "p"), store.ping());
        ping.unwrap();
        (objects.unwrap().len(), children.unwrap().len())
    });
    for counts in futures::future::join_all(reads).await {
        assert_eq!(counts, (32, 32));
    }
}

pub async fn ping_answers<S: Store>(store: &S) {
    store.ping().await.unwrap();
}
