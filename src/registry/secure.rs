//! What connecting to a secured Redis needs beyond the URL: the CA that signs the server's
//! certificate (`TP_REDIS_CA_FILE`; the system's roots otherwise), and errors that neither leak
//! the URL's password nor retry what retrying cannot fix.
//!
//! `rediss://user:password@host:port` goes over rustls (the same TLS stack as the rest of the
//! binary, ring provider) and authenticates with Redis ACL's `AUTH user password`.

use redis::{ErrorKind, RedisError, TlsCertificates};
use tokio_rustls::rustls;

use super::RegistryError;
use crate::error::Cause;

/// The certificates for redis-rs: the CA's PEM as the only root, when given.
pub fn certificates(ca_pem: Option<&[u8]>) -> Option<TlsCertificates> {
    ca_pem.map(|pem| TlsCertificates { client_tls: None, root_cert: Some(pem.to_vec()) })
}

/// rustls needs a process-wide provider for the clients redis-rs builds; ours is ring.
/// Idempotent: an already installed provider stays.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A failed connect, classified: the server refusing our credentials or our trust refusing
/// its certificate is [`RegistryError::Refused`] (retrying cannot fix it); anything else is
/// [`RegistryError::Unavailable`]. `what` names the target without any password.
pub fn connect_failure(what: &str, e: RedisError) -> RegistryError {
    let text = e.to_string();
    let certificate = error_chain(&e).any(|s| s.downcast_ref::<rustls::Error>().is_some())
        || text.contains("certificate")
        || text.contains("UnknownIssuer");
    if e.kind() == ErrorKind::AuthenticationFailed || text.contains("WRONGPASS") || text.contains("NOAUTH") {
        RegistryError::Refused(Cause::with(
            format_args!("{what}: the server refused the user or password of TP_REDIS_URL"),
            e,
        ))
    } else if certificate {
        RegistryError::Refused(Cause::with(
            format_args!("{what}: the server's certificate is not trusted (TP_REDIS_CA_FILE names the CA to trust)"),
            e,
        ))
    } else {
        RegistryError::Unavailable(Cause::with(format_args!("connecting to {what}"), e))
    }
}

fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}
