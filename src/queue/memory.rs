//! The in-process queue of `-t all` (`TP_MSG_QUE=memory`): Kafka's model, minus the network.
//!
//! Each topic is one ordered log (a single partition: one process runs one consumer per group,
//! so more partitions would add no parallelism, and one log keeps every object's changes in
//! order trivially). Consumer groups have a position and a committed offset per topic, exactly
//! what the pipeline needs: read ahead, commit after the side effects, rewind a batch to redo it.
//!
//! Bounded: a log holds at most `capacity` records that some group has not committed yet; a
//! producer waits for room (backpressure travels upstream to the ingress, which answers 503
//! rather than buffer without limit). A topic nobody consumes (`dead_letter` in one process)
//! keeps its newest `capacity` records and counts what it drops.
//!
//! Offsets start at the process's start time in microseconds, not at 0. Object ids of creates
//! and the writer's replay guard are derived from positions, so positions must never repeat
//! across restarts of a process whose store outlives it; they cannot, unless one life produced
//! more than a million records per second on one topic on average.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::model::clock;
use crate::telemetry;

/// One record in a log.
#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub timestamp_ms: i64,
}

/// The queue shared by every role of the process. Cheap to clone.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    topics: Mutex<HashMap<String, Arc<Topic>>>,
    capacity: usize,
    first_offset: i64,
}

struct Topic {
    name: Arc<str>,
    log: Mutex<Log>,
    /// Signalled when committed records are trimmed (producers waiting for room).
    room: Notify,
}

struct Log {
    records: VecDeque<Arc<Message>>,
    /// Offset of `records[0]`.
    base: i64,
    groups: HashMap<String, Cursor>,
    /// Consumers to wake when a record arrives.
    waiting: Vec<Arc<Notify>>,
    dropped: u64,
    /// Key and payload bytes of `records`.
    bytes: usize,
}

#[derive(Clone, Copy, Debug)]
struct Cursor {
    position: i64,
    committed: i64,
}

impl Log {
    fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }

    /// Drops the records every group has committed.
    fn trim(&mut self) -> bool {
        let Some(low) = self.groups.values().map(|c| c.committed).min() else { return false };
        let mut trimmed = false;
        while self.base < low && self.pop() {
            trimmed = true;
        }
        trimmed
    }

    /// Drops the oldest record.
    fn pop(&mut self) -> bool {
        let Some(m) = self.records.pop_front() else { return false };
        self.base += 1;
        self.bytes -= size_of(&m.key, &m.payload);
        true
    }

    /// No room for `size` more bytes: the record count is at `capacity`, or the bytes would pass
    /// [`MAX_LOG_BYTES`] (an empty log always takes one record, whatever its size).
    fn full(&self, capacity: usize, size: usize) -> bool {
        self.records.len() >= capacity || (!self.records.is_empty() && self.bytes + size > MAX_LOG_BYTES)
    }
}

/// Most key and payload bytes one in-process topic holds: a count bound alone let 10,000
/// messages of 1 MiB (the largest accepted) hold 10 GB, and a topic nobody reads (`dead_letter`)
/// keep as much.
pub const MAX_LOG_BYTES: usize = 64 << 20;

/// A record to append: its key (if any) and payload.
pub type KeyedRecord = (Option<Vec<u8>>, Vec<u8>);

