//! The registry against the real Redis of the local stack, each scenario on the single node
//! (`TP_REDIS_URL`), the 3-master cluster (`NEXXUS_REDIS_CLUSTER_URL`) and the in-memory
//! backend of `-t all` (the same registry code over a map that must answer as Redis does). Each test works under its own application id `t<nanos>...`,
//! checks the raw keys with plain Redis commands, and deletes its keys at the end. The restart
//! test runs its own throwaway redis-server.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nexxus_worker::model::{Channel, Device, DeviceAddress, Filter, Transport};
use nexxus_worker::registry::{Registry, RegistryError};
use redis::{Cmd, FromRedisValue};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Helpers

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Topology {
    Single,
    Cluster,
    /// The in-process backend of `-t all` without Redis: same registry code, same scenarios.
    Memory,
}

fn url(cluster: bool) -> String {
    let env = common::stack_env();
    let var = if cluster { "NEXXUS_REDIS_CLUSTER_URL" } else { "TP_REDIS_URL" };
    env.get(var).cloned().unwrap_or_else(|| panic!("{var} missing from deploy/local/stack.env (make up)"))
}

/// An application id no other test or run uses.
fn unique_app() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{}p{}n{}", nanos % 1_000_000_000_000, std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Plain Redis access for checking raw keys, on every node of the topology.
struct Raw {
    /// One connection per node URL (a single node: one).
    nodes: Vec<redis::aio::MultiplexedConnection>,
    /// Routed by key (the single node's connection, or a cluster connection).
    routed: Routed,
}

enum Routed {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
    Memory(nexxus_worker::registry::memory::MemoryDb),
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let urls: Vec<&str> = url.split(',').collect();
        let mut nodes = Vec::new();
        for u in &urls {
            nodes.push(redis::Client::open(*u).unwrap().get_multiplexed_async_connection().await.unwrap());
        }
        let routed = if urls.len() == 1 {
            Routed::Single(nodes[0].clone())
        } else {
            Routed::Cluster(redis::cluster::ClusterClient::new(urls).unwrap().get_async_connection().await.unwrap())
        };
        Raw { nodes, routed }
    }

    async fn q<T: FromRedisValue>(&self, cmd: &Cmd) -> T {
        match &self.routed {
            Routed::Single(c) => cmd.query_async(&mut c.clone()).await.unwrap(),
            Routed::Cluster(c) => cmd.query_async(&mut c.clone()).await.unwrap(),
            Routed::Memory(db) => redis::from_redis_value(db.query(cmd).unwrap()).unwrap(),
        }
    }

    async fn smembers(&self, key: &str) -> BTreeSet<String> {
        self.q(redis::cmd("SMEMBERS").arg(key)).await
    }

    async fn exists(&self, key: &str) -> bool {
        self.q::<i64>(redis::cmd("EXISTS").arg(key)).await == 1
    }

    /// Every key of `app` on every node (KEYS is fine in a test; the registry never uses it).
    async fn keys_of(&self, app: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Routed::Memory(db) = &self.routed {
            out.extend(db.keys().into_iter().filter(|k| k.starts_with(&format!("blg:{app}:"))));
        }
        for node in &self.nodes {
            let ks: Vec<String> =
                redis::cmd("KEYS").arg(format!("blg:{app}:*")).query_async(&mut node.clone()).await.unwrap();
            out.extend(ks);
        }
        out
    }

    async fn cleanup(&self, app: &str) {
        for key in self.keys_of(app).await {
            let _: i64 = self.q(redis::cmd("DEL").arg(&key)).await;
        }
        assert!(self.keys_of(app).await.is_empty());
    }
}

async fn setup(topology: Topology) -> (Registry, Raw, String) {
    if topology == Topology::Memory {
        let reg = Registry::memory();
        let db = reg.memory_db().expect("the in-memory registry exposes its map");
        return (reg, Raw { nodes: Vec::new(), routed: Routed::Memory(db) }, unique_app());
    }
    let cluster = topology == Topology::Cluster;
    let u = url(cluster);
    let reg = Registry::connect(&u).await.expect("connecting the registry to the local stack (make up)");
    assert_eq!(reg.is_cluster(), cluster);
    (reg, Raw::connect(&u).await, unique_app())
}

