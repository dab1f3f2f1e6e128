//! `nexxus-worker supervise`: keeps N child processes per role (`TP_SUPERVISE`, e.g.
//! `write=3,transport_manager=2,sockets_transport=2`) on a machine without an orchestrator.
//!
//! Each child is a [`slot::Slot`] with a stable index (`write-0`, `write-1`, ...; a sockets
//! transport keeps its index, hence its topic, across restarts). Crashed children are replaced
//! with backoff until `TP_SUPERVISE_MAX_CRASHES` crashes within a minute, then given up on
//! loudly; a child exiting 64 (configuration error) is given up on at once. Children are
//! recycled every `TP_RECYCLE_RATE_MS` (0 = never) and all on SIGHUP (the old stops listening,
//! the new starts on its port while the old drains). SIGUSR1 or `POST /drain` stops every child and starts none; SIGUSR2 or
//! `POST /resume` starts them again; SIGTERM/SIGINT stop every child gracefully and exit.
//! `GET /status` lists the children. Children get their own HTTP port: the supervisor's plus
//! one plus the slot number (off when the supervisor's is off).

pub mod slot;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::WorkerError;
use crate::ingress::guard::check_operator;
use crate::runtime::Role;
use crate::telemetry::{self, http, Health};
use slot::{Desired, RunState, Slot, SlotStatus};

/// Crashes are counted within this window for the crash-loop limit.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// Parses `role=count,role=count`; roles must be workers (not `all`), counts 1..=64.
pub fn parse_plan(text: &str) -> Result<Vec<(Role, u32)>, String> {
    let mut plan: Vec<(Role, u32)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, count) = part.split_once('=').ok_or(format!("`{part}`: expected role=count"))?;
        let role = Role::WORKERS
            .into_iter()
            .find(|r| r.as_str() == name.trim())
            .ok_or(format!("`{name}`: not a worker role"))?;
        let count: u32 =
            count.trim().parse().ok().filter(|c| (1..=64).contains(c)).ok_or(format!("`{part}`: count 1..=64"))?;
        if plan.iter().any(|(r, _)| *r == role) {
            return Err(format!("`{name}` listed twice"));
        }
        plan.push((role, count));
    }
    if plan.is_empty() {
        return Err("no role to supervise".into());
    }
    Ok(plan)
}

#[derive(Clone)]
struct Control {
    desired: watch::Sender<Desired>,
    slots: Arc<Vec<Arc<Mutex<SlotStatus>>>>,
}

impl Control {
    fn set(&self, state: RunState) {
        self.desired.send_modify(|d| d.state = state);
    }

    fn recycle_all(&self) {
        self.desired.send_modify(|d| d.generation += 1);
    }

    fn status(&self) -> serde_json::Value {
        let d = *self.desired.borrow();
        let children: Vec<SlotStatus> =
            self.slots.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect();
        serde_json::json!({"state": d.state, "generation": d.generation, "children": children})
    }
}

fn admin(control: Control, config: &Config) -> Router {
    let (token, host) = (config.ingress.admin_token.clone(), config.http_host.clone());
    let operator = Router::new()
        .route(
            "/drain",
            post(|State(c): State<Control>| async move {
                c.set(RunState::Drained);
                Json(c.status())
            }),
        )
        .route(
            "/resume",
            post(|State(c): State<Control>| async move {
                c.set(RunState::Running);
                Json(c.status())
            }),
        )
        .route(
            "/recycle",
            post(|State(c): State<Control>| async move {
                c.recycle_all();
                Json(c.status())
            }),
        )
        .layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
            let checked = check_operator(request.headers(), token.as_deref(), &host);
            async move {
                match checked {
                    Ok(()) => next.run(request).await,
                    Err((status, reason)) => crate::ingress::error(status, reason),
                }
            }
        }));
    Router::new()
        .route("/status", get(|State(c): State<Control>| async move { Json(c.status()) }))
        .merge(operator)
        .with_state(control)
}

