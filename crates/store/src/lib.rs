#![forbid(unsafe_code)]
//! k_server's durable resources: one counter in an embedded ACID store (redb).
//!
//! Every [`CounterStore::increment`] runs in its own write transaction with
//! `Durability::Immediate` (redb's default), so the value it returns has been
//! fsync'd before the caller sees it. The methods block; call them from
//! `tokio::task::spawn_blocking`. A `CounterStore` is `Send + Sync` and can be shared
//! in an `Arc`; concurrent increments are serialised by redb's single writer.
//!
//! The store never resets itself: a file it cannot read, a file locked by another
//! process, or a directory other users may write to is an error that names the path
//! and says what to do.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition, TableError};

/// File name of the store inside the data directory.
pub const DB_FILE_NAME: &str = "k_server.redb";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const COUNTER_KEY: &str = "counter";

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

    #[error("the store file {} is locked by another process (is another k_server running with the same data directory?); stop that process or choose another data directory", path.display())]
    Locked { path: PathBuf },

    #[error("the store file {} is corrupt or is not a k_server store ({detail}); nothing was changed; restore it from a backup, or move it aside to start the counter again from 0", path.display())]
    Corrupt { path: PathBuf, detail: String },

    #[error("the store file {} was written in an older redb file format (version {version}) that this k_server cannot read; upgrade it with a matching tool, or move it aside to start the counter again from 0", path.display())]
    Incompatible { path: PathBuf, version: u8 },

    #[error("I/O error on the store file {} while {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("the store {} failed while {action}: {detail}", path.display())]
    Database {
        path: PathBuf,
        action: &'static str,
        detail: String,
    },

    #[error("the counter in {} is at its maximum ({}) and cannot be incremented", path.display(), u64::MAX)]
    Overflow { path: PathBuf },
}

/// The durable counter of k_server.
pub struct CounterStore {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for CounterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CounterStore {
    /// Opens or creates `<dir>/k_server.redb`.
    ///
    /// Creates `dir` (and missing parents) with mode 0700 and the file with mode 0600,
    /// setting both explicitly. Refuses an existing `dir` that is group- or
    /// world-writable, a store path that is a symbolic link, a file locked by another
    /// process and a file that is not a valid store.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        prepare_dir(dir)?;
        let path = dir.join(DB_FILE_NAME);
        let file = open_file(&path)?;

        let mut builder = Database::builder();
        {
            let path = path.clone();
            builder.set_repair_callback(move |session| {
                if session.progress() == 0.0 {
                    tracing::warn!(
                        path = %path.display(),
                        "the store was not closed cleanly; redb is repairing it back to the last committed transaction"
                    );
                }
            });
        }
        let db = builder
            .create_file(file)
            .map_err(|e| classify(&path, "opening the store", e.into()))?;

        let store = CounterStore { db, path };
        // Create the table now, so a store that cannot be written fails at start-up
        // and `get` never has to special-case a missing table.
        store.write(|_| Ok(None))?;
        tracing::debug!(path = %store.path.display(), counter = store.get()?, "counter store open");
        Ok(store)
    }

    /// Increments the counter in one durable write transaction and returns the new
    /// value, only after the commit succeeded. At `u64::MAX` it fails with
    /// [`StoreError::Overflow`] and leaves the value as it is.
    pub fn increment(&self) -> Result<u64, StoreError> {
        let value = self.write(|current| {
            current
                .checked_add(1)
                .map(Some)
                .ok_or_else(|| StoreError::Overflow {
                    path: self.path.clone(),
                })
        })?;
        // `write` returns Some whenever the closure returned Some.
        Ok(value.unwrap_or_default())
    }

