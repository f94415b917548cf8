//! A cancel flag that a blocking thread can sleep on.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Fired by [`crate::Gate`] when the deadline passes or the caller goes away;
/// watched by the blocking authenticator call. Clones share one flag.
///
/// A `Condvar` rather than an atomic so a waiting implementation sleeps until
/// cancelled instead of polling.
#[derive(Clone, Default)]
pub struct CancelSignal {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl CancelSignal {
    /// A fresh, not yet cancelled signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel, and wake every thread in [`CancelSignal::wait_timeout`]. Idempotent.
    pub fn cancel(&self) {
        *self.flag() = true;
        self.inner.1.notify_all();
    }

    /// Whether [`CancelSignal::cancel`] has been called.
    pub fn is_cancelled(&self) -> bool {
        *self.flag()
    }

    /// Sleep until cancelled or until `d` has passed. Returns true if cancelled.
    pub fn wait_timeout(&self, d: Duration) -> bool {
        // A deadline that overflows Instant is as good as "forever".
        let deadline = Instant::now().checked_add(d);
        let mut cancelled = self.flag();
        // Loop: Condvar wake-ups may be spurious.
        while !*cancelled {
            let left = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                None => Duration::from_secs(3600),
            };
            cancelled = match self.inner.1.wait_timeout(cancelled, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// The flag, even if a panicking thread poisoned the lock: a bool cannot be
    /// left half-written, and the gate must never panic on its own bookkeeping.
    fn flag(&self) -> MutexGuard<'_, bool> {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for CancelSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelSignal")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn starts_uncancelled_and_times_out() {
        let c = CancelSignal::new();
        assert!(!c.is_cancelled());
        let t = Instant::now();
        assert!(!c.wait_timeout(Duration::from_millis(50)));
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn cancel_wakes_a_waiter_promptly_and_clones_share_it() {
        let c = CancelSignal::new();
        let waiter = {
            let c = c.clone();
            thread::spawn(move || {
                let t = Instant::now();
                (c.wait_timeout(Duration::from_secs(30)), t.elapsed())
            })
        };
        thread::sleep(Duration::from_millis(50));
        c.cancel();
        let (cancelled, took) = waiter.join().unwrap();
        assert!(cancelled);
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(c.is_cancelled());
        // Already cancelled: returns at once, also with a huge timeout.
        assert!(c.wait_timeout(Duration::MAX));
    }
}
