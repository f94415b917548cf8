//! One request's walk through k_proxy, each phase in one place:
//! filter (head limits, then the Host allow-list: host_allow/) → route → take the
//! credential → session check → rewrite and forward (upstream.rs) → respond →
//! audit/access log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chromecard_gate::{Gate, GateError, Passed};
use chromecard_http::{
    check_header_limits, json_response, read_body_limited, ApiError, ConnInfo, Fault, HeaderLimits,
    HttpResponse, RequestBody,
};
use chromecard_session::{EndReason, EndedSession, Issued, NewSession, SessionError, SessionStore};
use http::{Method, Request, StatusCode};
use serde_json::json;

use crate::host_allow::{self, AllowedHosts, Authority};
use crate::metrics::ProxyMetrics;
use crate::throttle::{Banned, LoginThrottle};
use crate::upstream::Upstream;
use chromecard_request::{
    clear_session_cookie, set_session_cookie, take_credential, Credential, CredentialSource,
};
use chromecard_request::{parse_login, require_json, MAX_LOGIN_BODY};

/// How long a client may take to send a request body once its head has arrived.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Login,
    Status,
    Refresh,
    Logout,
    List,
    Resource,
    /// The browser page and its endpoints (ui.rs).
    Ui(crate::ui::UiRoute),
    /// `POST /session/ws-ticket` and `GET /resource/<name>/events?ticket=` (ws.rs).
    WsTicket,
    Events,
}

fn route(path: &str) -> Option<Route> {
    match path {
        "/healthz" => Some(Route::Health),
        "/readyz" => Some(Route::Ready),
        "/session/login" => Some(Route::Login),
        "/session/status" => Some(Route::Status),
        "/session/refresh" => Some(Route::Refresh),
        "/session/logout" => Some(Route::Logout),
        "/session/list" => Some(Route::List),
        "/session/ws-ticket" => Some(Route::WsTicket),
        p if p.starts_with("/resource/") => Some(Route::Resource),
        p => crate::ui::route(p).map(Route::Ui),
    }
}

/// Sessions policy that is k_proxy's choice, not the store's mechanism.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    pub supersede_on_login: bool,
}

/// Everything a request may need, built once at start-up.
pub struct App {
    pub sessions: Arc<SessionStore>,
    pub policy: SessionPolicy,
    pub gate: Gate,
    /// Replaced whole on SIGHUP; a request keeps the one it started with.
    pub upstream: std::sync::RwLock<Arc<Upstream>>,
    /// The hosts requests may be addressed to; replaced whole on SIGHUP (certificate names).
    pub hosts: std::sync::RwLock<Arc<AllowedHosts>>,
    pub max_body_bytes: usize,
    pub header_limits: HeaderLimits,
    pub throttle: Arc<LoginThrottle>,
    /// Logins waiting for (or using) the key now, bounded by `max_waiting_logins`.
    pub waiting_logins: AtomicUsize,
    pub max_waiting_logins: usize,
    pub metrics: Arc<ProxyMetrics>,
    /// Becomes true when shutdown starts: a login waiting for a touch is abandoned at once
    /// (dropping the gate's future cancels the key operation) instead of holding the drain.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// What the browser page counts down from (ui.rs).
    pub ui: crate::ui::UiSettings,
    /// WebSocket tickets and the open event sockets (ws.rs).
    pub sockets: Arc<crate::ws::Sockets>,
}

