//! `nexxus-load`: the load tool. Drives creates, updates and deletes into `aggregation` (Kafka)
//! or the HTTP ingress of `-t all`, holds M real WebSocket clients with a mix of channels and
//! filters, and measures what reaches them: end-to-end latency (produce to receipt), deliveries
//! per second, expected vs received per client (losses, duplicates), and the CPU and RSS of
//! every `nexxus-worker` process on the machine. Bounded in time; writes JSON and Markdown.
//!
//!     nexxus-load --scenario a --target kafka --clients 1000 --subs 3 --channels 300 --rate 5000 --duration 30
//!     nexxus-load --scenario d --idle --clients 50000 --ws ws://127.0.0.1:3000,ws://127.0.0.1:3001
//!     nexxus-load --churn --clients 200 --subs 2 --channels 20 --seed 50 --rate 300 --churn-every 10
//!     nexxus-load --snapshot-objects 100000
//!
//! `--churn` ([`churn`]): clients that drop and resume from their cursors, each view checked
//! against the final state, catch-up bytes against replay bytes. `--snapshot-objects`
//! ([`snaptime`]): the time a snapshot of a channel of N objects takes.
//!
//! `deploy/local/bench-e2e.sh` runs the published scenarios, `deploy/local/bench-churn.sh` the
//! churn and snapshot ones (BENCHMARKS.md).
// Failures are reported as errors with their context, not panics (clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod churn;
mod clients;
mod harness;
mod ledger;
mod plan;
mod report;
mod snaptime;
mod socket;
mod view;
mod watch;
mod writer;

use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use clients::{Report, Spec};
use nexxus_worker::model::clock;
use plan::{Generator, Shape};
use report::{Histogram, Latency, Outcome};

/// Records in one aggregator batch at most (`TP_BATCH_SIZE`'s default).
const MERGE_WINDOW: usize = 500;

#[derive(Parser)]
#[command(name = "nexxus-load", about = "End-to-end load tool of nexxus-worker (see BENCHMARKS.md)")]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    run: Run,
}

#[derive(Subcommand)]
enum Internal {
    /// A child process holding WebSocket clients (started by the tool itself).
    #[command(hide = true)]
    Client { spec: String },
}

#[derive(clap::Args, Clone)]
struct Run {
    /// Label of the run in the report.
    #[arg(long, default_value = "custom")]
    scenario: String,
    /// Where changes go: `kafka` (TP_* variables, TP_TOPIC_PREFIX) or `http` (the ingress).
    #[arg(long, default_value = "http")]
    target: String,
    /// Base URL of the HTTP ingress.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http: String,
    /// Bearer token of the ingress (TP_INGRESS_TOKEN of the server).
    #[arg(long)]
    ingress_token: Option<String>,
    /// WebSocket URLs of the sockets transports, comma separated; clients are spread over them.
    #[arg(long, default_value = "ws://127.0.0.1:3000", value_delimiter = ',')]
    ws: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Channels (contexts of model `item`) the subscriptions spread over.
    #[arg(long, default_value_t = 300)]
    channels: usize,
    /// Subscriptions per client.
    #[arg(long, default_value_t = 3)]
    subs: usize,
    /// Fraction of subscriptions filtered by `score >= 50` (enter/leave).
    #[arg(long, default_value_t = 0.0)]
    filtered: f64,
    /// Changes per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Objects created per channel before measuring.
    #[arg(long, default_value_t = 2)]
    seed: usize,
    /// Weights of create, update, delete.
    #[arg(long, default_value = "10,85,5", value_delimiter = ',')]
    mix: Vec<f64>,
    /// After the last change, wait until every owed delta arrived (or none for `--quiet` s), at most this long.
    #[arg(long, default_value_t = 60.0)]
    drain: f64,
    /// Seconds without a new delta after which what is missing counts as lost, not late.
    #[arg(long, default_value_t = 5.0)]
    quiet: f64,
    /// `/readyz` URLs of the workers, comma separated: connect and load only once each answers 200.
    #[arg(long, value_delimiter = ',')]
    ready: Vec<String>,
    /// End the load early when stdin closes (a harness that kills workers decides when).
    #[arg(long)]
    stop_on_eof: bool,
    /// Write the state every object sent must end in (the store's expected content) here, as JSON.
    #[arg(long)]
    published: Option<std::path::PathBuf>,
    /// Exit with an error when a delta was lost, duplicated or unexpected.
    #[arg(long)]
    strict: bool,
    /// Only connect the clients and measure worker memory per connection.
    #[arg(long)]
    idle: bool,
    /// Id of the application the tool registers (default: a new one per run).
    #[arg(long)]
    app: Option<String>,
    /// JWT secret of the application the tool registers.
    #[arg(long, default_value = "load-tool-secret")]
    secret: String,
    /// Churn: every client subscribes with a snapshot, drops its connection at random while the
    /// load runs, and resumes from its cursor; each view is checked against the final state.
    #[arg(long)]
    churn: bool,
    /// Churn: mean seconds between two drops of one client (exponentially distributed).
    #[arg(long, default_value_t = 10.0)]
    churn_every: f64,
    /// Churn: offline time after a drop, uniform between these milliseconds.
    #[arg(long, default_value = "200,3000", value_delimiter = ',')]
    offline_ms: Vec<u64>,
    /// Churn: the server's TP_SNAPSHOT_SETTLE_MS (the drain waits that long after the last sync).
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Snapshot time: fill one channel with this many objects, then time subscribes with a snapshot.
    #[arg(long)]
    snapshot_objects: Option<usize>,
    /// Snapshot time: measured subscribes.
    #[arg(long, default_value_t = 5)]
    snapshot_runs: usize,
    /// Snapshot time: seconds the fill may take at most (then what is stored is measured).
    #[arg(long, default_value_t = 900.0)]
    fill_timeout: f64,
    /// Snapshot time: creates sent but not yet delivered to a live listener, at most.
    #[arg(long, default_value_t = 5000)]
    fill_window: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Append the result as Markdown here.
    #[arg(long)]
    md: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // reqwest is built without a default TLS provider (the worker picks ring); even plain-http
    // clients need one installed.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.internal {
        Some(Internal::Client { spec }) => rt.block_on(clients::run(serde_json::from_str(&spec)?)),
        None => rt.block_on(run(cli.run)),
    }
}

