//! The fake push providers (tests/common/push_fakes.rs) against a real reqwest HTTP/2 client:
//! what they accept, what they refuse and how, what they script by token prefix, what they record.
//! Needs nothing but the `openssl` CLI.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::push_fakes::{ec_p8_key, h2c_client, pem_to_der, rsa_key, ApnsApp, FakeApns, FakeFcm, FcmAccount};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use serde_json::{json, Value};

const TOPIC: &str = "com.example.app";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn jwt(header: Value, claims: Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{signature}")
}

fn es256(pem: &str, kid: &str, team: &str, iat: i64) -> String {
    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pem_to_der(pem), &rng).unwrap();
    let sign = |input: &[u8]| key.sign(&rng, input).unwrap().as_ref().to_vec();
    jwt(json!({"alg": "ES256", "kid": kid}), json!({"iss": team, "iat": iat}), sign)
}

fn rs256(pem: &str, claims: Value) -> String {
    let key = RsaKeyPair::from_pkcs8(&pem_to_der(pem)).unwrap();
    let sign = |input: &[u8]| {
        let mut signature = vec![0; key.public().modulus_len()];
        key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input, &mut signature).unwrap();
        signature
    };
    jwt(json!({"alg": "RS256", "typ": "JWT"}), claims, sign)
}

struct Apns {
    fake: FakeApns,
    pem: String,
    client: reqwest::Client,
}

impl Apns {
    async fn start() -> Apns {
        let (pem, public_key) = ec_p8_key();
        let app =
            ApnsApp { team_id: "TEAM123456".into(), key_id: "KEY1234567".into(), public_key, topic: TOPIC.into() };
        Apns { fake: FakeApns::start(vec![app]).await, pem, client: h2c_client() }
    }

