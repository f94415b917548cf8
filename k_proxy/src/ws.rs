//! Live resources for browsers. A browser cannot put `Authorization` on a WebSocket
//! upgrade, so (as the `001_*` seed designs it) it first asks for a **single-use ticket**
//! with its session (`POST /session/ws-ticket`, cookie + CSRF header or Bearer) and then
//! opens `GET /resource/<name>/events?ticket=...`:
//!
//! * a ticket is 256 random bits (base64url), usable once, for [`TICKET_TTL`], bound to the
//!   session that asked and to the `Origin` it asked from; only its SHA-256 is kept, the
//!   comparison is constant-time, and no log line carries more than its first 8 characters;
//! * every refusal (missing, malformed, unknown or used, expired, another Origin, another
//!   session, an ended session) is a 401 JSON answer before any upgrade;
//! * k_proxy then opens the same stream at k_server over the mutual-TLS hop (proxy token,
//!   `X-Chromecard-User`; nothing of the client's headers) and relays k_server's messages;
//! * it closes the browser's socket with code [`SESSION_ENDED`] and the reason
//!   `session_ended:<code>` within a second of the session ending (logout, logout-all,
//!   expiry, idle timeout, supersede), by checking the session without using it;
//! * bounds: sockets per session and in all, frame and message sizes, idle pings, and a
//!   client that does not read its messages within [`SocketLimits::send_timeout`] is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chromecard_http::{json_response, ApiError, HttpResponse, RequestBody};
use chromecard_session::{Clock, SessionError, SessionStore, SessionView, TokenHash};
use futures_util::{SinkExt, StreamExt};
use http::request::Parts;
use http::{Method, Request, StatusCode};
use hyper_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use hyper_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use hyper_tungstenite::tungstenite::{self, Message};
use hyper_tungstenite::WebSocketStream;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::admit::Site;
use crate::app::App;
use crate::authenticate::{presented_token, Authenticated};
use crate::respond::session_error;

/// How long a WebSocket ticket stays usable.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Close code when the session ended; the reason is `session_ended:<code>`.
pub const SESSION_ENDED: u16 = 4401;
/// Tickets outstanding at most (each live for 30 s); beyond it, minting is refused.
const MAX_TICKETS: usize = 10_000;
/// Tickets one session may hold unused at once.
const MAX_TICKETS_PER_SESSION: usize = 16;
/// The streams k_server serves.
const STREAMS: [&str; 2] = ["counter", "secrets"];

/// The bounds of the event sockets.
#[derive(Debug, Clone, Copy)]
pub struct SocketLimits {
    pub per_session: usize,
    pub total: usize,
    /// Largest frame and message a client may send (it has nothing to say but control frames).
    pub max_client_message: usize,
    /// Largest message relayed from k_server.
    pub max_upstream_message: usize,
    /// A ping this often; a client that answered none of the last two is dropped.
    pub ping_interval: Duration,
    /// A message the client does not take within this long drops the client.
    pub send_timeout: Duration,
    /// How often the session is checked (the close comes within this much of its end).
    pub session_check: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            per_session: 4,
            total: 256,
            max_client_message: 4096,
            max_upstream_message: 64 * 1024,
            ping_interval: Duration::from_secs(20),
            send_timeout: Duration::from_secs(5),
            session_check: Duration::from_millis(250),
        }
    }
}

/// One outstanding ticket, keyed by its SHA-256.
struct Ticket {
    digest: [u8; 32],
    username: Arc<str>,
    session_id: String,
    token: TokenHash,
    origin: Option<String>,
    scope: Option<Arc<[String]>>,
    expires: Instant,
}

/// What a redeemed ticket vouches for.
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub username: Arc<str>,
    pub session_id: String,
    pub token: TokenHash,
    pub scope: Option<Arc<[String]>>,
}

/// The tickets and the open sockets.
pub struct Sockets {
    tickets: Mutex<HashMap<[u8; 32], Ticket>>,
    open: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    clock: Arc<dyn Clock>,
    pub limits: SocketLimits,
}

