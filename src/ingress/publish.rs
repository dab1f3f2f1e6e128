//! How the ingress produces a request's records: all or nothing, in both layouts.
//!
//! In process, the records are appended together once the topic has room for all of them
//! ([`Broker::append_all`]), or not at all when the request's wait runs out. Over Kafka they go
//! in one producer transaction: the roles consume `read_committed`, so they see the whole request
//! or none of it, and a failure is answered "none accepted": the client sends the whole request
//! again. (Before, the records were produced one by one and a failure could leave some in: the
//! answer could only say "some may have been accepted".)
//!
//! A transaction per request would hold every request to one commit round trip after another,
//! and two transactions of one producer back to back cost 100 ms more (below). The transactions
//! are shared instead (group commit): [`PRODUCERS`] tasks each own a transactional producer
//! (ids `<prefix>ingress-<name>-<i>`) and, in turn, put every request waiting into their next
//! transaction (up to [`MAX_RECORDS`]), commit it and answer each, then rest [`COOL_DOWN`] while
//! the others take the next requests. A transaction that fails fails every request in it, each of
//! them still whole or absent.
//!
//! What this does not settle: a client that gives up waiting (or a process that dies) after the
//! commit and before the answer does not know its request went in; retrying it doubles it.

use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::WorkerError;
use crate::queue::memory::Broker;
use crate::queue::outbox::Outbox;
use crate::queue::Queue;
use crate::telemetry::Health;

/// Records one transaction takes at most (requests are never split across two).
pub const MAX_RECORDS: usize = 10_000;
/// Transactional producers of one ingress, each committing in turn.
const PRODUCERS: usize = 4;
/// A producer's pause after each transaction (see the end of [`committer`]).
const COOL_DOWN: Duration = Duration::from_millis(20);
/// Requests waiting for the committers, at most; beyond, a request waits for room.
const QUEUED_REQUESTS: usize = 1024;

/// A request's records: (partition key, payload), in order.
pub type Records = Vec<(Option<String>, String)>;

/// Produces each request's records all or nothing.
#[derive(Clone)]
pub enum Publisher {
    Memory(Broker),
    Kafka(mpsc::Sender<Job>),
}

/// One request for the committer.
pub struct Job {
    topic: String,
    records: Records,
    answer: oneshot::Sender<Result<usize, String>>,
}

