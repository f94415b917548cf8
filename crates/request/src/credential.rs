//! Taking the client's credential: `Authorization: Bearer <token>` (RFC 6750), or for
//! browsers the session cookie, which must pass a CSRF check on state-changing requests.

use chromecard_http::ApiError;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "chromecard_session";
/// Header a browser client must send with state-changing cookie requests. A cross-site
/// page cannot add it without a CORS preflight, which k_proxy never grants.
pub const CSRF_HEADER: &str = "x-chromecard-csrf";

/// Where the token came from: the answer to a cookie request refreshes or clears the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    Bearer,
    Cookie,
}

/// The token as the client presented it, and how.
#[derive(Debug, Clone, Copy)]
pub struct Credential<'a> {
    pub token: &'a str,
    pub source: CredentialSource,
}

/// Whether a browser's `Origin` header names this server. The server answers from what it
/// knows about itself (k_proxy: its Host allow-list and its listener's scheme), never from
/// the request's own `Host`: a DNS-rebinding page chooses both, and they then agree.
pub trait OriginPolicy {
    /// `origin` is the header's text, e.g. `https://127.0.0.1:8771`.
    fn allows(&self, origin: &str) -> bool;
}

impl<F: Fn(&str) -> bool> OriginPolicy for F {
    fn allows(&self, origin: &str) -> bool {
        self(origin)
    }
}

/// The Bearer header if there is one, else the session cookie, CSRF-checked: on a
/// state-changing request, an `Origin` it carries must satisfy `origins`.
pub fn take_credential<'a>(
    headers: &'a HeaderMap,
    method: &Method,
    origins: &dyn OriginPolicy,
) -> Result<Credential<'a>, ApiError> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Ok(Credential {
            token: bearer_token(headers)?,
            source: CredentialSource::Bearer,
        });
    }
    match session_cookie(headers)? {
        Some(token) => {
            check_csrf(headers, method, origins)?;
            Ok(Credential {
                token,
                source: CredentialSource::Cookie,
            })
        }
        None => bearer_token(headers).map(|token| Credential {
            token,
            source: CredentialSource::Bearer,
        }),
    }
}

/// The session cookie's value, if sent. Two copies are refused: a sibling site may have
/// planted one (cookie tossing), and we cannot tell which is ours.
///
/// Read as bytes: a browser sends every cookie of the host in one header, whatever port
/// set it, and another application's cookie with UTF-8 in its value must not hide ours.
fn session_cookie(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        for pair in value.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (name, token) = (&pair[..eq], &pair[eq + 1..]);
            if name == SESSION_COOKIE.as_bytes() {
                if found.is_some() {
                    return Err(ApiError::unauthorized(
                        "malformed_cookie",
                        "The session cookie was sent more than once; clear this site's cookies and log in again.",
                    ));
                }
                // Ours is plain ASCII (a b64token); anything else was not set by us.
                let token = std::str::from_utf8(token)
                    .ok()
                    .filter(|token| token.is_ascii())
                    .ok_or_else(|| {
                        ApiError::unauthorized(
                            "malformed_cookie",
                            "The session cookie is not one k_proxy set; clear this site's cookies and log in again.",
                        )
                    })?;
                found = Some(token);
            }
        }
    }
    Ok(found)
}

/// Cookie-authenticated requests that change state must come from our own origin.
fn check_csrf(
    headers: &HeaderMap,
    method: &Method,
    origins: &dyn OriginPolicy,
) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let refuse = |why: &str| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_check_failed",
            format!("A cookie-authenticated {method} request was refused: {why}."),
        ))
    };
    if headers.get(CSRF_HEADER).is_none() {
        return refuse("send the X-Chromecard-CSRF: 1 header with state-changing requests");
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return refuse("it came from another site");
        }
    }
    for origin in headers.get_all(header::ORIGIN) {
        let ours = origin.to_str().is_ok_and(|origin| origins.allows(origin));
        if !ours {
            return refuse("its Origin is not this server");
        }
    }
    Ok(())
}

