//! The CQL store against the real Cassandra of the local stack: each test works in its own
//! keyspace (`t_<nanos>_<pid>_<name>`) and drops it at the end.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use nexxus_worker::config::{Config, Overrides};
use nexxus_worker::model::{Application, SourcePosition, StoredObject};
use nexxus_worker::store::{CqlOptions, CqlStore, ObjectId, ObjectRow, ObjectWrite, Store, StoreError};
use scylla::statement::Statement;
use serde_json::{json, Map, Value};

fn keyspace(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t_{}_{}_{name}", nanos % 1_000_000_000_000, std::process::id())
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

fn object(model: &str, id: &str, version: u64, fields: Value, offset: Option<i64>) -> StoredObject {
    let mut object: Map<String, Value> = fields.as_object().cloned().unwrap_or_default();
    object.insert("id".into(), id.into());
    object.insert("type".into(), model.into());
    let last_applied = offset.map(|offset| SourcePosition { topic: "p.write".into(), partition: 3, offset });
    StoredObject { object, version, last_applied }
}

fn write(model: &str, obj: StoredObject, deleted: bool, parents: &[(&str, &str)]) -> ObjectWrite {
    let parents = parents.iter().map(|(m, i)| (m.to_string(), i.to_string())).collect();
    ObjectWrite { model: model.into(), row: ObjectRow { object: obj, deleted }, parents }
}

fn key(model: &str, id: &str) -> ObjectId {
    (model.to_string(), id.to_string())
}

#[tokio::test]
async fn objects_round_trip_with_tombstones_and_positions() {
    let store = store("objects", CqlOptions::default()).await;
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

    // Connecting again to an existing keyspace is a no-op on the schema and sees the data.
    let again = CqlStore::connect(&config(store.keyspace())).await.unwrap();
    assert_eq!(again.get_objects(app, &[key("task", "t1")]).await.unwrap().len(), 1);
    drop_keyspace(store).await;
}

#[tokio::test]
async fn children_page_and_tombstones_remove_links() {
    let opts = CqlOptions { page_size: 100, ..CqlOptions::default() };
    let store = store("children", opts).await;
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
    drop_keyspace(store).await;
}

fn application(id: &str, models: &[&str]) -> Application {
    let schema: Map<String, Value> =
        models.iter().map(|m| (m.to_string(), json!({"write_acl": 2, "read_acl": 1}))).collect();
    let body = json!({"id": id, "jwt_secret": "s3cret", "schema": schema});
    Application::from_json(body.to_string().as_bytes()).unwrap()
}

#[tokio::test]
async fn applications_put_get_list_with_paging() {
    let store = store("apps", CqlOptions { page_size: 50, ..CqlOptions::default() }).await;
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
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{id}: {got:?}");
    }

    session
        .query_unpaged(format!("INSERT INTO {ks}.applications (id, body) VALUES ('x', '{{\"id\":\"y\"}}')"), ())
        .await
        .unwrap();
    assert!(matches!(store.get_application("x").await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.list_applications().await, Err(StoreError::Corrupt(_))));
    drop_keyspace(store).await;
}

#[tokio::test]
async fn ping_answers() {
    let store = store("ping", CqlOptions::default()).await;
    store.ping().await.unwrap();
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
