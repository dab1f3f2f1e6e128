//! Who a device is and what it may read: the checks the socket handshake and the HTTP snapshot
//! (`GET /objects`) share, so the two doors cannot drift apart.

use std::time::Duration;

use crate::apps::Apps;
use crate::model::acl::{authored_channel, read_access, ReadAccess};
use crate::model::id::validate_ident;
use crate::model::{clock, Application, Channel, ModelError};
use crate::transport::jwt::{self, Claims, Clock, Invalid, JwtError};

/// The key of an application's device tokens: its `jwt_secret`, else `fallback` (`TP_JWT_SECRET`).
pub fn secret_of(app: &Application, fallback: Option<&str>) -> Option<String> {
    app.jwt_secret.clone().filter(|s| !s.is_empty()).or_else(|| fallback.map(str::to_owned))
}

/// Verifies a device token against its application's key ([`secret_of`]), now, with tokens
/// living at most `max_lifetime` (`TP_JWT_MAX_LIFETIME_SECS`). The error's `Display` is the
/// same for every invalid token (its reason is for logs); an expired one says so.
pub fn verify_device(
    token: &str,
    apps: &Apps,
    fallback: Option<&str>,
    max_lifetime: Duration,
) -> Result<Claims, JwtError> {
    let clock = Clock { now: clock::now_secs(), max_lifetime: max_lifetime.as_secs() };
    jwt::verify(token, clock, |app| {
        let application = apps.get(app).ok_or(Invalid::UnknownApplication)?;
        secret_of(&application, fallback).ok_or(Invalid::NoSecret)
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
    let secret = secret_of(app, fallback).ok_or_else(|| {
        MintError::NoSecret(format!("application `{}` has no jwt_secret and TP_JWT_SECRET is not set", app.id))
    })?;
    let claims = Claims {
        application_id: app.id.clone(),
        device_id: device.to_owned(),
        exp: clock::now_secs().saturating_add(ttl_secs),
        user_id: user.map(str::to_owned),
    };
    Ok(jwt::sign(&claims, &secret))
}

/// Why a channel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another application's or another user's channel, or one the model's `read_acl` does not
    /// let this device read (FORBIDDEN, 403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// A channel that does not fit the application's schema: an undeclared model, or a parent
    /// the model does not `belongsTo` (BAD_REQUEST, 400). The text is the reason.
    #[error("{0}")]
    UnknownModel(String),
}

/// The one door for reading a channel, shared by the socket's `subscribe` and `GET /objects`:
///
/// 1. the channel is of the token's application, and a user-scoped one of the token's user;
/// 2. it fits the application's schema ([`Channel::check_models`]: a declared model or the
///    built-in `user`/`context`, and a declared parent);
/// 3. the model's `read_acl` lets this device read it ([`read_access`]): all of it, or for
///    author-only models (and the built-in `user`) only channels that hold the device's own
///    user's objects ([`authored_channel`]).
pub fn authorize_channel(
    claims: &Claims,
    apps: &Apps,
    channel: &Channel,
    application_id: Option<&str>,
) -> Result<(), Refusal> {
    let app_id = &claims.application_id;
    if application_id.is_some_and(|a| a != app_id) {
        return Err(Refusal::Forbidden("another application's channel"));
    }
    let user = claims.user_id.as_deref();
    if channel.user.as_deref().is_some_and(|u| Some(u) != user) {
        return Err(Refusal::Forbidden("another user's channel"));
    }
    let Some(app) = apps.get(app_id) else {
        return Err(Refusal::Forbidden("the token's application is not loaded"));
    };
    channel.check_models(&app).map_err(|e| match e {
        ModelError::UnknownModel { model } => Refusal::UnknownModel(format!("unknown model `{model}`")),
        other => Refusal::UnknownModel(other.to_string()),
    })?;
    match read_access(&app.schema, &channel.model, user.is_some()) {
        ReadAccess::All => Ok(()),
        ReadAccess::Authored if user.is_some_and(|u| authored_channel(channel, u)) => Ok(()),
        ReadAccess::Authored if channel.model == "user" => Err(Refusal::Forbidden(
            "a user object is readable by its own user only: {\"model\":\"user\",\"id\":<your user_id>}",
        )),
        ReadAccess::Authored => Err(Refusal::Forbidden(
            "this model is readable by its authors only: subscribe with your own `user` and a `context` or `parent`",
        )),
        ReadAccess::Nothing if read_access(&app.schema, &channel.model, true) != ReadAccess::Nothing => {
            Err(Refusal::Forbidden("this model is readable by authenticated users only (a token with a user_id)"))
        }
        ReadAccess::Nothing => Err(Refusal::Forbidden("this model is not readable by devices")),
    }
}
