//! [`Gate`]: the gate level, one authenticator operation at a time, on a blocking
//! thread, with a deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ceremony;
use crate::credentials::CredentialStore;
use crate::outcome::{EnrolOptions, Enrolled, Passed};
use crate::{Authenticator, CancelSignal, GateError, GateLevel};

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

/// What the gate checks at each login, and what it needs for that.
#[derive(Debug, Clone)]
pub enum LevelConfig {
    /// A key answers authenticatorGetInfo.
    Presence,
    /// A person touches the key (nothing signed).
    Touch,
    /// The user's enrolled key signs a fresh challenge after a touch.
    Assertion {
        /// The relying-party id credentials are scoped to (`--rp-id`).
        rp_id: String,
        /// The enrolment file and its sign counts.
        store: Arc<CredentialStore>,
    },
}

impl LevelConfig {
    /// The level this configuration enforces.
    pub fn level(&self) -> GateLevel {
        match self {
            LevelConfig::Presence => GateLevel::Presence,
            LevelConfig::Touch => GateLevel::Touch,
            LevelConfig::Assertion { .. } => GateLevel::Assertion,
        }
    }
}

/// The gate k_proxy runs once per login. Cheap to clone; clones share the device lock.
#[derive(Clone)]
pub struct Gate {
    authenticator: Arc<dyn Authenticator>,
    /// One permit: one operation on the device at a time (CTAP HID is one
    /// request at a time per channel, and a second open of the key would race it).
    device: Arc<Semaphore>,
    /// One permit: whose turn it is among checks. A check keeps it until its caller has
    /// settled the outcome (see [`Gate::check_admitted`]); the device permit may outlive
    /// it briefly while a cancelled operation winds down.
    turn: Arc<Semaphore>,
    settings: GateSettings,
    level: Arc<LevelConfig>,
    /// `--require-attested`: logins only with credentials attested at enrolment.
    require_attested: bool,
}

/// Fires the cancel signal when dropped: on every way out of an operation, including
/// the future being dropped because the client disconnected.
struct CancelOnDrop(CancelSignal);

/// A check's turn and the caller's `settle`, which runs exactly once before the turn is
/// released: with the outcome, or with `None` when the check is dropped unfinished.
struct Settling<F: FnOnce(Option<&Result<Passed, GateError>>)> {
    settle: Option<F>,
    _turn: OwnedSemaphorePermit,
}

impl<F: FnOnce(Option<&Result<Passed, GateError>>)> Settling<F> {
    fn settle(&mut self, outcome: &Result<Passed, GateError>) {
        if let Some(settle) = self.settle.take() {
            settle(Some(outcome));
        }
    }
}

