#![forbid(unsafe_code)]
//! TLS plumbing shared by `k_proxy` and `k_server`: PEM loading and rustls configurations.
//!
//! Why a crate of its own: both binaries must agree on exactly one TLS policy (TLS 1.3 only,
//! ALPN `http/1.1`, plus `h2` on k_server's mutual-TLS listener only (see [`offer_http2`]),
//! trust only the chain CA, never the system roots), and the one decision
//! that matters most — whether a listener demands a client certificate — must be spelled out
//! by the caller ([`ClientAuth`]), never fall out of a default.
//!
//! Every configuration is built with its own `ring` [`CryptoProvider`], so no
//! process-global provider has to be installed first.
//!
//! The files come from `tls/make-certs.sh`: `ca.crt`, `k_server.{crt,key}` (EKU serverAuth) and
//! `k_proxy.{crt,key}` (EKU serverAuth and clientAuth).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

mod der;
mod names;
mod validity;

pub use names::{certificate_names, SubjectName};
pub use validity::{check_certificate_file, CertificateStatus, EXPIRY_WARNING_DAYS};

/// The application protocol every listener and client offers.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// HTTP/2, offered only on top of `http/1.1` where both ends are ours (the hop to k_server).
const ALPN_H2: &[u8] = b"h2";

/// The same server configuration, also offering HTTP/2 by ALPN (preferred over `http/1.1`
/// when the client offers both).
///
/// For k_server's listener, which demands a client certificate: TLS 1.3 names the
/// protocol before the client's certificate arrives, but no byte of HTTP/2 is read until
/// the handshake, certificate check included, has completed, so the only HTTP/2 client
/// is k_proxy, which multiplexes concurrent requests on one connection. k_proxy's
/// client-facing listener never offers it.
pub fn offer_http2(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Arc::new(config)
}

/// Whether a TLS listener demands a client certificate.
///
/// There is deliberately no `Default`: `k_server` must say `Required` (its whole trust model
/// rests on the peer being k_proxy), `k_proxy`'s client-facing listener says `None`. Making
/// the caller name the choice keeps a forgotten argument from silently turning mutual TLS off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is requested; any TLS client may connect (authentication happens
    /// above TLS, e.g. with a bearer token).
    None,
    /// A client certificate is mandatory and must chain to a CA in `ca_file` (and only there)
    /// and carry the clientAuth extended key usage; otherwise the handshake fails.
    Required {
        /// PEM file with the CA certificate(s) that may issue client certificates.
        ca_file: PathBuf,
    },
}

/// Everything that can go wrong while loading TLS material or building a configuration.
///
/// Each message names the file involved and what is wrong with it in one sentence, because
/// these errors end up on an operator's terminal at start-up. Key material is never included.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file is not well-formed PEM.
    #[error("{} is not valid PEM: {problem}", path.display())]
    Pem {
        /// The malformed file.
        path: PathBuf,
        /// What the PEM parser objected to (never the file's content).
        problem: &'static str,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error(
        "{} holds no certificate (expected a '-----BEGIN CERTIFICATE-----' block){hint}",
        path.display()
    )]
    NoCertificate {
        /// The file without certificates.
        path: PathBuf,
        /// Extra advice, e.g. when the file holds a private key instead.
        hint: &'static str,
    },
    /// A key file holds no private key block.
    #[error(
        "{} holds no private key (expected a '-----BEGIN PRIVATE KEY-----' block){hint}",
        path.display()
    )]
    NoPrivateKey {
        /// The file without a key.
        path: PathBuf,
        /// Extra advice, e.g. when the file holds a certificate instead.
        hint: &'static str,
    },
    /// rustls refused to take a certificate of a CA file as a trust anchor.
    #[error("{}: certificate #{index} cannot be used as a trust anchor: {source}", path.display())]
    BadCaCertificate {
        /// The CA file.
        path: PathBuf,
        /// 1-based position of the refused certificate in the file.
        index: usize,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// A CA file holds a certificate that is not a CA (no basicConstraints `CA:TRUE`).
    #[error(
        "{}: certificate #{index} is not a CA certificate (its basicConstraints lack CA:TRUE); \
         point this option at the chain CA (ca.crt), not at a server or client certificate",
        path.display()
    )]
    NotACa {
        /// The CA file.
        path: PathBuf,
        /// 1-based position of the offending certificate in the file.
        index: usize,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("cannot verify client certificates against {}: {source}", path.display())]
    ClientVerifier {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused to build the verifier.
        source: VerifierBuilderError,
    },
    /// The private key does not belong to the certificate.
    #[error(
        "private key {} does not belong to certificate {} (was a key from another set used?): {source}",
        key_path.display(),
        cert_path.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// The rustls error that detected the mismatch.
        source: rustls::Error,
    },
    /// rustls refused the certificate/key pair for another reason (e.g. unsupported key type).
    #[error(
        "cannot use certificate {} with private key {}: {source}",
        cert_path.display(),
        key_path.display()
    )]
    Identity {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The crypto provider does not offer what this crate asks for (TLS 1.3). Not caused by
    /// any file; indicates a build problem.
    #[error("the TLS crypto provider cannot do TLS 1.3: {source}")]
    Provider {
        /// The rustls error.
        source: rustls::Error,
    },

    /// A certificate cannot be parsed as X.509 to read its validity.
    #[error("{}: certificate #{index} cannot be read as X.509: {detail}", path.display())]
    X509 {
        path: PathBuf,
        index: usize,
        detail: String,
    },

    /// A certificate is past its notAfter date: refusing to start with it.
    #[error("{}: certificate #{index} ({subject}) expired on {not_after}; make new certificates (tls/make-certs.sh --force)", path.display())]
    Expired {
        path: PathBuf,
        index: usize,
        subject: String,
        not_after: String,
    },

    /// A certificate is not valid yet (its notBefore is in the future): usually a wrong clock.
    #[error("{}: certificate #{index} ({subject}) is not valid before {not_before}; check this machine's clock", path.display())]
    NotYetValid {
        path: PathBuf,
        index: usize,
        subject: String,
        not_before: String,
    },
}

