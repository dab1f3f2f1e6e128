//! Who a device is and what it may read: the checks the socket handshake and the HTTP snapshot
//! (`GET /objects`) share, so the two doors cannot drift apart.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::{schema, Channel};
use crate::transport::jwt::{self, Claims, JwtError};
use crate::workers::apps::Apps;

/// Verifies a device token against its application's `jwt_secret`, else `fallback`
/// (`TP_JWT_SECRET`).
pub fn verify_device(token: &str, apps: &Apps, fallback: Option<&str>) -> Result<Claims, JwtError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    jwt::verify(token, now, |app| {
        let application = apps.get(app).ok_or_else(|| JwtError::UnknownApplication(app.to_owned()))?;
        application
            .jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| fallback.map(str::to_owned))
            .ok_or_else(|| JwtError::NoSecret(app.to_owned()))
    })
}

/// Why a channel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another application's or another user's channel.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A channel of a model the application does not have.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
}

/// A device may read its own application's channels, user-scoped ones only for its own user,
/// and only of models its application defines (or the built-in `user` and `context`).
pub fn authorize_channel(
    claims: &Claims,
    apps: &Apps,
    channel: &Channel,
    application_id: Option<&str>,
) -> Result<(), Refusal> {
    let app = &claims.application_id;
    if application_id.is_some_and(|a| a != app) {
        return Err(Refusal::Forbidden("another application's channel"));
    }
    if channel.user.as_ref().is_some_and(|u| Some(u) != claims.user_id.as_ref()) {
        return Err(Refusal::Forbidden("another user's channel"));
    }
    let known = schema::is_builtin(&channel.model) || apps.get(app).is_some_and(|a| a.model(&channel.model).is_some());
    if !known {
        return Err(Refusal::UnknownModel(channel.model.clone()));
    }
    Ok(())
}
