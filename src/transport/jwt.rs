//! HS256 JSON Web Tokens for the socket handshake and `GET /objects` (CONTRACT section 7):
//! claims `application_id`, `device_id`, `exp`, optional `user_id`, `iat`, `nbf`.
//!
//! Only HS256 is accepted, whatever the header says (the `alg: none` and algorithm-confusion
//! attacks start from trusting the header). The signature is checked in constant time before
//! any claim is believed; the application id is read first, unverified, only to pick the key,
//! and an unknown application is checked against a throw-away key so that neither the answer
//! nor its timing tells which application ids exist.
//!
//! Every refusal is [`JwtError::Invalid`], displayed to clients as the same "invalid token";
//! its [`Invalid`] reason is for logs and metrics only. [`JwtError::Expired`] is distinct (the
//! contract's `TOKEN_EXPIRED`) and is only reached once the signature and ids are verified.
//!
//! Why not the `jsonwebtoken` crate: since 10.0 it needs a crypto backend feature, either
//! `aws_lc_rs` (a C and cmake build) or `rust_crypto`, which pulls RSA, P-256/P-384 and
//! Ed25519 implementations and second copies of `hmac`/`sha2` at new majors, to verify one
//! HMAC; the 9.x line that used `ring` is superseded. The checks here are few and tested by
//! the fuzz test below and tests/abuse_sockets.rs.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::model::id::validate_ident;

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

/// Why a token was refused, for logs and metrics; clients see one message for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    TooLong,
    Shape,
    Header,
    Algorithm,
    Payload,
    UnknownApplication,
    NoSecret,
    Signature,
    Claims,
    Ids,
    NotYetValid,
    Lifetime,
}

impl Invalid {
    /// A fixed label (metrics `reason`, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Invalid::TooLong => "too_long",
            Invalid::Shape => "not_three_parts",
            Invalid::Header => "bad_header",
            Invalid::Algorithm => "algorithm",
            Invalid::Payload => "bad_payload",
            Invalid::UnknownApplication => "unknown_application",
            Invalid::NoSecret => "no_secret",
            Invalid::Signature => "signature",
            Invalid::Claims => "bad_claims",
            Invalid::Ids => "bad_ids",
            Invalid::NotYetValid => "not_yet_valid",
            Invalid::Lifetime => "lifetime_too_long",
        }
    }
}

/// Why a token was refused. [`JwtError::Expired`] maps to close code 4002, the rest to 4001.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("invalid token")]
    Invalid(Invalid),
    #[error("token expired")]
    Expired { exp: u64, now: u64 },
}

impl JwtError {
    /// The detailed reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::Invalid(r) => r.as_str(),
            JwtError::Expired { .. } => "expired",
        }
    }
}

/// The time checks: `now` and the longest lifetime accepted, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now: u64,
    pub max_lifetime: u64,
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

/// The verified payload: the claims, and the registered time claims besides `exp`.
#[derive(Deserialize)]
struct Signed {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
}

fn invalid(r: Invalid) -> JwtError {
    JwtError::Invalid(r)
}

