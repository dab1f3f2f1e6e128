//! Values written into the registry from outside (by hand, by another program, by the bug of
//! issue 14 item 1): found at read time, they are repaired or skipped, never fatal, and never
//! lock a device out. Each scenario writes the corruption with plain Redis commands, then
//! checks that the device still attaches and gets its valid subscriptions.

use super::*;

/// The member a sockets transport puts in channel sets.
fn socket(app: &str, id: &str) -> DeviceAddress {
    addr(app, Transport::Sockets(0), id, "life1")
}

every_topology!(a_poisoned_subscription_set: poisoned_subs_single, poisoned_subs_cluster, poisoned_subs_memory);
/// What the poison subscribe of issue 14 left behind (a device record key among d1's
/// subscriptions), plus keys of other kinds, of another application and garbage, and a valid
/// channel whose key holds a string: d1 still attaches, gets every valid subscription, and the
/// other device's record is untouched.
async fn a_poisoned_subscription_set(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let d2 = device(&app, "d2", "tok2");
    reg.put_device(&device(&app, "d1", "tok1")).await.unwrap();
    reg.put_device(&d2).await.unwrap();
    let c1 = context_channel("c1").key(&app, None).unwrap();
    let c2 = context_channel("c2").key(&app, None).unwrap();
    let c3 = context_channel("c3").key(&app, Some(&filter(1))).unwrap();
    for k in [&c1, &c2, &c3] {
        reg.subscribe(&app, "d1", k, &[]).await.unwrap();
    }
    let subs = format!("blg:{app}:device:d1:subscriptions");
    let junk = [
        format!("blg:{app}:devices:d2"),
        format!("blg:{app}:device:d2:subscriptions"),
        format!("blg:{app}:index|devices"),
        format!("blg:other{app}:context:c1:task"),
        "garbage".to_string(),
    ];
    let _: i64 = raw.q(redis::cmd("SADD").arg(&subs).arg(&junk)).await;
    let _: () = raw.q(redis::cmd("SET").arg(c2.as_str()).arg("not a set")).await;
    let d2_before: String = raw.q(redis::cmd("GET").arg(format!("blg:{app}:devices:d2"))).await;

    let a = socket(&app, "d1");
    assert_eq!(reg.attach_socket(&a).await.unwrap(), 3, "the three valid subscriptions are restored");
    for k in [&c1, &c2, &c3] {
        assert_eq!(raw.smembers(k.as_str()).await, set(&[&a.to_string()]), "{k}");
    }
    assert_eq!(raw.smembers(&subs).await, set(&[c1.as_str(), c2.as_str(), c3.as_str()]), "junk removed");
    let d2_after: String = raw.q(redis::cmd("GET").arg(format!("blg:{app}:devices:d2"))).await;
    assert_eq!(d2_before, d2_after, "another device's record is never written through a subscription");
    let routes = reg.route(&[c1.clone(), c2.clone()]).await.unwrap();
    assert_eq!(routes.members[c2.as_str()], vec![a.to_string()]);

    // Detach and delete work over the same kind of junk.
    let _: i64 = raw.q(redis::cmd("SADD").arg(&subs).arg(&junk)).await;
    reg.detach_socket(&a).await.unwrap();
    assert!(raw.smembers(c1.as_str()).await.is_empty());
    let _: i64 = raw.q(redis::cmd("SADD").arg(&subs).arg(&junk)).await;
    reg.delete_device(&app, "d1").await.unwrap();
    assert!(!raw.exists(&subs).await);
    assert_eq!(reg.get_device(&app, "d2").await.unwrap(), Some(d2));
    raw.cleanup(&app).await;
    raw.cleanup(&format!("other{app}")).await;
}

every_topology!(corrupt_device_records: corrupt_records_single, corrupt_records_cluster, corrupt_records_memory);
/// A device record that does not parse, one of another Redis type, and one naming another
/// device: each reads as absent, and attaching the device replaces it.
async fn corrupt_device_records(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let d1 = device(&app, "d1", "tok1");
    reg.put_device(&d1).await.unwrap();
    let c1 = context_channel("c1").key(&app, None).unwrap();
    let record = |id: &str| format!("blg:{app}:devices:{id}");
    let _: () = raw.q(redis::cmd("SET").arg(record("d3")).arg("{not json")).await;
    let _: i64 = raw.q(redis::cmd("SADD").arg(record("d4")).arg("a set")).await;
    let _: () = raw.q(redis::cmd("SET").arg(record("d5")).arg(serde_json::to_string(&d1).unwrap())).await;
    for id in ["d3", "d4", "d5"] {
        assert_eq!(reg.get_device(&app, id).await.unwrap(), None, "{id}");
        reg.subscribe(&app, id, &c1, &[]).await.unwrap();
        let a = socket(&app, id);
        assert_eq!(reg.attach_socket(&a).await.unwrap(), 1, "{id}");
        let stored = reg.get_device(&app, id).await.unwrap().expect("the record was replaced");
        assert_eq!((stored.id.as_str(), stored.addresses()), (id, vec![a.clone()]));
        assert!(raw.smembers(c1.as_str()).await.contains(&a.to_string()));
    }
    assert_eq!(reg.get_device(&app, "d1").await.unwrap(), Some(d1), "d5's record named d1: d1 untouched");
    raw.cleanup(&app).await;
}

