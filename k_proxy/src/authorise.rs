//! Phase 4, authorise: what an authenticated session may reach. The cookie's CSRF check
//! belongs to the credential itself (authenticate.rs); what is left is the scope: a
//! session logged in with `"scope"` reaches only the resources it names.

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
