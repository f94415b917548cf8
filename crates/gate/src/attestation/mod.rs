//! Attestation at enrolment (`k_proxy enroll --attestation-roots`, `--mds-blob`): the
//! makeCredential answer's attestation statement is verified up to a root the operator
//! names, so that only keys of a known make can be enrolled.
//!
//! * [`Statement`]: the format and statement as the key sent them (raw CBOR);
//! * [`Policy`]: the roots (PEM files or a directory), an optional FIDO Metadata
//!   Service blob ([`mds`]), and the time the certificates must be valid at;
//! * [`verify`]: `packed` with an x5c chain and `fido-u2f` are checked (chain, validity,
//!   the packed certificate's requirements, the statement's signature); `none` and
//!   self attestation are refused;
//! * [`records`]: which credentials were attested, in a side file beside the enrolment
//!   file (`FILE.attestation`), read at login by `--require-attested`.
//!
//! Certificates are parsed with x509-parser (the fields the WebAuthn rules name) and the
//! chain and signatures are checked by rustls-webpki, with no extended-key-usage rule
//! (attestation certificates usually carry none).

mod chain;
pub mod mds;
pub mod records;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::SystemTime;

use ciborium::Value;
use rustls_pki_types::UnixTime;

pub use chain::Root;
pub use mds::Metadata;
pub use records::{key_fingerprint, AttestationRecord, AttestationRecords};

/// The attestation part of a makeCredential answer, as the key sent it.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The attestation format (`packed`, `fido-u2f`, `none`, ...).
    pub fmt: String,
    /// The attestation statement (a CBOR map; `{}` for `none`).
    pub att_stmt: Value,
}

impl Statement {
    /// The `none` statement: what a key sends when it attests nothing.
    pub fn none() -> Self {
        Self {
            fmt: "none".to_string(),
            att_stmt: Value::Map(Vec::new()),
        }
    }
}

/// Why an attestation was refused. Each kind has its own code and sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// `none`: the key attests nothing.
    #[error("the key sent no attestation (fmt \"none\"); attested enrolment refuses it")]
    NoneRefused,
    /// Packed without x5c: signed by the credential's own key, proves no make.
    #[error("the key sent self attestation (packed without a certificate); attested enrolment refuses it")]
    SelfAttestation,
    /// A format this verifier does not handle.
    #[error("attestation format {0:?} is not supported (packed with x5c and fido-u2f are)")]
    UnsupportedFormat(String),
    /// The statement is not the CBOR its format requires.
    #[error("malformed attestation statement: {0}")]
    Malformed(String),
    /// The chain does not lead to any of the given roots.
    #[error("the attestation certificate does not chain to any trusted root ({0})")]
    UntrustedRoot(String),
    /// A certificate of the chain was expired at enrolment time.
    #[error("an attestation certificate has expired ({0})")]
    Expired(String),
    /// A certificate of the chain was not valid yet at enrolment time.
    #[error("an attestation certificate is not valid yet ({0})")]
    NotYetValid(String),
    /// The chain failed another check (a CA used as leaf, a bad issuer signature, ...).
    #[error("the attestation chain is invalid: {0}")]
    BadChain(String),
    /// The packed attestation certificate breaks a WebAuthn §8.2.1 requirement.
    #[error("the attestation certificate breaks a packed requirement: {0}")]
    BadCertificate(String),
    /// The certificate's AAGUID extension names another model than the authenticator data.
    #[error(
        "the attestation certificate's AAGUID {cert} is not the authenticator's AAGUID {auth_data}"
    )]
    AaguidMismatch { cert: String, auth_data: String },
    /// A packed certificate without the AAGUID extension whose chain the metadata blob
    /// lists as the anchor of several models (at its root or an intermediate): nothing
    /// binds the key to the model it claims, whose status was the one checked (FIDO
    /// Metadata Statement §3.1: such certificates must carry the extension).
    #[error(
        "the attestation certificate carries no AAGUID extension, and its chain (to {root}) \
         anchors {models} authenticator models in the metadata blob: which model the key is, \
         and so its status, cannot be checked"
    )]
    AaguidUnbound { root: String, models: usize },
    /// The statement's signature does not verify with the attestation certificate's key.
    #[error("the attestation signature does not verify with the attestation certificate")]
    BadSignature,
    /// The metadata blob's entry for the key reports a revocation or a compromise.
    #[error("the metadata service reports this authenticator as {status}: refused")]
    Revoked { status: String },
    /// The metadata blob's signature or signer chain does not verify against --mds-root.
    #[error("the metadata blob's signature does not verify against --mds-root: {0}")]
    MdsSigner(String),
    /// The metadata blob is past its nextUpdate.
    #[error("the metadata blob is stale: its nextUpdate was {next_update}; download a fresh blob")]
    MdsStale { next_update: String },
    /// The metadata blob is not the JWT the Metadata Service publishes.
    #[error("the metadata blob is malformed: {0}")]
    MdsMalformed(String),
}

