//! `token --app A --device D [--user U] [--ttl SECONDS]`: mints a socket handshake token
//! (CONTRACT section 7) for development and tests, signed with the application's `jwt_secret`
//! (loaded from `system`, or from the SQLite file with `TP_MAIN_DB=sqlite`, which is where a
//! `-t all` without Kafka keeps it), else `TP_JWT_SECRET`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreKind};
use crate::error::WorkerError;
use crate::model::Application;
use crate::store::{MainStore, Store};
use crate::transport::jwt::{self, Claims};
use crate::workers::apps::Apps;

const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn mint(
    cfg: &Config,
    app: &str,
    device: &str,
    user: Option<&str>,
    ttl_secs: u64,
) -> Result<String, WorkerError> {
    if device.is_empty() || device.contains('|') {
        return Err(WorkerError::Usage(format!("--device `{device}`: empty or contains `|`")));
    }
    let application = match cfg.main_db {
        StoreKind::Sqlite => from_sqlite(cfg, app).await?,
        StoreKind::Scylla => from_system(cfg, app).await?,
    }
    .ok_or_else(|| {
        WorkerError::Usage(format!("unknown application `{app}` (register it with `nexxus-worker app put`)"))
    })?;
    let secret =
        application.jwt_secret.clone().filter(|s| !s.is_empty()).or_else(|| cfg.jwt_secret.clone()).ok_or_else(
            || WorkerError::Usage(format!("application `{app}` has no jwt_secret and TP_JWT_SECRET is not set")),
        )?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = Claims {
        application_id: app.to_owned(),
        device_id: device.to_owned(),
        exp: now.saturating_add(ttl_secs),
        user_id: user.map(str::to_owned),
    };
    Ok(jwt::sign(&claims, &secret))
}

async fn from_system(cfg: &Config, app: &str) -> Result<Option<Arc<Application>>, WorkerError> {
    let stop = CancellationToken::new();
    // A command, not a worker: give up on an unreachable Kafka instead of waiting for it.
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, Apps::load_and_follow(cfg, "nexxus-token", stop.clone())).await;
    stop.cancel();
    let apps = loaded.map_err(|_| WorkerError::Io {
        context: format!("loading applications from Kafka ({})", cfg.kafka.brokers),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s"),
    })?;
    Ok(apps?.get(app))
}

async fn from_sqlite(cfg: &Config, app: &str) -> Result<Option<Arc<Application>>, WorkerError> {
    let path = &cfg.sqlite_path;
    if !path.exists() {
        return Err(WorkerError::Usage(format!("TP_SQLITE_PATH {}: no such file", path.display())));
    }
    let store = MainStore::open_sqlite(path)
        .await
        .map_err(|e| WorkerError::Usage(format!("TP_SQLITE_PATH {}: {e}", path.display())))?;
    let found = store.get_application(app).await.map_err(|e| WorkerError::Fatal(format!("reading {app}: {e}")))?;
    Ok(found.map(Arc::new))
}
