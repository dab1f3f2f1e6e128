//! The stages of `bench_raw_kafka`: a paced generator, the transactional transform, and the
//! measured consumer. Each payload is `[produce time µs (0 = warm-up)][sequence][padding]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use nexxus_worker::queue::kafka::Producer;
use nexxus_worker::queue::outbox::Outbox;
use nexxus_worker::queue::source::{Offsets, Received, Source};
use tokio_util::sync::CancellationToken;

use crate::limits::{histogram, now_micros};

/// Produces awaiting acknowledgement at once; bounds memory at full speed.
const MAX_IN_FLIGHT: usize = 20_000;

/// The offered load: `rate` messages per second (0 = as fast as the producer accepts).
pub struct Load {
    pub rate: u64,
    pub duration: Duration,
    pub size: usize,
    pub keys: u64,
}

/// Progress the stages share with `main`.
#[derive(Default)]
pub struct Counters {
    warm: AtomicU64,
    received: AtomicU64,
}

pub struct Generated {
    pub sent: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

/// What the measured consumer saw.
pub struct Receipt {
    pub count: u64,
    pub duplicates: u64,
    pub batches: u64,
    /// Produce stamp → batch received, µs.
    pub latency: Histogram<u64>,
    /// Marking a batch's offsets done (committed by librdkafka every second), µs.
    pub commit: Histogram<u64>,
}

/// What the transform stage did.
pub struct Transactions {
    pub batches: u64,
    /// Begin → transaction committed (produce, settle, offsets, commit), µs.
    pub transaction: Histogram<u64>,
}

fn payload(stamp: u64, seq: u64, size: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(size.max(16));
    p.extend_from_slice(&stamp.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    // Pseudo-random hex padding: lz4 (the producer's compression) must not shrink it to
    // nothing, or the wire would carry far fewer bytes than the roles' JSON does.
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(b"0123456789abcdef"[(x & 15) as usize]);
    }
    p
}

fn stamp_and_seq(payload: &[u8]) -> Option<(u64, u64)> {
    let stamp = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((stamp, seq))
}

/// One send, owning everything it needs so many can be in flight from one task.
fn send(producer: &Producer, topic: &str, key: u64, payload: Vec<u8>) -> impl std::future::Future<Output = bool> {
    let (producer, topic, key) = (producer.clone(), topic.to_string(), format!("k{key}"));
    async move { producer.send(&topic, Some(key.as_bytes()), &payload, &[]).await.is_ok() }
}

/// Sends `count` unmeasured messages over every key and waits until the consumer saw them all.
pub async fn warm_up(
    producer: &Producer,
    topic: &str,
    count: u64,
    load: &Load,
    counters: &Counters,
) -> anyhow::Result<()> {
    let sends: FuturesUnordered<_> =
        (0..count).map(|n| send(producer, topic, n % load.keys, payload(0, 0, load.size))).collect();
    let acked = sends.filter(|ok| std::future::ready(*ok)).count().await as u64;
    anyhow::ensure!(acked == count, "warm-up: only {acked} of {count} produces acknowledged");
    let deadline = Instant::now() + Duration::from_secs(120);
    while counters.warm.load(Ordering::Relaxed) < count {
        anyhow::ensure!(Instant::now() < deadline, "warm-up messages not consumed within 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Offers `load` for its duration, keys round robin, each payload stamped when it is handed
/// to the producer.
pub async fn generate(producer: &Producer, topic: &str, load: &Load) -> Generated {
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut errors) = (0u64, 0u64);
    while started.elapsed() < load.duration {
        let due = (load.rate > 0).then(|| started + Duration::from_secs_f64(sent as f64 / load.rate as f64));
        // Collect acknowledgements while waiting for the next send time or for room.
        loop {
            let waiting = due.is_some_and(|d| d > Instant::now());
            if !waiting && in_flight.len() < MAX_IN_FLIGHT {
                break;
            }
            let sleep = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into());
            tokio::select! {
                Some(ok) = in_flight.next() => {
                    let ok: bool = ok;
                    errors += u64::from(!ok);
                }
                () = sleep, if waiting => {}
            }
        }
        in_flight.push(send(producer, topic, sent % load.keys, payload(now_micros(), sent, load.size)));
        sent += 1;
    }
    let elapsed = started.elapsed();
    while let Some(ok) = in_flight.next().await {
        errors += u64::from(!ok);
    }
    Generated { sent, errors, elapsed }
}

/// Waits until the consumer received `sent` measured messages, or `timeout`.
pub async fn drain(counters: &Counters, sent: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while counters.received.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One record plus whatever is already buffered, up to `max`, as the pipeline batches
/// (`None` once stopped).
async fn batch<'c>(source: &'c Source, max: usize, stop: &CancellationToken) -> Option<Vec<Received<'c>>> {
    let first = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            m = source.recv() => if let Ok(m) = m { break m },
        }
    };
    let mut batch = vec![first];
    while batch.len() < max {
        match source.try_recv() {
            Some(Ok(m)) => batch.push(m),
            Some(Err(_)) => continue,
            None => break,
        }
    }
    Some(batch)
}

