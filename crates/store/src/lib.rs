#![forbid(unsafe_code)]
//! k_server's durable resources in an embedded ACID store (redb): the counter and
//! per-user secrets.
//!
//! * [`Store::apply`] runs a batch of writes in ONE write transaction with
//!   `Durability::Immediate` (redb's default: the commit is fsync'd before it returns),
//!   and gives every write its own outcome. [`Writer`] is the group-commit front end:
//!   one thread owns the write path, drains whatever callers queued, commits them
//!   together, and answers each caller only after the commit succeeded.
//! * Reads ([`Store::counter`], [`Store::secret`], [`Store::secret_names`]) run in
//!   their own read transactions, concurrently with the writer.
//! * The methods block; call them from a blocking thread (the [`Writer`] does).
//!
//! The store never resets itself: a file it cannot read, a file locked by another
//! process, or a directory other users may write to is an error that names the path
//! and says what to do. After an I/O error (a full disk, say) redb refuses every later
//! operation until the file is reopened; the store then reopens it, at most once a
//! second, and never creates a new file in its place, so the values come back exactly
//! as last committed.

mod backend;
mod fs;
mod writer;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableError};

use crate::backend::Backend;
pub use crate::fs::default_data_dir;
pub use crate::writer::{CommitMode, WriteError, Writer, WriterThread, MAX_BATCH, QUEUE_DEPTH};

/// File name of the store inside the data directory.
pub const DB_FILE_NAME: &str = "k_server.redb";

/// Longest secret name, in bytes (names are ASCII).
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// Largest secret value, in bytes.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Most secrets one user may hold.
pub const MAX_SECRETS_PER_USER: usize = 1000;

/// After an I/O error, how long to wait between attempts to reopen the file (shorter
/// in the unit tests, which wait it out).
const REOPEN_INTERVAL: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(1)
};

const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const COUNTER_KEY: &str = "counter";
/// (user, secret name) → value.
const SECRETS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("secrets");

/// Why the store could not be opened, read or written. Every message is a sentence
/// that names the path concerned and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot create the data directory {}: {source}; create it yourself with mode 0700 or choose another data directory", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot inspect {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the data directory {} exists but is not a directory; remove it or choose another data directory", path.display())]
    NotADirectory { path: PathBuf },

    #[error("the data directory {} has mode {mode:04o}, so other users may write to it; run `chmod 0700 {}` or choose another data directory", path.display(), path.display())]
    InsecurePermissions { path: PathBuf, mode: u32 },

    #[error("the store file {} is not a regular file (a symbolic link or something else); refusing to open it, remove it or choose another data directory", path.display())]
    NotARegularFile { path: PathBuf },

    #[error("cannot set the permissions of {} to {mode:04o}: {source}; check that this user owns it", path.display())]
    SetPermissions {
        path: PathBuf,
        mode: u32,
        #[source]
        source: io::Error,
    },

    #[error("cannot open the store file {}: {source}", path.display())]
    OpenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("the store file {} has disappeared while k_server was running; it will not start a new, empty one in its place: restore the file and restart k_server", path.display())]
    Vanished { path: PathBuf },

    #[error("the store file {} is locked by another process (is another k_server running with the same data directory?); stop that process or choose another data directory", path.display())]
    Locked { path: PathBuf },

    #[error("the store file {} is corrupt or is not a k_server store ({detail}); nothing was changed; restore it from a backup, or move it aside to start again from an empty store", path.display())]
    Corrupt { path: PathBuf, detail: String },

    #[error("the store file {} was written in an older redb file format (version {version}) that this k_server cannot read; upgrade it with a matching tool, or move it aside to start again from an empty store", path.display())]
    Incompatible { path: PathBuf, version: u8 },

    #[error("I/O error on the store file {} while {action}: {source}; nothing was written (check free space and the disk)", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("an earlier I/O error left the store file {} unusable until it is reopened, which is retried every second; nothing was written (check free space and the disk)", path.display())]
    Poisoned { path: PathBuf },

    #[error("the store file {} is closed after an I/O error and could not be reopened yet ({detail}); reopening is retried every second; nothing was written", path.display())]
    Closed { path: PathBuf, detail: String },

    #[error("the store {} failed while {action}: {detail}", path.display())]
    Database {
        path: PathBuf,
        action: &'static str,
        detail: String,
    },

    #[error("the store's writer thread has stopped; nothing was written")]
    WriterStopped,

    #[error(transparent)]
    Refused(#[from] Refused),
}

