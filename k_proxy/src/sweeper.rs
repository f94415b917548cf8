//! The sweeper: ended sessions leave memory, expiries get their audit line, and the
//! throttle forgets old failures.

use std::sync::Arc;
use std::time::Duration;

use chromecard_session::SessionStore;

use crate::log::audit_ended;
use crate::throttle::LoginThrottle;

/// Removes ended sessions in the background, so memory follows live sessions only, and
/// writes each expiry's audit line. The sweep runs off the async workers.
pub async fn sweep_forever(sessions: Arc<SessionStore>, throttle: Arc<LoginThrottle>) {
    let settings = sessions.settings();
    let shortest = settings
        .idle_timeout
        .map_or(settings.ttl, |idle| idle.min(settings.ttl));
    let period = (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let store = sessions.clone();
        let Ok(ended) = tokio::task::spawn_blocking(move || store.sweep()).await else {
            continue;
        };
        for session in &ended {
            audit_ended(session);
        }
        throttle.sweep();
        if !ended.is_empty() {
            tracing::debug!(
                removed = ended.len(),
                live = sessions.len(),
                "swept ended sessions"
            );
        }
    }
}
