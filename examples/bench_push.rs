//! Push throughput of one `ios_transport` and one `android_transport` process against the
//! local APNs and FCM stand-ins of the tests (which verify every JWT, topic and payload, so
//! they cost CPU like a strict provider would), over real Kafka.
//!
//! Produces `--messages` transport messages of `--devices` recipients each (the transport
//! manager's batches hold up to 500), starts the role, and times until the fake has accepted
//! every push.
//!
//!     deploy/local/bench-push.sh --messages 200 --devices 500
#![allow(clippy::disallowed_methods)] // a benchmark harness, not the worker: it reads its settings from the environment

#[path = "support/proc.rs"]
#[allow(dead_code)]
mod proc;
#[path = "../tests/common/push_fakes.rs"]
#[allow(dead_code)]
mod push_fakes;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proc::cpu_ticks;
use push_fakes::{ApnsApp, FakeApns, FakeFcm, FcmAccount};
use serde_json::json;

const BIN: &str = "target/release/nexxus-worker";

fn num(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (messages, devices) = (num("--messages", 200), num("--devices", 500));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let (prefix, app) = (format!("bp{nanos}."), format!("bp{nanos}"));
    let mut env: HashMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("TP_")).collect();
    env.insert("TP_TOPIC_PREFIX".into(), prefix.clone());
    env.insert("TP_HTTP_PORT".into(), "0".into());
    env.insert("TP_LOG_LEVEL".into(), "warn".into());
    env.insert("TP_PUSH_RATE".into(), "1000000".into());
    let (ec, ec_public) = push_fakes::ec_p8_key();
    let (rsa, rsa_public) = push_fakes::rsa_key();
    let apns = FakeApns::start(vec![ApnsApp {
        team_id: "TEAM".into(),
        key_id: "KID".into(),
        public_key: ec_public,
        topic: "com.example.bench".into(),
    }])
    .await;
    let fcm = FakeFcm::start(vec![FcmAccount {
        project_id: "bench".into(),
        client_email: "sa@bench.iam.gserviceaccount.com".into(),
        public_key: rsa_public,
    }])
    .await;
    // Where the workers connect is the operator's setting: application records cannot name it.
    env.insert("TP_APNS_URL".into(), apns.url());
    env.insert("TP_FCM_URL".into(), fcm.url());
    env.insert("TP_PUSH_TOKEN_URLS".into(), fcm.token_uri());
    let run = |args: &[&str]| std::process::Command::new(BIN).args(args).envs(&env).output();
    anyhow::ensure!(run(&["topics", "apply"])?.status.success(), "topics apply failed");

    let doc = json!({"id": app, "schema": {"task": {}},
        "apn": {"key": ec, "key_id": "KID", "team_id": "TEAM", "topic": "com.example.bench"},
        "fcm": {"service_account": {"project_id": "bench", "client_email": "sa@bench.iam.gserviceaccount.com",
            "private_key": rsa, "token_uri": fcm.token_uri()}}});
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("app.json");
    std::fs::write(&path, doc.to_string())?;
    let put = run(&["app", "put", path.to_str().unwrap_or_default()])?;
    anyhow::ensure!(put.status.success(), "app put failed: {}", String::from_utf8_lossy(&put.stderr));

    let cfg = nexxus_worker::config::Config::load(&Default::default(), &env)?;
    let health = std::sync::Arc::new(nexxus_worker::telemetry::Health::new());
    let producer = nexxus_worker::queue::kafka::Producer::new(&cfg, &health, "bench-push")?;
    let total = messages * devices;
    for (role, topic) in [("ios_transport", "ios_transport"), ("android_transport", "android_transport")] {
        for m in 0..messages {
            let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as u64;
            let object = json!({"id": format!("o{m}"), "type": "task", "title": "benchmark", "n": m});
            let delta = json!({"op":"create","object":object,"subscriptions":[format!("blg:{app}:context:c1:task")],
                "application_id":app,"timestamp":ts,"version":1});
            let to: Vec<_> =
                (0..devices).map(|d| json!({"device_id": format!("d{d}"), "token": format!("tok{m}x{d}")})).collect();
            let msg = json!({"application_id":app,"object_id":format!("o{m}"),"version":1,"timestamp":ts,"devices":to,
                "message":{"new":[delta],"updated":[],"deleted":[]}});
            producer.send(&cfg.topic(topic), Some(format!("o{m}").as_bytes()), msg.to_string().as_bytes(), &[]).await?;
        }
        let started = Instant::now();
        let mut worker =
            tokio::process::Command::new(BIN).args(["-t", role, "-i", "0"]).envs(&env).kill_on_drop(true).spawn()?;
        let pid = worker.id().unwrap_or(0);
        let delivered = || if role == "ios_transport" { apns.delivered_len() } else { fcm.delivered_len() };
        // The first push marks the end of start-up (group join, applications loaded).
        while delivered() == 0 {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(120), "{role}: nothing delivered");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let first = Instant::now();
        let cpu_before = cpu_ticks(pid);
        while delivered() < total {
            anyhow::ensure!(first.elapsed() < Duration::from_secs(600), "{role}: {} of {total}", delivered());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = first.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0;
        println!(
            "{role}: {total} pushes ({messages} messages × {devices} devices) in {secs:.2} s after the first: \
             {:.0} pushes/s; worker CPU {cpu:.1} s ({:.0} % of one core); start-up to first push {:.1} s",
            total as f64 / secs,
            cpu / secs * 100.0,
            (first - started).as_secs_f64()
        );
        let _ = worker.kill().await;
    }
    Ok(())
}