/// Runs the supervisor until SIGTERM/SIGINT (exit 0) or until every child was given up on.
pub async fn run(config: Arc<Config>, plan: &str, child_args: Vec<String>) -> Result<(), WorkerError> {
    let plan = parse_plan(plan).map_err(|e| WorkerError::Usage(format!("TP_SUPERVISE: {e}")))?;
    let exe = std::env::current_exe().map_err(WorkerError::io("locating the nexxus-worker binary"))?;
    let (desired, rx) = watch::channel(Desired { state: RunState::Running, generation: 0 });
    let mut slots = Vec::new();
    let mut statuses = Vec::new();
    let mut n = 0u16;
    for (role, count) in plan {
        for index in 0..count {
            n += 1;
            let http_port = config.http_port.map_or(0, |p| p.saturating_add(n));
            let status = Arc::new(Mutex::new(SlotStatus {
                role: role.as_str().into(),
                index,
                pid: None,
                starts: 0,
                crashes: 0,
                gave_up: None,
            }));
            statuses.push(status.clone());
            slots.push(Slot {
                role,
                index,
                exe: exe.clone(),
                args: child_args.clone(),
                env: vec![("TP_HTTP_PORT".into(), http_port.to_string())],
                http: config.http_port.map(|_| (config.http_host.clone(), http_port)),
                grace: config.shutdown_grace,
                recycle: (!config.supervise.recycle_rate.is_zero()).then_some(config.supervise.recycle_rate),
                max_crashes: config.supervise.max_crashes,
                crash_window: CRASH_WINDOW,
                status,
            });
        }
    }
    let control = Control { desired, slots: Arc::new(statuses) };
    let stop_http = CancellationToken::new();
    if let Some(port) = config.http_port {
        let router =
            http::router(Arc::new(Health::new()), telemetry::metrics::install()).merge(admin(control.clone(), &config));
        let (addr, _task) = http::serve(&config.http_host, port, router, &config.http_limits, stop_http.clone())
            .await
            .map_err(WorkerError::io(format!("binding the HTTP endpoint {}:{port}", config.http_host)))?;
        tracing::info!(message = "supervisor listening", %addr);
    }
    let tasks: Vec<_> = slots.into_iter().map(|s| tokio::spawn(s.run(rx.clone()))).collect();
    let all_done = futures::future::join_all(tasks);
    tokio::pin!(all_done);
    let mut sig = Signals::new().map_err(WorkerError::io("installing signal handlers"))?;
    loop {
        tokio::select! {
            _ = &mut all_done => {
                stop_http.cancel();
                return Err(WorkerError::Fatal("every supervised child was given up on".into()));
            }
            what = sig.next() => match what {
                Sig::Stop => break,
                Sig::Reload => {
                    tracing::info!(message = "SIGHUP: recycling every child");
                    control.recycle_all();
                }
                Sig::Drain => control.set(RunState::Drained),
                Sig::Resume => control.set(RunState::Running),
            },
        }
    }
    tracing::info!(message = "stopping every child");
    control.set(RunState::Stopping);
    all_done.await;
    stop_http.cancel();
    Ok(())
}

enum Sig {
    Stop,
    Reload,
    Drain,
    Resume,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Stop,
            _ = self.int.recv() => Sig::Stop,
            _ = self.hup.recv() => Sig::Reload,
            _ = self.usr1.recv() => Sig::Drain,
            _ = self.usr2.recv() => Sig::Resume,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_say_why() {
        let plan = parse_plan("write=3, transport_manager=2,sockets_transport=1").unwrap_or_default();
        assert_eq!(plan, vec![(Role::Write, 3), (Role::TransportManager, 2), (Role::SocketsTransport, 1)]);
        for bad in ["", "write", "write=0", "write=x", "all=1", "nope=1", "write=1,write=2", "write=65"] {
            assert!(parse_plan(bad).is_err(), "{bad}");
        }
    }
}