impl App {
    pub(crate) fn upstream(&self) -> Arc<Upstream> {
        match self.upstream.read() {
            Ok(upstream) => upstream.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a reloaded upstream client (new CA, client certificate or proxy token).
    pub fn replace_upstream(&self, upstream: Upstream) {
        match self.upstream.write() {
            Ok(mut current) => *current = Arc::new(upstream),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(upstream),
        }
    }

    fn hosts(&self) -> Arc<AllowedHosts> {
        match self.hosts.read() {
            Ok(hosts) => hosts.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in the allowed hosts of a reloaded certificate.
    pub fn replace_hosts(&self, hosts: AllowedHosts) {
        match self.hosts.write() {
            Ok(mut current) => *current = Arc::new(hosts),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(hosts),
        }
    }

    /// The Host allow-list (host_allow/): a refusal is logged and counted here.
    fn admit_host(
        &self,
        hosts: &AllowedHosts,
        request: &Request<RequestBody>,
        conn: &ConnInfo,
    ) -> Result<Option<Authority>, ApiError> {
        host_allow::admit(
            hosts,
            request.version(),
            request.uri(),
            request.headers(),
        )
        .map_err(|refusal| {
            let host = request.headers().get(http::header::HOST);
            tracing::warn!(
                peer = %conn.peer,
                code = refusal.code(),
                host = ?host,
                uri_authority = ?request.uri().authority().map(|a| a.as_str()),
                "refused a request for a host k_proxy does not serve ({refusal}); a DNS-rebinding page would look like this; allow a real name with --allowed-host"
            );
            self.metrics.host_refused.inc(refusal.code());
            refusal.to_api_error()
        })
    }

    pub async fn handle(&self, request: Request<RequestBody>, conn: Arc<ConnInfo>) -> HttpResponse {
        let started = Instant::now();
        let method = request.method().clone();
        // A clone of the Uri shares hyper's buffer (a reference count, not a copy).
        let uri = request.uri().clone();
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
        // Its own target, so that an operator can drop the per-request line (about 8% of
        // k_proxy's CPU under load, bench/RESULTS.md) and keep the audit lines:
        // RUST_LOG=info,k_proxy::access=off. Targets are not printed, so the line is as before.
        tracing::info!(
            target: "k_proxy::access",
            peer = %conn.peer,
            %method,
            path = %uri.path(),
            status = response.status().as_u16(),
            user = user.as_deref().unwrap_or("-"),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        response
    }

    async fn process(
        &self,
        request: Request<RequestBody>,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        check_header_limits(request.headers(), self.header_limits)?;
        let route = match route(request.uri().path()) {
            Some(Route::Resource) if crate::ws::is_events_request(&request) => Some(Route::Events),
            route => route,
        };
        let hosts = self.hosts();
        // Health probes answer any name: they carry no session and no secret.
        let addressed = match route {
            Some(Route::Health | Route::Ready) => None,
            _ => self.admit_host(&hosts, &request, conn)?,
        };
        let route = route.ok_or_else(ApiError::not_found)?;
        let site = Site {
            hosts: &hosts,
            addressed: addressed.as_ref(),
        };
        match route {
            Route::Health => {
                require_method(request.method(), Method::GET, "GET")?;
                Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
            }
            Route::Ready => {
                require_method(request.method(), Method::GET, "GET")?;
                self.upstream().probe().await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"ready": true, "k_server": "reachable", "gate": self.gate.describe()}),
                ))
            }
            Route::Login => {
                require_method(request.method(), Method::POST, "POST")?;
                let result = self.login(request, conn, user).await;
                self.metrics.logins.inc(match &result {
                    Ok(_) => "ok",
                    Err(err) => err.code,
                });
                result
            }
            Route::Status => {
                require_method(request.method(), Method::POST, "POST")?;
                let credential = site.credential(request.headers(), request.method())?;
                let session = self
                    .sessions
                    .validate(credential.token)
                    .map_err(session_error)?;
                *user = Some(session.username.clone());
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "active": true,
                        "username": &*session.username,
                        "session_id": session.id,
                        "expires_in": session.expires_in.as_secs(),
                        "scope": session.scope.as_deref(),
                    }),
                ))
            }
            Route::Refresh => {
                require_method(request.method(), Method::POST, "POST")?;
                let credential = site.credential(request.headers(), request.method())?;
                let issued = self
                    .sessions
                    .refresh(credential.token)
                    .map_err(session_error)?;
                *user = Some(issued.session.username.clone());
                tracing::info!(event = "refresh", user = %issued.session.username, session = %issued.session.id, peer = %conn.peer, "audit");
                let mut response = token_response(&issued);
                if credential.source == CredentialSource::Cookie {
                    set_cookie(
                        &mut response,
                        set_session_cookie(issued.token.expose(), conn.tls),
                    );
                }
                Ok(response)
            }
            Route::Logout => {
                require_method(request.method(), Method::POST, "POST")?;
                self.logout(request, conn, &site, user).await
            }
            Route::List => {
                require_method(request.method(), Method::GET, "GET")?;
                let credential = site.credential(request.headers(), request.method())?;
                let (current, sessions) = self
                    .sessions
                    .list(credential.token)
                    .map_err(session_error)?;
                *user = Some(current.username.clone());
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
            // The browser's routes: their handlers are in ui.rs and ws.rs.
            Route::Ui(crate::ui::UiRoute::EndSession) => {
                self.end_session(request, conn, &site, user).await
            }
            Route::WsTicket => self.ws_ticket(request, &site, user),
            Route::Events => self.ws_events(request, &site, user).await,
            Route::Ui(page) => crate::ui::asset(page, request.method(), self.ui, &self.sessions),
            Route::Resource => {
                let path_and_query = checked_resource_path(&request)?;
                let credential = site.credential(request.headers(), request.method())?;
                let session = self
                    .sessions
                    .validate(credential.token)
                    .map_err(session_error)?;
                *user = Some(session.username.clone());
                let resource = resource_name(request.uri().path());
                if !session.allows(resource) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "insufficient_scope",
                        format!("This session's scope does not include the resource {resource:?}; log in with it in \"scope\"."),
                    ));
                }
                let (parts, body) = request.into_parts();
                let body = read_body_limited(body, self.max_body_bytes, BODY_READ_TIMEOUT).await?;
                let started = Instant::now();
                let result = self
                    .upstream()
                    .forward(
                        parts.method,
                        &path_and_query,
                        &parts.headers,
                        body,
                        &session.username,
                    )
                    .await;
                self.metrics.upstream_latency.observe(started.elapsed());
                let status = match &result {
                    Ok(response) => response.status(),
                    Err(err) => err.status,
                };
                self.metrics.forwarded.inc(status.as_str());
                result
            }
        }
    }

    /// Runs the gate once, then issues the session.
    async fn login(
        &self,
        request: Request<RequestBody>,
        conn: &ConnInfo,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        require_json(request.headers())?;
        let body =
            read_body_limited(request.into_body(), MAX_LOGIN_BODY, BODY_READ_TIMEOUT).await?;
        let login = parse_login(&body)?;
        let address = conn.peer.ip();
        if let Err(banned) = self.throttle.check(&login.username, address) {
            return Err(throttled(&login.username, conn.peer, &banned));
        }
        let Some(_waiting) = WaitingLogin::enter(&self.waiting_logins, self.max_waiting_logins)
        else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "login_queue_full",
                format!(
                    "{} logins are already waiting for the key; try again shortly.",
                    self.max_waiting_logins
                ),
            )
            .with_retry_after(5));
        };
        let started = Instant::now();
        let mut stopping = self.stopping.clone();
        // The ban is asked again when the key is ours: logins that queued for the key
        // before their username or address was banned must not make it blink again.
        let admit = || self.throttle.check(&login.username, address);
        // Runs before the next login's turn at the key, so that login's `admit` sees
        // what this one's outcome did to the throttle.
        let settle = |outcome: Option<&Result<Passed, GateError>>| match outcome {
            Some(Ok(_)) => self.throttle.record_success(&login.username),
            // A busy device is nobody's failed attempt.
            Some(Err(GateError::Busy { .. })) => {}
            Some(Err(_)) => count_refused_login(&self.throttle, &login.username, conn.peer),
            // Dropped unfinished because k_proxy is stopping: not the client's doing.
            None if *self.stopping.borrow() => {}
            // Dropped unfinished because the client went away, and the key operation with
            // it: counted, or hanging up just before each touch timeout would keep the key
            // blinking without ever being banned.
            None => {
                tracing::info!(event = "login_refused", user = %login.username, code = "client_gone", peer = %conn.peer, "audit");
                count_refused_login(&self.throttle, &login.username, conn.peer);
            }
        };
        let checked = tokio::select! {
            checked = self.gate.check_admitted(&login.username, admit, settle) => checked,
            _ = stopping.wait_for(|stopping| *stopping) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    "k_proxy is shutting down; the key operation was cancelled. Try again shortly.",
                ));
            }
        };
        let checked = match checked {
            Ok(checked) => checked,
            Err(banned) => return Err(throttled(&login.username, conn.peer, &banned)),
        };
        self.metrics.gate_latency.observe(started.elapsed());
        if let Err(err) = checked {
            tracing::info!(event = "login_refused", user = %login.username, code = err.code(), peer = %conn.peer, "audit");
            return Err(gate_error(&err));
        }
        let issued = self
            .sessions
            .create(NewSession {
                username: login.username.clone(),
                client: Some(conn.peer.ip()),
                scope: login.scope,
                supersede_others: self.policy.supersede_on_login,
            })
            .map_err(session_error)?;
        *user = Some(issued.session.username.clone());
        for ended in &issued.superseded {
            audit_ended(ended);
        }
        tracing::info!(
            event = "login",
            user = %login.username,
            session = %issued.session.id,
            scope = ?issued.session.scope.as_deref(),
            peer = %conn.peer,
            "audit"
        );
        let mut response = token_response(&issued);
        if login.cookie {
            set_cookie(
                &mut response,
                set_session_cookie(issued.token.expose(), conn.tls),
            );
        }
        Ok(response)
    }

    /// Ends this session, or with `{"all":true}` every session of its user.
    async fn logout(
        &self,
        request: Request<RequestBody>,
        conn: &ConnInfo,
        site: &Site<'_>,
        user: &mut Option<Arc<str>>,
    ) -> Result<HttpResponse, ApiError> {
        let (parts, body) = request.into_parts();
        let credential = site.credential(&parts.headers, &parts.method)?;
        let body = read_body_limited(body, MAX_LOGIN_BODY, BODY_READ_TIMEOUT).await?;
        let all = parse_logout(&parts.headers, &body)?;
        let ended = if all {
            let (current, ended) = self
                .sessions
                .revoke_all(credential.token)
                .map_err(session_error)?;
            *user = Some(current.username.clone());
            for session in &ended {
                tracing::info!(event = "logout", all = true, user = %session.username, session = %session.id, peer = %conn.peer, "audit");
            }
            ended.len()
        } else {
            let session = self
                .sessions
                .revoke(credential.token)
                .map_err(session_error)?;
            *user = Some(session.username.clone());
            tracing::info!(event = "logout", all = false, user = %session.username, session = %session.id, peer = %conn.peer, "audit");
            1
        };
        let mut response = json_response(
            StatusCode::OK,
            &json!({"logged_out": true, "sessions_ended": ended}),
        );
        if credential.source == CredentialSource::Cookie {
            set_cookie(&mut response, Some(clear_session_cookie(conn.tls)));
        }
        Ok(response)
    }
}

