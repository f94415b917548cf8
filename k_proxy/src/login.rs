//! The login request body: `{"username": "alice"}` and nothing else.

use chromecard_hop::{validate_username, UsernameError};
use chromecard_http::ApiError;
use http::{header, HeaderMap, StatusCode};
use serde_json::Value;

/// Login bodies are tiny; anything larger is refused before parsing.
pub const MAX_LOGIN_BODY: usize = 4096;

/// Only JSON is accepted, which also keeps cross-site HTML forms (which cannot send
/// application/json without a CORS preflight) from logging anyone in.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
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
            "Send the login as JSON with Content-Type: application/json.",
        ))
    }
}

/// The username asked for, checked against the shared username rules.
pub fn parse_login(body: &[u8]) -> Result<String, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::bad_request(
            "invalid_json",
            "The body is not valid JSON; send {\"username\":\"alice\"}.",
        )
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "The body must be a JSON object like {\"username\":\"alice\"}.",
        ));
    };
    if let Some(unknown) = fields.keys().find(|key| key.as_str() != "username") {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("Unknown field {unknown:?}; the login body has only \"username\"."),
        ));
    }
    let username = match fields.get("username") {
        None => {
            return Err(ApiError::bad_request(
                "missing_username",
                "The body has no \"username\".",
            ))
        }
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "\"username\" must be a string.",
            ))
        }
    };
    validate_username(username).map_err(|err| {
        let sentence = match err {
            UsernameError::Empty => "The username is empty.".to_owned(),
            other => format!("The username is not allowed: {other}."),
        };
        ApiError::bad_request("invalid_username", sentence)
    })?;
    Ok(username.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn code(body: &str) -> &'static str {
        parse_login(body.as_bytes()).unwrap_err().code
    }

    #[test]
    fn accepts_a_username() {
        assert_eq!(parse_login(br#"{"username":"alice"}"#).unwrap(), "alice");
    }

    #[test]
    fn refuses_precisely() {
        assert_eq!(code("{"), "invalid_json");
        assert_eq!(code(""), "invalid_json");
        assert_eq!(code("[]"), "invalid_body");
        assert_eq!(code("\"alice\""), "invalid_body");
        assert_eq!(code("{}"), "missing_username");
        assert_eq!(code(r#"{"username":null}"#), "invalid_body");
        assert_eq!(code(r#"{"username":7}"#), "invalid_body");
        assert_eq!(code(r#"{"username":"alice","admin":true}"#), "invalid_body");
        assert_eq!(code(r#"{"username":""}"#), "invalid_username");
        assert_eq!(code(r#"{"username":"a b"}"#), "invalid_username");
        assert_eq!(
            code(&format!(r#"{{"username":"{}"}}"#, "a".repeat(65))),
            "invalid_username"
        );
    }

    #[test]
    fn content_type_must_be_json() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            require_json(&headers).unwrap_err().code,
            "unsupported_media_type"
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(require_json(&headers).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(require_json(&headers).is_ok());
    }
}