/// `Set-Cookie` for a new token: a session cookie (no Expires), HttpOnly, SameSite=Strict,
/// Path=/, and Secure when the client connection is TLS.
pub fn set_session_cookie(token: &str, tls: bool) -> Option<HeaderValue> {
    let secure = if tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_session_cookie(tls: bool) -> HeaderValue {
    let value = if tls {
        "chromecard_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
    } else {
        "chromecard_session=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
    };
    HeaderValue::from_static(value)
}

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

    fn with(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn cookie_is_accepted_for_reads_and_csrf_checked_for_writes() {
        fn take<'a>(headers: &'a HeaderMap, method: &Method) -> Result<Credential<'a>, ApiError> {
            take_credential(headers, method, &|origin: &str| {
                origin == "https://127.0.0.1:8771"
            })
        }
        let cookie = ("cookie", "theme=dark; chromecard_session=abc");
        let read = with(&[cookie]);
        let credential = take(&read, &Method::GET).unwrap();
        assert_eq!(credential.token, "abc");
        assert_eq!(credential.source, CredentialSource::Cookie);

        let err = take(&read, &Method::POST).unwrap_err();
        assert_eq!(
            (err.status, err.code),
            (StatusCode::FORBIDDEN, "csrf_check_failed")
        );

        let same_site = with(&[
            cookie,
            ("x-chromecard-csrf", "1"),
            ("host", "127.0.0.1:8771"),
            ("origin", "https://127.0.0.1:8771"),
        ]);
        assert!(take(&same_site, &Method::POST).is_ok());

        let cross_origin = with(&[
            cookie,
            ("x-chromecard-csrf", "1"),
            ("host", "127.0.0.1:8771"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            take(&cross_origin, &Method::POST).unwrap_err().code,
            "csrf_check_failed"
        );

        // A DNS-rebinding page chooses both Host and Origin, so they agree: not enough.
        let rebound = with(&[
            cookie,
            ("x-chromecard-csrf", "1"),
            ("host", "attacker.example:8771"),
            ("origin", "https://attacker.example:8771"),
        ]);
        assert_eq!(
            take(&rebound, &Method::POST).unwrap_err().code,
            "csrf_check_failed"
        );
        let two_origins = with(&[
            cookie,
            ("x-chromecard-csrf", "1"),
            ("origin", "https://127.0.0.1:8771"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            take(&two_origins, &Method::POST).unwrap_err().code,
            "csrf_check_failed"
        );

        let cross_site = with(&[
            cookie,
            ("x-chromecard-csrf", "1"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(
            take(&cross_site, &Method::POST).unwrap_err().code,
            "csrf_check_failed"
        );
    }

    /// Another application on the same host (any port) may set a cookie with UTF-8 in it;
    /// the browser sends it in the same header as ours, which must still be found.
    #[test]
    fn a_neighbour_cookie_with_utf8_does_not_hide_ours() {
        let no_origin = |_: &str| false;
        let mut map = HeaderMap::new();
        map.append(
            header::COOKIE,
            HeaderValue::from_bytes("y=\u{e9}; chromecard_session=abc; z=\u{c3}".as_bytes())
                .unwrap(),
        );
        let credential = take_credential(&map, &Method::GET, &no_origin).unwrap();
        assert_eq!(
            (credential.token, credential.source),
            ("abc", CredentialSource::Cookie)
        );
        // Our own cookie with such bytes was not set by k_proxy.
        let mut ours = HeaderMap::new();
        ours.append(
            header::COOKIE,
            HeaderValue::from_bytes("chromecard_session=a\u{e9}".as_bytes()).unwrap(),
        );
        assert_eq!(
            take_credential(&ours, &Method::GET, &no_origin)
                .unwrap_err()
                .code,
            "malformed_cookie"
        );
    }

    #[test]
    fn bearer_wins_and_duplicate_cookies_are_refused() {
        let no_origin = |_: &str| false;
        let both = with(&[
            ("authorization", "Bearer tok"),
            ("cookie", "chromecard_session=abc"),
        ]);
        let credential = take_credential(&both, &Method::POST, &no_origin).unwrap();
        assert_eq!(
            (credential.token, credential.source),
            ("tok", CredentialSource::Bearer)
        );
        let twice = with(&[("cookie", "chromecard_session=a; chromecard_session=b")]);
        assert_eq!(
            take_credential(&twice, &Method::GET, &no_origin)
                .unwrap_err()
                .code,
            "malformed_cookie"
        );
        assert_eq!(
            take_credential(&HeaderMap::new(), &Method::GET, &no_origin)
                .unwrap_err()
                .code,
            "missing_token"
        );
    }

    #[test]
    fn cookie_attributes_are_exact() {
        assert_eq!(
            set_session_cookie("abc", true).unwrap(),
            "chromecard_session=abc; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert_eq!(
            set_session_cookie("abc", false).unwrap(),
            "chromecard_session=abc; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(clear_session_cookie(true)
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
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
