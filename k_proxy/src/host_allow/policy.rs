//! Which hosts k_proxy answers to, and which port each may name. The policy:
//!
//! - `localhost`, `127.0.0.1` and `[::1]`, with **any** port. Behind `qvm-connect-tcp` a
//!   client connects to a forwarded port (`127.0.0.1:9771`) while k_proxy listens on
//!   another (8771), and the client's `Host` names the port it connected to. A loopback
//!   name cannot be rebound: DNS rebinding needs a name the attacker's DNS answers for.
//! - The `--host` listen address (unless it is `0.0.0.0` or `::`): any port if it is a
//!   loopback address, else only k_proxy's own port.
//! - With `--tls-certfile`: the certificate's subjectAltName DNS names and IP addresses
//!   (wildcards excepted), with k_proxy's own port (any port for loopback names).
//! - Each `--allowed-host NAME` (any port) or `NAME:PORT` (that port only).
//!
//! A `Host` without a port matches every entry of its name: the scheme's default port was
//! meant, and only a forwarder can have brought that to k_proxy.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use chromecard_tls::SubjectName;

use super::authority::{parse_origin, Authority, AuthorityError, HostName};

/// The port an allowed host may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    Any,
    Exactly(u16),
}

/// Why a host is on the list (for the start-up log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Loopback,
    Listen,
    Certificate,
    Flag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    host: HostName,
    port: PortRule,
    source: Source,
}

/// An `--allowed-host` value: a bare host name or IP address, optionally with `:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    host: HostName,
    port: Option<u16>,
}

impl FromStr for AllowedHost {
    type Err = AllowedHostError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains("://") || text.contains('/') || text.contains('@') {
            return Err(AllowedHostError::NotBare(text.to_owned()));
        }
        // A bare IPv6 address (`::1`) is accepted as the host alone.
        let parsed = match text.parse::<Ipv6Addr>() {
            Ok(ip) => Ok(Authority {
                host: HostName::Ip(IpAddr::V6(ip)),
                port: None,
            }),
            Err(_) => Authority::parse(text),
        };
        let authority = parsed.map_err(|source| AllowedHostError::Invalid {
            value: text.to_owned(),
            source,
        })?;
        Ok(Self {
            host: authority.host,
            port: authority.port,
        })
    }
}

/// Why an `--allowed-host` value was refused; clap prints it after the flag's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedHostError {
    #[error("{0:?} is a URL; give a bare host name or IP address with an optional :PORT, e.g. --allowed-host k-proxy.internal or --allowed-host 10.137.0.5:8771")]
    NotBare(String),
    #[error("{value:?}: {source}; give a bare host name or IP address with an optional :PORT, e.g. --allowed-host k-proxy.internal or --allowed-host [fd00::5]:8771")]
    Invalid {
        value: String,
        source: AuthorityError,
    },
}

/// The hosts k_proxy answers to (see the module documentation for the policy).
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    rules: Vec<Rule>,
    listen_port: u16,
    tls: bool,
}

impl AllowedHosts {
    /// The built-in loopback names and the listen address, for a listener on `listen`
    /// (TLS or not: the scheme an `Origin` must carry).
    pub fn new(listen: SocketAddr, tls: bool) -> Self {
        let mut hosts = Self {
            rules: Vec::new(),
            listen_port: listen.port(),
            tls,
        };
        for host in [
            HostName::Name("localhost".into()),
            HostName::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            HostName::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ] {
            hosts.add(host, PortRule::Any, Source::Loopback);
        }
        if !listen.ip().is_unspecified() {
            hosts.add_own(HostName::Ip(listen.ip()), Source::Listen);
        }
        hosts
    }

    /// Adds the names of k_proxy's certificate; wildcard names are skipped (and logged).
    pub fn with_certificate_names(mut self, names: impl IntoIterator<Item = SubjectName>) -> Self {
        for name in names {
            let host = match name {
                SubjectName::Ip(ip) => HostName::Ip(ip),
                SubjectName::Dns(dns) => match HostName::parse(&dns) {
                    Ok(host) => host,
                    Err(_) => {
                        tracing::info!(name = %dns, "certificate name not added to the allowed hosts (a wildcard or not a host name); name it with --allowed-host");
                        continue;
                    }
                },
            };
            self.add_own(host, Source::Certificate);
        }
        self
    }

