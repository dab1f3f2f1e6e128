//! APNs over HTTP/2 (`POST {base}/3/device/{token}`), per application: token auth (ES256 JWT
//! from the .p8 key, cached and renewed after 50 minutes, Apple accepts up to 60) or certificate
//! auth (client certificate), production or sandbox.
//!
//! Headers are set deliberately: `apns-push-type` `background` with `apns-priority` 5 for the
//! silent data pushes (Apple throttles priority-10 background pushes) and `alert` with 10 for
//! `ios_push_field` alerts; `apns-expiration` one day ahead (a device offline longer re-fetches
//! instead); `apns-id` derived from application, object, version, part and token, so a retried
//! push keeps its id; `apns-collapse-id` on `sync` pushes, where a newer one supersedes an older
//! one, and on alerts, derived like `apns-id` but without the token, so an alert pushed twice
//! (a replay that crossed a restart of `ios_transport`) shows once; never on silent deltas,
//! where it changes nothing (a background push is not displayed) and each carries different
//! changes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::sign::SigningKey;
use super::{http_client, retry_after, stable_uuid, Outcome, PerApp};
use crate::model::delivery::{push_alert, split_push, PushPayload, DEFAULT_PUSH_LIMIT};
use crate::model::schema::ApnCredentials;
use crate::model::{clock, Application, TransportMessage};

const PRODUCTION: &str = "https://api.push.apple.com";
const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// A provider token is renewed after this long (Apple refuses tokens older than an hour and
/// asks for no more than one new token per 20 minutes).
const JWT_RENEW_AFTER: Duration = Duration::from_secs(50 * 60);
/// `{"aps":{"content-available":1},` wrapped around a data payload.
const APS_ENVELOPE: usize = 31;
/// Longest device token sent (Apple's are 64 hex digits today; it reserves the right to grow
/// them, so this is generous).
const MAX_DEVICE_TOKEN: usize = 400;

/// Whether `token` can be an APNs device token. It becomes a path segment of the request, so
/// a client-registered `../`, `?` or `#` would otherwise send the push somewhere else on the
/// host; such a token can never be delivered, and counts as invalid.
fn device_token_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_DEVICE_TOKEN
        && token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// One notification for every recipient of a transport message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApnsPush {
    pub body: String,
    pub alert: bool,
    /// Per-message part of `apns-id` (the token is added per device).
    pub id_seed: String,
    pub collapse_id: Option<String>,
}

/// The pushes of one transport message: its deltas split into silent pushes that fit APNs'
/// 4 KB (what cannot fit becomes `{"sync":[channels]}`), plus a visible alert per create of a
/// model with an `ios_push_field`.
pub fn payloads(msg: &TransportMessage, app: &Application) -> Vec<ApnsPush> {
    let seed = |part: &str| format!("{}|{}|{}|{part}", msg.application_id, msg.object_id, msg.version);
    let mut out = Vec::new();
    for (i, payload) in split_push(&msg.message, DEFAULT_PUSH_LIMIT - APS_ENVELOPE).into_iter().enumerate() {
        let mut body = Map::new();
        body.insert("aps".into(), json!({"content-available": 1}));
        let sync = matches!(payload, PushPayload::Sync { .. });
        if let Ok(Value::Object(fields)) = serde_json::to_value(&payload) {
            body.extend(fields);
        }
        out.push(ApnsPush {
            body: Value::Object(body).to_string(),
            alert: false,
            id_seed: seed(&format!("d{i}")),
            collapse_id: sync.then(|| "nexxus-sync".to_string()),
        });
    }
    for (i, delta) in msg.message.new.iter().enumerate() {
        let model = delta.object.as_ref().and_then(|o| o.get("type")).and_then(Value::as_str).unwrap_or_default();
        if let Some(text) = push_alert(&app.schema, model, delta) {
            let text: String = text.chars().take(1000).collect();
            let body = json!({"aps": {"alert": text, "sound": "default"}, "model": model, "id": msg.object_id});
            let id_seed = seed(&format!("a{i}"));
            out.push(ApnsPush {
                body: body.to_string(),
                alert: true,
                // A UUID is 36 bytes: within Apple's 64.
                collapse_id: Some(stable_uuid(&[&id_seed])),
                id_seed,
            });
        }
    }
    out
}

enum Auth {
    Token { key: Box<SigningKey>, key_id: String, team_id: String, cached: Mutex<Option<(String, Instant)>> },
    Certificate,
}

