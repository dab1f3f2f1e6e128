//! HS256 JSON Web Tokens for the socket handshake (CONTRACT section 7): claims
//! `application_id`, `device_id`, `exp`, optional `user_id`.
//!
//! Only HS256 is accepted, whatever the header says (the `alg: none` and algorithm-confusion
//! attacks start from trusting the header). The signature is checked in constant time before
//! any claim is believed; the application id is read first, unverified, only to pick the key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest token accepted; a query string or frame longer than this is not a token.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub application_id: String,
    pub device_id: String,
    /// Expiry, seconds since the Unix epoch. Required: a socket token that never expires
    /// cannot be revoked.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Why a token was refused. [`JwtError::Expired`] maps to close code 4002, the rest to 4001.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm `{0}` (only HS256)")]
    Algorithm(String),
    #[error("unknown application `{0}`")]
    UnknownApplication(String),
    #[error("application `{0}` has no jwt_secret and TP_JWT_SECRET is not set")]
    NoSecret(String),
    #[error("bad signature")]
    Signature,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

/// Only the field that selects the key, read before the signature is checked.
#[derive(Deserialize)]
struct Unverified {
    application_id: String,
}

/// Verifies `token`: `secret_of(application_id)` gives the application's key (`Err` when the
/// application is unknown or has none), then the signature, the claims and `exp` against `now`
/// (seconds).
pub fn verify(
    token: &str,
    now: u64,
    secret_of: impl FnOnce(&str) -> Result<String, JwtError>,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    let header: Header = decode_part(h)?;
    if header.alg != "HS256" {
        return Err(JwtError::Algorithm(header.alg));
    }
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| JwtError::Malformed("payload is not base64url"))?;
    let unverified: Unverified =
        serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed("payload lacks a string application_id"))?;
    let secret = secret_of(&unverified.application_id)?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let mut mac = mac(&secret);
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&signature).map_err(|_| JwtError::Signature)?;
    let claims: Claims = serde_json::from_slice(&payload)
        .map_err(|_| JwtError::Malformed("claims need string application_id and device_id, and a numeric exp"))?;
    if claims.device_id.is_empty() || claims.device_id.contains('|') {
        return Err(JwtError::Malformed("device_id is empty or contains `|`"));
    }
    if claims.exp <= now {
        return Err(JwtError::Expired { exp: claims.exp, now });
    }
    Ok(claims)
}

/// Mints an HS256 token (the `token` subcommand, tests, the load tool).
pub fn sign(claims: &Claims, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // A struct of strings and integers always serializes.
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let mut mac = mac(secret);
    mac.update(header.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

fn mac(secret: &str) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    HmacSha256::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed("header is not a JSON object with alg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims { application_id: "a1".into(), device_id: "d1".into(), exp, user_id: Some("u1".into()) }
    }

    fn key(app: &str) -> Result<String, JwtError> {
        match app {
            "a1" => Ok("s3cret".into()),
            other => Err(JwtError::UnknownApplication(other.into())),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips_its_claims() {
        let t = sign(&claims(2_000), "s3cret");
        assert_eq!(verify(&t, 1_000, key), Ok(claims(2_000)));
    }

    #[test]
    fn expiry_wrong_key_tampering_and_algorithms_are_refused() {
        assert_eq!(
            verify(&sign(&claims(1_000), "s3cret"), 1_000, key),
            Err(JwtError::Expired { exp: 1_000, now: 1_000 })
        );
        assert_eq!(verify(&sign(&claims(2_000), "other"), 1_000, key), Err(JwtError::Signature));
        let t = sign(&claims(2_000), "s3cret");
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"application_id":"a1","device_id":"d2","exp":2000}"#);
        parts[1] = &forged;
        assert_eq!(verify(&parts.join("."), 1_000, key), Err(JwtError::Signature));
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(verify(&none, 1_000, key), Err(JwtError::Algorithm("none".into())));
        let other_app = Claims { application_id: "a2".into(), ..claims(2_000) };
        assert_eq!(verify(&sign(&other_app, "s3cret"), 1_000, key), Err(JwtError::UnknownApplication("a2".into())));
    }

    #[test]
    fn garbage_never_panics() {
        for t in ["", ".", "..", "a.b.c", "a.b.c.d", "eyJhbGciOiJIUzI1NiJ9.e30.", &"x".repeat(5000)] {
            assert!(verify(t, 0, key).is_err(), "{t}");
        }
        // Correctly signed, but without `exp`: refused.
        let (h, p) = (
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"application_id":"a1","device_id":"d"}"#),
        );
        let mut m = mac("s3cret");
        m.update(format!("{h}.{p}").as_bytes());
        let no_exp = format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()));
        assert!(matches!(verify(&no_exp, 0, key), Err(JwtError::Malformed(_))));
    }
}
