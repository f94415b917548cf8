//! Login throttling in the spirit of Authelia's regulation, shaped so that a stranger
//! cannot turn it against a user.
//!
//! What a ban is for: every login attempt makes the one key act (blink, wait up to
//! --touch-timeout for a touch) and key operations run one at a time, so an attacker's
//! attempts cost the real user key time and invite a habitual touch. Too many *refused*
//! logins within a window therefore lead to a ban (429 with `Retry-After`).
//!
//! What counts, and against whom:
//! - A username's failures are counted **per client address**: five refused logins for
//!   alice from 127.0.0.9 ban alice from 127.0.0.9 only. A stranger elsewhere cannot lock
//!   alice out; brute force from one address is bounded exactly as before.
//! - Only a key operation that **ran and was refused** (no key, touch timeout, a refused
//!   touch, a bad or foreign assertion, not enrolled) counts against the username. A login
//!   that waited in the queue and went away, found the device busy, or was cancelled by
//!   shutdown proves nothing and counts nothing. A client that hangs up while its key
//!   operation runs gains nothing (the operation is cancelled; no session can come of it),
//!   so it does not count against the username either; the review's lock-out (five logins
//!   for a chosen name, each hanging up after 50 ms) therefore bans nobody.
//! - The client address has its own, larger budget (--login-max-failures-per-address),
//!   so that one client cannot spray many usernames. A refused login costs it one
//!   failure; a hang-up costs it the share of --touch-timeout for which it held the key
//!   (a hang-up just before the timeout costs as much as a timeout; twenty hang-ups after
//!   50 ms cost 1/30 of one). Hanging up is thus no way to keep the key blinking for free,
//!   and no way to ban an address at machine speed either.
//! - A success clears that username's failures from that address; it is never delayed
//!   here (the only wait a successful login has is the device's own queue).
//!
//! What remains, and why it is accepted: behind Qubes' qubes.ConnectTCP every client
//! arrives from 127.0.0.1, so there "per address" means "per client qube". A process in the
//! user's own client qube can still ban the user's name by letting five key operations run
//! to their touch timeout (2.5 minutes of a visibly blinking key by default), or ban the
//! qube with twenty; it already runs as part of the user's own client, and a key that
//! blinks without the user asking is the sign to look for. Refusals that need no touch (no
//! key attached, several keys) still count at once; while the key is unplugged nobody can
//! log in anyway, but a ban earned then outlasts it. Other qubes reach k_proxy only
//! where dom0 policy allows it. An attacker with many addresses (k_proxy listening beyond
//! loopback, an IPv6 prefix) gets five tries per address, but every try is still one key
//! operation at a time that succeeds only with a person's touch. A wrong PIN is the one
//! refusal a key gives without a touch; the gate itself (`Fido2Key`) asks for a touch
//! before any PIN that follows a wrong one, so these counts are not what guards the key's
//! PIN tries.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromecard_session::Clock;
use dashmap::DashMap;

/// Keys tracked at most per kind; beyond it new keys are not tracked (the per-address limit
/// still applies), so a flood of invented usernames cannot grow memory without bound.
const MAX_TRACKED: usize = 100_000;

/// One refused login, in the units failures are counted in (thousandths, so that a
/// hang-up can cost a share of one).
const ONE_FAILURE: u64 = 1000;

#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Refused logins per username from one client address within `window` before that
    /// username is banned from that address; 0 disables.
    pub max_failures_per_user: u32,
    /// Refused logins per client address within `window` before a ban; 0 disables.
    pub max_failures_per_address: u32,
    pub window: Duration,
    pub ban: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Failures count up while each comes within `window` of the one before. A window
    /// fixed at the first failure would never fill: key operations run one at a time and
    /// a timeout takes --touch-timeout (30 s), so 4 fit in 120 s and the 5th starts anew.
    last_failure: Instant,
    /// In thousandths of a failure ([`ONE_FAILURE`]).
    failures: u64,
    banned_until: Option<Instant>,
}

/// Why a login is refused before the gate runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banned {
    pub retry_after: Duration,
    /// "username" (from this client address) or "client address"; never the value, which
    /// the caller already knows.
    pub scope: &'static str,
}

pub struct LoginThrottle {
    settings: ThrottleSettings,
    /// Per (username, client address): a username is banned only where it failed.
    users: DashMap<(String, IpAddr), Record>,
    addresses: DashMap<IpAddr, Record>,
    clock: Arc<dyn Clock>,
}