    /// Reads the counter (0 before the first increment).
    pub fn get(&self) -> Result<u64, StoreError> {
        let path = &self.path;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| classify(path, "starting a read transaction", e.into()))?;
        let table = match txn.open_table(COUNTERS) {
            Ok(table) => table,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(classify(path, "opening the counter table", e.into())),
        };
        let value = table
            .get(COUNTER_KEY)
            .map_err(|e| classify(path, "reading the counter", e.into()))?
            .map(|guard| guard.value())
            .unwrap_or(0);
        Ok(value)
    }

    /// The path of the store file (`<dir>/k_server.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs one durable write transaction: `next` maps the current value to the value
    /// to store (None: store nothing). Returns what was stored, after commit.
    fn write(
        &self,
        next: impl FnOnce(u64) -> Result<Option<u64>, StoreError>,
    ) -> Result<Option<u64>, StoreError> {
        let path = &self.path;
        // Durability::Immediate is redb's default for a write transaction; it is
        // not changed here on purpose.
        let txn = self
            .db
            .begin_write()
            .map_err(|e| classify(path, "starting a write transaction", e.into()))?;
        let stored = {
            let mut table = txn
                .open_table(COUNTERS)
                .map_err(|e| classify(path, "opening the counter table", e.into()))?;
            let current = table
                .get(COUNTER_KEY)
                .map_err(|e| classify(path, "reading the counter", e.into()))?
                .map(|guard| guard.value())
                .unwrap_or(0);
            let new = next(current)?;
            if let Some(value) = new {
                table
                    .insert(COUNTER_KEY, value)
                    .map_err(|e| classify(path, "writing the counter", e.into()))?;
            }
            new
        };
        // On any error above, dropping `txn` aborts it.
        txn.commit()
            .map_err(|e| classify(path, "committing the counter", e.into()))?;
        Ok(stored)
    }
}

