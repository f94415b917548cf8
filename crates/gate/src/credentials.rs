//! The enrolment file and the sign counts kept beside it.
//!
//! The enrolment file follows pam-u2f's authfile: one line per user,
//!
//! ```text
//! alice:CREDENTIAL_ID_B64,PUBLIC_KEY_B64,es256,+presence:CREDENTIAL_ID_B64,PUBLIC_KEY_B64,eddsa,+presence+verification
//! ```
//!
//! i.e. the user name, then one `:`-separated entry per credential with four
//! `,`-separated fields: the credential id (standard base64), the public key
//! (standard base64 of the 65-byte uncompressed P-256 point, or pamu2fcfg's 64-byte
//! `x || y`, for `es256`; of the 32-byte key for `eddsa`), the COSE type (in any case,
//! as pam-u2f reads it), and the options (`+presence`, always enforced;
//! `+verification`, also require UV). pam-u2f's pre-1.1 entries
//! (`KEYHANDLE_WEBSAFE_B64,PUBLIC_KEY_HEX`) are read as ES256 `+presence`. `#` starts a
//! comment line. A user on several lines has the credentials of all of them.
//!
//! `+pin` (pam-u2f's `-N`) asks for the key's PIN at every login, and the UV flag.
//! A line that cannot be used (a resident-key entry `*`, a bad key, a user name
//! login refuses, a credential listed twice, more than [`MAX_CREDENTIALS_PER_USER`])
//! costs only that line: it is reported (with its line number, never its key material)
//! and kept, verbatim, when k_proxy rewrites the file. Only a file that is not an
//! authfile at all (NUL bytes, an OpenSSH key file) is refused as a whole.
//!
//! Sign counts live in `<file>.counters`, one `user:credential_id_b64:count` line
//! each, written by k_proxy after every successful login. Both files are replaced
//! atomically (temp file, fsync, rename, fsync of the directory) and refused when
//! group- or world-writable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use crate::fsutil;
use crate::verify::{check_sign_count, KeyKind, PublicKey, Rejection, MAX_CREDENTIAL_ID_LEN};

/// Largest enrolment or counter file read (a generous bound for hand-edited files).
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Credentials one user may hold: pam-u2f's default `max_devices`.
pub const MAX_CREDENTIALS_PER_USER: usize = 24;

/// pam-u2f's pre-1.1 key handles: websafe base64, padding optional.
const WEBSAFE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One enrolled credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The credential id the key gave at enrolment.
    pub id: Vec<u8>,
    /// Its public key.
    pub public_key: PublicKey,
    /// `+verification`: also require the UV flag.
    pub require_uv: bool,
    /// `+pin`: verify the user with the key's PIN (and require the UV flag).
    pub require_pin: bool,
}

impl Credential {
    /// A short, stable label for logs: the first 12 base64 characters of the id.
    pub fn label(&self) -> String {
        credential_label(&self.id)
    }
}

/// The first 12 base64 characters of a credential id, for logs and `list`.
pub fn credential_label(id: &[u8]) -> String {
    STANDARD.encode(id).chars().take(12).collect()
}

/// A line of the enrolment file that k_proxy does not use. It is kept, verbatim, when
/// the file is rewritten, so an `enroll` or `remove` never deletes what it could not read.
#[derive(Clone)]
pub struct RefusedLine {
    /// Its line number in the file it was read from (1-based).
    pub line: usize,
    /// Why it is not used. Never quotes key material.
    pub reason: String,
    text: String,
}

/// Without the line's text: it holds key material.
impl std::fmt::Debug for RefusedLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusedLine")
            .field("line", &self.line)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// The parsed enrolment file: users in name order, credentials in file order, and the
/// lines that are not used.
#[derive(Debug, Clone, Default)]
pub struct Enrolments {
    users: BTreeMap<String, Vec<Credential>>,
    refused: Vec<RefusedLine>,
}

/// Equal when the same users have the same credentials and the same lines are refused
/// (line numbers and wording aside: rewriting the file renumbers them).
impl PartialEq for Enrolments {
    fn eq(&self, other: &Self) -> bool {
        self.users == other.users
            && self.refused.len() == other.refused.len()
            && self
                .refused
                .iter()
                .zip(&other.refused)
                .all(|(a, b)| a.text == b.text)
    }
}

impl Eq for Enrolments {}

