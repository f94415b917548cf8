//! The `Host` allow-list: k_proxy answers only requests addressed to a host it serves.
//!
//! Why: DNS rebinding. A web page at `http://attacker.example:8770/` (opened in a browser
//! in the same qube as k_proxy, or in k_client with the port forwarded) has its name
//! re-pointed at 127.0.0.1 after it loaded. Its scripts are then *same-origin* with
//! k_proxy as far as the browser knows: they could log in (`"cookie": true`), read the
//! token and every `/resource/*` answer, with no CORS preflight and no cross-site cookie
//! rules in the way. The one thing such a request cannot hide is its `Host:
//! attacker.example:8770`, so k_proxy refuses every host it does not serve with **421
//! Misdirected Request** before routing. The session cookie's CSRF check likewise asks
//! this list, never the request's own `Host` (which the attacker chose, along with the
//! matching `Origin`).
//!
//! `/healthz` and `/readyz` stay reachable by any name: they carry no session and no
//! secret, and health probes should not depend on which name they use.
//!
//! Which hosts are allowed is [`policy`]; reading a host and port is [`authority`]; this
//! file is the HTTP side: which authority a request was addressed to, and the refusals.

pub mod authority;
pub mod policy;

use chromecard_http::ApiError;
use http::{header, HeaderMap, StatusCode, Uri, Version};

pub use authority::Authority;
pub use policy::{AllowedHost, AllowedHosts};

use authority::AuthorityError;

/// Why a request was refused before routing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostRefusal {
    #[error("an HTTP/1.1 request without a Host header")]
    Missing,
    #[error("more than one Host header")]
    Duplicate,
    #[error("a malformed Host: {0}")]
    Malformed(AuthorityError),
    #[error("the host {0} is not on the allow-list")]
    NotAllowed(Authority),
}

impl HostRefusal {
    /// The error code the client sees (and the metric's label).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_host",
            Self::Duplicate | Self::Malformed(_) => "invalid_host",
            Self::NotAllowed(_) => "host_not_allowed",
        }
    }

    /// 421 for a host k_proxy does not serve, 400 for a missing or malformed one. The
    /// client's host is not echoed back.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            Self::NotAllowed(_) => ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                self.code(),
                "This k_proxy does not answer to that host name (a guard against DNS rebinding); use 127.0.0.1 or localhost, a name in its certificate, or start k_proxy with --allowed-host NAME.",
            ),
            Self::Missing => ApiError::bad_request(
                self.code(),
                "An HTTP/1.1 request must carry a Host header naming k_proxy, e.g. Host: 127.0.0.1:8770.",
            ),
            Self::Duplicate | Self::Malformed(_) => ApiError::bad_request(
                self.code(),
                "The request must carry exactly one well-formed Host header (host or host:port).",
            ),
        }
    }
}

/// The authority a request was addressed to: the request target's authority when it is in
/// absolute form (`POST http://127.0.0.1:8770/session/login HTTP/1.1`: RFC 9112 §3.2.2
/// says the server then uses it and ignores `Host`), else the one `Host` header. `None`
/// only for HTTP/1.0 and older without either: no browser sends that, so there is no name
/// to rebind, and such a request is taken as addressed to the listener.
pub fn addressed_authority(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, HostRefusal> {
    if let Some(authority) = uri.authority() {
        return Authority::parse(authority.as_str())
            .map(Some)
            .map_err(HostRefusal::Malformed);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(HostRefusal::Duplicate),
        (Some(host), None) => {
            let text = host
                .to_str()
                .map_err(|_| HostRefusal::Malformed(AuthorityError::BadHost))?;
            Authority::parse(text)
                .map(Some)
                .map_err(HostRefusal::Malformed)
        }
        (None, _) if version <= Version::HTTP_10 => Ok(None),
        (None, _) => Err(HostRefusal::Missing),
    }
}

/// Admits a request addressed to an allowed host; returns that authority for the CSRF
/// check's Origin comparison.
pub fn admit(
    hosts: &AllowedHosts,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Authority>, HostRefusal> {
    let addressed = addressed_authority(version, uri, headers)?;
    match addressed {
        Some(authority) if !hosts.admits(&authority) => Err(HostRefusal::NotAllowed(authority)),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn hosts() -> AllowedHosts {
        AllowedHosts::new("127.0.0.1:8770".parse().unwrap(), false)
            .with_flags(&["proxy.example".parse::<AllowedHost>().unwrap()])
    }

    fn headers(hosts: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for host in hosts {
            map.append(header::HOST, HeaderValue::from_static(host));
        }
        map
    }

    fn check(version: Version, uri: &str, host: &[&'static str]) -> Result<(), &'static str> {
        let uri: Uri = uri.parse().unwrap();
        admit(&hosts(), version, &uri, &headers(host))
            .map(|_| ())
            .map_err(|refusal| refusal.code())
    }

    #[test]
    fn host_header() {
        let v11 = Version::HTTP_11;
        assert_eq!(check(v11, "/session/login", &["127.0.0.1:8770"]), Ok(()));
        assert_eq!(check(v11, "/session/login", &["127.0.0.1:9771"]), Ok(()));
        assert_eq!(check(v11, "/session/login", &["proxy.example:1"]), Ok(()));
        assert_eq!(
            check(v11, "/session/login", &["attacker.example:8770"]),
            Err("host_not_allowed")
        );
        assert_eq!(check(v11, "/session/login", &[]), Err("missing_host"));
        assert_eq!(
            check(v11, "/", &["127.0.0.1:8770", "127.0.0.1:8770"]),
            Err("invalid_host")
        );
        assert_eq!(check(v11, "/", &["127.0.0.1:8770/x"]), Err("invalid_host"));
        assert_eq!(check(v11, "/", &[""]), Err("invalid_host"));
    }

    #[test]
    fn http_1_0_may_omit_host() {
        assert_eq!(check(Version::HTTP_10, "/session/status", &[]), Ok(()));
        assert_eq!(
            check(Version::HTTP_10, "/", &["attacker.example"]),
            Err("host_not_allowed")
        );
    }

    #[test]
    fn the_absolute_form_authority_wins_over_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            check(
                v11,
                "http://127.0.0.1:8770/session/login",
                &["attacker.example"]
            ),
            Ok(())
        );
        assert_eq!(
            check(
                v11,
                "http://attacker.example:8770/session/login",
                &["127.0.0.1:8770"]
            ),
            Err("host_not_allowed")
        );
        assert_eq!(
            check(v11, "http://attacker.example:8770/session/login", &[]),
            Err("host_not_allowed")
        );
        assert_eq!(check(v11, "http://localhost/x", &[]), Ok(()));
        assert_eq!(
            check(v11, "http://user@localhost/x", &[]),
            Err("invalid_host")
        );
    }

    #[test]
    fn refusals_are_json_errors_with_their_status() {
        let err = HostRefusal::NotAllowed(Authority::parse("a.example").unwrap()).to_api_error();
        assert_eq!((err.status.as_u16(), err.code), (421, "host_not_allowed"));
        assert!(err.message.contains("--allowed-host"));
        assert!(!err.message.contains("a.example"));
        assert_eq!(HostRefusal::Missing.to_api_error().status, 400);
    }
}