/// The default data directory: `$XDG_STATE_HOME/chromecard/k_server`, else
/// `$HOME/.local/state/chromecard/k_server`; None if neither is set (empty or
/// relative values count as unset, as the XDG base directory spec asks).
pub fn default_data_dir() -> Option<PathBuf> {
    data_dir_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// The pure part of [`default_data_dir`].
fn data_dir_from(xdg_state_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state =
        absolute(xdg_state_home).or_else(|| absolute(home).map(|h| h.join(".local/state")))?;
    Some(state.join("chromecard").join("k_server"))
}

/// Creates `dir` with mode 0700, or checks an existing one.
fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(StoreError::NotADirectory {
                    path: dir.to_path_buf(),
                });
            }
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o022 != 0 {
                return Err(StoreError::InsecurePermissions {
                    path: dir.to_path_buf(),
                    mode,
                });
            }
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %dir.display(),
                    mode = format_args!("{mode:04o}"),
                    "the data directory is readable by other users; consider `chmod 0700` on it"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            // The umask may have removed bits; set the mode explicitly.
            set_mode(dir, DIR_MODE)
        }
        Err(source) => Err(StoreError::Inspect {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Opens (or creates) the store file with mode 0600 without following a symlink.
fn open_file(path: &Path) -> Result<File, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(StoreError::NotARegularFile {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StoreError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|source| StoreError::OpenFile {
            path: path.to_path_buf(),
            source,
        })?;
    // Set explicitly: the umask may have removed bits, and an existing file may be
    // more open than it should be.
    let mode = file
        .metadata()
        .map_err(|source| StoreError::Inspect {
            path: path.to_path_buf(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|source| StoreError::SetPermissions {
                path: path.to_path_buf(),
                mode: FILE_MODE,
                source,
            })?;
    }
    Ok(file)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
        StoreError::SetPermissions {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })
}

/// Maps a redb error to a StoreError naming `path`.
fn classify(path: &Path, action: &'static str, err: redb::Error) -> StoreError {
    let path = path.to_path_buf();
    match err {
        redb::Error::DatabaseAlreadyOpen => StoreError::Locked { path },
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
        redb::Error::UpgradeRequired(version) => StoreError::Incompatible { path, version },
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
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn increments_are_consecutive_from_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CounterStore::open(&tmp.path().join("data")).unwrap();
        assert_eq!(store.get().unwrap(), 0);
        for expected in 1..=5 {
            assert_eq!(store.increment().unwrap(), expected);
        }
        assert_eq!(store.get().unwrap(), 5);
    }

    #[test]
    fn value_survives_drop_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        {
            let store = CounterStore::open(&dir).unwrap();
            store.increment().unwrap();
            store.increment().unwrap();
            assert_eq!(store.increment().unwrap(), 3);
        }
        let store = CounterStore::open(&dir).unwrap();
        assert_eq!(store.get().unwrap(), 3);
        assert_eq!(store.increment().unwrap(), 4);
    }

    #[test]
    fn second_open_of_same_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = CounterStore::open(&dir).unwrap();
        first.increment().unwrap();
        let err = CounterStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&first.path().display().to_string()), "{msg}");
        // The first handle is unaffected.
        assert_eq!(first.increment().unwrap(), 2);
        drop(first);
        assert_eq!(CounterStore::open(&dir).unwrap().get().unwrap(), 2);
    }

    #[test]
    fn garbage_file_is_an_error_naming_the_path_and_is_left_alone() {
        for garbage in [
            b"this is not a database\n".to_vec(),
            vec![0xA5u8; 64 * 1024],
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("data");
            fs::create_dir(&dir).unwrap();
            set_mode(&dir, 0o700).unwrap();
            let path = dir.join(DB_FILE_NAME);
            File::create(&path).unwrap().write_all(&garbage).unwrap();

            let err = CounterStore::open(&dir).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("move it aside"), "{msg}");
            assert_eq!(fs::read(&path).unwrap(), garbage, "file must not be reset");
        }
    }

    #[test]
    fn new_dir_and_file_get_0700_and_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/data");
        let store = CounterStore::open(&dir).unwrap();
        assert_eq!(mode_of(&dir), 0o700);
        assert_eq!(mode_of(store.path()), 0o600);
        assert_eq!(store.path(), dir.join(DB_FILE_NAME));
        // Created parents are not more open than the leaf.
        assert_eq!(mode_of(&tmp.path().join("a")) & 0o077, 0);
    }

    #[test]
    fn existing_file_is_tightened_to_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        drop(CounterStore::open(&dir).unwrap());
        let path = dir.join(DB_FILE_NAME);
        set_mode(&path, 0o644).unwrap();
        drop(CounterStore::open(&dir).unwrap());
        assert_eq!(mode_of(&path), 0o600);
    }

    #[test]
    fn group_or_world_writable_dir_is_refused() {
        for mode in [0o770, 0o702, 0o777] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("data");
            fs::create_dir(&dir).unwrap();
            set_mode(&dir, mode).unwrap();
            let err = CounterStore::open(&dir).unwrap_err();
            assert!(
                matches!(err, StoreError::InsecurePermissions { mode: m, .. } if m == mode),
                "{err:?}"
            );
            assert!(err.to_string().contains(&dir.display().to_string()));
            assert!(!dir.join(DB_FILE_NAME).exists());
        }
    }

    #[test]
    fn dir_that_is_a_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        File::create(&dir).unwrap();
        let err = CounterStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
    }

    #[test]
    fn symlinked_store_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o700).unwrap();
        let target = tmp.path().join("elsewhere.redb");
        std::os::unix::fs::symlink(&target, dir.join(DB_FILE_NAME)).unwrap();
        let err = CounterStore::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::NotARegularFile { .. }), "{err:?}");
        assert!(!target.exists());
    }

    #[test]
    fn overflow_is_an_error_and_keeps_the_value() {
        let tmp = tempfile::tempdir().unwrap();
        let store = CounterStore::open(&tmp.path().join("data")).unwrap();
        store.write(|_| Ok(Some(u64::MAX - 1))).unwrap();
        assert_eq!(store.increment().unwrap(), u64::MAX);
        let err = store.increment().unwrap_err();
        assert!(matches!(err, StoreError::Overflow { .. }), "{err:?}");
        assert!(err
            .to_string()
            .contains(&store.path().display().to_string()));
        assert_eq!(store.get().unwrap(), u64::MAX);
    }

    #[test]
    fn concurrent_increments_are_distinct() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(CounterStore::open(&tmp.path().join("data")).unwrap());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..10)
                        .map(|_| store.increment().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=40).collect::<Vec<_>>());
    }

    #[test]
    fn store_and_error_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<CounterStore>();
        check::<StoreError>();
    }

    #[test]
    fn data_dir_prefers_xdg_state_home() {
        assert_eq!(
            data_dir_from(Some("/x/state".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/state/chromecard/k_server"))
        );
    }

    #[test]
    fn data_dir_falls_back_to_home() {
        let expected = Some(PathBuf::from("/home/u/.local/state/chromecard/k_server"));
        assert_eq!(data_dir_from(None, Some("/home/u".into())), expected);
        assert_eq!(
            data_dir_from(Some("".into()), Some("/home/u".into())),
            expected
        );
        assert_eq!(
            data_dir_from(Some("relative/state".into()), Some("/home/u".into())),
            expected
        );
    }

    #[test]
    fn data_dir_none_without_either() {
        assert_eq!(data_dir_from(None, None), None);
        assert_eq!(data_dir_from(Some("".into()), Some("".into())), None);
        assert_eq!(data_dir_from(None, Some("relative".into())), None);
    }
}
