//! Local stand-ins for the push providers: Apple's APNs HTTP/2 API ([`FakeApns`]), Google's FCM
//! HTTP v1 API and the OAuth2 token endpoint ([`FakeFcm`]). Each serves h2c (HTTP/2 with prior
//! knowledge) and HTTP/1.1 on its own 127.0.0.1 port for as long as its handle lives.
//!
//! They check what the real providers check (provider JWTs, topics, headers, payload shapes and
//! sizes, OAuth assertions, access tokens) and answer failures with the providers' statuses and
//! bodies. Device tokens script the outcome by prefix:
//!
//! | prefix     | APNs                                    | FCM                                 |
//! |------------|-----------------------------------------|-------------------------------------|
//! | `bad`      | 400 `BadDeviceToken`                    | 400 `INVALID_ARGUMENT`              |
//! | `gone`     | 410 `Unregistered`                      | 404 `UNREGISTERED`                  |
//! | `mismatch` | -                                       | 403 `SENDER_ID_MISMATCH`            |
//! | `busy`     | 429 `TooManyRequests` once, then 200    | 429 `QUOTA_EXCEEDED` once, then 200 |
//! | `flaky`    | 503 `ServiceUnavailable` once, then 200 | 503 `UNAVAILABLE` once, then 200    |
//! | `reset`    | stream reset once, then 200             | stream reset once, then 200         |
//!
//! The 429s carry `retry-after: 1`.
//! "Once" means the first request for that token that passes every other check.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_2048_8192_SHA256,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

// ---------------------------------------------------------------------------------------------
// Keys and JWTs
// ---------------------------------------------------------------------------------------------

/// A fresh P-256 key as APNs hands it out (PKCS#8 PEM, like a `.p8` file), and its public key
/// (uncompressed point) for [`ApnsApp::public_key`].
pub fn ec_p8_key() -> (String, Vec<u8>) {
    let pem = openssl_genpkey(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pem_to_der(&pem), &SystemRandom::new())
        .expect("openssl EC key loads in ring");
    let public = pair.public_key().as_ref().to_vec();
    (pem, public)
}

/// A fresh 2048-bit RSA key (PKCS#8 PEM, like a service account's `private_key`), and its public
/// key (DER RSAPublicKey) for [`FcmAccount::public_key`].
pub fn rsa_key() -> (String, Vec<u8>) {
    let pem = openssl_genpkey(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let pair = RsaKeyPair::from_pkcs8(&pem_to_der(&pem)).expect("openssl RSA key loads in ring");
    let public = pair.public().as_ref().to_vec();
    (pem, public)
}

fn openssl_genpkey(args: &[&str]) -> String {
    let out = Command::new("openssl").arg("genpkey").args(args).output().expect("run openssl");
    assert!(out.status.success(), "openssl genpkey failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("PEM is text")
}

/// The DER inside a single-block PEM.
pub fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().map(str::trim).filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("PEM body is base64")
}

/// A decoded (not yet verified) JWT.
pub struct Jwt {
    pub header: Value,
    pub claims: Value,
    signing_input: String,
    signature: Vec<u8>,
}

/// Splits `header.claims.signature` and decodes the parts; `None` unless header and claims are
/// base64url (no padding) JSON objects.
pub fn parse_jwt(jwt: &str) -> Option<Jwt> {
    let mut parts = jwt.split('.');
    let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let object =
        |part: &str| serde_json::from_slice::<Value>(&URL_SAFE_NO_PAD.decode(part).ok()?).ok().filter(Value::is_object);
    Some(Jwt {
        header: object(header)?,
        claims: object(claims)?,
        signing_input: format!("{header}.{claims}"),
        signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
    })
}

impl Jwt {
    /// ES256: `&ECDSA_P256_SHA256_FIXED`; RS256: `&RSA_PKCS1_2048_8192_SHA256`.
    pub fn verify(&self, alg: &'static dyn VerificationAlgorithm, public_key: &[u8]) -> bool {
        UnparsedPublicKey::new(alg, public_key).verify(self.signing_input.as_bytes(), &self.signature).is_ok()
    }
}

/// A reqwest client speaking h2c to the fakes. reqwest's `rustls-no-provider` needs a process
/// default crypto provider even for plain http; this installs ring's if none is.
pub fn h2c_client() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().http2_prior_knowledge().build().expect("reqwest client")
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs() as i64
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new().fill(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_uuid() -> String {
    let h = random_hex(16);
    format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32]).to_uppercase()
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { c == b'-' } else { c.is_ascii_hexdigit() })
}