fn device(app: &str, id: &str, token: &str) -> Device {
    serde_json::from_value(json!({
        "id": id, "application_id": app, "info": {"os": "x"},
        "persistent": {"type": "ios", "token": token, "active": true}
    }))
    .unwrap()
}

fn addr(app: &str, transport: Transport, id: &str, token: &str) -> DeviceAddress {
    DeviceAddress { transport, device_id: id.into(), token: token.into(), application_id: app.into() }
}

fn context_channel(ctx: &str) -> Channel {
    Channel { model: "task".into(), context: Some(ctx.into()), ..Channel::default() }
}

fn filter(n: i64) -> Filter {
    Filter::parse(&json!({"and": [{"is": {"votes": n}}]})).unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Runs one scenario on the single node, on the cluster and on the in-memory backend.
macro_rules! every_topology {
    ($body:ident: $single:ident, $cluster:ident, $memory:ident) => {
        #[tokio::test]
        async fn $single() {
            $body(Topology::Single).await
        }
        #[tokio::test]
        async fn $cluster() {
            $body(Topology::Cluster).await
        }
        #[tokio::test]
        async fn $memory() {
            $body(Topology::Memory).await
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Scenarios

every_topology!(device_put_get_delete: device_put_get_delete_single, device_put_get_delete_cluster, device_put_get_delete_memory);
async fn device_put_get_delete(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    reg.ping().await.unwrap();
    assert_eq!(reg.get_device(&app, "d1").await.unwrap(), None);

    let d1 = device(&app, "d1", "tok1");
    assert_eq!(reg.put_device(&d1).await.unwrap(), None);
    assert_eq!(reg.get_device(&app, "d1").await.unwrap(), Some(d1.clone()));
    let stored: String = raw.q(redis::cmd("GET").arg(format!("blg:{app}:devices:d1"))).await;
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(stored["id"], "d1");
    assert_eq!(stored["application_id"], app.as_str());
    assert_eq!(stored["persistent"], json!({"type": "ios", "token": "tok1", "active": true}));
    assert_eq!(raw.smembers(&format!("blg:{app}:index|devices")).await, set(&["d1"]));

    let d1b = device(&app, "d1", "tok2");
    assert_eq!(reg.put_device(&d1b).await.unwrap(), Some(d1));
    assert_eq!(reg.get_device(&app, "d1").await.unwrap(), Some(d1b));

    reg.delete_device(&app, "d1").await.unwrap();
    assert_eq!(reg.get_device(&app, "d1").await.unwrap(), None);
    assert!(raw.keys_of(&app).await.is_empty(), "left: {:?}", raw.keys_of(&app).await);
    reg.delete_device(&app, "d1").await.unwrap(); // idempotent
    raw.cleanup(&app).await;
}

every_topology!(subscribe_unsubscribe: subscribe_unsubscribe_single, subscribe_unsubscribe_cluster, subscribe_unsubscribe_memory);
async fn subscribe_unsubscribe(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let key = context_channel("c1").key(&app, None).unwrap();
    assert_eq!(key.as_str(), format!("blg:{app}:context:c1:task"));
    let addrs = [addr(&app, Transport::Ios, "d1", "tok1"), addr(&app, Transport::Sockets(3), "d1", "")];

    for _ in 0..2 {
        reg.subscribe(&app, "d1", &key, &addrs).await.unwrap(); // twice: idempotent
    }
    assert_eq!(
        raw.smembers(key.as_str()).await,
        set(&[&format!("ios_transport|d1|tok1|{app}"), &format!("sockets_transport-3|d1||{app}")])
    );
    assert_eq!(raw.smembers(&format!("blg:{app}:device:d1:subscriptions")).await, set(&[key.as_str()]));
    assert_eq!(reg.device_subscriptions(&app, "d1").await.unwrap(), vec![key.to_string()]);
    // An unfiltered subscription has no filter index.
    assert_eq!(raw.keys_of(&app).await.len(), 2, "{:?}", raw.keys_of(&app).await);

    // Another key shape, built by the model: parent + user.
    let pu = Channel {
        model: "task".into(),
        user: Some("u1".into()),
        parent: Some(nexxus_worker::model::ParentRef { model: "project".into(), id: "p1".into() }),
        ..Channel::default()
    }
    .key(&app, None)
    .unwrap();
    reg.subscribe(&app, "d1", &pu, &addrs[..1]).await.unwrap();
    assert_eq!(raw.smembers(&format!("blg:{app}:users:u1:project:p1:task")).await.len(), 1);

    for _ in 0..2 {
        reg.unsubscribe(&app, "d1", &key, &addrs).await.unwrap();
        reg.unsubscribe(&app, "d1", &pu, &addrs[..1]).await.unwrap();
    }
    assert!(!raw.exists(key.as_str()).await);
    assert!(raw.keys_of(&app).await.is_empty(), "left: {:?}", raw.keys_of(&app).await);
    raw.cleanup(&app).await;
}

every_topology!(filtered_subscription_index: filtered_index_single, filtered_index_cluster, filtered_index_memory);
async fn filtered_subscription_index(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let base = context_channel("c1").key(&app, None).unwrap();
    let fk = context_channel("c1").key(&app, Some(&filter(1))).unwrap();
    assert!(fk.as_str().starts_with(&format!("blg:{app}:context:c1:task:filter:")));
    let index = format!("blg:{app}:filters|blg:{app}:context:c1:task");
    let a1 = [addr(&app, Transport::Android, "d1", "t1")];
    let a2 = [addr(&app, Transport::Ios, "d2", "t2")];

    reg.subscribe(&app, "d1", &fk, &a1).await.unwrap();
    reg.subscribe(&app, "d2", &fk, &a2).await.unwrap();
    assert_eq!(raw.smembers(&index).await, set(&[fk.as_str()]));
    assert_eq!(raw.smembers(fk.as_str()).await.len(), 2);
    assert!(!raw.exists(base.as_str()).await);

    reg.unsubscribe(&app, "d1", &fk, &a1).await.unwrap();
    assert_eq!(raw.smembers(&index).await, set(&[fk.as_str()]), "still one subscriber");
    reg.unsubscribe(&app, "d2", &fk, &a2).await.unwrap();
    assert!(!raw.exists(&index).await, "the last unsubscribe removes the index entry");
    reg.unsubscribe(&app, "d2", &fk, &a2).await.unwrap(); // idempotent
    assert!(raw.keys_of(&app).await.is_empty(), "left: {:?}", raw.keys_of(&app).await);
    raw.cleanup(&app).await;
}

every_topology!(route_channels: route_single, route_cluster, route_memory);
async fn route_channels(topology: Topology) {
    let (reg, raw, app_a) = setup(topology).await;
    let app_b = unique_app();
    let ch_a = context_channel("c1").key(&app_a, None).unwrap();
    let ch_b = context_channel("c1").key(&app_b, None).unwrap();
    let f1 = context_channel("c1").key(&app_a, Some(&filter(1))).unwrap();
    let f2 = context_channel("c1").key(&app_a, Some(&filter(2))).unwrap();
    let d1 = addr(&app_a, Transport::Ios, "d1", "t1");
    let d2 = addr(&app_a, Transport::Android, "d2", "t2");
    let d3 = addr(&app_a, Transport::Sockets(0), "d3", "s3");
    let e1 = addr(&app_b, Transport::Ios, "d1", "t1"); // same device id, other application
    reg.subscribe(&app_a, "d1", &ch_a, std::slice::from_ref(&d1)).await.unwrap();
    reg.subscribe(&app_a, "d2", &f1, std::slice::from_ref(&d2)).await.unwrap();
    reg.subscribe(&app_a, "d3", &f2, std::slice::from_ref(&d3)).await.unwrap();
    reg.subscribe(&app_b, "d1", &ch_b, std::slice::from_ref(&e1)).await.unwrap();

    let r = reg.route(std::slice::from_ref(&ch_a)).await.unwrap();
    assert_eq!(r.round_trips, 2);
    assert_eq!(r.members[ch_a.as_str()], vec![d1.to_string()]);
    let mut variants = vec![f1.to_string(), f2.to_string()];
    variants.sort();
    assert_eq!(r.filtered, HashMap::from([(ch_a.to_string(), variants)]));
    assert_eq!(r.members[f1.as_str()], vec![d2.to_string()]);
    assert_eq!(r.members[f2.as_str()], vec![d3.to_string()]);
    assert_eq!(r.members.len(), 3);

    let r = reg.route(std::slice::from_ref(&ch_b)).await.unwrap();
    assert_eq!(r.round_trips, 1, "no filters in app B");
    assert_eq!(r.members, HashMap::from([(ch_b.to_string(), vec![e1.to_string()])]));
    assert!(r.filtered.is_empty());

    // Both applications at once, plus a channel nobody is on, with duplicates: nothing mixes.
    let nobody = context_channel("c2").key(&app_a, None).unwrap();
    let r = reg.route(&[ch_b.clone(), ch_a.clone(), nobody.clone(), ch_a.clone()]).await.unwrap();
    assert_eq!(r.round_trips, 2);
    assert_eq!(r.members[ch_a.as_str()], vec![d1.to_string()]);
    assert_eq!(r.members[ch_b.as_str()], vec![e1.to_string()]);
    assert_eq!(r.members[nobody.as_str()], Vec::<String>::new());
    assert_eq!(r.members.len(), 5);
    assert_eq!(r.filtered.len(), 1);

    let r = reg.route(&[]).await.unwrap();
    assert_eq!((r.round_trips, r.members.len()), (0, 0));
    let r = reg.route(std::slice::from_ref(&nobody)).await.unwrap();
    assert_eq!(r.round_trips, 1);

    raw.cleanup(&app_a).await;
    raw.cleanup(&app_b).await;
}

every_topology!(move_addresses: move_addresses_single, move_addresses_cluster, move_addresses_memory);
async fn move_addresses(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let ch = context_channel("c1").key(&app, None).unwrap();
    let fk = context_channel("c2").key(&app, Some(&filter(7))).unwrap();
    let old = addr(&app, Transport::Ios, "d1", "old");
    let new = addr(&app, Transport::Ios, "d1", "new");
    let other = addr(&app, Transport::Ios, "d2", "x");
    for k in [&ch, &fk] {
        reg.subscribe(&app, "d1", k, std::slice::from_ref(&old)).await.unwrap();
    }
    reg.subscribe(&app, "d2", &ch, std::slice::from_ref(&other)).await.unwrap();

    for _ in 0..2 {
        reg.move_addresses(&app, "d1", std::slice::from_ref(&old), std::slice::from_ref(&new)).await.unwrap();
    }
    assert_eq!(raw.smembers(ch.as_str()).await, set(&[&new.to_string(), &other.to_string()]));
    assert_eq!(raw.smembers(fk.as_str()).await, set(&[&new.to_string()]));

    // Moving to no address empties the filtered channel, which leaves its filter index.
    let index = format!("blg:{app}:filters|blg:{app}:context:c2:task");
    assert!(raw.exists(&index).await);
    reg.move_addresses(&app, "d1", std::slice::from_ref(&new), &[]).await.unwrap();
    assert_eq!(raw.smembers(ch.as_str()).await, set(&[&other.to_string()]));
    assert!(!raw.exists(fk.as_str()).await);
    assert!(!raw.exists(&index).await);
    // The subscriptions themselves stay: the device is still subscribed, just unreachable.
    assert_eq!(reg.device_subscriptions(&app, "d1").await.unwrap().len(), 2);
    raw.cleanup(&app).await;
}

every_topology!(delete_device_removes_everything: delete_device_single, delete_device_cluster, delete_device_memory);
async fn delete_device_removes_everything(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let ch = context_channel("c1").key(&app, None).unwrap();
    let fk = context_channel("c1").key(&app, Some(&filter(1))).unwrap();
    let user = Channel { model: "user".into(), ..Channel::default() }.key(&app, None).unwrap();
    let d1 = device(&app, "d1", "tok");
    reg.put_device(&d1).await.unwrap();
    reg.put_device(&device(&app, "d2", "tok2")).await.unwrap();
    let mine = [d1.push_address().unwrap(), addr(&app, Transport::Sockets(1), "d1", "conn9")];
    let theirs = addr(&app, Transport::Ios, "d2", "tok2");
    for k in [&ch, &fk, &user] {
        reg.subscribe(&app, "d1", k, &mine).await.unwrap();
    }
    reg.subscribe(&app, "d2", &ch, std::slice::from_ref(&theirs)).await.unwrap();
    // A stale address of d1 (an old socket token) that only the channel set still knows.
    let _: i64 = raw.q(redis::cmd("SADD").arg(user.as_str()).arg(format!("sockets_transport-4|d1|stale|{app}"))).await;

    reg.delete_device(&app, "d1").await.unwrap();
    reg.delete_device(&app, "d1").await.unwrap();
    let left = raw.keys_of(&app).await;
    let expected = set(&[
        &format!("blg:{app}:devices:d2"),
        &format!("blg:{app}:index|devices"),
        &format!("blg:{app}:device:d2:subscriptions"),
        ch.as_str(),
    ]);
    assert_eq!(left, expected);
    assert_eq!(raw.smembers(ch.as_str()).await, set(&[&theirs.to_string()]));
    assert_eq!(raw.smembers(&format!("blg:{app}:index|devices")).await, set(&["d2"]));
    raw.cleanup(&app).await;
}

every_topology!(app_devices: app_devices_single, app_devices_cluster, app_devices_memory);
async fn app_devices(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let other_app = unique_app();
    let n = nexxus_worker::registry::DEVICE_CHUNK + 20; // more than one pipelined chunk
    let puts = (0..n).map(|i| {
        let reg = reg.clone();
        let d = device(&app, &format!("d{i:04}"), &format!("tok{i}"));
        async move { reg.put_device(&d).await.unwrap() }
    });
    futures::future::join_all(puts).await;
    reg.put_device(&device(&other_app, "x1", "t")).await.unwrap();
    // A corrupt record and a stale index entry: skipped, never fatal for a broadcast.
    let _: () = raw.q(redis::cmd("SET").arg(format!("blg:{app}:devices:junk")).arg("{not json")).await;
    let _: i64 = raw.q(redis::cmd("SADD").arg(format!("blg:{app}:index|devices")).arg("junk").arg("gone")).await;

    let devices = reg.app_devices(&app).await.unwrap();
    assert_eq!(devices.len(), n);
    assert!(devices.iter().all(|d| d.application_id == app));
    assert_eq!(devices[0], device(&app, "d0000", "tok0"));
    assert_eq!(reg.app_devices(&other_app).await.unwrap().len(), 1);
    assert!(reg.app_devices(&unique_app()).await.unwrap().is_empty());

    // A single read of that record finds no device there (the next write replaces it).
    assert_eq!(reg.get_device(&app, "junk").await.unwrap(), None);
    raw.cleanup(&app).await;
    raw.cleanup(&other_app).await;
}

#[path = "registry/limits.rs"]
mod limits;
#[path = "registry/repair.rs"]
mod repair;
#[path = "registry/restart.rs"]
mod restart;
#[path = "registry/subscription.rs"]
mod subscription;

every_topology!(concurrent_device_updates: concurrent_updates_single, concurrent_updates_cluster, concurrent_updates_memory);
/// Many writers changing one device record at once (a socket attaching while `track`
/// registers, times twenty): with `update_device` no writer's change is lost.
async fn concurrent_device_updates(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    reg.put_device(&device(&app, "d1", "t")).await.unwrap();
    let writers: Vec<_> = (0..20)
        .map(|k| {
            let (reg, app) = (reg.clone(), app.clone());
            tokio::spawn(async move {
                reg.update_device(&app, "d1", |stored| {
                    let mut d = stored.cloned()?;
                    d.info.insert(format!("w{k}"), json!(true));
                    Some(d)
                })
                .await
                .unwrap();
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let stored = reg.get_device(&app, "d1").await.unwrap().unwrap();
    let missing: Vec<usize> = (0..20).filter(|k| !stored.info.contains_key(&format!("w{k}"))).collect();
    assert!(missing.is_empty(), "lost updates of writers {missing:?}");
    // `None` leaves the record alone, and a missing device is not created.
    let (before, after) = reg.update_device(&app, "nobody", |d| d.cloned()).await.unwrap();
    assert_eq!((before, after), (None, None));
    assert!(!raw.exists(&format!("blg:{app}:devices:nobody")).await);
    raw.cleanup(&app).await;
}
