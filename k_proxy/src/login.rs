//! The login room: admission (the throttle and the bounded queue for the key), the gate,
//! and the new session. What a refused login costs whom is throttle.rs's to say; this file
//! only reports what happened.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chromecard_gate::{GateError, Passed, Pin};
use chromecard_http::{
    read_body_limited, ApiError, ConnInfo, HttpResponse, RequestBody, BODY_READ_TIMEOUT,
};
use chromecard_request::{
    parse_login, require_json, set_session_cookie, LoginRequest, MAX_LOGIN_BODY,
};
use chromecard_session::NewSession;
use http::request::Parts;
use http::StatusCode;
use zeroize::Zeroizing;

use crate::app::App;
use crate::log::audit_ended;
use crate::respond::{gate_error, session_error, token_response};
use crate::session_writes::changing_sessions;
use crate::throttle::{Banned, LoginThrottle};

/// `POST /session/login`: runs the gate once, then issues the session.
pub async fn login(
    app: &App,
    parts: &Parts,
    body: RequestBody,
    conn: &ConnInfo,
    user: &mut Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    require_json(&parts.headers)?;
    // The body may hold the key's PIN: wiped as soon as it is parsed (the PIN itself
    // then lives in `login.pin`, wiped when the login is over).
    let body = Zeroizing::new(Vec::from(
        read_body_limited(body, MAX_LOGIN_BODY, BODY_READ_TIMEOUT).await?,
    ));
    let mut login = parse_login(&body)?;
    drop(body);
    let pin = login.pin.take();
    if let Err(banned) = app.throttle.check(&login.username, conn.peer.ip()) {
        return Err(throttled(&login.username, conn.peer, &banned));
    }
    let Some(_waiting) = WaitingLogin::enter(&app.waiting_logins, app.max_waiting_logins) else {
        return Err(ApiError::capacity(
            "login_queue_full",
            format!(
                "{} logins are already waiting for the key; try again shortly.",
                app.max_waiting_logins
            ),
        )
        .with_retry_after(5));
    };
    let started = Instant::now();
    let checked = run_gate(app, &login, pin, conn).await?;
    app.metrics.gate_latency.observe(started.elapsed());
    if let Err(err) = checked {
        tracing::info!(event = "login_refused", user = %login.username, code = err.code(), peer = %conn.peer, "audit");
        return Err(gate_error(&err));
    }
    issue(app, login, conn, user).await
}

/// The gate, with the throttle asked again when this login's turn at the key comes and
/// told the outcome before the next login's turn; abandoned at once on shutdown.
async fn run_gate(
    app: &App,
    login: &LoginRequest,
    pin: Option<Pin>,
    conn: &ConnInfo,
) -> Result<Result<Passed, GateError>, ApiError> {
    let address = conn.peer.ip();
    let mut stopping = app.stopping.clone();
    // When this login's key operation started (set by `admit`): a login that goes away
    // before that only waited in the queue, which proves nothing.
    let key_started = std::sync::OnceLock::new();
    // The ban is asked again when the key is ours: logins that queued for the key
    // before their username or address was banned must not make it blink again.
    let admit = || -> Result<(), Banned> {
        app.throttle.check(&login.username, address)?;
        let _ = key_started.set(Instant::now());
        Ok(())
    };
    // Runs before the next login's turn at the key, so that login's `admit` sees
    // what this one's outcome did to the throttle. What counts: throttle.rs.
    let settle = |outcome: Option<&Result<Passed, GateError>>| match outcome {
        Some(Ok(_)) => app.throttle.record_success(&login.username, address),
        // A busy device is nobody's failed attempt.
        Some(Err(GateError::Busy { .. })) => {}
        Some(Err(_)) => count_refused_login(&app.throttle, &login.username, conn.peer),
        // Dropped unfinished because k_proxy is stopping: not the client's doing.
        None if *app.stopping.borrow() => {}
        // Dropped unfinished because the client went away.
        None => client_gone(app, &login.username, conn.peer, key_started.get()),
    };
    let checked = tokio::select! {
        checked = app.gate.check_admitted(&login.username, pin, admit, settle) => checked,
        _ = stopping.wait_for(|stopping| *stopping) => {
            return Err(ApiError::capacity(
                "shutting_down",
                "k_proxy is shutting down; the key operation was cancelled. Try again shortly.",
            ));
        }
    };
    checked.map_err(|banned| throttled(&login.username, conn.peer, &banned))
}

/// A client that went away while its login waited. Before its key operation: nothing.
/// During it: the operation is cancelled and nothing can come of it, so not the
/// username's failure; the address pays the key time it took, or hanging up just before
/// each touch timeout would keep the key blinking for free.
fn client_gone(app: &App, username: &str, peer: SocketAddr, key_started: Option<&Instant>) {
    let Some(started) = key_started else {
        tracing::debug!(user = %username, peer = %peer, "a login left the queue before its turn at the key");
        return;
    };
    let held = started.elapsed();
    let share = held.as_secs_f64() / app.gate.settings().op_timeout.as_secs_f64();
    tracing::info!(event = "login_refused", user = %username, code = "client_gone", held_ms = held.as_millis() as u64, peer = %peer, "audit");
    if let Some(banned) = app.throttle.record_hang_up(peer.ip(), share) {
        tracing::warn!(event = "login_ban", user = %username, banned = banned.scope, seconds = banned.retry_after.as_secs(), peer = %peer, "audit");
    }
}

/// The session for a login that passed the gate.
async fn issue(
    app: &App,
    login: LoginRequest,
    conn: &ConnInfo,
    user: &mut Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    let new = NewSession {
        username: login.username.clone(),
        client: Some(conn.peer.ip()),
        scope: login.scope,
        supersede_others: app.policy.supersede_on_login,
    };
    let peer = conn.peer;
    let issued = changing_sessions(&app.sessions, move |sessions| {
        let issued = sessions.create(new)?;
        // Logged with the change (session_writes.rs).
        for ended in &issued.superseded {
            audit_ended(ended);
        }
        tracing::info!(
            event = "login",
            user = %issued.session.username,
            session = %issued.session.id,
            scope = ?issued.session.scope.as_deref(),
            peer = %peer,
            "audit"
        );
        Ok(issued)
    })
    .await
    .map_err(session_error)?;
    *user = Some(issued.session.username.clone());
    let cookie = login
        .cookie
        .then(|| set_session_cookie(issued.token.expose(), conn.tls))
        .flatten();
    Ok(token_response(&issued, cookie))
}

/// The refusal of a banned login, with its audit line.
fn throttled(username: &str, peer: SocketAddr, banned: &Banned) -> ApiError {
    tracing::info!(event = "login_refused", user = %username, code = "login_throttled", banned = banned.scope, peer = %peer, "audit");
    let seconds = banned.retry_after.as_secs().max(1);
    let what = match banned.scope {
        "username" => "this username from your address",
        _ => "your client address",
    };
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "login_throttled",
        format!("Too many refused logins for {what}; try again in {seconds} seconds."),
    )
    .with_retry_after(seconds)
}

/// Counts a refused login against its username and address; audits the ban it triggers.
fn count_refused_login(throttle: &LoginThrottle, username: &str, peer: SocketAddr) {
    if let Some(banned) = throttle.record_failure(username, peer.ip()) {
        tracing::warn!(event = "login_ban", user = %username, banned = banned.scope, seconds = banned.retry_after.as_secs(), peer = %peer, "audit");
    }
}

/// Counts a login among those waiting for the key while it lives.
struct WaitingLogin<'a>(&'a AtomicUsize);

impl<'a> WaitingLogin<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for WaitingLogin<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