// ---------------------------------------------------------------------------------------------
// Server plumbing
// ---------------------------------------------------------------------------------------------

type Resp = Response<Full<Bytes>>;
/// Answers a whole request; `None` resets the stream (HTTP/2) or drops the connection (HTTP/1.1).
type Handler = Arc<dyn Fn(&Parts, &Bytes) -> Option<Resp> + Send + Sync>;

#[derive(Debug)]
struct ResetStream;

impl std::fmt::Display for ResetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted stream reset")
    }
}

impl std::error::Error for ResetStream {}

/// Accepts connections until dropped; dropping also ends the open connections.
struct Server {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Server {
    async fn bind() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
    }

    fn serve(listener: TcpListener, handler: Handler) -> Server {
        let addr = listener.local_addr().expect("local addr");
        let accept = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                let Ok((stream, _)) = listener.accept().await else { continue };
                connections.spawn(serve_connection(stream, handler.clone()));
            }
        });
        Server { addr, accept }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn serve_connection(stream: TcpStream, handler: Handler) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map_err(|_| ResetStream)?.to_bytes();
            handler(&parts, &body).ok_or(ResetStream)
        }
    });
    let io = TokioIo::new(stream);
    if starts_with_h2_preface(io.inner()).await {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service).await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
    }
}

async fn starts_with_h2_preface(stream: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if buf[..n] != PREFACE[..n] => return false,
            Ok(n) if n == PREFACE.len() => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

fn json_response(status: u16, body: &Value) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).expect("status code");
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=UTF-8"));
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header(headers, "authorization")?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| credentials.trim())
}

/// The scripted one-shot failure for a `busy`/`flaky`/`reset` token: true the first time.
fn trip_once(tripped: &mut HashSet<String>, token: &str) -> bool {
    tripped.insert(token.to_owned())
}

// ---------------------------------------------------------------------------------------------
// APNs
// ---------------------------------------------------------------------------------------------

/// One APNs signing key (`kid`) and the app topic it may push to.
#[derive(Clone, Debug)]
pub struct ApnsApp {
    pub team_id: String,
    pub key_id: String,
    pub public_key: Vec<u8>,
    pub topic: String,
}

/// A push APNs accepted.
#[derive(Clone, Debug)]
pub struct ApnsRequest {
    pub token: String,
    pub team_id: String,
    /// The `apns-*` request headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    pub body: Value,
}

#[derive(Default)]
struct ApnsLog {
    requests: usize,
    attempts: HashMap<String, usize>,
    delivered: Vec<ApnsRequest>,
    tripped: HashSet<String>,
}

struct ApnsCore {
    apps: Vec<ApnsApp>,
    log: Mutex<ApnsLog>,
    /// Provider tokens whose signature was already checked: like Apple, the signature is
    /// verified once per token, not on every request (the expiry still is).
    verified: Mutex<HashSet<String>>,
}

/// Fake `api.push.apple.com`: `POST /3/device/{token}`.
pub struct FakeApns {
    core: Arc<ApnsCore>,
    server: Server,
}

