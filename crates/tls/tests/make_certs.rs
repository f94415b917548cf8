//! Behaviour of `tls/make-certs.sh` itself: idempotence, refusals, permissions, key format.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use common::{ours, run_script};

const FILES: [&str; 6] = [
    "ca.crt",
    "ca.key",
    "k_server.crt",
    "k_server.key",
    "k_proxy.crt",
    "k_proxy.key",
];

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn modes_and_key_format() {
    let set = ours();
    assert_eq!(mode(&set.dir), 0o700, "output dir");
    for f in FILES {
        let want = if f.ends_with(".key") { 0o600 } else { 0o644 };
        assert_eq!(mode(&set.path(f)), want, "{f}");
    }
    for key in ["ca.key", "k_server.key", "k_proxy.key"] {
        let text = std::fs::read_to_string(set.path(key)).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{key} is PKCS#8"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&set.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !FILES.contains(&n.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "stray files: {leftovers:?}");
}

/// An existing `--out` directory keeps its mode (the script once re-moded `--out .` or
/// `--out ~` to 0700); one that others can write to is refused before anything is made.
#[test]
fn an_existing_out_directory_keeps_its_mode_and_a_shared_one_is_refused() {
    let tmp = common::tempdir();
    let own = tmp.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_script(&["--out", own.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&own), 0o755);
    assert_eq!(mode(&own.join("k_proxy.key")), 0o600);

    // A symlink to a directory of one's own is judged by that directory, not the link.
    let link = tmp.path().join("link");
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = run_script(&["--out", link.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&real.join("k_server.key")), 0o600);

    let shared = tmp.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = run_script(&["--out", shared.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by other users"));
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
}

/// A directory that belongs to another user is refused: its owner could replace the keys
/// (the CA key too) between the script's checks and their use, or at any time after.
/// Only root can make such a directory to test with; others skip.
#[test]
fn an_out_directory_of_another_user_is_refused() {
    // We are root when root owns our /proc/self.
    let root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    if !root {
        eprintln!("skipped: only root can make a directory owned by another user");
        return;
    }
    let tmp = common::tempdir();
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = run_script(&["--out", theirs.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to another user"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
    // Reached through a symlink of one's own, it is judged where it really is.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&theirs, &link).unwrap();
    let out = run_script(&["--out", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 0);
}

#[test]
fn rerun_without_force_leaves_files_untouched() {
    let set = ours();
    let before: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(set.path(f)).unwrap())
        .collect();
    let out = run_script(&["--out", set.dir.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("already exist"));
    let after: Vec<Vec<u8>> = FILES
        .iter()
        .map(|f| std::fs::read(set.path(f)).unwrap())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn partial_set_without_force_fails_and_says_force() {
    let dir = common::tempdir();
    std::fs::copy(ours().ca(), dir.path().join("ca.crt")).unwrap();
    let out = run_script(&["--out", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "nothing was written");
}

#[test]
fn force_replaces_the_set_with_a_new_ca() {
    let dir = common::tempdir();
    let set = common::generate(dir.path(), &[]);
    let old_ca = std::fs::read(set.ca()).unwrap();
    let out = run_script(&["--out", set.dir.to_str().unwrap(), "--force"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(old_ca, std::fs::read(set.ca()).unwrap());
    // The new set is consistent: the library accepts it.
    chromecard_tls::make_server_config(
        &set.server_crt(),
        &set.server_key(),
        &chromecard_tls::ClientAuth::Required { ca_file: set.ca() },
    )
    .unwrap();
}

#[test]
fn unknown_flag_exits_2_and_names_it() {
    let out = run_script(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--frobnicate") && err.contains("--out"),
        "{err}"
    );
}

#[test]
fn bad_san_exits_2() {
    for bad in ["a,b", "*.example", "300.1.1.1", "x y"] {
        let out = run_script(&["--san", bad]);
        assert_eq!(out.status.code(), Some(2), "--san {bad}");
    }
}

#[test]
fn help_exits_0() {
    let out = run_script(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"));
}
