//! One request's walk through k_proxy, each phase in one place:
//! filter (head limits) → route → take the credential → session check → rewrite and
//! forward (upstream.rs) → respond → audit/access log.

use std::sync::Arc;
use std::time::Instant;

use chromecard_gate::{Gate, GateError};
use chromecard_http::{
    check_header_limits, json_response, read_body_limited, ApiError, ConnInfo, Fault, HeaderLimits,
    HttpResponse,
};
use chromecard_session::{SessionError, SessionStore, SessionView};
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::credential::bearer_token;
use crate::login::{parse_login, require_json, MAX_LOGIN_BODY};
use crate::upstream::Upstream;

/// How long a client may take to send a request body once its head has arrived.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Login,
    Status,
    Logout,
    Resource,
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/healthz" => Some(Route::Health),
        "/session/login" => Some(Route::Login),
        "/session/status" => Some(Route::Status),
        "/session/logout" => Some(Route::Logout),
        p if p.starts_with("/resource/") => Some(Route::Resource),
        _ => None,
    }
}

pub struct App {
    sessions: Arc<SessionStore>,
    gate: Gate,
    upstream: Upstream,
    max_body_bytes: usize,
}

impl App {
    pub fn new(
        sessions: Arc<SessionStore>,
        gate: Gate,
        upstream: Upstream,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            sessions,
            gate,
            upstream,
            max_body_bytes,
        }
    }

    pub async fn handle(&self, request: Request<Incoming>, conn: Arc<ConnInfo>) -> HttpResponse {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut user: Option<Arc<str>> = None;
        let response = match self.process(request, &conn, &mut user).await {
            Ok(response) => response,
            Err(err) => {
                if err.fault != Fault::Client {
                    tracing::warn!(peer = %conn.peer, code = err.code, fault = ?err.fault, "request failed");
                }
                err.into_response()
            }
        };
        tracing::info!(
            peer = %conn.peer,
            %method,
            path = %path,
            status = response.status().as_u16(),
            user = user.as_deref().unwrap_or("-"),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }

    async fn process(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        check_header_limits(request.headers(), HeaderLimits::default())?;
        let route = route(request.uri().path()).ok_or_else(ApiError::not_found)?;
        match route {
            Route::Health => {
                require_method(request.method(), Method::GET, "GET")?;
                Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
            }
            Route::Login => {
                require_method(request.method(), Method::POST, "POST")?;
                self.login(request, conn, user).await
            }
            Route::Status => {
                require_method(request.method(), Method::POST, "POST")?;
                let session = self.session(&request)?;
                *user = Some(session.username.clone());
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "active": true,
                        "username": &*session.username,
                        "expires_in": session.expires_in.as_secs(),
                    }),
                ))
            }
            Route::Logout => {
                require_method(request.method(), Method::POST, "POST")?;
                let token = bearer_token(request.headers())?;
                let session = self.sessions.revoke(token).map_err(session_error)?;
                *user = Some(session.username.clone());
                tracing::info!(event = "logout", user = %session.username, session = %session.public_id, peer = %conn.peer, "audit");
                Ok(json_response(StatusCode::OK, &json!({"logged_out": true})))
            }
            Route::Resource => {
                let path_and_query = checked_resource_path(&request)?;
                let session = self.session(&request)?;
                *user = Some(session.username.clone());
                let (parts, body) = request.into_parts();
                let body = read_body_limited(body, self.max_body_bytes, BODY_READ_TIMEOUT).await?;
                self.upstream
                    .forward(
                        parts.method,
                        &path_and_query,
                        &parts.headers,
                        body,
                        &session.username,
                    )
                    .await
            }
        }
    }

    /// Runs the gate once, then issues the session.
    async fn login(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        require_json(request.headers())?;
        let body =
            read_body_limited(request.into_body(), MAX_LOGIN_BODY, BODY_READ_TIMEOUT).await?;
        let username = parse_login(&body)?;
        if let Err(err) = self.gate.check(&username).await {
            tracing::info!(event = "login_refused", user = %username, code = err.code(), peer = %conn.peer, "audit");
            return Err(gate_error(&err));
        }
        let (token, session) = self.sessions.create(&username).map_err(|err| match err {
            SessionError::Full(max) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_limit",
                format!("k_proxy already holds {max} live sessions; try again when some expire."),
            ),
            _ => ApiError::internal("A session token could not be generated."),
        })?;
        *user = Some(session.username.clone());
        tracing::info!(event = "login", user = %username, session = %session.public_id, peer = %conn.peer, "audit");
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "session_token": token.expose(),
                "token_type": "Bearer",
                "username": username,
                "expires_in": session.expires_in.as_secs(),
            }),
        ))
    }

    fn session(&self, request: &Request<Incoming>) -> Result<SessionView, ApiError> {
        let token = bearer_token(request.headers())?;
        self.sessions.validate(token).map_err(session_error)
    }
}

fn require_method(method: &Method, allowed: Method, allow: &'static str) -> Result<(), ApiError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allow))
    }
}

fn session_error(err: SessionError) -> ApiError {
    match err {
        SessionError::Expired => ApiError::unauthorized(
            "invalid_token",
            "The session has expired; log in again (touch the key).",
        ),
        _ => ApiError::unauthorized(
            "invalid_token",
            "The session token is unknown, expired or logged out; log in again (touch the key).",
        ),
    }
}

/// Gate refusals are 401 (no session), a busy device is 503 (try again shortly).
fn gate_error(err: &GateError) -> ApiError {
    match err {
        GateError::Busy { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.code(),
            err.client_message(),
        ),
        _ => ApiError::unauthorized(err.code(), err.client_message()).with_fault(Fault::Upstream),
    }
}

/// The path and query to forward. Dot segments and encoded separators are refused rather
/// than normalised: k_server must see exactly the path k_proxy checked.
fn checked_resource_path(request: &Request<Incoming>) -> Result<String, ApiError> {
    let uri = request.uri();
    let path = uri.path();
    let invalid = || {
        ApiError::bad_request(
            "invalid_path",
            "The resource path has dot segments, empty segments or encoded separators.",
        )
    };
    let lower = path.to_ascii_lowercase();
    if path
        .split('/')
        .skip(1)
        .any(|segment| segment == "." || segment == ".." || segment.is_empty())
        || ["%2e", "%2f", "%5c", "\\"]
            .iter()
            .any(|bad| lower.contains(bad))
    {
        return Err(invalid());
    }
    Ok(uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/session/login"), Some(Route::Login));
        assert_eq!(route("/resource/counter"), Some(Route::Resource));
        assert_eq!(route("/resource"), None);
        assert_eq!(route("/session/login/"), None);
    }
}
