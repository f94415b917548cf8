//! Phase 4, authorise: what an authenticated session may reach. The cookie's CSRF check
//! belongs to the credential itself (authenticate.rs); what is left is the scope: a
//! session logged in with `"scope"` reaches only the resources it names, and manages only
//! itself: its user's other sessions are for a session without a scope.

use chromecard_http::ApiError;
use chromecard_session::SessionView;
use http::StatusCode;

/// 403 `insufficient_scope` unless the session's scope includes `resource`.
pub fn resource(session: &SessionView, resource: &str) -> Result<(), ApiError> {
    if session.allows(resource) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        format!("This session's scope does not include the resource {resource:?}; log in with it in \"scope\"."),
    ))
}

/// 403 `insufficient_scope` for a session with a scope: one handed to a script for a
/// resource may see, refresh and end itself, but not list or end its user's other
/// sessions (which would let it sign the user out everywhere).
pub fn other_sessions(session: &SessionView) -> Result<(), ApiError> {
    if session.scope.is_none() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        "A session with a scope manages only itself; list or end the user's other sessions from a session logged in without one.",
    ))
}
