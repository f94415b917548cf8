//! A refresh takes a session out under its old token and puts it back under the new one.
//! Whatever ends a user's sessions as a set (logout of all, supersede, end-by-id), and a
//! watcher peeking at a session, must never land between those two steps: a token thief
//! refreshing in a loop would otherwise slip past the logout that was meant to end it.
//! (Found by review: before the fix, the thief outlived about four in ten logouts of all.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chromecard_session::{NewSession, SessionStore, StoreSettings, SystemClock};

const ROUNDS: usize = 300;

fn store() -> SessionStore {
    SessionStore::new(
        StoreSettings {
            ttl: Duration::from_secs(300),
            idle_timeout: None,
            max_sessions: 100,
        },
        Arc::new(SystemClock),
    )
}

fn login(store: &SessionStore, supersede_others: bool) -> (String, String) {
    let issued = store
        .create(NewSession {
            username: "alice".into(),
            supersede_others,
            ..NewSession::default()
        })
        .expect("login");
    (issued.token.expose().to_owned(), issued.session.id)
}

/// Runs `act` while another thread refreshes `thief_token` as fast as it can (from after
/// its 20th refresh, so the two really overlap); returns the thief's latest token.
fn while_refreshing(store: &SessionStore, thief_token: String, act: impl FnOnce()) -> String {
    let latest = Mutex::new(thief_token);
    let refreshes = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let current = latest.lock().unwrap().clone();
                match store.refresh(&current) {
                    Ok(issued) => *latest.lock().unwrap() = issued.token.expose().to_owned(),
                    Err(_) => break,
                }
                refreshes.fetch_add(1, Ordering::Relaxed);
            }
            // Ended (or stopped): let the waiter below go on either way.
            refreshes.fetch_add(1_000_000, Ordering::Relaxed);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while refreshes.load(Ordering::Relaxed) < 20 && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        act();
        stop.store(true, Ordering::Relaxed);
    });
    latest.into_inner().unwrap()
}

#[test]
fn a_session_being_refreshed_does_not_outlive_a_logout_of_all() {
    let store = store();
    let mut survived = 0;
    for _ in 0..ROUNDS {
        let (thief, _) = login(&store, false);
        let (victim, _) = login(&store, false);
        let thief = while_refreshing(&store, thief, || {
            store.revoke_all(&victim).expect("logout of all");
        });
        if store.validate(&thief).is_ok() {
            survived += 1;
            store.revoke(&thief).unwrap();
        }
    }
    assert_eq!(
        survived, 0,
        "the refreshed session outlived {survived} of {ROUNDS} logouts of all"
    );
}

#[test]
fn a_session_being_refreshed_does_not_outlive_a_superseding_login() {
    let store = store();
    let mut survived = 0;
    for _ in 0..ROUNDS {
        let (thief, _) = login(&store, false);
        let mut newest = String::new();
        let thief = while_refreshing(&store, thief, || newest = login(&store, true).0);
        if store.validate(&thief).is_ok() {
            survived += 1;
        }
        store.revoke_all(&newest).unwrap();
    }
    assert_eq!(
        survived, 0,
        "the refreshed session outlived {survived} of {ROUNDS} superseding logins"
    );
}

#[test]
fn a_session_being_refreshed_is_found_by_its_id_to_be_ended() {
    let store = store();
    let mut missed = 0;
    for _ in 0..ROUNDS {
        let (thief, thief_id) = login(&store, false);
        let (victim, _) = login(&store, false);
        let thief = while_refreshing(&store, thief, || {
            let (_, ended) = store.revoke_id(&victim, &thief_id).expect("end by id");
            if ended.is_none() {
                missed += 1;
            }
        });
        if store.validate(&thief).is_ok() {
            store.revoke(&thief).unwrap();
        }
        store.revoke(&victim).unwrap();
    }
    assert_eq!(
        missed, 0,
        "ending the refreshed session by id missed it {missed} of {ROUNDS} times"
    );
}

#[test]
fn a_watcher_never_sees_a_session_gone_while_it_is_refreshed() {
    let store = store();
    let (token, id) = login(&store, false);
    let seen = chromecard_session::TokenHash::parse_presented(&token).unwrap();
    let mut gone = 0;
    let last = while_refreshing(&store, token, || {
        for _ in 0..20_000 {
            if store.peek("alice", &id, &seen).is_err() {
                gone += 1;
            }
        }
    });
    assert_eq!(
        gone, 0,
        "peek saw the live session as ended {gone} of 20000 times"
    );
    store.revoke(&last).unwrap();
}
