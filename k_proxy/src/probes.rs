//! The health rooms: answered for any `Host`, with no session and nothing secret.

use chromecard_http::{json_response, ApiError, HttpResponse};
use http::StatusCode;
use serde_json::json;

use crate::upstream::Upstream;

/// `GET /healthz`: the process serves.
pub fn health() -> HttpResponse {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /readyz`: k_server answers over the pooled connection. Nothing about the gate or
/// its files: /readyz answers anyone, and which gate runs is in the start-up log.
pub async fn ready(upstream: &Upstream) -> Result<HttpResponse, ApiError> {
    upstream.probe().await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"ready": true, "k_server": "reachable"}),
    ))
}