/// The first 8 characters: all a log line may show of a ticket.
fn prefix(ticket: &str) -> &str {
    ticket.get(..8).unwrap_or("")
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

fn refused(code: &'static str, sentence: &'static str) -> ApiError {
    ApiError::unauthorized(code, sentence)
}

impl Sockets {
    pub fn new(limits: SocketLimits, clock: Arc<dyn Clock>) -> Self {
        Self {
            tickets: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            clock,
            limits,
        }
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Ticket>> {
        self.tickets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mints a ticket for `session` (whose token hashes to `token`), asked from `origin`.
    pub fn mint(
        &self,
        session: &SessionView,
        token: TokenHash,
        origin: Option<&str>,
    ) -> Result<String, ApiError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_randomness",
                "k_proxy could not make a ticket; try again later.",
            )
        })?;
        let ticket = URL_SAFE_NO_PAD.encode(bytes);
        let now = self.clock.now();
        let mut tickets = self.tickets();
        tickets.retain(|_, t| t.expires > now);
        let held = tickets
            .values()
            .filter(|t| t.session_id == session.id)
            .count();
        if tickets.len() >= MAX_TICKETS || held >= MAX_TICKETS_PER_SESSION {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_tickets",
                "Too many unused WebSocket tickets; use or let expire the ones you have.",
            )
            .with_retry_after(TICKET_TTL.as_secs()));
        }
        let key = digest(&ticket);
        tickets.insert(
            key,
            Ticket {
                digest: key,
                username: session.username.clone(),
                session_id: session.id.clone(),
                token,
                origin: origin.map(str::to_owned),
                scope: session.scope.clone(),
                expires: now + TICKET_TTL,
            },
        );
        drop(tickets);
        tracing::info!(event = "ws_ticket", user = %session.username, session = %session.id, ticket = prefix(&ticket), "audit");
        Ok(ticket)
    }

    /// Takes the ticket (it is gone afterwards, whatever the outcome) and checks its
    /// expiry and Origin.
    pub fn redeem(&self, presented: &str, origin: Option<&str>) -> Result<Redeemed, ApiError> {
        let well_formed = presented.len() == 43
            && presented
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !well_formed {
            return Err(refused(
                "malformed_ticket",
                "The ticket is not one k_proxy could have issued; get one from POST /session/ws-ticket.",
            ));
        }
        let key = digest(presented);
        let now = self.clock.now();
        let ticket = self.tickets().remove(&key);
        let Some(ticket) = ticket.filter(|t| bool::from(t.digest.ct_eq(&key))) else {
            tracing::info!(
                event = "ws_refused",
                code = "invalid_ticket",
                ticket = prefix(presented),
                "audit"
            );
            return Err(refused(
                "invalid_ticket",
                "The ticket is unknown or was already used; each ticket opens one socket. Get a new one.",
            ));
        };
        if now >= ticket.expires {
            tracing::info!(event = "ws_refused", code = "ticket_expired", user = %ticket.username, ticket = prefix(presented), "audit");
            return Err(refused(
                "ticket_expired",
                "The ticket is older than 30 seconds; get a new one from POST /session/ws-ticket.",
            ));
        }
        if ticket.origin.as_deref() != origin {
            tracing::warn!(event = "ws_refused", code = "origin_mismatch", user = %ticket.username, origin = ?origin, ticket = prefix(presented), "audit");
            return Err(refused(
                "origin_mismatch",
                "The socket's Origin is not the one the ticket was issued to.",
            ));
        }
        Ok(Redeemed {
            username: ticket.username,
            session_id: ticket.session_id,
            token: ticket.token,
            scope: ticket.scope,
        })
    }

    /// Reserves a socket for the session, within the bounds.
    fn reserve(self: &Arc<Self>, session_id: &str) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.get(session_id).copied().unwrap_or(0);
        if mine >= self.limits.per_session {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!("This session already has {mine} live sockets; close one first."),
            ));
        }
        if self
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limits.total).then_some(n + 1)
            })
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "socket_limit",
                "k_proxy holds as many live sockets as it allows; try again later.",
            )
            .with_retry_after(5));
        }
        *open.entry(session_id.to_owned()).or_default() += 1;
        Ok(Slot {
            sockets: self.clone(),
            session_id: session_id.to_owned(),
        })
    }

    /// Live sockets in all.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// A reserved socket; released when dropped.
struct Slot {
    sockets: Arc<Sockets>,
    session_id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.sockets.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.session_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.session_id);
            }
        }
        self.sockets.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `path` (with `query`) is an events socket rather than a resource: the path is
/// `/resource/<stream>/events` and the request asks to upgrade or carries a ticket.
pub fn is_events_request(request: &Request<RequestBody>) -> bool {
    stream_of(request.uri().path()).is_some()
        && (hyper_tungstenite::is_upgrade_request(request)
            || ticket_param(request.uri().query()).is_some())
}

