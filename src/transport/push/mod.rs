//! Push providers: APNs ([`apns`]) and FCM HTTP v1 ([`fcm`]), each a thin client of its own
//! (the `a2` crate cannot target a test endpoint and the `fcm` crate speaks the legacy API
//! Google shut down; see README), over one HTTP/2 client per base URL.
//!
//! A send ends in one [`Outcome`]; the role decides what to do with it: invalid tokens leave the
//! registry, retryable failures are retried with capped exponential backoff that honours
//! `Retry-After` (`model::retry::PUSH_SEND`), and [`Pacer`] keeps each application within its own rate so one app's quota
//! does not hold back another's sends.

pub mod apns;
pub mod endpoints;
pub mod fcm;
pub mod sign;

pub use endpoints::{check_endpoints, EndpointError};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use sha2::{Digest, Sha256};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// How one send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// The provider says the token will never work again: remove the device.
    InvalidToken(String),
    /// Throttled, provider error or connection failure: try again (after `after` if given).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The request itself is wrong (payload, credentials): retrying cannot help.
    Rejected(String),
}

/// `Retry-After` in seconds (the HTTP-date form is not used by APNs or FCM).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// A UUID-shaped id derived from `parts` (APNs `apns-id`): the same delivery always gets the
/// same id, so a retried push can be traced (and deduplicated) at the provider.
pub fn stable_uuid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// An HTTP client for one provider base URL: `http://` speaks HTTP/2 with prior knowledge
/// (local stand-ins), `https://` negotiates HTTP/2 over rustls with the Mozilla roots and, for
/// APNs certificate auth, a client certificate.
pub fn http_client(
    base: &str,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<reqwest::Client, String> {
    // reqwest is built without a default crypto provider; every client (even plain-http ones)
    // needs one installed for the process. Idempotent: an already installed one stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(600))
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_while_idle(true);
    let builder = if base.starts_with("http://") {
        builder.http2_prior_knowledge()
    } else {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots);
        let mut config = match client_auth {
            Some((chain, key)) => {
                config.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))?
            }
            None => config.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        builder.tls_backend_preconfigured(config)
    };
    builder.build().map_err(|e| format!("HTTP client for {base}: {e}"))
}

/// One provider client per application, built on first use and rebuilt when the application's
/// credentials change (an `app put` while running).
pub struct PerApp<Cr, C> {
    clients: Mutex<HashMap<String, (Cr, Arc<C>)>>,
}

impl<Cr: PartialEq + Clone, C> Default for PerApp<Cr, C> {
    fn default() -> Self {
        PerApp { clients: Mutex::default() }
    }
}

impl<Cr: PartialEq + Clone, C> PerApp<Cr, C> {
    pub fn get(&self, app: &str, creds: &Cr, build: impl FnOnce() -> Result<C, String>) -> Result<Arc<C>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = clients.get(app).filter(|(known, _)| known == creds) {
            return Ok(c.clone());
        }
        let client = Arc::new(build()?);
        clients.insert(app.to_owned(), (creds.clone(), client.clone()));
        Ok(client)
    }
}

/// Per-application token buckets: `rate` sends per second with a burst of one second's worth.
pub struct Pacer {
    rate: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Pacer {
    pub fn new(rate_per_sec: u64) -> Pacer {
        Pacer { rate: rate_per_sec.max(1) as f64, buckets: Mutex::default() }
    }

    /// Waits until `app` may send once more. Other applications are not affected.
    pub async fn acquire(&self, app: &str) {
        loop {
            let wait = {
                let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let (tokens, at) = buckets.entry(app.to_owned()).or_insert((self.rate, now));
                *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate);
                *at = now;
                if *tokens >= 1.0 {
                    *tokens -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - *tokens) / self.rate)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_stable_and_canonical() {
        let a = stable_uuid(&["app", "obj", "7", "dev"]);
        assert_eq!(a, stable_uuid(&["app", "obj", "7", "dev"]));
        assert_ne!(a, stable_uuid(&["app", "obj", "8", "dev"]));
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
    }

    #[tokio::test]
    async fn one_application_waiting_for_its_quota_does_not_hold_another() {
        let pacer = Pacer::new(20);
        for _ in 0..20 {
            pacer.acquire("a").await;
        }
        // `a` spent its burst: its next send waits for a token (1/20 s), `b` has its own bucket.
        let b_waits = tokio::time::timeout(Duration::from_millis(1), pacer.acquire("b")).await;
        assert!(b_waits.is_ok(), "b is not held by a's quota");
        let started = Instant::now();
        pacer.acquire("a").await;
        assert!(started.elapsed() >= Duration::from_millis(30), "a waits for its next token");
    }
}
