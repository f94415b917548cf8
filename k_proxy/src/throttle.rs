//! Login throttling in the spirit of Authelia's regulation: too many refused logins for one
//! username, or from one client address, within a window lead to a ban for a while (429 with
//! `Retry-After`), so nobody can keep the key blinking or probe usernames at machine speed.
//!
//! Behind Qubes' qubes.ConnectTCP every client arrives from 127.0.0.1, so the per-address
//! limit is in effect a limit for the whole client qube: it is set higher than the
//! per-username one. A success clears that username's failures; it is never delayed here
//! (the only wait a successful login has is the device's own queue).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chromecard_session::Clock;
use dashmap::DashMap;

/// Keys tracked at most per kind; beyond it new keys are not tracked (the per-address limit
/// still applies), so a flood of invented usernames cannot grow memory without bound.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Refused logins per username within `window` before a ban; 0 disables.
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
    failures: u32,
    banned_until: Option<Instant>,
}

/// Why a login is refused before the gate runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banned {
    pub retry_after: Duration,
    /// "username" or "client address"; never the value, which the caller already knows.
    pub scope: &'static str,
}

pub struct LoginThrottle {
    settings: ThrottleSettings,
    users: DashMap<String, Record>,
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

    /// Refuses a login whose username or client address is banned now.
    pub fn check(&self, username: &str, address: IpAddr) -> Result<(), Banned> {
        let now = self.clock.now();
        let banned = |record: Option<Record>, scope| match record.and_then(|r| r.banned_until) {
            Some(until) if until > now => Err(Banned {
                retry_after: until - now,
                scope,
            }),
            _ => Ok(()),
        };
        banned(self.users.get(username).map(|r| *r), "username")?;
        banned(self.addresses.get(&address).map(|r| *r), "client address")
    }

    /// Counts a refused login; returns the ban it triggered, if any.
    pub fn record_failure(&self, username: &str, address: IpAddr) -> Option<Banned> {
        let now = self.clock.now();
        let user_ban = count(
            &self.users,
            username.to_owned(),
            self.settings.max_failures_per_user,
            now,
            &self.settings,
        )
        .map(|retry_after| Banned {
            retry_after,
            scope: "username",
        });
        let address_ban = count(
            &self.addresses,
            address,
            self.settings.max_failures_per_address,
            now,
            &self.settings,
        )
        .map(|retry_after| Banned {
            retry_after,
            scope: "client address",
        });
        user_ban.or(address_ban)
    }

    /// A successful login clears its username's failures.
    pub fn record_success(&self, username: &str) {
        self.users.remove(username);
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

/// One more failure for `key`; Some(ban length) when it crosses `max` within the window.
fn count<K: std::hash::Hash + Eq>(
    map: &DashMap<K, Record>,
    key: K,
    max: u32,
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
    record.failures += 1;
    if record.failures >= max {
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
        throttle.record_success("bob");
        assert!(throttle.record_failure("bob", HOME).is_none());
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
