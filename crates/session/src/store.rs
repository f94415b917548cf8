//! The session store: a sharded concurrent map keyed by token hash. Validation takes one
//! shard read lock, never a global lock.
//!
//! Lookup by hash means a timing difference can only reveal facts about SHA-256 outputs,
//! never about a token's text, so no constant-time comparison of tokens is needed here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::{Clock, SessionToken, TokenError, TokenHash};

#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    /// Absolute lifetime of a session from login (the runbook's `--session-ttl`).
    pub ttl: Duration,
    /// Live sessions kept at most; a login beyond it is refused rather than evicting others.
    pub max_sessions: usize,
}

/// What the store holds for one session. No token text.
#[derive(Debug)]
pub struct Session {
    pub username: Arc<str>,
    pub created: Instant,
    pub expires: Instant,
}

/// A session as seen by a request that presented a valid token.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub username: Arc<str>,
    pub expires_in: Duration,
    pub public_id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("the token is malformed")]
    Malformed,
    /// Unknown, expired or logged out: after logout or sweeping these are indistinguishable.
    #[error("the token is unknown, expired or logged out")]
    Invalid,
    #[error("the session token was valid but has expired")]
    Expired,
    #[error("too many live sessions ({0})")]
    Full(usize),
    #[error("no randomness for a new token")]
    NoRandomness,
}

impl From<TokenError> for SessionError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Malformed => SessionError::Malformed,
            TokenError::NoRandomness => SessionError::NoRandomness,
        }
    }
}

pub struct SessionStore {
    sessions: DashMap<TokenHash, Session>,
    clock: Arc<dyn Clock>,
    settings: StoreSettings,
}

impl SessionStore {
    pub fn new(settings: StoreSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            sessions: DashMap::new(),
            clock,
            settings,
        }
    }

    pub fn settings(&self) -> StoreSettings {
        self.settings
    }

    /// Issues a new token for `username`. The token text is returned once and never kept.
    pub fn create(&self, username: &str) -> Result<(SessionToken, SessionView), SessionError> {
        // Full stores first try to make room from the expired before refusing.
        if self.sessions.len() >= self.settings.max_sessions {
            self.sweep();
            if self.sessions.len() >= self.settings.max_sessions {
                return Err(SessionError::Full(self.settings.max_sessions));
            }
        }
        let token = SessionToken::generate()?;
        let hash = token.hash();
        let now = self.clock.now();
        let username: Arc<str> = Arc::from(username);
        self.sessions.insert(
            hash,
            Session {
                username: username.clone(),
                created: now,
                expires: now + self.settings.ttl,
            },
        );
        Ok((
            token,
            SessionView {
                username,
                expires_in: self.settings.ttl,
                public_id: hash.public_id(),
            },
        ))
    }

    /// The session behind a presented token, if it is live now.
    pub fn validate(&self, presented: &str) -> Result<SessionView, SessionError> {
        let hash = TokenHash::parse_presented(presented)?;
        let now = self.clock.now();
        let entry = self.sessions.get(&hash).ok_or(SessionError::Invalid)?;
        if now >= entry.expires {
            drop(entry);
            self.sessions.remove_if(&hash, |_, s| now >= s.expires);
            return Err(SessionError::Expired);
        }
        Ok(SessionView {
            username: entry.username.clone(),
            expires_in: entry.expires - now,
            public_id: hash.public_id(),
        })
    }

    /// Ends the session at once; the token is dead for every later request.
    pub fn revoke(&self, presented: &str) -> Result<SessionView, SessionError> {
        let view = self.validate(presented)?;
        let hash = TokenHash::parse_presented(presented)?;
        self.sessions.remove(&hash).ok_or(SessionError::Invalid)?;
        Ok(view)
    }

    /// Removes expired sessions; returns how many. Each shard is locked only while it is
    /// scanned, so requests on other shards proceed.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let before = self.sessions.len();
        self.sessions.retain(|_, session| now < session.expires);
        before.saturating_sub(self.sessions.len())
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn store(ttl_secs: u64, max: usize) -> (SessionStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let store = SessionStore::new(
            StoreSettings {
                ttl: Duration::from_secs(ttl_secs),
                max_sessions: max,
            },
            clock.clone(),
        );
        (store, clock)
    }

    #[test]
    fn created_session_validates_with_its_user_and_remaining_time() {
        let (store, clock) = store(300, 10);
        let (token, view) = store.create("alice").unwrap();
        assert_eq!(&*view.username, "alice");
        clock.advance(Duration::from_secs(100));
        let seen = store.validate(token.expose()).unwrap();
        assert_eq!(&*seen.username, "alice");
        assert_eq!(seen.expires_in, Duration::from_secs(200));
        assert_eq!(seen.public_id, view.public_id);
    }

    #[test]
    fn absolute_expiry_is_enforced_at_the_exact_boundary() {
        let (store, clock) = store(300, 10);
        let (token, _) = store.create("alice").unwrap();
        clock.advance(Duration::from_secs(299));
        assert!(store.validate(token.expose()).is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            store.validate(token.expose()).unwrap_err(),
            SessionError::Expired
        );
        // The expired entry was dropped on sight.
        assert_eq!(store.len(), 0);
        assert_eq!(
            store.validate(token.expose()).unwrap_err(),
            SessionError::Invalid
        );
    }

    #[test]
    fn revoke_kills_the_token_at_once() {
        let (store, _) = store(300, 10);
        let (token, _) = store.create("alice").unwrap();
        store.revoke(token.expose()).unwrap();
        assert_eq!(
            store.validate(token.expose()).unwrap_err(),
            SessionError::Invalid
        );
        assert_eq!(
            store.revoke(token.expose()).unwrap_err(),
            SessionError::Invalid
        );
    }

    #[test]
    fn unknown_and_malformed_tokens_are_refused() {
        let (store, _) = store(300, 10);
        assert_eq!(store.validate("nope").unwrap_err(), SessionError::Malformed);
        let other = SessionToken::generate().unwrap();
        assert_eq!(
            store.validate(other.expose()).unwrap_err(),
            SessionError::Invalid
        );
    }

    #[test]
    fn sweep_removes_only_the_expired() {
        let (store, clock) = store(300, 10);
        let (old, _) = store.create("alice").unwrap();
        clock.advance(Duration::from_secs(200));
        let (young, _) = store.create("bob").unwrap();
        clock.advance(Duration::from_secs(150));
        assert_eq!(store.sweep(), 1);
        assert!(store.validate(old.expose()).is_err());
        assert!(store.validate(young.expose()).is_ok());
    }

    #[test]
    fn full_store_refuses_new_logins_but_reclaims_expired() {
        let (store, clock) = store(10, 2);
        store.create("a").unwrap();
        store.create("b").unwrap();
        assert_eq!(store.create("c").unwrap_err(), SessionError::Full(2));
        clock.advance(Duration::from_secs(11));
        assert!(store.create("c").is_ok());
    }

    #[test]
    fn validation_runs_concurrently_from_many_threads() {
        let (store, _) = store(300, 10_000);
        let store = Arc::new(store);
        let tokens: Vec<String> = (0..64)
            .map(|i| {
                store
                    .create(&format!("u{i}"))
                    .unwrap()
                    .0
                    .expose()
                    .to_owned()
            })
            .collect();
        let tokens = Arc::new(tokens);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let tokens = tokens.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        for (i, token) in tokens.iter().enumerate() {
                            assert_eq!(&*store.validate(token).unwrap().username, format!("u{i}"));
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    }
}