fn size_of(key: &Option<Vec<u8>>, payload: &[u8]) -> usize {
    key.as_ref().map_or(0, Vec::len) + payload.len()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a log lock leaves a consistent log (every mutation is a single
    // push, pop or assignment), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Broker {
    /// A broker whose logs hold up to `capacity` unconsumed records each.
    pub fn new(capacity: usize) -> Broker {
        let micros = i64::try_from(clock::now_micros()).unwrap_or(i64::MAX);
        Broker {
            inner: Arc::new(Inner {
                topics: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
                first_offset: micros,
            }),
        }
    }

    fn topic(&self, name: &str) -> Arc<Topic> {
        let mut topics = lock(&self.inner.topics);
        // Looked up on every append: no key allocation once the topic exists.
        if let Some(t) = topics.get(name) {
            return t.clone();
        }
        let t = Arc::new(Topic {
            name: Arc::from(name),
            log: Mutex::new(Log {
                records: VecDeque::new(),
                base: self.inner.first_offset,
                groups: HashMap::new(),
                waiting: Vec::new(),
                dropped: 0,
                bytes: 0,
            }),
            room: Notify::new(),
        });
        topics.insert(name.to_string(), t.clone());
        t
    }

    /// Declares `group` on `topic` (from the earliest retained record, like a new Kafka group
    /// with `auto.offset.reset=earliest`). Declaring groups before anything is produced makes
    /// the logs keep records for them; `-t all` declares every role's groups at start.
    pub fn declare(&self, topic: &str, group: &str) {
        let t = self.topic(topic);
        let mut log = lock(&t.log);
        let base = log.base;
        log.groups.entry(group.to_string()).or_insert(Cursor { position: base, committed: base });
    }

    /// A consumer of `topics` in `group`.
    pub fn consumer(&self, group: &str, topics: &[String]) -> Consumer {
        let wake = Arc::new(Notify::new());
        let topics: Vec<Arc<Topic>> = topics
            .iter()
            .map(|name| {
                self.declare(name, group);
                let t = self.topic(name);
                lock(&t.log).waiting.push(wake.clone());
                t
            })
            .collect();
        Consumer { group: group.to_string(), topics, wake, next: AtomicUsize::new(0) }
    }

    /// Appends one record, waiting while the log is full. Returns its offset. Cancel-safe:
    /// nothing is appended unless it returns.
    pub async fn append(&self, topic: &str, key: Option<Vec<u8>>, payload: Vec<u8>) -> i64 {
        let t = self.topic(topic);
        let mut record = Some((key, payload));
        loop {
            let room = t.room.notified();
            tokio::pin!(room);
            // Registered before the check, so a trim between the check and the await wakes us.
            room.as_mut().enable();
            if let Some(offset) = self.try_append(&t, &mut record) {
                telemetry::produced(topic);
                return offset;
            }
            room.await;
        }
    }

    /// Takes the record out of `record` if there is room (or nobody reads the topic).
    fn try_append(&self, t: &Topic, record: &mut Option<(Option<Vec<u8>>, Vec<u8>)>) -> Option<i64> {
        let mut log = lock(&t.log);
        let size = record.as_ref().map_or(0, |(k, p)| size_of(k, p));
        if log.full(self.inner.capacity, size) && !log.groups.is_empty() {
            return None;
        }
        // Nobody reads this topic: keep the newest records.
        while log.full(self.inner.capacity, size) && log.pop() {
            log.dropped += 1;
            telemetry::memory_queue_dropped(&t.name);
        }
        let (key, payload) = record.take()?;
        log.bytes += size;
        let offset = log.end();
        let timestamp_ms = clock::now_millis();
        log.records.push_back(Arc::new(Message { topic: t.name.clone(), offset, key, payload, timestamp_ms }));
        for w in &log.waiting {
            w.notify_one();
        }
        Some(offset)
    }

    /// Appends `records` to `topic` together, in order: waits until the log has room for all of
    /// them and appends them under one lock, so a reader sees all or none (the ingress's
    /// requests are all or nothing). Cancel-safe: nothing is appended unless it returns. `Err`
    /// (nothing appended) when they could never fit: more records than the log holds.
    pub async fn append_all(&self, topic: &str, records: Vec<KeyedRecord>) -> Result<usize, String> {
        if records.len() > self.inner.capacity {
            return Err(format!(
                "{} records are more than the in-process queue holds ({}, TP_MEMORY_QUEUE_CAPACITY)",
                records.len(),
                self.inner.capacity
            ));
        }
        let t = self.topic(topic);
        let mut batch = Some(records);
        loop {
            let room = t.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(n) = self.try_append_all(&t, &mut batch) {
                for _ in 0..n {
                    telemetry::produced(topic);
                }
                return Ok(n);
            }
            room.await;
        }
    }

    fn try_append_all(&self, t: &Topic, batch: &mut Option<Vec<KeyedRecord>>) -> Option<usize> {
        let mut log = lock(&t.log);
        let records = batch.as_ref()?;
        let (count, size) = (records.len(), records.iter().map(|(k, p)| size_of(k, p)).sum::<usize>());
        let capacity = self.inner.capacity;
        let fits = |log: &Log| {
            log.records.len() + count <= capacity && (log.records.is_empty() || log.bytes + size <= MAX_LOG_BYTES)
        };
        if !fits(&log) && !log.groups.is_empty() {
            return None;
        }
        // Nobody reads this topic: keep the newest records.
        while !fits(&log) && log.pop() {
            log.dropped += 1;
            telemetry::memory_queue_dropped(&t.name);
        }
        let timestamp_ms = clock::now_millis();
        for (key, payload) in batch.take()? {
            log.bytes += size_of(&key, &payload);
            let offset = log.end();
            log.records.push_back(Arc::new(Message { topic: t.name.clone(), offset, key, payload, timestamp_ms }));
        }
        for w in &log.waiting {
            w.notify_one();
        }
        Some(count)
    }

    /// Records of `topic` some group has not committed yet, per group (lag; tests).
    pub fn lag(&self, topic: &str) -> HashMap<String, i64> {
        let t = self.topic(topic);
        let log = lock(&t.log);
        let end = log.end();
        log.groups.iter().map(|(g, c)| (g.clone(), end - c.committed)).collect()
    }

    /// True when every group of every topic has committed everything: nothing is in flight.
    pub fn is_idle(&self) -> bool {
        let topics: Vec<Arc<Topic>> = lock(&self.inner.topics).values().cloned().collect();
        topics.iter().all(|t| {
            let log = lock(&t.log);
            let end = log.end();
            log.groups.values().all(|c| c.committed >= end)
        })
    }

    /// The newest retained records of a topic (`GET /dead_letter` of the ingress).
    pub fn tail(&self, topic: &str, n: usize) -> Vec<Arc<Message>> {
        let t = self.topic(topic);
        let log = lock(&t.log);
        log.records.iter().rev().take(n).rev().cloned().collect()
    }

    /// Records dropped from a topic nobody consumes.
    pub fn dropped(&self, topic: &str) -> u64 {
        lock(&self.topic(topic).log).dropped
    }
}

/// One group's reader of one or more topics.
pub struct Consumer {
    group: String,
    topics: Vec<Arc<Topic>>,
    wake: Arc<Notify>,
    /// Round-robin start, so a busy topic cannot starve the others.
    next: AtomicUsize,
}

impl Consumer {
    /// The next record of any of the topics. Cancel-safe: nothing is taken unless returned.
    pub async fn recv(&self) -> Arc<Message> {
        loop {
            if let Some(m) = self.poll() {
                return m;
            }
            // `notify_one` stores a permit when nobody waits, so a record appended between
            // the poll and this await is not missed.
            self.wake.notified().await;
        }
    }

    /// The next record if one is ready now.
    pub fn poll(&self) -> Option<Arc<Message>> {
        let n = self.topics.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let t = &self.topics[(start + i) % n];
            let mut log = lock(&t.log);
            let (base, end) = (log.base, log.end());
            let Some(cursor) = log.groups.get_mut(&self.group) else { continue };
            if cursor.position < base {
                cursor.position = base;
            }
            if cursor.position < end {
                let at = (cursor.position - base) as usize;
                cursor.position += 1;
                return log.records.get(at).cloned();
            }
        }
        None
    }

    /// Marks everything before `next` as done on `topic`; the log trims what every group did.
    pub fn commit(&self, topic: &str, next: i64) {
        if let Some(t) = self.topics.iter().find(|t| &*t.name == topic) {
            let trimmed = {
                let mut log = lock(&t.log);
                if let Some(c) = log.groups.get_mut(&self.group) {
                    c.committed = c.committed.max(next);
                }
                log.trim()
            };
            if trimmed {
                t.room.notify_waiters();
            }
        }
    }

    /// Moves the group's position on `topic` back to `offset` (a batch to redo).
    pub fn seek(&self, topic: &str, offset: i64) {
        if let Some(t) = self.topics.iter().find(|t| &*t.name == topic) {
            let mut log = lock(&t.log);
            if let Some(c) = log.groups.get_mut(&self.group) {
                c.position = offset.max(c.committed);
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for t in &self.topics {
            lock(&t.log).waiting.retain(|w| !Arc::ptr_eq(w, &self.wake));
        }
    }
}

#[cfg(test)]
mod tests;
