//! Phase 5b, rewrite: what of a client's request may reach k_server, and what of
//! k_server's answer may reach the client. The client's credential and any identity
//! header (`X-Chromecard-*`, `X-Proxy-Token`, `X-Forwarded-*`) never cross; hop-by-hop
//! headers never cross a proxy in either direction. upstream.rs then adds what only
//! k_proxy may set (the proxy token, the user, k_server's Host).

use chromecard_hop::{OWN_HEADER_PREFIX, PROXY_TOKEN_HEADER};
use http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The headers that `Connection` names: hop-by-hop too. Usually none (no allocation).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        // Bytes, not `to_str`: one non-ASCII byte in the value must not make us skip the
        // whole list and forward the headers it names.
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect()
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually there is none (and then no `Connection` naming others): one pass over the
    // few headers instead of a lookup for each of the eight names.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named = connection_named(headers);
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// Whether a client's request header may reach k_server (hop-by-hop headers aside).
fn forwardable(name: &HeaderName) -> bool {
    const DROPPED: [HeaderName; 6] = [
        header::AUTHORIZATION,
        header::COOKIE,
        header::HOST,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::FORWARDED,
    ];
    if HOP_BY_HOP.contains(name) || DROPPED.contains(name) {
        return false;
    }
    let name = name.as_str();
    name != PROXY_TOKEN_HEADER
        && !name.starts_with(OWN_HEADER_PREFIX)
        && !name.starts_with("x-forwarded-")
}

/// The client's headers as k_server may see them: without the client's credential, without
/// hop-by-hop headers, and without any header k_proxy alone may set.
///
/// Built by copying only what may cross, rather than cloning the whole map and removing
/// from it: a request with nothing to forward (the common case) allocates nothing here.
pub fn rewrite_request_headers(client: &HeaderMap) -> HeaderMap {
    let named = connection_named(client);
    let mut headers = HeaderMap::new();
    for (name, value) in client {
        if forwardable(name) && !named.contains(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn client_credentials_and_identity_never_cross() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer secret"),
            ("cookie", "session=secret"),
            ("x-proxy-token", "forged"),
            ("x-chromecard-user", "mallory"),
            ("x-chromecard-anything", "x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("host", "evil"),
            ("accept", "application/json"),
            ("content-type", "application/json"),
        ] {
            client.append(name, HeaderValue::from_static(value));
        }
        let forwarded = rewrite_request_headers(&client);
        let names: Vec<&str> = forwarded.keys().map(|n| n.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(forwarded.contains_key("accept"));
        assert!(forwarded.contains_key("content-type"));
    }

    #[test]
    fn headers_named_in_connection_are_dropped_even_beside_non_ascii_bytes() {
        let mut client = HeaderMap::new();
        client.append(
            "connection",
            HeaderValue::from_bytes(b"x-hop, \x80junk").unwrap(),
        );
        client.append("x-hop", HeaderValue::from_static("v"));
        client.append("accept", HeaderValue::from_static("*/*"));
        let forwarded = rewrite_request_headers(&client);
        assert!(!forwarded.contains_key("x-hop"), "{forwarded:?}");
        assert!(forwarded.contains_key("accept"));
    }

    #[test]
    fn hop_by_hop_headers_are_stripped_from_answers() {
        let mut answer = HeaderMap::new();
        answer.append("content-type", HeaderValue::from_static("application/json"));
        answer.append("x-kept", HeaderValue::from_static("1"));
        let untouched = answer.clone();
        strip_hop_by_hop(&mut answer);
        assert_eq!(answer, untouched);
        answer.append("connection", HeaderValue::from_static("close, x-named"));
        answer.append("x-named", HeaderValue::from_static("1"));
        answer.append("transfer-encoding", HeaderValue::from_static("chunked"));
        answer.append("keep-alive", HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut answer);
        assert_eq!(answer, untouched);
    }

    #[test]
    fn repeated_headers_cross_in_order() {
        let mut client = HeaderMap::new();
        client.append("accept", HeaderValue::from_static("text/plain"));
        client.append("x-trace", HeaderValue::from_static("1"));
        client.append("accept", HeaderValue::from_static("application/json"));
        let forwarded = rewrite_request_headers(&client);
        let accept: Vec<_> = forwarded.get_all("accept").iter().collect();
        assert_eq!(accept, ["text/plain", "application/json"]);
        assert_eq!(forwarded.len(), 3);
    }
}