fn stream_of(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix("/resource/")?.strip_suffix("/events")?;
    STREAMS.iter().copied().find(|s| *s == name)
}

fn ticket_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
}

/// The request's single `Origin`, if any; two are refused.
fn origin_of(headers: &http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut origins = headers.get_all(http::header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => Ok(None),
        (Some(origin), None) => origin
            .to_str()
            .map(Some)
            .map_err(|_| refused("origin_mismatch", "The Origin header is not readable.")),
        _ => Err(refused(
            "origin_mismatch",
            "The Origin header was sent more than once.",
        )),
    }
}

/// `POST /session/ws-ticket`: the caller's live session (already validated) gets a ticket
/// bound to it and to the request's `Origin`, which must name this k_proxy if present.
pub fn ticket_response(
    sockets: &Sockets,
    parts: &Parts,
    session: &SessionView,
    token: &str,
    origin_allowed: &dyn Fn(&str) -> bool,
) -> Result<HttpResponse, ApiError> {
    if parts.method != Method::POST {
        return Err(ApiError::method_not_allowed("POST"));
    }
    let origin = origin_of(&parts.headers)?;
    if let Some(origin) = origin {
        if !origin_allowed(origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "Tickets are issued only to pages served by this k_proxy.",
            ));
        }
    }
    let hash = TokenHash::parse_presented(token).map_err(|_| {
        refused(
            "invalid_token",
            "The session token is unknown; log in again (touch the key).",
        )
    })?;
    let ticket = sockets.mint(session, hash, origin)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"ticket": ticket, "expires_in": TICKET_TTL.as_secs()}),
    ))
}

/// The checks before an events socket is opened, in order; each refusal is an answer
/// before any upgrade. `presented` is the credential the upgrade carries, if any (a
/// browser sends its cookie): it must be the ticket's own session.
pub fn admit(
    sockets: &Arc<Sockets>,
    sessions: &SessionStore,
    request: &Request<RequestBody>,
    presented: Option<&str>,
) -> Result<Admitted, ApiError> {
    if *request.method() != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    let stream = stream_of(request.uri().path()).ok_or_else(ApiError::not_found)?;
    let Some(ticket) = ticket_param(request.uri().query()) else {
        return Err(refused(
            "missing_ticket",
            "A WebSocket needs ?ticket= from POST /session/ws-ticket (browsers cannot send Authorization on an upgrade).",
        ));
    };
    let origin = origin_of(request.headers())?;
    let redeemed = sockets.redeem(ticket, origin)?;
    if let Some(presented) = presented {
        let same = sessions
            .validate(presented)
            .is_ok_and(|view| view.id == redeemed.session_id);
        if !same {
            return Err(refused(
                "ticket_session_mismatch",
                "The ticket belongs to another session than the one this request carries.",
            ));
        }
    }
    sessions
        .peek(&redeemed.username, &redeemed.session_id, &redeemed.token)
        .map_err(session_error)?;
    let allowed = redeemed
        .scope
        .as_ref()
        .is_none_or(|scope| scope.iter().any(|s| s == stream));
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("This session's scope does not include the resource {stream:?}; log in with it in \"scope\"."),
        ));
    }
    if !hyper_tungstenite::is_upgrade_request(request) {
        return Err(ApiError::bad_request(
            "websocket_required",
            "This endpoint is a WebSocket: send Connection: Upgrade and Upgrade: websocket.",
        ));
    }
    let slot = sockets.reserve(&redeemed.session_id)?;
    Ok(Admitted {
        stream,
        redeemed,
        slot,
    })
}

/// A socket that passed every check, with its reserved slot.
pub struct Admitted {
    pub stream: &'static str,
    pub redeemed: Redeemed,
    slot: Slot,
}

/// `POST /session/ws-ticket`: a ticket for the authenticated session, bound to the
/// `Origin` that asked (which must be one this k_proxy serves).
pub fn ws_ticket(
    sockets: &Sockets,
    site: &Site,
    auth: &Authenticated<'_>,
    parts: &Parts,
) -> Result<HttpResponse, ApiError> {
    let ours = |origin: &str| site.hosts.allows_origin(origin, site.addressed.as_ref());
    ticket_response(sockets, parts, auth.session(), auth.token(), &ours)
}

