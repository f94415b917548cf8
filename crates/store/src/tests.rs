//! Unit tests of the store and of the group-commit writer.

use super::*;
use crate::fs::{data_dir_from, open_no_follow, set_mode};
use std::fs::{self as stdfs, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

/// Stores `value` as the counter (to reach the overflow without 2^64 increments).
fn set_counter(store: &Store, value: u64) {
    store
        .with_db(|db, _| {
            let txn = db.begin_write().unwrap();
            txn.open_table(COUNTERS)
                .unwrap()
                .insert(COUNTER_KEY, value)
                .unwrap();
            txn.commit().unwrap();
            Ok(())
        })
        .unwrap();
    // Behind the store's back: what it knew of the counter is stale.
    store.committed.forget();
    assert_eq!(store.counter().unwrap(), value);
}

fn mode_of(path: &Path) -> u32 {
    stdfs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn increments_are_consecutive_from_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    assert_eq!(store.counter().unwrap(), 0);
    for expected in 1..=5 {
        assert_eq!(store.increment().unwrap(), expected);
    }
    assert_eq!(store.counter().unwrap(), 5);
}

#[test]
fn the_committed_counter_is_known_without_a_read_and_follows_every_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    assert_eq!(store.committed_counter(), Some(0));
    store.increment().unwrap();
    store
        .apply(&[WriteOp::Increment, WriteOp::Increment])
        .unwrap();
    assert_eq!(store.committed_counter(), Some(3));
    drop(store);
    // Learnt at open from what is on disk.
    assert_eq!(
        Store::open(tmp.path()).unwrap().committed_counter(),
        Some(3)
    );
}

#[test]
fn a_value_read_before_the_store_broke_is_not_learnt_after() {
    let counter = CommittedCounter::default();
    let before = counter.generation();
    counter.learn(before, 6);
    assert_eq!(counter.get(), Some(6));
    // A read of 5 starts, the store breaks (forget), and then the read reports.
    let reading = counter.generation();
    counter.forget();
    counter.learn(reading, 5);
    assert_eq!(counter.get(), None);
    // A read that started after the break teaches it again; an older commit's report
    // arriving late never lowers it.
    let now = counter.generation();
    counter.learn(now, 6);
    counter.learn(now, 4);
    assert_eq!(counter.get(), Some(6));
}

#[test]
fn value_survives_drop_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    {
        let store = Store::open(&dir).unwrap();
        store.increment().unwrap();
        store.increment().unwrap();
        assert_eq!(store.increment().unwrap(), 3);
    }
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.counter().unwrap(), 3);
    assert_eq!(store.increment().unwrap(), 4);
}

#[test]
fn second_open_of_same_dir_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let first = Store::open(&dir).unwrap();
    first.increment().unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&first.path().display().to_string()), "{msg}");
    // The first handle is unaffected.
    assert_eq!(first.increment().unwrap(), 2);
    drop(first);
    assert_eq!(Store::open(&dir).unwrap().counter().unwrap(), 2);
}

#[test]
fn garbage_file_is_an_error_naming_the_path_and_is_left_alone() {
    for garbage in [
        b"this is not a database\n".to_vec(),
        vec![0xA5u8; 64 * 1024],
        // Empty: redb alone would start a new database in it, the counter back at 0.
        Vec::new(),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        stdfs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o700).unwrap();
        let path = dir.join(DB_FILE_NAME);
        File::create(&path).unwrap().write_all(&garbage).unwrap();

        let err = Store::open(&dir).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("move it aside"), "{msg}");
        assert_eq!(
            stdfs::read(&path).unwrap(),
            garbage,
            "file must not be reset"
        );
    }
}

#[test]
fn a_store_cut_short_is_refused_as_corrupt_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    {
        let store = Store::open(&dir).unwrap();
        for _ in 0..3 {
            store.increment().unwrap();
        }
    }
    let path = dir.join(DB_FILE_NAME);
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8192)
        .unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("move it aside"), "{err}");
    assert_eq!(
        stdfs::metadata(&path).unwrap().len(),
        8192,
        "file must not be touched"
    );
}

#[test]
fn new_dir_and_file_get_0700_and_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/data");
    let store = Store::open(&dir).unwrap();
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
    drop(Store::open(&dir).unwrap());
    let path = dir.join(DB_FILE_NAME);
    set_mode(&path, 0o644).unwrap();
    drop(Store::open(&dir).unwrap());
    assert_eq!(mode_of(&path), 0o600);
}

