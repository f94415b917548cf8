//! The session store: a sharded concurrent map keyed by token hash, a per-user index for
//! the rare whole-user operations (supersede, logout-all, list), and tombstones that
//! remember why a token stopped working.
//!
//! Validation takes one shard read lock and one atomic store (the sliding idle clock),
//! never a global lock. Lookup is by SHA-256 of the presented token, so a timing
//! difference can only reveal facts about hash outputs, never about a token's text.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use crate::persist::{from_unix_ms, unix_ms, PersistError, SessionFile, StoredSession};
use crate::token::TokenHashState;
use crate::{Clock, SessionToken, TokenError, TokenHash};

/// Enough shards that sweeping one (under its write lock) holds up few requests.
const SHARDS: usize = 128;
/// How long an "expired" or "idle_timeout" answer is remembered after the fact.
const EXPIRY_TOMBSTONE_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct StoreSettings {
    /// Absolute lifetime of a session from login (the runbook's `--session-ttl`). Neither
    /// use nor refresh extends it.
    pub ttl: Duration,
    /// A session unused for this long ends; each use restarts the wait. None: no idle limit.
    pub idle_timeout: Option<Duration>,
    /// Live sessions kept at most; a login beyond it is refused rather than evicting others.
    pub max_sessions: usize,
}

/// Why a token no longer works: what a client needs to know to decide its next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    IdleTimeout,
    LoggedOut,
    /// A newer login of the same user ended it, or a refresh replaced the token.
    Superseded,
}

impl EndReason {
    /// The stable error code clients see.
    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::IdleTimeout => "idle_timeout",
            Self::LoggedOut => "logged_out",
            Self::Superseded => "superseded",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("the token is not one k_proxy could have issued")]
    Malformed,
    #[error("the token is unknown")]
    Unknown,
    #[error("the session has ended ({})", .0.code())]
    Ended(EndReason),
    #[error("too many live sessions ({0})")]
    Full(usize),
    #[error("no randomness for a new token")]
    NoRandomness,
    /// `--session-store` could not record the session, so it was not created.
    #[error("the session store failed: {0}")]
    Storage(String),
}

impl From<TokenError> for SessionError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Malformed => SessionError::Malformed,
            TokenError::NoRandomness => SessionError::NoRandomness,
        }
    }
}

/// What a login asks for.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    pub username: String,
    pub client: Option<IpAddr>,
    /// Resource names the session may reach; None: all.
    pub scope: Option<Vec<String>>,
    /// End the user's other live sessions (`--on-new-login supersede`).
    pub supersede_others: bool,
}

/// The shared, token-independent part of a session; refresh moves it to a new token.
#[derive(Debug)]
struct Record {
    id: String,
    username: Arc<str>,
    client: Option<IpAddr>,
    scope: Option<Arc<[String]>>,
    created: Instant,
    created_wall: SystemTime,
    expires: Instant,
    /// Nanoseconds after `created` of the last use; atomic so validation needs only a
    /// read lock.
    last_seen_offset: AtomicU64,
}

impl Record {
    fn last_seen(&self) -> Instant {
        self.created + Duration::from_nanos(self.last_seen_offset.load(Ordering::Relaxed))
    }

    fn touch(&self, now: Instant) {
        let offset = u64::try_from(now.saturating_duration_since(self.created).as_nanos())
            .unwrap_or(u64::MAX);
        self.last_seen_offset.fetch_max(offset, Ordering::Relaxed);
    }

    /// Why the session is over at `now`, if it is.
    fn ended_at(&self, now: Instant, idle: Option<Duration>) -> Option<EndReason> {
        if now >= self.expires {
            Some(EndReason::Expired)
        } else if idle.is_some_and(|idle| now >= self.last_seen() + idle) {
            Some(EndReason::IdleTimeout)
        } else {
            None
        }
    }
}

impl Record {
    fn stored(&self) -> StoredSession {
        let age = |at: Instant| at.saturating_duration_since(self.created);
        StoredSession {
            id: self.id.clone(),
            username: self.username.to_string(),
            client: self.client,
            scope: self.scope.as_ref().map(|scope| scope.to_vec()),
            created_unix_ms: unix_ms(self.created_wall),
            expires_unix_ms: unix_ms(self.created_wall + age(self.expires)),
            last_seen_unix_ms: unix_ms(self.created_wall + age(self.last_seen())),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Tombstone {
    reason: EndReason,
    until: Instant,
    /// For a token a refresh replaced: its successor, so that a watcher that started
    /// with the old token can follow the session to how it really ended.
    successor: Option<TokenHash>,
}

/// A live session as seen by the request that presented its token.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub username: Arc<str>,
    /// Stable public id (survives refresh); safe to log and show.
    pub id: String,
    pub expires_in: Duration,
    pub scope: Option<Arc<[String]>>,
}

impl SessionView {
    /// Whether the session may reach the resource named `resource`.
    pub fn allows(&self, resource: &str) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|scope| scope.iter().any(|allowed| allowed == resource))
    }
}

/// One session in a user's listing: no token, ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub id: String,
    pub created_unix: u64,
    pub last_seen_unix: u64,
    pub expires_unix: u64,
    pub client: Option<IpAddr>,
    pub scope: Option<Vec<String>>,
    pub current: bool,
}

/// A session that ended without its holder asking: for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedSession {
    pub username: Arc<str>,
    pub id: String,
    pub client: Option<IpAddr>,
    pub reason: EndReason,
}