impl StoreError {
    /// True for the errors after which redb wants the file reopened.
    fn wants_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. } | StoreError::Poisoned { .. } | StoreError::Corrupt { .. }
        )
    }
}

/// One write refused on its own merits: nothing was written for it, and the other
/// writes of its batch are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    #[error(
        "the counter is at its maximum ({}) and cannot be incremented",
        u64::MAX
    )]
    CounterOverflow,
    #[error("a secret name is 1 to {MAX_SECRET_NAME_LEN} characters of letters, digits, '.', '_' and '-', and not '.' or '..'")]
    InvalidName,
    #[error("a secret value is at most {limit} bytes")]
    ValueTooLarge { limit: usize },
    #[error("a user may hold at most {limit} secrets; delete one first")]
    TooManySecrets { limit: usize },
}

/// A write, applied by [`Store::apply`] or queued on the [`Writer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Add one to the counter.
    Increment,
    /// Create or replace `user`'s secret `name`.
    PutSecret {
        user: String,
        name: String,
        value: Vec<u8>,
    },
    /// Remove `user`'s secret `name`.
    DeleteSecret { user: String, name: String },
}

/// What a committed write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The counter's new value, distinct for every increment.
    Counter(u64),
    /// The secret is stored; `created` is false when it replaced an older value.
    SecretStored { created: bool },
    /// `existed` is false when there was no such secret (nothing changed).
    SecretDeleted { existed: bool },
}

/// 1 to [`MAX_SECRET_NAME_LEN`] characters of `[A-Za-z0-9._-]`, and not `.` or `..`.
pub fn validate_secret_name(name: &str) -> Result<&str, Refused> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty()
        || name.len() > MAX_SECRET_NAME_LEN
        || name == "."
        || name == ".."
        || !name.as_bytes().iter().all(allowed)
    {
        return Err(Refused::InvalidName);
    }
    Ok(name)
}

/// k_server's durable store. `Send + Sync`; share it in an `Arc`.
pub struct Store {
    /// None only while a reopen after an I/O error has not succeeded yet.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// Set by an operation that failed in a way that needs the file reopened.
    broken: AtomicBool,
    /// When reopening was last tried, and why the store is broken.
    recovery: Mutex<Recovery>,
    /// The counter's last committed value, so that reading it needs no transaction (and
    /// k_server no blocking thread): raised after each commit (the counter only grows),
    /// forgotten when the store breaks, learnt again from the next read or commit.
    committed: CommittedCounter,
    #[cfg(test)]
    fault: Option<backend::FaultSwitch>,
}

