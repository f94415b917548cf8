//! Reading a host and optional port — from a `Host` header, a request URI's authority, an
//! `Origin`, a certificate name or an `--allowed-host` value — into one comparable form:
//! lower case, without a trailing dot, IP addresses parsed (so `[::1]` and
//! `[0:0::1]` are one address). Pure text handling; which hosts are allowed is policy.rs.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// Longest DNS name (RFC 1035); anything longer is not a host.
const MAX_NAME: usize = 253;

/// A host as a client may name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostName {
    /// A registered name, lower case, no trailing dot.
    Name(String),
    Ip(IpAddr),
}

impl HostName {
    /// Parses a bare host: a DNS-style name (letters, digits, `-`, `_`, `.`; one trailing
    /// dot ignored), an IPv4 address, or an IPv6 address with or without brackets.
    pub fn parse(text: &str) -> Result<Self, AuthorityError> {
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(AuthorityError::BadHost)?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Self::Ip(IpAddr::V6(ip)))
                .map_err(|_| AuthorityError::BadHost);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let name = text.strip_suffix('.').unwrap_or(text);
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !name.split('.').any(str::is_empty);
        if !valid {
            return Err(AuthorityError::BadHost);
        }
        Ok(Self::Name(name.to_ascii_lowercase()))
    }

    pub fn is_loopback(&self) -> bool {
        match self {
            Self::Name(name) => name == "localhost",
            Self::Ip(ip) => ip.is_loopback(),
        }
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// `host[:port]`, as in `Host` (RFC 9110 §7.2) without userinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: HostName,
    /// None when the text names no port (the scheme's default then applies).
    pub port: Option<u16>,
}

impl Authority {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`. An empty port (`host:`) is no
    /// port, as RFC 3986 allows. Userinfo, paths and anything else are refused.
    pub fn parse(text: &str) -> Result<Self, AuthorityError> {
        let (host, port) = if text.starts_with('[') {
            match text.find(']') {
                Some(end) => {
                    let (host, rest) = text.split_at(end + 1);
                    match rest.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None if rest.is_empty() => (host, None),
                        None => return Err(AuthorityError::BadHost),
                    }
                }
                None => return Err(AuthorityError::BadHost),
            }
        } else {
            match text.rsplit_once(':') {
                // An unbracketed IPv6 address cannot carry a port.
                Some((host, _)) if host.contains(':') => return Err(AuthorityError::BadHost),
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        let port = match port {
            None | Some("") => None,
            Some(port) => Some(parse_port(port)?),
        };
        Ok(Self {
            host: HostName::parse(host)?,
            port,
        })
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

fn parse_port(text: &str) -> Result<u16, AuthorityError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthorityError::BadPort);
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(AuthorityError::BadPort),
        Ok(port) => Ok(port),
    }
}

/// Why a text is not a host with an optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("not a host name or IP address (letters, digits, '-', '_' and '.'; IPv6 in brackets)")]
    BadHost,
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
}

/// An `Origin` header (RFC 6454 §7): `scheme://host[:port]`; `null` and anything with a
/// path or userinfo is `None`.
pub fn parse_origin(text: &str) -> Option<(&str, Authority)> {
    let (scheme, authority) = text.split_once("://")?;
    Some((scheme, Authority::parse(authority).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn name(n: &str) -> HostName {
        HostName::Name(n.into())
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(HostName::parse("LocalHost."), Ok(name("localhost")));
        assert_eq!(HostName::parse("k_proxy"), Ok(name("k_proxy")));
        assert_eq!(
            HostName::parse("127.0.0.1"),
            Ok(HostName::Ip(Ipv4Addr::LOCALHOST.into()))
        );
        assert_eq!(
            HostName::parse("[0:0::1]"),
            Ok(HostName::Ip(Ipv6Addr::LOCALHOST.into()))
        );
        assert_eq!(
            HostName::parse("::1"),
            Ok(HostName::Ip(Ipv6Addr::LOCALHOST.into()))
        );
        for bad in [
            "",
            ".",
            "a..b",
            "a b",
            "http://a",
            "a/b",
            "user@a",
            "[::1",
            "[nope]",
            "é.example",
            "a%2eb",
            "*.example",
        ] {
            assert_eq!(
                HostName::parse(bad),
                Err(AuthorityError::BadHost),
                "{bad:?}"
            );
        }
        assert!(HostName::parse(&"a".repeat(254)).is_err());
    }

    #[test]
    fn authorities() {
        let parse = |t| Authority::parse(t);
        assert_eq!(
            parse("Attacker.Example.:8770"),
            Ok(Authority {
                host: name("attacker.example"),
                port: Some(8770)
            })
        );
        assert_eq!(
            parse("[::1]:9771"),
            Ok(Authority {
                host: HostName::Ip(Ipv6Addr::LOCALHOST.into()),
                port: Some(9771)
            })
        );
        assert_eq!(parse("localhost:").map(|a| a.port), Ok(None));
        assert_eq!(parse("[::1]").map(|a| a.port), Ok(None));
        assert_eq!(parse("a:0"), Err(AuthorityError::BadPort));
        assert_eq!(parse("a:65536"), Err(AuthorityError::BadPort));
        assert_eq!(parse("a:+80"), Err(AuthorityError::BadPort));
        assert_eq!(parse("a:080080"), Err(AuthorityError::BadPort));
        assert_eq!(parse("::1:80"), Err(AuthorityError::BadHost));
        assert_eq!(parse("[::1]x"), Err(AuthorityError::BadHost));
        assert_eq!(parse("u@a:80"), Err(AuthorityError::BadHost));
        assert_eq!(parse("a:80/x"), Err(AuthorityError::BadPort));
        assert_eq!(
            parse("127.0.0.1:8770").unwrap().to_string(),
            "127.0.0.1:8770"
        );
        assert_eq!(parse("[::1]:1").unwrap().to_string(), "[::1]:1");
    }

    #[test]
    fn origins() {
        let (scheme, authority) = parse_origin("https://127.0.0.1:8771").unwrap();
        assert_eq!((scheme, authority.port), ("https", Some(8771)));
        assert!(parse_origin("null").is_none());
        assert!(parse_origin("https://a/b").is_none());
        assert!(parse_origin("https://").is_none());
    }
}
