//! Driver errors → [`StoreError`].
//!
//! The split is "would the same request succeed later?": lost connections, timeouts, and the
//! server's unavailable / overloaded / read or write timeout answers are [`StoreError::Unavailable`].
//! Rows that do not decode, values that do not serialize, and requests the server rejects as
//! invalid or unauthorized (a dropped table, a revoked grant) are [`StoreError::Corrupt`]: retrying
//! them only stalls the partition, while stopping lets a restart recreate the schema or an operator
//! see the cause. Unknown (non-exhaustive) variants count as unavailable, which errs on the side of
//! retrying rather than stopping.

use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError, PrepareError,
    RequestAttemptError, RequestError, SchemaAgreementError,
};

use crate::error::{BoxError, Cause};
use crate::store::StoreError;

#[derive(Clone, Copy)]
enum Class {
    Unavailable,
    Corrupt,
}

fn make(class: Class, what: &str, e: impl Into<BoxError>) -> StoreError {
    let cause = Cause::with(what, e);
    match class {
        Class::Unavailable => StoreError::Unavailable(cause),
        Class::Corrupt => StoreError::Corrupt(cause),
    }
}

fn db(e: &DbError) -> Class {
    match e {
        DbError::SyntaxError
        | DbError::Invalid
        | DbError::AlreadyExists { .. }
        | DbError::FunctionFailure { .. }
        | DbError::AuthenticationError
        | DbError::Unauthorized
        | DbError::ConfigError
        | DbError::ProtocolError => Class::Corrupt,
        _ => Class::Unavailable,
    }
}

fn attempt(e: &RequestAttemptError) -> Class {
    match e {
        RequestAttemptError::DbError(e, _) => db(e),
        RequestAttemptError::SerializationError(_)
        | RequestAttemptError::CqlRequestSerialization(_)
        | RequestAttemptError::CqlResultParseError(_) => Class::Corrupt,
        _ => Class::Unavailable,
    }
}

fn request(e: &RequestError) -> Class {
    match e {
        RequestError::LastAttemptError(e) => attempt(e),
        _ => Class::Unavailable,
    }
}

fn prepare_class(e: &PrepareError) -> Class {
    match e {
        PrepareError::AllAttemptsFailed { first_attempt } => attempt(first_attempt),
        _ => Class::Unavailable,
    }
}

fn execution_class(e: &ExecutionError) -> Class {
    match e {
        ExecutionError::BadQuery(_) => Class::Corrupt,
        ExecutionError::LastAttemptError(e) => attempt(e),
        ExecutionError::PrepareError(e) => prepare_class(e),
        _ => Class::Unavailable,
    }
}

fn next_page_class(e: &NextPageError) -> Class {
    match e {
        NextPageError::RequestFailure(e) => request(e),
        _ => Class::Corrupt,
    }
}

pub(super) fn execution(what: &'static str) -> impl Fn(ExecutionError) -> StoreError {
    move |e| make(execution_class(&e), what, e)
}

pub(super) fn pager(what: &'static str) -> impl Fn(PagerExecutionError) -> StoreError {
    move |e| {
        let class = match &e {
            PagerExecutionError::PrepareError(e) => prepare_class(e),
            PagerExecutionError::SerializationError(_) => Class::Corrupt,
            PagerExecutionError::NextPageError(e) => next_page_class(e),
            _ => Class::Unavailable,
        };
        make(class, what, e)
    }
}

pub(super) fn next_row(what: &'static str) -> impl Fn(NextRowError) -> StoreError {
    move |e| {
        let class = match &e {
            NextRowError::NextPageError(e) => next_page_class(e),
            _ => Class::Corrupt,
        };
        make(class, what, e)
    }
}

/// Results that are not the rows the statement promises, or rows of unexpected types.
pub(super) fn rows<E: Into<BoxError>>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| make(Class::Corrupt, what, e)
}

pub(super) fn prepare(e: PrepareError) -> StoreError {
    make(prepare_class(&e), "preparing statements", e)
}

/// Session set-up fails on unreachable or unresolvable nodes; the configuration itself was
/// validated when loaded.
pub(super) fn new_session(e: NewSessionError) -> StoreError {
    make(Class::Unavailable, "connecting", e)
}

pub(super) fn schema_agreement(e: SchemaAgreementError) -> StoreError {
    let class = match &e {
        SchemaAgreementError::RequestError(e) => attempt(e),
        _ => Class::Unavailable,
    };
    make(class, "waiting for schema agreement", e)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

    use super::*;
    use crate::error::{in_chain, ProcessError};

    fn db_error(e: DbError) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(e, "the server's message".into()))
    }

    #[test]
    fn an_unavailable_cluster_is_transient_and_keeps_the_driver_error() {
        for e in [ExecutionError::RequestTimeout(Duration::from_secs(5)), db_error(DbError::Overloaded)] {
            let store = execution("reading an object")(e);
            assert!(matches!(store, StoreError::Unavailable(_)), "{store:?}");
            assert!(store.to_string().starts_with("store unavailable: reading an object: "), "{store}");
            let text = store.to_string();
            let process = ProcessError::from(store);
            assert!(matches!(process, ProcessError::Transient(_)), "{process:?}");
            assert_eq!(process.to_string(), text, "the reason reads as before");
            assert!(in_chain::<StoreError>(&process).is_some());
            assert!(in_chain::<ExecutionError>(&process).is_some(), "the driver error is in the chain");
        }
    }

    #[test]
    fn a_request_the_server_refuses_is_fatal() {
        let store = execution("writing an object")(db_error(DbError::Invalid));
        assert!(matches!(store, StoreError::Corrupt(_)), "{store:?}");
        let process = ProcessError::from(store);
        assert!(matches!(process, ProcessError::Fatal(_)), "{process:?}");
        assert!(matches!(in_chain::<ExecutionError>(&process), Some(ExecutionError::LastAttemptError(_))));
    }
}