/// Loads every certificate from a PEM file, in file order (leaf first for a chain).
///
/// Fails when the file is missing or unreadable, is malformed PEM, or holds no certificate
/// at all: an empty chain or trust store must stop start-up, never mean "trust nothing" or
/// "present nothing" silently.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        let hint = if contains_private_key(&bytes) {
            "; it holds a private key: were the certificate and key files swapped?"
        } else {
            ""
        };
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
            hint,
        });
    }
    Ok(certs)
}

/// Loads the first private key (PKCS#8, SEC1 or PKCS#1 PEM) from a file.
///
/// Logs a `tracing::warn!` when the file is readable by group or others (unix mode & 0o077),
/// since anyone who reads it can impersonate this service; it is a warning rather than an
/// error so a deliberately shared key (e.g. a read-only bind mount) still starts.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    warn_if_exposed(path);
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => {
            let hint = if contains_certificate(&bytes) {
                "; it holds a certificate: were the certificate and key files swapped?"
            } else {
                ""
            };
            Err(TlsError::NoPrivateKey {
                path: path.to_owned(),
                hint,
            })
        }
        Err(e) => Err(pem_error(path, &e)),
    }
}

/// Builds a TLS 1.3-only server configuration (ALPN `http/1.1`) presenting `cert_file`/`key_file`.
///
/// `client_auth` decides, explicitly, whether a client certificate is demanded; with
/// [`ClientAuth::Required`] a client must present a certificate that chains to a CA in
/// `ca_file` and carries the clientAuth EKU, or the handshake fails. Certificates whose
/// key does not match `key_file` are refused here rather than at the first handshake.
pub fn make_server_config(
    cert_file: &Path,
    key_file: &Path,
    client_auth: &ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    make_server_config_with(cert_file, key_file, client_auth, TlsVersions::Tls13Only)
}

/// Which TLS versions a configuration speaks. TLS 1.3 only unless an operator asks for 1.2
/// by an explicit flag (for an old client); there is no way to get anything older.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersions {
    #[default]
    Tls13Only,
    AllowTls12,
}

impl TlsVersions {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static WITH_TLS12: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            Self::Tls13Only => &TLS13_ONLY,
            Self::AllowTls12 => &WITH_TLS12,
        }
    }
}