#[derive(Default)]
struct Recovery {
    last_attempt: Option<Instant>,
    last_error: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates `<dir>/k_server.redb`.
    ///
    /// Creates `dir` (and missing parents) with mode 0700 and the file with mode 0600,
    /// setting both explicitly. Refuses an existing `dir` that is group- or
    /// world-writable, a store path that is a symbolic link, a file locked by another
    /// process and a file that is not a valid store.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(
            dir,
            #[cfg(test)]
            None,
        )
    }

    fn open_inner(
        dir: &Path,
        #[cfg(test)] fault: Option<backend::FaultSwitch>,
    ) -> Result<Self, StoreError> {
        fs::prepare_dir(dir)?;
        let path = dir.join(DB_FILE_NAME);
        let db = open_db(
            &path,
            true,
            #[cfg(test)]
            fault.clone(),
        )?;
        let store = Store {
            db: RwLock::new(Some(db)),
            path,
            broken: AtomicBool::new(false),
            recovery: Mutex::new(Recovery::default()),
            committed: CommittedCounter::default(),
            #[cfg(test)]
            fault,
        };
        // Create the tables now, so a store that cannot be written fails at start-up
        // and reads never have to special-case a missing table.
        store.apply(&[])?;
        // Read, not only logged: this also teaches the store its committed counter.
        let counter = store.counter()?;
        tracing::debug!(path = %store.path.display(), counter, "store open");
        Ok(store)
    }

    /// Applies `ops` in one durable write transaction, in order, and returns each op's
    /// outcome, only after the commit succeeded. An op refused on its own merits
    /// ([`Refused`]) writes nothing and leaves the others alone. Any other error aborts
    /// the whole transaction: nothing of the batch was written.
    pub fn apply(&self, ops: &[WriteOp]) -> Result<Vec<Result<WriteOutcome, Refused>>, StoreError> {
        self.with_db(|db, path| {
            let generation = self.committed.generation();
            // Durability::Immediate is redb's default for a write transaction; it is
            // not changed here on purpose.
            let txn = db
                .begin_write()
                .map_err(|e| classify(path, "starting a write transaction", e.into()))?;
            let mut results = Vec::with_capacity(ops.len());
            let mut counter: Option<u64> = None;
            let mut counter_changed = false;
            {
                let mut counters = txn
                    .open_table(COUNTERS)
                    .map_err(|e| classify(path, "opening the counter table", e.into()))?;
                let mut secrets = txn
                    .open_table(SECRETS)
                    .map_err(|e| classify(path, "opening the secrets table", e.into()))?;
                // Secrets held per user, counted once per batch when first needed.
                let mut held: HashMap<&str, usize> = HashMap::new();
                for op in ops {
                    let outcome = match op {
                        WriteOp::Increment => {
                            let current = match counter {
                                Some(value) => value,
                                None => counters
                                    .get(COUNTER_KEY)
                                    .map_err(|e| classify(path, "reading the counter", e.into()))?
                                    .map(|guard| guard.value())
                                    .unwrap_or(0),
                            };
                            match current.checked_add(1) {
                                Some(next) => {
                                    counter = Some(next);
                                    counter_changed = true;
                                    Ok(WriteOutcome::Counter(next))
                                }
                                None => {
                                    counter = Some(current);
                                    Err(Refused::CounterOverflow)
                                }
                            }
                        }
                        WriteOp::PutSecret { user, name, value } => {
                            put_secret(&mut secrets, &mut held, path, user, name, value)?
                        }
                        WriteOp::DeleteSecret { user, name } => match validate_secret_name(name) {
                            Err(refused) => Err(refused),
                            Ok(name) => {
                                let existed = secrets
                                    .remove((user.as_str(), name))
                                    .map_err(|e| classify(path, "deleting a secret", e.into()))?
                                    .is_some();
                                if existed {
                                    if let Some(n) = held.get_mut(user.as_str()) {
                                        *n = n.saturating_sub(1);
                                    }
                                }
                                Ok(WriteOutcome::SecretDeleted { existed })
                            }
                        },
                    };
                    results.push(outcome);
                }
                if let (true, Some(value)) = (counter_changed, counter) {
                    counters
                        .insert(COUNTER_KEY, value)
                        .map_err(|e| classify(path, "writing the counter", e.into()))?;
                }
            }
            // On any error above, dropping `txn` aborts it.
            txn.commit()
                .map_err(|e| classify(path, "committing a write transaction", e.into()))?;
            if let (true, Some(value)) = (counter_changed, counter) {
                self.committed.learn(generation, value);
            }
            Ok(results)
        })
    }

    /// Increments the counter in its own durable write transaction and returns the new
    /// value, only after the commit succeeded.
    pub fn increment(&self) -> Result<u64, StoreError> {
        match self.apply(&[WriteOp::Increment])?.pop() {
            Some(Ok(WriteOutcome::Counter(value))) => Ok(value),
            Some(Err(refused)) => Err(refused.into()),
            _ => Err(StoreError::Database {
                path: self.path.clone(),
                action: "incrementing the counter",
                detail: "no outcome for the increment".into(),
            }),
        }
    }

    /// Reads the counter (0 before the first increment).
    pub fn counter(&self) -> Result<u64, StoreError> {
        // Taken with the database held (after any reopen, before the value is read).
        let mut generation = None;
        let value = self.read_table(COUNTERS, "opening the counter table", 0, |table, path| {
            generation = Some(self.committed.generation());
            Ok(table
                .get(COUNTER_KEY)
                .map_err(|e| classify(path, "reading the counter", e.into()))?
                .map(|guard| guard.value())
                .unwrap_or(0))
        })?;
        if let Some(generation) = generation {
            self.committed.learn(generation, value);
        }
        Ok(value)
    }

    /// The counter as last committed, when that is known without a transaction (no
    /// disk, no lock held across I/O); `None` while the store is broken or has not
    /// learnt it since it was reopened: then read it with [`Store::counter`].
    ///
    /// A commit raises this value before its write is answered, so a reader never sees
    /// less than what has been acknowledged.
    pub fn committed_counter(&self) -> Option<u64> {
        if self.broken.load(Ordering::Acquire) {
            return None;
        }
        self.committed.get()
    }

    /// `user`'s secret `name`, if there is one.
    pub fn secret(&self, user: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = validate_secret_name(name)?;
        self.read_table(SECRETS, "opening the secrets table", None, |table, path| {
            Ok(table
                .get((user, name))
                .map_err(|e| classify(path, "reading a secret", e.into()))?
                .map(|guard| guard.value().to_vec()))
        })
    }

    /// The names of `user`'s secrets, sorted (byte order).
    pub fn secret_names(&self, user: &str) -> Result<Vec<String>, StoreError> {
        self.read_table(
            SECRETS,
            "opening the secrets table",
            Vec::new(),
            |table, path| {
                let mut names = Vec::new();
                let range = table
                    .range((user, "")..)
                    .map_err(|e| classify(path, "listing secrets", e.into()))?;
                for entry in range {
                    let (key, _) =
                        entry.map_err(|e| classify(path, "listing secrets", e.into()))?;
                    let (owner, name) = key.value();
                    if owner != user {
                        break;
                    }
                    names.push(name.to_owned());
                }
                Ok(names)
            },
        )
    }

    /// How many secrets are stored, for all users together.
    pub fn secret_count(&self) -> Result<u64, StoreError> {
        self.read_table(SECRETS, "opening the secrets table", 0, |table, path| {
            table
                .len()
                .map_err(|e| classify(path, "counting secrets", e.into()))
        })
    }

    /// Runs `f` on `table` in a read transaction; `absent` when the table was never
    /// created (nothing has been written to it yet).
    fn read_table<K: redb::Key + 'static, V: redb::Value + 'static, T>(
        &self,
        table: TableDefinition<'static, K, V>,
        opening: &'static str,
        absent: T,
        f: impl FnOnce(&redb::ReadOnlyTable<K, V>, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_db(|db, path| {
            let txn = db
                .begin_read()
                .map_err(|e| classify(path, "starting a read transaction", e.into()))?;
            match txn.open_table(table) {
                Ok(table) => f(&table, path),
                Err(TableError::TableDoesNotExist(_)) => Ok(absent),
                Err(e) => Err(classify(path, opening, e.into())),
            }
        })
    }

    /// The path of the store file (`<dir>/k_server.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the open database; marks the store broken when `f` fails in a way
    /// that needs the file reopened, and reopens it first when it is broken and the
    /// last attempt is at least [`REOPEN_INTERVAL`] old.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database, &Path) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.try_reopen();
        }
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let Some(db) = guard.as_ref() else {
            // Let go of `db` before taking `recovery`: try_reopen takes them the other
            // way round, and holding both here deadlocked every caller for good.
            drop(guard);
            let detail = self
                .recovery
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last_error
                .clone()
                .unwrap_or_else(|| "not reopened yet".into());
            return Err(StoreError::Closed {
                path: self.path.clone(),
                detail,
            });
        };
        let result = f(db, &self.path);
        if let Err(err) = &result {
            if err.wants_reopen() {
                let first = !self.broken.swap(true, Ordering::AcqRel);
                // Broken first, so that no reader takes the value from here on. A failed
                // commit may still have reached the disk: what the file holds is learnt
                // again once it is reopened.
                self.committed.forget();
                if first {
                    tracing::error!(path = %self.path.display(), error = %err, "the store failed; it will be reopened (at most once a second) and answers 503 until then");
                }
            }
        }
        result
    }

    /// Drops the database handle (releasing its file lock) and opens the file again,
    /// without ever creating it. redb repairs it back to the last committed
    /// transaction.
    fn try_reopen(&self) {
        let mut recovery = self.recovery.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.broken.load(Ordering::Acquire) {
            return; // another thread has just reopened it
        }
        if recovery
            .last_attempt
            .is_some_and(|at| at.elapsed() < REOPEN_INTERVAL)
        {
            return;
        }
        recovery.last_attempt = Some(Instant::now());
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        drop(db.take());
        match open_db(
            &self.path,
            false,
            #[cfg(test)]
            self.fault.clone(),
        ) {
            Ok(reopened) => {
                *db = Some(reopened);
                self.committed.forget();
                recovery.last_error = None;
                self.broken.store(false, Ordering::Release);
                tracing::warn!(path = %self.path.display(), "the store was reopened after an I/O error; it holds what was last committed");
            }
            Err(err) => {
                tracing::error!(path = %self.path.display(), error = %err, "cannot reopen the store yet; retrying in a second");
                recovery.last_error = Some(err.to_string());
            }
        }
    }
}

