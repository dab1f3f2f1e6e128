//! What a harness (a crash test, `deploy/local/crash.sh`) needs from the tool beyond a
//! benchmark: start only once every worker reports ready, stop the load when the harness says
//! so, and write what was published so the store can be compared with it.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;

/// Polls every `/readyz` URL until each answers 200 (a role owns its partitions and caught
/// up), at most `bound`. Unready bodies are shown on failure: they name the missing condition.
pub async fn wait_ready(urls: &[String], bound: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let started = Instant::now();
    for url in urls {
        loop {
            let last = match client.get(url).send().await {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            anyhow::ensure!(started.elapsed() < bound, "{url} not ready after {bound:?}: {last}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("[load] {} workers ready after {:.1} s", urls.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// A token cancelled once stdin reaches its end: the harness closes the tool's stdin to end
/// the load phase (the tool then drains and reports as after `--duration`).
pub fn stop_on_stdin_eof() -> CancellationToken {
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        eprintln!("[load] stdin closed: ending the load");
        token.cancel();
    });
    stop
}

/// `{"application_id", "model", "objects": {id: {channel, score, version, deleted}}}`: the state
/// the store must hold once everything sent is applied.
pub fn write_published(path: &Path, app: &str, ledger: &Ledger) -> anyhow::Result<()> {
    let doc = json!({"application_id": app, "model": crate::plan::MODEL, "objects": ledger.objects});
    std::fs::write(path, serde_json::to_vec(&doc)?)?;
    Ok(())
}