/// `GET /resource/<stream>/events?ticket=`: admitted, then opened and relayed. The
/// ticket authenticates the upgrade; a credential the upgrade also carries (a
/// browser's cookie) must be the ticket's own session.
pub async fn ws_events(
    app: &App,
    request: Request<RequestBody>,
    site: &Site,
    user: &mut Option<Arc<str>>,
) -> Result<HttpResponse, ApiError> {
    let presented = presented_token(site, request.headers(), request.method());
    let admitted = admit(&app.sockets, &app.sessions, &request, presented.as_deref())?;
    *user = Some(admitted.redeemed.username.clone());
    open(
        admitted,
        request,
        app.upstream.get(),
        app.sessions.clone(),
        app.sockets.limits,
        app.stopping.clone(),
    )
    .await
}

/// Opens the stream at k_server, answers 101 and relays in a task of its own.
pub async fn open(
    admitted: Admitted,
    mut request: Request<RequestBody>,
    upstream: Arc<crate::upstream::Upstream>,
    sessions: Arc<SessionStore>,
    limits: SocketLimits,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<HttpResponse, ApiError> {
    let Admitted {
        stream,
        redeemed,
        slot,
    } = admitted;
    let upstream_config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_upstream_message))
        .max_frame_size(Some(limits.max_upstream_message));
    let server = upstream
        .open_events(stream, &redeemed.username, upstream_config)
        .await?;
    let client_config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_client_message))
        .max_frame_size(Some(limits.max_client_message))
        .max_write_buffer_size(256 * 1024);
    let (response, websocket) = hyper_tungstenite::upgrade(&mut request, Some(client_config))
        .map_err(|_| {
            ApiError::bad_request(
                "websocket_required",
                "The upgrade lacks Sec-WebSocket-Key or Sec-WebSocket-Version: 13.",
            )
        })?;
    tracing::info!(event = "ws_open", user = %redeemed.username, session = %redeemed.session_id, stream, "audit");
    tokio::spawn(async move {
        let _slot = slot;
        let client = match websocket.await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(error = %err, "the client's upgrade did not complete");
                return;
            }
        };
        let watched = redeemed.clone();
        let watch = move || {
            sessions
                .peek(&watched.username, &watched.session_id, &watched.token)
                .map_err(|err| end_code(&err))
        };
        let end = relay(client, server, watch, limits, stopping).await;
        tracing::info!(event = "ws_close", user = %redeemed.username, session = %redeemed.session_id, stream, why = %end, "audit");
    });
    Ok(response.map(|body| {
        // The 101 answer has no body.
        let _ = body;
        http_body_util::Full::new(bytes::Bytes::new())
    }))
}

/// Resolves once k_proxy starts shutting down.
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

fn end_code(err: &SessionError) -> &'static str {
    match err {
        SessionError::Ended(reason) => reason.code(),
        _ => "invalid_token",
    }
}

