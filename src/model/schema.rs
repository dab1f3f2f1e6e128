//! Applications and their schemas (CONTRACT section 6).
//!
//! The schema part keeps unknown keys (`properties`, `hasMany`, ... from Telepat's admin API)
//! in `extra` so an application round-trips unchanged; the credential parts reject unknown
//! keys, because a misspelt `production` silently sending to the sandbox is worse than an
//! error. Credentials never appear in `Debug` output.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ModelError;
use super::id::validate_ident;

/// Telepat's ACL bits (`controllers/security.js`): a model's `read_acl`/`write_acl` is an OR.
pub const ACL_UNAUTHENTICATED: u32 = 1;
pub const ACL_AUTHENTICATED: u32 = 2;
pub const ACL_ADMIN: u32 = 4;
pub const ACL_AUTHOR: u32 = 8;

/// Models every application has without declaring them; they get the model-wide channel
/// `blg:<app>:<model>` and no context/parent channels.
pub const BUILTIN_MODELS: [&str; 2] = ["user", "context"];

pub fn is_builtin(model: &str) -> bool {
    BUILTIN_MODELS.contains(&model)
}

/// Names no model (nor parent model) may take, because a channel key built from them would be
/// spelled like a registry key of another kind: `blg:<app>:devices:<id>` is a device record,
/// `blg:<app>:device:<id>:subscriptions` a subscription set, `users` and `filter` are parts
/// of channel masks, `index` is kept for our own keys.
pub const RESERVED_MODELS: [&str; 5] = ["devices", "device", "users", "filter", "index"];

pub fn is_reserved(model: &str) -> bool {
    RESERVED_MODELS.contains(&model)
}

/// `{"parentModel":"project"}`: objects carry the parent id in `<parentModel>_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BelongsTo {
    #[serde(rename = "parentModel")]
    pub parent_model: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BelongsTo {
    /// The object field holding the parent's id.
    pub fn parent_field(&self) -> String {
        format!("{}_id", self.parent_model)
    }
}

/// One model of an application schema.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ModelSchema {
    #[serde(rename = "belongsTo", default, skip_serializing_if = "Vec::is_empty")]
    pub belongs_to: Vec<BelongsTo>,
    #[serde(default)]
    pub write_acl: u32,
    #[serde(default)]
    pub read_acl: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub author_fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ios_push_field: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Model name → model schema.
pub type AppSchema = BTreeMap<String, ModelSchema>;

/// APNs credentials: token auth (`key` .p8 PEM + `key_id` + `team_id`) or certificate auth
/// (`certificate` PEM chain + `private_key` PEM, optionally encrypted with `passphrase`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApnCredentials {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    /// `false` (the default) sends to the sandbox. Where the workers connect is the operator's
    /// choice (`TP_APNS_URL`), never the application's: a record naming a `url` is refused.
    #[serde(default)]
    pub production: bool,
}

impl ApnCredentials {
    fn validate(&self) -> Result<(), ModelError> {
        let token = self.key.is_some() && self.key_id.is_some() && self.team_id.is_some();
        let cert = self.certificate.is_some() && self.private_key.is_some();
        if !token && !cert {
            return Err(ModelError::InvalidApplication {
                reason: "apn needs key+key_id+team_id (token auth) or certificate+private_key".into(),
            });
        }
        if self.topic.is_empty() {
            return Err(ModelError::InvalidApplication { reason: "apn.topic is empty".into() });
        }
        Ok(())
    }
}

impl std::fmt::Debug for ApnCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnCredentials")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("token_auth", &self.key.is_some())
            .field("certificate_auth", &self.certificate.is_some())
            .field("topic", &self.topic)
            .field("production", &self.production)
            .finish_non_exhaustive()
    }
}

/// FCM HTTP v1 credentials: the Google service-account JSON, passed as is to the OAuth client.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FcmCredentials {
    /// The endpoint is the operator's `TP_FCM_URL`; the service account's `token_uri` must be
    /// on the operator's `TP_PUSH_TOKEN_URLS` list (checked where the list is known).
    pub service_account: Map<String, Value>,
}

impl FcmCredentials {
    /// The Firebase project the messages are sent for.
    pub fn project_id(&self) -> Option<&str> {
        self.service_account.get("project_id")?.as_str()
    }

    fn validate(&self) -> Result<(), ModelError> {
        for key in ["project_id", "client_email", "private_key"] {
            if !matches!(self.service_account.get(key), Some(Value::String(s)) if !s.is_empty()) {
                return Err(ModelError::InvalidApplication { reason: format!("fcm.service_account.{key} is missing") });
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for FcmCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmCredentials").field("project_id", &self.project_id()).finish_non_exhaustive()
    }
}

/// An application as stored by `app put` and announced on `system`.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Application {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    #[serde(default)]
    pub schema: AppSchema,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apn: Option<ApnCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fcm: Option<FcmCredentials>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("id", &self.id)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<redacted>"))
            .field("models", &self.schema.keys().collect::<Vec<_>>())
            .field("apn", &self.apn)
            .field("fcm", &self.fcm)
            .finish()
    }
}

impl Application {
    /// Parses and validates application JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let app: Application =
            serde_json::from_slice(bytes).map_err(|e| ModelError::InvalidApplication { reason: e.to_string() })?;
        app.validate()?;
        Ok(app)
    }

    /// Checks names that end up in keys, and the credentials' completeness.
    pub fn validate(&self) -> Result<(), ModelError> {
        validate_ident("id", &self.id)?;
        let reserved = |field: String, name: &str| {
            if is_reserved(name) {
                return Err(ModelError::InvalidApplication {
                    reason: format!("{field}: `{name}` is reserved (it would spell another registry key)"),
                });
            }
            Ok(())
        };
        for (name, model) in &self.schema {
            validate_ident(&format!("schema.{name}"), name)?;
            reserved(format!("schema.{name}"), name)?;
            for b in &model.belongs_to {
                validate_ident(&format!("schema.{name}.belongsTo"), &b.parent_model)?;
                reserved(format!("schema.{name}.belongsTo"), &b.parent_model)?;
                if b.parent_model == "context" {
                    return Err(ModelError::InvalidApplication {
                        reason: format!("schema.{name}.belongsTo: `context` is the built-in context, not a parent"),
                    });
                }
            }
        }
        if let Some(apn) = &self.apn {
            apn.validate()?;
        }
        if let Some(fcm) = &self.fcm {
            fcm.validate()?;
        }
        Ok(())
    }

    /// Returns the schema of `model`, if the application declares it.
    pub fn model(&self, model: &str) -> Option<&ModelSchema> {
        self.schema.get(model)
    }
}