/// Why the enrolment file or the counters file was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A line does not parse. Never quotes the line (it holds key material).
    #[error("{path}: line {line}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: String,
    },
    /// The file as a whole is not an enrolment file.
    #[error("{path}: {reason}")]
    NotAnAuthfile { path: String, reason: String },
    /// Reading, writing or a permission check failed.
    #[error("{path}: {detail}")]
    Io { path: String, detail: String },
}

impl Enrolments {
    /// Parses the enrolment file's text. `path` is for messages only.
    ///
    /// Refuses the whole file only when it is not an authfile at all; a line that
    /// cannot be used is listed in [`Enrolments::refused`] and the other lines count.
    pub fn parse(text: &str, path: &str) -> Result<Self, StoreError> {
        let whole = |reason: &str| StoreError::NotAnAuthfile {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if text.contains('\0') {
            return Err(whole("the file holds NUL bytes: it is not a text file"));
        }
        if text.lines().any(|l| l.trim().starts_with("-----BEGIN")) {
            return Err(whole(
                "this is a PEM/OpenSSH key file (pam-u2f's `sshformat`), not a \
                 `user:credential` enrolment file; k_proxy does not read SSH credentials \
                 (enrol the key with `k_proxy enroll`)",
            ));
        }
        let mut e = Enrolments::default();
        // Credential id -> the line that enrolled it (accepted lines only).
        let mut seen_ids: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match e.accept_line(line, &seen_ids) {
                Ok((user, creds)) => {
                    for c in &creds {
                        seen_ids.insert(c.id.clone(), line_no);
                    }
                    e.users.entry(user).or_default().extend(creds);
                }
                Err(reason) => e.refused.push(RefusedLine {
                    line: line_no,
                    reason,
                    text: line.to_string(),
                }),
            }
        }
        Ok(e)
    }

    /// One line: its user and credentials, or why it is not used.
    fn accept_line(
        &self,
        line: &str,
        seen_ids: &HashMap<Vec<u8>, usize>,
    ) -> Result<(String, Vec<Credential>), String> {
        let Some((user, rest)) = line.split_once(':') else {
            return Err("not `user:credential[:credential...]` (no `:`)".to_string());
        };
        let mut creds: Vec<Credential> = Vec::new();
        // Empty entries (`::`, a trailing `:`) are skipped, as pam-u2f's strtok does.
        for (n, entry) in rest.split(':').filter(|e| !e.is_empty()).enumerate() {
            let cred = parse_entry(entry).map_err(|r| format!("credential {}: {r}", n + 1))?;
            if creds.iter().any(|c| c.id == cred.id) {
                return Err(format!(
                    "credential {} is listed twice on this line",
                    cred.label()
                ));
            }
            if let Some(other) = seen_ids.get(&cred.id) {
                return Err(format!(
                    "credential {} is already listed on line {other}",
                    cred.label()
                ));
            }
            creds.push(cred);
        }
        if let Err(e) = chromecard_hop::validate_username(user) {
            let shown: String = user.chars().take(80).collect();
            return Err(format!(
                "user name {shown:?} is not one k_proxy's login accepts ({e}); the line is \
                 kept in the file but nobody can log in with it"
            ));
        }
        if creds.is_empty() {
            return Err(format!("user {user:?} has no credential entries"));
        }
        let before = self.credentials_of(user).len();
        if before + creds.len() > MAX_CREDENTIALS_PER_USER {
            return Err(format!(
                "this line would give user {user:?} {} credentials; at most \
                 {MAX_CREDENTIALS_PER_USER} (pam-u2f's default max_devices)",
                before + creds.len()
            ));
        }
        Ok((user.to_string(), creds))
    }

