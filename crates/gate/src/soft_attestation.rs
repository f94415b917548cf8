//! The software authenticator's attestation: packed self attestation by default, or,
//! with an attestation identity that tests (or `--soft-attestation-key` and
//! `--soft-attestation-certs`) give it, `packed` with an x5c chain or `fido-u2f`.
//! Tests and demos only: the identity's key is a file on disk.

use std::fmt;
use std::str::FromStr;

use ciborium::Value;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::attestation::Statement;
use crate::soft::SelfAttested;
use crate::verify::{parse_auth_data, PublicKey};

/// Which statement an attestation identity makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftAttestationFormat {
    /// `packed` with x5c, signed over `authData || clientDataHash`.
    Packed,
    /// `fido-u2f`, signed over the U2F registration data.
    FidoU2f,
}

impl fmt::Display for SoftAttestationFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SoftAttestationFormat::Packed => "packed",
            SoftAttestationFormat::FidoU2f => "fido-u2f",
        })
    }
}

impl FromStr for SoftAttestationFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "packed" => Ok(SoftAttestationFormat::Packed),
            "fido-u2f" => Ok(SoftAttestationFormat::FidoU2f),
            other => Err(format!(
                "unknown attestation format {other:?}; choose packed or fido-u2f"
            )),
        }
    }
}

/// An attestation identity: the attestation key and its certificate chain (leaf first).
#[derive(Clone)]
pub struct SoftAttestation {
    key: p256::ecdsa::SigningKey,
    x5c: Vec<Vec<u8>>,
    format: SoftAttestationFormat,
}

impl fmt::Debug for SoftAttestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftAttestation")
            .field("certificates", &self.x5c.len())
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl SoftAttestation {
    /// An identity from a P-256 key and its chain (DER, leaf first, not empty).
    pub fn new(
        key: p256::ecdsa::SigningKey,
        x5c: Vec<Vec<u8>>,
        format: SoftAttestationFormat,
    ) -> Result<Self, String> {
        if x5c.is_empty() {
            return Err("the attestation chain holds no certificate".into());
        }
        Ok(Self { key, x5c, format })
    }

    /// From a PKCS#8 PEM P-256 key and a PEM chain (leaf first).
    pub fn from_pem(
        key_pem: &str,
        certs_pem: &[u8],
        format: SoftAttestationFormat,
    ) -> Result<Self, String> {
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
            .map_err(|e| format!("the key is not a PKCS#8 PEM P-256 private key: {e}"))?;
        let x5c = CertificateDer::pem_slice_iter(certs_pem)
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificates are not PEM: {e}"))?;
        Self::new(key, x5c, format)
    }

    /// The statement for a credential the software key just made.
    fn statement(&self, made: &SelfAttested, cdh: &[u8; 32]) -> Statement {
        let x5c = Value::Array(self.x5c.iter().cloned().map(Value::Bytes).collect());
        let msg = match self.format {
            SoftAttestationFormat::Packed => {
                let mut m = made.auth_data.clone();
                m.extend_from_slice(cdh);
                m
            }
            SoftAttestationFormat::FidoU2f => {
                let mut m = vec![0x00];
                // The software key's own authenticator data: always well formed, ES256.
                if let Ok(ad) = parse_auth_data(&made.auth_data) {
                    m.extend_from_slice(&ad.rp_id_hash);
                    m.extend_from_slice(cdh);
                    if let Some(att) = ad.attested {
                        m.extend_from_slice(att.credential_id);
                        if let PublicKey::Es256(vk) = att.public_key {
                            m.extend_from_slice(vk.to_encoded_point(false).as_bytes());
                        }
                    }
                }
                m
            }
        };
        let sig: p256::ecdsa::Signature = self.key.sign(&msg);
        let sig = Value::Bytes(sig.to_der().as_bytes().to_vec());
        let text = |s: &str| Value::Text(s.to_string());
        match self.format {
            SoftAttestationFormat::Packed => Statement {
                fmt: "packed".into(),
                att_stmt: Value::Map(vec![
                    (text("alg"), Value::Integer((-7).into())),
                    (text("sig"), sig),
                    (text("x5c"), x5c),
                ]),
            },
            SoftAttestationFormat::FidoU2f => Statement {
                fmt: "fido-u2f".into(),
                att_stmt: Value::Map(vec![(text("sig"), sig), (text("x5c"), x5c)]),
            },
        }
    }
}

/// The statement the software key sends: with an identity, its statement; without,
/// packed self attestation (the credential's own key signed).
pub(crate) fn statement(
    identity: Option<&SoftAttestation>,
    made: &SelfAttested,
    cdh: &[u8; 32],
) -> Statement {
    match identity {
        Some(id) => id.statement(made, cdh),
        None => Statement {
            fmt: "packed".into(),
            att_stmt: Value::Map(vec![
                (Value::Text("alg".into()), Value::Integer((-7).into())),
                (
                    Value::Text("sig".into()),
                    Value::Bytes(made.signature.clone()),
                ),
            ]),
        },
    }
}