/// The answer to a successful login or refresh. The token text is here once.
#[derive(Debug)]
pub struct Issued {
    pub token: SessionToken,
    pub session: SessionView,
    /// Sessions this login ended (supersede), and those a full store swept away as
    /// expired before it, for the audit log.
    pub superseded: Vec<EndedSession>,
}

pub struct SessionStore {
    sessions: DashMap<TokenHash, Arc<Record>, TokenHashState>,
    /// username -> that user's live token hashes. Kept in step with `sessions`; never
    /// locked while a `sessions` guard is held.
    by_user: DashMap<Arc<str>, Vec<TokenHash>>,
    tombstones: DashMap<TokenHash, Tombstone, TokenHashState>,
    clock: Arc<dyn Clock>,
    settings: StoreSettings,
    /// `--session-store`: live sessions written through to disk.
    persist: Option<SessionFile>,
    /// Held by whatever moves a user's sessions in or out as a set (refresh, which takes
    /// a session out under its old token and puts it back under the new one; logout of
    /// all, supersede and end-by-id, which look a user's sessions up and end them), so
    /// that none of them sees another half done: a session being refreshed must not slip
    /// past a logout of all. A new session is made under it too (create). Validation
    /// never takes it.
    membership: Mutex<()>,
    /// Ended sessions whose removal from the session file failed (a disk fault). They
    /// are dead in memory at once; on disk they are retried with the next removal and at
    /// every sweep, so that once the disk recovers a restart does not bring them back.
    /// Each entry follows a login, and a login needs a touch of the key, so the list
    /// cannot grow faster than a person can touch it.
    undeleted: Mutex<Vec<TokenHash>>,
}

