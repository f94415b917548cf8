//! [`Gate`]: one authenticator operation at a time, on a blocking thread, with a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::{Authenticator, CancelSignal, GateError, Presence};

/// Time limits for one check.
#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// How long the operation on the device may take before the caller gets
    /// [`GateError::Timeout`] (and the operation is cancelled).
    pub op_timeout: Duration,
    /// How long to wait for another check to release the device before
    /// answering [`GateError::Busy`].
    pub device_wait: Duration,
}

/// The gate k_proxy runs once per login. Cheap to clone; clones share the device lock.
#[derive(Clone)]
pub struct Gate {
    authenticator: Arc<dyn Authenticator>,
    /// One permit: one operation on the device at a time (CTAP HID is one
    /// request at a time per channel, and a second open of the key would race it).
    device: Arc<Semaphore>,
    settings: GateSettings,
}

/// Fires the cancel signal when dropped: on every way out of `check`, including
/// the future being dropped because the client disconnected.
struct CancelOnDrop(CancelSignal);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Gate {
    /// A gate in front of `authenticator`.
    pub fn new(authenticator: Arc<dyn Authenticator>, settings: GateSettings) -> Self {
        Self {
            authenticator,
            device: Arc::new(Semaphore::new(1)),
            settings,
        }
    }

    /// The authenticator's one-line description, for the start-up log.
    pub fn describe(&self) -> String {
        self.authenticator.describe()
    }

    /// The settings this gate was built with.
    pub fn settings(&self) -> GateSettings {
        self.settings
    }

    /// Runs the check once for `username` (used for logs only at presence level).
    ///
    /// Waits for the device at most `device_wait` (else [`GateError::Busy`]); the
    /// operation gets `op_timeout` (else [`GateError::Timeout`], and it is
    /// cancelled). The device stays locked until the blocking call has really
    /// returned, so no operation overlaps one that is stuck or winding down.
    pub async fn check(&self, username: &str) -> Result<Presence, GateError> {
        let GateSettings {
            op_timeout,
            device_wait,
        } = self.settings;

        let permit =
            match tokio::time::timeout(device_wait, self.device.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // Ok(Err(_)) means the semaphore was closed; we never close it, but fail closed.
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(?username, ?device_wait, "gate: device busy");
                    return Err(GateError::Busy {
                        waited: device_wait,
                    });
                }
            };

        let cancel = CancelSignal::new();
        // Declared before the task is spawned: whatever happens from here on
        // (return, timeout, this future dropped), the operation is told to stop.
        let _cancel_on_drop = CancelOnDrop(cancel.clone());

        let authenticator = Arc::clone(&self.authenticator);
        let op_cancel = cancel.clone();
        let task = tokio::task::spawn_blocking(move || {
            // The permit lives as long as the blocking call, not as long as our wait for it.
            let _permit = permit;
            authenticator.check_presence(&op_cancel)
        });

        let result = match tokio::time::timeout(op_timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => Err(GateError::Device {
                detail: if join_error.is_panic() {
                    "the authenticator panicked".to_string()
                } else {
                    "the authenticator task was cancelled".to_string()
                },
            }),
            Err(_elapsed) => {
                cancel.cancel();
                Err(GateError::Timeout { after: op_timeout })
            }
        };