#[test]
fn group_or_world_writable_dir_is_refused() {
    for mode in [0o770, 0o702, 0o777] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        stdfs::create_dir(&dir).unwrap();
        set_mode(&dir, mode).unwrap();
        let err = Store::open(&dir).unwrap_err();
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
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::NotADirectory { .. }), "{err:?}");
}

#[test]
fn symlinked_store_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    stdfs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700).unwrap();
    let target = tmp.path().join("elsewhere.redb");
    std::os::unix::fs::symlink(&target, dir.join(DB_FILE_NAME)).unwrap();
    let err = Store::open(&dir).unwrap_err();
    assert!(matches!(err, StoreError::NotARegularFile { .. }), "{err:?}");
    assert!(!target.exists());
}

#[test]
fn overflow_is_an_error_and_keeps_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    set_counter(&store, u64::MAX - 1);
    assert_eq!(store.increment().unwrap(), u64::MAX);
    let err = store.increment().unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refused::CounterOverflow)),
        "{err:?}"
    );
    assert_eq!(store.counter().unwrap(), u64::MAX);
}

#[test]
fn concurrent_increments_are_distinct() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("data")).unwrap());
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
    // However the four threads' commits were reported, the latest value is kept.
    assert_eq!(store.committed_counter(), Some(40));
}

#[test]
fn store_and_error_are_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Store>();
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

// ---------------------------------------------------------------------------
// Batches and secrets
// ---------------------------------------------------------------------------

fn put(user: &str, name: &str, value: &[u8]) -> WriteOp {
    WriteOp::PutSecret {
        user: user.into(),
        name: name.into(),
        value: value.to_vec(),
    }
}

fn delete(user: &str, name: &str) -> WriteOp {
    WriteOp::DeleteSecret {
        user: user.into(),
        name: name.into(),
    }
}

#[test]
fn one_batch_gives_each_increment_its_own_value() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    store.increment().unwrap();
    let out = store.apply(&vec![WriteOp::Increment; 5]).unwrap();
    let values: Vec<_> = out
        .into_iter()
        .map(|o| match o.unwrap() {
            WriteOutcome::Counter(v) => v,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, vec![2, 3, 4, 5, 6]);
    assert_eq!(store.counter().unwrap(), 6);
}

#[test]
fn a_refused_write_leaves_the_rest_of_its_batch_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    let out = store
        .apply(&[
            WriteOp::Increment,
            put("alice", "../etc", b"x"),
            put("alice", "big", &vec![0u8; MAX_SECRET_BYTES + 1]),
            put("alice", "ok", b"v"),
            WriteOp::Increment,
        ])
        .unwrap();
    assert_eq!(out[0], Ok(WriteOutcome::Counter(1)));
    assert_eq!(out[1], Err(Refused::InvalidName));
    assert_eq!(
        out[2],
        Err(Refused::ValueTooLarge {
            limit: MAX_SECRET_BYTES
        })
    );
    assert_eq!(out[3], Ok(WriteOutcome::SecretStored { created: true }));
    assert_eq!(out[4], Ok(WriteOutcome::Counter(2)));
    assert_eq!(store.secret_names("alice").unwrap(), vec!["ok"]);
}

#[test]
fn secrets_are_per_user() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    let out = store
        .apply(&[
            put("alice", "db", b"alice-db"),
            put("alice", "api.key", b"alice-api"),
            put("bob", "db", b"bob-db"),
            // A user whose name is a prefix of another's sees only their own.
            put("al", "x", b"al-x"),
            put("alice2", "y", b"alice2-y"),
        ])
        .unwrap();
    assert!(out
        .iter()
        .all(|o| matches!(o, Ok(WriteOutcome::SecretStored { created: true }))));
    assert_eq!(
        store.secret("alice", "db").unwrap().as_deref(),
        Some(&b"alice-db"[..])
    );
    assert_eq!(
        store.secret("bob", "db").unwrap().as_deref(),
        Some(&b"bob-db"[..])
    );
    assert_eq!(store.secret("bob", "api.key").unwrap(), None);
    assert_eq!(store.secret("carol", "db").unwrap(), None);
    assert_eq!(store.secret_names("alice").unwrap(), vec!["api.key", "db"]);
    assert_eq!(store.secret_names("bob").unwrap(), vec!["db"]);
    assert_eq!(store.secret_names("al").unwrap(), vec!["x"]);
    assert!(store.secret_names("carol").unwrap().is_empty());

    // Bob cannot delete Alice's secret; replacing reports created = false.
    let out = store
        .apply(&[
            delete("bob", "api.key"),
            put("alice", "db", b"new"),
            delete("bob", "db"),
        ])
        .unwrap();
    assert_eq!(out[0], Ok(WriteOutcome::SecretDeleted { existed: false }));
    assert_eq!(out[1], Ok(WriteOutcome::SecretStored { created: false }));
    assert_eq!(out[2], Ok(WriteOutcome::SecretDeleted { existed: true }));
    assert_eq!(
        store.secret("alice", "api.key").unwrap().as_deref(),
        Some(&b"alice-api"[..])
    );
    assert_eq!(
        store.secret("alice", "db").unwrap().as_deref(),
        Some(&b"new"[..])
    );
    assert!(store.secret_names("bob").unwrap().is_empty());
    assert_eq!(store.secret_count().unwrap(), 4);
}

