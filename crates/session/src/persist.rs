//! Optional persistence (`--session-store PATH`): live sessions written through to an
//! embedded ACID store (redb), keyed by token hash, so a k_proxy restart does not force a
//! new touch. Only hashes are stored, never a token. Off by default: memory only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::TokenHash;

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions_v1");

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot prepare the session store {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the session store {path} is writable by other users; chmod 600 it")]
    Insecure { path: PathBuf },
    #[error("the session store {path} failed: {detail}")]
    Database { path: PathBuf, detail: String },
}

/// A session as written to disk: wall-clock times, since monotonic instants do not
/// survive a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct StoredSession {
    pub id: String,
    pub username: String,
    pub client: Option<IpAddr>,
    pub scope: Option<Vec<String>>,
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
    pub last_seen_unix_ms: u64,
}

pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The on-disk session table.
pub struct SessionFile {
    db: Database,
    path: PathBuf,
    /// Tests: make every write fail, as a full or failing disk would.
    #[cfg(test)]
    failing: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for SessionFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionFile({})", self.path.display())
    }
}

impl SessionFile {
    /// Opens or creates the store at `path` (mode 0600).
    pub fn open(path: &Path) -> Result<Self, PersistError> {
        let file_error = |source| PersistError::File {
            path: path.to_owned(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(file_error)?;
            let mode = file.metadata().map_err(file_error)?.permissions().mode();
            if mode & 0o022 != 0 {
                return Err(PersistError::Insecure {
                    path: path.to_owned(),
                });
            }
        }
        let db = Database::create(path).map_err(|err| PersistError::Database {
            path: path.to_owned(),
            detail: err.to_string(),
        })?;
        let file = Self {
            db,
            path: path.to_owned(),
            #[cfg(test)]
            failing: std::sync::atomic::AtomicBool::new(false),
        };
        // Create the table so that a fresh file reads as empty.
        file.write(|_| Ok(()))?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub(crate) fn fail_writes(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }

    fn database_error(&self, err: impl std::fmt::Display) -> PersistError {
        PersistError::Database {
            path: self.path.clone(),
            detail: err.to_string(),
        }
    }

    /// One durable write transaction on the table (redb fsyncs on commit).
    fn write(
        &self,
        apply: impl FnOnce(&mut redb::Table<'_, &[u8], &[u8]>) -> Result<(), redb::StorageError>,
    ) -> Result<(), PersistError> {
        #[cfg(test)]
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(self.database_error("injected write failure"));
        }
        let txn = self.db.begin_write().map_err(|e| self.database_error(e))?;
        {
            let mut table = txn
                .open_table(SESSIONS)
                .map_err(|e| self.database_error(e))?;
            apply(&mut table).map_err(|e| self.database_error(e))?;
        }
        txn.commit().map_err(|e| self.database_error(e))
    }

    pub(crate) fn save(
        &self,
        hash: &TokenHash,
        session: &StoredSession,
    ) -> Result<(), PersistError> {
        let value = serde_json::to_vec(session).map_err(|e| self.database_error(e))?;
        self.write(|table| {
            table.insert(hash.as_bytes().as_slice(), value.as_slice())?;
            Ok(())
        })
    }

    pub(crate) fn delete(&self, hashes: &[TokenHash]) -> Result<(), PersistError> {
        if hashes.is_empty() {
            return Ok(());
        }
        self.write(|table| {
            for hash in hashes {
                table.remove(hash.as_bytes().as_slice())?;
            }
            Ok(())
        })
    }

    /// Every stored session; unreadable entries are skipped with a warning (fail closed:
    /// an entry we cannot read is a session we do not restore).
    pub(crate) fn load(&self) -> Result<Vec<(TokenHash, StoredSession)>, PersistError> {
        let txn = self.db.begin_read().map_err(|e| self.database_error(e))?;
        let table = txn
            .open_table(SESSIONS)
            .map_err(|e| self.database_error(e))?;
        let mut sessions = Vec::new();
        for entry in table.iter().map_err(|e| self.database_error(e))? {
            let (key, value) = entry.map_err(|e| self.database_error(e))?;
            let hash = <[u8; 32]>::try_from(key.value())
                .ok()
                .map(TokenHash::from_bytes);
            let session = serde_json::from_slice::<StoredSession>(value.value()).ok();
            match (hash, session) {
                (Some(hash), Some(session)) => sessions.push((hash, session)),
                _ => {
                    tracing::warn!(path = %self.path.display(), "skipping an unreadable stored session")
                }
            }
        }
        Ok(sessions)
    }
}