/// Verifies `token`: `secret_of(application_id)` gives the application's key (`Err` with
/// [`Invalid::UnknownApplication`] or [`Invalid::NoSecret`] when there is none), then the
/// signature, the claims (ids usable in registry keys, as minting requires), `nbf`, `exp` and
/// the lifetime (`exp - iat`, and `exp - now`, at most `clock.max_lifetime`).
pub fn verify(
    token: &str,
    clock: Clock,
    secret_of: impl FnOnce(&str) -> Result<String, Invalid>,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(invalid(Invalid::TooLong));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid(Invalid::Shape));
    };
    let header: Header =
        URL_SAFE_NO_PAD.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(invalid(Invalid::Header))?;
    if header.alg != "HS256" {
        return Err(invalid(Invalid::Algorithm));
    }
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| invalid(Invalid::Payload))?;
    let unverified: Unverified = serde_json::from_slice(&payload).map_err(|_| invalid(Invalid::Payload))?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid(Invalid::Signature))?;
    // Without a key the MAC is still computed (with a key nobody holds), so an unknown
    // application costs what a wrong signature costs.
    let (secret, no_key) = match secret_of(&unverified.application_id) {
        Ok(secret) => (secret, None),
        Err(why) => (unguessable_key(), Some(why)),
    };
    let mut mac = mac(&secret);
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let verified = mac.verify_slice(&signature);
    if let Some(why) = no_key {
        return Err(invalid(why));
    }
    verified.map_err(|_| invalid(Invalid::Signature))?;
    let Signed { claims, iat, nbf } = serde_json::from_slice(&payload).map_err(|_| invalid(Invalid::Claims))?;
    let ids_ok = validate_ident("application_id", &claims.application_id).is_ok()
        && validate_ident("device_id", &claims.device_id).is_ok()
        && claims.user_id.as_deref().is_none_or(|u| validate_ident("user_id", u).is_ok());
    if !ids_ok {
        return Err(invalid(Invalid::Ids));
    }
    let now = clock.now;
    if nbf.is_some_and(|nbf| nbf > now) {
        return Err(invalid(Invalid::NotYetValid));
    }
    if claims.exp <= now {
        return Err(JwtError::Expired { exp: claims.exp, now });
    }
    let too_long = |from: u64| claims.exp.saturating_sub(from) > clock.max_lifetime;
    if too_long(now) || iat.is_some_and(too_long) {
        return Err(invalid(Invalid::Lifetime));
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

/// A key drawn once per process, never stored or shown.
fn unguessable_key() -> String {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        // Without the system's randomness the throw-away key is still never a real one: the
        // MAC result for an unknown application is discarded whatever it is.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000;
    const CLOCK: Clock = Clock { now: NOW, max_lifetime: 3_600 };

    fn claims(exp: u64) -> Claims {
        Claims { application_id: "a1".into(), device_id: "d1".into(), exp, user_id: Some("u1".into()) }
    }

    fn key(app: &str) -> Result<String, Invalid> {
        match app {
            "a1" => Ok("s3cret".into()),
            "nokey" => Err(Invalid::NoSecret),
            _ => Err(Invalid::UnknownApplication),
        }
    }

    /// A token of `payload` signed with the key of a1, header `{"alg":"HS256"}`.
    fn signed(payload: &str) -> String {
        let (h, p) = (URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#), URL_SAFE_NO_PAD.encode(payload));
        let mut m = mac("s3cret");
        m.update(format!("{h}.{p}").as_bytes());
        format!("{h}.{p}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips_its_claims() {
        let t = sign(&claims(2_000), "s3cret");
        assert_eq!(verify(&t, CLOCK, key), Ok(claims(2_000)));
    }

    #[test]
    fn every_refusal_looks_the_same_to_the_client_and_expiry_comes_after_the_signature() {
        let expired = verify(&sign(&claims(NOW), "s3cret"), CLOCK, key);
        assert_eq!(expired, Err(JwtError::Expired { exp: NOW, now: NOW }));
        assert_eq!(expired.unwrap_err().to_string(), "token expired");
        // An expired token under the wrong key is not "expired": nothing is believed unsigned.
        assert_eq!(verify(&sign(&claims(NOW), "other"), CLOCK, key), Err(invalid(Invalid::Signature)));
        let t = sign(&claims(2_000), "s3cret");
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"application_id":"a1","device_id":"d2","exp":2000}"#);
        parts[1] = &forged;
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[1]);
        let unknown = Claims { application_id: "a2".into(), ..claims(2_000) };
        let no_key = Claims { application_id: "nokey".into(), ..claims(2_000) };
        let cases = [
            (parts.join("."), Invalid::Signature),
            (none, Invalid::Algorithm),
            (sign(&unknown, "s3cret"), Invalid::UnknownApplication),
            (sign(&no_key, "s3cret"), Invalid::NoSecret),
            (sign(&claims(2_000), "wrong"), Invalid::Signature),
        ];
        for (token, why) in cases {
            let e = verify(&token, CLOCK, key).unwrap_err();
            assert_eq!(e, invalid(why));
            assert_eq!(e.to_string(), "invalid token", "one message whatever the reason");
        }
    }

    #[test]
    fn ids_follow_the_minting_rules() {
        for bad in ["d:1", "d 1", "d\\n", "d|1", "d/1", "", "d\\u00a01", "d\\u20281"] {
            let t = signed(&format!(r#"{{"application_id":"a1","device_id":"{bad}","exp":2000}}"#));
            assert_eq!(verify(&t, CLOCK, key), Err(invalid(Invalid::Ids)), "device_id {bad:?}");
            let t = signed(&format!(r#"{{"application_id":"a1","device_id":"d","user_id":"{bad}","exp":2000}}"#));
            assert_eq!(verify(&t, CLOCK, key), Err(invalid(Invalid::Ids)), "user_id {bad:?}");
        }
        let ok = signed(r#"{"application_id":"a1","device_id":"dé-1_x","exp":2000}"#);
        assert!(verify(&ok, CLOCK, key).is_ok());
    }

    #[test]
    fn nbf_and_the_maximum_lifetime_are_honoured() {
        let t =
            |extra: &str, exp: u64| signed(&format!(r#"{{"application_id":"a1","device_id":"d","exp":{exp}{extra}}}"#));
        assert!(verify(&t(r#","nbf":1000"#, 2_000), CLOCK, key).is_ok());
        assert_eq!(verify(&t(r#","nbf":1001"#, 2_000), CLOCK, key), Err(invalid(Invalid::NotYetValid)));
        // exp - now and exp - iat, each at most the maximum.
        assert!(verify(&t("", NOW + 3_600), CLOCK, key).is_ok());
        assert_eq!(verify(&t("", NOW + 3_601), CLOCK, key), Err(invalid(Invalid::Lifetime)));
        assert_eq!(verify(&t(r#","iat":0"#, 4_000), CLOCK, key), Err(invalid(Invalid::Lifetime)));
        assert!(verify(&t(r#","iat":900"#, 4_000), CLOCK, key).is_ok());
        assert_eq!(verify(&t("", u64::MAX), CLOCK, key), Err(invalid(Invalid::Lifetime)));
        // Wrong types are refused, not defaulted.
        assert_eq!(verify(&t(r#","nbf":"soon""#, 2_000), CLOCK, key), Err(invalid(Invalid::Claims)));
        assert_eq!(verify(&t(r#","iat":-1"#, 2_000), CLOCK, key), Err(invalid(Invalid::Claims)));
    }

    /// Deterministic xorshift: the fuzz cases are the same on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn thousands_of_mutated_tokens_are_all_refused_without_a_panic() {
        let good = sign(&claims(2_000), "s3cret");
        let other = sign(&Claims { device_id: "d2".into(), ..claims(1_999) }, "s3cret");
        assert!(verify(&good, CLOCK, key).is_ok() && verify(&other, CLOCK, key).is_ok());
        let parts: Vec<&str> = good.split('.').collect();
        let theirs: Vec<&str> = other.split('.').collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut tried = 0;
        let mut check = |t: String| {
            if t != good && t != other {
                assert!(verify(&t, CLOCK, key).is_err(), "accepted a mutated token: {t:?}");
                tried += 1;
            }
        };
        for _ in 0..4_000 {
            // Bit flips, one to three.
            let mut bytes = good.clone().into_bytes();
            for _ in 0..=rng.below(3) {
                let i = rng.below(bytes.len());
                bytes[i] ^= 1 << rng.below(8);
            }
            check(String::from_utf8_lossy(&bytes).into_owned());
            // Truncations and extensions.
            let cut = rng.below(good.len());
            check(good[..cut].to_string());
            check(format!("{good}{}", &good[..cut]));
        }
        // Swapped and transplanted parts.
        for a in 0..3 {
            for (b, their) in theirs.iter().enumerate() {
                let mut p: Vec<&str> = parts.clone();
                p.swap(a, b);
                check(p.join("."));
                let mut p = parts.clone();
                p[a] = their;
                check(p.join("."));
            }
        }
        check(format!("{}.{}", parts[0], parts[1]));
        check(format!("{good}.{}", parts[2]));
        // Correctly signed, with ids no registry key may carry (unicode spaces, controls).
        let odd = [":", "|", "/", " ", "\\n", "\\t", "\\u00a0", "\\u2028", "\\u3000", "\\u0085", "\\u007f", "\\u0000"];
        for c in odd {
            for field in ["device_id", "user_id", "application_id"] {
                let mut v = serde_json::json!({"application_id":"a1","device_id":"d","user_id":"u","exp":2_000});
                let decoded: String = serde_json::from_str(&format!("\"x{c}y\"")).unwrap_or_default();
                v[field] = decoded.into();
                check(signed(&v.to_string()));
            }
        }
        // Random bytes as whole tokens and as each part.
        for _ in 0..2_000 {
            let len = rng.below(300);
            let junk: String = (0..len).map(|_| char::from_u32(rng.below(0x3000) as u32).unwrap_or('.')).collect();
            check(junk.clone());
            let mut p: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            p[rng.below(3)] = junk;
            check(p.join("."));
        }
        assert!(tried > 15_000, "{tried}");
    }

    #[test]
    fn garbage_never_panics() {
        for t in ["", ".", "..", "a.b.c", "a.b.c.d", "eyJhbGciOiJIUzI1NiJ9.e30.", &"x".repeat(5000)] {
            assert!(verify(t, CLOCK, key).is_err(), "{t}");
        }
        // Correctly signed, but without `exp`: refused.
        let no_exp = signed(r#"{"application_id":"a1","device_id":"d"}"#);
        assert_eq!(verify(&no_exp, CLOCK, key), Err(invalid(Invalid::Claims)));
    }
}
