//! Entry point: parse the command line, load the configuration, run a role or a subcommand,
//! and map the outcome to an exit status (0 ok, 64 usage/config, 65 bad input, 69 unavailable,
//! 70 internal; see `WorkerError::exit_code`).
// A panic here is an exit without its status or a log line (clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use clap::error::ErrorKind;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use nexxus_worker::cli::{self, AppAction, Cli, Command, DeadLetterAction, IndexAction, TopicsAction};
use nexxus_worker::commands::{app, dead_letter, index, publish, token};
use nexxus_worker::config::{is_loopback_host, Config, Overrides, ProcessEnv};
use nexxus_worker::error::WorkerError;
use nexxus_worker::ingress::Ingress;
use nexxus_worker::pipeline::Pipeline;
use nexxus_worker::process;
use nexxus_worker::queue::kafka::Producer;
use nexxus_worker::queue::outbox::Sink;
use nexxus_worker::queue::{topic, topics};
use nexxus_worker::runtime::{Role, WorkerContext};
use nexxus_worker::shutdown;
use nexxus_worker::telemetry::{self, http, Health};

/// mimalloc instead of glibc's malloc: under `-t all` at 12,000 changes/s glibc's allocator was a
/// quarter of the process's CPU (perf: `_int_malloc`, `_int_free`, `malloc_consolidate`) and p99
/// reached 0.4-1.5 s; with mimalloc p99 is 31-49 ms. Idle memory per connection barely moves
/// (7.4 → 7.6 KiB under `-t all`, 6.1 → 6.3 KiB per sockets transport). BENCHMARKS.md has the runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("nexxus-worker: {}", cli::one_line(&e));
            std::process::exit(64);
        }
    };
    let code = match run(cli) {
        Ok(()) => 0,
        Err(e @ WorkerError::Cancelled(_)) => {
            tracing::info!(message = "stopped on a signal during start", detail = %e);
            0
        }
        Err(e) => {
            eprintln!("nexxus-worker: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<(), WorkerError> {
    if cli.command.is_some() && (cli.role.is_some() || cli.index.is_some()) {
        return Err(WorkerError::Usage("-t/-i cannot be combined with a subcommand".into()));
    }
    if cli.command.is_none() && cli.role.is_none() {
        return Err(WorkerError::Usage("missing -t <type> (or a subcommand); see --help".into()));
    }
    let overrides = Overrides {
        config_file: cli.config.clone(),
        sets: cli.set.clone(),
        single_process: cli.role == Some(Role::All),
    };
    let config = Arc::new(Config::load(&overrides, &ProcessEnv)?);
    telemetry::init_logging(config.log_level);
    raise_open_files();
    for var in Config::unknown_env(&ProcessEnv) {
        tracing::warn!(message = "unknown environment variable ignored (see --help)", var);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nexxus")
        .build()
        .map_err(WorkerError::io("starting the runtime"))?;
    runtime.block_on(dispatch(cli, config))
}

/// Lifts the soft limit of open files to the hard one: every listener's connection cap assumes
/// the process can hold that many descriptors plus its dependencies' (the common soft default
/// of 1,024 let 1,010 half-open HTTP connections starve the WebSocket listener).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(message = "open file limit raised", from = soft, to = hard),
            Err(error) => tracing::warn!(message = "could not raise the open file limit", soft, hard, %error),
        },
        Ok(_) | Err(_) => {}
    }
}