    /// Adds the `--allowed-host` values.
    pub fn with_flags<'a>(mut self, hosts: impl IntoIterator<Item = &'a AllowedHost>) -> Self {
        for allowed in hosts {
            let port = allowed.port.map_or(PortRule::Any, PortRule::Exactly);
            self.add(allowed.host.clone(), port, Source::Flag);
        }
        self
    }

    /// A name of k_proxy's own: any port if loopback, else k_proxy's port.
    fn add_own(&mut self, host: HostName, source: Source) {
        let port = if host.is_loopback() {
            PortRule::Any
        } else {
            PortRule::Exactly(self.listen_port)
        };
        self.add(host, port, source);
    }

    fn add(&mut self, host: HostName, port: PortRule, source: Source) {
        let rule = Rule { host, port, source };
        if !self
            .rules
            .iter()
            .any(|r| r.host == rule.host && r.port == rule.port)
        {
            self.rules.push(rule);
        }
    }

    /// Whether a request addressed to `authority` is for this k_proxy.
    pub fn admits(&self, authority: &Authority) -> bool {
        self.rules.iter().any(|rule| {
            rule.host == authority.host
                && match (rule.port, authority.port) {
                    (PortRule::Any, _) | (PortRule::Exactly(_), None) => true,
                    (PortRule::Exactly(allowed), Some(port)) => allowed == port,
                }
        })
    }

    /// The CSRF check's question: does `origin` name this k_proxy? Its scheme must be the
    /// listener's, its host allowed, and — when the request named its host (`addressed`) —
    /// it must be that same host and port: loopback names admit any port, and a page served
    /// on another local port is another origin.
    pub fn allows_origin(&self, origin: &str, addressed: Option<&Authority>) -> bool {
        let Some((scheme, origin)) = parse_origin(origin) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(self.scheme()) || !self.admits(&origin) {
            return false;
        }
        let default_port = if self.tls { 443 } else { 80 };
        addressed.is_none_or(|addressed| {
            addressed.host == origin.host
                && addressed.port.unwrap_or(default_port) == origin.port.unwrap_or(default_port)
        })
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

/// For the start-up log: `localhost:*, 127.0.0.1:*, k_proxy:8771, ...`.
impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match rule.port {
                PortRule::Any => write!(f, "{}:*", rule.host)?,
                PortRule::Exactly(port) => write!(f, "{}:{port}", rule.host)?,
            }
            if rule.source == Source::Flag {
                f.write_str(" (--allowed-host)")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(text: &str) -> Authority {
        Authority::parse(text).unwrap()
    }

    fn plain_8770() -> AllowedHosts {
        AllowedHosts::new("127.0.0.1:8770".parse().unwrap(), false)
    }

    #[test]
    fn loopback_names_admit_any_port() {
        let hosts = plain_8770();
        for ok in [
            "127.0.0.1:8770",
            "127.0.0.1:9771",
            "127.0.0.1",
            "localhost:8770",
            "LOCALHOST.:9771",
            "localhost",
            "[::1]:8770",
            "[0:0::1]:1",
        ] {
            assert!(hosts.admits(&authority(ok)), "{ok}");
        }
    }

    #[test]
    fn foreign_names_are_refused() {
        let hosts = plain_8770();
        for refused in [
            "attacker.example:8770",
            "attacker.example",
            "localhost.attacker.example:8770",
            "127.0.0.2:8770",
            "0.0.0.0:8770",
            "[::ffff:127.0.0.1]:8770",
            "k_proxy:8770",
        ] {
            assert!(!hosts.admits(&authority(refused)), "{refused}");
        }
    }

    #[test]
    fn non_loopback_own_names_need_the_listen_port() {
        let hosts = AllowedHosts::new("10.137.0.5:8771".parse().unwrap(), true)
            .with_certificate_names([
                SubjectName::Dns("k_proxy".into()),
                SubjectName::Dns("localhost".into()),
                SubjectName::Dns("*.wild.example".into()),
                SubjectName::Ip("10.137.0.9".parse().unwrap()),
            ]);
        for ok in [
            "10.137.0.5:8771",
            "10.137.0.5",
            "K_Proxy:8771",
            "k_proxy.",
            "10.137.0.9:8771",
            "localhost:9771",
        ] {
            assert!(hosts.admits(&authority(ok)), "{ok}");
        }
        for refused in [
            "10.137.0.5:9771",
            "k_proxy:9771",
            "10.137.0.9:1",
            "a.wild.example:8771",
            "*.wild.example",
        ] {
            assert!(
                Authority::parse(refused).map_or(true, |a| !hosts.admits(&a)),
                "{refused}"
            );
        }
    }

    #[test]
    fn an_unspecified_listen_address_is_not_a_host() {
        let hosts = AllowedHosts::new("0.0.0.0:8770".parse().unwrap(), false);
        assert!(!hosts.admits(&authority("0.0.0.0:8770")));
        assert!(hosts.admits(&authority("127.0.0.1:8770")));
    }

    #[test]
    fn flag_values() {
        let flags: Vec<AllowedHost> = ["Proxy.Example.", "10.1.2.3:8443", "::1", "[fd00::5]:99"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let hosts = plain_8770().with_flags(&flags);
        for ok in [
            "proxy.example:1",
            "proxy.example",
            "10.1.2.3:8443",
            "10.1.2.3",
            "[fd00::5]:99",
        ] {
            assert!(hosts.admits(&authority(ok)), "{ok}");
        }
        for refused in ["10.1.2.3:8770", "[fd00::5]:8770", "example:1"] {
            assert!(!hosts.admits(&authority(refused)), "{refused}");
        }
        assert_eq!(
            hosts.to_string(),
            "localhost:*, 127.0.0.1:*, [::1]:*, proxy.example:* (--allowed-host), \
             10.1.2.3:8443 (--allowed-host), [fd00::5]:99 (--allowed-host)"
        );
    }

    #[test]
    fn bad_flag_values_say_how_to_fix_them() {
        for bad in [
            "http://proxy.example",
            "proxy.example/x",
            "user@proxy.example",
        ] {
            let err = bad.parse::<AllowedHost>().unwrap_err();
            assert!(matches!(err, AllowedHostError::NotBare(_)), "{bad}");
        }
        for bad in [
            "",
            "a b",
            "proxy.example:0",
            "proxy.example:http",
            "*.example",
            "[::1",
        ] {
            let err = bad.parse::<AllowedHost>().unwrap_err();
            assert!(matches!(err, AllowedHostError::Invalid { .. }), "{bad}");
            assert!(err.to_string().contains("--allowed-host"), "{err}");
        }
    }

    #[test]
    fn origins_must_be_allowed_with_the_listener_scheme_and_the_addressed_host() {
        let hosts = plain_8770();
        let addressed = authority("127.0.0.1:9771");
        assert!(hosts.allows_origin("http://127.0.0.1:9771", Some(&addressed)));
        assert!(hosts.allows_origin("HTTP://127.0.0.1:9771", Some(&addressed)));
        // Another scheme, another local port (another origin), or a foreign name.
        assert!(!hosts.allows_origin("https://127.0.0.1:9771", Some(&addressed)));
        assert!(!hosts.allows_origin("http://127.0.0.1:80", Some(&addressed)));
        assert!(!hosts.allows_origin("http://localhost:9771", Some(&addressed)));
        assert!(!hosts.allows_origin("http://attacker.example:9771", Some(&addressed)));
        assert!(!hosts.allows_origin("null", Some(&addressed)));
        // The rebinding pair: Host and Origin agree, and neither is ours.
        let rebound = authority("attacker.example:8770");
        assert!(!hosts.allows_origin("http://attacker.example:8770", Some(&rebound)));
        // Default ports are the same port written or not.
        let tls = AllowedHosts::new("127.0.0.1:443".parse().unwrap(), true);
        assert!(tls.allows_origin("https://localhost", Some(&authority("localhost:443"))));
        // No Host (HTTP/1.0): the allow-list alone decides.
        assert!(hosts.allows_origin("http://localhost:8770", None));
        assert!(!hosts.allows_origin("http://attacker.example:8770", None));
    }
}
