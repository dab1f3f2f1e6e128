//! `wss://` for the sockets transport: a rustls server configuration from the PEM files of
//! CONTRACT section 2 (`TP_SCKT_KEY_SSL`, `TP_SCKT_CERT_FILE`, `TP_SCKT_CA_CERT`,
//! `TP_SCKT_KEY_PASSPHRASE`).
//!
//! rustls reads only unencrypted keys; passphrase-protected PKCS#8 (`BEGIN ENCRYPTED PRIVATE
//! KEY`, what `openssl genpkey -aes-256-cbc` writes) is decrypted here with the pure-Rust
//! `pkcs8` crate. Legacy OpenSSL-encrypted PEM (`Proc-Type: 4,ENCRYPTED`) is refused with the
//! command that converts it. The ring provider is named explicitly, so no process-wide default
//! provider has to be installed (and none can be ambiguous).

use std::path::Path;
use std::sync::Arc;

use pkcs8::der::Decode;
use pkcs8::{EncryptedPrivateKeyInfo, SecretDocument};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::SocketsConfig;
use crate::error::WorkerError;

/// Builds the acceptor when TLS is on, `None` otherwise. Every failure names the variable and
/// the file (exit 64); the passphrase itself never appears in an error.
pub fn acceptor(cfg: &SocketsConfig) -> Result<Option<TlsAcceptor>, WorkerError> {
    if !cfg.ssl {
        return Ok(None);
    }
    let (Some(cert_file), Some(key_file)) = (cfg.cert_file.as_deref(), cfg.key_file.as_deref()) else {
        return Err(WorkerError::Usage("TP_SCKT_SSL is on but TP_SCKT_CERT_FILE or TP_SCKT_KEY_SSL is not set".into()));
    };
    let mut chain = certificates("TP_SCKT_CERT_FILE", cert_file)?;
    if let Some(ca) = cfg.ca_cert.as_deref() {
        chain.extend(certificates("TP_SCKT_CA_CERT", ca)?);
    }
    let key = private_key(key_file, cfg.key_passphrase.as_deref())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WorkerError::Fatal(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            WorkerError::Usage(format!(
                "TP_SCKT_KEY_SSL {} does not match TP_SCKT_CERT_FILE {}: {e}",
                key_file.display(),
                cert_file.display()
            ))
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn read(var: &str, path: &Path) -> Result<Vec<u8>, WorkerError> {
    std::fs::read(path).map_err(|e| WorkerError::Usage(format!("{var} {}: {e}", path.display())))
}

fn certificates(var: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, WorkerError> {
    let pem = read(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WorkerError::Usage(format!("{var} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(WorkerError::Usage(format!("{var} {}: no PEM certificate in the file", path.display())));
    }
    Ok(certs)
}

fn private_key(path: &Path, passphrase: Option<&str>) -> Result<PrivateKeyDer<'static>, WorkerError> {
    let pem = read("TP_SCKT_KEY_SSL", path)?;
    decode_private_key(&pem, passphrase, "TP_SCKT_KEY_PASSPHRASE")
        .map_err(|why| WorkerError::Usage(format!("TP_SCKT_KEY_SSL {}: {why}", path.display())))
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1; or encrypted PKCS#8 with `passphrase`, named
/// `passphrase_name` in errors). Errors never contain the passphrase itself.
pub fn decode_private_key(
    pem: &[u8],
    passphrase: Option<&str>,
    passphrase_name: &str,
) -> Result<PrivateKeyDer<'static>, String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("legacy OpenSSL-encrypted key; convert it with \
             `openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.pem -out key.pem`"
            .into());
    }
    if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
        let Some(pass) = passphrase else {
            return Err(format!("the key is encrypted and no {passphrase_name} is set"));
        };
        let (_, doc) = SecretDocument::from_pem(&text).map_err(|e| format!("not a PEM PKCS#8 document: {e}"))?;
        let info =
            EncryptedPrivateKeyInfo::from_der(doc.as_bytes()).map_err(|e| format!("not encrypted PKCS#8: {e}"))?;
        let plain = info
            .decrypt(pass.as_bytes())
            .map_err(|_| format!("cannot decrypt: wrong {passphrase_name} or unsupported cipher"))?;
        return Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(plain.as_bytes().to_vec())));
    }
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no usable PEM private key: {e}"))
}

/// Test keys made by the openssl CLI, shared by the TLS and the APNs certificate-auth tests.
#[cfg(test)]
pub(crate) mod test_keys {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl").args(args).output().expect("the openssl CLI makes test keys");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// An EC P-256 key (`key.pem`), the same key as PKCS#8 encrypted with passphrase `pw`
    /// (`enc.pem`), and a self-signed certificate for `cn` (`cert.pem`), in `dir`.
    pub fn ec_key_and_cert(dir: &Path, cn: &str) -> (PathBuf, PathBuf, PathBuf) {
        let (key, enc, cert) = (dir.join("key.pem"), dir.join("enc.pem"), dir.join("cert.pem"));
        let s = |p: &Path| p.to_string_lossy().into_owned();
        openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &s(&key)]);
        openssl(&["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:pw", "-in", &s(&key), "-out", &s(&enc)]);
        let subject = format!("/CN={cn}");
        openssl(&["req", "-x509", "-new", "-key", &s(&key), "-subj", &subject, "-days", "2", "-out", &s(&cert)]);
        (key, enc, cert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: &Path, cert: &Path, pass: Option<&str>) -> SocketsConfig {
        SocketsConfig {
            host: "127.0.0.1".into(),
            port: 0,
            ssl: true,
            key_file: Some(key.into()),
            cert_file: Some(cert.into()),
            key_passphrase: pass.map(String::from),
            ca_cert: None,
            ..SocketsConfig::default()
        }
    }

    #[test]
    fn plain_and_encrypted_pkcs8_keys_load_and_bad_ones_name_the_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, enc, cert) = test_keys::ec_key_and_cert(dir.path(), "localhost");
        assert!(acceptor(&cfg(&key, &cert, None)).expect("plain key").is_some());
        assert!(acceptor(&cfg(&enc, &cert, Some("pw"))).expect("encrypted key").is_some());
        let wrong = acceptor(&cfg(&enc, &cert, Some("nope"))).err().expect("wrong passphrase fails").to_string();
        assert!(wrong.contains("TP_SCKT_KEY_PASSPHRASE") && !wrong.contains("nope"), "{wrong}");
        let missing = acceptor(&cfg(&enc, &cert, None)).err().expect("no passphrase fails").to_string();
        assert!(missing.contains("is encrypted"), "{missing}");
        let swapped = acceptor(&cfg(&cert, &cert, None)).err().expect("a cert is no key").to_string();
        assert!(swapped.contains("TP_SCKT_KEY_SSL"), "{swapped}");
        let absent = acceptor(&cfg(&dir.path().join("none.pem"), &cert, None)).err().expect("missing file").to_string();
        assert!(absent.contains("none.pem"), "{absent}");
    }
}
