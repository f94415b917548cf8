//! The logout body: none (the runbook's logout ends this session), or `{"all": true}`.

use chromecard_http::{require_json, ApiError};
use http::{HeaderMap, StatusCode};

/// An empty logout body ends this session; `{"all": true}` all of them.
pub fn parse_logout(headers: &HeaderMap, body: &[u8]) -> Result<bool, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    // A body must say it is JSON (no HTML form can); the message is the logout's own.
    require_json(headers, "a logout body").map_err(|_| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "A logout body is JSON: send {\"all\": true} with Content-Type: application/json, or send no body.",
        )
    })?;
    let invalid = || {
        ApiError::bad_request(
            "invalid_body",
            "A logout body, if any, is {\"all\": true} or {\"all\": false}.",
        )
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::bad_request("invalid_json", "The body is not valid JSON."))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(invalid());
    };
    if fields.keys().any(|key| key != "all") {
        return Err(invalid());
    }
    match fields.get("all") {
        None => Ok(false),
        Some(serde_json::Value::Bool(all)) => Ok(*all),
        Some(_) => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logout_body() {
        let mut json = http::HeaderMap::new();
        json.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        assert!(!parse_logout(&http::HeaderMap::new(), b"").unwrap());
        assert!(parse_logout(&json, br#"{"all":true}"#).unwrap());
        assert!(!parse_logout(&json, br#"{"all":false}"#).unwrap());
        assert_eq!(
            parse_logout(&json, br#"{"all":1}"#).unwrap_err().code,
            "invalid_body"
        );
        assert_eq!(
            parse_logout(&json, br#"{"everyone":true}"#)
                .unwrap_err()
                .code,
            "invalid_body"
        );
        let untyped = parse_logout(&http::HeaderMap::new(), br#"{"all":true}"#).unwrap_err();
        assert_eq!(untyped.code, "unsupported_media_type");
        assert!(untyped.message.contains("logout"), "{}", untyped.message);
        assert!(!untyped.message.contains("login"), "{}", untyped.message);
    }
}
