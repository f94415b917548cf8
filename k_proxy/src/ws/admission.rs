//! What an events request is, and every check before its socket opens (each refusal an
//! answer before any upgrade).

use super::*;

/// Whether `path` (with `query`) is an events socket rather than a resource: the path is
/// `/resource/<stream>/events` and the request asks to upgrade or carries a ticket.
pub fn is_events_request(request: &Request<RequestBody>) -> bool {
    stream_of(request.uri().path()).is_some()
        && (hyper_tungstenite::is_upgrade_request(request)
            || ticket_param(request.uri().query()).is_some())
}

pub(crate) fn stream_of(path: &str) -> Option<&'static str> {
    let name = path.strip_prefix("/resource/")?.strip_suffix("/events")?;
    STREAMS.iter().copied().find(|s| *s == name)
}

pub(crate) fn ticket_param(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ticket="))
}

/// The request's single `Origin`, if any; two are refused.
pub(crate) fn origin_of(headers: &http::HeaderMap) -> Result<Option<&str>, ApiError> {
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
        // Not a use of the session: the socket is the page's own doing.
        let same = sessions
            .validate_without_use(presented)
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
    pub(crate) slot: Slot,
}