/// The counter's last committed value, and how many times it was forgotten: a value read
/// or committed before the store broke (or was reopened) must not be learnt after it,
/// so each learner names the generation it started in.
#[derive(Default)]
struct CommittedCounter(Mutex<KnownCounter>);

#[derive(Default)]
struct KnownCounter {
    value: Option<u64>,
    generation: u64,
}

impl CommittedCounter {
    fn lock(&self) -> std::sync::MutexGuard<'_, KnownCounter> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self) -> Option<u64> {
        self.lock().value
    }

    /// Taken before a read or a write transaction starts.
    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Records a value read or committed in `generation`, unless the value was forgotten
    /// since. The counter only grows, so the largest value seen is the latest, whatever
    /// order concurrent commits report in.
    fn learn(&self, generation: u64, value: u64) {
        let mut known = self.lock();
        if known.generation == generation {
            known.value = Some(known.value.map_or(value, |old| old.max(value)));
        }
    }

    fn forget(&self) {
        let mut known = self.lock();
        known.value = None;
        known.generation += 1;
    }
}

/// The PutSecret step of [`Store::apply`]: the outer error aborts the transaction, the
/// inner one refuses only this write.
fn put_secret<'u>(
    secrets: &mut redb::Table<(&str, &str), &[u8]>,
    held: &mut HashMap<&'u str, usize>,
    path: &Path,
    user: &'u str,
    name: &str,
    value: &[u8],
) -> Result<Result<WriteOutcome, Refused>, StoreError> {
    let name = match validate_secret_name(name) {
        Ok(name) => name,
        Err(refused) => return Ok(Err(refused)),
    };
    if value.len() > MAX_SECRET_BYTES {
        return Ok(Err(Refused::ValueTooLarge {
            limit: MAX_SECRET_BYTES,
        }));
    }
    let exists = secrets
        .get((user, name))
        .map_err(|e| classify(path, "reading a secret", e.into()))?
        .is_some();
    if !exists {
        let count = match held.get(user) {
            Some(&count) => count,
            None => count_secrets(secrets, path, user)?,
        };
        if count >= MAX_SECRETS_PER_USER {
            held.insert(user, count);
            return Ok(Err(Refused::TooManySecrets {
                limit: MAX_SECRETS_PER_USER,
            }));
        }
        held.insert(user, count + 1);
    }
    secrets
        .insert((user, name), value)
        .map_err(|e| classify(path, "writing a secret", e.into()))?;
    Ok(Ok(WriteOutcome::SecretStored { created: !exists }))
}

