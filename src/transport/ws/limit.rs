//! A device's frame budget (`TP_SCKT_FRAMES_PER_SEC`): a token bucket (`governor`'s GCRA)
//! refilling `frames_per_sec` a second and holding twice that, so a client may send a burst of
//! `2 × frames_per_sec` frames and then `frames_per_sec` a second.
//!
//! The bucket belongs to the device, not to one connection ([`DeviceBudgets`], shared by a
//! transport's connections): the noisy-neighbour benchmark found that a client closed for
//! flooding reconnected at once and got a fresh burst each time. A device's connections now
//! draw from one bucket, which outlives them until it has refilled.
//!
//! A frame over the budget is not processed: the client gets `LIMIT_EXCEEDED`. So do
//! subscriptions the registry refuses for a device or channel limit. A client that *keeps
//! going* is closed with 1008 (policy violation): "keeps going" means as many refusals as one
//! full burst (`2 × frames_per_sec`) within [`STRIKE_WINDOW`], i.e. it ignored a whole burst
//! of `LIMIT_EXCEEDED` answers. A client that backs off after a refusal is never closed.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// The frame buckets of a transport's devices, keyed `<app>|<device>`.
pub struct DeviceBudgets {
    buckets: DefaultKeyedRateLimiter<String>,
    frames_per_sec: u32,
}

impl DeviceBudgets {
    pub fn new(frames_per_sec: u32) -> DeviceBudgets {
        let rate = NonZeroU32::new(frames_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        DeviceBudgets { buckets: RateLimiter::hashmap(Quota::per_second(rate).allow_burst(burst)), frames_per_sec }
    }

    /// Forgets the buckets that are full again (a device that has been quiet for a burst's
    /// refill time), so the map holds only devices that spent frames recently.
    pub fn forget_refilled(&self) {
        self.buckets.retain_recent();
    }

    /// The frames per second each device may send.
    pub fn frames_per_sec(&self) -> u32 {
        self.frames_per_sec
    }

    /// Devices with a bucket (tests, metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// The period over which refusals are counted towards a close.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with a frame, or after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Answer `LIMIT_EXCEEDED` and go on.
    Refuse,
    /// Close with 1008.
    Close,
}

/// One connection's view of its device's bucket, and its own count of refusals.
pub struct FrameBudget {
    devices: Arc<DeviceBudgets>,
    key: String,
    /// Refusals that close the connection when reached within one window.
    strikes_allowed: u32,
    strikes: u32,
    window_start: Instant,
}

impl FrameBudget {
    pub fn new(devices: Arc<DeviceBudgets>, app: &str, device: &str) -> FrameBudget {
        let burst = devices.frames_per_sec.max(1).saturating_mul(2);
        FrameBudget {
            devices,
            key: format!("{app}|{device}"),
            strikes_allowed: burst,
            strikes: 0,
            window_start: Instant::now(),
        }
    }

    /// A client frame arrived.
    pub fn frame(&mut self) -> Verdict {
        match self.devices.buckets.check_key(&self.key) {
            Ok(()) => Verdict::Allow,
            Err(_) => self.refused(),
        }
    }

    /// Counts a refusal (over the rate, or a registry limit): [`Verdict::Close`] once the
    /// client has been refused a burst's worth within the window.
    pub fn refused(&mut self) -> Verdict {
        self.refused_at(Instant::now())
    }

    fn refused_at(&mut self, now: Instant) -> Verdict {
        if now.duration_since(self.window_start) > STRIKE_WINDOW {
            self.window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if self.strikes >= self.strikes_allowed {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_passes_then_refusals_then_a_close() {
        let mut b = FrameBudget::new(Arc::new(DeviceBudgets::new(5)), "a", "d");
        let verdicts: Vec<Verdict> = (0..30).map(|_| b.frame()).collect();
        let allowed = verdicts.iter().filter(|v| **v == Verdict::Allow).count();
        // Ten at once, plus whatever refilled while the loop ran (nothing measurable).
        assert!((10..=11).contains(&allowed), "{verdicts:?}");
        let first_close = verdicts.iter().position(|v| *v == Verdict::Close);
        assert_eq!(first_close, Some(allowed + 9), "closed at the tenth refusal: {verdicts:?}");
    }

    #[test]
    fn a_client_that_backs_off_is_never_closed() {
        let mut b = FrameBudget::new(Arc::new(DeviceBudgets::new(2)), "a", "d");
        for _ in 0..4 {
            assert_eq!(b.frame(), Verdict::Allow);
        }
        assert_eq!(b.frame(), Verdict::Refuse);
        // Refusals spread wider than the window never add up to a close.
        let mut at = Instant::now();
        for _ in 0..10 {
            at += STRIKE_WINDOW + Duration::from_millis(1);
            assert_eq!(b.refused_at(at), Verdict::Refuse);
        }
    }

    #[test]
    fn a_reconnecting_device_gets_no_fresh_burst() {
        let devices = Arc::new(DeviceBudgets::new(5));
        let mut first = FrameBudget::new(devices.clone(), "a", "d");
        let allowed = (0..20).filter(|_| first.frame() == Verdict::Allow).count();
        assert!((10..=11).contains(&allowed));
        drop(first);
        // The same device on a new connection: the bucket is still empty.
        let mut again = FrameBudget::new(devices.clone(), "a", "d");
        assert_eq!(again.frame(), Verdict::Refuse);
        // Another device, and the same device id of another application, have their own.
        assert_eq!(FrameBudget::new(devices.clone(), "a", "e").frame(), Verdict::Allow);
        assert_eq!(FrameBudget::new(devices.clone(), "b", "d").frame(), Verdict::Allow);
        devices.forget_refilled();
        assert!(!devices.is_empty(), "a spent bucket is kept");
    }
}
