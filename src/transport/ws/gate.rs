//! How many snapshots and catch-ups one sockets transport reads at once, in all and per
//! application.
//!
//! A snapshot reads a whole channel and a catch-up holds up to `CATCHUP_LIMIT` entries before it
//! is sent: unbounded, the resumes that follow a transport's restart (every client at once)
//! would hold every catch-up in memory together, and one application's clients could keep the
//! store busy for all the others. Past either bound a subscribe waits its turn (its deliveries
//! queue meanwhile, as during its own snapshot); nothing is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Snapshots and catch-ups read at once by one transport.
pub const SYNCS_AT_ONCE: usize = 32;
/// Of which one application's at most.
pub const SYNCS_PER_APP: usize = 8;

pub struct SyncGate {
    total: Arc<Semaphore>,
    per_app: Mutex<HashMap<String, Arc<Semaphore>>>,
    per_app_limit: usize,
}

/// A turn: the sync may read while it is held.
pub struct Turn {
    _app: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl SyncGate {
    pub fn new(total: usize, per_app: usize) -> SyncGate {
        SyncGate {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_app: Mutex::new(HashMap::new()),
            per_app_limit: per_app.max(1),
        }
    }

    /// Waits for a turn of `app` (its own share first, so an application at its limit does not
    /// hold places of the total while it waits). `None` only if the gate were closed, which
    /// nothing does.
    pub async fn turn(&self, app: &str) -> Option<Turn> {
        let own = {
            // Applications are the operator's, so this map is as bounded as they are.
            let mut map = self.per_app.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(app.to_owned()).or_insert_with(|| Arc::new(Semaphore::new(self.per_app_limit))).clone()
        };
        let app_permit = own.acquire_owned().await.ok()?;
        let total_permit = self.total.clone().acquire_owned().await.ok()?;
        Some(Turn { _app: app_permit, _total: total_permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_application_at_its_limit_leaves_room_for_the_others() {
        let gate = Arc::new(SyncGate::new(3, 2));
        let a1 = gate.turn("a").await;
        let _a2 = gate.turn("a").await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _a3 = gate.turn("a").await;
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "a third turn of `a` waits");
        let _b1 = tokio::time::timeout(Duration::from_millis(10), gate.turn("b")).await.expect("b is not held up by a");
        drop(a1);
        tokio::time::timeout(Duration::from_millis(10), waiting).await.expect("a's turn came").expect("no panic");
    }
}
