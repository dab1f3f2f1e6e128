//! The command line of CONTRACT section 1. Parsing errors exit 64 with one line (see `main`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::runtime::Role;

#[derive(Debug, Parser)]
#[command(
    name = "nexxus-worker",
    version,
    about = "Kafka-native back-end workers of the Nexxus/Telepat real-time data platform",
    after_help = crate::config::env_help(),
    override_usage = "nexxus-worker -t <TYPE> -i <INDEX> [-c <CONFIG>]\n       nexxus-worker topics apply [--dir <DIR>] [--fix]\n       nexxus-worker app put <APP_JSON>\n       nexxus-worker publish [--topic <TOPIC>] [FILE|-]\n       nexxus-worker dead-letter replay [--source-topic <T>] [--to <T>]\n       nexxus-worker index rebuild"
)]
pub struct Cli {
    /// Worker type: aggregation, write, transport_manager, track, android_transport,
    /// ios_transport, sockets_transport, or all (every role in one process).
    #[arg(short = 't', long = "type", value_enum, value_name = "TYPE")]
    pub role: Option<Role>,

    /// Worker index (non-negative); the worker's name is <type>-<index>.
    #[arg(short = 'i', long = "index", value_name = "INDEX", allow_hyphen_values = true)]
    pub index: Option<u32>,

    /// Configuration file (else TP_CONFIG, else ./config.json if present).
    #[arg(short = 'c', long = "config", value_name = "CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Override one config.json key, e.g. --set http_port=9100 (repeatable; wins over TP_*).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Topic administration.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Application registry.
    App {
        #[command(subcommand)]
        action: AppAction,
    },
    /// Produce JSON lines from FILE (or stdin) to a topic.
    Publish {
        /// Topic before TP_TOPIC_PREFIX.
        #[arg(long, default_value = "aggregation")]
        topic: String,
        /// Each line is a broadcast (an ephemeral object, never stored), sent to transport_manager.
        #[arg(long, conflicts_with = "topic")]
        broadcast: bool,
        /// Input file; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Keep N child processes per role (TP_SUPERVISE): replace crashed ones, recycle, drain.
    Supervise,
    /// Mint a socket handshake token (HS256, the application's jwt_secret else TP_JWT_SECRET).
    Token {
        #[arg(long)]
        app: String,
        #[arg(long)]
        device: String,
        #[arg(long)]
        user: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// The main store's channel index (snapshots and resumes, docs/protocol.md).
    Index {
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Dead-letter operations.
    #[command(name = "dead-letter")]
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create every topic declared in topics/ that is missing and report drift (idempotent).
    Apply {
        /// Directory of topic files (default: ./topics if present, else the embedded copies).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also raise partition counts and align configs of drifted topics.
        #[arg(long)]
        fix: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppAction {
    /// Register or update an application from a JSON file and announce it on `system`.
    Put { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum IndexAction {
    /// Index every stored object that has no channel entry yet (a store written before the
    /// index existed); safe while writers run, idempotent.
    Rebuild,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Re-produce dead-lettered messages to their source topic until stopped.
    Replay {
        /// Only envelopes from this source topic (before TP_TOPIC_PREFIX).
        #[arg(long)]
        source_topic: Option<String>,
        /// Send to this topic (before TP_TOPIC_PREFIX) instead of the source.
        #[arg(long)]
        to: Option<String>,
    },
}

/// Folds clap's multi-line error into the one line the contract asks for.
pub fn one_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:"))
        .collect();
    parts.join("; ").trim_start_matches("error: ").to_string()
}