struct AppClient {
    topic: String,
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

impl AppClient {
    fn new(creds: &ApnCredentials, global: Option<&str>) -> Result<AppClient, String> {
        let default = if creds.production { PRODUCTION } else { SANDBOX };
        let base = global.unwrap_or(default).trim_end_matches('/').to_string();
        let (auth, client_auth) = match (&creds.key, &creds.key_id, &creds.team_id) {
            (Some(key), Some(key_id), Some(team_id)) => {
                let key = Box::new(SigningKey::es256(key).map_err(|e| format!("apn.key: {e}"))?);
                let auth =
                    Auth::Token { key, key_id: key_id.clone(), team_id: team_id.clone(), cached: Mutex::default() };
                (auth, None)
            }
            _ => {
                let (Some(cert), Some(key)) = (&creds.certificate, &creds.private_key) else {
                    return Err("apn needs key+key_id+team_id or certificate+private_key".into());
                };
                let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("apn.certificate: {e}"))?;
                let key = crate::transport::tls::decode_private_key(
                    key.as_bytes(),
                    creds.passphrase.as_deref(),
                    "apn.passphrase",
                )
                .map_err(|e| format!("apn.private_key: {e}"))?;
                (Auth::Certificate, Some((chain, key)))
            }
        };
        let http = http_client(&base, client_auth)?;
        Ok(AppClient { topic: creds.topic.clone(), http, base, auth })
    }

    fn bearer(&self, renew: bool) -> Result<Option<String>, String> {
        let Auth::Token { key, key_id, team_id, cached } = &self.auth else { return Ok(None) };
        let mut cached = cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((jwt, at)) = cached.as_ref() {
            if !renew && at.elapsed() < JWT_RENEW_AFTER {
                return Ok(Some(jwt.clone()));
            }
        }
        let iat = clock::now_secs();
        let jwt = key.sign(Some(key_id), &json!({"iss": team_id, "iat": iat}))?;
        *cached = Some((jwt.clone(), Instant::now()));
        Ok(Some(jwt))
    }
}

/// The APNs side of `ios_transport`: one client per application, rebuilt when its credentials
/// change.
pub struct Apns {
    global_url: Option<String>,
    apps: PerApp<ApnCredentials, AppClient>,
}

impl Apns {
    pub fn new(global_url: Option<String>) -> Apns {
        Apns { global_url, apps: PerApp::default() }
    }

    fn client(&self, app: &Application) -> Result<Arc<AppClient>, String> {
        let creds = app.apn.as_ref().ok_or_else(|| format!("application `{}` has no apn credentials", app.id))?;
        self.apps.get(&app.id, creds, || AppClient::new(creds, self.global_url.as_deref()))
    }