async fn run(args: Run) -> anyhow::Result<()> {
    let stop = if args.stop_on_eof { harness::stop_on_stdin_eof() } else { Default::default() };
    harness::wait_ready(&args.ready, Duration::from_secs(180)).await?;
    let app = args.app.clone().unwrap_or_else(|| format!("load{}", clock::now_micros()));
    let target = register(&args, &app).await?;
    if args.churn {
        let outcome = churn::run(&args, &target, &app, &stop).await?;
        emit(&args, &outcome, &outcome.markdown())?;
        let t = &outcome.totals;
        anyhow::ensure!(
            !outcome.failed(),
            "churn: {} objects lost ({} missing, {} stale), {} ghosts, {} ahead, {} duplicates applied",
            t.lost,
            t.missing,
            t.stale,
            t.ghosts,
            t.ahead,
            t.duplicates_applied
        );
        return Ok(());
    }
    if args.snapshot_objects.is_some() {
        let outcome = snaptime::run(&args, &target, &app).await?;
        return emit(&args, &outcome, &outcome.markdown());
    }
    let shape = Shape {
        clients: args.clients,
        channels: args.channels.max(1),
        subs_per_client: args.subs,
        filtered: args.filtered,
    };
    // Transport memory before any client connects: the idle measurement's baseline.
    let baseline: Vec<(String, u64)> = watch::discover().into_iter().map(|(n, pid)| (n, watch::rss_kib(pid))).collect();

    let mut children = Vec::new();
    for (k, (first, count)) in clients::split(args.clients).into_iter().enumerate() {
        let spec = Spec {
            ws: args.ws.clone(),
            app: app.clone(),
            secret: args.secret.clone(),
            first,
            count,
            clients: shape.clients,
            channels: shape.channels,
            subs_per_client: shape.subs_per_client,
            filtered: shape.filtered,
            source_ip: format!("127.0.0.{}", k + 2),
        };
        children.push(spawn_child(&spec).await?);
    }
    eprintln!("[load] {} clients connected and subscribed", args.clients);
    let processes = watch::discover();
    eprintln!("[load] watching {}", processes.iter().map(|(n, p)| format!("{n}={p}")).collect::<Vec<_>>().join(" "));
    let watch = watch::Watch::start(&processes);

    let mut sent = writer::Sent::default();
    let (mut measured_changes, mut elapsed) = (0, Duration::ZERO);
    let mut idle_kib = None;
    if args.idle {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let grown: u64 = watch
            .rss_now()
            .iter()
            .filter(|(name, _)| name.starts_with("sockets_transport") || name.starts_with("all"))
            .map(|(name, now)| now.saturating_sub(baseline.iter().find(|(n, _)| n == name).map_or(0, |(_, s)| *s)))
            .sum();
        idle_kib = Some(grown as f64 / args.clients.max(1) as f64);
    } else {
        let mix = [0, 1, 2].map(|i| args.mix.get(i).copied().unwrap_or(0.0));
        let mut generator = Generator::new(shape.channels, mix, &app);
        target.send_all(&app, &generator.seed(args.seed), &mut sent).await?;
        if generator.revisit() <= MERGE_WINDOW && args.filtered > 0.0 {
            eprintln!(
                "[load] warning: {} live objects; an aggregator batch (up to {MERGE_WINDOW}) may merge two updates of \
                 one object and filtered subscriptions then get fewer deltas than counted (raise --seed)",
                generator.revisit()
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let seeded = sent.changes;
        let t0 = clock::now_micros();
        for child in &mut children {
            tell(child, &format!("start {t0}")).await?;
        }
        eprintln!("[load] {} objects seeded; {} changes/s for {} s", seeded, args.rate, args.duration);
        let load = (args.rate, Duration::from_secs_f64(args.duration));
        target.drive(&app, &mut generator, load, &stop, &mut sent).await?;
        measured_changes = sent.changes - seeded;
        elapsed = sent.elapsed;
        let owed: u64 = clients::expected(&shape, &sent.owed).iter().sum();
        let bounds = (Duration::from_secs_f64(args.drain), Duration::from_secs_f64(args.quiet));
        drain(&mut children, owed, bounds).await?;
    }
    let processes = watch.finish();
    if let Some(path) = &args.published {
        harness::write_published(path, &app, &sent.ledger)?;
    }

    let book = serde_json::to_string(&sent.ledger)?;
    let mut reports = Vec::new();
    for child in &mut children {
        tell(child, &format!("report {book}")).await?;
        reports.push(serde_json::from_str::<Report>(&child.lines.next_line().await?.unwrap_or_default())?);
    }
    let outcome = summarize(&args, &shape, &sent, &reports, measured_changes, elapsed, processes, idle_kib)?;
    let md = outcome.markdown();
    println!("{md}");
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&outcome)?)?;
    }
    if let Some(path) = &args.md {
        use std::io::Write;
        std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(format!("{md}\n").as_bytes())?;
    }
    let wrong = outcome.lost + outcome.duplicates + outcome.unexpected;
    anyhow::ensure!(
        !args.strict || wrong == 0,
        "{} lost, {} duplicate, {} unexpected deliveries",
        outcome.lost,
        outcome.duplicates,
        outcome.unexpected
    );
    Ok(())
}

