//! Restart survival, on a throwaway single node of our own, and what redis-rs does with
//! pipelines across slots (why `conn` splits batches per slot).

use super::*;

fn start_redis(port: u16, dir: &std::path::Path) -> common::Reaper {
    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--daemonize", "no", "--dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server on {port} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    common::Reaper(child)
}

#[tokio::test]
async fn single_node_restart_costs_at_most_one_retry() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = start_redis(port, dir.path());
    let reg = Registry::connect(&url).await.unwrap();
    let app = unique_app();
    let key = context_channel("c1").key(&app, None).unwrap();
    let a = [addr(&app, Transport::Ios, "d1", "t")];
    reg.subscribe(&app, "d1", &key, &a).await.unwrap();
    assert_eq!(reg.retries(), 0);

    for round in 1..=2 {
        drop(server); // SIGKILL: the connection breaks without a goodbye
        server = start_redis(port, dir.path());
        let before = reg.retries();
        // The old connection is dead; the first command fails on it and is retried on a new one.
        reg.subscribe(&app, "d1", &key, &a).await.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(reg.retries() - before <= 1, "round {round}: {} retries", reg.retries() - before);
        assert_eq!(reg.route(std::slice::from_ref(&key)).await.unwrap().members[key.as_str()], vec![a[0].to_string()]);
        assert_eq!(reg.retries() - before, 1, "round {round}: exactly the first command was retried");
    }
    drop(server);

    // Server down: a bounded Unavailable, not a hang.
    let started = std::time::Instant::now();
    let err = reg.ping().await.unwrap_err();
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let err = Registry::connect(&url).await.err().expect("no server");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err:?}");
}

/// Why the registry splits a cluster batch per slot: redis-rs sends a pipeline to the node of
/// its first key and refuses one whose keys hash to different slots.
#[tokio::test]
async fn redis_rs_cluster_pipelines_cannot_span_slots() {
    let raw = Raw::connect(&url(true)).await;
    let Routed::Cluster(c) = &raw.routed else { unreachable!() };
    let app = unique_app();
    let (a, b) = (format!("blg:{app}:a"), format!("blg:{app}:b")); // different slots
    assert_ne!(redis::cluster_routing::Slot::for_key(&a), redis::cluster_routing::Slot::for_key(&b));
    let mut pipe = redis::pipe();
    pipe.cmd("SMEMBERS").arg(&a).cmd("SMEMBERS").arg(&b);
    let err = pipe.query_async::<Vec<redis::Value>>(&mut c.clone()).await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("slot"), "{err}");
}
