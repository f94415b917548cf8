//! Bounded reads: a request never makes us buffer more than we said we would, or wait
//! longer than we said we would.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;

use crate::{ApiError, RequestBody};

/// Limits on the request head, checked before routing. hyper's own hard limits sit above
/// these so that the client gets our JSON 431 rather than hyper's bare one.
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_total_bytes: usize,
    pub max_count: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_total_bytes: 16 * 1024,
            max_count: 100,
        }
    }
}

/// 431 when the request head is larger than allowed.
pub fn check_header_limits(headers: &HeaderMap, limits: HeaderLimits) -> Result<(), ApiError> {
    let count = headers.len();
    let total: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if count > limits.max_count || total > limits.max_total_bytes {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "The request headers are too large ({count} fields, {total} bytes); the limit is {} fields and {} bytes.",
                limits.max_count, limits.max_total_bytes
            ),
        ));
    }
    Ok(())
}

/// Reads the whole body, refusing more than `limit` bytes (413) or a body that takes longer
/// than `timeout` to arrive (408).
///
/// A `Content-Length` over the limit is refused before the body is touched: hyper sends
/// `100 Continue` when a body is first read, so a client that asked for it is told 413
/// instead of being invited to upload what will be refused.
pub async fn read_body_limited(
    body: RequestBody,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(body_too_large(limit));
    }
    // No body (a GET, or `Content-Length: 0`): nothing to wait for, so no timer.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "The request body did not arrive within {} seconds.",
                timeout.as_secs()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(body_too_large(limit)),
        Ok(Err(_)) => Err(ApiError::bad_request(
            "body_read_error",
            "The request body could not be read.",
        )),
    }
}

/// 413 for a body over `limit` bytes.
pub fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("The request body is larger than the limit of {limit} bytes."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_limits_count_and_size() {
        let limits = HeaderLimits {
            max_total_bytes: 100,
            max_count: 3,
        };
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        assert!(check_header_limits(&headers, limits).is_ok());

        headers.insert("b", HeaderValue::from_static("1"));
        headers.insert("c", HeaderValue::from_static("1"));
        headers.insert("d", HeaderValue::from_static("1"));
        let err = check_header_limits(&headers, limits).unwrap_err();
        assert_eq!(err.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(err.code, "headers_too_large");

        let mut big = HeaderMap::new();
        big.insert("x", HeaderValue::from_str(&"v".repeat(200)).unwrap());
        assert!(check_header_limits(&big, limits).is_err());
    }
}
