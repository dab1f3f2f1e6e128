//! A connection's bounded queue of frames and its close signal, in one allocation.
//!
//! Kept here rather than taken from a crate because idle connections are what bound a
//! transport's capacity: tokio's mpsc channel allocates a block of 32 slots when it is created
//! (about 1 KiB per idle connection, measured with heaptrack; BENCHMARKS, "Memory per idle
//! connection"), and flume allocates a waiter each time its receiver waits. This queue allocates
//! only while frames wait, and its waiter lives inside the receiving future (tokio's `Notify`).
//! One producer side (the hub, under its lock) and one consumer (the connection's loop).
//!
//! The close signal shares that `Notify` instead of a `CancellationToken`: a token is one more
//! allocation per connection, and polling one takes its mutex on every wake-up of the loop (a
//! profile of a 5,000-client fan-out showed 3% of the transport's CPU there). Process shutdown
//! reaches connections the same way ([`super::hub::Hub::close_all`]). Only one future of the
//! connection's task waits at a time ([`Mailbox::next`] or [`Mailbox::closed`]), and each checks
//! its condition before waiting, so `notify_one`'s single stored permit loses nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Above this many slots, an emptied queue gives its memory back (a burst must not leave
/// every connection that took it holding its peak).
const KEEP_SLOTS: usize = 16;

pub struct Mailbox {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    capacity: usize,
    ready: Notify,
    /// The close code asked for; 0 while open.
    code: AtomicU16,
}

/// What the connection's loop is to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Frame(Utf8Bytes),
    /// Close with this code (queued frames are abandoned).
    Close(u16),
}

impl Mailbox {
    /// A queue of at most `capacity` frames (at least one).
    pub fn new(capacity: usize) -> Mailbox {
        Mailbox {
            frames: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            ready: Notify::new(),
            code: AtomicU16::new(0),
        }
    }

    /// Queues `frame`; `false` (and nothing queued) when `capacity` frames already wait.
    pub fn push(&self, frame: Utf8Bytes) -> bool {
        {
            let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
            if frames.len() >= self.capacity {
                return false;
            }
            frames.push_back(frame);
        }
        // Stores a permit if the loop is not waiting yet, so no wake-up is lost.
        self.ready.notify_one();
        true
    }

    /// The next waiting frame, if any.
    pub fn try_pop(&self) -> Option<Utf8Bytes> {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        let frame = frames.pop_front();
        if frames.is_empty() && frames.capacity() > KEEP_SLOTS {
            frames.shrink_to_fit();
        }
        frame
    }

    /// Waits for the next frame, or the close asked for (which wins over waiting frames).
    /// Cancel-safe: a frame leaves the queue only when this returns.
    pub async fn next(&self) -> Next {
        loop {
            match self.code() {
                0 => {}
                code => return Next::Close(code),
            }
            if let Some(frame) = self.try_pop() {
                return Next::Frame(frame);
            }
            self.ready.notified().await;
        }
    }

    /// Resolves once the connection is asked to close (for racing a write against it).
    pub async fn closed(&self) -> u16 {
        loop {
            match self.code() {
                0 => self.ready.notified().await,
                code => return code,
            }
        }
    }

    /// Asks the connection to close with `code` (non-zero); the first code asked for wins.
    pub fn close(&self, code: u16) {
        let _ = self.code.compare_exchange(0, code.max(1), Ordering::AcqRel, Ordering::Acquire);
        self.ready.notify_one();
    }

    /// The code the connection was asked to close with (0: not asked).
    pub fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }

    /// Asked to close: nothing more is to be queued.
    pub fn is_closing(&self) -> bool {
        self.code() != 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_queue_refuses_and_an_emptied_one_gives_its_memory_back() {
        let m = Mailbox::new(100);
        for i in 0..100 {
            assert!(m.push(Utf8Bytes::from(format!("f{i}"))));
        }
        assert!(!m.push(Utf8Bytes::from_static("one too many")));
        let popped: Vec<Utf8Bytes> = std::iter::from_fn(|| m.try_pop()).collect();
        assert_eq!(popped.len(), 100);
        assert_eq!(popped[0].as_str(), "f0", "first in, first out");
        assert_eq!(popped[99].as_str(), "f99");
        assert!(m.frames.lock().unwrap().capacity() <= KEEP_SLOTS);
    }

    #[test]
    fn the_first_close_code_wins() {
        let m = Mailbox::new(1);
        assert_eq!(m.code(), 0);
        m.close(4008);
        m.close(1001);
        assert_eq!(m.code(), 4008);
        assert!(m.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_next_wakes_on_a_push_and_a_dropped_one_loses_nothing() {
        let m = Arc::new(Mailbox::new(4));
        // A wait abandoned before anything arrives (the loop's select! chose another branch).
        assert!(tokio::time::timeout(Duration::from_millis(10), m.next()).await.is_err());
        let waiting = tokio::spawn({
            let m = m.clone();
            async move { m.next().await }
        });
        tokio::task::yield_now().await;
        assert!(m.push(Utf8Bytes::from_static("a")));
        assert_eq!(waiting.await.unwrap(), Next::Frame(Utf8Bytes::from_static("a")));
        // Pushed while nobody waits: the next wait takes it at once.
        assert!(m.push(Utf8Bytes::from_static("b")));
        assert_eq!(m.next().await, Next::Frame(Utf8Bytes::from_static("b")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_close_reaches_whichever_future_waits_and_wins_over_queued_frames() {
        let m = Arc::new(Mailbox::new(4));
        // A push's wake-up taken by `closed` (a write was in progress) is not a close...
        let closed = tokio::spawn({
            let m = m.clone();
            async move { m.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(m.push(Utf8Bytes::from_static("a")));
        tokio::task::yield_now().await;
        assert!(!closed.is_finished(), "a push does not resolve `closed`");
        // ...and the frame is still there for the loop afterwards.
        assert_eq!(m.next().await, Next::Frame(Utf8Bytes::from_static("a")));
        m.close(1001);
        assert_eq!(closed.await.unwrap(), 1001);
        // Asked to close while nobody waits: the next wait says so, before any queued frame.
        let m = Mailbox::new(4);
        assert!(m.push(Utf8Bytes::from_static("queued")));
        m.close(4008);
        assert_eq!(m.next().await, Next::Close(4008));
        assert_eq!(m.closed().await, 4008);
    }
}
