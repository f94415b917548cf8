//! Phase 7, log: the access line (chromecard_http::access_line, shared with k_server),
//! and the audit lines of sessions that ended without their holder asking. Errors that
//! are not the client's are logged with their cause (never sent to the client).

use std::net::SocketAddr;

use chromecard_http::{ApiError, Fault};
use chromecard_session::EndedSession;

/// An error that is not the client's doing, with where it came from and why.
pub fn failure(peer: SocketAddr, err: &ApiError) {
    if err.fault != Fault::Client {
        tracing::warn!(peer = %peer, code = err.code, fault = ?err.fault, cause = err.cause.as_deref().unwrap_or("-"), "request failed");
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