/// How many secrets `user` holds, counting at most [`MAX_SECRETS_PER_USER`].
fn count_secrets(
    secrets: &redb::Table<(&str, &str), &[u8]>,
    path: &Path,
    user: &str,
) -> Result<usize, StoreError> {
    let range = secrets
        .range((user, "")..)
        .map_err(|e| classify(path, "counting a user's secrets", e.into()))?;
    let mut count = 0usize;
    for entry in range {
        let (key, _) = entry.map_err(|e| classify(path, "counting a user's secrets", e.into()))?;
        if key.value().0 != user || count >= MAX_SECRETS_PER_USER {
            break;
        }
        count += 1;
    }
    Ok(count)
}

/// Opens the store file as a redb database. `create`: a missing file is created
/// (start-up); otherwise it is an error (reopening after an I/O fault).
fn open_db(
    path: &Path,
    create: bool,
    #[cfg(test)] fault: Option<backend::FaultSwitch>,
) -> Result<Database, StoreError> {
    let (file, created) = fs::open_file(path, create)?;
    let backend = Backend::new(
        file,
        #[cfg(test)]
        fault,
    )
    .map_err(|e| classify(path, "opening the store", e.into()))?;
    let mut builder = Database::builder();
    {
        let path = path.to_path_buf();
        builder.set_repair_callback(move |session| {
            if session.progress() == 0.0 {
                tracing::warn!(
                    path = %path.display(),
                    "the store was not closed cleanly; redb is repairing it back to the last committed transaction"
                );
            }
        });
    }
    // redb asserts, rather than reports, some inconsistencies of a damaged file (one
    // shorter than its header says): refuse such a file as corrupt instead of dying.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        builder.create_with_backend(backend)
    }))
    .map_err(|panic| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("redb could not read it: {}", panic_text(&*panic)),
    })?;
    let db = opened.map_err(|e| classify(path, "opening the store", e.into()))?;
    if created {
        tracing::warn!(path = %path.display(), "created a new, empty store file: the counter starts at 0 and there are no secrets");
    }
    Ok(db)
}

/// The message a panic carried, if it was text.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("it panicked")
}

/// Maps a redb error to a StoreError naming `path`.
fn classify(path: &Path, action: &'static str, err: redb::Error) -> StoreError {
    let path = path.to_path_buf();
    match err {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked { path },
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
        redb::Error::UpgradeRequired(version) => StoreError::Incompatible { path, version },
        redb::Error::PreviousIo => StoreError::Poisoned { path },
        // A file too short for a header, or one whose header cannot be parsed, is
        // reported by redb as an I/O error while opening.
        redb::Error::Io(source)
            if action == "opening the store"
                && matches!(
                    source.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
        {
            StoreError::Corrupt {
                path,
                detail: source.to_string(),
            }
        }
        redb::Error::Io(source) => StoreError::Io {
            path,
            action,
            source,
        },
        other => StoreError::Database {
            path,
            action,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
