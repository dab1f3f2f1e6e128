//! FCM HTTP v1 (`POST {base}/v1/projects/{project}/messages:send`) with the application's
//! service account: an RS256 assertion exchanged at the account's `token_uri` (only if the
//! operator allows that endpoint, see [`super::endpoints`]) for an access token (OAuth2
//! JWT-bearer grant), cached until five minutes before it expires and fetched by one request at
//! a time per application.
//!
//! Data messages only: FCM data values are strings, so the contract's `{"data":{new,updated,
//! deleted}}` travels as `{"data": "<that JSON>"}` (and `{"sync": "[channels]"}`), within FCM's
//! 4 KB; `android.priority` high (the app must update now), `ttl` one day.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::endpoints::{self, EndpointError, GOOGLE_TOKEN_URI};
use super::sign::SigningKey;
use super::{http_client, retry_after, Outcome, PerApp};
use crate::model::delivery::{split_push, PushPayload, DEFAULT_PUSH_LIMIT};
use crate::model::schema::FcmCredentials;
use crate::model::{clock, Application, TransportMessage};

pub const DEFAULT_URL: &str = "https://fcm.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// The `data` maps of one transport message, each within FCM's 4 KB.
pub fn payloads(msg: &TransportMessage) -> Vec<Map<String, Value>> {
    split_push(&msg.message, DEFAULT_PUSH_LIMIT)
        .into_iter()
        .map(|p| {
            let (key, value) = match &p {
                PushPayload::Data { data } => ("data", serde_json::to_string(data)),
                PushPayload::Sync { sync } => ("sync", serde_json::to_string(sync)),
            };
            let mut m = Map::new();
            m.insert(key.into(), Value::String(value.unwrap_or_default()));
            m
        })
        .collect()
}

struct AppClient {
    project: String,
    client_email: String,
    token_uri: String,
    key: SigningKey,
    send_url: String,
    http: reqwest::Client,
    oauth: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

fn field<'a>(sa: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    sa.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(format!("fcm.service_account.{name} is missing"))
}

impl AppClient {
    fn new(creds: &FcmCredentials, global: &str, token_urls: &[String]) -> Result<AppClient, String> {
        let sa = &creds.service_account;
        let project = endpoints::project_id(sa).map_err(|e| e.to_string())?.to_string();
        let token_uri = endpoints::token_uri(sa, token_urls).map_err(|e| e.to_string())?.to_string();
        let key = SigningKey::rs256(field(sa, "private_key")?)
            .map_err(|e| format!("fcm.service_account.private_key: {e}"))?;
        let base = global.trim_end_matches('/').to_string();
        Ok(AppClient {
            client_email: field(sa, "client_email")?.to_string(),
            send_url: format!("{base}/v1/projects/{project}/messages:send"),
            http: http_client(&base, None)?,
            oauth: http_client(&token_uri, None)?,
            project,
            token_uri,
            key,
            token: tokio::sync::Mutex::default(),
        })
    }

    /// A valid access token, fetched if the cached one is missing, stale or `refused`.
    async fn access_token(&self, refused: Option<&str>) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until && refused != Some(t.as_str()) {
                return Ok(t.clone());
            }
        }
        let now = clock::now_secs();
        let claims =
            json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": now, "exp": now + 3600});
        let assertion = self.key.sign(None, &claims).map_err(Outcome::Rejected)?;
        let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())];
        let resp = self
            .oauth
            .post(&self.token_uri)
            .form(&form)
            .send()
            .await
            .map_err(|e| Outcome::Retry { reason: format!("oauth token request: {e}"), after: None })?;
        let status = resp.status().as_u16();
        let after = retry_after(resp.headers());
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match (status, body.get("access_token").and_then(Value::as_str)) {
            (200, Some(token)) => {
                let ttl = body.get("expires_in").and_then(Value::as_u64).unwrap_or(3600);
                let until = Instant::now() + Duration::from_secs(ttl).saturating_sub(RENEW_BEFORE);
                *cached = Some((token.to_string(), until));
                Ok(token.to_string())
            }
            (429 | 500..=599, _) => Err(Outcome::Retry { reason: format!("oauth token: {status}"), after }),
            _ => Err(Outcome::Rejected(format!("oauth token refused ({status}): {body}"))),
        }
    }
}