impl LoginThrottle {
    pub fn new(settings: ThrottleSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings,
            users: DashMap::new(),
            addresses: DashMap::new(),
            clock,
        }
    }

    /// Refuses a login whose username (from this address) or client address is banned now.
    pub fn check(&self, username: &str, address: IpAddr) -> Result<(), Banned> {
        let now = self.clock.now();
        let banned = |record: Option<Record>, scope| match record.and_then(|r| r.banned_until) {
            Some(until) if until > now => Err(Banned {
                retry_after: until - now,
                scope,
            }),
            _ => Ok(()),
        };
        banned(
            self.users.get(&(username.to_owned(), address)).map(|r| *r),
            "username",
        )?;
        banned(self.addresses.get(&address).map(|r| *r), "client address")
    }

    /// Counts a login whose key operation ran and was refused, against the username from
    /// this address and against the address; returns the ban it triggered, if any.
    pub fn record_failure(&self, username: &str, address: IpAddr) -> Option<Banned> {
        let now = self.clock.now();
        let user_ban = count(
            &self.users,
            (username.to_owned(), address),
            self.settings.max_failures_per_user,
            ONE_FAILURE,
            now,
            &self.settings,
        )
        .map(|retry_after| Banned {
            retry_after,
            scope: "username",
        });
        user_ban.or(self.count_address(address, ONE_FAILURE, now))
    }

    /// Counts a client that hung up while its key operation ran, which had held the key for
    /// `share` of the touch timeout (0.0 to 1.0): against its address only, in that
    /// proportion. Returns the ban it triggered, if any.
    pub fn record_hang_up(&self, address: IpAddr, share: f64) -> Option<Banned> {
        let weight = (share.clamp(0.0, 1.0) * ONE_FAILURE as f64).round() as u64;
        if weight == 0 {
            return None;
        }
        self.count_address(address, weight, self.clock.now())
    }

    fn count_address(&self, address: IpAddr, weight: u64, now: Instant) -> Option<Banned> {
        count(
            &self.addresses,
            address,
            self.settings.max_failures_per_address,
            weight,
            now,
            &self.settings,
        )
        .map(|retry_after| Banned {
            retry_after,
            scope: "client address",
        })
    }

    /// A successful login clears its username's failures from that address.
    pub fn record_success(&self, username: &str, address: IpAddr) {
        self.users.remove(&(username.to_owned(), address));
    }

    /// Drops records whose window and ban are over.
    pub fn sweep(&self) {
        let now = self.clock.now();
        let settings = self.settings;
        let live = |r: &Record| {
            r.banned_until.is_some_and(|until| until > now)
                || now < r.last_failure + settings.window
        };
        self.users.retain(|_, r| live(r));
        self.addresses.retain(|_, r| live(r));
    }
}

