//! Which credentials were attested at enrolment: `FILE.attestation` beside the
//! enrolment file (whose pam-u2f line format stays untouched), one line each:
//!
//! ```text
//! user:credential_id_b64:aaguid_hex:fmt:key_sha256_hex:root subject
//! ```
//!
//! The key's hash ties the record to the public key that was attested, not only to the
//! credential id, which a device chooses (and can learn from an allow list). A line of the
//! first format, without it, still parses, but vouches for no key: with
//! `--require-attested` that credential no longer logs in until it is enrolled again.
//!
//! Written atomically and durably (temporary file, fsync, rename, fsync of the
//! directory), mode 0600, refused when others may write it: as the sign counts are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use sha2::{Digest, Sha256};

use crate::credentials::StoreError;
use crate::fsutil;
use crate::verify::PublicKey;

use super::Attested;

/// Largest side file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One attested credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationRecord {
    /// The authenticator's AAGUID, hex.
    pub aaguid: String,
    /// The attestation format.
    pub fmt: String,
    /// The subject of the root the chain led to.
    pub root_subject: String,
    /// SHA-256 (hex) of the attested public key ([`key_fingerprint`]); `None` in a line
    /// written before records named their key, which then vouches for no key.
    pub key_sha256: Option<String>,
}

impl AttestationRecord {
    /// The record of `a`, the attestation of the credential whose public key is `key`.
    pub fn new(a: &Attested, key: &PublicKey) -> Self {
        Self {
            aaguid: a.aaguid.clone(),
            fmt: a.fmt.clone(),
            root_subject: a.root_subject.clone(),
            key_sha256: Some(key_fingerprint(key)),
        }
    }

    /// Whether this record vouches for `key`.
    pub fn covers(&self, key: &PublicKey) -> bool {
        self.key_sha256.as_deref() == Some(key_fingerprint(key).as_str())
    }
}

/// SHA-256 (hex) of a public key's type and raw bytes.
pub fn key_fingerprint(key: &PublicKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(key.kind().as_str().as_bytes());
    hasher.update([0]);
    hasher.update(key.to_raw());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The side file.
#[derive(Debug, Clone)]
pub struct AttestationRecords {
    path: PathBuf,
}

type Map = BTreeMap<(String, Vec<u8>), AttestationRecord>;

impl AttestationRecords {
    /// The side file of the enrolment file `enrolment_file`: `<file>.attestation`.
    pub fn beside(enrolment_file: &Path) -> Self {
        let mut p = enrolment_file.as_os_str().to_owned();
        p.push(".attestation");
        Self { path: p.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, detail: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            detail: detail.to_string(),
        }
    }

    /// Reads the file (missing: nobody attested). Refused when others may write it or a
    /// line does not parse: the caller fails closed.
    pub fn load(&self) -> Result<Map, StoreError> {
        let mut map = Map::new();
        let Some(text) =
            fsutil::read_checked(&self.path, MAX_FILE_BYTES).map_err(|e| self.err(e))?
        else {
            return Ok(map);
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parse = || -> Option<((String, Vec<u8>), AttestationRecord)> {
                let mut it = line.splitn(5, ':');
                let user = it.next()?.to_string();
                let id = STANDARD.decode(it.next()?).ok()?;
                let aaguid = it.next()?;
                if aaguid.len() != 32 || !aaguid.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let fmt = it.next()?.to_string();
                let rest = it.next()?;
                // The key's hash, when the line has one: 64 hex digits, then a colon.
                let (key_sha256, root_subject) = match rest.split_at_checked(64) {
                    Some((hash, subject))
                        if hash.bytes().all(|b| b.is_ascii_hexdigit())
                            && subject.starts_with(':') =>
                    {
                        (Some(hash.to_ascii_lowercase()), subject[1..].to_string())
                    }
                    _ => (None, rest.to_string()),
                };
                (!user.is_empty() && !fmt.is_empty()).then_some((
                    (user, id),
                    AttestationRecord {
                        aaguid: aaguid.to_ascii_lowercase(),
                        fmt,
                        root_subject,
                        key_sha256,
                    },
                ))
            };
            let (k, v) = parse().ok_or_else(|| StoreError::Parse {
                path: self.path.display().to_string(),
                line: i + 1,
                reason:
                    "expected user:credential_id_b64:aaguid_hex:fmt:key_sha256_hex:root_subject"
                        .into(),
            })?;
            map.insert(k, v);
        }
        Ok(map)
    }

    /// The record of one credential, if it was attested.
    pub fn get(&self, user: &str, id: &[u8]) -> Result<Option<AttestationRecord>, StoreError> {
        Ok(self.load()?.remove(&(user.to_string(), id.to_vec())))
    }

    /// Adds (or replaces) one credential's record, atomically and durably.
    pub fn add(&self, user: &str, id: &[u8], record: AttestationRecord) -> Result<(), StoreError> {
        let mut map = self.load()?;
        map.insert((user.to_string(), id.to_vec()), record);
        self.save(&map)
    }

    /// Keeps only the records of credentials for which `keep(user, id)` holds (after
    /// `enroll remove`); returns how many were dropped. Writes only when one was.
    pub fn retain(&self, keep: impl Fn(&str, &[u8]) -> bool) -> Result<usize, StoreError> {
        let mut map = self.load()?;
        let before = map.len();
        map.retain(|(u, id), _| keep(u, id));
        let dropped = before - map.len();
        if dropped > 0 {
            self.save(&map)?;
        }
        Ok(dropped)
    }

    fn save(&self, map: &Map) -> Result<(), StoreError> {
        let mut text = String::from(
            "# chromecard attested credentials: user:credential_id_b64:aaguid_hex:fmt:key_sha256_hex:root_subject (written by k_proxy enroll)\n",
        );
        for ((u, id), r) in map {
            // A subject is one line: control characters would break the format.
            let subject: String = r
                .root_subject
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let key = r
                .key_sha256
                .as_deref()
                .map(|hash| format!("{hash}:"))
                .unwrap_or_default();
            text.push_str(&format!(
                "{u}:{}:{}:{}:{key}{subject}\n",
                STANDARD.encode(id),
                r.aaguid,
                r.fmt
            ));
        }
        fsutil::check_not_writable_by_others(&self.path)
            .and_then(|_| fsutil::write_atomic(&self.path, text.as_bytes()))
            .map_err(|e| self.err(e))
    }
}