/// Prints the Markdown, writes the JSON (`--out`) and appends the Markdown (`--md`).
fn emit(args: &Run, outcome: &impl serde::Serialize, md: &str) -> anyhow::Result<()> {
    println!("{md}");
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(outcome)?)?;
    }
    if let Some(path) = &args.md {
        use std::io::Write;
        std::fs::OpenOptions::new().create(true).append(true).open(path)?.write_all(format!("{md}\n").as_bytes())?;
    }
    Ok(())
}

/// Registers the run's application where the target reads applications from.
async fn register(args: &Run, app: &str) -> anyhow::Result<writer::Target> {
    let doc = serde_json::json!({"id": app, "jwt_secret": args.secret, "schema": {plan::MODEL: {"read_acl": 0, "write_acl": 0}}});
    match args.target.as_str() {
        "http" => {
            let mut put =
                reqwest::Client::new().put(format!("{}/apps/{app}", args.http.trim_end_matches('/'))).json(&doc);
            if let Some(t) = &args.ingress_token {
                put = put.bearer_auth(t);
            }
            let status = put.send().await?.status();
            anyhow::ensure!(status.is_success(), "PUT /apps/{app}: {status}");
            Ok(writer::Target::http(&args.http, args.ingress_token.clone()))
        }
        "kafka" => {
            let cfg = nexxus_worker::config::Config::load(&Default::default(), &nexxus_worker::config::ProcessEnv)?;
            let application = nexxus_worker::model::Application::from_json(doc.to_string().as_bytes())?;
            nexxus_worker::commands::app::register(&cfg, &application).await?;
            // Running workers pick the application up from `system` asynchronously.
            tokio::time::sleep(Duration::from_secs(2)).await;
            writer::Target::kafka(&cfg)
        }
        other => anyhow::bail!("--target {other}: expected kafka or http"),
    }
}