impl<F: FnOnce(Option<&Result<Passed, GateError>>)> Drop for Settling<F> {
    fn drop(&mut self) {
        if let Some(settle) = self.settle.take() {
            settle(None);
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Gate {
    /// A presence-level gate in front of `authenticator`.
    pub fn new(authenticator: Arc<dyn Authenticator>, settings: GateSettings) -> Self {
        Self::with_level(authenticator, settings, LevelConfig::Presence)
    }

    /// A gate in front of `authenticator` enforcing `level`.
    pub fn with_level(
        authenticator: Arc<dyn Authenticator>,
        settings: GateSettings,
        level: LevelConfig,
    ) -> Self {
        Self {
            authenticator,
            device: Arc::new(Semaphore::new(1)),
            turn: Arc::new(Semaphore::new(1)),
            settings,
            level: Arc::new(level),
            require_attested: false,
        }
    }

    /// At assertion level, logs in only with credentials attested at enrolment (their
    /// record in the side file beside the enrolment file); others answer `not_attested`.
    pub fn require_attested(mut self, yes: bool) -> Self {
        self.require_attested = yes;
        self
    }

    /// The authenticator's one-line description, for the start-up log.
    pub fn describe(&self) -> String {
        self.authenticator.describe()
    }

    /// The settings this gate was built with.
    pub fn settings(&self) -> GateSettings {
        self.settings
    }

    /// The level this gate enforces.
    pub fn level(&self) -> GateLevel {
        self.level.level()
    }

    /// Runs the gate once for `username` at the configured level.
    ///
    /// Waits for the device at most `device_wait` (else [`GateError::Busy`]); the
    /// operation gets `op_timeout` (else [`GateError::Timeout`], and it is
    /// cancelled). The device stays locked until the blocking call has really
    /// returned, so no operation overlaps one that is stuck or winding down. At
    /// assertion level the verification and the durable counter update run inside
    /// the same operation, before the answer.
    pub async fn check(&self, username: &str) -> Result<Passed, GateError> {
        self.check_with_pin(username, None).await
    }

    /// [`Gate::check`] with the PIN the login carried (used when the user's enrolment
    /// asks for user verification).
    pub async fn check_with_pin(
        &self,
        username: &str,
        pin: Option<crate::Pin>,
    ) -> Result<Passed, GateError> {
        match self
            .check_admitted(
                username,
                pin,
                || Ok::<(), std::convert::Infallible>(()),
                |_| {},
            )
            .await
        {
            Ok(result) => result,
            Err(never) => match never {},
        }
    }

    /// [`Gate::check`] for a caller that decides who may use the key (a login
    /// throttle). Checks take turns; within its turn a check
    /// - asks `admit` once the device is free, just before the key is used: its refusal
    ///   comes back as the outer `Err` and the key is not touched;
    /// - hands the outcome to `settle` before the next check's turn begins: `Some` with
    ///   the result, or `None` when this future was dropped (the client went away).
    ///
    /// So a refusal that `settle` counts is seen by the next check's `admit`: a login
    /// queued behind a failing one is judged on that failure, not let through a race.
    /// Waiting for the turn and for the device share one `device_wait`.
    pub async fn check_admitted<E>(
        &self,
        username: &str,
        pin: Option<crate::Pin>,
        admit: impl FnOnce() -> Result<(), E>,
        settle: impl FnOnce(Option<&Result<Passed, GateError>>),
    ) -> Result<Result<Passed, GateError>, E> {
        let deadline = tokio::time::Instant::now() + self.settings.device_wait;
        let turn = match tokio::time::timeout_at(deadline, self.turn.clone().acquire_owned()).await
        {
            Ok(Ok(turn)) => turn,
            Ok(Err(_)) | Err(_) => return Ok(Err(self.busy(username))),
        };
        // Declared before anything can fail or be dropped: `settle` runs, then the turn
        // passes on (the guard's fields drop after its `drop`).
        let mut settling = Settling {
            settle: Some(settle),
            _turn: turn,
        };
        let permit = match self.acquire_by(username, deadline).await {
            Ok(permit) => permit,
            Err(busy) => {
                let busy = Err(busy);
                settling.settle(&busy);
                return Ok(busy);
            }
        };
        if let Err(refused) = admit() {
            settling.settle = None;
            return Err(refused);
        }
        // The moment the key starts to blink (at touch and assertion level).
        tracing::info!(?username, level = %self.level(), "gate: asking the key");
        let level = Arc::clone(&self.level);
        let user = username.to_string();
        let require_attested = self.require_attested;
        let result = self
            .run_holding(permit, move |auth, cancel| match &*level {
                LevelConfig::Presence => auth.check_presence(cancel).map(|p| Passed {
                    level: GateLevel::Presence,
                    device: p.device,
                    credential: None,
                    sign_count: None,
                    user_verified: false,
                }),
                LevelConfig::Touch => auth.wait_for_touch(cancel).map(|p| Passed {
                    level: GateLevel::Touch,
                    device: p.device,
                    credential: None,
                    sign_count: None,
                    user_verified: false,
                }),
                LevelConfig::Assertion { rp_id, store } => {
                    ceremony::login(auth, rp_id, store, &user, require_attested, pin, cancel)
                }
            })
            .await;
        match &result {
            Ok(p) => tracing::info!(
                ?username,
                level = %p.level,
                device = %p.device,
                credential = p.credential.as_deref().unwrap_or("-"),
                sign_count = p.sign_count.map(i64::from).unwrap_or(-1),
                uv = p.user_verified,
                "gate: passed"
            ),
            Err(e) => {
                tracing::warn!(?username, level = %self.level(), code = e.code(), error = %e, "gate: refused")
            }
        }
        settling.settle(&result);
        Ok(result)
    }

    /// Enrols a new credential for `username` (one touch) and writes it to the
    /// enrolment file. Needs an assertion-level gate (it names the file and rp id).
    pub async fn enroll(
        &self,
        username: &str,
        options: EnrolOptions,
    ) -> Result<Enrolled, GateError> {
        self.enroll_attested(username, options, None).await
    }

    /// [`Gate::enroll`], verifying the key's attestation under `policy` when given (the
    /// credential is then recorded as attested beside the enrolment file).
    pub async fn enroll_attested(
        &self,
        username: &str,
        options: EnrolOptions,
        policy: Option<Arc<crate::attestation::Policy>>,
    ) -> Result<Enrolled, GateError> {
        let LevelConfig::Assertion { rp_id, store } = &*self.level else {
            return Err(GateError::Unsupported {
                detail: "enrolment needs an enrolment file (--credentials-file)".to_string(),
            });
        };
        let (rp_id, store) = (rp_id.clone(), Arc::clone(store));
        let user = username.to_string();
        self.run(username, move |auth, cancel| {
            ceremony::enrol(
                auth,
                &rp_id,
                &store,
                &user,
                options,
                policy.as_deref(),
                cancel,
            )
        })
        .await
    }

    /// Runs `op` on the authenticator: one at a time, on a blocking thread, within
    /// `op_timeout`, cancelled on timeout or when this future is dropped.
    async fn run<T, F>(&self, username: &str, op: F) -> Result<T, GateError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Authenticator, &CancelSignal) -> Result<T, GateError> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.settings.device_wait;
        let permit = self.acquire_by(username, deadline).await?;
        self.run_holding(permit, op).await
    }

    /// The device, waited for until `deadline`.
    async fn acquire_by(
        &self,
        username: &str,
        deadline: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, GateError> {
        match tokio::time::timeout_at(deadline, self.device.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // Ok(Err(_)) means the semaphore was closed; we never close it, but fail closed.
            Ok(Err(_)) | Err(_) => Err(self.busy(username)),
        }
    }

    fn busy(&self, username: &str) -> GateError {
        let device_wait = self.settings.device_wait;
        tracing::warn!(?username, ?device_wait, "gate: device busy");
        GateError::Busy {
            waited: device_wait,
        }
    }

    /// Runs `op` with the device held by `permit` (see [`Gate::run`]).
    async fn run_holding<T, F>(&self, permit: OwnedSemaphorePermit, op: F) -> Result<T, GateError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Authenticator, &CancelSignal) -> Result<T, GateError> + Send + 'static,
    {
        let op_timeout = self.settings.op_timeout;
        let cancel = CancelSignal::new();
        // Declared before the task is spawned: whatever happens from here on
        // (return, timeout, this future dropped), the operation is told to stop.
        let _cancel_on_drop = CancelOnDrop(cancel.clone());

        let authenticator = Arc::clone(&self.authenticator);
        let op_cancel = cancel.clone();
        let task = tokio::task::spawn_blocking(move || {
            // The permit lives as long as the blocking call, not as long as our wait for it.
            let _permit = permit;
            op(authenticator.as_ref(), &op_cancel)
        });

        match tokio::time::timeout(op_timeout, task).await {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Presence, SoftAuthenticator, SoftBehavior};
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_is_asked_when_the_device_is_ours_and_a_refusal_leaves_the_key_alone() {
        let slow = Arc::new(Slow {
            current: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let gate = Gate::new(slow.clone(), settings(5000, 5000));
        let first = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.check("mallory").await })
        };
        // Let the first check take the device, then queue behind it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let asked_while_busy = Arc::new(AtomicBool::new(true));
        let flag = asked_while_busy.clone();
        let slow_probe = slow.clone();
        let refused = gate
            .check_admitted(
                "mallory",
                None,
                move || {
                    // The first operation (50 ms) is over by the time we are asked.
                    flag.store(
                        slow_probe.current.load(Ordering::SeqCst) != 0,
                        Ordering::SeqCst,
                    );
                    Err("banned meanwhile")
                },
                |_| panic!("a refused admission has nothing to settle"),
            )
            .await;
        assert_eq!(refused.unwrap_err(), "banned meanwhile");
        assert!(!asked_while_busy.load(Ordering::SeqCst));
        first.await.unwrap().unwrap();
        // Only the first check used the key; the device is free again.
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1);
        assert_eq!(gate.device.available_permits(), 1);
        let admitted = gate
            .check_admitted("alice", None, || Ok::<(), &str>(()), |_| {})
            .await;
        assert!(admitted.unwrap().is_ok());
        assert_eq!(slow.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_check_is_admitted_only_after_the_last_one_settled() {
        // The first check times out after 200 ms and takes 100 ms to settle. The device
        // is free as soon as the cancelled operation returns, but the second check's
        // admission must wait for the first one's settle.
        let gate = soft(SoftBehavior::NoTouch, settings(200, 5000));
        let settled = Arc::new(AtomicBool::new(false));
        let first = {
            let (gate, settled) = (gate.clone(), settled.clone());
            tokio::spawn(async move {
                gate.check_admitted(
                    "mallory",
                    None,
                    || Ok::<(), ()>(()),
                    move |outcome| {
                        assert!(matches!(outcome, Some(Err(GateError::Timeout { .. }))));
                        std::thread::sleep(Duration::from_millis(100));
                        settled.store(true, Ordering::SeqCst);
                    },
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let saw = Arc::new(AtomicBool::new(false));
        let (saw2, settled2) = (saw.clone(), settled.clone());
        let second = gate
            .check_admitted(
                "mallory",
                None,
                move || {
                    saw2.store(settled2.load(Ordering::SeqCst), Ordering::SeqCst);
                    Err::<(), ()>(())
                },
                |_| {},
            )
            .await;
        assert!(second.is_err());
        assert!(
            saw.load(Ordering::SeqCst),
            "admitted before the last check settled"
        );
        assert!(first.await.unwrap().unwrap().is_err());
    }

    #[tokio::test]
    async fn a_dropped_check_settles_with_none() {
        let gate = soft(SoftBehavior::NoTouch, settings(60_000, 1000));
        let (tx, rx) = std::sync::mpsc::channel();
        let check = gate.check_admitted(
            "alice",
            None,
            || Ok::<(), ()>(()),
            move |outcome| tx.send(outcome.is_none()).unwrap(),
        );
        assert!(tokio::time::timeout(Duration::from_millis(100), check)
            .await
            .is_err());
        assert_eq!(rx.try_recv(), Ok(true));
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

    // -----------------------------------------------------------------------
    // Assertion level, with the software authenticator
    // -----------------------------------------------------------------------

    struct Setup {
        _dir: tempfile::TempDir,
        key_file: std::path::PathBuf,
        store: Arc<CredentialStore>,
    }

    fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("soft.key");
        let store = Arc::new(CredentialStore::new(dir.path().join("credentials")));
        Setup {
            _dir: dir,
            key_file,
            store,
        }
    }

    fn assertion_gate(s: &Setup, behavior: SoftBehavior, op_ms: u64) -> Gate {
        let auth = SoftAuthenticator::with_key_file(behavior, &s.key_file).unwrap();
        Gate::with_level(
            Arc::new(auth),
            settings(op_ms, 5000),
            LevelConfig::Assertion {
                rp_id: "chromecard".into(),
                store: s.store.clone(),
            },
        )
    }

    async fn enrol(s: &Setup, user: &str) {
        let gate = assertion_gate(s, SoftBehavior::Present, 5000);
        let e = gate.enroll(user, EnrolOptions::default()).await.unwrap();
        assert_eq!(e.kind, "es256");
    }

    #[tokio::test]
    async fn enrol_then_login_passes_and_counts_up() {
        let s = setup();
        enrol(&s, "alice").await;
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        assert_eq!(gate.level(), GateLevel::Assertion);
        let p1 = gate.check("alice").await.unwrap();
        let p2 = gate.check("alice").await.unwrap();
        assert_eq!(p1.level, GateLevel::Assertion);
        assert!(p1.credential.is_some());
        assert!(p2.sign_count > p1.sign_count, "{p1:?} {p2:?}");
        // Enrolling the same key again for alice is refused by the key (exclude list).
        let again = gate
            .enroll("alice", EnrolOptions::default())
            .await
            .unwrap_err();
        assert_eq!(again.code(), "already_enrolled");
    }

    #[tokio::test]
    async fn the_count_at_enrolment_is_stored_as_the_floor_for_the_first_login() {
        let s = setup();
        enrol(&s, "alice").await;
        // Advance the soft key's global counter, then enrol bob: his credential is born
        // at that count, and a clone of it must not be able to start below it.
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        let p = gate.check("alice").await.unwrap();
        let born_at = p.sign_count.expect("a count");
        assert!(born_at > 0);
        enrol(&s, "bob").await;
        let bob = s.store.load().unwrap().credentials_of("bob")[0].id.clone();
        assert_eq!(s.store.stored_count("bob", &bob).unwrap(), born_at);
        let cloned = assertion_gate(&s, SoftBehavior::ClonedCounter, 5000);
        assert_eq!(
            cloned.check("bob").await.unwrap_err().code(),
            "counter_not_increased"
        );
        assert!(gate.check("bob").await.unwrap().sign_count.unwrap() > born_at);
    }

    #[tokio::test]
    async fn each_refusal_has_its_code() {
        let s = setup();
        enrol(&s, "alice").await;
        let cases = [
            (SoftBehavior::ForeignKey, "bad_signature"),
            (SoftBehavior::UpClear, "user_not_present"),
            (SoftBehavior::WrongRp, "rp_mismatch"),
            (SoftBehavior::Refuse, "key_refused"),
            (SoftBehavior::NoKey, "no_key"),
        ];
        for (behavior, code) in cases {
            let gate = assertion_gate(&s, behavior, 5000);
            let e = gate.check("alice").await.unwrap_err();
            assert_eq!(e.code(), code, "{behavior}: {e}");
        }
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        assert_eq!(gate.check("bob").await.unwrap_err().code(), "not_enrolled");
        // An unenrolled name is answered only after a touch, like an enrolled one: without
        // a touch it times out, so the answer does not tell which names are enrolled.
        let untouched = assertion_gate(&s, SoftBehavior::NoTouch, 300);
        assert_eq!(
            untouched.check("bob").await.unwrap_err().code(),
            "touch_timeout"
        );
        assert_eq!(
            untouched.check("alice").await.unwrap_err().code(),
            "touch_timeout"
        );
        // A different key (another key file) does not hold alice's credential.
        let other = Gate::with_level(
            Arc::new(SoftAuthenticator::new(SoftBehavior::Present)),
            settings(5000, 5000),
            LevelConfig::Assertion {
                rp_id: "chromecard".into(),
                store: s.store.clone(),
            },
        );
        assert_eq!(
            other.check("alice").await.unwrap_err().code(),
            "credential_not_found"
        );
        // A gate with another relying-party id: the key holds nothing for it.
        let other_rp = Gate::with_level(
            Arc::new(SoftAuthenticator::with_key_file(SoftBehavior::Present, &s.key_file).unwrap()),
            settings(5000, 5000),
            LevelConfig::Assertion {
                rp_id: "elsewhere".into(),
                store: s.store.clone(),
            },
        );
        assert_eq!(
            other_rp.check("alice").await.unwrap_err().code(),
            "credential_not_found"
        );
        // After all that, the honest key still logs in.
        gate.check("alice").await.unwrap();
    }

    #[tokio::test]
    async fn a_cloned_counter_is_refused_and_nothing_is_written() {
        let s = setup();
        enrol(&s, "alice").await;
        let honest = assertion_gate(&s, SoftBehavior::Present, 5000);
        let passed = honest.check("alice").await.unwrap();
        let clone = assertion_gate(&s, SoftBehavior::ClonedCounter, 5000);
        let e = clone.check("alice").await.unwrap_err();
        assert_eq!(e.code(), "counter_not_increased");
        let cred_count = passed.sign_count.unwrap();
        let enrolled = s.store.load().unwrap();
        let id = &enrolled.credentials_of("alice")[0].id;
        assert_eq!(s.store.stored_count("alice", id).unwrap(), cred_count);
    }

    #[tokio::test]
    async fn a_replayed_assertion_is_refused() {
        let s = setup();
        enrol(&s, "alice").await;
        let gate = assertion_gate(&s, SoftBehavior::Replay, 5000);
        gate.check("alice").await.unwrap();
        let e = gate.check("alice").await.unwrap_err();
        assert_eq!(e.code(), "bad_signature");
    }

    #[tokio::test]
    async fn no_touch_at_assertion_level_times_out() {
        let s = setup();
        enrol(&s, "alice").await;
        let gate = assertion_gate(&s, SoftBehavior::NoTouch, 300);
        let t = Instant::now();
        let e = gate.check("alice").await.unwrap_err();
        assert_eq!(e.code(), "touch_timeout");
        assert!(
            t.elapsed() < Duration::from_millis(1300),
            "{:?}",
            t.elapsed()
        );
        eventually("device released", || gate.device.available_permits() == 1).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_assertion_logins_take_turns_and_get_their_own_answers() {
        let s = setup();
        enrol(&s, "alice").await;
        enrol(&s, "bob").await;
        let gate = assertion_gate(&s, SoftBehavior::Slow, 5000);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..4 {
            let gate = gate.clone();
            let user = if i % 2 == 0 { "alice" } else { "bob" };
            set.spawn(async move { (user, gate.check(user).await) });
        }
        let mut counts = Vec::new();
        while let Some(joined) = set.join_next().await {
            let (user, r) = joined.unwrap();
            let p = r.unwrap_or_else(|e| panic!("{user}: {e}"));
            counts.push(p.sign_count.unwrap());
        }
        // One global counter on the key: four distinct values, one per operation.
        counts.sort();
        counts.dedup();
        assert_eq!(counts.len(), 4, "{counts:?}");
    }

    #[tokio::test]
    async fn touch_level_waits_for_a_touch() {
        let gate = Gate::with_level(
            Arc::new(SoftAuthenticator::new(SoftBehavior::Present)),
            settings(1000, 1000),
            LevelConfig::Touch,
        );
        assert_eq!(gate.check("anyone").await.unwrap().level, GateLevel::Touch);
        let gate = Gate::with_level(
            Arc::new(SoftAuthenticator::new(SoftBehavior::NoTouch)),
            settings(200, 1000),
            LevelConfig::Touch,
        );
        assert_eq!(
            gate.check("anyone").await.unwrap_err().code(),
            "touch_timeout"
        );
        // Enrolment needs the assertion level's file.
        let e = gate
            .enroll("alice", EnrolOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), "key_unsupported");
    }

    #[tokio::test]
    async fn an_unreadable_enrolment_file_is_a_server_fault() {
        use std::os::unix::fs::PermissionsExt;
        let s = setup();
        enrol(&s, "alice").await;
        std::fs::set_permissions(s.store.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        let e = gate.check("alice").await.unwrap_err();
        assert_eq!(e.code(), "credential_store_error");
        assert!(e.is_server_fault());
    }

    fn pin(p: &str) -> Option<crate::Pin> {
        Some(crate::Pin::new(p.to_string()).unwrap())
    }

    /// The whole PIN path on the software authenticator: its clientPIN (both sides'
    /// code), the token, the pinUvAuthParam, and UV in the signed authenticator data.
    #[tokio::test]
    async fn a_pin_user_logs_in_with_the_right_pin_only() {
        let s = setup();
        SoftAuthenticator::with_key_file(SoftBehavior::Present, &s.key_file)
            .unwrap()
            .set_pin(&pin("4711").unwrap())
            .unwrap();
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        // Enrolment with the PIN: the new credential already carries UV.
        let options = EnrolOptions {
            require_pin: true,
            pin: pin("4711"),
            ..EnrolOptions::default()
        };
        gate.enroll("alice", options).await.unwrap();
        let line = std::fs::read_to_string(s.store.path()).unwrap();
        assert!(line.contains("+presence+pin"), "{line}");
        let wrong = EnrolOptions {
            pin: pin("0000"),
            ..EnrolOptions::default()
        };
        let e = gate.enroll("bob", wrong).await.unwrap_err();
        assert!(
            matches!(e, GateError::PinInvalid { retries: Some(7) }),
            "{e:?}"
        );

        assert_eq!(
            gate.check("alice").await.unwrap_err().code(),
            "pin_required"
        );
        let p = gate.check_with_pin("alice", pin("4711")).await.unwrap();
        assert!(p.user_verified);
        let e = gate.check_with_pin("alice", pin("1111")).await.unwrap_err();
        assert!(
            matches!(e, GateError::PinInvalid { retries: Some(7) }),
            "{e:?}"
        );
        assert_eq!(e.pin_retries(), Some(7));
        // The right PIN gives the tries back.
        gate.check_with_pin("alice", pin("4711")).await.unwrap();
        for left in [7, 6, 5, 4, 3] {
            // A new power-up every time: three wrong PINs in a row would block PIN checks.
            let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
            let e = gate.check_with_pin("alice", pin("1111")).await.unwrap_err();
            assert_eq!(e.pin_retries(), Some(left), "{e:?}");
        }
        // Four left: tried; three left: refused without a try, and the count stays.
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        let e = gate.check_with_pin("alice", pin("4711")).await.unwrap_err();
        assert!(
            matches!(e, GateError::PinRetriesLow { retries: 3 }),
            "{e:?}"
        );
        assert_eq!(e.code(), "pin_retries_low");
        let text = std::fs::read_to_string(&s.key_file).unwrap();
        assert!(text.contains("pin_retries 3"), "{text}");
        // A blocked PIN.
        std::fs::write(&s.key_file, text.replace("pin_retries 3", "pin_retries 0")).unwrap();
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        let e = gate.check_with_pin("alice", pin("4711")).await.unwrap_err();
        assert_eq!(e.code(), "pin_blocked");
    }

    #[tokio::test]
    async fn a_verification_user_needs_a_pin_on_a_key_without_built_in_uv() {
        let s = setup();
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        // No PIN set: a +verification enrolment cannot be verified.
        let options = EnrolOptions {
            require_uv: true,
            ..EnrolOptions::default()
        };
        let e = gate.enroll("alice", options.clone()).await.unwrap_err();
        assert_eq!(e.code(), "pin_not_set");
        SoftAuthenticator::with_key_file(SoftBehavior::Present, &s.key_file)
            .unwrap()
            .set_pin(&pin("4711").unwrap())
            .unwrap();
        let gate = assertion_gate(&s, SoftBehavior::Present, 5000);
        assert_eq!(
            gate.enroll("alice", options).await.unwrap_err().code(),
            "pin_required"
        );
        let options = EnrolOptions {
            require_uv: true,
            pin: pin("4711"),
            ..EnrolOptions::default()
        };
        gate.enroll("alice", options).await.unwrap();
        assert_eq!(
            gate.check("alice").await.unwrap_err().code(),
            "pin_required"
        );
        gate.check_with_pin("alice", pin("4711")).await.unwrap();
        // A PIN sent for a user who needs none is not used (not sent to the key).
        enrol(&s, "bob").await;
        gate.check_with_pin("bob", pin("0000")).await.unwrap();
        let text = std::fs::read_to_string(&s.key_file).unwrap();
        assert!(text.contains("pin_retries 8"), "{text}");
    }

    /// A key with built-in UV (a fingerprint): `+verification` needs no PIN. CTAP 2.1:
    /// getPinUvAuthTokenUsingUvWithPermissions; CTAP 2.0: the `uv` option. `+pin` still
    /// takes the PIN.
    #[tokio::test]
    async fn a_key_with_built_in_uv_verifies_without_a_pin() {
        use crate::pin_protocol::PinProtocol;
        for ctap21 in [true, false] {
            let s = setup();
            let soft =
                SoftAuthenticator::with_key_file(SoftBehavior::Present, &s.key_file).unwrap();
            let protocols = if ctap21 {
                vec![PinProtocol::Two, PinProtocol::One]
            } else {
                vec![PinProtocol::One]
            };
            soft.configure_pin(protocols, ctap21, false, true).unwrap();
            let gate = Gate::with_level(
                Arc::new(soft),
                settings(5000, 5000),
                LevelConfig::Assertion {
                    rp_id: "chromecard".into(),
                    store: s.store.clone(),
                },
            );
            let options = EnrolOptions {
                require_uv: true,
                ..EnrolOptions::default()
            };
            gate.enroll("alice", options).await.unwrap();
            let p = gate.check("alice").await.unwrap();
            assert!(p.user_verified, "ctap21={ctap21}");
            // +pin on a key with no PIN set: the fingerprint does not do for the PIN.
            let options = EnrolOptions {
                require_pin: true,
                pin: pin("4711"),
                ..EnrolOptions::default()
            };
            let e = gate.enroll("bob", options).await.unwrap_err();
            assert_eq!(e.code(), "pin_not_set", "ctap21={ctap21}");
        }
    }
}