/// The FCM side of `android_transport`: one client per application, rebuilt when its
/// credentials change.
pub struct Fcm {
    global_url: String,
    token_urls: Vec<String>,
    apps: PerApp<FcmCredentials, AppClient>,
}

impl Fcm {
    /// Allows only Google's token endpoint until [`Fcm::with_token_urls`] says otherwise.
    pub fn new(global_url: Option<String>) -> Fcm {
        Fcm {
            global_url: global_url.unwrap_or_else(|| DEFAULT_URL.to_string()),
            token_urls: vec![GOOGLE_TOKEN_URI.to_string()],
            apps: PerApp::default(),
        }
    }

    /// The OAuth token endpoints a service account may name (`TP_PUSH_TOKEN_URLS`).
    pub fn with_token_urls(mut self, token_urls: Vec<String>) -> Fcm {
        self.token_urls = token_urls;
        self
    }

    /// Why nothing may be sent with `app`'s account, if so: its record names a token endpoint
    /// the operator does not allow (or a project id that would rewrite the send URL).
    pub fn refuses(&self, app: &Application) -> Option<EndpointError> {
        let sa = &app.fcm.as_ref()?.service_account;
        endpoints::token_uri(sa, &self.token_urls).and(endpoints::project_id(sa)).err()
    }

    fn client(&self, app: &Application) -> Result<Arc<AppClient>, String> {
        let creds = app.fcm.as_ref().ok_or_else(|| format!("application `{}` has no fcm credentials", app.id))?;
        self.apps.get(&app.id, creds, || AppClient::new(creds, &self.global_url, &self.token_urls))
    }

    /// Sends one data message to one registration token.
    pub async fn send(&self, app: &Application, token: &str, data: &Map<String, Value>) -> Outcome {
        let client = match self.client(app) {
            Ok(c) => c,
            Err(e) => return Outcome::Rejected(e),
        };
        let body = json!({"message": {"token": token, "data": data, "android": {"priority": "high", "ttl": "86400s"}}});
        let mut refused: Option<String> = None;
        for _ in 0..2 {
            let bearer = match client.access_token(refused.as_deref()).await {
                Ok(t) => t,
                Err(outcome) => return outcome,
            };
            let resp = match client.http.post(&client.send_url).bearer_auth(&bearer).json(&body).send().await {
                Ok(r) => r,
                Err(e) => return Outcome::Retry { reason: format!("fcm request: {e}"), after: None },
            };
            let status = resp.status().as_u16();
            if status == 200 {
                // Read the (small) body: a response dropped unread resets its HTTP/2 stream, and
                // h2 caps locally reset streams per connection.
                let _ = resp.bytes().await;
                return Outcome::Delivered;
            }
            let after = retry_after(resp.headers());
            let error: Value =
                resp.json::<Value>().await.ok().and_then(|v| v.get("error").cloned()).unwrap_or(Value::Null);
            let code = error_code(&error);
            let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
            let what = format!("{status} {code}: {message}");
            match (status, code.as_str()) {
                // The access token was revoked or expired early: fetch a new one, once.
                (401, _) if refused.is_none() => refused = Some(bearer),
                (_, "UNREGISTERED" | "SENDER_ID_MISMATCH") => return Outcome::InvalidToken(what),
                (400, "INVALID_ARGUMENT") if message.contains("registration token") => {
                    return Outcome::InvalidToken(what)
                }
                (429 | 500..=599, _) => return Outcome::Retry { reason: what, after },
                _ => return Outcome::Rejected(what),
            }
        }
        Outcome::Rejected(format!("fcm: access token refused twice for project {}", client.project))
    }
}

/// The FCM `errorCode` of an error body, else its `status`.
fn error_code(error: &Value) -> String {
    let detail = error.get("details").and_then(Value::as_array).into_iter().flatten().find_map(|d| d.get("errorCode"));
    detail.or_else(|| error.get("status")).and_then(Value::as_str).unwrap_or_default().to_string()
}
