//! A connection's frame budget (`TP_SCKT_FRAMES_PER_SEC`): a token bucket (`governor`'s GCRA)
//! refilling `frames_per_sec` a second and holding twice that, so a client may send a burst of
//! `2 × frames_per_sec` frames and then `frames_per_sec` a second.
//!
//! A frame over the budget is not processed: the client gets `LIMIT_EXCEEDED`. So do
//! subscriptions the registry refuses for a device or channel limit. A client that *keeps
//! going* is closed with 1008 (policy violation): "keeps going" means as many refusals as one
//! full burst (`2 × frames_per_sec`) within [`STRIKE_WINDOW`], i.e. it ignored a whole burst
//! of `LIMIT_EXCEEDED` answers. A client that backs off after a refusal is never closed.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

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

pub struct FrameBudget {
    bucket: DefaultDirectRateLimiter,
    /// Refusals that close the connection when reached within one window.
    strikes_allowed: u32,
    strikes: u32,
    window_start: Instant,
}

impl FrameBudget {
    pub fn new(frames_per_sec: u32) -> FrameBudget {
        let rate = NonZeroU32::new(frames_per_sec).unwrap_or(NonZeroU32::MIN);
        let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
        FrameBudget {
            bucket: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
            strikes_allowed: burst.get(),
            strikes: 0,
            window_start: Instant::now(),
        }
    }

    /// A client frame arrived.
    pub fn frame(&mut self) -> Verdict {
        match self.bucket.check() {
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
        let mut b = FrameBudget::new(5);
        let verdicts: Vec<Verdict> = (0..30).map(|_| b.frame()).collect();
        let allowed = verdicts.iter().filter(|v| **v == Verdict::Allow).count();
        // Ten at once, plus whatever refilled while the loop ran (nothing measurable).
        assert!((10..=11).contains(&allowed), "{verdicts:?}");
        let first_close = verdicts.iter().position(|v| *v == Verdict::Close);
        assert_eq!(first_close, Some(allowed + 9), "closed at the tenth refusal: {verdicts:?}");
    }

    #[test]
    fn a_client_that_backs_off_is_never_closed() {
        let mut b = FrameBudget::new(2);
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
}
