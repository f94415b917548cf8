//! Which k_proxy instances may call: `--allow-client NAME` matches the subject CN or a
//! DNS subjectAltName of the verified client certificate. Without the flag, any
//! certificate from the chain CA is accepted (the TLS handshake already checked it).

use std::fmt;

use anyhow::bail;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The names a client certificate presents: subject CNs, then DNS subjectAltNames.
pub fn certificate_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    Ok(names)
}

/// The `--allow-client` names (empty: every certificate from the CA).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    names: Vec<String>,
}

/// Why a peer was refused.
#[derive(Debug)]
pub enum PeerRefusal {
    /// No client certificate on the connection (plain HTTP cannot be allow-listed).
    NoCertificate,
    /// The certificate could not be parsed.
    Unreadable(String),
    /// None of the certificate's names is on the list.
    NotListed(Vec<String>),
}

impl fmt::Display for PeerRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerRefusal::NoCertificate => f.write_str("no client certificate"),
            PeerRefusal::Unreadable(e) => write!(f, "unreadable client certificate: {e}"),
            PeerRefusal::NotListed(names) => {
                write!(f, "certificate names [{}] not allowed", names.join(", "))
            }
        }
    }
}

impl AllowList {
    /// Checks every name: printable, no spaces at either end, at most 253 bytes.
    pub fn new(names: Vec<String>) -> anyhow::Result<Self> {
        for name in &names {
            if name.is_empty()
                || name.len() > 253
                || name.trim() != name
                || name.chars().any(char::is_control)
            {
                bail!(
                    "--allow-client {name:?} is not a certificate name; give the CN or a DNS name of k_proxy's certificate, e.g. --allow-client k_proxy"
                );
            }
        }
        Ok(Self { names })
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Ok when the list is empty or one of the certificate's names is on it (ASCII
    /// case-insensitive, as DNS names are). Returns the matching name.
    pub fn check(&self, cert: Option<&[u8]>) -> Result<Option<String>, PeerRefusal> {
        if self.names.is_empty() {
            return Ok(None);
        }
        let der = cert.ok_or(PeerRefusal::NoCertificate)?;
        let presented = certificate_names(der).map_err(PeerRefusal::Unreadable)?;
        match presented.iter().find(|name| {
            self.names
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(name))
        }) {
            Some(name) => Ok(Some(name.clone())),
            None => Err(PeerRefusal::NotListed(presented)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -subj /CN=proxy-a -addext subjectAltName=DNS:proxy-a.qube,DNS:localhost,IP:127.0.0.1`
    const PROXY_A: &str = include_str!("testdata/proxy-a.crt");

    fn der(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn names_are_the_cn_and_the_dns_sans() {
        assert_eq!(
            certificate_names(&der(PROXY_A)).unwrap(),
            vec!["proxy-a", "proxy-a.qube", "localhost"]
        );
    }

    #[test]
    fn allow_list_matches_cn_or_dns_san_case_insensitively() {
        let cert = der(PROXY_A);
        let empty = AllowList::default();
        assert!(matches!(empty.check(None), Ok(None)));
        assert!(matches!(empty.check(Some(&cert)), Ok(None)));

        for allowed in ["proxy-a", "PROXY-A.qube"] {
            let list = AllowList::new(vec!["other".into(), allowed.into()]).unwrap();
            assert!(list.check(Some(&cert)).unwrap().is_some(), "{allowed}");
        }
        let list = AllowList::new(vec!["proxy-b".into(), "127.0.0.1".into()]).unwrap();
        match list.check(Some(&cert)) {
            Err(PeerRefusal::NotListed(names)) => assert!(names.contains(&"proxy-a".into())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(list.check(None), Err(PeerRefusal::NoCertificate)));
        assert!(matches!(
            list.check(Some(b"garbage")),
            Err(PeerRefusal::Unreadable(_))
        ));
    }

    #[test]
    fn allow_list_refuses_odd_names() {
        for bad in ["", " k_proxy", "a\nb", &"a".repeat(254)] {
            assert!(AllowList::new(vec![bad.into()]).is_err(), "{bad:?}");
        }
    }
}