/// Who this request is for: the allowed hosts, and the admitted host it named.
pub(crate) struct Site<'a> {
    pub(crate) hosts: &'a AllowedHosts,
    pub(crate) addressed: Option<&'a Authority>,
}

impl Site<'_> {
    /// The request's credential; a cookie's CSRF check accepts only an `Origin` naming this
    /// k_proxy by the host the request was addressed to (never merely the client's `Host`).
    pub(crate) fn credential<'h>(
        &self,
        headers: &'h http::HeaderMap,
        method: &Method,
    ) -> Result<Credential<'h>, ApiError> {
        take_credential(headers, method, &|origin: &str| {
            self.hosts.allows_origin(origin, self.addressed)
        })
    }
}

/// 429 for a banned username or client address.
/// The refusal of a banned login, with its audit line.
fn throttled(username: &str, peer: std::net::SocketAddr, banned: &Banned) -> ApiError {
    tracing::info!(event = "login_refused", user = %username, code = "login_throttled", banned = banned.scope, peer = %peer, "audit");
    let seconds = banned.retry_after.as_secs().max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "login_throttled",
        format!(
            "Too many refused logins for this {}; try again in {seconds} seconds.",
            banned.scope
        ),
    )
    .with_retry_after(seconds)
}

/// Counts a refused login against its username and address; audits the ban it triggers.
fn count_refused_login(throttle: &LoginThrottle, username: &str, peer: std::net::SocketAddr) {
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

/// The audit line for a session that ended without its holder asking.
pub fn audit_ended(ended: &EndedSession) {
    let client = ended.client.map(|ip| ip.to_string());
    tracing::info!(
        event = ended.reason.code(),
        user = %ended.username,
        session = %ended.id,
        client = client.as_deref().unwrap_or("-"),
        "audit"
    );
}

/// The login and refresh answer; the only place a token is written out.
fn token_response(issued: &Issued) -> HttpResponse {
    json_response(
        StatusCode::OK,
        &json!({
            "session_token": issued.token.expose(),
            "token_type": "Bearer",
            "username": &*issued.session.username,
            "session_id": issued.session.id,
            "expires_in": issued.session.expires_in.as_secs(),
            "scope": issued.session.scope.as_deref(),
        }),
    )
}

fn set_cookie(response: &mut HttpResponse, value: Option<http::HeaderValue>) {
    if let Some(value) = value {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, value);
    }
}