#[test]
fn secrets_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    {
        let store = Store::open(&dir).unwrap();
        store
            .apply(&[put("alice", "k", b"\x00\xffbinary"), WriteOp::Increment])
            .unwrap();
    }
    let store = Store::open(&dir).unwrap();
    assert_eq!(
        store.secret("alice", "k").unwrap().as_deref(),
        Some(&b"\x00\xffbinary"[..])
    );
    assert_eq!(store.counter().unwrap(), 1);
}

#[test]
fn secret_names_are_validated() {
    for good in [
        "a",
        "A.b_c-9",
        ".env",
        "..x",
        &"n".repeat(MAX_SECRET_NAME_LEN),
    ] {
        assert_eq!(validate_secret_name(good), Ok(good), "{good:?}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "a b",
        "a%2Fb",
        "ä",
        "a\n",
        &"n".repeat(MAX_SECRET_NAME_LEN + 1),
    ] {
        assert_eq!(
            validate_secret_name(bad),
            Err(Refused::InvalidName),
            "{bad:?}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    assert!(matches!(
        store.secret("alice", "a/b"),
        Err(StoreError::Refused(Refused::InvalidName))
    ));
}

#[test]
fn a_user_holds_at_most_the_limit_of_secrets() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("data")).unwrap();
    let fill: Vec<_> = (0..MAX_SECRETS_PER_USER)
        .map(|i| put("alice", &format!("s{i}"), b"v"))
        .collect();
    assert!(store.apply(&fill).unwrap().iter().all(Result::is_ok));
    let out = store
        .apply(&[
            put("alice", "one-more", b"v"),
            // Replacing an existing one is still allowed, and other users are unaffected.
            put("alice", "s0", b"w"),
            put("bob", "s0", b"v"),
        ])
        .unwrap();
    assert_eq!(
        out[0],
        Err(Refused::TooManySecrets {
            limit: MAX_SECRETS_PER_USER
        })
    );
    assert_eq!(out[1], Ok(WriteOutcome::SecretStored { created: false }));
    assert_eq!(out[2], Ok(WriteOutcome::SecretStored { created: true }));
    assert_eq!(
        store.secret_names("alice").unwrap().len(),
        MAX_SECRETS_PER_USER
    );
}

// ---------------------------------------------------------------------------
// I/O faults (a full disk)
// ---------------------------------------------------------------------------

fn open_with_fault(dir: &Path) -> (Store, backend::FaultSwitch) {
    let fault = backend::FaultSwitch::default();
    let store = Store::open_inner(dir, Some(fault.clone())).unwrap();
    (store, fault)
}

#[test]
fn every_write_is_fsynced_before_it_is_answered() {
    // kill -9 keeps the page cache, so the crash tests cannot tell a write that reached
    // the disk from one that did not: count the durable fsyncs instead.
    let tmp = tempfile::tempdir().unwrap();
    let (store, probe) = open_with_fault(&tmp.path().join("data"));
    let syncs = || probe.durable_syncs.load(Ordering::SeqCst);
    for _ in 0..3 {
        let before = syncs();
        store.increment().unwrap();
        assert!(
            syncs() > before,
            "an increment was answered before an fsync"
        );
        let before = syncs();
        store
            .apply(&[put("alice", "note", b"v"), WriteOp::Increment])
            .unwrap();
        assert!(syncs() > before, "a batch was answered before an fsync");
    }
}

