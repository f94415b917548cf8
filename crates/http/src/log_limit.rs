//! Lines a client can cause once per connection (a refused connection, a failed TLS
//! handshake) at most once a second each, with the number left out since: a flood of
//! connections must not become a flood of log lines, which every logger waits to have
//! written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_secs(1);

pub(crate) struct OncePerSecond {
    next: Mutex<Option<Instant>>,
    left_out: AtomicU64,
}

impl OncePerSecond {
    pub(crate) const fn new() -> Self {
        Self {
            next: Mutex::new(None),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    pub(crate) fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if next.is_some_and(|next| now < next) {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *next = Some(now + EVERY);
        Some(self.left_out.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second_and_the_count_of_those_left_out() {
        let limit = OncePerSecond::new();
        let start = Instant::now();
        assert_eq!(limit.allow_at(start), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(limit.allow_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.allow_at(start + Duration::from_secs(1)), Some(3));
        assert_eq!(limit.allow_at(start + Duration::from_millis(1500)), None);
        assert_eq!(limit.allow_at(start + Duration::from_secs(5)), Some(1));
    }
}
