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

mod admission;
mod relay;
mod tickets;

pub(crate) use admission::*;
pub(crate) use relay::*;
pub(crate) use tickets::*;

/// `POST /session/ws-ticket`: a ticket for the authenticated session, bound to the
/// `Origin` that asked (which must be one this k_proxy serves).
pub fn ws_ticket(
    sockets: &Sockets,
    site: &Site,
    auth: &Authenticated<'_>,
    parts: &Parts,
) -> Result<HttpResponse, ApiError> {
    let ours = |origin: &str| site.allows_origin(origin);
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
