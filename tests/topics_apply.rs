//! `topics apply` against the real broker: creates everything, is idempotent, reports drift and
//! fixes what can be fixed.

mod common;

use std::path::Path;

use nexxus_worker::queue::topics::{self, Report};

#[tokio::test(flavor = "multi_thread")]
async fn creates_then_is_idempotent_then_reports_and_fixes_drift() {
    let prefix = common::unique_prefix("topics");
    let cfg = common::config(&prefix);
    let files = topics::load(None).unwrap();

    let first = topics::apply(&cfg, &files, false).await.unwrap();
    assert!(first.len() >= 13, "{first:?}");
    assert!(first.iter().all(|r| matches!(r, Report::Created(_))), "{first:?}");
    assert!(first.contains(&Report::Created(format!("{prefix}sockets_transport-3"))));

    let second = topics::apply(&cfg, &files, false).await.unwrap();
    assert!(second.iter().all(|r| matches!(r, Report::Unchanged(_))), "second run changed something: {second:?}");

    // Declare more partitions and a different retention for `write`.
    let mut changed = files.clone();
    let write = changed.iter_mut().find(|f| f.name == "write").unwrap();
    write.partitions += 2;
    write.retention_ms = 1_000_000;
    let drift = topics::apply(&cfg, &changed, false).await.unwrap();
    let Some(Report::Drift { what, .. }) =
        drift.iter().find(|r| matches!(r, Report::Drift { topic, .. } if *topic == format!("{prefix}write")))
    else {
        panic!("no drift reported for write: {drift:?}");
    };
    assert!(what.iter().any(|w| w.starts_with("partitions 12 < declared 14")), "{what:?}");
    assert!(what.iter().any(|w| w == "retention.ms=604800000 (declared 1000000)"), "{what:?}");
    assert_eq!(drift.iter().filter(|r| matches!(r, Report::Drift { .. })).count(), 1, "{drift:?}");

    let fixed = topics::apply(&cfg, &changed, true).await.unwrap();
    assert!(
        fixed.iter().any(|r| matches!(r, Report::Fixed { topic, .. } if *topic == format!("{prefix}write"))),
        "{fixed:?}"
    );
    // Metadata and configs propagate asynchronously on the broker.
    let mut settled = Vec::new();
    for _ in 0..50 {
        settled = topics::apply(&cfg, &changed, false).await.unwrap();
        if settled.iter().all(|r| matches!(r, Report::Unchanged(_))) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(settled.iter().all(|r| matches!(r, Report::Unchanged(_))), "after --fix: {settled:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_applies_the_repository_files() {
    let prefix = common::unique_prefix("topicsbin");
    let run = || {
        std::process::Command::new(common::BIN)
            .args(["topics", "apply", "--dir"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("topics"))
            .env_clear()
            .envs(common::env_for(&prefix))
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("created   {prefix}aggregation")), "{stdout}");
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.lines().all(|l| l.starts_with("ok ")), "{stdout}");
}
