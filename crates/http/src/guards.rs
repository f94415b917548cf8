//! The small request checks both binaries make before a handler reads anything: the
//! method, the declared content type, and how long a body may take to arrive.

use std::time::Duration;

use http::{header, HeaderMap, Method, StatusCode};

use crate::ApiError;

/// How long a client may take to send a request body once its head has arrived.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// 405 with `Allow` unless the method is one of `allowed`.
pub fn require_method(
    method: &Method,
    allowed: &[Method],
    allow: &'static str,
) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allow))
    }
}

/// 415 unless the body is declared `application/json`; `what` names the body in the
/// message ("the login", "the secret").
pub fn require_json(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Send {what} as JSON with Content-Type: application/json."),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_content_types() {
        assert!(require_method(&Method::GET, &[Method::GET], "GET").is_ok());
        let e =
            require_method(&Method::PUT, &[Method::GET, Method::POST], "GET, POST").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        let mut h = HeaderMap::new();
        assert_eq!(
            require_json(&h, "the login").unwrap_err().code,
            "unsupported_media_type"
        );
        h.insert(
            header::CONTENT_TYPE,
            "Application/JSON; charset=utf-8".parse().unwrap(),
        );
        assert!(require_json(&h, "the login").is_ok());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let e = require_json(&h, "the secret").unwrap_err();
        assert!(
            e.message.contains("Send the secret as JSON"),
            "{}",
            e.message
        );
    }
}
