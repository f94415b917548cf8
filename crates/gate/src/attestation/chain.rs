//! The certificates: the roots an operator names, the attestation (leaf) certificate's
//! fields, the statement's signature with the leaf's key, and the chain up to a root.

use std::path::Path;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, KeyPurposeIdIter};
use x509_parser::der_parser::oid;
use x509_parser::prelude::{FromDer, X509Certificate, X509Version};

use super::{hex, AttestationError, PolicyError};

/// Largest root file read.
const MAX_ROOT_FILE: u64 = 1 << 20;

/// A trusted root certificate.
#[derive(Clone, PartialEq, Eq)]
pub struct Root {
    der: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for Root {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Root").field(&self.subject).finish()
    }
}

impl Root {
    /// A root from its DER; refused when it does not parse as a certificate webpki can
    /// anchor a chain to.
    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let subject = {
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| format!("not an X.509 certificate: {e}"))?;
            cert.subject().to_string()
        };
        webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
            .map_err(|e| format!("cannot be a trust anchor: {e}"))?;
        Ok(Self { der, subject })
    }

    /// The root's subject, e.g. `CN=Yubico U2F Root CA Serial 457200631`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The root's DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// Reads the roots from a PEM file, or from every `*.pem`, `*.crt`, `*.cer` file of a
/// directory. A file without a certificate, or none at all, is an error.
pub(super) fn roots_from_path(path: &Path) -> Result<Vec<Root>, PolicyError> {
    let io = |p: &Path, e: &dyn std::fmt::Display| PolicyError::Io {
        path: p.display().to_string(),
        detail: e.to_string(),
    };
    let files: Vec<std::path::PathBuf> = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| io(path, &e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| matches!(x, "pem" | "crt" | "cer"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(PolicyError::BadCertificate {
                path: path.display().to_string(),
                detail: "the directory holds no *.pem, *.crt or *.cer file".into(),
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut roots = Vec::new();
    for file in files {
        let len = std::fs::metadata(&file).map_err(|e| io(&file, &e))?.len();
        if len > MAX_ROOT_FILE {
            return Err(io(&file, &"larger than 1 MiB: not a root certificate file"));
        }
        let pem = std::fs::read(&file).map_err(|e| io(&file, &e))?;
        let bad = |detail: String| PolicyError::BadCertificate {
            path: file.display().to_string(),
            detail,
        };
        use rustls_pki_types::pem::PemObject;
        let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if ders.is_empty() {
            return Err(bad(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        for der in ders {
            roots.push(Root::from_der(der.to_vec()).map_err(bad)?);
        }
    }
    Ok(roots)
}

/// What attestation needs to know of the leaf certificate.
pub(super) struct LeafInfo {
    version3: bool,
    ca: Option<bool>,
    aaguid_ext: Option<Result<[u8; 16], String>>,
    subject: Subject,
    p256: bool,
    /// Hex SHA-1 of the subjectPublicKey bits: the MDS attestationCertificateKeyIdentifier.
    pub key_identifier: String,
}

struct Subject {
    c: Option<String>,
    o: Option<String>,
    ou: Option<String>,
    cn: Option<String>,
}

impl LeafInfo {
    pub(super) fn parse(der: &[u8]) -> Result<Self, AttestationError> {
        let (rest, cert) = X509Certificate::from_der(der).map_err(|e| {
            AttestationError::BadCertificate(format!("the leaf is not an X.509 certificate: {e}"))
        })?;
        if !rest.is_empty() {
            return Err(AttestationError::BadCertificate(
                "bytes after the leaf certificate".into(),
            ));
        }
        let ca = cert
            .basic_constraints()
            .map_err(|e| AttestationError::BadCertificate(format!("basicConstraints: {e}")))?
            .map(|b| b.value.ca);
        let aaguid_oid = oid!(1.3.6 .1 .4 .1 .45724 .1 .1 .4);
        let aaguid_ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid == aaguid_oid)
            .map(|e| {
                if e.critical {
                    return Err("the AAGUID extension is marked critical".to_string());
                }
                // extnValue holds an OCTET STRING of 16 bytes.
                match e.value {
                    [0x04, 0x10, rest @ ..] if rest.len() == 16 => {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(rest);
                        Ok(a)
                    }
                    _ => Err("the AAGUID extension is not a 16-byte OCTET STRING".to_string()),
                }
            });
        let first = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_string) };
        let name = cert.subject();
        let subject = Subject {
            c: first(&mut name.iter_country()),
            o: first(&mut name.iter_organization()),
            ou: first(&mut name.iter_organizational_unit()),
            cn: first(&mut name.iter_common_name()),
        };
        let spki = cert.public_key();
        let p256 = spki.algorithm.algorithm == oid!(1.2.840 .10045 .2 .1)
            && spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|o| o == oid!(1.2.840 .10045 .3 .1 .7));
        let key_identifier = hex(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &spki.subject_public_key.data,
        )
        .as_ref());
        Ok(Self {
            version3: cert.version() == X509Version::V3,
            ca,
            aaguid_ext,
            subject,
            p256,
            key_identifier,
        })
    }

    /// Whether the certificate carries the AAGUID extension (checked by `check_packed`).
    pub(super) fn names_aaguid(&self) -> bool {
        self.aaguid_ext.is_some()
    }

    /// WebAuthn §8.2.1: the packed attestation certificate's requirements.
    pub(super) fn check_packed(&self, aaguid: &[u8; 16]) -> Result<(), AttestationError> {
        let bad = |m: &str| Err(AttestationError::BadCertificate(m.to_string()));
        if !self.version3 {
            return bad("the certificate is not X.509 version 3");
        }
        if self.ca != Some(false) {
            return bad("basic constraints must be present with CA=false");
        }
        let s = &self.subject;
        if !s
            .c
            .as_deref()
            .is_some_and(|c| c.len() == 2 && c.chars().all(|c| c.is_ascii_alphabetic()))
        {
            return bad("the subject has no two-letter country (C)");
        }
        if s.o.as_deref().is_none_or(str::is_empty) {
            return bad("the subject has no organisation (O) naming the vendor");
        }
        if s.ou.as_deref() != Some("Authenticator Attestation") {
            return bad("the subject's OU is not \"Authenticator Attestation\"");
        }
        if s.cn.as_deref().is_none_or(str::is_empty) {
            return bad("the subject has no common name (CN)");
        }
        match &self.aaguid_ext {
            None => Ok(()),
            Some(Err(e)) => bad(e),
            Some(Ok(cert)) if cert == aaguid => Ok(()),
            Some(Ok(cert)) => Err(AttestationError::AaguidMismatch {
                cert: hex(cert),
                auth_data: hex(aaguid),
            }),
        }
    }

    /// fido-u2f: the attestation key must be P-256.
    pub(super) fn check_u2f_key(&self) -> Result<(), AttestationError> {
        if self.p256 {
            Ok(())
        } else {
            Err(AttestationError::BadCertificate(
                "the fido-u2f attestation key is not a P-256 key".into(),
            ))
        }
    }
}

/// The webpki algorithm for a COSE algorithm id.
fn algorithm(cose: i64) -> Option<&'static dyn SignatureVerificationAlgorithm> {
    use webpki::ring as algs;
    match cose {
        -7 => Some(algs::ECDSA_P256_SHA256),
        -35 => Some(algs::ECDSA_P384_SHA384),
        -8 => Some(algs::ED25519),
        -257 => Some(algs::RSA_PKCS1_2048_8192_SHA256),
        _ => None,
    }
}

/// Verifies `sig` over `msg` with the leaf certificate's key, COSE algorithm `alg`.
pub(super) fn verify_signature(
    leaf: &[u8],
    alg: i64,
    msg: &[u8],
    sig: &[u8],
) -> Result<(), AttestationError> {
    let alg_impl = algorithm(alg).ok_or_else(|| {
        AttestationError::Malformed(format!("attestation algorithm {alg} is not supported"))
    })?;
    let der = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&der).map_err(|e| {
        AttestationError::BadCertificate(format!("the leaf certificate is refused: {e}"))
    })?;
    ee.verify_signature(alg_impl, msg, sig)
        .map_err(|_| AttestationError::BadSignature)
}