/// The measured consumer: stamps each batch on arrival, then commits it synchronously.
pub async fn sink(
    source: Source,
    max: usize,
    counters: std::sync::Arc<Counters>,
    stop: CancellationToken,
) -> anyhow::Result<Receipt> {
    let mut r = Receipt { count: 0, duplicates: 0, batches: 0, latency: histogram()?, commit: histogram()? };
    let mut seen: Vec<bool> = Vec::new();
    while let Some(batch) = batch(&source, max, &stop).await {
        let now = now_micros();
        let mut next = Offsets::new();
        let mut warm = 0;
        for m in &batch {
            let record = m.record();
            next.insert((record.topic.to_string(), record.partition), record.offset + 1);
            match stamp_and_seq(record.payload) {
                Some((0, _)) | None => warm += 1,
                Some((stamp, seq)) => {
                    let seq = seq as usize;
                    if seq >= seen.len() {
                        seen.resize(seq + 1, false);
                    }
                    if std::mem::replace(&mut seen[seq], true) {
                        r.duplicates += 1;
                    } else {
                        r.count += 1;
                    }
                    r.latency.saturating_record(now.saturating_sub(stamp).max(1));
                }
            }
        }
        // Batches of warm-up messages only are not counted: `mean_batch` is of the measured load.
        r.batches += u64::from(warm < batch.len() as u64);
        drop(batch);
        let started = Instant::now();
        source.mark_done(&next)?;
        r.commit.saturating_record(started.elapsed().as_micros() as u64);
        counters.warm.fetch_add(warm, Ordering::Relaxed);
        counters.received.store(r.count, Ordering::Relaxed);
    }
    Ok(r)
}

/// Consume-transform-produce as the aggregation role commits it: one transaction per batch,
/// holding the batch's outputs and its input offsets.
pub async fn transform(
    source: Source,
    mut outbox: Outbox,
    output: String,
    max: usize,
    stop: CancellationToken,
) -> anyhow::Result<Transactions> {
    let mut t = Transactions { batches: 0, transaction: histogram()? };
    while let Some(batch) = batch(&source, max, &stop).await {
        let started = Instant::now();
        outbox.begin()?;
        let mut next = Offsets::new();
        for m in &batch {
            let record = m.record();
            outbox.send(&output, record.key, record.payload, &[]).await?;
            next.insert((record.topic.to_string(), record.partition), record.offset + 1);
        }
        drop(batch);
        outbox.settle().await?;
        outbox.commit_transaction(&source, &next).await?;
        t.transaction.saturating_record(started.elapsed().as_micros() as u64);
        t.batches += 1;
    }
    Ok(t)
}
