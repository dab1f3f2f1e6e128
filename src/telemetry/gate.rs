//! Log lines rate-limited per cause: a flood of bad input must not become a flood of log lines
//! (20,000 rejected patches once wrote 20,000 WARN lines). The first line of a cause in each
//! window is written with the number of lines suppressed since the last one; counters still
//! count every event.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One line per cause per window.
pub const WINDOW: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Cause {
    last: Option<Instant>,
    suppressed: u64,
}

static CAUSES: Mutex<Option<HashMap<&'static str, Cause>>> = Mutex::new(None);

/// Whether a log line for `cause` may be written now; `Some(n)` carries how many lines of this
/// cause were suppressed since the last one written. Causes are static strings, so the table
/// stays as small as the code's list of causes.
pub fn allow(cause: &'static str) -> Option<u64> {
    allow_at(cause, Instant::now())
}

fn allow_at(cause: &'static str, now: Instant) -> Option<u64> {
    let mut guard = CAUSES.lock().ok()?;
    let entry = guard.get_or_insert_with(HashMap::new).entry(cause).or_default();
    match entry.last {
        Some(last) if now.saturating_duration_since(last) < WINDOW => {
            entry.suppressed += 1;
            None
        }
        _ => {
            entry.last = Some(now);
            Some(std::mem::take(&mut entry.suppressed))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_suppressed_count() {
        let t0 = Instant::now();
        assert_eq!(allow_at("gate-test-a", t0), Some(0));
        for i in 1..100 {
            assert_eq!(allow_at("gate-test-a", t0 + Duration::from_millis(i)), None);
        }
        // Another cause has its own budget.
        assert_eq!(allow_at("gate-test-b", t0), Some(0));
        assert_eq!(allow_at("gate-test-a", t0 + WINDOW), Some(99));
        assert_eq!(allow_at("gate-test-a", t0 + WINDOW * 2), Some(0));
    }
}
