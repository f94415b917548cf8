//! Small file helpers shared by the enrolment file, the sign-count file and the
//! software authenticator's key file: refuse files (and directories) that other
//! users may write, replace a file atomically and durably, and lock one across processes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Group- and world-write bits.
const OTHERS_WRITE: u32 = 0o022;
/// The sticky bit: in a sticky directory only a file's owner may rename or delete it.
const STICKY: u32 = 0o1000;
/// `open` refuses a symbolic link in the last place of the path (ELOOP).
const NO_FOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
/// Lock files ([`lock_exclusive`]): empty, readable by all, written by nobody.
const LOCK_FILE_MODE: u32 = 0o644;

/// Refuses `path` when its group or others may write it, when another user (not this
/// process's effective user, not root) owns it, and when its directory may be written by
/// group or others without the sticky bit (they could swap the file) or belongs to
/// another user. The directory is checked even when the file does not exist yet, since
/// whoever controls the directory decides what appears there. `Ok(false)` when the file
/// does not exist.
///
/// The owner check matters in a sticky directory such as /tmp: nobody else can replace
/// our file there, but they can create it first, with a mode that passes the write-bit
/// check and contents of their choosing.
pub(crate) fn check_not_writable_by_others(path: &Path) -> io::Result<bool> {
    let dir = parent_dir(path);
    let dmeta = match fs::metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    check_owner(&dir, &dmeta, "the directory ")?;
    let dmode = dmeta.mode();
    if dmode & OTHERS_WRITE != 0 && dmode & STICKY == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the directory {} is writable by group or others (mode {:o}): they could replace {}",
                dir.display(),
                dmode & 0o7777,
                path.display()
            ),
        ));
    }
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    check_file(path, &meta)?;
    Ok(true)
}