/// An empty logout body ends this session (the runbook's logout); `{"all": true}` all of them.
fn parse_logout(headers: &http::HeaderMap, body: &[u8]) -> Result<bool, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    require_json(headers)?;
    let invalid = || {
        ApiError::bad_request(
            "invalid_body",
            "A logout body, if any, is {\"all\": true} or {\"all\": false}.",
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "The body is not valid JSON."))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(invalid());
    };
    if fields.keys().any(|key| key != "all") {
        return Err(invalid());
    }
    match fields.get("all") {
        None => Ok(false),
        Some(serde_json::Value::Bool(all)) => Ok(*all),
        Some(_) => Err(invalid()),
    }
}

/// The resource a path names: the first segment after `/resource/`.
fn resource_name(path: &str) -> &str {
    path.trim_start_matches("/resource/")
        .split('/')
        .next()
        .unwrap_or("")
}

fn require_method(method: &Method, allowed: Method, allow: &'static str) -> Result<(), ApiError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allow))
    }
}

/// 401 with the reason the token stopped working, so the client knows what to do next.
pub(crate) fn session_error(err: SessionError) -> ApiError {
    let (code, sentence) = match err {
        SessionError::Ended(EndReason::Expired) => ("expired", "The session has reached its lifetime; log in again (touch the key)."),
        SessionError::Ended(EndReason::IdleTimeout) => ("idle_timeout", "The session was unused for too long; log in again (touch the key)."),
        SessionError::Ended(EndReason::LoggedOut) => ("logged_out", "The session was logged out; log in again (touch the key)."),
        SessionError::Ended(EndReason::Superseded) => ("superseded", "This token was replaced by a refresh or a newer login; use the newer token or log in again."),
        SessionError::Malformed | SessionError::Unknown => ("invalid_token", "The session token is unknown; log in again (touch the key)."),
        SessionError::Full(max) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_limit",
                format!("k_proxy already holds {max} live sessions; try again when some expire."),
            )
        }
        SessionError::Storage(_) | SessionError::NoRandomness => {
            tracing::error!(error = %err, "session could not be stored");
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "session_store_unavailable",
                "The session could not be recorded; try again later.",
            );
        }
    };
    ApiError::unauthorized(code, sentence)
}

