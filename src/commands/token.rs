//! `token --app A --device D [--user U] [--ttl SECONDS]`: mints a socket handshake token
//! (CONTRACT section 7) for development and tests, signed with the application's `jwt_secret`
//! as the main store (`TP_MAIN_DB`) has it, else `TP_JWT_SECRET`. `app put`, the ingress's
//! `PUT /apps` and `-t all` all store applications there.

use crate::apps::Unknown;
use crate::config::Config;
use crate::error::WorkerError;
use crate::store::{MainStore, Store};
use crate::transport::auth;

pub async fn mint(
    cfg: &Config,
    app: &str,
    device: &str,
    user: Option<&str>,
    ttl_secs: u64,
) -> Result<String, WorkerError> {
    let store = MainStore::connect(cfg).await.map_err(|e| WorkerError::Fatal(format!("main store: {e}")))?;
    let application = store
        .get_application(app)
        .await
        .map_err(|e| WorkerError::Fatal(format!("reading application `{app}`: {e}")))?
        .ok_or_else(|| {
            let unknown = Unknown::Application(app.to_owned());
            WorkerError::Usage(format!("{unknown} (register it with `nexxus-worker app put`)"))
        })?;
    auth::mint(&application, cfg.jwt_secret.as_deref(), device, user, ttl_secs)
        .map_err(|e| WorkerError::Usage(e.to_string()))
}
