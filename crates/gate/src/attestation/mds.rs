//! The FIDO Metadata Service v3 blob (`--mds-blob FILE`, `--mds-root PEM`): a JWT whose
//! header's x5c chain must lead to the root the operator names, signed ES256 or RS256,
//! whose payload lists authenticator models with their attestation roots and status
//! reports. Refused: a blob past its `nextUpdate`, a bad signer, and (at enrolment) a
//! model whose latest status report is a revocation or a compromise.

use std::path::Path;
use std::time::SystemTime;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use webpki::EndEntityCert;

use super::chain::{verify_chain, Root};
use super::{hex, AttestationError, PolicyError};

/// Largest blob read (the public blob is a few MiB).
const MAX_BLOB: u64 = 64 << 20;

/// Status reports that refuse a key when they are its latest.
pub const REFUSED_STATUSES: [&str; 5] = [
    "REVOKED",
    "USER_VERIFICATION_BYPASS",
    "ATTESTATION_KEY_COMPROMISE",
    "USER_KEY_REMOTE_COMPROMISE",
    "USER_KEY_PHYSICAL_COMPROMISE",
];

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    x5c: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    #[serde(default)]
    no: u64,
    next_update: String,
    #[serde(default)]
    entries: Vec<Entry>,
}

/// One authenticator model of the blob.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The model's AAGUID (`xxxxxxxx-xxxx-...`), FIDO2 models.
    #[serde(default)]
    pub aaguid: Option<String>,
    /// Hex SHA-1 of attestation certificates' subjectPublicKey, U2F models.
    #[serde(default)]
    pub attestation_certificate_key_identifiers: Vec<String>,
    #[serde(default)]
    metadata_statement: Option<Statement>,
    #[serde(default)]
    status_reports: Vec<StatusReport>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(default)]
    attestation_root_certificates: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusReport {
    status: String,
    #[serde(default)]
    effective_date: Option<String>,
}

