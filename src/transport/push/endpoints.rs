//! Where the push roles connect is the operator's choice, never an application's: the provider
//! base URLs come from `TP_APNS_URL` / `TP_FCM_URL`, and the only part of an application record
//! that names a host, a Google service account's `token_uri`, must be one of the endpoints the
//! operator allows (`TP_PUSH_TOKEN_URLS`). Otherwise registering an application would let its
//! owner make the workers open connections to any address they can reach (internal services,
//! cloud metadata endpoints) and carry a signed assertion there.
//!
//! [`check_endpoints`] runs where an application is registered (`app put`, `PUT /apps`) and the
//! same rules run again where the FCM client is built, since a record can also reach the
//! workers on `system` from an older binary or written by hand.

use serde_json::{Map, Value};

use crate::config::PushConfig;
use crate::model::Application;

/// Google's OAuth token endpoint: what a service account without `token_uri` uses.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// Longest `project_id` accepted (Google's are at most 30 characters, domain-scoped ones a bit
/// more); anything longer is not a project.
const MAX_PROJECT_ID: usize = 100;
/// How much of a refused value an error repeats: enough to recognise it, not a log flood.
const SHOWN: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("fcm.service_account.token_uri must be a string")]
    TokenUriType,
    #[error(
        "fcm.service_account.token_uri {uri:?} is not an allowed OAuth token endpoint (TP_PUSH_TOKEN_URLS: {allowed}); \
         applications cannot choose where the workers connect"
    )]
    TokenUri { uri: String, allowed: String },
    #[error(
        "fcm.service_account.project_id {0:?} is not a Firebase project id (letters, digits and - . _ :, \
         starting with a letter or digit, at most 100 characters)"
    )]
    ProjectId(String),
}

fn shown(s: &str) -> String {
    s.chars().take(SHOWN).collect()
}

/// The OAuth token endpoint of service account `sa`, if `allowed` holds it: exact match after
/// trimming one trailing `/` on either side (the configuration trims its entries already). An
/// absent `token_uri` means Google's, which must be allowed too.
pub fn token_uri<'a>(sa: &'a Map<String, Value>, allowed: &[String]) -> Result<&'a str, EndpointError> {
    let uri = match sa.get("token_uri") {
        None => GOOGLE_TOKEN_URI,
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(EndpointError::TokenUriType),
    };
    let wanted = uri.strip_suffix('/').unwrap_or(uri);
    if allowed.iter().any(|a| a.strip_suffix('/').unwrap_or(a) == wanted) {
        Ok(uri)
    } else {
        Err(EndpointError::TokenUri { uri: shown(uri), allowed: allowed.join(",") })
    }
}

/// The service account's `project_id`, if it is one: it becomes a path segment of the send URL,
/// so `/`, `?`, `#`, `%` or a dot segment would move the request elsewhere on the host.
pub fn project_id(sa: &Map<String, Value>) -> Result<&str, EndpointError> {
    let id = sa.get("project_id").and_then(Value::as_str).unwrap_or_default();
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
        && id.len() <= MAX_PROJECT_ID;
    if ok {
        Ok(id)
    } else {
        Err(EndpointError::ProjectId(shown(id)))
    }
}

/// Refuses an application whose record would choose a network destination: a `token_uri` not
/// on `TP_PUSH_TOKEN_URLS`, or a `project_id` that would rewrite the send URL's path. (`apn.url`
/// and `fcm.url` are refused earlier, by the record's schema.)
pub fn check_endpoints(app: &Application, push: &PushConfig) -> Result<(), EndpointError> {
    if let Some(fcm) = &app.fcm {
        token_uri(&fcm.service_account, &push.token_urls)?;
        project_id(&fcm.service_account)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sa(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn google() -> Vec<String> {
        vec![GOOGLE_TOKEN_URI.to_string()]
    }

    #[test]
    fn token_uri_must_be_on_the_allow_list() {
        assert_eq!(token_uri(&sa(json!({})), &google()), Ok(GOOGLE_TOKEN_URI));
        let with_slash = sa(json!({"token_uri": "https://oauth2.googleapis.com/token/"}));
        assert!(token_uri(&with_slash, &google()).is_ok(), "one trailing slash is the same endpoint");
        for evil in [
            "http://127.0.0.1:8080/token",
            "http://169.254.169.254/computeMetadata/v1/",
            "https://oauth2.googleapis.com/token/../x",
            "https://oauth2.googleapis.com/token?x=1",
            "https://oauth2.googleapis.com.evil.example/token",
            "HTTPS://OAUTH2.GOOGLEAPIS.COM/TOKEN",
            "",
        ] {
            let err = token_uri(&sa(json!({ "token_uri": evil })), &google()).unwrap_err();
            assert!(matches!(err, EndpointError::TokenUri { .. }), "{evil}: {err}");
            assert!(err.to_string().contains("TP_PUSH_TOKEN_URLS"), "{err}");
        }
        assert_eq!(token_uri(&sa(json!({"token_uri": 7})), &google()), Err(EndpointError::TokenUriType));
        assert_eq!(token_uri(&sa(json!({"token_uri": null})), &google()), Err(EndpointError::TokenUriType));
        // An operator who allows only a proxy also refuses Google's default.
        let proxy = vec!["https://proxy.internal/token".to_string()];
        assert!(token_uri(&sa(json!({})), &proxy).is_err());
        assert!(token_uri(&sa(json!({"token_uri": "https://proxy.internal/token"})), &proxy).is_ok());
    }

    #[test]
    fn project_ids_cannot_rewrite_the_send_path() {
        for good in ["my-project-123", "bench", "example.com:my-project"] {
            assert_eq!(project_id(&sa(json!({ "project_id": good }))), Ok(good));
        }
        for bad in ["..", ".", "a/../../x", "a?b", "a#b", "a%2Fb", "a b", "", "-x"] {
            assert!(project_id(&sa(json!({ "project_id": bad }))).is_err(), "{bad:?}");
        }
        assert!(project_id(&sa(json!({ "project_id": "a".repeat(101) }))).is_err());
    }

    #[test]
    fn an_application_is_checked_against_the_operators_list() {
        let app = |token_uri: &str| {
            let doc = json!({"id": "a1", "fcm": {"service_account": {"project_id": "p", "client_email": "e",
                "private_key": "k", "token_uri": token_uri}}});
            Application::from_json(doc.to_string().as_bytes()).expect("valid record")
        };
        let push = PushConfig { token_urls: google(), ..PushConfig::default() };
        assert!(check_endpoints(&app(GOOGLE_TOKEN_URI), &push).is_ok());
        let refused = check_endpoints(&app("http://127.0.0.1:9/token"), &push).unwrap_err();
        assert!(refused.to_string().contains("127.0.0.1:9"), "{refused}");
        let no_push = Application::from_json(br#"{"id":"a2"}"#).expect("valid record");
        assert!(check_endpoints(&no_push, &PushConfig::default()).is_ok());
    }
}
