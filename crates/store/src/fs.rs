//! The data directory and the store file: where they are, and how they are created and
//! checked (0700 directory, 0600 regular file, never through a symbolic link).

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::StoreError;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// The default data directory: `$XDG_STATE_HOME/chromecard/k_server`, else
/// `$HOME/.local/state/chromecard/k_server`; None if neither is set (empty or
/// relative values count as unset, as the XDG base directory spec asks).
pub fn default_data_dir() -> Option<PathBuf> {
    data_dir_from(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// The pure part of [`default_data_dir`].
pub(crate) fn data_dir_from(
    xdg_state_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let absolute = |v: Option<OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let state =
        absolute(xdg_state_home).or_else(|| absolute(home).map(|h| h.join(".local/state")))?;
    Some(state.join("chromecard").join("k_server"))
}

/// Creates `dir` with mode 0700, or checks an existing one.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
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
            // The directories about to be made, outermost last.
            let made: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
            DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            // The umask may have removed bits; set the mode explicitly.
            set_mode(dir, DIR_MODE)?;
            // Each new directory's entry is on disk before anything is written inside.
            for new in made.iter().rev() {
                if let Some(parent) = new.parent() {
                    sync_dir(parent)?;
                }
            }
            Ok(())
        }
        Err(source) => Err(StoreError::Inspect {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Opens `path` read-write (creating it 0600 with `create`) with O_NOFOLLOW: a symlink
/// swapped in after open_file's check is refused by the open itself (ELOOP), not followed.
pub(crate) fn open_no_follow(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Opens the store file with mode 0600 without following a symlink. With `create`, a
/// missing file is created (and the answer says so); without it, a missing file is an
/// error, so that reopening after an I/O fault can never start again from zero.
pub(crate) fn open_file(path: &Path, create: bool) -> Result<(File, bool), StoreError> {
    let existed = match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_file() => {
            return Err(StoreError::NotARegularFile {
                path: path.to_path_buf(),
            })
        }
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if !create {
                return Err(StoreError::Vanished {
                    path: path.to_path_buf(),
                });
            }
            false
        }
        Err(source) => {
            return Err(StoreError::Inspect {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let file = open_no_follow(path, create).map_err(|source| StoreError::OpenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = file.metadata().map_err(|source| StoreError::Inspect {
        path: path.to_path_buf(),
        source,
    })?;
    // redb would quietly start a new, empty database in an empty file; a store that was
    // ever written is not empty, so this one lost its contents.
    if existed && meta.len() == 0 {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "the file is empty (0 bytes), so the counter and secrets it held are gone"
                .into(),
        });
    }
    // Set explicitly: the umask may have removed bits, and an existing file may be
    // more open than it should be.
    let mode = meta.permissions().mode() & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|source| StoreError::SetPermissions {
                path: path.to_path_buf(),
                mode: FILE_MODE,
                source,
            })?;
    }
    if !existed {
        if let Some(parent) = path.parent() {
            // The new file's directory entry is on disk before the first answer relies on it.
            sync_dir(parent)?;
        }
    }
    Ok((file, !existed))
}

/// Makes a directory's entries (a file or directory just created in it) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            action: "syncing the directory",
            source,
        })
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), StoreError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
        StoreError::SetPermissions {
            path: path.to_path_buf(),
            mode,
            source,
        }
    })
}