/// [`make_server_config`] with an explicit version policy.
pub fn make_server_config_with(
    cert_file: &Path,
    key_file: &Path,
    client_auth: &ClientAuth,
    versions: TlsVersions,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let certs = load_certs(cert_file)?;
    let key = load_private_key(key_file)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions.versions())
        .map_err(|source| TlsError::Provider { source })?;

    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required { ca_file } => {
            let roots = load_roots(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca_file.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| identity_error(cert_file, key_file, e))?;
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Builds a TLS 1.3-only client configuration (ALPN `http/1.1`) for talking to our own server.
///
/// It trusts ONLY the certificates in `server_ca_file` — no system roots — so a certificate
/// from any public CA cannot stand in for k_server. With `client_identity = Some((cert, key))`
/// the client presents that certificate when the server asks (k_proxy toward k_server);
/// with `None` it presents nothing.
pub fn make_client_config(
    server_ca_file: &Path,
    client_identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    make_client_config_with(server_ca_file, client_identity, TlsVersions::Tls13Only)
}

/// [`make_client_config`] with an explicit version policy.
pub fn make_client_config_with(
    server_ca_file: &Path,
    client_identity: Option<(&Path, &Path)>,
    versions: TlsVersions,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(server_ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions.versions())
        .map_err(|source| TlsError::Provider { source })?
        .with_root_certificates(roots);

    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let certs = load_certs(cert_file)?;
            let key = load_private_key(key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| identity_error(cert_file, key_file, e))?
        }
    };
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// SHA-256 fingerprint of a DER certificate as uppercase, colon-separated hex ("AB:CD:…").
///
/// Same format as `openssl x509 -noout -fingerprint -sha256`, so an operator can compare the
/// CA named in a start-up log with the file on the other qube.
pub fn fingerprint_sha256(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

/// One line describing a CA file for start-up logs: `"<path> (1 certificate, sha256 AB:CD:…)"`.
///
/// Logging which CA a process trusts, by fingerprint, makes a mismatched `ca.crt` between
/// qubes visible before the first failed handshake.
pub fn ca_summary(ca_file: &Path) -> Result<String, TlsError> {
    let certs = load_certs(ca_file)?;
    let fingerprints: Vec<String> = certs.iter().map(fingerprint_sha256).collect();
    let noun = if certs.len() == 1 {
        "certificate"
    } else {
        "certificates"
    };
    Ok(format!(
        "{} ({} {noun}, sha256 {})",
        ca_file.display(),
        certs.len(),
        fingerprints.join("; ")
    ))
}

// ---------------------------------------------------------------------------------------------

/// A fresh `ring` provider for one configuration; nothing process-global is touched.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads a CA file into a root store, refusing files that would make a useless or wrong
/// trust store: no certificate, a certificate rustls cannot take as an anchor, or a
/// certificate that is not a CA (the usual slip: passing `k_server.crt` for `ca.crt`).
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        let index = i + 1;
        // rustls takes any parsable certificate as an anchor; a leaf there would only fail
        // later, at every handshake, with a vague "unknown issuer".
        if der::basic_constraints_ca(cert.as_ref()) == Some(false) {
            return Err(TlsError::NotACa {
                path: path.to_owned(),
                index,
            });
        }
        roots
            .add(cert)
            .map_err(|source| TlsError::BadCaCertificate {
                path: path.to_owned(),
                index,
                source,
            })?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Maps a PEM parser error to a fixed description, so no byte of the file (which may be a
/// private key) can reach a log line.
fn pem_error(path: &Path, e: &pem::Error) -> TlsError {
    let problem = match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no matching END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section's base64 content does not decode",
        pem::Error::NoItemsFound => "no PEM section of the expected kind was found",
        pem::Error::SectionTooLarge => "a section is larger than 256 MiB",
        pem::Error::Io(_) => "it could not be read",
        _ => "the PEM parser rejected it",
    };
    TlsError::Pem {
        path: path.to_owned(),
        problem,
    }
}

fn identity_error(cert_file: &Path, key_file: &Path, source: rustls::Error) -> TlsError {
    let cert_path = cert_file.to_owned();
    let key_path = key_file.to_owned();
    match source {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert_path,
            key_path,
            source,
        },
        _ => TlsError::Identity {
            cert_path,
            key_path,
            source,
        },
    }
}

fn contains_private_key(bytes: &[u8]) -> bool {
    PrivateKeyDer::from_pem_slice(bytes).is_ok()
}

fn contains_certificate(bytes: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(bytes).any(|c| c.is_ok())
}

#[cfg(unix)]
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "private key file is readable by group or others; run: chmod 600 {}",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_exposed(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_format_is_uppercase_colon_hex() {
        let fp = fingerprint_sha256(&CertificateDer::from(b"abc".to_vec()));
        // sha256("abc")
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
