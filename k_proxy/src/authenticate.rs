//! Phase 3, authenticate: the one place a request's credential (Bearer header, or the
//! session cookie with its CSRF check) becomes a live session. Every [`crate::route::Authed`]
//! handler takes an [`Authenticated`], and only [`authenticate`] makes one.

use std::sync::Arc;

use chromecard_http::ApiError;
use chromecard_request::{take_credential, Credential, CredentialSource};
use chromecard_session::{SessionStore, SessionView};
use http::{HeaderMap, HeaderName, Method};

use crate::admit::Site;
use crate::respond::session_error;

/// Sent by the page with every request: the public id of the session it shows. A static
/// name: looked up on every request, it is not parsed from text each time.
static EXPECTED_SESSION: HeaderName = HeaderName::from_static("x-chromecard-session");

/// Whether a request is a use of its session, restarting `--idle-timeout`'s clock: what
/// a person does is; what a page does by itself (a ticket for its live updates, which it
/// asks for again whenever a socket drops) is not, so an unattended page still idles out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Counts,
    DoesNotCount,
}

/// A request whose credential names a live session. The fields are private: the only way
/// to hold one is through [`authenticate`].
pub struct Authenticated<'h> {
    credential: Credential<'h>,
    session: SessionView,
}

impl Authenticated<'_> {
    /// The presented token (for the session store's own calls: refresh, revoke, list).
    pub fn token(&self) -> &str {
        self.credential.token
    }

    /// Bearer header or cookie (a cookie session gets its cookie refreshed or cleared).
    pub fn source(&self) -> CredentialSource {
        self.credential.source
    }

    /// The session, as validated.
    pub fn session(&self) -> &SessionView {
        &self.session
    }

    /// The user, for the access log.
    pub fn username(&self) -> Arc<str> {
        self.session.username.clone()
    }
}

/// The credential and its session. A cookie is taken only with the CSRF header and an
/// `Origin` naming this k_proxy by the host the request was addressed to (never merely
/// the client's `Host`: a DNS-rebinding page chooses both).
pub fn authenticate<'h>(
    sessions: &SessionStore,
    site: &Site,
    headers: &'h HeaderMap,
    method: &Method,
    counts: Use,
) -> Result<Authenticated<'h>, ApiError> {
    let credential = take_credential(headers, method, &|origin: &str| site.allows_origin(origin))?;
    // The page names the session it shows: a cookie replaced under it (a login in another
    // tab, or a cookie set by a site on another port of the host: browsers do not keep
    // cookies per port) must not carry its requests into that other session, nor count
    // as a use of it. Checked before the use is counted.
    if let Some(expected) = headers.get(&EXPECTED_SESSION) {
        let named = sessions
            .validate_without_use(credential.token)
            .map_err(session_error)?;
        if expected.as_bytes() != named.id.as_bytes() {
            return Err(ApiError::unauthorized(
                "session_mismatch",
                "The session this request's credential names is not the one X-Chromecard-Session expects (a login in another tab, or a cookie set by another site on this host); log in again.",
            ));
        }
    }
    let session = match counts {
        Use::Counts => sessions.validate(credential.token),
        Use::DoesNotCount => sessions.validate_without_use(credential.token),
    }
    .map_err(session_error)?;
    Ok(Authenticated {
        credential,
        session,
    })
}

/// The token a request presents, if any, without looking the session up: for the one
/// route a ticket authenticates (ws.rs's events upgrade), which must check that a
/// credential it also carries belongs to the ticket's own session. A credential that
/// fails its own checks (the cookie's CSRF rules) counts as none.
pub fn presented_token(site: &Site, headers: &HeaderMap, method: &Method) -> Option<String> {
    take_credential(headers, method, &|origin: &str| site.allows_origin(origin))
        .ok()
        .map(|credential| credential.token.to_owned())
}