#[test]
fn a_failed_commit_writes_nothing_and_the_store_recovers_without_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (store, fault) = open_with_fault(&dir);
    store
        .apply(&[
            WriteOp::Increment,
            WriteOp::Increment,
            put("alice", "k", b"v1"),
        ])
        .unwrap();

    fault.fail.store(true, Ordering::SeqCst);
    let err = store
        .apply(&[WriteOp::Increment, put("alice", "k", b"v2")])
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing was written"), "{err}");
    // Broken: the counter is no longer known without reading the file.
    assert_eq!(store.committed_counter(), None);
    // Until it is reopened, the store refuses rather than guessing.
    let err = store.increment().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Poisoned { .. } | StoreError::Io { .. } | StoreError::Closed { .. }
        ),
        "{err:?}"
    );

    // The disk has room again: after the reopen interval the store comes back with
    // exactly what was committed before the fault.
    fault.fail.store(false, Ordering::SeqCst);
    std::thread::sleep(REOPEN_INTERVAL + Duration::from_millis(50));
    assert_eq!(store.counter().unwrap(), 2);
    // Reopened and read: known again, and what the file holds.
    assert_eq!(store.committed_counter(), Some(2));
    assert_eq!(
        store.secret("alice", "k").unwrap().as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(store.increment().unwrap(), 3);
    drop(store);
    assert_eq!(Store::open(&dir).unwrap().counter().unwrap(), 3);
}

/// A store in `dir` that one failed commit marked broken, and whose file is then gone, so
/// that every reopen fails.
fn broken_without_its_file(dir: &Path) -> Store {
    let (store, fault) = open_with_fault(dir);
    store.increment().unwrap();
    fault.fail.store(true, Ordering::SeqCst);
    store.increment().unwrap_err();
    fault.fail.store(false, Ordering::SeqCst);
    stdfs::remove_file(dir.join(DB_FILE_NAME)).unwrap();
    store
}

#[test]
fn reopening_never_creates_a_new_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // The file disappears while k_server runs: it must not come back empty.
    let store = broken_without_its_file(&dir);
    std::thread::sleep(REOPEN_INTERVAL + Duration::from_millis(50));
    let err = store.increment().unwrap_err();
    assert!(
        matches!(err, StoreError::Closed { ref detail, .. } if detail.contains("disappeared")),
        "{err:?}"
    );
    assert!(!dir.join(DB_FILE_NAME).exists());
}

// ---------------------------------------------------------------------------
// The group-commit writer
// ---------------------------------------------------------------------------

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `clients` tasks each increment `each` times; returns every value received.
fn hammer(writer: &Writer, clients: usize, each: usize) -> Vec<u64> {
    runtime().block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut got = Vec::with_capacity(each);
                    for _ in 0..each {
                        got.push(writer.increment().await.unwrap());
                    }
                    got
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    })
}

#[test]
fn group_commit_gives_distinct_values_in_fewer_transactions() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("data")).unwrap());
    let (writer, thread) = Writer::start(store.clone(), CommitMode::Group).unwrap();
    let mut all = hammer(&writer, 32, 10);
    all.sort_unstable();
    assert_eq!(all, (1..=320).collect::<Vec<_>>());
    let (transactions, writes) = writer.committed();
    assert_eq!(writes, 320);
    assert!(
        transactions < writes,
        "32 concurrent callers should share transactions: {transactions} for {writes} writes"
    );
    drop(writer);
    thread.join();
    assert_eq!(store.counter().unwrap(), 320);
}

#[test]
fn per_request_mode_commits_every_write_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("data")).unwrap());
    let (writer, thread) = Writer::start(store.clone(), CommitMode::PerRequest).unwrap();
    let mut all = hammer(&writer, 8, 5);
    all.sort_unstable();
    assert_eq!(all, (1..=40).collect::<Vec<_>>());
    assert_eq!(writer.committed(), (40, 40));
    drop(writer);
    thread.join();
}