fn close_frame(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Relays k_server's messages to the client until one side ends, the session ends, the
/// client stops answering pings or reading, or k_proxy stops. Returns why it ended.
pub async fn relay<C, U>(
    mut client: WebSocketStream<C>,
    mut server: WebSocketStream<U>,
    session_live: impl Fn() -> Result<(), &'static str>,
    limits: SocketLimits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> String
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut check = tokio::time::interval(limits.session_check);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + limits.ping_interval,
        limits.ping_interval,
    );
    let mut unanswered = 0u32;
    let send_timeout = limits.send_timeout;
    // Closes the client's socket (bounded in time: a client that does not read cannot
    // hold the task) and k_server's.
    macro_rules! finish {
        ($code:expr, $reason:expr) => {{
            let reason: String = $reason;
            let _ = tokio::time::timeout(
                send_timeout,
                client.send(close_frame($code, reason.clone())),
            )
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(1), server.close(None)).await;
            return reason;
        }};
    }
    loop {
        tokio::select! {
            _ = check.tick() => {
                if let Err(code) = session_live() {
                    finish!(SESSION_ENDED, format!("session_ended:{code}"));
                }
            }
            _ = ping.tick() => {
                if unanswered >= 2 {
                    finish!(1001, "no answer to pings".to_owned());
                }
                unanswered += 1;
                match tokio::time::timeout(send_timeout, client.send(Message::Ping(Vec::new().into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => finish!(1008, "too slow: the client does not read".to_owned()),
                }
            }
            () = stopped(&mut stopping) => {
                finish!(1001, "k_proxy is shutting down".to_owned());
            }
            message = server.next() => match message {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    match tokio::time::timeout(send_timeout, client.send(message)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break,
                        Err(_) => finish!(1008, "too slow: the client does not read".to_owned()),
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    finish!(1011, "k_server ended the stream".to_owned());
                }
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "the stream from k_server broke");
                    finish!(1011, "k_server ended the stream".to_owned());
                }
            },
            message = client.next() => match message {
                Some(Ok(Message::Pong(_))) => unanswered = 0,
                Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                    // The stream is one way; a client's message is ignored (and bounded).
                }
                Some(Ok(Message::Close(_))) | None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), server.close(None)).await;
                    return "the client closed".to_owned();
                }
                Some(Err(tungstenite::Error::Capacity(_))) => {
                    finish!(1009, "message too big".to_owned());
                }
                Some(Err(_)) => break,
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), server.close(None)).await;
    "the client's connection broke".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chromecard_session::{ManualClock, NewSession, StoreSettings};
    use hyper_tungstenite::tungstenite::protocol::Role;

    fn store(clock: Arc<ManualClock>) -> SessionStore {
        SessionStore::new(
            StoreSettings {
                ttl: Duration::from_secs(300),
                idle_timeout: None,
                max_sessions: 100,
            },
            clock,
        )
    }

    fn login(sessions: &SessionStore, user: &str) -> (String, SessionView) {
        let issued = sessions
            .create(NewSession {
                username: user.into(),
                ..NewSession::default()
            })
            .unwrap();
        (issued.token.expose().to_owned(), issued.session)
    }

    fn code(result: Result<Redeemed, ApiError>) -> &'static str {
        result.map(|_| ()).unwrap_err().code
    }

    #[test]
    fn a_ticket_opens_once_within_its_ttl_from_its_origin() {
        let clock = Arc::new(ManualClock::default());
        let sessions = store(clock.clone());
        let sockets = Sockets::new(SocketLimits::default(), clock.clone());
        let (token, view) = login(&sessions, "alice");
        let hash = TokenHash::of(&token);
        let origin = Some("https://127.0.0.1:8771");

        let ticket = sockets.mint(&view, hash, origin).unwrap();
        assert_eq!(ticket.len(), 43, "256 bits, base64url");
        // Kept hashed: the store is keyed by the ticket's SHA-256 (and holds no text of it).
        assert!(sockets.tickets().contains_key(&digest(&ticket)));
        let redeemed = sockets.redeem(&ticket, origin).unwrap();
        assert_eq!(redeemed.session_id, view.id);
        // Replay.
        assert_eq!(code(sockets.redeem(&ticket, origin)), "invalid_ticket");

        // Expiry, on the injected clock.
        let ticket = sockets.mint(&view, hash, origin).unwrap();
        clock.advance(TICKET_TTL - Duration::from_millis(1));
        let fresh = sockets.mint(&view, hash, origin).unwrap();
        clock.advance(Duration::from_millis(1));
        assert_eq!(code(sockets.redeem(&ticket, origin)), "ticket_expired");
        assert!(sockets.redeem(&fresh, origin).is_ok());

        // Another Origin (and the ticket is burnt by the attempt).
        let ticket = sockets.mint(&view, hash, origin).unwrap();
        assert_eq!(
            code(sockets.redeem(&ticket, Some("https://attacker.example"))),
            "origin_mismatch"
        );
        assert_eq!(code(sockets.redeem(&ticket, origin)), "invalid_ticket");
        let ticket = sockets.mint(&view, hash, origin).unwrap();
        assert_eq!(code(sockets.redeem(&ticket, None)), "origin_mismatch");

        // Malformed and unknown.
        for bad in [
            "",
            "short",
            &"x".repeat(44),
            &format!("{}!", &"a".repeat(42)),
        ] {
            assert_eq!(
                code(sockets.redeem(bad, origin)),
                "malformed_ticket",
                "{bad:?}"
            );
        }
        assert_eq!(
            code(sockets.redeem(&"A".repeat(43), origin)),
            "invalid_ticket"
        );
    }

    #[test]
    fn tickets_per_session_are_bounded() {
        let clock = Arc::new(ManualClock::default());
        let sessions = store(clock.clone());
        let sockets = Sockets::new(SocketLimits::default(), clock.clone());
        let (token, view) = login(&sessions, "alice");
        for _ in 0..MAX_TICKETS_PER_SESSION {
            sockets.mint(&view, TokenHash::of(&token), None).unwrap();
        }
        assert_eq!(
            sockets
                .mint(&view, TokenHash::of(&token), None)
                .unwrap_err()
                .code,
            "too_many_tickets"
        );
        clock.advance(TICKET_TTL);
        assert!(sockets.mint(&view, TokenHash::of(&token), None).is_ok());
    }

    #[test]
    fn sockets_per_session_and_in_all_are_bounded() {
        let clock = Arc::new(ManualClock::default());
        let limits = SocketLimits {
            per_session: 2,
            total: 3,
            ..SocketLimits::default()
        };
        let sockets = Arc::new(Sockets::new(limits, clock));
        let a1 = sockets.reserve("a").unwrap();
        let _a2 = sockets.reserve("a").unwrap();
        assert_eq!(
            sockets.reserve("a").map(|_| ()).unwrap_err().code,
            "too_many_sockets"
        );
        let _b1 = sockets.reserve("b").unwrap();
        assert_eq!(
            sockets.reserve("c").map(|_| ()).unwrap_err().code,
            "socket_limit"
        );
        drop(a1);
        assert_eq!(sockets.live(), 2);
        assert!(sockets.reserve("c").is_ok());
    }

    #[test]
    fn requests_for_events() {
        assert_eq!(stream_of("/resource/counter/events"), Some("counter"));
        assert_eq!(stream_of("/resource/secrets/events"), Some("secrets"));
        assert_eq!(stream_of("/resource/whoami/events"), None);
        assert_eq!(ticket_param(Some("a=1&ticket=xyz")), Some("xyz"));
        assert_eq!(ticket_param(Some("tickets=1")), None);
    }

    async fn pair(
        buffer: usize,
        config: Option<WebSocketConfig>,
    ) -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(buffer);
        (
            WebSocketStream::from_raw_socket(a, Role::Server, config).await,
            WebSocketStream::from_raw_socket(b, Role::Client, None).await,
        )
    }

    /// A client that answers no ping (here: never reads at all) is closed after two.
    #[tokio::test]
    async fn a_client_that_answers_no_ping_is_closed() {
        let limits = SocketLimits {
            ping_interval: Duration::from_millis(100),
            ..SocketLimits::default()
        };
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        let (proxy_side, _silent) = pair(64 * 1024, None).await;
        let (server_side, _server) = pair(64 * 1024, None).await;
        let started = Instant::now();
        let why = tokio::time::timeout(
            Duration::from_secs(2),
            relay(proxy_side, server_side, || Ok(()), limits, stopping),
        )
        .await
        .expect("closed");
        assert_eq!(why, "no answer to pings");
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    /// A client that never reads is dropped once a message waits longer than the send
    /// timeout, instead of being buffered for without end; and the relay ends promptly
    /// when the session ends, with 4401 and the reason.
    #[tokio::test]
    async fn a_client_that_never_reads_is_dropped_and_the_session_end_closes() {
        let limits = SocketLimits {
            send_timeout: Duration::from_millis(300),
            ..SocketLimits::default()
        };
        let (_stop, stopping) = tokio::sync::watch::channel(false);
        // Small pipes, small write buffer: the relay must stall on the first few KiB.
        let config = WebSocketConfig::default()
            .write_buffer_size(0)
            .max_write_buffer_size(8 * 1024);
        let (proxy_side, _client_never_reads) = pair(1024, Some(config)).await;
        let (server_side, mut server) = pair(64 * 1024, None).await;
        let task = tokio::spawn(relay(
            proxy_side,
            server_side,
            || Ok(()),
            limits,
            stopping.clone(),
        ));
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for n in 0..10_000 {
                if server
                    .send(Message::Text(
                        format!("{{\"counter\":{n}, \"pad\":\"{}\"}}", "x".repeat(200)).into(),
                    ))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let why = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the relay dropped the client")
            .unwrap();
        assert!(why.contains("too slow"), "{why}");
        assert!(started.elapsed() < Duration::from_secs(3));
        writer.abort();

        // The session ends: closed with 4401 within the check interval.
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ended.clone();
        let (proxy_side, mut client) = pair(64 * 1024, None).await;
        let (server_side, _server) = pair(64 * 1024, None).await;
        let task = tokio::spawn(relay(
            proxy_side,
            server_side,
            move || {
                if flag.load(Ordering::SeqCst) {
                    Err("logged_out")
                } else {
                    Ok(())
                }
            },
            SocketLimits::default(),
            stopping,
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let at = Instant::now();
        ended.store(true, Ordering::SeqCst);
        let close = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match client.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .expect("closed within a second")
        .expect("a close frame");
        assert_eq!(u16::from(close.code), SESSION_ENDED);
        assert_eq!(close.reason.as_str(), "session_ended:logged_out");
        assert!(at.elapsed() < Duration::from_secs(1));
        task.await.unwrap();
    }
}