impl Publisher {
    /// The publisher of an ingress named `name` (unique per process in a deployment: its
    /// transactional id, so a restarted process fences its previous life's transaction).
    pub async fn connect(
        queue: &Queue,
        cfg: &Arc<Config>,
        health: &Arc<Health>,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<Publisher, WorkerError> {
        match queue {
            Queue::Memory(broker) => Ok(Publisher::Memory(broker.clone())),
            Queue::Kafka => {
                let (tx, rx) = mpsc::channel(QUEUED_REQUESTS);
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                let producers: Vec<Renewable> = (0..PRODUCERS)
                    .map(|i| Renewable {
                        cfg: cfg.clone(),
                        health: health.clone(),
                        id: cfg.topic(&format!("{name}-{i}")),
                    })
                    .collect();
                // Each `init_transactions` is a coordinator round trip: at start, all at once.
                let outboxes = futures::future::try_join_all(producers.iter().map(Renewable::outbox)).await?;
                for (producer, outbox) in producers.into_iter().zip(outboxes) {
                    tokio::spawn(committer(producer, Some(outbox), rx.clone(), shutdown.clone()));
                }
                Ok(Publisher::Kafka(tx))
            }
        }
    }

    /// Produces `records` to `topic` (full name) all or nothing: `Ok(count)` when all are in,
    /// `Err(why)` when none is. In process, waits at most `wait` for room.
    pub async fn publish(&self, topic: &str, records: Records, wait: Duration) -> Result<usize, String> {
        match self {
            Publisher::Memory(broker) => {
                let batch = records.into_iter().map(|(k, p)| (k.map(String::into_bytes), p.into_bytes())).collect();
                match tokio::time::timeout(wait, broker.append_all(topic, batch)).await {
                    Ok(Ok(n)) => Ok(n),
                    Ok(Err(why)) => Err(format!("{why}; none accepted")),
                    Err(_) => Err(format!("the in-process queue stayed full for {wait:?}; none accepted")),
                }
            }
            Publisher::Kafka(jobs) => {
                let (answer, answered) = oneshot::channel();
                let job = Job { topic: topic.to_string(), records, answer };
                jobs.send(job).await.map_err(|_| "the ingress's producer stopped; none accepted".to_string())?;
                answered.await.unwrap_or_else(|_| Err("the ingress's producer stopped; none accepted".into()))
            }
        }
    }
}

/// What the committer's transactional producer is made from, to make it again.
struct Renewable {
    cfg: Arc<Config>,
    health: Arc<Health>,
    id: String,
}

impl Renewable {
    /// A new transactional producer with the same id: its `init_transactions` fences the
    /// previous one and starts a new epoch, with fresh sequence numbers.
    async fn outbox(&self) -> Result<Outbox, WorkerError> {
        Ok(Outbox::new(Queue::Kafka.transactional_sink(&self.cfg, &self.health, &self.id).await?))
    }
}

/// Commits the waiting requests together, transaction after transaction, until `shutdown` (or
/// every sender is gone). After a failed transaction the producer is aborted and made anew: a
/// record the broker refused leaves a gap in the producer's sequence numbers that an abort alone
/// does not clear (the next commit failed with "skipped sequence numbers").
async fn committer(
    producer: Renewable,
    mut outbox: Option<Outbox>,
    jobs: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    shutdown: CancellationToken,
) {
    loop {
        let batch = {
            let mut jobs = tokio::select! {
                () = shutdown.cancelled() => return,
                jobs = jobs.lock() => jobs,
            };
            let first = tokio::select! {
                () = shutdown.cancelled() => return,
                job = jobs.recv() => match job { Some(job) => job, None => return },
            };
            let mut count = first.records.len();
            let mut batch = vec![first];
            while count < MAX_RECORDS {
                let Ok(job) = jobs.try_recv() else { break };
                count += job.records.len();
                batch.push(job);
            }
            batch
        };
        if outbox.is_none() {
            outbox = producer
                .outbox()
                .await
                .inspect_err(
                    |e| tracing::warn!(message = "the ingress's transactional producer cannot start", error = %e),
                )
                .ok();
        }
        let result = match &mut outbox {
            Some(out) => transaction(out, &batch).await,
            None => Err(("the ingress's transactional producer is not available".into(), false)),
        };
        match result {
            Ok(()) => {
                for job in batch {
                    let n = job.records.len();
                    let _ = job.answer.send(Ok(n));
                }
            }
            Err((why, begun)) => {
                tracing::warn!(message = "ingress transaction failed; its requests get 503", requests = batch.len(), error = %why);
                for job in batch {
                    let _ = job.answer.send(Err(format!("{why}; none accepted")));
                }
                if let (Some(mut out), true) = (outbox.take(), begun) {
                    if let Err(e) = out.abort_transaction().await {
                        tracing::warn!(message = "aborting the ingress transaction failed", error = %e);
                    }
                }
            }
        }
        // The coordinator writes the commit's markers after answering it; a transaction of this
        // producer begun before they are written is refused (CONCURRENT_TRANSACTIONS) and
        // retried 100 ms later. The other producers take the requests meanwhile.
        tokio::time::sleep(COOL_DOWN).await;
    }
}

/// One transaction of `batch`; on failure, why and whether it was begun (then it is aborted).
async fn transaction(outbox: &mut Outbox, batch: &[Job]) -> Result<(), (String, bool)> {
    outbox.begin().map_err(|e| (e.to_string(), false))?;
    for job in batch {
        for (key, payload) in &job.records {
            let key = key.as_deref().map(str::as_bytes);
            outbox.send(&job.topic, key, payload.as_bytes(), &[]).await.map_err(|e| (e.to_string(), true))?;
        }
    }
    outbox.commit_alone().await.map_err(|e| (e.to_string(), true))
}
