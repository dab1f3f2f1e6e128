//! Who a device is and what it may read: the checks the socket handshake and the HTTP snapshot
//! (`GET /objects`) share, so the two doors cannot drift apart.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::id::validate_ident;
use crate::model::{schema, Application, Channel};
use crate::transport::jwt::{self, Claims, JwtError};
use crate::workers::apps::Apps;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The key of an application's device tokens: its `jwt_secret`, else `fallback` (`TP_JWT_SECRET`).
pub fn secret_of(app: &Application, fallback: Option<&str>) -> Result<String, JwtError> {
    app.jwt_secret
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| fallback.map(str::to_owned))
        .ok_or_else(|| JwtError::NoSecret(app.id.clone()))
}

/// Verifies a device token against its application's key ([`secret_of`]).
pub fn verify_device(token: &str, apps: &Apps, fallback: Option<&str>) -> Result<Claims, JwtError> {
    jwt::verify(token, now_secs(), |app| {
        let application = apps.get(app).ok_or_else(|| JwtError::UnknownApplication(app.to_owned()))?;
        secret_of(&application, fallback)
    })
}

/// Why no token was minted: the caller's ids, or the application's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("{0}")]
    BadId(String),
    #[error("{0}")]
    NoSecret(String),
}

/// A device token for `device` (and `user`) of `app`, valid `ttl_secs` (development tokens:
/// `nexxus-worker token`, `POST /demo/token`). The ids must be usable in registry keys.
pub fn mint(
    app: &Application,
    fallback: Option<&str>,
    device: &str,
    user: Option<&str>,
    ttl_secs: u64,
) -> Result<String, MintError> {
    validate_ident("device_id", device).map_err(|e| MintError::BadId(e.to_string()))?;
    if let Some(user) = user {
        validate_ident("user_id", user).map_err(|e| MintError::BadId(e.to_string()))?;
    }
    let secret = secret_of(app, fallback).map_err(|e| MintError::NoSecret(e.to_string()))?;
    let claims = Claims {
        application_id: app.id.clone(),
        device_id: device.to_owned(),
        exp: now_secs().saturating_add(ttl_secs),
        user_id: user.map(str::to_owned),
    };
    Ok(jwt::sign(&claims, &secret))
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
