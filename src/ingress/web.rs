//! The demo page and the browser client (`web/`, compiled into the binary so a fresh machine
//! needs nothing else), and the development tokens the demo page asks for.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{error, Ingress};
use crate::transport::auth;

const INDEX_HTML: &str = include_str!("../../web/index.html");
const CLIENT_JS: &str = include_str!("../../web/client.js");

/// Lifetime of a demo token; the client asks for a new one when the socket says it expired.
const DEMO_TOKEN_SECS: u64 = 3600;

pub async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(INDEX_HTML)).into_response()
}

pub async fn client_js() -> Response {
    let headers = [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")];
    (headers, CLIENT_JS).into_response()
}

/// Mints a device token for `TP_DEMO_APP` (404 when unset) for a fresh anonymous device and
/// user the server picks: a caller can neither choose whose channels it reads nor reuse another
/// device's registry entries. It is an event route: with `TP_INGRESS_TOKEN` set it needs that
/// token, and without it the ingress only runs on loopback (or by the development switch).
/// `ws_url` uses the host the page was loaded from.
pub async fn demo_token(State(ingress): State<Arc<Ingress>>, headers: HeaderMap) -> Response {
    let cfg = &ingress.config;
    let Some(app_id) = &cfg.ingress.demo_app else {
        return error(StatusCode::NOT_FOUND, "no demo application (TP_DEMO_APP is not set)");
    };
    if let Err(refused) = ingress.authorize_events(&headers) {
        return refused.into_response();
    }
    let backend = match ingress.backend() {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    let Some(app) = backend.apps.get(app_id) else {
        return error(StatusCode::SERVICE_UNAVAILABLE, &format!("demo application `{app_id}` is not registered yet"));
    };
    let Some(suffix) = random_suffix() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no randomness available for an anonymous id");
    };
    let (device_id, user_id) = (format!("demo-{suffix}"), format!("anon-{suffix}"));
    let token = match auth::mint(&app, cfg.jwt_secret.as_deref(), &device_id, Some(&user_id), DEMO_TOKEN_SECS) {
        Ok(t) => t,
        Err(e @ auth::MintError::BadId(_)) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        Err(e @ auth::MintError::NoSecret(_)) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let scheme = if cfg.sockets.ssl { "wss" } else { "ws" };
    let ws_url = format!("{scheme}://{}:{}/", request_host(&headers), cfg.sockets.port);
    Json(json!({
        "token": token,
        "application_id": app_id,
        "device_id": device_id,
        "user_id": user_id,
        "ws_url": ws_url,
        "expires_in": DEMO_TOKEN_SECS,
    }))
    .into_response()
}

/// 128 random bits as hex: ids nobody can guess or choose.
fn random_suffix() -> Option<String> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The host name of the request's `Host` header, without its port (IPv6 in brackets).
fn request_host(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
    let name = super::guard::host_name(host);
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-.[]:".contains(c));
    if valid {
        name.to_string()
    } else {
        "127.0.0.1".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_host_follows_the_page_host() {
        let mut h = HeaderMap::new();
        assert_eq!(request_host(&h), "127.0.0.1");
        h.insert(header::HOST, "example.test:8080".parse().unwrap());
        assert_eq!(request_host(&h), "example.test");
        h.insert(header::HOST, "[::1]:8080".parse().unwrap());
        assert_eq!(request_host(&h), "[::1]");
        h.insert(header::HOST, "evil\"host".parse().unwrap());
        assert_eq!(request_host(&h), "127.0.0.1");
    }
}