    /// The file's text (a header comment, then one line per user, then the lines that
    /// are not used, verbatim).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# chromecard enrolment file (pam-u2f authfile format):\n\
             # user:credential_id_b64,public_key_b64,cose_type,options[:...]\n\
             # Written by `k_proxy enroll`; sign counts are kept in the .counters file beside it.\n",
        );
        for (user, creds) in &self.users {
            out.push_str(user);
            for c in creds {
                out.push(':');
                out.push_str(&STANDARD.encode(&c.id));
                out.push(',');
                out.push_str(&STANDARD.encode(c.public_key.to_raw()));
                out.push(',');
                out.push_str(c.public_key.kind().as_str());
                out.push(',');
                out.push_str("+presence");
                if c.require_uv {
                    out.push_str("+verification");
                }
                if c.require_pin {
                    out.push_str("+pin");
                }
            }
            out.push('\n');
        }
        if !self.refused.is_empty() {
            out.push_str(
                "# Lines k_proxy does not use (kept as they were; see its log for why):\n",
            );
            for r in &self.refused {
                out.push_str(&r.text);
                out.push('\n');
            }
        }
        out
    }

    /// The credentials of `user` (empty when not enrolled).
    pub fn credentials_of(&self, user: &str) -> &[Credential] {
        self.users.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// All users and their credentials, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[Credential])> {
        self.users.iter().map(|(u, c)| (u.as_str(), c.as_slice()))
    }

    /// The lines that are not used, in file order.
    pub fn refused(&self) -> &[RefusedLine] {
        &self.refused
    }

    /// Adds a credential. Refuses a credential id that is already enrolled (for anyone)
    /// and more than [`MAX_CREDENTIALS_PER_USER`].
    pub fn add(&mut self, user: &str, cred: Credential) -> Result<(), String> {
        chromecard_hop::validate_username(user).map_err(|e| e.to_string())?;
        if let Some((owner, _)) = self
            .users
            .iter()
            .find(|(_, creds)| creds.iter().any(|c| c.id == cred.id))
        {
            return Err(format!(
                "credential {} is already enrolled for {owner:?}",
                cred.label()
            ));
        }
        let creds = self.users.entry(user.to_string()).or_default();
        if creds.len() >= MAX_CREDENTIALS_PER_USER {
            return Err(format!(
                "{user:?} already has {MAX_CREDENTIALS_PER_USER} credentials"
            ));
        }
        creds.push(cred);
        Ok(())
    }

    /// Removes `user`'s credentials whose base64 id starts with `id_prefix` (all of them
    /// when `None`). Returns how many were removed. Lines that are not used are kept.
    pub fn remove(&mut self, user: &str, id_prefix: Option<&str>) -> usize {
        let Some(creds) = self.users.get_mut(user) else {
            return 0;
        };
        let before = creds.len();
        match id_prefix {
            None => creds.clear(),
            Some(prefix) => creds.retain(|c| !STANDARD.encode(&c.id).starts_with(prefix)),
        }
        let removed = before - creds.len();
        if creds.is_empty() {
            self.users.remove(user);
        }
        removed
    }
}

/// What a resident-key line needs and k_proxy does not do; see the README.
const RESIDENT_REFUSAL: &str = "a resident-key entry (credential id `*`, from `pamu2fcfg -r`) \
     is not supported: k_proxy always names the credential it asks for (getAssertion with an \
     allowList; Qubes' CTAP proxy can forward nothing else); enrol the key with `k_proxy \
     enroll` or `pamu2fcfg` without -r";

fn parse_entry(entry: &str) -> Result<Credential, String> {
    let fields: Vec<&str> = entry.split(',').collect();
    let (id, key, kind, options) = match fields.as_slice() {
        [id, key, kind, options] => (*id, *key, *kind, *options),
        // pam-u2f reads a missing fourth field as no options.
        [id, key, kind] => (*id, *key, *kind, ""),
        [id, key] => return parse_old_entry(id, key),
        _ => {
            return Err(format!(
                "{} fields; expected 4 (credential_id,public_key,cose_type,options)",
                fields.len()
            ))
        }
    };
    if id == "*" {
        return Err(RESIDENT_REFUSAL.to_string());
    }
    let id = STANDARD
        .decode(id)
        .map_err(|_| "the credential id is not valid base64".to_string())?;
    check_id_len(&id)?;
    let kind = KeyKind::parse(&kind.to_ascii_lowercase()).ok_or_else(|| {
        let shown: String = kind.chars().take(16).collect();
        format!("COSE type {shown:?} is not supported; k_proxy verifies es256 and eddsa")
    })?;
    let (require_uv, require_pin) = parse_options(options)?;
    let raw = STANDARD
        .decode(key)
        .map_err(|_| "the public key is not valid base64".to_string())?;
    let public_key = PublicKey::from_raw(kind, &raw).map_err(|_| {
        format!(
            "the public key is not a valid {} key",
            kind.as_str().to_uppercase()
        )
    })?;
    Ok(Credential {
        id,
        public_key,
        require_uv,
        require_pin,
    })
}

