//! SQLite errors → [`StoreError`], by the rule the CQL store follows: would the same request
//! succeed later?
//!
//! A lock held by another connection past the busy timeout, a failing disk, a full disk, a file
//! that cannot be opened (yet) and an out-of-memory answer are [`StoreError::Unavailable`]: the
//! worker retries and stalls rather than drops anything. A malformed file, a file that is not a
//! database, a constraint failure, a missing table (SQLite's generic `SQLITE_ERROR`), a refused
//! permission and values that do not decode are [`StoreError::Corrupt`]: a bug, tampering or an
//! operator change that no retry fixes, so the worker stops and says why.

use std::fmt::Display;

use rusqlite::ffi::ErrorCode;
use tokio::task::JoinError;

use crate::error::Cause;
use crate::store::StoreError;

/// True if the same request may succeed later.
fn transient(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(failure, _) => matches!(
            failure.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::OperationInterrupted
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::SchemaChanged
        ),
        _ => false,
    }
}

/// `what` failed with `e`; `what` names the operation and, where known, the row.
pub(super) fn sql(what: impl Display, e: rusqlite::Error) -> StoreError {
    let retry = transient(&e);
    let cause = Cause::with(format_args!("sqlite: {what}"), e);
    if retry {
        StoreError::Unavailable(cause)
    } else {
        StoreError::Corrupt(cause)
    }
}

/// The file system refused to create the database's directory.
pub(super) fn io(what: impl Display, e: std::io::Error) -> StoreError {
    StoreError::Unavailable(Cause::with(format_args!("sqlite: {what}"), e))
}

/// A mutex poisoned by a panic. The connection it guards may be anywhere inside a call; stopping
/// lets a restart open a fresh one instead of guessing.
pub(super) fn poisoned(what: impl Display) -> StoreError {
    StoreError::Corrupt(
        format!("sqlite: {what}: an earlier call panicked while holding the connection; restart to reopen the store")
            .into(),
    )
}

/// The blocking task ended without an answer: cancelled because the runtime is shutting down
/// (retry, if anything is left to retry), or panicked, which is a bug.
pub(super) fn joined(what: &str, e: JoinError) -> StoreError {
    if e.is_cancelled() {
        StoreError::Unavailable(Cause::with(format_args!("sqlite: {what} (runtime shutting down)"), e))
    } else {
        StoreError::Corrupt(Cause::with(format_args!("sqlite: {what}: panicked"), e))
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::ffi;

    use super::*;
    use crate::error::{in_chain, ProcessError};

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn locks_and_io_are_transient_the_rest_is_not() {
        for code in [ffi::SQLITE_BUSY, ffi::SQLITE_LOCKED, ffi::SQLITE_IOERR, ffi::SQLITE_FULL, ffi::SQLITE_CANTOPEN] {
            assert!(matches!(sql("x", failure(code)), StoreError::Unavailable(_)), "{code}");
        }
        for code in
            [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB, ffi::SQLITE_CONSTRAINT, ffi::SQLITE_ERROR, ffi::SQLITE_PERM]
        {
            assert!(matches!(sql("x", failure(code)), StoreError::Corrupt(_)), "{code}");
        }
        let decode = rusqlite::Error::InvalidColumnType(0, "body".into(), rusqlite::types::Type::Integer);
        assert!(matches!(sql("x", decode), StoreError::Corrupt(_)));
        // Extended codes keep their primary class: SQLITE_IOERR_FSYNC is still an I/O error.
        assert!(matches!(sql("x", failure(ffi::SQLITE_IOERR_FSYNC)), StoreError::Unavailable(_)));
        assert!(matches!(sql("x", failure(ffi::SQLITE_BUSY_SNAPSHOT)), StoreError::Unavailable(_)));
    }

    #[test]
    fn the_sqlite_error_is_kept_under_the_store_error() {
        let e = sql("reading objects", failure(ffi::SQLITE_BUSY));
        assert!(e.to_string().starts_with("store unavailable: sqlite: reading objects: "), "{e}");
        let process = ProcessError::from(e);
        assert!(matches!(process, ProcessError::Transient(_)), "{process:?}");
        let kept = in_chain::<rusqlite::Error>(&process).expect("the rusqlite error is in the chain");
        assert_eq!(kept.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
    }
}
