//! Phase 6, respond: how what happened becomes an answer. The session store's and the
//! gate's refusals as HTTP errors (each with where the fault lies), the token answer
//! (the only place a token is written out), cookies, and the headers every answer to a
//! browser carries.

use chromecard_gate::GateError;
use chromecard_http::{json_response, ApiError, Fault, HttpResponse};
use chromecard_session::{EndReason, Issued, SessionError};
use http::header::{HeaderName, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use http::StatusCode;
use serde_json::json;

/// 401 with the reason the token stopped working, so the client knows what to do next.
pub fn session_error(err: SessionError) -> ApiError {
    let (code, sentence) = match err {
        SessionError::Ended(EndReason::Expired) => ("expired", "The session has reached its lifetime; log in again (touch the key)."),
        SessionError::Ended(EndReason::IdleTimeout) => ("idle_timeout", "The session was unused for too long; log in again (touch the key)."),
        SessionError::Ended(EndReason::LoggedOut) => ("logged_out", "The session was logged out; log in again (touch the key)."),
        SessionError::Ended(EndReason::Superseded) => ("superseded", "This token was replaced by a refresh or a newer login; use the newer token or log in again."),
        SessionError::Malformed | SessionError::Unknown => ("invalid_token", "The session token is unknown; log in again (touch the key)."),
        SessionError::Full(max) => {
            return ApiError::capacity(
                "session_limit",
                format!("k_proxy already holds {max} live sessions; try again when some expire."),
            )
        }
        SessionError::Storage(_) | SessionError::NoRandomness => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_store_unavailable",
                "The session could not be recorded; try again later.",
            )
            .with_cause(err);
        }
    };
    ApiError::unauthorized(code, sentence)
}

/// Gate refusals are 401 (no session), a busy device is 503 (try again shortly).
pub fn gate_error(err: &GateError) -> ApiError {
    match err {
        GateError::Busy { .. } => ApiError::capacity(err.code(), err.client_message()),
        // k_proxy's own enrolment records failed: not the client's fault, not a refusal.
        _ if err.is_server_fault() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.code(),
            err.client_message(),
        )
        .with_cause(err),
        // The key (or whoever held it) said no: the device's doing, not a bad request.
        _ => {
            let refused = ApiError::login_refused(err.code(), err.client_message())
                .with_fault(Fault::Upstream)
                .with_cause(err);
            // A wrong or unusable PIN: the tries the key has left, as it reported them.
            match err.pin_retries() {
                Some(retries) => refused.with_field("retries", retries),
                None => refused,
            }
        }
    }
}

/// The login and refresh answer; the only place a token is written out: in the body, or
/// (when `cookie` is the session cookie to set) in that cookie alone.
pub fn token_response(issued: &Issued, cookie: Option<http::HeaderValue>) -> HttpResponse {
    let mut body = json!({
        "username": &*issued.session.username,
        "session_id": issued.session.id,
        "expires_in": issued.session.expires_in.as_secs(),
        "scope": issued.session.scope.as_deref(),
    });
    match cookie {
        // The token travels only in the HttpOnly cookie: the page's script, and so any
        // script injected into it, never reads a token it could use elsewhere.
        Some(_) => body["cookie"] = json!(true),
        None => {
            body["session_token"] = json!(issued.token.expose());
            body["token_type"] = json!("Bearer");
        }
    }
    let mut response = json_response(StatusCode::OK, &body);
    set_cookie(&mut response, cookie);
    response
}

/// Appends a `Set-Cookie` (when there is one to set).
pub fn set_cookie(response: &mut HttpResponse, value: Option<http::HeaderValue>) {
    if let Some(value) = value {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, value);
    }
}

/// Every answer, k_proxy's own and k_server's relayed: never read as anything but its
/// content type, and not embeddable by another origin. A page on another port of the
/// same host is same-site, so the session cookie goes with its requests, and a secret's
/// answer must not be usable there. (Added here, for browsers, rather than by k_server,
/// which answers only k_proxy: relaying two more header lines cost k_proxy about 2,400
/// instructions per request.)
pub fn browser_guards(response: &mut HttpResponse) {
    let headers = response.headers_mut();
    headers
        .entry(X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(HeaderName::from_static("cross-origin-resource-policy"))
        .or_insert(HeaderValue::from_static("same-origin"));
}