#[test]
fn writer_answers_secrets_and_refusals_individually() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("data")).unwrap());
    let (writer, thread) = Writer::start(store.clone(), CommitMode::Group).unwrap();
    runtime().block_on(async {
        let (a, b, c) = tokio::join!(
            writer.submit(put("alice", "k", b"v")),
            writer.submit(put("alice", "bad/name", b"v")),
            writer.submit(delete("alice", "missing")),
        );
        assert_eq!(a.unwrap(), WriteOutcome::SecretStored { created: true });
        assert!(matches!(b, Err(WriteError::Refused(Refused::InvalidName))));
        assert_eq!(c.unwrap(), WriteOutcome::SecretDeleted { existed: false });
    });
    drop(writer);
    thread.join();
    assert_eq!(store.secret_names("alice").unwrap(), vec!["k"]);
}

#[test]
fn a_failed_commit_answers_every_caller_of_the_batch_with_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (store, fault) = open_with_fault(&dir);
    let store = Arc::new(store);
    let (writer, thread) = Writer::start(store.clone(), CommitMode::Group).unwrap();
    assert_eq!(hammer(&writer, 1, 3), vec![1, 2, 3]);

    fault.fail.store(true, Ordering::SeqCst);
    let results = runtime().block_on(async {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.increment().await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    for result in &results {
        assert!(
            matches!(result, Err(WriteError::Store(_))),
            "no caller may get a value from a failed commit: {result:?}"
        );
    }

    fault.fail.store(false, Ordering::SeqCst);
    std::thread::sleep(REOPEN_INTERVAL + Duration::from_millis(50));
    // Values continue from the last committed one: nothing was counted, nothing reset.
    assert_eq!(hammer(&writer, 1, 2), vec![4, 5]);
    drop(writer);
    thread.join();
    assert_eq!(store.counter().unwrap(), 5);
}

#[test]
fn the_writer_runs_while_any_handle_lives() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("data")).unwrap());
    let (writer, thread) = Writer::start(store, CommitMode::Group).unwrap();
    let clone = writer.clone();
    drop(writer);
    // The thread keeps running while a Writer exists.
    assert_eq!(hammer(&clone, 1, 1), vec![1]);
    drop(clone);
    thread.join();
}

#[test]
fn a_stopped_writer_answers_writer_stopped_at_once_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&tmp.path().join("data")).unwrap());
    let (writer, thread) = Writer::start(store.clone(), CommitMode::Group).unwrap();
    assert_eq!(hammer(&writer, 1, 1), vec![1]);
    // The thread really ends while `writer` still exists.
    assert_eq!(thread.stop(), (1, 1));
    let results = runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(5), async {
            let (a, b) = tokio::join!(writer.increment(), writer.submit(put("alice", "k", b"v")));
            [a.map(|_| ()), b.map(|_| ())]
        })
        .await
        .expect("a write to a stopped writer must fail, not hang")
    });
    for result in results {
        match result {
            Err(WriteError::Store(err)) => {
                assert!(matches!(*err, StoreError::WriterStopped), "{err:?}");
                assert!(err.to_string().contains("nothing was written"), "{err}");
            }
            other => panic!("expected WriterStopped, got {other:?}"),
        }
    }
    assert_eq!(store.counter().unwrap(), 1);
    assert!(store.secret_names("alice").unwrap().is_empty());
}

/// A store whose reopen keeps failing (the file is gone) answers every caller, however
/// many race the reopen attempts: with_db once held the database lock while it waited for
/// the recovery lock, which try_reopen holds while it waits for the database lock, and
/// the two deadlocked within the first second.
#[test]
fn callers_of_a_closed_store_do_not_deadlock_with_its_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Every reopen now fails (the file is gone), so the store stays closed.
    let store = Arc::new(broken_without_its_file(&dir));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop, calls) = (store.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    assert!(store.counter().is_err());
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Each period spans more than one reopen attempt (REOPEN_INTERVAL in tests).
    let mut before = 0;
    for period in 0..6 {
        std::thread::sleep(REOPEN_INTERVAL * 2);
        let now = calls.load(Ordering::Relaxed);
        assert!(
            now > before,
            "no call returned in period {period}: the callers are deadlocked"
        );
        before = now;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.join().unwrap();
    }
}

/// The open itself refuses a symlink, so one swapped in between open_file's check and its
/// open is not followed (to a file another user chose).
#[test]
fn the_store_file_open_does_not_follow_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("elsewhere.redb");
    stdfs::write(&target, b"someone else's").unwrap();
    let link = tmp.path().join(DB_FILE_NAME);
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for create in [false, true] {
        let err = open_no_follow(&link, create).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
    }
    assert!(open_no_follow(&target, false).is_ok());
}