impl AttestationError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            AttestationError::NoneRefused => "attestation_none",
            AttestationError::SelfAttestation => "attestation_self",
            AttestationError::UnsupportedFormat(_) => "attestation_unsupported_format",
            AttestationError::Malformed(_) => "attestation_malformed",
            AttestationError::UntrustedRoot(_) => "attestation_untrusted_root",
            AttestationError::Expired(_) => "attestation_expired",
            AttestationError::NotYetValid(_) => "attestation_not_yet_valid",
            AttestationError::BadChain(_) => "attestation_bad_chain",
            AttestationError::BadCertificate(_) => "attestation_bad_certificate",
            AttestationError::AaguidMismatch { .. } => "attestation_aaguid_mismatch",
            AttestationError::AaguidUnbound { .. } => "attestation_aaguid_unbound",
            AttestationError::BadSignature => "attestation_bad_signature",
            AttestationError::Revoked { .. } => "attestation_revoked",
            AttestationError::MdsSigner(_) => "mds_bad_signer",
            AttestationError::MdsStale { .. } => "mds_stale",
            AttestationError::MdsMalformed(_) => "mds_malformed",
        }
    }
}

/// Why the roots or the metadata blob given on the command line could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
    /// A file holds no usable certificate.
    #[error("{path}: {detail}")]
    BadCertificate { path: String, detail: String },
    /// The metadata blob was refused.
    #[error("{path}: {source}")]
    Mds {
        path: String,
        source: AttestationError,
    },
}

/// What attested enrolment trusts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roots: Vec<Root>,
    metadata: Option<Metadata>,
    now: Option<UnixTime>,
}

impl Policy {
    /// A policy trusting `roots` (DER certificates).
    pub fn new(roots: Vec<Root>) -> Self {
        Self {
            roots,
            metadata: None,
            now: None,
        }
    }

    /// Reads the roots from a PEM file or a directory of them (`*.pem`, `*.crt`, `*.cer`).
    pub fn roots_from_path(path: &Path) -> Result<Vec<Root>, PolicyError> {
        chain::roots_from_path(path)
    }

    /// Also looks each key up in a verified metadata blob (its roots and status reports).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Checks certificates at `now` instead of the clock (tests with recorded vectors).
    pub fn at(mut self, now: SystemTime) -> Self {
        self.now = Some(UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        ));
        self
    }

    fn now(&self) -> UnixTime {
        self.now.unwrap_or_else(UnixTime::now)
    }

    /// The roots given directly (without the metadata's).
    pub fn roots(&self) -> &[Root] {
        &self.roots
    }
}

/// What the authenticator data says about the new credential, as attestation needs it.
#[derive(Debug, Clone, Copy)]
pub struct NewKey<'a> {
    /// The raw authenticator data (signed by packed attestation).
    pub auth_data: &'a [u8],
    /// SHA-256 of the client data (here: of the challenge).
    pub client_data_hash: &'a [u8; 32],
    /// rpIdHash from the authenticator data.
    pub rp_id_hash: &'a [u8; 32],
    /// The AAGUID from the authenticator data.
    pub aaguid: &'a [u8; 16],
    /// The new credential's id.
    pub credential_id: &'a [u8],
    /// The new credential's P-256 point, uncompressed (65 bytes), when it is ES256.
    pub es256_point: Option<[u8; 65]>,
}

/// An attestation that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    /// The format (`packed` or `fido-u2f`).
    pub fmt: String,
    /// The authenticator's AAGUID, hex.
    pub aaguid: String,
    /// The subject of the root the chain led to.
    pub root_subject: String,
}