/// pam-u2f before 1.1 (`pamu2fcfg` of the U2F era): `KEYHANDLE,PUBLIC_KEY` with the
/// key handle in websafe base64 and the public key in hex (the 65-byte uncompressed
/// P-256 point); ES256, `+presence`.
fn parse_old_entry(id: &str, key: &str) -> Result<Credential, String> {
    const OLD: &str = "in pam-u2f's pre-1.1 format (`keyhandle,pubkey`)";
    let id = WEBSAFE
        .decode(id)
        .map_err(|_| format!("{OLD}: the key handle is not valid websafe base64"))?;
    check_id_len(&id)?;
    let raw = hex_decode(key).ok_or_else(|| format!("{OLD}: the public key is not hex"))?;
    if raw.len() != 65 {
        return Err(format!(
            "{OLD}: the public key is {} bytes; expected the 65-byte uncompressed P-256 point",
            raw.len()
        ));
    }
    let public_key = PublicKey::from_raw(KeyKind::Es256, &raw)
        .map_err(|_| format!("{OLD}: the public key is not a valid ES256 key"))?;
    Ok(Credential {
        id,
        public_key,
        require_uv: false,
        require_pin: false,
    })
}

fn check_id_len(id: &[u8]) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CREDENTIAL_ID_LEN {
        return Err(format!(
            "the credential id is {} bytes; expected 1 to {MAX_CREDENTIAL_ID_LEN}",
            id.len()
        ));
    }
    Ok(())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `+presence`, `+verification`, `+pin`, in any combination: (require UV, require the
/// PIN). Empty means `+presence`. Anything else (a typo) is refused: k_proxy cannot
/// enforce it.
fn parse_options(options: &str) -> Result<(bool, bool), String> {
    if options.is_empty() {
        return Ok((false, false));
    }
    let Some(rest) = options.strip_prefix('+') else {
        let shown: String = options.chars().take(40).collect();
        return Err(format!(
            "options {shown:?} must be like +presence or +presence+verification"
        ));
    };
    let mut uv = false;
    let mut pin = false;
    for opt in rest.split('+') {
        match opt {
            "presence" => {}
            "verification" => uv = true,
            "pin" => pin = true,
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!(
                    "option {shown:?} is not supported (k_proxy enforces +presence, \
                     +verification and +pin)"
                ));
            }
        }
    }
    Ok((uv, pin))
}

/// The enrolment file and its counters on disk.
///
/// One k_proxy process serves logins from one enrolment file: the counters are
/// updated under an in-process lock and a file lock shared with `k_proxy enroll`
/// (which records a new credential's count while k_proxy may be serving), and the
/// in-memory maximum is kept, so a counter never goes back even if the file were
/// rolled back. k_proxy re-reads the enrolment file at every login.
pub struct CredentialStore {
    path: PathBuf,
    counters_path: PathBuf,
    /// `FILE.counters.lock`: held across each read-merge-write of the counters.
    counters_lock_path: PathBuf,
    /// `FILE.lock`: held across each read-change-write of the enrolment file (enrol and
    /// remove), so that two changes at once cannot undo each other.
    enrolment_lock_path: PathBuf,
    /// (user, credential id) -> highest count seen; also the lock for counter updates.
    counters: Mutex<HashMap<(String, Vec<u8>), u32>>,
    /// The refused lines last logged (`None` before the first load), so that each
    /// change of the file is reported once, at start-up and at the reload that sees it,
    /// not at every login.
    reported: Mutex<Option<Vec<(usize, String)>>>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CredentialStore {
    /// A store for the enrolment file at `path` (which need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut counters_path = path.clone().into_os_string();
        counters_path.push(".counters");
        let mut counters_lock_path = counters_path.clone();
        counters_lock_path.push(".lock");
        let mut enrolment_lock_path = path.clone().into_os_string();
        enrolment_lock_path.push(".lock");
        Self {
            path,
            counters_path: counters_path.into(),
            counters_lock_path: counters_lock_path.into(),
            enrolment_lock_path: enrolment_lock_path.into(),
            counters: Mutex::new(HashMap::new()),
            reported: Mutex::new(None),
        }
    }

    /// The enrolment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sign-count file beside it.
    pub fn counters_path(&self) -> &Path {
        &self.counters_path
    }

    fn io_err(path: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }

