//! Errors at the edges of the crate. [`ProcessError`]'s variant is what the run loop does with a
//! failed message: send it to `dead_letter` and move on, retry with backoff without losing the
//! Kafka position, or stop the process. [`Cause`] is what every layer's error carries: a readable
//! reason and, when another error caused it, that error as its `source`.

use std::fmt;
use std::sync::Arc;

use crate::config::ConfigError;

/// Any error, boxed to be kept as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why something failed: the reason as people read it (what was being done, then the underlying
/// error's own text), and the underlying error, kept so a caller or a test can inspect the chain
/// rather than parse text. The reason already quotes the source, so a log line prints only this.
/// The source is shared (`Arc`) so a `Cause` clones: the registry returns a copy of one
/// command's error out of a batch's replies.
#[derive(Clone, Debug)]
pub struct Cause {
    reason: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Cause {
    /// `context: source`, keeping `source`.
    pub fn with(context: impl fmt::Display, source: impl Into<BoxError>) -> Cause {
        let source = source.into();
        Cause { reason: format!("{context}: {source}"), source: Some(Arc::from(source)) }
    }

    /// The error's own text as the reason, keeping the error.
    pub fn of(source: impl Into<BoxError>) -> Cause {
        let source = source.into();
        Cause { reason: source.to_string(), source: Some(Arc::from(source)) }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A reason with no error underneath (a rule the input breaks).
impl From<String> for Cause {
    fn from(reason: String) -> Cause {
        Cause { reason, source: None }
    }
}

impl From<&str> for Cause {
    fn from(reason: &str) -> Cause {
        Cause::from(reason.to_string())
    }
}

/// The outcome of processing one message, as a role's handler reports it. Store, registry and
/// queue errors convert with `?`, classified by their own `From` impls.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The message itself is bad: `dead_letter` it, commit, go on. Retrying cannot help.
    #[error(transparent)]
    Poison(Cause),
    /// A dependency is unavailable: back off and retry the same message; readiness turns false.
    #[error(transparent)]
    Transient(Cause),
    /// A bug or an unrecoverable state: stop the worker (and, through the token, the process).
    #[error(transparent)]
    Fatal(Cause),
}

impl ProcessError {
    pub fn poison(reason: impl Into<Cause>) -> ProcessError {
        ProcessError::Poison(reason.into())
    }

    pub fn transient(reason: impl Into<Cause>) -> ProcessError {
        ProcessError::Transient(reason.into())
    }

    pub fn fatal(reason: impl Into<Cause>) -> ProcessError {
        ProcessError::Fatal(reason.into())
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
    /// A dependency refused us for good at start (credentials, certificate): exit 69.
    #[error("unavailable: {0}")]
    Unavailable(String),
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
            WorkerError::Kafka { .. } | WorkerError::Io { .. } | WorkerError::Unavailable(_) => 69,
            WorkerError::Fatal(_) => 70,
            WorkerError::Cancelled(_) => 0,
        }
    }
}

/// The first error of type `T` in `e`'s source chain, `e` included (tests check that a layer
/// kept the error underneath it).
#[cfg(test)]
pub(crate) fn in_chain<'a, T: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    std::iter::successors(Some(e), |e| e.source()).find_map(|e| e.downcast_ref::<T>())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_cause_reads_as_context_then_source_and_keeps_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let cause = Cause::with("opening x", io);
        assert_eq!(cause.to_string(), "opening x: no such file");
        let kept = in_chain::<std::io::Error>(&cause).expect("the io error is kept");
        assert_eq!(kept.kind(), std::io::ErrorKind::NotFound);
        let plain = Cause::from("unknown application `a`");
        assert_eq!(plain.to_string(), "unknown application `a`");
        assert!(plain.source().is_none());
    }

    #[test]
    fn a_process_error_reads_as_its_cause_and_exposes_the_cause_source() {
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let text = format!("not a change event: {json}");
        let e = ProcessError::poison(Cause::with("not a change event", json));
        assert_eq!(e.to_string(), text);
        // Transparent: the source is the JSON error itself, not the cause wrapping it.
        assert!(e.source().is_some_and(|s| s.is::<serde_json::Error>()));
        assert!(matches!(ProcessError::transient("x"), ProcessError::Transient(c) if c.to_string() == "x"));
        assert!(matches!(ProcessError::fatal(String::from("y")), ProcessError::Fatal(c) if c.to_string() == "y"));
    }
}
