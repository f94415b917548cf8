//! The access line both binaries write for every request, under one target so that an
//! operator can drop it (`RUST_LOG=info,chromecard::access=off`, about 8% of k_proxy's
//! CPU under load, bench/RESULTS.md) and keep every audit line. Targets are not printed.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};

/// One request, answered.
pub fn access_line(
    peer: SocketAddr,
    method: &Method,
    path: &str,
    status: StatusCode,
    user: Option<&str>,
    took: Duration,
) {
    tracing::info!(
        target: "chromecard::access",
        peer = %peer,
        %method,
        path = %path,
        status = status.as_u16(),
        user = user.unwrap_or("-"),
        micros = took.as_micros() as u64,
        "request"
    );
}
