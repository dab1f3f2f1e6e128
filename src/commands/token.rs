//! `token --app A --device D [--user U] [--ttl SECONDS]`: mints a socket handshake token
//! (CONTRACT section 7) for development and tests, signed with the application's `jwt_secret`
//! (loaded from `system`), else `TP_JWT_SECRET`.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::WorkerError;
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
    let stop = CancellationToken::new();
    // A command, not a worker: give up on an unreachable Kafka instead of waiting for it.
    let loaded = tokio::time::timeout(LOAD_TIMEOUT, Apps::load_and_follow(cfg, "nexxus-token", stop.clone())).await;
    stop.cancel();
    let apps = loaded.map_err(|_| WorkerError::Io {
        context: format!("loading applications from Kafka ({})", cfg.kafka.brokers),
        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 30 s"),
    })?;
    let application = apps?.get(app).ok_or_else(|| {
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
