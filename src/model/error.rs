//! The one error type of the core model.
//!
//! Every way an input can be wrong has its own variant, because the `Display` text is what a
//! worker writes as the `reason` of a `dead_letter` record and what an operator reads first.
//! [`ModelError::code`] gives a short stable label for metrics (`reason="invalid_path"`), so
//! dashboards do not depend on the wording of the messages.

/// A rejected message, patch, channel, filter or application.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },

    #[error("not valid JSON: {0}")]
    InvalidJson(String),

    #[error("`{field}` is missing")]
    MissingField { field: String },

    #[error("`{field}` must be {expected}")]
    WrongType { field: String, expected: &'static str },

    #[error("unknown op `{op}` on topic `{topic}`")]
    UnknownOp { op: String, topic: &'static str },

    #[error("`{field}` is not a valid identifier: {reason}")]
    InvalidIdentifier { field: String, reason: &'static str },

    #[error("patch path `{path}` is invalid: {reason} (expected `<model>/<id>/<field>`)")]
    InvalidPath { path: String, reason: &'static str },

    #[error("`patches` is empty")]
    EmptyPatches,

    #[error("field `{field}` is immutable")]
    ImmutableField { field: String },

    #[error("`{field}` says application `{found}` but the message is for `{expected}`")]
    ApplicationMismatch { field: String, expected: String, found: String },

    #[error("patch for `{path}` does not target object `{model}/{id}`")]
    PatchTargetMismatch { path: String, model: String, id: String },

    #[error("cannot {op} field `{field}`: {reason}")]
    PatchNotApplicable { op: &'static str, field: String, reason: &'static str },

    #[error("model `{model}` is not in the application's schema")]
    UnknownModel { model: String },

    #[error("invalid channel: {reason}")]
    InvalidChannel { reason: &'static str },

    #[error("invalid channel key `{key}`: {reason}")]
    InvalidChannelKey { key: String, reason: &'static str },

    #[error("invalid filter at `{at}`: {reason}")]
    InvalidFilter { at: String, reason: String },

    #[error("invalid filter key suffix: {reason}")]
    InvalidFilterKey { reason: String },

    #[error("user `{user_id}` is not an author of {model} `{id}`")]
    NotAuthor { model: String, id: String, user_id: String },

    #[error("invalid device: {reason}")]
    InvalidDevice { reason: String },

    #[error("invalid application: {reason}")]
    InvalidApplication { reason: String },
}

impl ModelError {
    /// Returns a short, stable label for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::TooLarge { .. } => "too_large",
            ModelError::InvalidJson(_) => "invalid_json",
            ModelError::MissingField { .. } => "missing_field",
            ModelError::WrongType { .. } => "wrong_type",
            ModelError::UnknownOp { .. } => "unknown_op",
            ModelError::InvalidIdentifier { .. } => "invalid_identifier",
            ModelError::InvalidPath { .. } => "invalid_path",
            ModelError::EmptyPatches => "empty_patches",
            ModelError::ImmutableField { .. } => "immutable_field",
            ModelError::ApplicationMismatch { .. } => "application_mismatch",
            ModelError::PatchTargetMismatch { .. } => "patch_target_mismatch",
            ModelError::PatchNotApplicable { .. } => "patch_not_applicable",
            ModelError::UnknownModel { .. } => "unknown_model",
            ModelError::InvalidChannel { .. } => "invalid_channel",
            ModelError::InvalidChannelKey { .. } => "invalid_channel_key",
            ModelError::InvalidFilter { .. } => "invalid_filter",
            ModelError::InvalidFilterKey { .. } => "invalid_filter_key",
            ModelError::NotAuthor { .. } => "not_author",
            ModelError::InvalidDevice { .. } => "invalid_device",
            ModelError::InvalidApplication { .. } => "invalid_application",
        }
    }

    pub(crate) fn missing(field: impl Into<String>) -> Self {
        ModelError::MissingField { field: field.into() }
    }

    pub(crate) fn wrong_type(field: impl Into<String>, expected: &'static str) -> Self {
        ModelError::WrongType { field: field.into(), expected }
    }

    pub(crate) fn filter(at: &str, reason: impl Into<String>) -> Self {
        ModelError::InvalidFilter { at: at.to_owned(), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_a_readable_reason() {
        let e = ModelError::TooLarge { size: 10, limit: 5 };
        assert_eq!(e.to_string(), "message is 10 bytes, over the 5-byte limit");
        assert_eq!(e.code(), "too_large");
        let e = ModelError::InvalidPath { path: "task/x".into(), reason: "needs three segments" };
        assert!(e.to_string().contains("`<model>/<id>/<field>`"));
    }
}
