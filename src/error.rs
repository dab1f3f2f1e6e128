//! Errors at the edges of the crate, each with the class that decides what the run loop does
//! with it: send the message to `dead_letter` and move on, retry with backoff without losing the
//! Kafka position, or stop the process.

use crate::config::ConfigError;

/// What a worker does about a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The message itself is bad: `dead_letter` it, commit, go on. Retrying cannot help.
    Poison,
    /// A dependency is unavailable: back off and retry the same message; readiness turns false.
    Transient,
    /// A bug or an unrecoverable state: stop the worker (and, through the token, the process).
    Fatal,
}

/// The outcome of processing one message, as a role's handler reports it.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{0}")]
    Poison(String),
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Fatal(String),
}

impl ProcessError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ProcessError::Poison(_) => ErrorClass::Poison,
            ProcessError::Transient(_) => ErrorClass::Transient,
            ProcessError::Fatal(_) => ErrorClass::Fatal,
        }
    }
}

/// Why a worker or a subcommand stopped with an error; `main` maps it to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("usage: {0}")]
    Usage(String),
    #[error("bad input: {0}")]
    Data(String),
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("worker stopped: {0}")]
    Fatal(String),
    /// The process was told to stop (SIGTERM, SIGINT) before this step finished, e.g. while a
    /// dependency was still unreachable at start: not a failure, so the exit status is 0.
    #[error("stopped before {0}")]
    Cancelled(String),
}

impl WorkerError {
    pub fn kafka(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> WorkerError {
        let context = context.into();
        move |source| WorkerError::Kafka { context, source }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
        let context = context.into();
        move |source| WorkerError::Io { context, source }
    }

    /// Exit status, after BSD sysexits: 64 usage/config, 65 bad input data, 69 unavailable,
    /// 70 internal error.
    pub fn exit_code(&self) -> i32 {
        match self {
            WorkerError::Config(_) | WorkerError::Usage(_) => 64,
            WorkerError::Data(_) => 65,
            WorkerError::Kafka { .. } | WorkerError::Io { .. } => 69,
            WorkerError::Fatal(_) => 70,
            WorkerError::Cancelled(_) => 0,
        }
    }
}
