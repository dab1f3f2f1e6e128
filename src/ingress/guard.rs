//! What every ingress request passes before a handler runs: where it comes from (browsers of
//! other sites, DNS rebinding), what it carries (`application/json` only), and how many are in
//! process at once. The bearer tokens are checked by [`super::Ingress`], per route family.
//!
//! Why each rule: a browser sends a `text/plain` POST to any site without asking (a "simple"
//! request), so an open ingress reachable from a browser was writable by every web page the
//! operator visited; requiring `application/json` forces the browser's CORS preflight, which
//! only a configured origin passes. A page served by a name that resolves to 127.0.0.1 (DNS
//! rebinding) is same-origin with itself, so an ingress running without tokens also refuses
//! any `Host` that is not a loopback name.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

use super::{error, Ingress};
use crate::config::is_loopback_host;
use crate::telemetry;

/// Requests of the ingress in process at once (`TP_HTTP_CONCURRENCY`); beyond, 503 with
/// `Retry-After` rather than a queue that grows with the attacker's patience.
#[derive(Clone)]
pub struct InFlight(Arc<Semaphore>);

impl InFlight {
    pub fn new(limit: usize) -> InFlight {
        InFlight(Arc::new(Semaphore::new(limit)))
    }
}

pub async fn limit_in_flight(State(in_flight): State<InFlight>, request: Request, next: Next) -> Response {
    let Ok(_permit) = in_flight.0.clone().try_acquire_owned() else {
        telemetry::ingress_refused("busy");
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "too many requests in process; retry shortly");
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

/// Origin, Host and Content-Type rules of every ingress route.
pub async fn check_request(State(ingress): State<Arc<Ingress>>, request: Request, next: Next) -> Response {
    if let Err((status, reason)) = check(&ingress, request.method(), request.headers()) {
        telemetry::ingress_refused(refusal_label(status));
        return error(status, reason);
    }
    next.run(request).await
}

fn refusal_label(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "content_type",
        StatusCode::MISDIRECTED_REQUEST => "host",
        _ => "origin",
    }
}

fn check(ingress: &Ingress, method: &Method, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let cfg = &ingress.config.ingress;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if ingress.is_open() && !is_loopback_host(host_name(host)) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            "this ingress runs without tokens and answers loopback names only",
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        let same_site = ["http://", "https://"].iter().any(|s| origin.strip_prefix(s) == Some(host));
        if !same_site && !cfg.allowed_origins.iter().any(|o| o == origin) {
            return Err((
                StatusCode::FORBIDDEN,
                "cross-origin request from an origin not in TP_INGRESS_ALLOWED_ORIGINS",
            ));
        }
    }
    if matches!(*method, Method::POST | Method::PUT) && !is_json(headers) {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type: application/json required"));
    }
    Ok(())
}

/// An operator route outside the ingress (the supervisor's `/drain`, `/resume`, `/recycle`):
/// `Bearer $TP_ADMIN_TOKEN` when one is set; without one, only on a loopback listener; never
/// from a browser page of another site (a bodiless cross-site POST needs no preflight).
pub fn check_operator(
    headers: &HeaderMap,
    admin_token: Option<&str>,
    listener_host: &str,
) -> Result<(), (StatusCode, &'static str)> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !["http://", "https://"].iter().any(|s| origin.strip_prefix(s) == Some(host)) {
            return Err((StatusCode::FORBIDDEN, "cross-origin request to an operator route"));
        }
    }
    match admin_token {
        Some(expected) => match super::bearer(headers) {
            Some(given) if super::same_secret(given, expected) => Ok(()),
            _ => Err((StatusCode::UNAUTHORIZED, "Authorization: Bearer <TP_ADMIN_TOKEN> required")),
        },
        None if is_loopback_host(listener_host) && is_loopback_host(host_name(host)) => Ok(()),
        None => Err((StatusCode::FORBIDDEN, "set TP_ADMIN_TOKEN to use operator routes on a non-loopback listener")),
    }
}

/// `application/json`, with parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// The host of a `Host` header, without its port (IPv6 keeps its brackets).
pub fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(host, |(ip, _)| &host[..ip.len() + 2]),
        None => host.split(':').next().unwrap_or(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_and_host_names() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(!is_json(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jsonx"));
        assert!(!is_json(&h));
        assert_eq!(host_name("localhost:8080"), "localhost");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert!(is_loopback_host(host_name("[::1]:8080")));
        assert!(!is_loopback_host(host_name("evil.example:8080")));
    }

    #[test]
    fn operator_routes_need_the_admin_token_or_loopback() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9000"));
        assert!(check_operator(&h, None, "127.0.0.1").is_ok());
        assert_eq!(check_operator(&h, None, "0.0.0.0").unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(check_operator(&h, Some("t"), "0.0.0.0").unwrap_err().0, StatusCode::UNAUTHORIZED);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        assert!(check_operator(&h, Some("t"), "0.0.0.0").is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(check_operator(&h, Some("t"), "0.0.0.0").unwrap_err().0, StatusCode::FORBIDDEN);
        // A rebound name on a loopback listener is not loopback.
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("rebound.example:9000"));
        assert_eq!(check_operator(&h, None, "127.0.0.1").unwrap_err().0, StatusCode::FORBIDDEN);
    }
}
