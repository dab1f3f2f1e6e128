//! The provider JWTs: ES256 for APNs token auth (.p8 key), RS256 for Google's OAuth2
//! JWT-bearer grant (service-account key). Signed with ring (constant time); keys are PKCS#8
//! PEM, as Apple and Google hand them out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use serde_json::Value;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

/// A parsed signing key.
pub enum SigningKey {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Es256(_) => "SigningKey::Es256",
            SigningKey::Rs256(_) => "SigningKey::Rs256",
        })
    }
}

fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
    match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        Ok(PrivateKeyDer::Pkcs8(der)) => Ok(der.secret_pkcs8_der().to_vec()),
        Ok(_) => Err("the key is not PKCS#8 (`BEGIN PRIVATE KEY`)".into()),
        Err(e) => Err(format!("not a PEM private key: {e}")),
    }
}

impl SigningKey {
    /// An APNs .p8 key (P-256).
    pub fn es256(pem: &str) -> Result<SigningKey, String> {
        let der = pkcs8_der(pem)?;
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
            .map(SigningKey::Es256)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))
    }

    /// A Google service-account key (RSA).
    pub fn rs256(pem: &str) -> Result<SigningKey, String> {
        let der = pkcs8_der(pem)?;
        RsaKeyPair::from_pkcs8(&der).map(SigningKey::Rs256).map_err(|e| format!("not an RSA PKCS#8 key: {e}"))
    }

    /// `header.claims.signature`; `kid` goes into the header when given.
    pub fn sign(&self, kid: Option<&str>, claims: &Value) -> Result<String, String> {
        let alg = match self {
            SigningKey::Es256(_) => "ES256",
            SigningKey::Rs256(_) => "RS256",
        };
        let mut header = serde_json::json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = Value::from(kid);
        }
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let rng = SystemRandom::new();
        let signature = match self {
            SigningKey::Es256(k) => k.sign(&rng, input.as_bytes()).map(|s| s.as_ref().to_vec()),
            SigningKey::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).map(|()| sig)
            }
        }
        .map_err(|_| "signing failed".to_string())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
    use std::process::Command;

    fn openssl_key(args: &[&str]) -> String {
        let out = Command::new("openssl").arg("genpkey").args(args).output().expect("openssl CLI");
        String::from_utf8(out.stdout).unwrap_or_default()
    }

    fn verify(jwt: &str, check: impl Fn(&[u8], &[u8]) -> bool) -> Value {
        let parts: Vec<&str> = jwt.split('.').collect();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap_or_default();
        assert!(check(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig), "signature verifies");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn es256_and_rs256_tokens_verify_with_the_public_keys() {
        let ec = openssl_key(&["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]);
        let key = SigningKey::es256(&ec).expect("P-256 key");
        let SigningKey::Es256(pair) = &key else { panic!("es256") };
        let public = pair.public_key().as_ref().to_vec();
        let jwt = key.sign(Some("KID1"), &serde_json::json!({"iss": "TEAM", "iat": 1})).unwrap();
        let header =
            verify(&jwt, |m, s| UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public).verify(m, s).is_ok());
        assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some("ES256"), Some("KID1")));

        let rsa = openssl_key(&["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
        let key = SigningKey::rs256(&rsa).expect("RSA key");
        let SigningKey::Rs256(pair) = &key else { panic!("rs256") };
        let public = pair.public().as_ref().to_vec();
        let jwt = key.sign(None, &serde_json::json!({"iss": "sa@x"})).unwrap();
        let header =
            verify(&jwt, |m, s| UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &public).verify(m, s).is_ok());
        assert_eq!(header["alg"], "RS256");
        assert!(SigningKey::es256(&rsa).is_err() && SigningKey::rs256("nonsense").is_err());
    }
}