type ApnsReject = (u16, &'static str);

impl FakeApns {
    pub async fn start(apps: Vec<ApnsApp>) -> FakeApns {
        let core = Arc::new(ApnsCore { apps, log: Mutex::default(), verified: Mutex::default() });
        let handler_core = core.clone();
        let handler = Arc::new(move |parts: &Parts, body: &Bytes| handler_core.handle(parts, body));
        let server = Server::serve(Server::bind().await, handler);
        FakeApns { core, server }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Pushes answered 200, in arrival order.
    pub fn delivered(&self) -> Vec<ApnsRequest> {
        self.core.log.lock().unwrap().delivered.clone()
    }

    /// How many were delivered, without copying them (for polling under load).
    pub fn delivered_len(&self) -> usize {
        self.core.log.lock().unwrap().delivered.len()
    }

    /// Requests for `/3/device/{token}`, whatever the outcome.
    pub fn attempts(&self, token: &str) -> usize {
        self.core.log.lock().unwrap().attempts.get(token).copied().unwrap_or(0)
    }

    /// Every request received.
    pub fn requests(&self) -> usize {
        self.core.log.lock().unwrap().requests
    }
}

fn apns_reply(status: u16, reason: &str, apns_id: &str) -> Resp {
    let mut body = json!({ "reason": reason });
    if status == 410 {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as u64;
        body["timestamp"] = json!(ms);
    }
    let mut response =
        if status == 200 { Response::new(Full::new(Bytes::new())) } else { json_response(status, &body) };
    *response.status_mut() = StatusCode::from_u16(status).expect("status code");
    response.headers_mut().insert("apns-id", HeaderValue::from_str(apns_id).expect("uuid header"));
    response
}

impl ApnsCore {
    fn handle(&self, parts: &Parts, body: &Bytes) -> Option<Resp> {
        let mut log = self.log.lock().unwrap();
        log.requests += 1;
        let Some(token) = parts.uri.path().strip_prefix("/3/device/") else {
            return Some(json_response(404, &json!({ "reason": "BadPath" })));
        };
        *log.attempts.entry(token.to_owned()).or_default() += 1;
        let apns_id = header(&parts.headers, "apns-id").filter(|id| is_uuid(id)).map_or_else(new_uuid, str::to_owned);
        if parts.method != Method::POST {
            return Some(apns_reply(405, "MethodNotAllowed", &apns_id));
        }
        let (app, payload) = match self.check(&parts.headers, body) {
            Ok(accepted) => accepted,
            Err((status, reason)) => return Some(apns_reply(status, reason, &apns_id)),
        };
        let valid_token =
            !token.is_empty() && token.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !valid_token || token.starts_with("bad") {
            return Some(apns_reply(400, "BadDeviceToken", &apns_id));
        }
        if token.starts_with("gone") {
            return Some(apns_reply(410, "Unregistered", &apns_id));
        }
        let scripted = ["busy", "flaky", "reset"].into_iter().find(|p| token.starts_with(p));
        if scripted.is_some() && trip_once(&mut log.tripped, token) {
            return match scripted {
                Some("busy") => {
                    let mut response = apns_reply(429, "TooManyRequests", &apns_id);
                    response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
                    Some(response)
                }
                Some("flaky") => Some(apns_reply(503, "ServiceUnavailable", &apns_id)),
                _ => None,
            };
        }
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("apns-"))
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect();
        log.delivered.push(ApnsRequest {
            token: token.to_owned(),
            team_id: app.team_id.clone(),
            headers,
            body: payload,
        });
        Some(apns_reply(200, "", &apns_id))
    }

    fn check(&self, headers: &HeaderMap, body: &Bytes) -> Result<(&ApnsApp, Value), ApnsReject> {
        const INVALID: ApnsReject = (403, "InvalidProviderToken");
        // 1. Provider token.
        let raw = bearer(headers).ok_or((403, "MissingProviderToken"))?;
        let jwt = parse_jwt(raw).ok_or(INVALID)?;
        if jwt.header["alg"] != "ES256" {
            return Err(INVALID);
        }
        let kid = jwt.header["kid"].as_str().ok_or(INVALID)?;
        let app = self.apps.iter().find(|app| app.key_id == kid).ok_or(INVALID)?;
        if jwt.claims["iss"] != app.team_id.as_str() {
            return Err(INVALID);
        }
        let known = self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(raw);
        if !known {
            if !jwt.verify(&ECDSA_P256_SHA256_FIXED, &app.public_key) {
                return Err(INVALID);
            }
            self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(raw.to_owned());
        }
        let iat = jwt.claims["iat"].as_i64().ok_or(INVALID)?;
        let now = now_secs();
        if iat < now - 3600 {
            return Err((403, "ExpiredProviderToken"));
        }
        if iat > now + 60 {
            return Err(INVALID);
        }
        // 2. Topic.
        let topic = header(headers, "apns-topic").ok_or((400, "MissingTopic"))?;
        if topic != app.topic {
            return Err((400, "TopicDisallowed"));
        }
        // 3. Other headers.
        let push_type = header(headers, "apns-push-type");
        if !matches!(push_type, Some("alert" | "background")) {
            return Err((400, "InvalidPushType"));
        }
        let priority = header(headers, "apns-priority");
        if push_type == Some("background") && priority != Some("5") || !matches!(priority, None | Some("5" | "10")) {
            return Err((400, "BadPriority"));
        }
        if header(headers, "apns-expiration").is_some_and(|e| e.parse::<i64>().is_err()) {
            return Err((400, "BadExpirationDate"));
        }
        if headers.get("apns-id").is_some_and(|id| !id.to_str().is_ok_and(is_uuid)) {
            return Err((400, "BadMessageId"));
        }
        if headers.get("apns-collapse-id").is_some_and(|id| id.len() > 64) {
            return Err((400, "BadCollapseId"));
        }
        // 4. Payload.
        if body.len() > 4096 {
            return Err((413, "PayloadTooLarge"));
        }
        if body.is_empty() {
            return Err((400, "PayloadEmpty"));
        }
        let payload: Value = serde_json::from_slice(body).map_err(|_| (400, "BadPayload"))?;
        let aps = payload.get("aps").filter(|aps| aps.is_object()).ok_or((400, "BadPayload"))?;
        let shaped = match push_type {
            Some("background") => aps["content-available"] == 1,
            _ => aps.get("alert").is_some(),
        };
        if !shaped {
            return Err((400, "BadPayload"));
        }
        Ok((app, payload))
    }
}

// ---------------------------------------------------------------------------------------------
// FCM and OAuth2
// ---------------------------------------------------------------------------------------------

/// A service account and the Firebase project it may send to.
#[derive(Clone, Debug)]
pub struct FcmAccount {
    pub project_id: String,
    pub client_email: String,
    pub public_key: Vec<u8>,
}

/// A message FCM accepted.
#[derive(Clone, Debug)]
pub struct FcmRequest {
    pub project: String,
    pub token: String,
    pub data: BTreeMap<String, String>,
    /// The whole request body.
    pub body: Value,
}

#[derive(Default)]
struct FcmLog {
    requests: usize,
    token_requests: usize,
    /// access token -> (index into the accounts, when issued)
    access_tokens: HashMap<String, (usize, Instant)>,
    attempts: HashMap<String, usize>,
    delivered: Vec<FcmRequest>,
    tripped: HashSet<String>,
    sent: u64,
}

struct FcmCore {
    accounts: Vec<FcmAccount>,
    token_uri: String,
    log: Mutex<FcmLog>,
}

/// Fake `fcm.googleapis.com` (`POST /v1/projects/{project}/messages:send`) and
/// `oauth2.googleapis.com` (`POST /token`).
pub struct FakeFcm {
    core: Arc<FcmCore>,
    server: Server,
}

const FIREBASE_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FCM_ERROR: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const ACCESS_TOKEN_SECS: u64 = 3600;

impl FakeFcm {
    pub async fn start(accounts: Vec<FcmAccount>) -> FakeFcm {
        let listener = Server::bind().await;
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let core = Arc::new(FcmCore { accounts, token_uri: format!("{url}/token"), log: Mutex::default() });
        let handler_core = core.clone();
        let server =
            Server::serve(listener, Arc::new(move |parts: &Parts, body: &Bytes| handler_core.handle(parts, body)));
        FakeFcm { core, server }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// `<url>/token`, the `token_uri` of a service account file and the assertion's `aud`.
    pub fn token_uri(&self) -> String {
        self.core.token_uri.clone()
    }

    /// Requests to `/token`, whatever the outcome.
    pub fn token_requests(&self) -> usize {
        self.core.log.lock().unwrap().token_requests
    }

    /// Makes every access token issued so far invalid (401), as if it had expired.
    pub fn expire_access_tokens(&self) {
        self.core.log.lock().unwrap().access_tokens.clear();
    }

    /// Messages answered 200, in arrival order.
    pub fn delivered(&self) -> Vec<FcmRequest> {
        self.core.log.lock().unwrap().delivered.clone()
    }

    /// How many were delivered, without copying them (for polling under load).
    pub fn delivered_len(&self) -> usize {
        self.core.log.lock().unwrap().delivered.len()
    }

    /// Send requests whose `message.token` was `token`, whatever the outcome.
    pub fn attempts(&self, token: &str) -> usize {
        self.core.log.lock().unwrap().attempts.get(token).copied().unwrap_or(0)
    }

    /// Every request except those to `/token`.
    pub fn requests(&self) -> usize {
        self.core.log.lock().unwrap().requests
    }
}

fn google_error(code: u16, status: &str, message: &str, details: Option<Value>) -> Resp {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if let Some(details) = details {
        error["details"] = json!([details]);
    }
    json_response(code, &json!({ "error": error }))
}

fn fcm_error(code: u16, status: &str, message: &str, error_code: &str) -> Resp {
    google_error(code, status, message, Some(json!({ "@type": FCM_ERROR, "errorCode": error_code })))
}

fn invalid_value(field: &str, message: String) -> Resp {
    let violation = json!({
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{ "field": field, "description": message }],
    });
    google_error(400, "INVALID_ARGUMENT", &message, Some(violation))
}

fn invalid_grant(description: &str) -> Resp {
    json_response(400, &json!({ "error": "invalid_grant", "error_description": description }))
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// `<digits>[.<up to 9 digits>]s`, protobuf's JSON Duration.
fn is_duration(s: &str) -> bool {
    let Some(number) = s.strip_suffix('s') else { return false };
    let (secs, nanos) = number.split_once('.').unwrap_or((number, "0"));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    digits(secs) && digits(nanos) && nanos.len() <= 9
}

impl FcmCore {
    fn handle(&self, parts: &Parts, body: &Bytes) -> Option<Resp> {
        let mut log = self.log.lock().unwrap();
        let path = parts.uri.path();
        if path == "/token" && parts.method == Method::POST {
            log.token_requests += 1;
            return Some(self.token(&mut log, &parts.headers, body));
        }
        log.requests += 1;
        let project = path.strip_prefix("/v1/projects/").and_then(|rest| rest.strip_suffix("/messages:send"));
        let Some(project) = project.filter(|p| !p.is_empty() && !p.contains('/') && parts.method == Method::POST)
        else {
            return Some(google_error(404, "NOT_FOUND", "Requested entity was not found.", None));
        };
        let request: Option<Value> = serde_json::from_slice(body).ok();
        let token = request.as_ref().and_then(|r| r["message"]["token"].as_str()).unwrap_or_default().to_owned();
        *log.attempts.entry(token.clone()).or_default() += 1;

        // Credentials.
        let account = bearer(&parts.headers)
            .and_then(|t| log.access_tokens.get(t))
            .filter(|(_, issued)| issued.elapsed() < Duration::from_secs(ACCESS_TOKEN_SECS))
            .map(|&(account, _)| &self.accounts[account]);
        let Some(account) = account else {
            return Some(google_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or \
                 other valid authentication credential.",
                None,
            ));
        };
        if account.project_id != project {
            let message = format!(
                "Permission 'cloudmessaging.messages.create' denied on resource \
                 '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."
            );
            return Some(google_error(403, "PERMISSION_DENIED", &message, None));
        }

        // The message.
        let request = match request {
            Some(request @ Value::Object(_)) => request,
            _ => return Some(invalid_value("", "Invalid JSON payload received.".to_owned())),
        };
        let data = match self.check_message(&request) {
            Ok(data) => data,
            Err(response) => return Some(*response),
        };

        // Scripted outcomes by token.
        if token.starts_with("gone") {
            return Some(fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"));
        }
        if token.starts_with("bad") {
            let message = "The registration token is not a valid FCM registration token";
            return Some(fcm_error(400, "INVALID_ARGUMENT", message, "INVALID_ARGUMENT"));
        }
        if token.starts_with("mismatch") {
            return Some(fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"));
        }
        let scripted = ["busy", "flaky", "reset"].into_iter().find(|p| token.starts_with(p));
        if scripted.is_some() && trip_once(&mut log.tripped, &token) {
            return match scripted {
                Some("busy") => {
                    let message = "Quota exceeded for quota metric 'Send messages' of service 'fcm.googleapis.com'.";
                    let mut response = fcm_error(429, "RESOURCE_EXHAUSTED", message, "QUOTA_EXCEEDED");
                    response.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
                    Some(response)
                }
                Some("flaky") => {
                    Some(fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"))
                }
                _ => None,
            };
        }

        log.sent += 1;
        let name = format!("projects/{project}/messages/0:{}%{}", log.sent, random_hex(8));
        if request["validate_only"] != true {
            let delivered = FcmRequest { project: project.to_owned(), token, data, body: request };
            log.delivered.push(delivered);
        }
        Some(json_response(200, &json!({ "name": name })))
    }

    /// Checks the `messages:send` body; returns `message.data`.
    fn check_message(&self, request: &Value) -> Result<BTreeMap<String, String>, Box<Resp>> {
        const MESSAGE_FIELDS: &[&str] = &[
            "name",
            "data",
            "notification",
            "android",
            "webpush",
            "apns",
            "fcm_options",
            "token",
            "topic",
            "condition",
        ];
        let unknown = |at: &str, name: &str| {
            let message =
                format!("Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field.");
            invalid_value(at, message)
        };
        let top = request.as_object().expect("checked object");
        if let Some(name) = top.keys().find(|k| !matches!(k.as_str(), "message" | "validate_only")) {
            return Err(Box::new(unknown("", name)));
        }
        let Some(message) = request["message"].as_object() else {
            return Err(Box::new(invalid_value("message", "Invalid value at 'message'.".to_owned())));
        };
        if let Some(name) = message.keys().find(|k| !MESSAGE_FIELDS.contains(&k.as_str())) {
            return Err(Box::new(unknown("message", name)));
        }
        match &request["message"]["token"] {
            Value::String(token) if !token.is_empty() => {}
            Value::Null | Value::String(_) => {
                let message = "Recipient of the message is not set.";
                return Err(Box::new(fcm_error(400, "INVALID_ARGUMENT", message, "INVALID_ARGUMENT")));
            }
            other => {
                return Err(Box::new(invalid_value(
                    "message.token",
                    format!("Invalid value at 'message.token' (TYPE_STRING), {other}"),
                )))
            }
        }

        let mut data = BTreeMap::new();
        match message.get("data") {
            None => {}
            Some(Value::Object(entries)) => {
                for (i, (key, value)) in entries.iter().enumerate() {
                    let Value::String(value) = value else {
                        let field = format!("message.data[{i}].value");
                        return Err(Box::new(invalid_value(
                            &field,
                            format!("Invalid value at '{field}' (TYPE_STRING), {value}"),
                        )));
                    };
                    let reserved = ["from", "notification", "message_type"].contains(&key.as_str())
                        || key.starts_with("google.")
                        || key.starts_with("gcm.");
                    if reserved {
                        let message = format!("Invalid data payload key: {key}");
                        return Err(Box::new(fcm_error(400, "INVALID_ARGUMENT", &message, "INVALID_ARGUMENT")));
                    }
                    data.insert(key.clone(), value.clone());
                }
            }
            Some(other) => {
                let message = format!(
                    "Invalid value at 'message.data' (type.googleapis.com/google.firebase.fcm.v1.Message.DataEntry), \
                     {other}"
                );
                return Err(Box::new(invalid_value("message.data", message)));
            }
        }
        if data.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() > 4096 {
            return Err(Box::new(fcm_error(400, "INVALID_ARGUMENT", "Message is too big", "INVALID_ARGUMENT")));
        }

        if let Some(android) = message.get("android") {
            let Some(android) = android.as_object() else {
                return Err(Box::new(invalid_value(
                    "message.android",
                    format!("Invalid value at 'message.android', {android}"),
                )));
            };
            if let Some(priority) = android.get("priority") {
                let known = priority
                    .as_str()
                    .is_some_and(|p| p.eq_ignore_ascii_case("normal") || p.eq_ignore_ascii_case("high"));
                if !known {
                    let message = format!(
                        "Invalid value at 'message.android.priority' \
                         (type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), {priority}"
                    );
                    return Err(Box::new(invalid_value("message.android.priority", message)));
                }
            }
            if let Some(ttl) = android.get("ttl") {
                if !ttl.as_str().is_some_and(is_duration) {
                    let message = format!(
                        "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), {ttl}"
                    );
                    return Err(Box::new(invalid_value("message.android.ttl", message)));
                }
            }
        }
        Ok(data)
    }

    /// `POST /token` with a JWT-bearer assertion signed by a service account.
    fn token(&self, log: &mut FcmLog, headers: &HeaderMap, body: &Bytes) -> Resp {
        if !header(headers, "content-type").is_some_and(|t| t.starts_with("application/x-www-form-urlencoded")) {
            return invalid_grant("Expected a form-urlencoded body.");
        }
        let form = parse_form(body);
        if form.get("grant_type").map(String::as_str) != Some(JWT_BEARER) {
            return invalid_grant("Invalid grant_type.");
        }
        let Some(jwt) = form.get("assertion").and_then(|a| parse_jwt(a)) else {
            return invalid_grant("Invalid JWT: malformed assertion.");
        };
        if jwt.header["alg"] != "RS256" {
            return invalid_grant("Invalid JWT: alg must be RS256.");
        }
        let Some(account) = self.accounts.iter().position(|a| jwt.claims["iss"] == a.client_email.as_str()) else {
            return invalid_grant("Invalid JWT: unknown issuer.");
        };
        if !jwt.verify(&RSA_PKCS1_2048_8192_SHA256, &self.accounts[account].public_key) {
            return invalid_grant("Invalid JWT Signature.");
        }
        if !jwt.claims["scope"].as_str().is_some_and(|s| s.split(' ').any(|scope| scope == FIREBASE_SCOPE)) {
            return invalid_grant("Invalid JWT: scope lacks firebase.messaging.");
        }
        if jwt.claims["aud"] != self.token_uri.as_str() {
            return invalid_grant("Invalid JWT: aud must be the token URI.");
        }
        let now = now_secs();
        let timely = match (jwt.claims["iat"].as_i64(), jwt.claims["exp"].as_i64()) {
            (Some(iat), Some(exp)) => iat <= now + 60 && exp > now && exp - iat <= 3600,
            _ => false,
        };
        if !timely {
            return invalid_grant(
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your \
                 iat and exp values in the JWT claim.",
            );
        }
        let access_token = format!("ya29.fake-{}-{}", log.access_tokens.len() + 1, random_hex(16));
        log.access_tokens.insert(access_token.clone(), (account, Instant::now()));
        json_response(
            200,
            &json!({ "access_token": access_token, "expires_in": ACCESS_TOKEN_SECS, "token_type": "Bearer" }),
        )
    }
}
