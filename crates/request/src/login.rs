//! The login request body: `{"username": "alice"}`, optionally with `"scope": ["counter"]`
//! (the resources the session may reach), `"cookie": true` (also set a session cookie) and
//! `"pin": "..."` (the key's PIN, for users whose enrolment asks for it).
//!
//! The PIN is taken out of the parsed JSON first, held as a [`Pin`] (wiped when dropped,
//! never printed) and checked against CTAP's bounds (4 code points to 63 bytes).

use chromecard_gate::{Pin, PinError};
use chromecard_hop::{validate_username, UsernameError};
use chromecard_http::ApiError;
use http::HeaderMap;
use serde_json::Value;

/// Login bodies are tiny; anything larger is refused before parsing.
pub const MAX_LOGIN_BODY: usize = 4096;

/// 415 unless the login is declared JSON. Only JSON is accepted, which also keeps
/// cross-site HTML forms (which cannot send application/json without a CORS preflight)
/// from logging anyone in.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    chromecard_http::require_json(headers, "the login")
}

/// Scope entries are resource names: the first path segment after `/resource/`.
const MAX_SCOPE_ENTRIES: usize = 16;
const MAX_SCOPE_NAME: usize = 32;

/// What a login asks for.
#[derive(Debug, Clone)]
pub struct LoginRequest {
    pub username: String,
    /// None: every resource.
    pub scope: Option<Vec<String>>,
    /// Also answer with a `Set-Cookie` holding the token, for browsers.
    pub cookie: bool,
    /// The key's PIN, if the client sent one.
    pub pin: Option<Pin>,
}

/// The `"pin"` field: a string a key could hold as its PIN.
fn parse_pin(value: Option<Value>) -> Result<Option<Pin>, ApiError> {
    let invalid = |why: &str| {
        ApiError::bad_request(
            "invalid_pin",
            format!("\"pin\" must be the key's PIN as a string: {why}."),
        )
    };
    match value {
        None => Ok(None),
        Some(Value::String(pin)) => Pin::new(pin).map(Some).map_err(|e| match e {
            PinError::TooShort => invalid("a PIN has at least 4 characters"),
            PinError::TooLong => invalid("a PIN has at most 63 bytes of UTF-8"),
            PinError::Nul => invalid("a PIN cannot contain the NUL character"),
        }),
        Some(Value::Null) => Err(invalid("null is not a PIN")),
        Some(_) => Err(invalid("it is not a string")),
    }
}

/// Parses and checks a login body against the shared username rules.
pub fn parse_login(body: &[u8]) -> Result<LoginRequest, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::bad_request(
            "invalid_json",
            "The body is not valid JSON; send {\"username\":\"alice\"}.",
        )
    })?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "The body must be a JSON object like {\"username\":\"alice\"}.",
        ));
    };
    // First, so that the PIN is held (and wiped) by `Pin` whatever is refused below.
    let pin = parse_pin(fields.remove("pin"))?;
    if let Some(unknown) = fields
        .keys()
        .find(|key| !matches!(key.as_str(), "username" | "scope" | "cookie"))
    {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("Unknown field {unknown:?}; a login body has \"username\" and optionally \"scope\", \"cookie\" and \"pin\"."),
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
    let scope = fields.get("scope").map(parse_scope).transpose()?;
    let cookie = match fields.get("cookie") {
        None => false,
        Some(Value::Bool(cookie)) => *cookie,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "\"cookie\" must be true or false.",
            ))
        }
    };
    Ok(LoginRequest {
        username: username.clone(),
        scope,
        cookie,
        pin,
    })
}

fn parse_scope(value: &Value) -> Result<Vec<String>, ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_scope",
            format!("\"scope\" must be a list of 1 to {MAX_SCOPE_ENTRIES} resource names (lowercase letters, digits, '-', '_'), e.g. [\"counter\"]."),
        )
    };
    let Value::Array(entries) = value else {
        return Err(invalid());
    };
    if entries.is_empty() || entries.len() > MAX_SCOPE_ENTRIES {
        return Err(invalid());
    }
    let mut scope = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::String(name) = entry else {
            return Err(invalid());
        };
        let valid = !name.is_empty()
            && name.len() <= MAX_SCOPE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            return Err(invalid());
        }
        if !scope.contains(name) {
            scope.push(name.clone());
        }
    }
    Ok(scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderValue};

    fn code(body: &str) -> &'static str {
        parse_login(body.as_bytes()).unwrap_err().code
    }

    #[test]
    fn accepts_a_username_with_optional_scope_and_cookie() {
        let plain = parse_login(br#"{"username":"alice"}"#).unwrap();
        assert_eq!(plain.username, "alice");
        assert_eq!(plain.scope, None);
        assert!(!plain.cookie);
        let full =
            parse_login(br#"{"username":"alice","scope":["counter","counter"],"cookie":true}"#)
                .unwrap();
        assert_eq!(full.scope, Some(vec!["counter".to_owned()]));
        assert!(full.cookie);
    }

    #[test]
    fn refuses_bad_scopes_and_cookie_flags() {
        for body in [
            r#"{"username":"a","scope":[]}"#,
            r#"{"username":"a","scope":"counter"}"#,
            r#"{"username":"a","scope":[1]}"#,
            r#"{"username":"a","scope":["Counter"]}"#,
            r#"{"username":"a","scope":["../x"]}"#,
        ] {
            assert_eq!(code(body), "invalid_scope", "{body}");
        }
        assert_eq!(code(r#"{"username":"a","cookie":"yes"}"#), "invalid_body");
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
    fn a_pin_is_taken_within_ctaps_bounds_and_never_shown() {
        let login = parse_login(br#"{"username":"alice","pin":"4711-secret"}"#).unwrap();
        assert_eq!(login.pin.as_ref().unwrap().expose(), b"4711-secret");
        assert!(!format!("{login:?}").contains("4711"));
        assert!(parse_login(br#"{"username":"alice"}"#)
            .unwrap()
            .pin
            .is_none());
        for (body, why) in [
            (r#"{"username":"a","pin":"123"}"#.to_string(), "at least 4"),
            (
                format!(r#"{{"username":"a","pin":"{}"}}"#, "9".repeat(64)),
                "at most 63",
            ),
            (r#"{"username":"a","pin":1234}"#.to_string(), "not a string"),
            (r#"{"username":"a","pin":null}"#.to_string(), "null"),
            (r#"{"username":"a","pin":"12\u000034"}"#.to_string(), "NUL"),
        ] {
            let e = parse_login(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, "invalid_pin", "{body}");
            assert!(
                e.message.contains(why) && e.message.ends_with('.'),
                "{}",
                e.message
            );
            assert!(!e.message.contains("1234"), "{}", e.message);
        }
        // Four characters of two bytes each are a PIN; 63 bytes are too.
        assert!(parse_login("{\"username\":\"a\",\"pin\":\"äöüß\"}".as_bytes()).is_ok());
        let long = format!(r#"{{"username":"a","pin":"{}"}}"#, "9".repeat(63));
        assert!(parse_login(long.as_bytes()).is_ok());
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