        match &result {
            Ok(presence) => {
                tracing::info!(?username, device = %presence.device, "gate: key present")
            }
            Err(e) => tracing::warn!(?username, code = e.code(), error = %e, "gate: refused"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SoftAuthenticator, SoftBehavior};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    fn settings(op_ms: u64, wait_ms: u64) -> GateSettings {
        GateSettings {
            op_timeout: Duration::from_millis(op_ms),
            device_wait: Duration::from_millis(wait_ms),
        }
    }

    fn soft(behavior: SoftBehavior, s: GateSettings) -> Gate {
        Gate::new(Arc::new(SoftAuthenticator::new(behavior)), s)
    }

    /// Wait (really, these are OS threads) until `cond` holds, or fail after 5 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Slow but present; records how many calls run at once.
    struct Slow {
        current: AtomicUsize,
        max: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Authenticator for Slow {
        fn describe(&self) -> String {
            "slow test authenticator".into()
        }
        fn check_presence(&self, _cancel: &CancelSignal) -> Result<Presence, GateError> {
            let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
            self.max.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(50));
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.current.fetch_sub(1, Ordering::SeqCst);
            Ok(Presence {
                device: "slow".into(),
            })
        }
    }

    /// Ignores cancellation for a while, like a HID read that cannot be interrupted.
    struct Stubborn {
        hold: Duration,
        done: AtomicBool,
    }

    impl Authenticator for Stubborn {
        fn describe(&self) -> String {
            "stubborn test authenticator".into()
        }
        fn check_presence(&self, _cancel: &CancelSignal) -> Result<Presence, GateError> {
            std::thread::sleep(self.hold);
            self.done.store(true, Ordering::SeqCst);
            Err(GateError::Cancelled)
        }
    }

    struct Panics;

    impl Authenticator for Panics {
        fn describe(&self) -> String {
            "panicking test authenticator".into()
        }
        fn check_presence(&self, _cancel: &CancelSignal) -> Result<Presence, GateError> {
            panic!("authenticator bug")
        }
    }

    #[tokio::test]
    async fn present_is_ok() {
        let gate = soft(SoftBehavior::Present, settings(1000, 1000));
        let p = gate.check("alice").await.unwrap();
        assert_eq!(p.device, "software authenticator");
        assert!(gate.describe().contains("SOFTWARE"));
    }

    #[tokio::test]
    async fn no_key_is_refused_with_code_no_key() {
        let gate = soft(SoftBehavior::NoKey, settings(1000, 1000));
        let e = gate.check("alice").await.unwrap_err();
        assert!(matches!(e, GateError::NoKey));
        assert_eq!(e.code(), "no_key");
    }

    #[tokio::test]
    async fn no_touch_times_out_and_the_blocking_thread_ends() {
        let exits = Arc::new(AtomicUsize::new(0));
        let auth = SoftAuthenticator::with_exit_counter(SoftBehavior::NoTouch, exits.clone());
        let gate = Gate::new(Arc::new(auth), settings(200, 1000));

        let started = Instant::now();
        let e = gate.check("alice").await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, GateError::Timeout { after } if after == Duration::from_millis(200)),
            "{e:?}"
        );
        assert_eq!(e.code(), "touch_timeout");
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");

        eventually("blocking call returned", || {
            exits.load(Ordering::SeqCst) == 1
        })
        .await;
        eventually("device released", || gate.device.available_permits() == 1).await;
    }

    #[tokio::test]
    async fn second_concurrent_check_is_busy() {
        let gate = soft(SoftBehavior::NoTouch, settings(1000, 100));
        let (a, b) = tokio::join!(gate.check("alice"), gate.check("bob"));
        let mut codes = [a.unwrap_err().code(), b.unwrap_err().code()];
        codes.sort();
        assert_eq!(codes, ["device_busy", "touch_timeout"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_take_turns_on_the_device() {
        let slow = Arc::new(Slow {
            current: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let gate = Gate::new(slow.clone(), settings(5000, 5000));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..6 {
            let gate = gate.clone();
            set.spawn(async move { gate.check(&format!("user{i}")).await });
        }
        while let Some(joined) = set.join_next().await {
            joined.unwrap().unwrap();
        }
        assert_eq!(slow.calls.load(Ordering::SeqCst), 6);
        assert_eq!(slow.max.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn dropping_the_check_future_cancels_the_operation() {
        let exits = Arc::new(AtomicUsize::new(0));
        let auth = SoftAuthenticator::with_exit_counter(SoftBehavior::NoTouch, exits.clone());
        let gate = Gate::new(Arc::new(auth), settings(60_000, 1000));

        // The client "disconnects" after 100 ms: the check future is dropped mid-operation.
        let dropped = tokio::time::timeout(Duration::from_millis(100), gate.check("alice")).await;
        assert!(dropped.is_err());

        eventually("blocking call returned", || {
            exits.load(Ordering::SeqCst) == 1
        })
        .await;
        eventually("device released", || gate.device.available_permits() == 1).await;
    }

    #[tokio::test]
    async fn a_stuck_operation_keeps_the_device_locked_past_its_timeout() {
        let stubborn = Arc::new(Stubborn {
            hold: Duration::from_millis(600),
            done: AtomicBool::new(false),
        });
        let gate = Gate::new(stubborn.clone(), settings(100, 50));

        let e = gate.check("alice").await.unwrap_err();
        assert_eq!(e.code(), "touch_timeout");
        // The first call is still running on its thread: the device is not free.
        let e = gate.check("bob").await.unwrap_err();
        assert_eq!(e.code(), "device_busy");
        assert!(!stubborn.done.load(Ordering::SeqCst));

        eventually("stuck call returned", || {
            stubborn.done.load(Ordering::SeqCst)
        })
        .await;
        eventually("device released", || gate.device.available_permits() == 1).await;
    }

    #[tokio::test]
    async fn a_panicking_authenticator_is_a_device_error_and_frees_the_device() {
        let gate = Gate::new(Arc::new(Panics), settings(1000, 1000));
        let e = gate.check("alice").await.unwrap_err();
        assert_eq!(e.code(), "device_error");
        assert_eq!(gate.device.available_permits(), 1);
    }
}