impl Entry {
    /// Refuses the key when its latest status report (by effectiveDate; the later one in
    /// the list on a tie) is a revocation or a compromise.
    pub fn check_status(&self) -> Result<(), AttestationError> {
        let latest = self
            .status_reports
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| {
                a.effective_date
                    .as_deref()
                    .unwrap_or("")
                    .cmp(b.effective_date.as_deref().unwrap_or(""))
                    .then(i.cmp(j))
            })
            .map(|(_, r)| r);
        match latest {
            Some(r) if REFUSED_STATUSES.contains(&r.status.as_str()) => {
                Err(AttestationError::Revoked {
                    status: r.status.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    /// The model's attestation roots.
    pub fn roots(&self) -> Result<Vec<Root>, AttestationError> {
        let Some(st) = &self.metadata_statement else {
            return Ok(Vec::new());
        };
        st.attestation_root_certificates
            .iter()
            .map(|b64| {
                let der = STANDARD.decode(b64.trim()).map_err(|_| {
                    AttestationError::MdsMalformed(
                        "an attestationRootCertificates entry is not base64".into(),
                    )
                })?;
                Root::from_der(der)
                    .map_err(|e| AttestationError::MdsMalformed(format!("an attestation root {e}")))
            })
            .collect()
    }
}

/// A verified metadata blob.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// The blob's serial number.
    pub no: u64,
    /// Its nextUpdate (`YYYY-MM-DD`).
    pub next_update: String,
    entries: Vec<Entry>,
}

impl Metadata {
    /// Reads and verifies the blob at `path` against the root(s) at `root`.
    pub fn load(path: &Path, root: &Path, now: SystemTime) -> Result<Self, PolicyError> {
        let roots = super::chain::roots_from_path(root)?;
        let p = path.display().to_string();
        let len = std::fs::metadata(path)
            .map_err(|e| PolicyError::Io {
                path: p.clone(),
                detail: e.to_string(),
            })?
            .len();
        if len > MAX_BLOB {
            return Err(PolicyError::Io {
                path: p,
                detail: "larger than 64 MiB: not a metadata blob".into(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Io {
            path: p.clone(),
            detail: e.to_string(),
        })?;
        Self::from_jwt(&text, &roots, now).map_err(|source| PolicyError::Mds { path: p, source })
    }

    /// Verifies the JWT `jwt` (header x5c chain to one of `roots`, valid at `now`; the
    /// ES256 or RS256 signature) and reads its payload; refuses it past `nextUpdate`.
    pub fn from_jwt(jwt: &str, roots: &[Root], now: SystemTime) -> Result<Self, AttestationError> {
        let malformed = |m: &str| AttestationError::MdsMalformed(m.to_string());
        let jwt = jwt.trim();
        let mut parts = jwt.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed(
                "not a JWT (three base64url parts joined by dots)",
            ));
        };
        let header: Header = URL_SAFE_NO_PAD
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("the JWT header is not base64url JSON"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(s64)
            .map_err(|_| malformed("the JWT signature is not base64url"))?;
        let chain = header
            .x5c
            .iter()
            .map(|c| STANDARD.decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| malformed("an x5c entry of the JWT header is not base64"))?;
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(AttestationError::MdsSigner(
                "the JWT header has no x5c certificate chain".into(),
            ));
        };
        let unix = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        verify_chain(leaf, intermediates, roots, unix)
            .map_err(|e| AttestationError::MdsSigner(e.to_string()))?;
        verify_jws(&header.alg, leaf, &format!("{h64}.{p64}"), &sig)?;
        let payload: Payload = URL_SAFE_NO_PAD
            .decode(p64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("the JWT payload is not base64url JSON with nextUpdate"))?;
        let next = days_from_date(&payload.next_update)
            .ok_or_else(|| malformed("nextUpdate is not a YYYY-MM-DD date"))?;
        let today = i64::try_from(unix.as_secs() / 86_400).unwrap_or(i64::MAX);
        if today > next {
            return Err(AttestationError::MdsStale {
                next_update: payload.next_update,
            });
        }
        Ok(Self {
            no: payload.no,
            next_update: payload.next_update,
            entries: payload.entries,
        })
    }

    /// Models listed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the blob lists no model.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many of the blob's models list one of `chain`'s certificates (DER) among their
    /// attestation roots: a model may anchor at a vendor's intermediate as well as at
    /// its root.
    pub fn models_anchored_in(&self, chain: &[&[u8]]) -> usize {
        self.entries
            .iter()
            .filter(|entry| {
                entry.metadata_statement.as_ref().is_some_and(|st| {
                    st.attestation_root_certificates.iter().any(|b64| {
                        STANDARD
                            .decode(b64.trim())
                            .is_ok_and(|der| chain.contains(&der.as_slice()))
                    })
                })
            })
            .count()
    }

    /// The entry for a key: by AAGUID for `packed` (a non-zero AAGUID), else by the
    /// attestation certificate's key identifier (fido-u2f).
    pub fn entry_for(&self, aaguid: &[u8; 16], key_identifier: &str, fmt: &str) -> Option<&Entry> {
        if fmt != "fido-u2f" && aaguid != &[0u8; 16] {
            let want = hex(aaguid);
            self.entries.iter().find(|e| {
                e.aaguid
                    .as_deref()
                    .is_some_and(|a| a.replace('-', "").eq_ignore_ascii_case(&want))
            })
        } else {
            self.entries.iter().find(|e| {
                e.attestation_certificate_key_identifiers
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(key_identifier))
            })
        }
    }
}

/// Verifies the JWS signature `sig` over `signed` with the signer certificate `leaf`.
fn verify_jws(alg: &str, leaf: &[u8], signed: &str, sig: &[u8]) -> Result<(), AttestationError> {
    let der = CertificateDer::from(leaf);
    let ee = EndEntityCert::try_from(&der)
        .map_err(|e| AttestationError::MdsSigner(format!("the signer certificate: {e}")))?;
    let ok = match alg {
        // JWS ES256 signatures are r || s (RFC 7518 §3.4); webpki takes DER.
        "ES256" => p256::ecdsa::Signature::from_slice(sig)
            .ok()
            .map(|s| s.to_der().as_bytes().to_vec())
            .is_some_and(|der_sig| {
                ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, signed.as_bytes(), &der_sig)
                    .is_ok()
            }),
        "RS256" => ee
            .verify_signature(
                webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                signed.as_bytes(),
                sig,
            )
            .is_ok(),
        other => {
            return Err(AttestationError::MdsSigner(format!(
                "JWT alg {other:?} is not accepted (ES256 or RS256)"
            )))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(AttestationError::MdsSigner(
            "the JWT signature does not verify with the signer certificate".into(),
        ))
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date (proleptic Gregorian).
fn days_from_date(s: &str) -> Option<i64> {
    let mut it = s.split('-');
    let (Some(y), Some(m), Some(d), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return None;
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

#[cfg(test)]
mod date_tests {
    use super::days_from_date;

    #[test]
    fn dates_count_days() {
        assert_eq!(days_from_date("1970-01-01"), Some(0));
        assert_eq!(days_from_date("2000-03-01"), Some(11_017));
        assert_eq!(days_from_date("2026-12-06"), Some(20_793));
        assert_eq!(days_from_date("2026-13-01"), None);
        assert_eq!(days_from_date("26-1-1"), None);
    }
}
