//! The wall clock, read in one place: seconds, milliseconds and microseconds since the Unix
//! epoch, each in the type its readers store (token claims and message timestamps are unsigned,
//! Kafka and CQL timestamps are `i64` milliseconds).
//!
//! A clock set before 1970 reads as the epoch instead of failing: every reader stamps or compares
//! a time, and none of them has a better answer than an obviously wrong one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

pub fn now_secs() -> u64 {
    since_epoch().as_secs()
}

pub fn now_millis() -> i64 {
    i64::try_from(since_epoch().as_millis()).unwrap_or(i64::MAX)
}

pub fn now_micros() -> u64 {
    u64::try_from(since_epoch().as_micros()).unwrap_or(u64::MAX)
}

/// Nanoseconds, for identifiers that must differ between two starts of a process.
pub fn now_nanos() -> u128 {
    since_epoch().as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2020-01-01T00:00:00Z.
    const YEAR_2020_SECS: u64 = 1_577_836_800;

    #[test]
    fn every_unit_reads_the_same_instant() {
        let secs = now_secs();
        let millis = now_millis();
        let micros = now_micros();
        let nanos = now_nanos();
        let after = now_secs();
        assert!(secs >= YEAR_2020_SECS, "after 2020: {secs}");
        let millis = u64::try_from(millis).expect("after 1970");
        // Read in order, each a little later: a coarser unit never runs ahead of a finer one.
        assert!(millis / 1_000 >= secs && millis / 1_000 <= after, "{secs} s vs {millis} ms");
        assert!(micros / 1_000 >= millis && micros / 1_000_000 <= after, "{millis} ms vs {micros} µs");
        assert!(
            nanos / 1_000 >= u128::from(micros) && nanos / 1_000_000_000 <= u128::from(after),
            "{micros} µs vs {nanos} ns"
        );
    }

    #[test]
    fn the_clock_moves_forward() {
        let first = now_micros();
        std::thread::sleep(Duration::from_millis(5));
        let second = now_micros();
        assert!(second >= first + 5_000, "{first} then {second}");
        assert!(second - first < 60_000_000, "five milliseconds, not a minute: {first} then {second}");
    }
}