/// A client process and its stdout, line by line.
struct ClientProcess {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn spawn_child(spec: &Spec) -> anyhow::Result<ClientProcess> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["client", &serde_json::to_string(spec)?])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("client stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await??.unwrap_or_default();
    anyhow::ensure!(line.starts_with("ready"), "client process from {}: {line:?}", spec.first);
    Ok(ClientProcess { child, lines })
}

async fn tell(p: &mut ClientProcess, line: &str) -> anyhow::Result<()> {
    let stdin = p.child.stdin.as_mut().ok_or_else(|| anyhow::anyhow!("client stdin"))?;
    stdin.write_all(format!("{line}\n").as_bytes()).await?;
    Ok(stdin.flush().await?)
}

/// Waits until the clients received the `owed` deltas and a second passed without another (a
/// late duplicate still counts), or nothing arrived for `quiet` (what is missing then is lost,
/// not late), at most `bound`.
async fn drain(
    children: &mut [ClientProcess],
    owed: u64,
    (bound, quiet_for): (Duration, Duration),
) -> anyhow::Result<()> {
    let started = tokio::time::Instant::now();
    let (mut last, mut quiet) = (u64::MAX, 0);
    let quiet_polls = (quiet_for.as_millis() / 500).max(1);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut total = 0;
        for child in children.iter_mut() {
            tell(child, "progress").await?;
            let line = child.lines.next_line().await?.unwrap_or_default();
            total += line.strip_prefix("progress ").and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0);
        }
        quiet = if total == last { quiet + 1 } else { 0 };
        last = total;
        if (total >= owed && quiet >= 2) || quiet >= quiet_polls || started.elapsed() >= bound {
            break;
        }
    }
    eprintln!("[load] drained after {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &Run,
    shape: &Shape,
    sent: &writer::Sent,
    reports: &[Report],
    measured_changes: u64,
    elapsed: Duration,
    processes: Vec<report::ProcessUse>,
    idle_kib: Option<f64>,
) -> anyhow::Result<Outcome> {
    let expected = clients::expected(shape, &sent.owed);
    let (mut received, mut lost, mut dups, mut unexpected, mut with_loss, mut with_dups) = (0, 0, 0, 0, 0, 0);
    let mut latency = Histogram::new()?;
    let (mut first, mut last) = (u64::MAX, 0);
    let (mut problems, mut samples) = (Vec::new(), Vec::new());
    for r in reports {
        latency.merge(&r.latency)?;
        first = first.min(r.first_us);
        last = last.max(r.last_us);
        samples.extend(r.samples.iter().cloned());
        for (k, a) in r.audits.iter().enumerate() {
            received += a.received;
            dups += a.duplicates;
            lost += a.lost;
            unexpected += a.unexpected;
            with_loss += usize::from(a.lost > 0);
            with_dups += usize::from(a.duplicates > 0);
            if a.lost + a.duplicates + a.unexpected > 0 && problems.len() < report::PROBLEMS {
                problems.push(report::ClientProblem { client: r.first + k, audit: *a });
            }
        }
    }
    let span = last.saturating_sub(first).max(1) as f64 / 1e6;
    Ok(Outcome {
        scenario: args.scenario.clone(),
        target: if args.target == "http" { format!("HTTP ingress {}", args.http) } else { "Kafka".into() },
        machine: machine(),
        clients: shape.clients,
        channels: shape.channels,
        subs_per_client: shape.subs_per_client,
        filtered_fraction: shape.filtered,
        rate_wanted: args.rate,
        duration_s: args.duration,
        changes_sent: sent.changes,
        changes_per_s: measured_changes as f64 / elapsed.as_secs_f64().max(0.001),
        deliveries_expected: expected.iter().sum(),
        deliveries_received: received,
        deliveries_per_s: if latency.count() > 0 { latency.count() as f64 / span } else { 0.0 },
        lost,
        duplicates: dups,
        unexpected,
        clients_with_loss: with_loss,
        clients_with_duplicates: with_dups,
        latency: Latency::of(&latency),
        processes,
        idle_kib_per_connection: idle_kib,
        problems,
        samples,
    })
}

/// CPU model, cores and memory, for the report.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{} vCPU ({}), {mem_gib:.0} GiB", cores, model.unwrap_or_else(|| "unknown CPU".into()))
}
