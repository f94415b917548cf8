//! Which credentials were attested at enrolment: `FILE.attestation` beside the
//! enrolment file (whose pam-u2f line format stays untouched), one line each:
//!
//! ```text
//! user:credential_id_b64:aaguid_hex:fmt:root subject
//! ```
//!
//! Written atomically and durably (temporary file, fsync, rename, fsync of the
//! directory), mode 0600, refused when others may write it: as the sign counts are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::credentials::StoreError;
use crate::fsutil;

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
}

impl From<&Attested> for AttestationRecord {
    fn from(a: &Attested) -> Self {
        Self {
            aaguid: a.aaguid.clone(),
            fmt: a.fmt.clone(),
            root_subject: a.root_subject.clone(),
        }
    }
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
                let root_subject = it.next()?.to_string();
                (!user.is_empty() && !fmt.is_empty()).then_some((
                    (user, id),
                    AttestationRecord {
                        aaguid: aaguid.to_ascii_lowercase(),
                        fmt,
                        root_subject,
                    },
                ))
            };
            let (k, v) = parse().ok_or_else(|| StoreError::Parse {
                path: self.path.display().to_string(),
                line: i + 1,
                reason: "expected user:credential_id_b64:aaguid_hex:fmt:root_subject".into(),
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
            "# chromecard attested credentials: user:credential_id_b64:aaguid_hex:fmt:root_subject (written by k_proxy enroll)\n",
        );
        for ((u, id), r) in map {
            // A subject is one line: control characters would break the format.
            let subject: String = r
                .root_subject
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            text.push_str(&format!(
                "{u}:{}:{}:{}:{subject}\n",
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
