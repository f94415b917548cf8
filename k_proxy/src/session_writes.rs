//! Session-store calls that change sessions (login, refresh, logout, end) may write to
//! disk: with `--session-store`, each commits a transaction with an fsync. A connection
//! worker (one thread serving many connections) must not wait for a disk, so those calls
//! go to a blocking thread; without a session file they stay in place (memory only).
//!
//! A call on a blocking thread finishes even if the request that asked for it is dropped
//! meanwhile (the client hung up, or the drain ran out). So its audit line belongs inside
//! `call`, right after the change, never after the await: no session changes unrecorded.

use std::sync::Arc;

use chromecard_session::{SessionError, SessionStore};

/// Runs `call` against `sessions`, off the connection worker when it may touch the disk.
pub async fn changing_sessions<T, F>(
    sessions: &Arc<SessionStore>,
    call: F,
) -> Result<T, SessionError>
where
    F: FnOnce(&SessionStore) -> Result<T, SessionError> + Send + 'static,
    T: Send + 'static,
{
    if !sessions.writes_to_disk() {
        return call(sessions);
    }
    let store = sessions.clone();
    match tokio::task::spawn_blocking(move || call(&store)).await {
        Ok(result) => result,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only at shutdown, when the runtime drops what it has not started.
            Err(_) => Err(SessionError::Storage(
                "k_proxy is stopping; the session was not changed".into(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::thread::ThreadId;

    use chromecard_session::{NewSession, SessionFile, StoreSettings, SystemClock};

    use super::*;

    fn store() -> SessionStore {
        let settings = StoreSettings {
            ttl: std::time::Duration::from_secs(60),
            idle_timeout: None,
            max_sessions: 10,
        };
        SessionStore::new(settings, Arc::new(SystemClock))
    }

    async fn thread_of_create(sessions: &Arc<SessionStore>) -> ThreadId {
        changing_sessions(sessions, |sessions| {
            sessions.create(NewSession {
                username: "alice".into(),
                ..NewSession::default()
            })?;
            Ok(std::thread::current().id())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_memory_only_store_is_changed_in_place() {
        let sessions = Arc::new(store());
        assert_eq!(
            thread_of_create(&sessions).await,
            std::thread::current().id()
        );
        assert_eq!(sessions.len(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_store_with_a_session_file_is_changed_on_a_blocking_thread() {
        let dir = tempfile::tempdir().unwrap();
        let file = SessionFile::open(&dir.path().join("sessions.redb")).unwrap();
        let sessions = Arc::new(store().with_persistence(file).unwrap());
        assert_ne!(
            thread_of_create(&sessions).await,
            std::thread::current().id()
        );
        assert_eq!(sessions.len(), 1);
    }
}
