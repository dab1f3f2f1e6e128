//! A custom worker between two stages (docs/custom-workers.md): the writer sends its change
//! events to `enrich` (`TP_WRITE_OUTPUT`), `nexxus-enrich-example` (a program outside
//! nexxus-worker that knows the records only by their JSON) adds a field and produces them to
//! `transport_manager`, and a WebSocket client receives the enriched object. Real Kafka.

mod common;

use std::process::{Command, Stdio};

use common::all::*;
use serde_json::json;

const EXAMPLE: &str = env!("CARGO_BIN_EXE_nexxus-enrich-example");

#[tokio::test]
async fn a_worker_outside_the_binary_enriches_changes_between_the_writer_and_the_transport_manager() {
    let prefix = common::unique_prefix("custom");
    let mut env = common::env_for(&prefix);
    env.insert("TP_WRITE_OUTPUT".into(), "enrich".into());
    env.insert("TP_MAIN_DB".into(), "sqlite".into());
    let applied = Command::new(common::BIN).args(["topics", "apply"]).env_clear().envs(&env).output().unwrap();
    assert!(applied.status.success(), "topics apply: {}", String::from_utf8_lossy(&applied.stderr));
    common::create_topics(&common::config(&prefix), &[("enrich", 3)]).await;

    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("enrich.log")).unwrap();
    let worker = Command::new(EXAMPLE).env_clear().envs(&env).stderr(log).stdout(Stdio::null()).spawn().unwrap();
    let mut worker = common::Reaper(worker);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = start(dir.path(), None, &pairs).await;

    let app = unique_app("enrich");
    assert_eq!(p.request("PUT", &format!("/apps/{app}"), &[], &app_doc(&app)).0, 200);
    let mut c = ready_client(&p, &app, "d1").await;
    assert_eq!(c.subscribe(list_channel(), None).await["event"], "subscribed");
    let frame = post_until_delivered(&p, &mut c, &json!([create(&app, Some("e1"), "three little words")])).await;
    let object = &frame["data"]["new"][0]["object"];
    assert_eq!((&object["id"], &object["title_words"]), (&json!("e1"), &json!(3)), "{frame}");

    // Updates flow through it too, in order, keyed by object.
    assert_eq!(p.post("/events", &increment(&app, "e1")).0, 202);
    let got = deltas(&mut c, 1).await;
    assert_eq!(got, vec![("updated".into(), "e1".into(), 2, serde_json::Value::Null)]);

    assert_eq!(p.stop(), Some(0));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker.0.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let status = worker.0.wait().unwrap();
    let worker_log = std::fs::read_to_string(dir.path().join("enrich.log")).unwrap_or_default();
    assert!(status.success(), "the example worker stops cleanly on SIGTERM: {worker_log}");
}
