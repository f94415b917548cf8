//! Taking the client's credential: `Authorization: Bearer <token>` (RFC 6750).

use chromecard_http::ApiError;
use http::{header, HeaderMap};

/// The token text as the client presented it. Syntax only: whether it is a live session
/// is the session store's question.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => {
            return Err(ApiError::unauthorized(
                "missing_token",
                "This endpoint needs a session: send Authorization: Bearer <session_token> from POST /session/login.",
            ))
        }
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Err(malformed("more than one Authorization header was sent")),
    };
    let value = value
        .to_str()
        .map_err(|_| malformed("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| malformed("expected \"Bearer <token>\""))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("only the Bearer scheme is accepted"));
    }
    let token = token.trim_start_matches(' ');
    if !is_b64token(token) {
        return Err(malformed(
            "the bearer token is empty or has characters a token cannot have",
        ));
    }
    Ok(token)
}

fn malformed(why: &str) -> ApiError {
    ApiError::unauthorized(
        "malformed_authorization",
        format!("The Authorization header is malformed: {why}."),
    )
}

/// RFC 6750's b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn code(values: &[&str]) -> &'static str {
        bearer_token(&headers(values)).unwrap_err().code
    }

    #[test]
    fn takes_the_token() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc-DEF_123"])).unwrap(),
            "abc-DEF_123"
        );
        assert_eq!(bearer_token(&headers(&["bearer abc"])).unwrap(), "abc");
    }

    #[test]
    fn tells_missing_from_malformed() {
        assert_eq!(code(&[]), "missing_token");
        for bad in [
            "Basic YWxpY2U6eA==",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\"b",
            "Token abc",
            "Bearer ====",
        ] {
            assert_eq!(code(&[bad]), "malformed_authorization", "{bad:?}");
        }
        assert_eq!(code(&["Bearer a", "Bearer b"]), "malformed_authorization");
    }
}