/// Verifies `statement` for `key` under `policy`.
pub fn verify(
    statement: &Statement,
    key: &NewKey<'_>,
    policy: &Policy,
) -> Result<Attested, AttestationError> {
    let stmt = match &statement.att_stmt {
        Value::Map(m) => m.as_slice(),
        _ => return Err(AttestationError::Malformed("attStmt is not a map".into())),
    };
    let x5c = x5c(stmt)?;
    let (leaf, intermediates) = match (statement.fmt.as_str(), x5c.split_first()) {
        ("none", _) => return Err(AttestationError::NoneRefused),
        ("packed", None) => return Err(AttestationError::SelfAttestation),
        ("packed" | "fido-u2f", Some(split)) => split,
        ("fido-u2f", None) => {
            return Err(AttestationError::Malformed("fido-u2f without x5c".into()))
        }
        (other, _) => return Err(AttestationError::UnsupportedFormat(other.to_string())),
    };
    let sig = bytes(stmt, "sig")?;
    let leaf_info = chain::LeafInfo::parse(leaf)?;
    if statement.fmt == "packed" {
        let alg = int(stmt, "alg")?;
        leaf_info.check_packed(key.aaguid)?;
        let mut msg = key.auth_data.to_vec();
        msg.extend_from_slice(key.client_data_hash);
        chain::verify_signature(leaf, alg, &msg, sig)?;
    } else {
        if !intermediates.is_empty() {
            return Err(AttestationError::Malformed(
                "fido-u2f x5c must hold exactly one certificate".into(),
            ));
        }
        leaf_info.check_u2f_key()?;
        let point = key.es256_point.ok_or_else(|| {
            AttestationError::Malformed("fido-u2f attests only ES256 (P-256) credentials".into())
        })?;
        let mut msg = vec![0x00];
        msg.extend_from_slice(key.rp_id_hash);
        msg.extend_from_slice(key.client_data_hash);
        msg.extend_from_slice(key.credential_id);
        msg.extend_from_slice(&point);
        chain::verify_signature(leaf, -7, &msg, sig)?;
    }
    let now = policy.now();
    let mut roots: Vec<Root> = policy.roots.clone();
    if let Some(md) = &policy.metadata {
        if let Some(entry) = md.entry_for(key.aaguid, &leaf_info.key_identifier, &statement.fmt) {
            entry.check_status()?;
            roots.extend(entry.roots()?);
        }
    }
    let root = chain::verify_chain(leaf, intermediates, &roots, now)?;
    // The status above is the claimed model's. A chain that anchors several models (at
    // its root, or one at the root and another at an intermediate) binds a certificate to
    // one of them only through its AAGUID extension: without it, a key of a revoked model
    // could claim a sound model's AAGUID.
    if statement.fmt == "packed" && !leaf_info.names_aaguid() {
        if let Some(md) = &policy.metadata {
            let chain: Vec<&[u8]> = std::iter::once(leaf.as_slice())
                .chain(intermediates.iter().map(Vec::as_slice))
                .chain(std::iter::once(root.der()))
                .collect();
            let models = md.models_anchored_in(&chain);
            if models > 1 {
                return Err(AttestationError::AaguidUnbound {
                    root: root.subject().to_string(),
                    models,
                });
            }
        }
    }
    Ok(Attested {
        fmt: statement.fmt.clone(),
        aaguid: hex(key.aaguid),
        root_subject: root.subject().to_string(),
    })
}

fn field<'a>(m: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    m.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
        .map(|(_, v)| v)
}

fn bytes<'a>(m: &'a [(Value, Value)], name: &str) -> Result<&'a [u8], AttestationError> {
    match field(m, name) {
        Some(Value::Bytes(b)) => Ok(b),
        _ => Err(AttestationError::Malformed(format!(
            "{name} is missing or not a byte string"
        ))),
    }
}

fn int(m: &[(Value, Value)], name: &str) -> Result<i64, AttestationError> {
    match field(m, name) {
        Some(Value::Integer(i)) => i64::try_from(*i)
            .map_err(|_| AttestationError::Malformed(format!("{name} is out of range"))),
        _ => Err(AttestationError::Malformed(format!(
            "{name} is missing or not an integer"
        ))),
    }
}

fn x5c(m: &[(Value, Value)]) -> Result<Vec<Vec<u8>>, AttestationError> {
    match field(m, "x5c") {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => Ok(b.clone()),
                _ => Err(AttestationError::Malformed(
                    "an x5c entry is not a byte string".into(),
                )),
            })
            .collect(),
        Some(_) => Err(AttestationError::Malformed(
            "x5c is not a non-empty array".into(),
        )),
    }
}

/// Lower-case hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// [`verify`] for a makeCredential answer that [`crate::verify::verify_new_credential`]
/// has accepted.
pub(crate) fn verify_new(
    policy: &Policy,
    made: &crate::MadeCredential,
    challenge: &[u8; 32],
    rp_id_hash: &[u8; 32],
    new: &crate::verify::NewCredential,
) -> Result<Attested, AttestationError> {
    let cdh = crate::verify::client_data_hash(challenge);
    let es256_point = match &new.public_key {
        crate::verify::PublicKey::Es256(vk) => {
            let mut p = [0u8; 65];
            p.copy_from_slice(vk.to_encoded_point(false).as_bytes());
            Some(p)
        }
        crate::verify::PublicKey::EdDsa(_) => None,
    };
    verify(
        &made.attestation,
        &NewKey {
            auth_data: &made.auth_data,
            client_data_hash: &cdh,
            rp_id_hash,
            aaguid: &new.aaguid,
            credential_id: &new.credential_id,
            es256_point,
        },
        policy,
    )
}

/// The user's credentials that were attested at enrolment (the side file beside the
/// store's enrolment file); an unreadable side file is an error (fail closed).
pub(crate) fn only_attested(
    store: &crate::CredentialStore,
    username: &str,
    creds: &[crate::Credential],
) -> Result<Vec<crate::Credential>, crate::StoreError> {
    let records = AttestationRecords::beside(store.path()).load()?;
    Ok(creds
        .iter()
        .filter(|c| {
            records
                .get(&(username.to_string(), c.id.clone()))
                .is_some_and(|record| record.covers(&c.public_key))
        })
        .cloned()
        .collect())
}