impl SessionStore {
    pub fn new(settings: StoreSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            sessions: DashMap::with_hasher_and_shard_amount(TokenHashState, SHARDS),
            by_user: DashMap::with_shard_amount(SHARDS),
            tombstones: DashMap::with_hasher_and_shard_amount(TokenHashState, SHARDS),
            clock,
            settings,
            persist: None,
            membership: Mutex::new(()),
            undeleted: Mutex::new(Vec::new()),
        }
    }

    /// The guard over a user's set of sessions ([`SessionStore::membership`]). It guards
    /// no data of its own, so a panic under it leaves nothing to distrust.
    fn membership(&self) -> MutexGuard<'_, ()> {
        self.membership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes sessions through to `file` from now on, after restoring those it holds that
    /// are still live. A stored session whose times cannot be placed on this boot's
    /// monotonic clock (k_proxy started sooner after boot than the session's age) is not
    /// restored: it fails closed, to a new login.
    pub fn with_persistence(mut self, file: SessionFile) -> Result<Self, PersistError> {
        let now = self.clock.now();
        let wall_now = SystemTime::now();
        let mut dead = Vec::new();
        let mut restored = 0usize;
        for (hash, stored) in file.load()? {
            match self.restore(&stored, now, wall_now) {
                Some(record) => {
                    self.insert(hash, Arc::new(record));
                    restored += 1;
                }
                None => dead.push(hash),
            }
        }
        file.delete(&dead)?;
        tracing::info!(path = %file.path().display(), restored, dropped = dead.len(), "session store loaded");
        self.persist = Some(file);
        Ok(self)
    }

    fn restore(
        &self,
        stored: &StoredSession,
        now: Instant,
        wall_now: SystemTime,
    ) -> Option<Record> {
        let before_now = |unix_ms: u64| {
            let ago = wall_now
                .duration_since(from_unix_ms(unix_ms))
                .unwrap_or(Duration::ZERO);
            now.checked_sub(ago)
        };
        let remaining = from_unix_ms(stored.expires_unix_ms)
            .duration_since(wall_now)
            .ok()?;
        let created = before_now(stored.created_unix_ms)?;
        let last_seen = before_now(stored.last_seen_unix_ms)?.max(created);
        let record = Record {
            id: stored.id.clone(),
            username: self.intern(&stored.username),
            client: stored.client,
            scope: stored.scope.clone().map(Arc::from),
            created,
            created_wall: from_unix_ms(stored.created_unix_ms),
            expires: now + remaining.min(self.settings.ttl),
            last_seen_offset: AtomicU64::new(
                u64::try_from((last_seen - created).as_nanos()).unwrap_or(u64::MAX),
            ),
        };
        record
            .ended_at(now, self.settings.idle_timeout)
            .is_none()
            .then_some(record)
    }

    /// Records a new live session on disk before it exists in memory: if it cannot be
    /// made durable, it is not made at all.
    fn persist_save(&self, hash: &TokenHash, record: &Record) -> Result<(), SessionError> {
        match &self.persist {
            Some(file) => file
                .save(hash, &record.stored())
                .map_err(|err| SessionError::Storage(err.to_string())),
            None => Ok(()),
        }
    }

    /// Forgets ended sessions on disk, with any whose removal failed before. A failure
    /// is logged loudly and kept for the next try: the sessions are already dead in
    /// memory, but until a removal succeeds a restart would restore those not yet
    /// expired.
    fn persist_delete(&self, hashes: &[TokenHash]) {
        let Some(file) = &self.persist else {
            return;
        };
        let mut undeleted = self
            .undeleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if hashes.is_empty() && undeleted.is_empty() {
            return;
        }
        let retried = undeleted.len();
        undeleted.extend_from_slice(hashes);
        match file.delete(&undeleted) {
            Ok(()) => {
                if retried > 0 {
                    tracing::warn!(
                        count = retried,
                        "removed ended sessions from the session store after an earlier failure"
                    );
                }
                undeleted.clear();
            }
            Err(err) => tracing::error!(
                error = %err,
                pending = undeleted.len(),
                "could not remove ended sessions from the session store; retrying at the next sweep (a restart before then would restore those not yet expired)"
            ),
        }
    }

    /// How many ended sessions are still waiting to be removed from the session file.
    pub fn undeleted_len(&self) -> usize {
        self.undeleted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether changes to sessions are written to a session file (`--session-store`).
    pub fn writes_to_disk(&self) -> bool {
        self.persist.is_some()
    }

    pub fn settings(&self) -> StoreSettings {
        self.settings
    }

    /// Issues a new session. The token text is returned once and never kept.
    ///
    /// Everything that can refuse (no randomness, a full store, the session file) comes
    /// before the user's older sessions are superseded, so a refused login ends nothing.
    pub fn create(&self, request: NewSession) -> Result<Issued, SessionError> {
        // Held to the insert: logins one at a time (they already wait for the key one at
        // a time), so that the store never passes its bound, and a login that swept the
        // expired away takes one of the places it freed and hands them back for the audit
        // log, instead of finding the store full again and dropping them.
        let membership = self.membership();
        let now = self.clock.now();
        // A full store first makes room from the expired before refusing.
        let mut swept = Vec::new();
        if self.sessions.len() >= self.settings.max_sessions {
            swept = self.sweep();
            // (A sweep that freed nothing ended nothing to audit.)
            if self.sessions.len() >= self.settings.max_sessions {
                return Err(SessionError::Full(self.settings.max_sessions));
            }
        }
        let token = SessionToken::generate()?;
        let hash = token.hash();
        let record = Arc::new(Record {
            id: hash.public_id(),
            username: self.intern(&request.username),
            client: request.client,
            scope: request.scope.map(Arc::from),
            created: now,
            created_wall: SystemTime::now(),
            expires: now + self.settings.ttl,
            last_seen_offset: AtomicU64::new(0),
        });
        self.persist_save(&hash, &record)?;
        let session = view(&record, now);
        let (superseded, removed) = if request.supersede_others {
            self.end_user_sessions(&request.username, None, EndReason::Superseded, now)
        } else {
            (Vec::new(), Vec::new())
        };
        self.insert(hash, record);
        drop(membership);
        self.persist_delete(&removed);
        swept.extend(superseded);
        Ok(Issued {
            token,
            session,
            superseded: swept,
        })
    }

    /// The live session behind a presented token; restarts its idle clock.
    pub fn validate(&self, presented: &str) -> Result<SessionView, SessionError> {
        self.live_view(presented, true)
    }

    /// As [`SessionStore::validate`], but not a use of the session: the idle clock runs
    /// on. For what a page does by itself (live updates and their tickets), so that an
    /// unattended page still ends at `--idle-timeout`.
    pub fn validate_without_use(&self, presented: &str) -> Result<SessionView, SessionError> {
        self.live_view(presented, false)
    }

    /// The presented token's live session, counted as a use (the idle clock restarts)
    /// when `used`.
    fn live_view(&self, presented: &str, used: bool) -> Result<SessionView, SessionError> {
        let hash = TokenHash::parse_presented(presented)?;
        let now = self.clock.now();
        let record = self.live_record(&hash, now)?;
        if used {
            record.touch(now);
        }
        Ok(view(&record, now))
    }

    /// Replaces the presented token with a new one for the same session; the old token
    /// answers `superseded` from now on. The absolute expiry does not move.
    pub fn refresh(&self, presented: &str) -> Result<Issued, SessionError> {
        let old = TokenHash::parse_presented(presented)?;
        let now = self.clock.now();
        let record = self.live_record(&old, now)?;
        let token = SessionToken::generate()?;
        record.touch(now);
        // The successor is on disk before the old token dies: if saving fails, the
        // client keeps a working token instead of two dead ones.
        self.persist_save(&token.hash(), &record)?;
        let session = view(&record, now);
        {
            let membership = self.membership();
            // Only the caller that removes the old token may mint its successor.
            if self.sessions.remove(&old).is_none() {
                drop(membership);
                self.persist_delete(&[token.hash()]);
                return Err(self.why_not_live(&old));
            }
            self.unindex(&record.username, &old);
            self.bury(
                old,
                EndReason::Superseded,
                Some(token.hash()),
                record.expires,
                now,
            );
            self.insert(token.hash(), record);
        }
        self.persist_delete(&[old]);
        Ok(Issued {
            token,
            session,
            superseded: Vec::new(),
        })
    }

    /// Ends the presented session at once.
    pub fn revoke(&self, presented: &str) -> Result<SessionView, SessionError> {
        let hash = TokenHash::parse_presented(presented)?;
        let now = self.clock.now();
        let record = self.live_record(&hash, now)?;
        if self.sessions.remove(&hash).is_none() {
            return Err(self.why_not_live(&hash));
        }
        self.unindex(&record.username, &hash);
        self.bury(hash, EndReason::LoggedOut, None, record.expires, now);
        self.persist_delete(&[hash]);
        Ok(view(&record, now))
    }

    /// Ends every session of the presented session's user, that one included.
    pub fn revoke_all(
        &self,
        presented: &str,
    ) -> Result<(SessionView, Vec<EndedSession>), SessionError> {
        let current = self.validate(presented)?;
        let now = self.clock.now();
        let (ended, removed) = {
            let _membership = self.membership();
            self.end_user_sessions(&current.username, None, EndReason::LoggedOut, now)
        };
        self.persist_delete(&removed);
        Ok((current, ended))
    }

    /// The presented session's user's live sessions, by public id.
    pub fn list(
        &self,
        presented: &str,
    ) -> Result<(SessionView, Vec<SessionSummary>), SessionError> {
        let current = self.validate(presented)?;
        let now = self.clock.now();
        let wall_now = SystemTime::now();
        let unix = |at: Instant| -> u64 {
            let wall = if at >= now {
                wall_now + (at - now)
            } else {
                wall_now - (now - at)
            };
            wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
        };
        let hashes = self
            .by_user
            .get(&*current.username)
            .map(|hashes| hashes.clone())
            .unwrap_or_default();
        let mut sessions: Vec<SessionSummary> = hashes
            .iter()
            .filter_map(|hash| self.sessions.get(hash).map(|record| record.clone()))
            .filter(|record| record.ended_at(now, self.settings.idle_timeout).is_none())
            .map(|record| SessionSummary {
                id: record.id.clone(),
                created_unix: record
                    .created_wall
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                last_seen_unix: unix(record.last_seen()),
                expires_unix: unix(record.expires),
                client: record.client,
                scope: record.scope.as_ref().map(|scope| scope.to_vec()),
                current: record.id == current.id,
            })
            .collect();
        sessions.sort_by(|a, b| a.created_unix.cmp(&b.created_unix).then(a.id.cmp(&b.id)));
        Ok((current, sessions))
    }

    /// Ends one of the presented session's user's sessions, named by its public id (the
    /// presented one included). None when the user has no live session by that id.
    pub fn revoke_id(
        &self,
        presented: &str,
        id: &str,
    ) -> Result<(SessionView, Option<EndedSession>), SessionError> {
        let current = self.validate(presented)?;
        let now = self.clock.now();
        let membership = self.membership();
        let Some((hash, record)) = self.find_id(&current.username, id) else {
            return Ok((current, None));
        };
        if record.ended_at(now, self.settings.idle_timeout).is_some()
            || self.sessions.remove(&hash).is_none()
        {
            return Ok((current, None));
        }
        self.unindex(&record.username, &hash);
        self.bury(hash, EndReason::LoggedOut, None, record.expires, now);
        drop(membership);
        self.persist_delete(&[hash]);
        Ok((current, Some(ended_session(&record, EndReason::LoggedOut))))
    }

    /// Whether session `id` of `username` is live, without restarting its idle clock, for
    /// a watcher such as an open WebSocket; else why it ended. `seen` is the token hash
    /// the session had when the watcher started (its tombstone gives the reason once the
    /// session is gone; a refresh since then moves the session and still counts as live).
    pub fn peek(&self, username: &str, id: &str, seen: &TokenHash) -> Result<(), SessionError> {
        let now = self.clock.now();
        // A miss may be a refresh caught between its old token and its new one: look
        // again once no such change is under way.
        let found = self.find_id(username, id).or_else(|| {
            let _membership = self.membership();
            self.find_id(username, id)
        });
        match found {
            Some((_, record)) => match record.ended_at(now, self.settings.idle_timeout) {
                None => Ok(()),
                Some(reason) => Err(SessionError::Ended(reason)),
            },
            None => Err(self.why_session_ended(seen)),
        }
    }

    /// Why the session that had token `seen` is gone: the reason its last token ended,
    /// following any refreshes since (a refresh moves a session; it does not end it).
    fn why_session_ended(&self, seen: &TokenHash) -> SessionError {
        let mut hash = *seen;
        // Each refresh adds one link, each link lives until the session's expiry, and
        // the tombstones are bounded: so is this walk.
        for _ in 0..=self.settings.max_sessions {
            let Some(tombstone) = self.tombstones.get(&hash).map(|entry| *entry) else {
                return SessionError::Unknown;
            };
            match tombstone.successor {
                Some(next) => hash = next,
                None => return SessionError::Ended(tombstone.reason),
            }
        }
        SessionError::Unknown
    }

    fn find_id(&self, username: &str, id: &str) -> Option<(TokenHash, Arc<Record>)> {
        let hashes = self
            .by_user
            .get(username)
            .map(|hashes| hashes.clone())
            .unwrap_or_default();
        hashes.into_iter().find_map(|hash| {
            self.sessions
                .get(&hash)
                .filter(|record| record.id == id)
                .map(|record| (hash, record.clone()))
        })
    }

    /// Removes ended sessions and stale tombstones; returns the sessions it ended, for
    /// the audit log. Each shard is write-locked only while it is scanned, so requests on
    /// the other shards proceed; run it off the async workers.
    pub fn sweep(&self) -> Vec<EndedSession> {
        let now = self.clock.now();
        let idle = self.settings.idle_timeout;
        let mut ended = Vec::new();
        self.sessions
            .retain(|hash, record| match record.ended_at(now, idle) {
                None => true,
                Some(reason) => {
                    ended.push((*hash, record.clone(), reason));
                    false
                }
            });
        self.tombstones.retain(|_, tombstone| now < tombstone.until);
        let hashes: Vec<TokenHash> = ended.iter().map(|(hash, _, _)| *hash).collect();
        self.persist_delete(&hashes);
        ended
            .into_iter()
            .map(|(hash, record, reason)| {
                self.unindex(&record.username, &hash);
                self.bury(hash, reason, None, now, now);
                ended_session(&record, reason)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Tombstones held (bounded by `max_sessions`).
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    fn insert(&self, hash: TokenHash, record: Arc<Record>) {
        let username = record.username.clone();
        self.sessions.insert(hash, record);
        self.by_user.entry(username).or_default().push(hash);
    }

    /// One `Arc<str>` per user, shared by all their sessions.
    fn intern(&self, username: &str) -> Arc<str> {
        match self.by_user.get(username) {
            Some(entry) => entry.key().clone(),
            None => Arc::from(username),
        }
    }

    fn unindex(&self, username: &str, hash: &TokenHash) {
        let now_empty = match self.by_user.get_mut(username) {
            Some(mut hashes) => {
                hashes.retain(|h| h != hash);
                hashes.is_empty()
            }
            None => false,
        };
        if now_empty {
            self.by_user
                .remove_if(username, |_, hashes| hashes.is_empty());
        }
    }

    /// The record behind `hash` if it is live now; otherwise why not. An ended record is
    /// left for the sweeper, so that each expiry is reported (and audited) exactly once.
    fn live_record(&self, hash: &TokenHash, now: Instant) -> Result<Arc<Record>, SessionError> {
        let record = match self.sessions.get(hash) {
            Some(record) => record.clone(),
            None => return Err(self.why_not_live(hash)),
        };
        match record.ended_at(now, self.settings.idle_timeout) {
            Some(reason) => Err(SessionError::Ended(reason)),
            None => Ok(record),
        }
    }

    fn why_not_live(&self, hash: &TokenHash) -> SessionError {
        match self.tombstones.get(hash) {
            Some(tombstone) => SessionError::Ended(tombstone.reason),
            None => SessionError::Unknown,
        }
    }

    /// Remembers why a token ended: until the session's own expiry for logout and
    /// supersede, for a grace period after the fact for expiry. Bounded: when full, the
    /// token simply becomes unknown, which is still a refusal.
    fn bury(
        &self,
        hash: TokenHash,
        reason: EndReason,
        successor: Option<TokenHash>,
        expires: Instant,
        now: Instant,
    ) {
        if self.tombstones.len() >= self.settings.max_sessions {
            return;
        }
        let until = expires.max(now + EXPIRY_TOMBSTONE_GRACE.min(self.settings.ttl));
        self.tombstones.insert(
            hash,
            Tombstone {
                reason,
                until,
                successor,
            },
        );
    }

    /// Ends `username`'s sessions (but `keep`) in memory: the sessions ended, for the
    /// audit log, and their token hashes, for the caller to delete from disk once it has
    /// let go of the membership guard it must hold here.
    fn end_user_sessions(
        &self,
        username: &str,
        keep: Option<&TokenHash>,
        reason: EndReason,
        now: Instant,
    ) -> (Vec<EndedSession>, Vec<TokenHash>) {
        let hashes = self
            .by_user
            .get(username)
            .map(|hashes| hashes.clone())
            .unwrap_or_default();
        let mut ended = Vec::new();
        let mut removed = Vec::new();
        for hash in hashes.iter().filter(|hash| Some(*hash) != keep) {
            if let Some((_, record)) = self.sessions.remove(hash) {
                self.unindex(username, hash);
                self.bury(*hash, reason, None, record.expires, now);
                ended.push(ended_session(&record, reason));
                removed.push(*hash);
            }
        }
        (ended, removed)
    }
}

fn view(record: &Record, now: Instant) -> SessionView {
    SessionView {
        username: record.username.clone(),
        id: record.id.clone(),
        expires_in: record.expires.saturating_duration_since(now),
        scope: record.scope.clone(),
    }
}

fn ended_session(record: &Record, reason: EndReason) -> EndedSession {
    EndedSession {
        username: record.username.clone(),
        id: record.id.clone(),
        client: record.client,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    const TTL: Duration = Duration::from_secs(300);

    fn store_with(idle: Option<Duration>, max: usize) -> (SessionStore, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let store = SessionStore::new(
            StoreSettings {
                ttl: TTL,
                idle_timeout: idle,
                max_sessions: max,
            },
            clock.clone(),
        );
        (store, clock)
    }

    fn store() -> (SessionStore, Arc<ManualClock>) {
        store_with(None, 100)
    }

    fn login(store: &SessionStore, user: &str) -> Issued {
        store
            .create(NewSession {
                username: user.into(),
                ..NewSession::default()
            })
            .unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn revoke_by_id_ends_only_that_session_of_that_user() {
        let (store, _) = store();
        let a1 = login(&store, "alice");
        let a2 = login(&store, "alice");
        let b = login(&store, "bob");
        // Another user's id is not found.
        let (_, none) = store.revoke_id(a1.token.expose(), &b.session.id).unwrap();
        assert!(none.is_none());
        assert!(store.validate(b.token.expose()).is_ok());
        let (_, ended) = store.revoke_id(a1.token.expose(), &a2.session.id).unwrap();
        assert_eq!(ended.unwrap().id, a2.session.id);
        assert_eq!(
            store.validate(a2.token.expose()).unwrap_err(),
            SessionError::Ended(EndReason::LoggedOut)
        );
        assert!(store.validate(a1.token.expose()).is_ok());
    }

    #[test]
    fn validating_without_use_leaves_the_idle_clock_running() {
        let (store, clock) = store_with(Some(secs(60)), 100);
        let a = login(&store, "alice");
        for _ in 0..5 {
            clock.advance(secs(11));
            assert!(store.validate_without_use(a.token.expose()).is_ok());
        }
        clock.advance(secs(5));
        assert_eq!(
            store.validate_without_use(a.token.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::IdleTimeout))
        );
    }

    #[test]
    fn peek_sees_every_end_without_touching() {
        let (store, clock) = store_with(Some(secs(60)), 100);
        let a = login(&store, "alice");
        let hash = a.token.hash();
        assert!(store.peek("alice", &a.session.id, &hash).is_ok());
        // Peeking does not restart the idle clock.
        clock.advance(secs(40));
        assert!(store.peek("alice", &a.session.id, &hash).is_ok());
        clock.advance(secs(21));
        assert_eq!(
            store.peek("alice", &a.session.id, &hash).unwrap_err(),
            SessionError::Ended(EndReason::IdleTimeout)
        );
        let b = login(&store, "bob");
        let refreshed = store.refresh(b.token.expose()).unwrap();
        assert!(store.peek("bob", &b.session.id, &b.token.hash()).is_ok());
        let twice = store.refresh(refreshed.token.expose()).unwrap();
        assert!(store.peek("bob", &b.session.id, &b.token.hash()).is_ok());
        store.revoke(twice.token.expose()).unwrap();
        // Seen with its first token, the session reports how it ended, not the refreshes.
        assert_eq!(
            store
                .peek("bob", &b.session.id, &b.token.hash())
                .unwrap_err(),
            SessionError::Ended(EndReason::LoggedOut)
        );
        let c = login(&store, "carol");
        store.revoke(c.token.expose()).unwrap();
        assert_eq!(
            store
                .peek("carol", &c.session.id, &c.token.hash())
                .unwrap_err(),
            SessionError::Ended(EndReason::LoggedOut)
        );
    }

    #[test]
    fn created_session_validates_with_its_user_and_remaining_time() {
        let (store, clock) = store();
        let issued = login(&store, "alice");
        clock.advance(secs(100));
        let seen = store.validate(issued.token.expose()).unwrap();
        assert_eq!(&*seen.username, "alice");
        assert_eq!(seen.expires_in, secs(200));
        assert_eq!(seen.id, issued.session.id);
    }

    #[test]
    fn absolute_expiry_is_enforced_at_the_exact_boundary_and_remembered() {
        let (store, clock) = store();
        let token = login(&store, "alice").token;
        clock.advance(secs(299));
        assert!(store.validate(token.expose()).is_ok());
        clock.advance(secs(1));
        let expired = Err(SessionError::Ended(EndReason::Expired));
        assert_eq!(store.validate(token.expose()).map(|_| ()), expired);
        assert_eq!(store.sweep().len(), 1);
        assert_eq!(store.len(), 0);
        // The tombstone keeps answering "expired", not "unknown".
        assert_eq!(store.validate(token.expose()).map(|_| ()), expired);
    }

    #[test]
    fn idle_timeout_slides_with_use_but_never_past_the_absolute_limit() {
        let (store, clock) = store_with(Some(secs(60)), 100);
        let token = login(&store, "alice").token;
        for _ in 0..4 {
            clock.advance(secs(59));
            assert!(store.validate(token.expose()).is_ok());
        }
        clock.advance(secs(60));
        assert_eq!(
            store.validate(token.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::IdleTimeout))
        );

        let token = login(&store, "bob").token;
        for _ in 0..5 {
            clock.advance(secs(59));
            assert!(store.validate(token.expose()).is_ok());
        }
        clock.advance(secs(59)); // 354 s after login: busy, but past the 300 s lifetime
        assert_eq!(
            store.validate(token.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::Expired))
        );
    }

    #[test]
    fn every_end_has_its_own_reason() {
        let (store, _) = store();
        let logged_out = login(&store, "alice").token;
        store.revoke(logged_out.expose()).unwrap();
        assert_eq!(
            store.validate(logged_out.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::LoggedOut))
        );
        assert_eq!(
            store.revoke(logged_out.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::LoggedOut))
        );
        let stranger = SessionToken::generate().unwrap();
        assert_eq!(
            store.validate(stranger.expose()).map(|_| ()),
            Err(SessionError::Unknown)
        );
        assert_eq!(
            store.validate("nope").map(|_| ()),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn refresh_replaces_the_token_and_keeps_the_absolute_limit() {
        let (store, clock) = store();
        let first = login(&store, "alice");
        clock.advance(secs(100));
        let second = store.refresh(first.token.expose()).unwrap();
        assert_ne!(first.token.expose(), second.token.expose());
        assert_eq!(second.session.id, first.session.id);
        assert_eq!(second.session.expires_in, secs(200));
        assert_eq!(
            store.validate(first.token.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::Superseded))
        );
        assert_eq!(
            store.refresh(first.token.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::Superseded))
        );
        clock.advance(secs(199));
        let third = store.refresh(second.token.expose()).unwrap();
        assert_eq!(third.session.expires_in, secs(1));
        clock.advance(secs(1));
        assert_eq!(
            store.validate(third.token.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::Expired))
        );
        assert_eq!(store.sweep().len(), 1);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn supersede_ends_only_the_same_users_older_sessions() {
        let (store, _) = store();
        let old = login(&store, "alice").token;
        let bob = login(&store, "bob").token;
        let new = store
            .create(NewSession {
                username: "alice".into(),
                supersede_others: true,
                ..NewSession::default()
            })
            .unwrap();
        assert_eq!(new.superseded.len(), 1);
        assert_eq!(new.superseded[0].reason, EndReason::Superseded);
        assert_eq!(
            store.validate(old.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::Superseded))
        );
        assert!(store.validate(new.token.expose()).is_ok());
        assert!(store.validate(bob.expose()).is_ok());
    }

    #[test]
    fn keep_policy_leaves_older_sessions_alone() {
        let (store, _) = store();
        let old = login(&store, "alice").token;
        let new = login(&store, "alice");
        assert!(new.superseded.is_empty());
        assert!(store.validate(old.expose()).is_ok());
    }

    #[test]
    fn logout_all_ends_every_session_of_the_user_only() {
        let (store, _) = store();
        let a1 = login(&store, "alice").token;
        let a2 = login(&store, "alice").token;
        let bob = login(&store, "bob").token;
        let (current, ended) = store.revoke_all(a1.expose()).unwrap();
        assert_eq!(&*current.username, "alice");
        assert_eq!(ended.len(), 2);
        for token in [&a1, &a2] {
            assert_eq!(
                store.validate(token.expose()).map(|_| ()),
                Err(SessionError::Ended(EndReason::LoggedOut))
            );
        }
        assert!(store.validate(bob.expose()).is_ok());
    }

    #[test]
    fn list_shows_the_users_sessions_by_public_id_and_marks_the_current() {
        let (store, clock) = store();
        let first = login(&store, "alice");
        clock.advance(secs(5));
        let second = store
            .create(NewSession {
                username: "alice".into(),
                client: Some("127.0.0.1".parse().unwrap()),
                scope: Some(vec!["counter".into()]),
                supersede_others: false,
            })
            .unwrap();
        login(&store, "bob");
        let (_, sessions) = store.list(second.token.expose()).unwrap();
        assert_eq!(sessions.len(), 2);
        let ids: Vec<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        assert!(ids.contains(&first.session.id.as_str()));
        let current = sessions.iter().find(|s| s.current).unwrap();
        assert_eq!(current.id, second.session.id);
        assert_eq!(current.client, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(current.scope.as_deref(), Some(&["counter".to_owned()][..]));
        let listing = format!("{sessions:?}");
        assert!(!listing.contains(first.token.expose()));
        assert!(!listing.contains(second.token.expose()));
    }

    #[test]
    fn scope_limits_resources() {
        let (store, _) = store();
        let scoped = store
            .create(NewSession {
                username: "alice".into(),
                scope: Some(vec!["counter".into()]),
                ..NewSession::default()
            })
            .unwrap();
        assert!(scoped.session.allows("counter"));
        assert!(!scoped.session.allows("secrets"));
        assert!(login(&store, "bob").session.allows("secrets"));
    }

    #[test]
    fn sweep_removes_only_the_ended_and_reports_them() {
        let (store, clock) = store_with(Some(secs(100)), 100);
        let old = login(&store, "alice").token;
        clock.advance(secs(50));
        let young = login(&store, "bob").token;
        clock.advance(secs(60));
        let ended = store.sweep();
        assert_eq!(ended.len(), 1);
        assert_eq!(&*ended[0].username, "alice");
        assert_eq!(ended[0].reason, EndReason::IdleTimeout);
        assert_eq!(
            store.validate(old.expose()).map(|_| ()),
            Err(SessionError::Ended(EndReason::IdleTimeout))
        );
        assert!(store.validate(young.expose()).is_ok());
        // Tombstones go too, once their time is up: alice's is gone; bob's session has
        // just ended (idle) and left a fresh one, which goes a grace period later.
        clock.advance(TTL + EXPIRY_TOMBSTONE_GRACE);
        assert_eq!(store.sweep().len(), 1);
        assert_eq!(
            store.validate(old.expose()).map(|_| ()),
            Err(SessionError::Unknown)
        );
        assert_eq!(store.tombstones(), 1);
        assert_eq!(store.len(), 0);
        clock.advance(EXPIRY_TOMBSTONE_GRACE);
        store.sweep();
        assert_eq!(store.tombstones(), 0);
    }

    #[test]
    fn full_store_refuses_new_logins_but_reclaims_ended() {
        let clock = Arc::new(ManualClock::default());
        let store = SessionStore::new(
            StoreSettings {
                ttl: secs(10),
                idle_timeout: None,
                max_sessions: 2,
            },
            clock.clone(),
        );
        login(&store, "a");
        login(&store, "b");
        let full = store.create(NewSession {
            username: "c".into(),
            ..NewSession::default()
        });
        assert_eq!(full.map(|_| ()), Err(SessionError::Full(2)));
        clock.advance(secs(11));
        // The two that expired are swept to make room, and handed back for the audit log.
        let c = login(&store, "c");
        let mut ended: Vec<(&str, EndReason)> = c
            .superseded
            .iter()
            .map(|e| (&*e.username, e.reason))
            .collect();
        ended.sort_by_key(|(user, _)| *user);
        assert_eq!(
            ended,
            [("a", EndReason::Expired), ("b", EndReason::Expired)]
        );
    }

    #[test]
    fn logins_racing_on_a_full_store_hand_back_every_expired_session_they_swept() {
        for _ in 0..20 {
            let (store, clock) = store_with(None, 4);
            for user in ["a", "b", "c", "d"] {
                login(&store, user);
            }
            clock.advance(TTL + secs(1));
            let results: Vec<Result<Issued, SessionError>> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..8)
                    .map(|i| {
                        let store = &store;
                        scope.spawn(move || {
                            store.create(NewSession {
                                username: format!("racer{i}"),
                                ..NewSession::default()
                            })
                        })
                    })
                    .collect();
                racers.into_iter().map(|r| r.join().unwrap()).collect()
            });
            let admitted = results.iter().filter(|r| r.is_ok()).count();
            let swept: usize = results
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|issued| issued.superseded.len())
                .sum();
            assert_eq!(admitted, 4, "the bound of 4 sessions");
            assert_eq!(
                swept, 4,
                "every expired session is handed back once for its audit line"
            );
        }
    }

    #[test]
    fn a_login_refused_for_a_full_store_supersedes_nothing() {
        let (store, _) = store_with(None, 2);
        let a = login(&store, "a");
        login(&store, "b");
        let refused = store.create(NewSession {
            username: "a".into(),
            supersede_others: true,
            ..NewSession::default()
        });
        assert_eq!(refused.map(|_| ()), Err(SessionError::Full(2)));
        // a's session lives on: the refused login changed nothing.
        assert!(store.validate(a.token.expose()).is_ok());
    }

    #[test]
    fn validation_runs_concurrently_from_many_threads() {
        let (store, _) = store_with(Some(secs(60)), 10_000);
        let store = Arc::new(store);
        let tokens: Vec<String> = (0..64)
            .map(|i| login(&store, &format!("u{i}")).token.expose().to_owned())
            .collect();
        let tokens = Arc::new(tokens);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                let tokens = tokens.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        for (i, token) in tokens.iter().enumerate() {
                            let seen = store.validate(token).unwrap();
                            assert_eq!(&*seen.username, format!("u{i}"));
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
    }

    #[test]
    fn persisted_sessions_survive_a_restart_and_ended_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let (alive, refreshed, logged_out, scoped_id);
        {
            let (store, _) = store();
            let store = store
                .with_persistence(SessionFile::open(&path).unwrap())
                .unwrap();
            alive = login(&store, "alice").token;
            let old = login(&store, "bob").token;
            refreshed = store.refresh(old.expose()).unwrap().token;
            logged_out = login(&store, "carol").token;
            store.revoke(logged_out.expose()).unwrap();
            let scoped = store
                .create(NewSession {
                    username: "dave".into(),
                    scope: Some(vec!["counter".into()]),
                    ..NewSession::default()
                })
                .unwrap();
            scoped_id = (scoped.token, scoped.session.id);
            assert_eq!(
                store.validate(old.expose()).map(|_| ()),
                Err(SessionError::Ended(EndReason::Superseded))
            );
        }
        let (store, _) = store();
        let store = store
            .with_persistence(SessionFile::open(&path).unwrap())
            .unwrap();
        assert_eq!(store.len(), 3);
        assert_eq!(&*store.validate(alive.expose()).unwrap().username, "alice");
        assert_eq!(
            &*store.validate(refreshed.expose()).unwrap().username,
            "bob"
        );
        let dave = store.validate(scoped_id.0.expose()).unwrap();
        assert_eq!(dave.id, scoped_id.1);
        assert!(!dave.allows("secrets"));
        assert!(dave.expires_in <= TTL && dave.expires_in > TTL - secs(5));
        assert_eq!(
            store.validate(logged_out.expose()).map(|_| ()),
            Err(SessionError::Unknown)
        );
        // The file holds hashes, never tokens.
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(alive.expose()));
    }

    #[test]
    fn a_logout_that_met_a_disk_fault_is_removed_from_disk_by_the_next_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let (kept, ended_while_failing);
        {
            let (store, _) = store();
            let store = store
                .with_persistence(SessionFile::open(&path).unwrap())
                .unwrap();
            kept = login(&store, "alice").token;
            ended_while_failing = login(&store, "bob").token;
            store.persist.as_ref().unwrap().fail_writes(true);
            // The logout takes effect in memory whatever the disk says.
            store.revoke(ended_while_failing.expose()).unwrap();
            assert!(store.validate(ended_while_failing.expose()).is_err());
            assert_eq!(store.undeleted_len(), 1);
            // Still failing: the sweep keeps it for later.
            store.sweep();
            assert_eq!(store.undeleted_len(), 1);
            store.persist.as_ref().unwrap().fail_writes(false);
            store.sweep();
            assert_eq!(store.undeleted_len(), 0);
        }
        let (store, _) = store();
        let store = store
            .with_persistence(SessionFile::open(&path).unwrap())
            .unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.validate(kept.expose()).is_ok());
        assert_eq!(
            store.validate(ended_while_failing.expose()).map(|_| ()),
            Err(SessionError::Unknown)
        );
    }

    #[test]
    fn expired_persisted_sessions_are_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions.redb");
        let clock = Arc::new(ManualClock::default());
        let settings = StoreSettings {
            ttl: secs(1),
            idle_timeout: None,
            max_sessions: 10,
        };
        let token = {
            let store = SessionStore::new(settings, clock.clone())
                .with_persistence(SessionFile::open(&path).unwrap())
                .unwrap();
            login(&store, "alice").token
        };
        std::thread::sleep(Duration::from_millis(1100));
        let store = SessionStore::new(settings, Arc::new(crate::SystemClock))
            .with_persistence(SessionFile::open(&path).unwrap())
            .unwrap();
        assert_eq!(store.len(), 0);
        assert!(store.validate(token.expose()).is_err());
    }

    #[test]
    fn concurrent_refresh_of_one_token_mints_one_successor() {
        let (store, _) = store();
        let store = Arc::new(store);
        let token = Arc::new(login(&store, "alice").token.expose().to_owned());
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                let token = token.clone();
                std::thread::spawn(move || store.refresh(&token).is_ok())
            })
            .collect();
        let winners = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(winners, 1);
        assert_eq!(store.len(), 1);
    }
}
