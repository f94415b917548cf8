//! The session rooms: status, refresh, list and logout, each for the session that
//! [`crate::authenticate::authenticate`] found.

use std::sync::Arc;

use chromecard_http::{
    json_response, read_body_limited, ApiError, ConnInfo, HttpResponse, RequestBody,
    BODY_READ_TIMEOUT,
};
use chromecard_request::{
    clear_session_cookie, parse_logout, set_session_cookie, CredentialSource, MAX_LOGIN_BODY,
};
use http::request::Parts;
use http::StatusCode;
use serde_json::json;

use crate::app::App;
use crate::authenticate::Authenticated;
use crate::authorise;
use crate::respond::{session_error, set_cookie, token_response};
use crate::session_writes::changing_sessions;

/// `POST /session/status`.
pub fn status(auth: &Authenticated<'_>) -> HttpResponse {
    let session = auth.session();
    json_response(
        StatusCode::OK,
        &json!({
            "active": true,
            "username": &*session.username,
            "session_id": session.id,
            "expires_in": session.expires_in.as_secs(),
            "scope": session.scope.as_deref(),
        }),
    )
}

/// `POST /session/refresh`: a new token for the same session; the old one dies.
pub async fn refresh(
    app: &App,
    auth: &Authenticated<'_>,
    conn: &ConnInfo,
    user: &mut Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    let token = auth.token().to_owned();
    let peer = conn.peer;
    let issued = changing_sessions(&app.sessions, move |sessions| {
        let issued = sessions.refresh(&token)?;
        tracing::info!(event = "refresh", user = %issued.session.username, session = %issued.session.id, peer = %peer, "audit");
        Ok(issued)
    })
    .await
    .map_err(session_error)?;
    *user = Some(issued.session.username.clone());
    let cookie = (auth.source() == CredentialSource::Cookie)
        .then(|| set_session_cookie(issued.token.expose(), conn.tls))
        .flatten();
    Ok(token_response(&issued, cookie))
}

/// `GET /session/list`: the user's live sessions.
pub fn list(app: &App, auth: &Authenticated<'_>) -> Result<HttpResponse, ApiError> {
    authorise::other_sessions(auth.session())?;
    let (current, sessions) = app.sessions.list(auth.token()).map_err(session_error)?;
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| {
            json!({
                "session_id": s.id,
                "created": s.created_unix,
                "last_seen": s.last_seen_unix,
                "expires": s.expires_unix,
                "client_address": s.client.map(|ip| ip.to_string()),
                "scope": s.scope,
                "current": s.current,
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"username": &*current.username, "sessions": sessions}),
    ))
}

/// `POST /session/logout`: ends this session, or with `{"all":true}` every session of
/// its user.
pub async fn logout(
    app: &App,
    auth: &Authenticated<'_>,
    parts: &Parts,
    body: RequestBody,
    conn: &ConnInfo,
) -> Result<HttpResponse, ApiError> {
    let body = read_body_limited(body, MAX_LOGIN_BODY, BODY_READ_TIMEOUT).await?;
    let all = parse_logout(&parts.headers, &body)?;
    if all {
        authorise::other_sessions(auth.session())?;
    }
    let token = auth.token().to_owned();
    let peer = conn.peer;
    // The audit lines are logged with the change (session_writes.rs).
    let ended = if all {
        changing_sessions(&app.sessions, move |sessions| {
            let (_, ended) = sessions.revoke_all(&token)?;
            for session in &ended {
                tracing::info!(event = "logout", all = true, user = %session.username, session = %session.id, peer = %peer, "audit");
            }
            Ok(ended.len())
        })
        .await
        .map_err(session_error)?
    } else {
        changing_sessions(&app.sessions, move |sessions| {
            let session = sessions.revoke(&token)?;
            tracing::info!(event = "logout", all = false, user = %session.username, session = %session.id, peer = %peer, "audit");
            Ok(1)
        })
        .await
        .map_err(session_error)?
    };
    let mut response = json_response(
        StatusCode::OK,
        &json!({"logged_out": true, "sessions_ended": ended}),
    );
    if auth.source() == CredentialSource::Cookie {
        set_cookie(&mut response, Some(clear_session_cookie(conn.tls)));
    }
    Ok(response)
}