    /// An alert push with a valid provider token, and `extra` headers (which may override).
    async fn push(&self, token: &str, extra: &[(&str, &str)], body: &str) -> reqwest::Result<reqwest::Response> {
        let provider_token = es256(&self.pem, "KEY1234567", "TEAM123456", now());
        let authorization = format!("bearer {provider_token}");
        let defaults = [("authorization", authorization.as_str()), ("apns-topic", TOPIC), ("apns-push-type", "alert")];
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in defaults.iter().chain(extra) {
            headers.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let url = format!("{}/3/device/{token}", self.fake.url());
        self.client.post(url).headers(headers).body(body.to_owned()).send().await
    }
}

/// (device token, extra headers, body, status, reason)
type Refusal<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, u16, &'a str);

const ALERT: &str = r#"{"aps":{"alert":{"title":"hi"}},"k":"v"}"#;

async fn reason(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["reason"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn apns_accepts_and_records() {
    let apns = Apns::start().await;
    let id = "123e4567-e89b-12d3-a456-426614174000";
    let extra = [("apns-id", id), ("apns-priority", "10"), ("apns-expiration", "0"), ("apns-collapse-id", "c1")];
    let response = apns.push("abc123", &extra, ALERT).await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["apns-id"], id);
    assert_eq!(response.bytes().await.unwrap().len(), 0);

    let background = [("apns-push-type", "background"), ("apns-priority", "5")];
    let response = apns.push("def456", &background, r#"{"aps":{"content-available":1}}"#).await.unwrap();
    assert_eq!(response.status(), 200);

    let delivered = apns.fake.delivered();
    assert_eq!(delivered.len(), 2);
    assert_eq!((delivered[0].token.as_str(), delivered[0].team_id.as_str()), ("abc123", "TEAM123456"));
    assert_eq!(delivered[0].headers["apns-topic"], TOPIC);
    assert_eq!(delivered[0].headers["apns-collapse-id"], "c1");
    assert!(!delivered[0].headers.contains_key("authorization"));
    assert_eq!(delivered[0].body["k"], "v");
    assert_eq!(delivered[1].headers["apns-push-type"], "background");
    assert_eq!((apns.fake.attempts("abc123"), apns.fake.requests()), (1, 2));
}

#[tokio::test]
async fn apns_refuses_like_apple() {
    let apns = Apns::start().await;
    let (other_pem, _) = ec_p8_key();
    let url = format!("{}/3/device/abc", apns.fake.url());
    let with_token = |token: String| {
        apns.client
            .post(&url)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", TOPIC)
            .header("apns-push-type", "alert")
            .body(ALERT)
            .send()
    };
    let forged = with_token(es256(&other_pem, "KEY1234567", "TEAM123456", now())).await.unwrap();
    assert_eq!(reason(forged).await, (403, "InvalidProviderToken".into()));
    let stale = with_token(es256(&apns.pem, "KEY1234567", "TEAM123456", now() - 3700)).await.unwrap();
    assert_eq!(reason(stale).await, (403, "ExpiredProviderToken".into()));
    let unknown_key = with_token(es256(&apns.pem, "OTHERKEY00", "TEAM123456", now())).await.unwrap();
    assert_eq!(reason(unknown_key).await, (403, "InvalidProviderToken".into()));
    let anonymous = apns.client.post(&url).body(ALERT).send().await.unwrap();
    assert_eq!(reason(anonymous).await, (403, "MissingProviderToken".into()));

    let cases: &[Refusal] = &[
        ("abc", &[("apns-topic", "com.example.other")], ALERT, 400, "TopicDisallowed"),
        ("abc", &[("apns-push-type", "voip")], ALERT, 400, "InvalidPushType"),
        ("abc", &[("apns-push-type", "background")], r#"{"aps":{"content-available":1}}"#, 400, "BadPriority"),
        ("abc", &[("apns-id", "not-a-uuid")], ALERT, 400, "BadMessageId"),
        ("abc", &[], "", 400, "PayloadEmpty"),
        ("abc", &[], r#"{"alert":"no aps"}"#, 400, "BadPayload"),
        ("bad-token", &[], ALERT, 400, "BadDeviceToken"),
        ("not%20hex", &[], ALERT, 400, "BadDeviceToken"),
        ("gone-1", &[], ALERT, 410, "Unregistered"),
    ];
    for &(token, extra, body, status, why) in cases {
        let response = apns.push(token, extra, body).await.unwrap();
        assert_eq!(reason(response).await, (status, why.to_owned()), "{token} {extra:?} {body}");
    }
    let huge = format!(r#"{{"aps":{{"alert":"x"}},"pad":"{}"}}"#, "x".repeat(4097 - 30));
    assert_eq!(huge.len(), 4097);
    assert_eq!(reason(apns.push("abc", &[], &huge).await.unwrap()).await, (413, "PayloadTooLarge".into()));

    let gone: Value = apns.push("gone-1", &[], ALERT).await.unwrap().json().await.unwrap();
    assert!(gone["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    let wrong_path = apns.client.post(format!("{}/3/devices/abc", apns.fake.url())).send().await.unwrap();
    assert_eq!(reason(wrong_path).await, (404, "BadPath".into()));
    assert!(apns.fake.delivered().is_empty());
    assert_eq!(apns.fake.attempts("gone-1"), 2);
}

#[tokio::test]
async fn apns_scripted_failures_then_success() {
    let apns = Apns::start().await;
    let busy = apns.push("busy-1", &[], ALERT).await.unwrap();
    assert_eq!(busy.headers()["retry-after"], "1");
    assert_eq!(reason(busy).await, (429, "TooManyRequests".into()));
    assert_eq!(reason(apns.push("flaky-1", &[], ALERT).await.unwrap()).await, (503, "ServiceUnavailable".into()));
    assert!(apns.push("reset-1", &[], ALERT).await.is_err(), "the stream is reset");
    for token in ["busy-1", "flaky-1", "reset-1"] {
        assert_eq!(apns.push(token, &[], ALERT).await.unwrap().status(), 200, "{token} second try");
        assert_eq!(apns.fake.attempts(token), 2);
    }
    assert_eq!(apns.fake.delivered().len(), 3);

    // HTTP/1.1 is served as well.
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let response = http1.post(format!("{}/3/device/abc", apns.fake.url())).body(ALERT).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
    assert_eq!(reason(response).await, (403, "MissingProviderToken".into()));
}

struct Fcm {
    fake: FakeFcm,
    pem: String,
    client: reqwest::Client,
}

const EMAIL: &str = "push@project-a.iam.gserviceaccount.com";

impl Fcm {
    async fn start() -> Fcm {
        let (pem, public_key) = rsa_key();
        let (_, other_key) = rsa_key();
        let accounts = vec![
            FcmAccount { project_id: "project-a".into(), client_email: EMAIL.into(), public_key },
            FcmAccount {
                project_id: "project-b".into(),
                client_email: "push@project-b.iam.gserviceaccount.com".into(),
                public_key: other_key,
            },
        ];
        Fcm { fake: FakeFcm::start(accounts).await, pem, client: h2c_client() }
    }

    async fn exchange(&self, claims: Value) -> (u16, Value) {
        let form =
            [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &rs256(&self.pem, claims))];
        let response = self.client.post(self.fake.token_uri()).form(&form).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn access_token(&self) -> String {
        let claims =
            json!({"iss": EMAIL, "scope": SCOPE, "aud": self.fake.token_uri(), "iat": now(), "exp": now() + 3600});
        let (status, body) = self.exchange(claims).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn send(&self, access_token: &str, project: &str, message: Value) -> reqwest::Response {
        let url = format!("{}/v1/projects/{project}/messages:send", self.fake.url());
        self.client.post(url).bearer_auth(access_token).json(&json!({ "message": message })).send().await.unwrap()
    }
}

/// (status, error.status, details[0].errorCode)
async fn google_error(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let error_code = body["error"]["details"][0]["errorCode"].as_str().unwrap_or_default().to_owned();
    (status, body["error"]["status"].as_str().unwrap().to_owned(), error_code)
}

#[tokio::test]
async fn fcm_token_endpoint_checks_the_assertion() {
    let fcm = Fcm::start().await;
    let (a, b) = (fcm.access_token().await, fcm.access_token().await);
    assert_ne!(a, b);
    let good = json!({"iss": EMAIL, "scope": SCOPE, "aud": fcm.fake.token_uri(), "iat": now(), "exp": now() + 3600});
    let (status, body) = fcm.exchange(good.clone()).await;
    assert_eq!((status, &body["token_type"], &body["expires_in"]), (200, &json!("Bearer"), &json!(3600)));

    let mut refused = Vec::new();
    for (claim, value) in [
        ("aud", json!("https://oauth2.googleapis.com/token")),
        ("scope", json!("https://www.googleapis.com/auth/cloud-platform")),
        ("iss", json!("push@project-b.iam.gserviceaccount.com")), // signed with the wrong key
        ("exp", json!(now() + 7200)),
    ] {
        let mut claims = good.clone();
        claims[claim] = value;
        let (status, body) = fcm.exchange(claims).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{claim}: {body}");
        refused.push(body["error_description"].as_str().unwrap().to_owned());
    }
    assert!(refused[2].contains("Signature"), "{refused:?}");
    assert_eq!(fcm.fake.token_requests(), 7);
}

#[tokio::test]
async fn fcm_sends_refuses_and_scripts() {
    let fcm = Fcm::start().await;
    let token = fcm.access_token().await;
    let response = fcm.send(&token, "project-a", json!({"token": "dev-1", "data": {"k": "v"}})).await;
    assert_eq!(response.status(), 200);
    let name: Value = response.json().await.unwrap();
    assert!(name["name"].as_str().unwrap().starts_with("projects/project-a/messages/"));

    let cases = [
        ("gone-1", 404, "NOT_FOUND", "UNREGISTERED"),
        ("bad-1", 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
        ("mismatch-1", 403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
        ("busy-1", 429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
        ("flaky-1", 503, "UNAVAILABLE", "UNAVAILABLE"),
    ];
    for (device, status, google_status, error_code) in cases {
        let response = fcm.send(&token, "project-a", json!({"token": device, "data": {}})).await;
        if device == "busy-1" {
            assert_eq!(response.headers()["retry-after"], "1");
        }
        assert_eq!(google_error(response).await, (status, google_status.into(), error_code.into()), "{device}");
    }
    let url = format!("{}/v1/projects/project-a/messages:send", fcm.fake.url());
    let reset = fcm.client.post(url).bearer_auth(&token).json(&json!({"message": {"token": "reset-1"}})).send().await;
    assert!(reset.is_err(), "the stream is reset");
    for device in ["busy-1", "flaky-1", "reset-1"] {
        assert_eq!(fcm.send(&token, "project-a", json!({"token": device})).await.status(), 200, "{device}");
    }

    let refusals = [
        (fcm.send(&token, "project-b", json!({"token": "dev-2"})).await, 403, "PERMISSION_DENIED"),
        (fcm.send("ya29.forged", "project-a", json!({"token": "dev-2"})).await, 401, "UNAUTHENTICATED"),
        (fcm.send(&token, "project-a", json!({"token": "dev-2", "data": {"n": 1}})).await, 400, "INVALID_ARGUMENT"),
        (fcm.send(&token, "project-a", json!({"token": "dev-2", "priority": "high"})).await, 400, "INVALID_ARGUMENT"),
        (
            fcm.send(&token, "project-a", json!({"token": "dev-2", "data": {"k": "x".repeat(4096)}})).await,
            400,
            "INVALID_ARGUMENT",
        ),
    ];
    for (response, status, google_status) in refusals {
        let (got_status, got_google_status, error_code) = google_error(response).await;
        assert_eq!((got_status, got_google_status.as_str()), (status, google_status));
        assert_ne!(error_code, "UNREGISTERED");
    }
    assert_eq!(fcm.fake.attempts("dev-2"), 5);

    fcm.fake.expire_access_tokens();
    assert_eq!(fcm.send(&token, "project-a", json!({"token": "dev-3"})).await.status(), 401);

    let delivered = fcm.fake.delivered();
    let tokens: Vec<&str> = delivered.iter().map(|d| d.token.as_str()).collect();
    assert_eq!(tokens, ["dev-1", "busy-1", "flaky-1", "reset-1"]);
    assert_eq!((delivered[0].project.as_str(), delivered[0].data["k"].as_str()), ("project-a", "v"));
    assert_eq!(delivered[0].body["message"]["data"]["k"], "v");
    assert_eq!(fcm.fake.requests(), 16);
}