/// Gate refusals are 401 (no session), a busy device is 503 (try again shortly).
fn gate_error(err: &GateError) -> ApiError {
    match err {
        GateError::Busy { .. } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.code(),
            err.client_message(),
        ),
        // k_proxy's own enrolment records failed: not the client's fault, not a refusal.
        _ if err.is_server_fault() => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            err.code(),
            err.client_message(),
        ),
        _ => ApiError::login_refused(err.code(), err.client_message()).with_fault(Fault::Upstream),
    }
}

/// The path and query to forward. Dot segments and encoded separators are refused rather
/// than normalised: k_server must see exactly the path k_proxy checked.
/// No dot or empty segments, no backslash, and no %2e, %2f or %5c in either case (checked
/// without lowercasing a copy of the path).
fn resource_path_is_clean(path: &str) -> bool {
    let encoded_separator = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c')
            )
    });
    !(path
        .split('/')
        .skip(1)
        .any(|segment| segment == "." || segment == ".." || segment.is_empty())
        || encoded_separator
        || path.contains('\\'))
}

fn checked_resource_path(request: &Request<RequestBody>) -> Result<String, ApiError> {
    let uri = request.uri();
    let path = uri.path();
    let invalid = || {
        ApiError::bad_request(
            "invalid_path",
            "The resource path has dot segments, empty segments or encoded separators.",
        )
    };
    if !resource_path_is_clean(path) {
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
        assert_eq!(route("/session/refresh"), Some(Route::Refresh));
        assert_eq!(route("/session/list"), Some(Route::List));
    }

    #[test]
    fn resource_paths() {
        assert!(resource_path_is_clean("/resource/counter"));
        assert!(resource_path_is_clean("/resource/a%20b/c"));
        assert!(resource_path_is_clean("/resource/100%25"));
        for bad in [
            "/resource/../session/login",
            "/resource/./counter",
            "/resource//counter",
            "/resource/counter/",
            "/resource/%2e%2e/x",
            "/resource/%2E%2E/x",
            "/resource/a%2fb",
            "/resource/a%2Fb",
            "/resource/a%5cb",
            "/resource/a%5Cb",
            "/resource/a\\b",
        ] {
            assert!(!resource_path_is_clean(bad), "{bad}");
        }
    }

    #[test]
    fn resource_names() {
        assert_eq!(resource_name("/resource/counter"), "counter");
        assert_eq!(resource_name("/resource/secrets/a/b"), "secrets");
        assert_eq!(resource_name("/resource/"), "");
    }

    #[test]
    fn logout_body() {
        let mut json = http::HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        assert!(!parse_logout(&http::HeaderMap::new(), b"").unwrap());
        assert!(parse_logout(&json, br#"{"all":true}"#).unwrap());
        assert!(!parse_logout(&json, br#"{"all":false}"#).unwrap());
        assert_eq!(
            parse_logout(&json, br#"{"all":1}"#).unwrap_err().code,
            "invalid_body"
        );
        assert_eq!(
            parse_logout(&json, br#"{"everyone":true}"#)
                .unwrap_err()
                .code,
            "invalid_body"
        );
        assert_eq!(
            parse_logout(&http::HeaderMap::new(), br#"{"all":true}"#)
                .unwrap_err()
                .code,
            "unsupported_media_type"
        );
    }
}