async fn dispatch(cli: Cli, config: Arc<Config>) -> Result<(), WorkerError> {
    tracing::info!(message = "configuration", effective = %config.redacted());
    match cli.command {
        None => {
            let role = cli.role.ok_or_else(|| WorkerError::Usage("missing -t".into()))?;
            let ctx = WorkerContext::new(config.clone(), role, cli.index.unwrap_or(0));
            let health = ctx.health.clone();
            let ingress = config.ingress.enabled.then(|| Ingress::new(config.clone()));
            if let Some(ingress) = &ingress {
                announce_ingress_policy(&config, ingress);
            }
            let routes = ingress.clone().map(nexxus_worker::ingress::router);
            long_running(config, health, routes, move |shutdown| process::run(ctx, ingress, shutdown)).await
        }
        Some(Command::Topics { action: TopicsAction::Apply { dir, fix } }) => {
            let dir = dir.or_else(|| std::path::Path::new("topics").is_dir().then(|| "topics".into()));
            let files = topics::load(dir.as_deref())?;
            let reports = topics::apply(&config, &files, fix).await?;
            for report in &reports {
                println!("{report}");
            }
            Ok(())
        }
        Some(Command::Publish { topic, broadcast, file }) => {
            let mut lines = publish::read_lines(file.as_deref())?;
            let mut topic = topic.as_str();
            if broadcast {
                lines = publish::broadcasts(lines)?;
                topic = topic::TRANSPORT_MANAGER;
            }
            let producer = Producer::new(&config, &Arc::new(Health::new()), "nexxus-publish")?;
            let full = config.topic(topic);
            producer.check_topic(&full).await?;
            let n = publish::publish(&producer, &full, lines).await?;
            eprintln!("published {n} messages to {full}");
            Ok(())
        }
        Some(Command::DeadLetter { action: DeadLetterAction::Replay { source_topic, to } }) => {
            let health = Arc::new(Health::new());
            let h = health.clone();
            let cfg = config.clone();
            long_running(config, health, None, move |shutdown| async move {
                let producer = Producer::new(&cfg, &h, "dead_letter-replay")?;
                let mut handler = dead_letter::Replay {
                    only_source: source_topic.map(|t| cfg.topic(&t)),
                    to: to.map(|t| cfg.topic(&t)),
                };
                let pipeline = Pipeline::connect(
                    &cfg,
                    &h,
                    "dead_letter-replay",
                    dead_letter::GROUP,
                    &[topic::DEAD_LETTER],
                    Sink::Kafka(producer.clone()),
                    &shutdown,
                )
                .await?;
                let result = pipeline.run(&mut handler, shutdown).await;
                let _ = producer.flush(std::time::Duration::from_secs(5)).await;
                result
            })
            .await
        }
        Some(Command::Supervise) => {
            // Children load the same file and flags; their HTTP port is the supervisor's to give.
            let mut child_args = Vec::new();
            if let Some(file) = &cli.config {
                child_args.extend(["-c".to_string(), file.display().to_string()]);
            }
            for set in cli.set.iter().filter(|s| !s.trim_start().starts_with("http_port=")) {
                child_args.extend(["--set".to_string(), set.clone()]);
            }
            let plan = config.supervise.plan.clone();
            nexxus_worker::supervisor::run(config, &plan, child_args).await
        }
        Some(Command::Token { app, device, user, ttl }) => {
            println!("{}", token::mint(&config, &app, &device, user.as_deref(), ttl).await?);
            Ok(())
        }
        Some(Command::Index { action: IndexAction::Rebuild }) => {
            let written = index::rebuild(&config).await?;
            eprintln!("channel index rebuilt: {written} entries written");
            Ok(())
        }
        Some(Command::App { action: AppAction::Put { file } }) => {
            let app = app::put(&config, &file).await?;
            eprintln!("application {} stored and announced on {}", app.id, config.topic(topic::SYSTEM));
            Ok(())
        }
    }
}

/// What an operator must see at start: an ingress without tokens, and demo tokens.
fn announce_ingress_policy(config: &Config, ingress: &Ingress) {
    if ingress.is_open() {
        if is_loopback_host(&config.http_host) {
            tracing::info!(message = "HTTP ingress without tokens, on a loopback address only", host = %config.http_host);
        } else {
            tracing::warn!(
                message = "TP_INGRESS_ALLOW_OPEN: the HTTP ingress accepts requests without tokens from any host that reaches it; development only",
                host = %config.http_host
            );
        }
    }
    if let Some(app) = &config.ingress.demo_app {
        tracing::warn!(
            message = "demo tokens are on: POST /demo/token mints anonymous device tokens (TP_DEMO_APP); development only",
            app = %app
        );
    }
}

/// Runs a worker with the process machinery: the HTTP endpoint, signal handling, and a drain
/// bounded by `TP_SHUTDOWN_GRACE_MS`. The worker ending (with an error or not) stops the process.
async fn long_running<F, Fut>(
    config: Arc<Config>,
    health: Arc<Health>,
    routes: Option<axum::Router>,
    worker: F,
) -> Result<(), WorkerError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
{
    let shutdown = CancellationToken::new();
    shutdown::spawn_signal_handler(shutdown.clone());
    shutdown::spawn_orphan_watch(shutdown.clone());
    let metrics = telemetry::metrics::install();
    if let Some(port) = config.http_port {
        let router = http::router(health.clone(), metrics).merge(routes.unwrap_or_default());
        let (addr, _task) =
            http::serve(&config.http_host, port, router, &config.http_limits, shutdown.clone())
                .await
                .map_err(WorkerError::io(format!("binding the HTTP endpoint {}:{port}", config.http_host)))?;
        tracing::info!(message = "http endpoint listening", %addr);
    }
    let tracker = TaskTracker::new();
    let token = shutdown.clone();
    let fut = worker(shutdown.clone());
    let task = tracker.spawn(async move {
        let result = fut.await;
        token.cancel();
        result
    });
    shutdown.cancelled().await;
    // Out of rotation at once: what drains now must not be sent more.
    health.fail("process", "draining");
    if !shutdown::drain(&tracker, config.shutdown_grace).await {
        return Err(WorkerError::Fatal("in-flight work did not finish within TP_SHUTDOWN_GRACE_MS".into()));
    }
    task.await.map_err(|e| WorkerError::Fatal(format!("worker task: {e}")))?
}
