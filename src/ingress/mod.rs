//! The HTTP ingress: the API's stand-in for `-t all` (and, with `TP_INGRESS=true`, beside any
//! role), on the process's HTTP port (CONTRACT section 9).
//!
//! | route | what |
//! |---|---|
//! | `POST /events` | one AggregatorMessage or an array → `aggregation` ([`events`]) |
//! | `POST /track` | one track command or an array → `track` ([`events`]) |
//! | `POST /broadcast` | one ephemeral object or an array → `transport_manager`, never stored ([`events`], `model::broadcast`) |
//! | `GET /dead_letter` | the newest dead letters of the in-process queue ([`events`]) |
//! | `PUT /apps/{id}` | store an application and announce it ([`apps`]) |
//! | `GET /objects?channel=` | a snapshot of a channel's objects, for a device token ([`apps`]) |
//! | `POST /demo/token` | a development token for `TP_DEMO_APP` ([`web`]) |
//! | `GET /`, `GET /client.js` | the demo page and the browser client ([`web`]) |
//!
//! Event routes need `Authorization: Bearer $TP_INGRESS_TOKEN`, operator routes (`PUT /apps`,
//! `GET /dead_letter`) `Bearer $TP_ADMIN_TOKEN`, when set; the configuration refuses to start an
//! ingress reachable from other hosts without both (CONTRACT section 9). Every route also passes
//! [`guard`] (origin, host, JSON bodies, requests in process) and is bounded in time
//! (`TP_HTTP_REQUEST_TIMEOUT_MS`, 408) and size (`TP_INGRESS_MAX_BYTES`, 413). Until the process
//! has connected its queue and store, the routes answer 503, so the HTTP port (and `/healthz`)
//! can be up from the first moment.

pub mod apps;
pub mod events;
pub mod guard;
pub mod publish;
pub mod web;

use std::sync::{Arc, OnceLock};

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutLayer;

use crate::apps::Apps;
use crate::config::Config;
use crate::queue::outbox::Sink;
use crate::store::MainStore;

/// What the routes need once the process is connected.
pub struct Backend {
    /// The plain producer (`PUT /apps` announces with it; `GET /dead_letter` reads its queue).
    pub sink: Sink,
    /// Produces each event request all or nothing ([`publish`]).
    pub publisher: publish::Publisher,
    pub apps: Apps,
    /// `PUT /apps` and `GET /objects` need the main store; without one they answer 503.
    pub store: Option<MainStore>,
}

/// The ingress of one process: its configuration now, its backend once connected.
pub struct Ingress {
    config: Arc<Config>,
    backend: OnceLock<Backend>,
}

impl Ingress {
    pub fn new(config: Arc<Config>) -> Arc<Ingress> {
        Arc::new(Ingress { config, backend: OnceLock::new() })
    }

    /// Makes the routes live. A second call is ignored.
    pub fn set_backend(&self, backend: Backend) {
        let _ = self.backend.set(backend);
    }

    fn backend(&self) -> Result<&Backend, Refused> {
        self.backend.get().ok_or(Refused(StatusCode::SERVICE_UNAVAILABLE, "starting: not connected yet"))
    }

    /// Event routes: `Authorization: Bearer <TP_INGRESS_TOKEN>` when it is set.
    fn authorize_events(&self, headers: &HeaderMap) -> Result<(), Refused> {
        check_bearer(headers, self.config.ingress.token.as_deref(), "Authorization: Bearer <TP_INGRESS_TOKEN> required")
    }

    /// Operator routes: `Authorization: Bearer <TP_ADMIN_TOKEN>` when it is set; the event
    /// token never opens them.
    fn authorize_admin(&self, headers: &HeaderMap) -> Result<(), Refused> {
        check_bearer(
            headers,
            self.config.ingress.admin_token.as_deref(),
            "Authorization: Bearer <TP_ADMIN_TOKEN> required",
        )
    }

    /// Without any token (only allowed on a loopback listener, or by the development switch).
    pub fn is_open(&self) -> bool {
        self.config.ingress.token.is_none() || self.config.ingress.admin_token.is_none()
    }
}

/// The bearer token against `expected`, compared in constant time; open when `expected` is unset.
fn check_bearer(headers: &HeaderMap, expected: Option<&str>, missing: &'static str) -> Result<(), Refused> {
    let Some(expected) = expected else { return Ok(()) };
    match bearer(headers) {
        Some(given) if same_secret(given, expected) => Ok(()),
        Some(_) => Err(Refused(StatusCode::UNAUTHORIZED, "wrong bearer token")),
        None => Err(Refused(StatusCode::UNAUTHORIZED, missing)),
    }
}

/// A request turned away before any work: the status and a fixed reason.
pub struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

/// The ingress routes, to merge into the process's HTTP router. Layers run outside in: CORS
/// (answers an allowed origin's preflight), then the time bound, then the in-process bound,
/// then [`guard::check_request`], then the body limit and the route.
pub fn router(ingress: Arc<Ingress>) -> Router {
    let cfg = &ingress.config;
    let limit = cfg.ingress.max_bytes;
    let in_flight = guard::InFlight::new(cfg.http_limits.concurrency);
    let timeout = TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, cfg.http_limits.request_timeout);
    Router::new()
        .route("/events", post(events::post_events))
        .route("/track", post(events::post_track))
        .route("/broadcast", post(events::post_broadcast))
        .route("/dead_letter", get(events::get_dead_letters))
        .route("/apps/{id}", put(apps::put_app))
        .route("/objects", get(apps::get_objects))
        .route("/demo/token", post(web::demo_token))
        .route("/", get(web::index))
        .route("/client.js", get(web::client_js))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(ingress.clone(), guard::check_request))
        .layer(middleware::from_fn_with_state(in_flight, guard::limit_in_flight))
        .layer(timeout)
        .layer(cors(&cfg.ingress.allowed_origins))
        .with_state(ingress)
}

/// Preflight answers and CORS headers for the configured origins only; none configured, no
/// browser of another site gets through (the guard refuses a foreign `Origin` as well, since
/// CORS alone only hides answers from pages, it does not stop the request).
fn cors(origins: &[String]) -> CorsLayer {
    let allowed: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

/// `{"error": reason}` with `status`.
pub fn error(status: StatusCode, reason: &str) -> Response {
    (status, Json(serde_json::json!({ "error": reason }))).into_response()
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares digests, so the time taken says nothing about how much of the secret matched.
pub(crate) fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_and_compared() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer  s3cret ".parse().unwrap());
        assert_eq!(bearer(&h), Some("s3cret"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        assert!(same_secret("a", "a"));
        assert!(!same_secret("a", "b"));
        assert!(!same_secret("", "a"));
    }
}
