//! One supervised child: start it, watch it, replace it when it crashes (with backoff, until the
//! crash-loop limit), recycle it when asked, stop it on drain or shutdown.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::retry;
use crate::runtime::Role;
use crate::telemetry;

/// What the supervisor wants of its children; `generation` grows on every recycle of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    pub state: RunState,
    pub generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Drained,
    Stopping,
}

/// What `/status` shows of a slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub role: String,
    pub index: u32,
    pub pid: Option<u32>,
    pub starts: u64,
    pub crashes: u64,
    pub gave_up: Option<String>,
}

pub struct Slot {
    pub role: Role,
    pub index: u32,
    pub exe: std::path::PathBuf,
    /// Arguments after `-t <role> -i <index>` (e.g. `-c file`) and extra environment.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The child's HTTP endpoint (`TP_HTTP_HOST`, its own `TP_HTTP_PORT`), `None` when off: a
    /// recycled child's replacement waits for the old one to let go of it.
    pub http: Option<(String, u16)>,
    pub grace: Duration,
    pub recycle: Option<Duration>,
    pub max_crashes: usize,
    pub crash_window: Duration,
    pub status: Arc<Mutex<SlotStatus>>,
}

/// Asks a child to stop (SIGTERM).
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
}

fn event(role: Role, what: &'static str) {
    telemetry::supervisor_event(role.as_str(), what);
}

impl Slot {
    fn name(&self) -> String {
        format!("{}-{}", self.role, self.index)
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let child = Command::new(&self.exe)
            .args(["-t", self.role.as_str(), "-i", &self.index.to_string()])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NEXXUS_SUPERVISOR_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.pid = child.id();
        st.starts += 1;
        event(self.role, "started");
        tracing::info!(message = "child started", child = self.name(), pid = child.id());
        Ok(child)
    }

    /// SIGTERM, then SIGKILL after the grace period.
    async fn stop(&self, child: Child) {
        terminate(&child);
        self.reap(child).await;
    }

    /// Waits for a child asked to stop, and kills it after the grace period.
    async fn reap(&self, mut child: Child) {
        if tokio::time::timeout(self.grace + Duration::from_secs(2), child.wait()).await.is_err() {
            tracing::warn!(message = "child did not stop in time, killing it", child = self.name());
            let _ = child.kill().await;
        }
    }

    fn give_up(&self, why: String) {
        tracing::error!(message = "giving up on child", child = self.name(), reason = why);
        event(self.role, "gave_up");
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        st.pid = None;
        st.gave_up = Some(why);
    }

    /// Runs until the desired state is `Stopping` (or the slot gives up).
    pub async fn run(self, mut desired: watch::Receiver<Desired>) {
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut backoff = retry::SUPERVISOR_CRASH.delays();
        let mut generation = desired.borrow().generation;
        loop {
            // Wait until running is wanted.
            loop {
                match desired.borrow().state {
                    RunState::Running => break,
                    RunState::Stopping => return,
                    RunState::Drained => {}
                }
                if desired.changed().await.is_err() {
                    return;
                }
            }
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => return self.give_up(format!("cannot start {}: {e}", self.exe.display())),
            };
            let mut started = Instant::now();
            let mut recycle_at = self.recycle.map(|r| Instant::now() + r);
            loop {
                let recycle = async {
                    match recycle_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    status = child.wait() => {
                        self.status.lock().unwrap_or_else(|p| p.into_inner()).pid = None;
                        let code = status.ok().and_then(|s| s.code());
                        if code == Some(64) {
                            // A configuration error does not heal by restarting.
                            return self.give_up(format!("{} exited 64 (usage or configuration error)", self.name()));
                        }
                        let now = Instant::now();
                        crashes.push_back(now);
                        while crashes.front().is_some_and(|t| now.duration_since(*t) > self.crash_window) {
                            crashes.pop_front();
                        }
                        self.status.lock().unwrap_or_else(|p| p.into_inner()).crashes += 1;
                        event(self.role, "crashed");
                        tracing::warn!(message = "child exited unexpectedly", child = self.name(), code, recent_crashes = crashes.len());
                        if crashes.len() >= self.max_crashes {
                            return self.give_up(format!(
                                "{} crashed {} times within {} s",
                                self.name(), crashes.len(), self.crash_window.as_secs()
                            ));
                        }
                        // A child that outlived the crash window was healthy: this crash is not
                        // part of a loop, and its restart need not wait for earlier ones.
                        if now.duration_since(started) >= self.crash_window {
                            backoff.reset();
                        }
                        tokio::time::sleep(backoff.next_delay()).await;
                        break;
                    }
                    () = recycle => {
                        event(self.role, "recycled");
                        child = self.replace(child).await;
                        started = Instant::now();
                        recycle_at = self.recycle.map(|r| Instant::now() + r);
                    }
                    changed = desired.changed() => {
                        let d = *desired.borrow();
                        if changed.is_err() || d.state != RunState::Running {
                            self.stop(child).await;
                            self.status.lock().unwrap_or_else(|p| p.into_inner()).pid = None;
                            event(self.role, "stopped");
                            if changed.is_err() || d.state == RunState::Stopping {
                                return;
                            }
                            break;
                        }
                        if d.generation != generation {
                            generation = d.generation;
                            event(self.role, "recycled");
                            child = self.replace(child).await;
                            started = Instant::now();
                            backoff.reset();
                        }
                    }
                }
            }
        }
    }

    /// Hot reload: start the new child, then drain the old one. A sockets transport owns its
    /// port and its index's registry entries, so its old child stops first.
    async fn replace(&self, old: Child) -> Child {
        tracing::info!(message = "recycling child", child = self.name());
        if self.role == Role::SocketsTransport {
            self.stop(old).await;
            return self.spawn_or_wait().await;
        }
        // The old child lets go of its HTTP port first when asked to stop, then drains; the new
        // one binds that same port, so it starts once the port is free (else it would fail to
        // bind and be counted as a crash), while the old one is still draining.
        terminate(&old);
        self.until_http_port_free().await;
        let new = self.spawn_or_wait().await;
        self.reap(old).await;
        new
    }

    /// Until nothing listens on the child's HTTP port, at most the grace period.
    async fn until_http_port_free(&self) {
        let Some((host, port)) = self.http.as_ref().filter(|(_, p)| *p != 0) else { return };
        let deadline = Instant::now() + self.grace;
        while std::net::TcpListener::bind((host.as_str(), *port)).is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn spawn_or_wait(&self) -> Child {
        loop {
            match self.spawn() {
                Ok(c) => return c,
                Err(e) => {
                    tracing::error!(message = "cannot start child, retrying", child = self.name(), error = %e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