/// The file's own part of [`check_not_writable_by_others`]: a regular file that this user
/// or root owns and that group and others may not write.
fn check_file(path: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    check_owner(path, meta, "")?;
    let mode = meta.mode();
    if mode & OTHERS_WRITE != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by group or others (mode {:o}); run `chmod go-w {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Reads `path` (at most `max` bytes) if [`check_not_writable_by_others`] allows it;
/// `None` when it does not exist. A symbolic link is checked where it lies and where it
/// leads: the target and the target's own directory pass the same checks. The target is
/// then opened with O_NOFOLLOW and checked again on the open handle, and read from it, so
/// a file swapped in after the checks is never the one read.
pub(crate) fn read_checked(path: &Path, max: u64) -> io::Result<Option<String>> {
    if !check_not_writable_by_others(path)? {
        return Ok(None);
    }
    let real = fs::canonicalize(path)?;
    check_not_writable_by_others(&real)?;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(NO_FOLLOW)
        .open(&real)?;
    let meta = file.metadata()?;
    check_file(&real, &meta)?;
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than the {max} bytes expected", path.display()),
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(too_large());
    }
    Ok(Some(text))
}

/// Refuses `path` unless this process's effective user or root owns it.
fn check_owner(path: &Path, meta: &fs::Metadata, what: &str) -> io::Result<()> {
    let me = rustix::process::geteuid().as_raw();
    let owner = meta.uid();
    if owner == me || owner == 0 {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{what}{} belongs to uid {owner}, not to this user (uid {me}) or root: another user could have put it there; \
             check it, then `chown {me} {}`",
            path.display(),
            path.display()
        ),
    ))
}

/// Refuses `path` when group or others may read it (for secret key material).
pub(crate) fn check_private(path: &Path) -> io::Result<()> {
    let mode = fs::metadata(path)?.mode();
    if mode & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} holds key material but is accessible to group or others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            ),
        ));
    }
    Ok(())
}

/// An exclusive lock (`flock`) on the file at `path`, created 0600 when missing, held
/// until the returned file is dropped. Locks are taken on this file rather than on the
/// one they guard, because [`write_atomic`] replaces that one (a lock follows the file,
/// not the name). Waits at most `wait` for another holder: a stuck process must not
/// hold logins for ever.
pub(crate) fn lock_exclusive(path: &Path, wait: Duration) -> io::Result<File> {
    if fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link; refusing to lock through it",
                path.display()
            ),
        ));
    }
    // Readable by all (it holds nothing), so that one made by another user (root running
    // `k_proxy enroll`) can still be opened by the service: a read-only descriptor takes
    // the lock as well. Written by nobody.
    let file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_FILE_MODE)
        .custom_flags(NO_FOLLOW)
        .open(path)
    {
        Ok(file) => {
            // Whatever the umask took away (root's may be 077): read by the service.
            if file.metadata()?.mode() & 0o777 != LOCK_FILE_MODE {
                file.set_permissions(fs::Permissions::from_mode(LOCK_FILE_MODE))?;
            }
            file
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => OpenOptions::new()
            .read(true)
            .custom_flags(NO_FOLLOW)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{}: {e}; it belongs to another user: `chmod 644` it, or remove it (it holds nothing)",
                        path.display()
                    ),
                )
            })?,
        Err(e) => return Err(e),
    };
    let deadline = Instant::now() + wait;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} stayed locked by another process for {wait:?}",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The directory holding `path` ("." for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Replaces `path` with `contents` atomically and durably: write a new file (mode 0600)
/// beside it, fsync it, rename it over `path`, fsync the directory. A crash leaves
/// either the old or the new file, never a torn one.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let mut suffix = [0u8; 8];
    getrandom::getrandom(&mut suffix).map_err(io::Error::other)?;
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.tmp-{hex}"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // create_new + mode is subject to the umask, which can only remove bits; make sure.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_0600_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // No temp files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(check_not_writable_by_others(&p).unwrap());
        check_private(&p).unwrap();
    }

    #[test]
    fn writable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o620)).unwrap();
        let e = check_not_writable_by_others(&p).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o602)).unwrap();
        assert!(check_not_writable_by_others(&p).is_err());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_not_writable_by_others(&p).unwrap());
        assert!(check_private(&p).is_err());
    }

    #[test]
    fn a_directory_writable_by_others_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"x").unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_not_writable_by_others(&p).is_err());
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_not_writable_by_others(&p).unwrap());
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_file_or_directory_of_another_user_is_refused() {
        if rustix::process::geteuid().as_raw() != 0 {
            // Under CI=true a skip is a failure: CI must run every test.
            assert!(
                !std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1"),
                "a_file_or_directory_of_another_user_is_refused needs root, and CI=true forbids skipping it"
            );
            eprintln!("SKIPPED: only root can give a file to another user here (under CI=true this fails)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"x").unwrap();
        // uid 65534 (nobody) is neither this process's user (root) nor root.
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = check_not_writable_by_others(&p).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 65534"), "{e}");
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
        assert!(check_not_writable_by_others(&p).unwrap());
        std::os::unix::fs::chown(dir.path(), Some(65534), None).unwrap();
        let e = check_not_writable_by_others(&p).unwrap_err().to_string();
        assert!(
            e.contains("the directory") && e.contains("belongs to uid 65534"),
            "{e}"
        );
        // Even before the file exists.
        let e = check_not_writable_by_others(&dir.path().join("new")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
    }

    #[test]
    fn a_missing_file_in_a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_not_writable_by_others(&dir.path().join("new")).is_err());
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn missing_file_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!check_not_writable_by_others(&dir.path().join("nope")).unwrap());
    }

    #[test]
    fn a_lock_file_is_readable_by_all_and_a_read_only_descriptor_takes_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials.lock");
        let held = lock_exclusive(&p, Duration::from_secs(1)).unwrap();
        // 0644 whatever the umask, so that the service can open one that root made (as
        // root ran `k_proxy enroll`).
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o644);
        // What the service does with a file it may only read: the lock still excludes.
        let read_only = File::open(&p).unwrap();
        assert_eq!(
            rustix::fs::flock(
                &read_only,
                rustix::fs::FlockOperation::NonBlockingLockExclusive
            ),
            Err(rustix::io::Errno::WOULDBLOCK)
        );
        drop(held);
        rustix::fs::flock(
            &read_only,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .unwrap();
    }

    #[test]
    fn read_checked_refuses_big_files_and_reads_nothing_that_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(read_checked(&p, 100).unwrap(), None);
        write_atomic(&p, &[b'a'; 100]).unwrap();
        assert!(read_checked(&p, 99).is_err());
        assert_eq!(read_checked(&p, 100).unwrap().unwrap().len(), 100);
    }

    /// A symlink is checked where it leads too: a file in a directory that others may
    /// write (no sticky bit), reached through a link from a safe directory, is refused;
    /// the same link to a safe place is followed.
    #[test]
    fn a_symlink_into_a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        let target = shared.join("credentials");
        write_atomic(&target, b"planted").unwrap();
        let home = dir.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        let link = home.join("credentials");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = read_checked(&link, 100).unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");

        let safe = dir.path().join("safe");
        fs::create_dir(&safe).unwrap();
        fs::set_permissions(&safe, fs::Permissions::from_mode(0o755)).unwrap();
        write_atomic(&safe.join("credentials"), b"ours").unwrap();
        fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(safe.join("credentials"), &link).unwrap();
        assert_eq!(read_checked(&link, 100).unwrap().as_deref(), Some("ours"));
    }
}
