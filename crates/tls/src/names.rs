//! The names a server certificate answers to: its subjectAltName DNS names and IP
//! addresses. k_proxy admits requests addressed to these names (its Host allow-list), so a
//! client may reach it by any name its certificate was made for.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{load_certs, TlsError};

/// One subjectAltName entry a client could address the server by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectName {
    /// A DNS name as written in the certificate (may be a wildcard such as `*.example`).
    Dns(String),
    Ip(IpAddr),
}

/// The DNS names and IP addresses in the subjectAltName of the first (leaf) certificate of
/// `path`, in certificate order. Other entry kinds (e-mail, URI, ...) are skipped; a
/// certificate without the extension gives an empty list.
pub fn certificate_names(path: &Path) -> Result<Vec<SubjectName>, TlsError> {
    let certs = load_certs(path)?;
    let Some(leaf) = certs.first() else {
        return Ok(Vec::new());
    };
    let x509_error = |detail: String| TlsError::X509 {
        path: path.to_owned(),
        index: 1,
        detail,
    };
    let (_, cert) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| x509_error(e.to_string()))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| x509_error(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SubjectName::Dns((*dns).to_owned())),
            GeneralName::IPAddress(bytes) => ip_from_octets(bytes).map(SubjectName::Ip),
            _ => None,
        })
        .collect())
}

/// An iPAddress entry: 4 octets (IPv4) or 16 (IPv6); anything else is not an address.
fn ip_from_octets(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_octets() {
        assert_eq!(
            ip_from_octets(&[127, 0, 0, 1]),
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(ip_from_octets(&v6), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip_from_octets(&[1, 2, 3]), None);
    }
}