/// `weight` more failure for `key`; Some(ban length) when it reaches `max` failures
/// within the window.
fn count<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Record>,
    key: K,
    max: u32,
    weight: u64,
    now: Instant,
    settings: &ThrottleSettings,
) -> Option<Duration> {
    if max == 0 || (map.len() >= MAX_TRACKED && !map.contains_key(&key)) {
        return None;
    }
    let mut record = map.entry(key).or_insert(Record {
        last_failure: now,
        failures: 0,
        banned_until: None,
    });
    if now >= record.last_failure + settings.window {
        record.failures = 0;
    }
    record.last_failure = now;
    record.failures += weight;
    if record.failures >= u64::from(max) * ONE_FAILURE {
        record.banned_until = Some(now + settings.ban);
        record.failures = 0;
        return Some(settings.ban);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chromecard_session::ManualClock;

    fn throttle() -> (LoginThrottle, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let settings = ThrottleSettings {
            max_failures_per_user: 3,
            max_failures_per_address: 10,
            window: Duration::from_secs(120),
            ban: Duration::from_secs(300),
        };
        (LoginThrottle::new(settings, clock.clone()), clock)
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn three_failures_ban_the_username_for_the_ban_time() {
        let (throttle, clock) = throttle();
        assert!(throttle.record_failure("mallory", HOME).is_none());
        assert!(throttle.record_failure("mallory", HOME).is_none());
        let ban = throttle.record_failure("mallory", HOME).unwrap();
        assert_eq!(ban.scope, "username");
        assert_eq!(ban.retry_after, Duration::from_secs(300));
        clock.advance(Duration::from_secs(100));
        let refused = throttle.check("mallory", HOME).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(200));
        clock.advance(Duration::from_secs(200));
        assert!(throttle.check("mallory", HOME).is_ok());
    }

    #[test]
    fn others_failures_do_not_ban_a_different_user() {
        let (throttle, _) = throttle();
        for _ in 0..3 {
            throttle.record_failure("mallory", HOME);
        }
        assert!(throttle.check("mallory", HOME).is_err());
        assert!(throttle.check("alice", HOME).is_ok());
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let (throttle, clock) = throttle();
        throttle.record_failure("bob", HOME);
        throttle.record_failure("bob", HOME);
        clock.advance(Duration::from_secs(121));
        assert!(throttle.record_failure("bob", HOME).is_none());
        assert!(throttle.check("bob", HOME).is_ok());
    }

    #[test]
    fn failures_a_touch_timeout_apart_add_up_to_a_ban() {
        // One key, one operation at a time: an attacker who lets each login time out
        // can fail only every 30 s. Those failures must still reach the limit.
        let (throttle, clock) = throttle();
        assert!(throttle.record_failure("mallory", HOME).is_none());
        clock.advance(Duration::from_secs(100));
        assert!(throttle.record_failure("mallory", HOME).is_none());
        clock.advance(Duration::from_secs(100));
        assert!(throttle.record_failure("mallory", HOME).is_some());
        assert!(throttle.check("mallory", HOME).is_err());
    }

    #[test]
    fn success_clears_the_username() {
        let (throttle, _) = throttle();
        throttle.record_failure("bob", HOME);
        throttle.record_failure("bob", HOME);
        throttle.record_success("bob", HOME);
        assert!(throttle.record_failure("bob", HOME).is_none());
    }

    const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn a_username_is_banned_only_from_the_address_it_failed_from() {
        let (throttle, _) = throttle();
        for _ in 0..2 {
            assert!(throttle.record_failure("alice", HOME).is_none());
        }
        assert_eq!(
            throttle.record_failure("alice", HOME).unwrap().scope,
            "username"
        );
        assert_eq!(throttle.check("alice", HOME).unwrap_err().scope, "username");
        assert!(throttle.check("alice", ELSEWHERE).is_ok());
        // Failures from elsewhere are counted on their own.
        assert!(throttle.record_failure("alice", ELSEWHERE).is_none());
        throttle.record_success("alice", ELSEWHERE);
        assert!(throttle.check("alice", HOME).is_err());
    }

    #[test]
    fn hang_ups_never_ban_a_username_and_cost_an_address_their_share_of_key_time() {
        // Hundreds of hang-ups after 50 ms of a 30 s touch timeout: nobody is banned.
        let (short, _) = throttle();
        for _ in 0..500 {
            assert!(short.record_hang_up(HOME, 0.05 / 30.0).is_none());
        }
        assert!(short.check("alice", HOME).is_ok());
        // Hang-ups held to the timeout cost as much as refusals (limit 10 per address).
        let (long, _) = throttle();
        for _ in 0..9 {
            assert!(long.record_hang_up(HOME, 1.0).is_none());
        }
        let ban = long.record_hang_up(HOME, 0.999_9).unwrap();
        assert_eq!(ban.scope, "client address");
        assert!(long.check("alice", ELSEWHERE).is_ok());
        assert!(long.check("alice", HOME).is_err());
        // Two halves make one.
        let (halves, _) = throttle();
        for _ in 0..19 {
            assert!(halves.record_hang_up(HOME, 0.5).is_none());
        }
        assert!(halves.record_hang_up(HOME, 0.5).is_some());
    }

    #[test]
    fn many_usernames_from_one_address_ban_the_address() {
        let (throttle, _) = throttle();
        for i in 0..9 {
            assert!(throttle.record_failure(&format!("u{i}"), HOME).is_none());
        }
        let ban = throttle.record_failure("u9", HOME).unwrap();
        assert_eq!(ban.scope, "client address");
        assert_eq!(
            throttle.check("anyone", HOME).unwrap_err().scope,
            "client address"
        );
    }

    #[test]
    fn zero_disables_and_sweep_forgets() {
        let clock = Arc::new(ManualClock::default());
        let off = LoginThrottle::new(
            ThrottleSettings {
                max_failures_per_user: 0,
                max_failures_per_address: 0,
                window: Duration::from_secs(1),
                ban: Duration::from_secs(1),
            },
            clock,
        );
        for _ in 0..100 {
            assert!(off.record_failure("x", HOME).is_none());
        }
        let (throttle, clock) = throttle();
        throttle.record_failure("bob", HOME);
        clock.advance(Duration::from_secs(121));
        throttle.sweep();
        assert!(throttle.users.is_empty() && throttle.addresses.is_empty());
    }
}