    /// Reads and checks the enrolment file. A missing file is an empty enrolment.
    pub fn load(&self) -> Result<Enrolments, StoreError> {
        let Some(text) = fsutil::read_checked(&self.path, MAX_FILE_BYTES)
            .map_err(|e| Self::io_err(&self.path, e))?
        else {
            return Ok(Enrolments::default());
        };
        let e = Enrolments::parse(&text, &self.path.display().to_string())?;
        self.report(&e);
        Ok(e)
    }

    /// Logs the lines that are not used, when they differ from the last report.
    fn report(&self, e: &Enrolments) {
        let now: Vec<(usize, String)> = e
            .refused
            .iter()
            .map(|r| (r.line, r.reason.clone()))
            .collect();
        let mut last = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() == Some(&now) {
            return;
        }
        let file = self.path.display().to_string();
        for (line, reason) in &now {
            tracing::warn!(file = %file, line, "enrolment file: line {line} is not used: {reason}");
        }
        if now.is_empty() && last.is_some() {
            tracing::info!(file = %file, "enrolment file: every line is in use again");
        }
        *last = Some(now);
    }

    /// Checks that the enrolment file exists, is acceptable and parses; returns it.
    pub fn load_existing(&self) -> Result<Enrolments, StoreError> {
        if !self.path.is_file() {
            return Err(Self::io_err(
                &self.path,
                "does not exist; enrol a key first with `k_proxy enroll --username NAME --credentials-file ...`",
            ));
        }
        let e = self.load()?;
        self.read_counters()?;
        Ok(e)
    }

    /// An exclusive lock for changing the enrolment file, shared by every process (each
    /// `k_proxy enroll` and `enroll remove`): hold it from the [`CredentialStore::load`]
    /// the change is made to until its [`CredentialStore::save`]. Waits a few seconds
    /// for another holder, then gives up.
    pub fn lock_for_change(&self) -> Result<EnrolmentLock, StoreError> {
        let path = &self.enrolment_lock_path;
        fsutil::check_not_writable_by_others(path)
            .and_then(|_| fsutil::lock_exclusive(path, COUNTERS_LOCK_WAIT))
            .map(EnrolmentLock)
            .map_err(|e| Self::io_err(path, e))
    }

    /// Writes `enrolments` atomically.
    pub fn save(&self, enrolments: &Enrolments) -> Result<(), StoreError> {
        // Refuse to write beside a file others could have planted or may change.
        fsutil::check_not_writable_by_others(&self.path)
            .map_err(|e| Self::io_err(&self.path, e))?;
        fsutil::write_atomic(&self.path, enrolments.render().as_bytes())
            .map_err(|e| Self::io_err(&self.path, e))
    }

    fn read_counters(&self) -> Result<HashMap<(String, Vec<u8>), u32>, StoreError> {
        let p = &self.counters_path;
        let mut map = HashMap::new();
        let Some(text) = fsutil::read_checked(p, MAX_FILE_BYTES).map_err(|e| Self::io_err(p, e))?
        else {
            return Ok(map);
        };
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: &str| StoreError::Parse {
                path: p.display().to_string(),
                line: i + 1,
                reason: reason.to_string(),
            };
            let mut it = line.split(':');
            let (Some(user), Some(id), Some(count), None) =
                (it.next(), it.next(), it.next(), it.next())
            else {
                return Err(err("expected user:credential_id_b64:count"));
            };
            let id = STANDARD
                .decode(id)
                .map_err(|_| err("the credential id is not valid base64"))?;
            let count: u32 = count
                .parse()
                .map_err(|_| err("the count is not a 32-bit unsigned number"))?;
            let slot = map.entry((user.to_string(), id)).or_insert(0);
            *slot = (*slot).max(count);
        }
        Ok(map)
    }

    /// The stored sign count of a credential (0 when none is stored).
    pub fn stored_count(&self, user: &str, id: &[u8]) -> Result<u32, StoreError> {
        let mem = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let file = self.read_counters()?;
        let key = (user.to_string(), id.to_vec());
        Ok(file
            .get(&key)
            .copied()
            .unwrap_or(0)
            .max(mem.get(&key).copied().unwrap_or(0)))
    }

    /// The counter step of a login, atomic with respect to other logins in this
    /// process: checks `received` against the stored count ([`check_sign_count`]) and,
    /// if it passes, writes it durably before returning. On a refusal nothing is written.
    pub fn check_and_commit(
        &self,
        user: &str,
        id: &[u8],
        received: u32,
    ) -> Result<u32, CommitError> {
        let mut mem = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        // Another process (`k_proxy enroll` beside a serving k_proxy) rewrites the same
        // file: without this, the later writer would put back what the other replaced.
        let _other_processes = fsutil::check_not_writable_by_others(&self.counters_lock_path)
            .and_then(|_| fsutil::lock_exclusive(&self.counters_lock_path, COUNTERS_LOCK_WAIT))
            .map_err(|e| CommitError::Store(Self::io_err(&self.counters_lock_path, e)))?;
        let mut all = self.read_counters().map_err(CommitError::Store)?;
        // Merge both ways: the file may be ahead (another store in this process wrote
        // it) or behind (rolled back); keep the highest of each.
        for (k, v) in mem.iter() {
            let slot = all.entry(k.clone()).or_insert(0);
            *slot = (*slot).max(*v);
        }
        for (k, v) in &all {
            mem.insert(k.clone(), *v);
        }
        let key = (user.to_string(), id.to_vec());
        let stored = all.get(&key).copied().unwrap_or(0);
        check_sign_count(stored, received).map_err(CommitError::Rejected)?;
        if received == 0 && stored == 0 {
            // A key without a counter: nothing to record.
            return Ok(stored);
        }
        all.insert(key.clone(), received);
        let mut lines: Vec<String> = all
            .iter()
            .map(|((u, id), n)| format!("{u}:{}:{n}", STANDARD.encode(id)))
            .collect();
        lines.sort();
        let mut text = String::from(
            "# chromecard sign counts: user:credential_id_b64:count (written by k_proxy)\n",
        );
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        fsutil::check_not_writable_by_others(&self.counters_path)
            .and_then(|_| fsutil::write_atomic(&self.counters_path, text.as_bytes()))
            .map_err(|e| CommitError::Store(Self::io_err(&self.counters_path, e)))?;
        mem.insert(key, received);
        Ok(stored)
    }
}

