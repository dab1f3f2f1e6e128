//! The registry over `rediss://` with a Redis ACL user, against the local stack's TLS-only node
//! (deploy/local/redis.sh: its own CA, `default` user off): trusted with `TP_REDIS_CA_FILE`; a
//! wrong password or an untrusted certificate refused at once with a one-line error naming the
//! setting (exit 69 for a worker), and the password in no message.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use nexxus_worker::registry::{Registry, RegistryError};

struct Tls {
    url: String,
    cluster_url: String,
    ca: Vec<u8>,
    ca_path: String,
    password: String,
}

fn tls() -> Tls {
    let env = common::stack_env();
    let url = env.get("NEXXUS_REDIS_TLS_URL").expect("make up starts a TLS Redis (deploy/local/redis.sh)").clone();
    let ca_path = env["NEXXUS_REDIS_TLS_CA"].clone();
    let password = url.split_once("://").and_then(|(_, r)| r.split_once('@')).map(|(u, _)| u).unwrap_or_default();
    let password = password.split_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    let cluster_url = env["NEXXUS_REDIS_TLS_CLUSTER_URL"].clone();
    Tls { ca: std::fs::read(&ca_path).unwrap(), url, cluster_url, ca_path, password }
}

#[tokio::test]
async fn the_registry_works_over_tls_with_an_acl_user_and_refuses_what_it_must() {
    let t = tls();
    assert!(!t.password.is_empty());
    let registry = Registry::connect_trusting(&t.url, Some(&t.ca)).await.expect("rediss:// with the stack's CA");
    assert!(registry.app_devices("tls-test-app").await.unwrap().is_empty());

    let wrong = t.url.replace(&t.password, "not-the-password");
    let err = Registry::connect_trusting(&wrong, Some(&t.ca)).await.err().expect("a wrong password is refused");
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Refused(_)), "{text}");
    assert!(text.contains("TP_REDIS_URL") && !text.contains("not-the-password"), "{text}");

    let started = Instant::now();
    let err = Registry::connect(&t.url).await.err().expect("the stack's CA is not in the system's roots");
    let text = err.to_string();
    assert!(matches!(err, RegistryError::Refused(_)), "{text}");
    assert!(text.contains("TP_REDIS_CA_FILE") && !text.contains(&t.password), "{text}");
    assert!(started.elapsed() < Duration::from_secs(20), "refused, not retried until a timeout");
}

/// A Redis Cluster over TLS (client connections and cluster bus) with the same ACL user: the
/// registry routes across its nodes, and an untrusted certificate is refused the same way.
#[tokio::test]
async fn the_registry_works_with_a_tls_cluster() {
    let t = tls();
    let registry =
        Registry::connect_trusting(&t.cluster_url, Some(&t.ca)).await.expect("rediss:// cluster with the CA");
    assert!(registry.is_cluster());
    // Keys of many slots, so every node is reached.
    for app in (0..20).map(|i| format!("tls-cluster-app-{i}")) {
        assert!(registry.app_devices(&app).await.unwrap().is_empty());
    }
    let err = Registry::connect(&t.cluster_url).await.err().expect("the stack's CA is not in the system's roots");
    assert!(matches!(err, RegistryError::Refused(_)), "{err}");
    assert!(err.to_string().contains("TP_REDIS_CA_FILE") && !err.to_string().contains(&t.password), "{err}");
}

/// A worker at start: exit 69 with one line naming the setting, never the password, never a
/// hang; an unreadable CA file is a usage error (64).
#[test]
fn a_worker_exits_69_naming_the_setting_and_never_shows_the_password() {
    let t = tls();
    let prefix = common::unique_prefix("redis-tls");
    let env = common::env_for(&prefix);
    let wrong = t.url.replace(&t.password, "wr0ng-pa55");
    for (url, ca, code, names) in [
        (wrong.as_str(), t.ca_path.as_str(), 69, "TP_REDIS_URL"),
        (t.url.as_str(), "", 69, "TP_REDIS_CA_FILE"),
        (t.url.as_str(), "/nonexistent/ca.pem", 64, "TP_REDIS_CA_FILE"),
    ] {
        let started = Instant::now();
        let out = Command::new(common::BIN)
            .args(["-t", "track"])
            .env_clear()
            .envs(&env)
            .env("TP_HTTP_PORT", "0")
            .env("TP_REDIS_URL", url)
            .env("TP_REDIS_CA_FILE", ca)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(last.contains(names), "{last}");
        assert!(
            !stderr.contains(&t.password) && !stderr.contains("wr0ng-pa55"),
            "a password reached the log: {stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