every_topology!(our_keys_of_another_type: wrong_types_single, wrong_types_cluster, wrong_types_memory);
/// Our own keys holding strings (a subscription set, a filter index, the device and socket
/// indexes): every write over them replaces them, every read skips them.
async fn our_keys_of_another_type(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let d1 = device(&app, "d1", "tok1");
    let base = context_channel("c1").key(&app, None).unwrap();
    let filtered = context_channel("c1").key(&app, Some(&filter(7))).unwrap();
    for key in [
        format!("blg:{app}:device:d1:subscriptions"),
        format!("blg:{app}:filters|{base}"),
        format!("blg:{app}:index|devices"),
        format!("blg:{app}:index|sockets_transport-0"),
    ] {
        let _: () = raw.q(redis::cmd("SET").arg(&key).arg("clobbered")).await;
    }
    assert!(reg.app_devices(&app).await.unwrap().is_empty());
    assert!(reg.route(std::slice::from_ref(&base)).await.unwrap().filtered.is_empty());
    assert!(reg.socket_entries(&app, 0).await.unwrap().is_empty());
    assert!(reg.device_subscriptions(&app, "d1").await.unwrap().is_empty());

    reg.put_device(&d1).await.unwrap();
    reg.subscribe(&app, "d1", &filtered, &d1.addresses()).await.unwrap();
    let a = socket(&app, "d1");
    assert_eq!(reg.attach_socket(&a).await.unwrap(), 1);
    assert_eq!(reg.app_devices(&app).await.unwrap().len(), 1);
    assert_eq!(reg.socket_entries(&app, 0).await.unwrap(), vec!["d1|life1".to_string()]);
    let routes = reg.route(std::slice::from_ref(&base)).await.unwrap();
    assert_eq!(routes.filtered[base.as_str()], vec![filtered.to_string()]);
    let mut expected = vec![d1.addresses()[0].to_string(), a.to_string()];
    expected.sort();
    assert_eq!(routes.members[filtered.as_str()], expected);
    // A purge over a socket index with entries that name no device id drops them.
    let index = format!("blg:{app}:index|sockets_transport-0");
    let _: i64 = raw.q(redis::cmd("SADD").arg(&index).arg("no-bar").arg("a:b|t").arg("x|y|z")).await;
    assert_eq!(reg.purge_sockets(&app, 0, "other-life").await.unwrap(), 1);
    assert!(raw.smembers(&index).await.is_empty());
    raw.cleanup(&app).await;
}

every_topology!(corrupt_data_is_never_fatal: corrupt_single, corrupt_cluster, corrupt_memory);
/// A channel key holding a string is routed as empty (the others still are), the error class
/// of whatever corruption reaches a role is never `Fatal`, and a corrupt record is replaced by
/// the next write. More in `registry/repair.rs`.
async fn corrupt_data_is_never_fatal(topology: Topology) {
    let (reg, raw, app) = setup(topology).await;
    let ch = context_channel("c1").key(&app, None).unwrap();
    let ok = context_channel("c2").key(&app, None).unwrap();
    let a = addr(&app, Transport::Ios, "d1", "t1");
    reg.subscribe(&app, "d1", &ok, std::slice::from_ref(&a)).await.unwrap();
    let _: () = raw.q(redis::cmd("SET").arg(ch.as_str()).arg("a string, not a set")).await;
    let routes = reg.route(&[ch.clone(), ok.clone()]).await.unwrap();
    assert_eq!(routes.members[ch.as_str()], Vec::<String>::new());
    assert_eq!(routes.members[ok.as_str()], vec![a.to_string()]);
    for e in [RegistryError::Corrupt("x".into()), RegistryError::LimitExceeded("x".into())] {
        let process: nexxus_worker::error::ProcessError = e.into();
        assert!(matches!(process, nexxus_worker::error::ProcessError::Poison(_)), "{process:?}");
    }
    // Overwriting a corrupt device record repairs it.
    let _: () = raw.q(redis::cmd("SET").arg(format!("blg:{app}:devices:d1")).arg("[1,2]")).await;
    assert_eq!(reg.put_device(&device(&app, "d1", "t")).await.unwrap(), None);
    assert!(reg.get_device(&app, "d1").await.unwrap().is_some());
    raw.cleanup(&app).await;
}