/// Accepts any extended key usage: attestation certificates usually carry none, and
/// none that FIDO defines changes what they attest.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for id in iter {
            id?;
        }
        Ok(())
    }
}

/// Verifies that `leaf` chains through `intermediates` to one of `roots`, every
/// certificate valid at `now`; returns the root.
pub(super) fn verify_chain<'r>(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &'r [Root],
    now: UnixTime,
) -> Result<&'r Root, AttestationError> {
    verify_chain_inner(leaf, intermediates, roots, now)
        .map_err(|e| match e {
            webpki::Error::UnknownIssuer => AttestationError::UntrustedRoot(format!(
                "{} root(s) given: {}",
                roots.len(),
                roots
                    .iter()
                    .map(Root::subject)
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            webpki::Error::CertExpired { .. } => AttestationError::Expired(e.to_string()),
            webpki::Error::CertNotValidYet { .. } => AttestationError::NotYetValid(e.to_string()),
            other => AttestationError::BadChain(other.to_string()),
        })
        .and_then(|i| {
            let root = &roots[i];
            // webpki does not look at an anchor's own dates; a root past its end is refused too.
            let (_, cert) = X509Certificate::from_der(root.der())
                .map_err(|e| AttestationError::BadChain(format!("root does not parse: {e}")))?;
            let t = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            let v = cert.validity();
            if t > v.not_after.timestamp() {
                return Err(AttestationError::Expired(format!(
                    "the root {} ended {}",
                    root.subject(),
                    v.not_after
                )));
            }
            if t < v.not_before.timestamp() {
                return Err(AttestationError::NotYetValid(format!(
                    "the root {} starts {}",
                    root.subject(),
                    v.not_before
                )));
            }
            Ok(root)
        })
}

fn verify_chain_inner(
    leaf: &[u8],
    intermediates: &[Vec<u8>],
    roots: &[Root],
    now: UnixTime,
) -> Result<usize, webpki::Error> {
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.der.as_slice()))
        .collect();
    let anchors = root_ders
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()?;
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|d| CertificateDer::from(d.as_slice()))
        .collect();
    let der = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&der)?;
    let path = ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &inter,
        now,
        AnyUsage,
        None,
        None,
    )?;
    let used = path.anchor();
    Ok(anchors
        .iter()
        .position(|a| {
            a.subject == used.subject && a.subject_public_key_info == used.subject_public_key_info
        })
        .unwrap_or(0))
}