    /// Sends one push to one device token.
    pub async fn send(&self, app: &Application, token: &str, push: &ApnsPush) -> Outcome {
        if !device_token_ok(token) {
            return Outcome::InvalidToken("not an APNs device token (letters, digits, - and _ only)".into());
        }
        let client = match self.client(app) {
            Ok(c) => c,
            Err(e) => return Outcome::Rejected(e),
        };
        // One renewal when Apple says the provider token expired.
        for renew in [false, true] {
            let bearer = match client.bearer(renew) {
                Ok(b) => b,
                Err(e) => return Outcome::Rejected(e),
            };
            let expiration = clock::now_secs() + 86_400;
            let mut req = client
                .http
                .post(format!("{}/3/device/{token}", client.base))
                .header("apns-topic", &client.topic)
                .header("apns-push-type", if push.alert { "alert" } else { "background" })
                .header("apns-priority", if push.alert { "10" } else { "5" })
                .header("apns-expiration", expiration.to_string())
                .header("apns-id", stable_uuid(&[&push.id_seed, token]))
                .header("content-type", "application/json")
                .body(push.body.clone());
            if let Some(c) = &push.collapse_id {
                req = req.header("apns-collapse-id", c);
            }
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return Outcome::Retry { reason: format!("apns request: {e}"), after: None },
            };
            let status = resp.status().as_u16();
            let after = retry_after(resp.headers());
            let reason = resp
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(String::from))
                .unwrap_or_default();
            match (status, reason.as_str()) {
                (200, _) => return Outcome::Delivered,
                (403, "ExpiredProviderToken") if !renew => continue,
                (400, "BadDeviceToken" | "DeviceTokenNotForTopic") | (410, _) => {
                    return Outcome::InvalidToken(format!("{status} {reason}"))
                }
                (429 | 500 | 503, _) => return Outcome::Retry { reason: format!("{status} {reason}"), after },
                _ => return Outcome::Rejected(format!("{status} {reason}")),
            }
        }
        Outcome::Rejected("403 ExpiredProviderToken after renewal".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(json: Value) -> ApnCredentials {
        serde_json::from_value(json).expect("apn credentials")
    }

    #[test]
    fn certificate_auth_loads_an_encrypted_key_and_token_auth_signs() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::transport::tls::test_keys::ec_key_and_cert(dir.path(), "com.example.app");
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let read = |n: &str| std::fs::read_to_string(p(n)).expect("read");
        let cert = creds(json!({"certificate": read("cert.pem"), "private_key": read("enc.pem"), "passphrase": "pw",
            "topic": "com.example.app", "production": true}));
        let client = AppClient::new(&cert, None).expect("certificate auth client");
        assert_eq!(client.base, PRODUCTION);
        assert!(matches!(client.auth, Auth::Certificate));
        assert_eq!(client.bearer(false), Ok(None), "no provider token with a certificate");
        let wrong =
            creds(json!({"certificate": read("cert.pem"), "private_key": read("enc.pem"), "passphrase": "nope",
            "topic": "com.example.app"}));
        let err = AppClient::new(&wrong, None).err().expect("wrong passphrase refused");
        assert!(err.contains("apn.private_key") && !err.contains("nope"), "{err}");

        let token = creds(json!({"key": read("key.pem"), "key_id": "K1", "team_id": "T1", "topic": "com.example.app"}));
        let client = AppClient::new(&token, Some("http://127.0.0.1:9")).expect("token auth client");
        assert_eq!(client.base, "http://127.0.0.1:9", "the global URL wins over the sandbox");
        let first = client.bearer(false).expect("signs").expect("a provider token");
        assert_eq!(client.bearer(false).expect("cached"), Some(first.clone()), "cached, not re-signed");
        // ES256 signatures are randomized: a renewal is a new token even within the same second.
        assert_ne!(client.bearer(true).expect("renewed"), Some(first));
    }

    #[tokio::test]
    async fn a_token_that_would_rewrite_the_path_is_invalid_and_never_sent() {
        let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        trap.set_nonblocking(true).expect("non-blocking");
        let apns = Apns::new(Some(format!("http://{}", trap.local_addr().expect("address"))));
        let dir = tempfile::tempdir().expect("tempdir");
        crate::transport::tls::test_keys::ec_key_and_cert(dir.path(), "com.example.app");
        let key = std::fs::read_to_string(dir.path().join("key.pem")).expect("read");
        let app: Application = serde_json::from_value(json!({"id": "a",
            "apn": {"key": key, "key_id": "K1", "team_id": "T1", "topic": "com.example.app"}}))
        .expect("application");
        let push = ApnsPush { body: "{}".into(), alert: false, id_seed: "s".into(), collapse_id: None };
        let long = "a".repeat(MAX_DEVICE_TOKEN + 1);
        for bad in ["ok/../../x", "a?b", "a#b", "a%2F", "a b", "", long.as_str()] {
            let outcome = apns.send(&app, bad, &push).await;
            assert!(matches!(outcome, Outcome::InvalidToken(_)), "{bad:?}: {outcome:?}");
        }
        let accepted = trap.accept();
        assert!(accepted.is_err(), "nothing connected to the provider: {accepted:?}");
    }

    #[test]
    fn payloads_fit_apns_and_alert_only_for_the_push_field() {
        let app: Application =
            serde_json::from_value(json!({"id": "a", "schema": {"task": {"ios_push_field": "title"}}}))
                .expect("application");
        let delta = |title: &str| {
            json!({"op":"create","object":{"id":"o","type":"task","title":title},"subscriptions":["blg:a:context:c:task"],
                "application_id":"a","timestamp":1,"version":1})
        };
        let msg: TransportMessage = serde_json::from_value(json!({"application_id":"a","object_id":"o","version":1,
            "timestamp":1,"devices":[],"message":{"new":[delta("hi"), delta(&"x".repeat(5000))],"updated":[],"deleted":[]}}))
        .expect("message");
        let pushes = payloads(&msg, &app);
        assert!(pushes.iter().all(|p| p.body.len() <= DEFAULT_PUSH_LIMIT), "every body fits 4 KB");
        let silent: Vec<&ApnsPush> = pushes.iter().filter(|p| !p.alert).collect();
        assert!(silent.iter().any(|p| p.body.contains("\"sync\"") && p.collapse_id.is_some()), "too big: sync");
        assert!(silent.iter().any(|p| p.body.contains("\"content-available\":1") && p.collapse_id.is_none()));
        let alerts: Vec<&ApnsPush> = pushes.iter().filter(|p| p.alert).collect();
        assert_eq!(alerts.len(), 2);
        assert!(alerts[0].body.contains("\"alert\":\"hi\""));
        let collapse: Vec<&str> = alerts.iter().filter_map(|p| p.collapse_id.as_deref()).collect();
        assert_eq!(collapse.len(), 2, "every alert collapses with its own repeats");
        assert_ne!(collapse[0], collapse[1], "never with another alert");
        assert!(collapse.iter().all(|c| c.len() <= 64), "Apple's limit: {collapse:?}");
        assert_eq!(payloads(&msg, &app), pushes, "the same message, the same pushes and ids");
    }
}