/// How long a login waits for another process's hold on the counters (a few milliseconds
/// in practice) before it fails closed.
const COUNTERS_LOCK_WAIT: Duration = Duration::from_secs(5);

/// Held while the enrolment file is changed ([`CredentialStore::lock_for_change`]);
/// released when dropped.
#[must_use = "the lock is released when this is dropped"]
pub struct EnrolmentLock(#[allow(dead_code)] std::fs::File);

/// Why [`CredentialStore::check_and_commit`] refused.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The count did not increase.
    #[error(transparent)]
    Rejected(Rejection),
    /// The counters could not be read or written: fail closed.
    #[error(transparent)]
    Store(StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(seed: u8) -> PublicKey {
        let sk = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        PublicKey::Es256(*sk.verifying_key())
    }

    fn ed(seed: u8) -> PublicKey {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        PublicKey::EdDsa(sk.verifying_key())
    }

    fn cred(id: &[u8], seed: u8, uv: bool) -> Credential {
        Credential {
            id: id.to_vec(),
            public_key: key(seed),
            require_uv: uv,
            require_pin: false,
        }
    }

    /// Two changes at once (an enrolment saving while `enroll remove` runs): with the
    /// lock, the second reads what the first wrote, and neither undoes the other.
    #[test]
    fn changes_under_the_lock_do_not_undo_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let store = CredentialStore::new(&path);
        let mut start = Enrolments::default();
        start.add("bob", cred(b"bob-1", 2, false)).unwrap();
        store.save(&start).unwrap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let enrolling = {
            let path = path.clone();
            std::thread::spawn(move || {
                let store = CredentialStore::new(&path);
                let _changing = store.lock_for_change().unwrap();
                let mut now = store.load().unwrap();
                locked_tx.send(()).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(300));
                now.add("alice", cred(b"alice-1", 1, false)).unwrap();
                store.save(&now).unwrap();
            })
        };
        locked_rx.recv().unwrap();
        {
            let _changing = store.lock_for_change().unwrap();
            let mut now = store.load().unwrap();
            assert_eq!(now.remove("bob", None), 1);
            store.save(&now).unwrap();
        }
        enrolling.join().unwrap();
        let end = store.load().unwrap();
        assert_eq!(
            end.credentials_of("alice").len(),
            1,
            "the enrolment was undone"
        );
        assert!(
            end.credentials_of("bob").is_empty(),
            "the removal was undone"
        );
    }

    #[test]
    fn render_then_parse_round_trips() {
        let mut e = Enrolments::default();
        e.add("alice", cred(b"id-a1", 1, false)).unwrap();
        e.add("alice", cred(b"id-a2", 2, true)).unwrap();
        e.add(
            "bob",
            Credential {
                id: b"id-b".to_vec(),
                public_key: ed(3),
                require_uv: false,
                require_pin: false,
            },
        )
        .unwrap();
        let text = e.render();
        let back = Enrolments::parse(&text, "f").unwrap();
        assert_eq!(back, e);
        assert_eq!(back.credentials_of("alice").len(), 2);
        assert!(back.credentials_of("alice")[1].require_uv);
        assert!(back.credentials_of("carol").is_empty());
        let line = text.lines().find(|l| l.starts_with("alice:")).unwrap();
        assert_eq!(line.split(':').count(), 3);
        assert!(line.contains(",es256,+presence:"));
        assert!(line.ends_with(",es256,+presence+verification"));
        assert!(text.contains(",eddsa,+presence\n"));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let mut e = Enrolments::default();
        e.add("alice", cred(b"same", 1, false)).unwrap();
        let err = e.add("bob", cred(b"same", 2, false)).unwrap_err();
        assert!(err.contains("already enrolled for \"alice\""), "{err}");
    }

    #[test]
    fn remove_by_prefix_and_all() {
        let mut e = Enrolments::default();
        e.add("alice", cred(b"\x00\x01", 1, false)).unwrap();
        e.add("alice", cred(b"\xff\xfe", 2, false)).unwrap();
        let p = STANDARD.encode(b"\xff\xfe");
        assert_eq!(e.remove("alice", Some(&p[..3])), 1);
        assert_eq!(e.credentials_of("alice").len(), 1);
        assert_eq!(e.remove("alice", None), 1);
        assert!(e.credentials_of("alice").is_empty());
        assert_eq!(e.iter().count(), 0);
        assert_eq!(e.remove("nobody", None), 0);
    }

    fn line_for(seed: u8, kind: &str, options: &str) -> String {
        format!(
            "alice:{},{},{kind},{options}",
            STANDARD.encode(b"cred"),
            STANDARD.encode(key(seed).to_raw())
        )
    }

    #[test]
    fn bad_lines_are_refused_alone_with_the_line_number_and_no_key_material() {
        let good = line_for(1, "es256", "+presence");
        assert!(Enrolments::parse(&good, "f").unwrap().refused().is_empty());
        // `+pin` alone (pamu2fcfg -N -P writes it so) asks for the PIN and UV.
        let pin = Enrolments::parse(&line_for(1, "es256", "+pin"), "f").unwrap();
        assert!(pin.refused().is_empty());
        assert!(pin.credentials_of("alice")[0].require_pin);
        let cases = [
            (
                format!("# c\n\n{}", line_for(1, "es256", "+pin+typo")),
                3,
                "\"typo\" is not supported",
            ),
            (line_for(1, "rs256", "+presence"), 1, "not supported"),
            (
                line_for(1, "eddsa", "+presence"),
                1,
                "not a valid EDDSA key",
            ),
            (line_for(1, "es256", "presence"), 1, "must be like"),
            ("alice".to_string(), 1, "no `:`"),
            ("alice:".to_string(), 1, "no credential entries"),
            ("alice:abc".to_string(), 1, "1 fields"),
            (
                line_for(1, "es256", "").replace("alice", "al ice"),
                1,
                "user name",
            ),
            (
                format!("{good}\n{}", good.replace("alice", "bob")),
                2,
                "already listed on line 1",
            ),
            ("alice:!!!,AAAA,es256,".to_string(), 1, "base64"),
        ];
        for (text, line, what) in cases {
            let e = Enrolments::parse(&text, "f").unwrap();
            let [r] = e.refused() else {
                panic!("{text:?} -> {:?}", e.refused());
            };
            assert!(
                r.line == line && r.reason.contains(what),
                "{text:?} -> {r:?}"
            );
            assert!(
                !r.reason.contains(&STANDARD.encode(key(1).to_raw())),
                "{r:?}"
            );
        }
        // A point that is not on the curve.
        let mut raw = key(1).to_raw();
        raw[64] ^= 1;
        let text = format!(
            "alice:{},{},es256,",
            STANDARD.encode(b"c"),
            STANDARD.encode(&raw)
        );
        let e = Enrolments::parse(&text, "f").unwrap();
        assert!(e.credentials_of("alice").is_empty());
        assert!(e.refused()[0].reason.contains("not a valid ES256 key"));
    }

    #[test]
    fn store_saves_atomically_and_refuses_writable_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path().join("creds"));
        assert!(store.load().unwrap().iter().next().is_none());
        assert!(store.load_existing().is_err());
        let mut e = Enrolments::default();
        e.add("alice", cred(b"a", 1, false)).unwrap();
        store.save(&e).unwrap();
        assert_eq!(store.load_existing().unwrap(), e);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("writable by group or others"), "{err}");
        assert!(store.save(&e).is_err());
    }

    #[test]
    fn a_concurrent_enrolment_process_neither_loses_nor_rolls_back_counts() {
        // A serving k_proxy commits alice's counts while `k_proxy enroll` processes (each
        // its own store, so no shared in-process lock) record new credentials' counts.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        const N: u32 = 150;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let serving = CredentialStore::new(&path);
                for n in 1..=N {
                    serving.check_and_commit("alice", b"a", n).unwrap();
                }
            });
            scope.spawn(|| {
                for i in 0..N {
                    let enrolling = CredentialStore::new(&path);
                    enrolling
                        .check_and_commit("bob", format!("new-{i}").as_bytes(), 7)
                        .unwrap();
                }
            });
        });
        // After a restart only the file counts.
        let fresh = CredentialStore::new(&path);
        assert_eq!(fresh.stored_count("alice", b"a").unwrap(), N);
        let lost = (0..N)
            .filter(|i| {
                fresh
                    .stored_count("bob", format!("new-{i}").as_bytes())
                    .unwrap()
                    == 0
            })
            .count();
        assert_eq!(lost, 0, "{lost} of {N} enrolment counts were overwritten");
        // Readable by all (it holds nothing), written by nobody: a service can take a lock
        // that root's `k_proxy enroll` made.
        let lock = std::fs::metadata(dir.path().join("creds.counters.lock")).unwrap();
        assert_eq!(lock.permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn counters_only_go_up_and_survive_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds");
        let store = CredentialStore::new(&path);
        assert_eq!(store.stored_count("alice", b"a").unwrap(), 0);
        assert_eq!(store.check_and_commit("alice", b"a", 5).unwrap(), 0);
        assert_eq!(store.stored_count("alice", b"a").unwrap(), 5);
        for bad in [5, 4, 0] {
            match store.check_and_commit("alice", b"a", bad) {
                Err(CommitError::Rejected(Rejection::CounterNotIncreased {
                    stored: 5,
                    received,
                })) => {
                    assert_eq!(received, bad)
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(store.check_and_commit("alice", b"a", 6).unwrap(), 5);
        // Other credentials are independent.
        assert_eq!(store.check_and_commit("bob", b"b", 1).unwrap(), 0);
        // A key without a counter (always 0) is accepted and nothing is written for it.
        assert_eq!(store.check_and_commit("carol", b"c", 0).unwrap(), 0);
        assert_eq!(store.check_and_commit("carol", b"c", 0).unwrap(), 0);

        // A new process (new store) reads the durable counts.
        let again = CredentialStore::new(&path);
        assert_eq!(again.stored_count("alice", b"a").unwrap(), 6);
        assert_eq!(again.stored_count("bob", b"b").unwrap(), 1);
        assert!(matches!(
            again.check_and_commit("alice", b"a", 6),
            Err(CommitError::Rejected(_))
        ));

        // Rolling the file back does not lower what this process has seen.
        std::fs::write(again.counters_path(), "alice:YQ==:1\n").unwrap();
        assert_eq!(again.stored_count("alice", b"a").unwrap(), 6);
        assert_eq!(store.stored_count("alice", b"a").unwrap(), 6);

        // A counters file others may write is refused: fail closed.
        std::fs::set_permissions(
            again.counters_path(),
            std::fs::Permissions::from_mode(0o622),
        )
        .unwrap();
        assert!(matches!(
            again.check_and_commit("alice", b"a", 7),
            Err(CommitError::Store(_))
        ));
    }

    #[test]
    fn a_garbled_counters_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = CredentialStore::new(dir.path().join("creds"));
        std::fs::write(store.counters_path(), "alice:YQ==:many\n").unwrap();
        assert!(store.stored_count("alice", b"a").is_err());
        assert!(matches!(
            store.check_and_commit("alice", b"a", 1),
            Err(CommitError::Store(_))
        ));
    }
}

#[cfg(test)]
mod interop_tests;
