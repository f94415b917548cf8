//! The browser face: the page at `/` and its assets under `/ui/`, embedded in the binary,
//! each answered with a strict Content-Security-Policy and never cached; plus the two
//! small endpoints the page needs beside the session API (`GET /ui/config.json`, the
//! numbers it counts down from, and `POST /session/end`, ending one session by its id).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use chromecard_http::{
    json_response, read_body_limited, ApiError, ConnInfo, HttpResponse, RequestBody,
    BODY_READ_TIMEOUT,
};
use chromecard_request::require_json;
use chromecard_session::SessionStore;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::authenticate::Authenticated;
use crate::authorise;
use crate::respond::session_error;
use crate::session_writes::changing_sessions;

/// The page's policy: its own scripts, styles and connections (WebSocket included) only,
/// no inline code, no plugins, no framing, forms post nowhere else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// A session-ending request body is tiny.
const MAX_END_BODY: usize = 1024;

/// What the page counts down from.
#[derive(Debug, Clone, Copy)]
pub struct UiSettings {
    pub touch_timeout: Duration,
}

/// The routes this module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiRoute {
    Page,
    Script,
    Style,
    Config,
    /// `POST /session/end` `{"session_id": "..."}`
    EndSession,
}

pub fn route(path: &str) -> Option<UiRoute> {
    match path {
        "/" | "/ui/" | "/ui/index.html" => Some(UiRoute::Page),
        "/ui/app.js" => Some(UiRoute::Script),
        "/ui/style.css" => Some(UiRoute::Style),
        "/ui/config.json" => Some(UiRoute::Config),
        "/session/end" => Some(UiRoute::EndSession),
        _ => None,
    }
}

/// Answers an asset (`Page`, `Script`, `Style`, `Config`); `EndSession` goes to [`end_session`].
pub fn asset(
    route: UiRoute,
    method: &Method,
    settings: UiSettings,
    sessions: &SessionStore,
) -> Result<HttpResponse, ApiError> {
    if *method != Method::GET {
        return Err(ApiError::method_not_allowed("GET"));
    }
    let (body, content_type) = match route {
        UiRoute::Page => (
            Bytes::from_static(INDEX_HTML.as_bytes()),
            "text/html; charset=utf-8",
        ),
        UiRoute::Script => (
            Bytes::from_static(APP_JS.as_bytes()),
            "text/javascript; charset=utf-8",
        ),
        UiRoute::Style => (
            Bytes::from_static(STYLE_CSS.as_bytes()),
            "text/css; charset=utf-8",
        ),
        UiRoute::Config => {
            let store = sessions.settings();
            let mut response = json_response(
                StatusCode::OK,
                &json!({
                    "touch_timeout": settings.touch_timeout.as_secs(),
                    "session_ttl": store.ttl.as_secs(),
                    "idle_timeout": store.idle_timeout.map(|idle| idle.as_secs()),
                    "ws_ticket_ttl": crate::ws::TICKET_TTL.as_secs(),
                }),
            );
            secure_headers(response.headers_mut());
            return Ok(response);
        }
        UiRoute::EndSession => return Err(ApiError::method_not_allowed("POST")),
    };
    let mut response = Response::new(Full::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(response.headers_mut());
    Ok(response)
}

/// The headers every page asset carries. `no-store` everywhere: the page shows session
/// data, and a shared or back-button cache must never replay it.
pub fn secure_headers(headers: &mut http::HeaderMap) {
    let set = |headers: &mut http::HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    };
    set(headers, "content-security-policy", CONTENT_SECURITY_POLICY);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "referrer-policy", "no-referrer");
    set(headers, "x-frame-options", "DENY");
    set(headers, "cache-control", "no-store");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    set(
        headers,
        "permissions-policy",
        "camera=(), microphone=(), geolocation=()",
    );
}

/// `POST /session/end` `{"session_id": "<16 hex>"}`: ends one of the caller's user's
/// sessions (the caller's own included). 404 `session_not_found` when the user has no
/// live session by that id (another user's id is never found).
pub async fn end_session(
    sessions: &Arc<SessionStore>,
    auth: &Authenticated<'_>,
    parts: &Parts,
    body: RequestBody,
    conn: &ConnInfo,
) -> Result<HttpResponse, ApiError> {
    require_json(&parts.headers)?;
    let body = read_body_limited(body, MAX_END_BODY, BODY_READ_TIMEOUT).await?;
    let id = parse_end(&body)?;
    if id != auth.session().id {
        authorise::other_sessions(auth.session())?;
    }
    let token = auth.token().to_owned();
    let peer = conn.peer;
    let (current, ended) = changing_sessions(sessions, move |sessions| {
        let (current, ended) = sessions.revoke_id(&token, &id)?;
        // Logged with the change (session_writes.rs).
        if let Some(ended) = &ended {
            tracing::info!(event = "logout", all = false, user = %ended.username, session = %ended.id, by = %current.id, peer = %peer, "audit");
        }
        Ok((current, ended))
    })
    .await
    .map_err(session_error)?;
    let Some(ended) = ended else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "You have no live session with that id; list them with GET /session/list.",
        ));
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({"ended": true, "session_id": ended.id, "current": ended.id == current.id}),
    ))
}

fn parse_end(body: &[u8]) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_body",
            "The body is {\"session_id\": \"<16 hex digits>\"}.",
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "The body is not valid JSON."))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(invalid());
    };
    if fields.len() != 1 {
        return Err(invalid());
    }
    match fields.get("session_id") {
        Some(serde_json::Value::String(id))
            if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            Ok(id.clone())
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/"), Some(UiRoute::Page));
        assert_eq!(route("/ui/app.js"), Some(UiRoute::Script));
        assert_eq!(route("/ui/../app.js"), None);
        assert_eq!(route("/ui/nothing"), None);
        assert_eq!(route("/session/end"), Some(UiRoute::EndSession));
    }

    #[test]
    fn no_inline_code_in_the_page() {
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style="));
        for handler in ["onclick", "onsubmit", "onload", "onerror", "javascript:"] {
            assert!(!INDEX_HTML.contains(handler), "no inline handler {handler}");
        }
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(
            !APP_JS.contains("innerHTML"),
            "text only, never markup from data"
        );
        assert!(!APP_JS.contains("eval("));
    }

    #[test]
    fn end_body() {
        assert_eq!(
            parse_end(br#"{"session_id":"0123456789abcdef"}"#).unwrap(),
            "0123456789abcdef"
        );
        for bad in [
            &br#"{"session_id":"xyz"}"#[..],
            br#"{"session_id":"0123456789abcdef","x":1}"#,
            br#"[]"#,
            br#"{"id":"0123456789abcdef"}"#,
        ] {
            assert!(parse_end(bad).is_err());
        }
    }
}
