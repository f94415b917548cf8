//! Phase 7, log: one access line per request, and the audit lines of sessions that
//! ended without their holder asking. Errors that are not the client's are logged
//! with their cause (never sent to the client).

use std::net::SocketAddr;
use std::time::Duration;

use chromecard_http::{ApiError, Fault};
use chromecard_session::EndedSession;
use http::{Method, StatusCode};

/// An error that is not the client's doing, with where it came from and why.
pub fn failure(peer: SocketAddr, err: &ApiError) {
    if err.fault != Fault::Client {
        tracing::warn!(peer = %peer, code = err.code, fault = ?err.fault, cause = err.cause.as_deref().unwrap_or("-"), "request failed");
    }
}

/// The access line. Its own target, so that an operator can drop the per-request line
/// (about 8% of k_proxy's CPU under load, bench/RESULTS.md) and keep the audit lines:
/// RUST_LOG=info,k_proxy::access=off. Targets are not printed, so the line is as before.
pub fn access(
    peer: SocketAddr,
    method: &Method,
    path: &str,
    status: StatusCode,
    user: Option<&str>,
    took: Duration,
) {
    tracing::info!(
        target: "k_proxy::access",
        peer = %peer,
        %method,
        path = %path,
        status = status.as_u16(),
        user = user.unwrap_or("-"),
        micros = took.as_micros() as u64,
        "request"
    );
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
