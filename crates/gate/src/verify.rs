//! Assertion verification: the security core of the gate.
//!
//! Pure functions over bytes: no device, no I/O, no clock. Whatever an
//! authenticator (the USB key or the software one) answered, the gate checks it
//! here, so CI exercises every line with the software authenticator and the
//! known-answer tests.
//!
//! What is checked, and in which order ([`verify_assertion`]):
//! 1. authenticator data is well formed: 32-byte rpIdHash, flags (BS never without
//!    BE, WebAuthn L3 §6.1, §7.1 and §7.2), 4-byte signCount, no attested credential
//!    data (AT clear), extension data exactly one well-formed CBOR map (shortest
//!    encodings, no duplicate keys, UTF-8 text, no tags, only false/true/null as
//!    simple values) when ED is set and nothing otherwise;
//! 2. rpIdHash = SHA-256(rp id);
//! 3. the signature over `authenticatorData || clientDataHash` with the enrolled
//!    public key: ES256 (ECDSA P-256 / SHA-256, DER signature) or EdDSA (Ed25519,
//!    strict verification);
//! 4. UP set; UV set when the enrolment (or the gate) asks for it.
//!
//! The credential id and the sign count need the enrolment file and are checked by
//! the login ceremony with [`check_sign_count`].
//!
//! Every parser here takes untrusted bytes: no panics, no unchecked indexing, no
//! allocation sized by a length field.

use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest, Sha256};

use crate::cbor::{self, Reader};

/// Flag bits of authenticator data (WebAuthn §6.1).
pub const FLAG_UP: u8 = 0x01;
/// User verified.
pub const FLAG_UV: u8 = 0x04;
/// Backup eligible (WebAuthn L3): the credential may be backed up (synced).
pub const FLAG_BE: u8 = 0x08;
/// Backup state (WebAuthn L3): the credential is backed up. Never set without BE.
pub const FLAG_BS: u8 = 0x10;
/// Attested credential data included.
pub const FLAG_AT: u8 = 0x40;
/// Extension data included.
pub const FLAG_ED: u8 = 0x80;

/// rpIdHash (32) + flags (1) + signCount (4).
const FIXED_LEN: usize = 37;
/// CTAP2: credential ids are at most 1023 bytes.
pub const MAX_CREDENTIAL_ID_LEN: usize = 1023;

/// COSE algorithm identifiers.
const COSE_ALG_ES256: i128 = -7;
const COSE_ALG_EDDSA: i128 = -8;
/// COSE key types and curves.
const COSE_KTY_OKP: i128 = 1;
const COSE_KTY_EC2: i128 = 2;
const COSE_CRV_P256: i128 = 1;
const COSE_CRV_ED25519: i128 = 6;
/// COSE key map labels.
const LABEL_KTY: i128 = 1;
const LABEL_ALG: i128 = 3;
const LABEL_CRV: i128 = -1;
const LABEL_X: i128 = -2;
const LABEL_Y: i128 = -3;

/// Why an answer from an authenticator was not accepted. Each is a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The authenticator data is truncated, has trailing bytes, or carries data it must not.
    #[error("malformed authenticator data")]
    MalformedAuthData,
    /// The public key (COSE or stored form) is malformed or of an unsupported type.
    #[error("malformed or unsupported public key")]
    BadPublicKey,
    /// rpIdHash is not SHA-256 of our relying-party id.
    #[error("rpIdHash does not match the relying party id")]
    RpMismatch,
    /// The signature does not verify with the enrolled key (or is not a valid encoding).
    #[error("the signature does not verify with the enrolled public key")]
    BadSignature,
    /// The UP flag is clear: the key did not see a touch.
    #[error("the user-present flag is clear")]
    UserNotPresent,
    /// The UV flag is clear but user verification was required.
    #[error("the user-verified flag is clear but verification is required")]
    UserNotVerified,
    /// The credential the key used is not one of this user's.
    #[error("the credential is not enrolled for this user")]
    UnknownCredential,
    /// signCount did not increase: the key may have been cloned.
    #[error("signCount {received} does not exceed the stored {stored}: possible cloned key")]
    CounterNotIncreased { stored: u32, received: u32 },
    /// A new credential (enrolment) came without attested credential data.
    #[error("the new credential carries no attested credential data")]
    NoAttestedCredential,
}

impl Rejection {
    /// Stable snake_case code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::MalformedAuthData => "malformed_assertion",
            Rejection::BadPublicKey => "bad_public_key",
            Rejection::RpMismatch => "rp_mismatch",
            Rejection::BadSignature => "bad_signature",
            Rejection::UserNotPresent => "user_not_present",
            Rejection::UserNotVerified => "user_not_verified",
            Rejection::UnknownCredential => "unknown_credential",
            Rejection::CounterNotIncreased { .. } => "counter_not_increased",
            Rejection::NoAttestedCredential => "malformed_credential",
        }
    }
}

/// SHA-256 of the relying-party id, as it appears in authenticator data.
pub fn rp_id_hash(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

/// SHA-256 of a challenge: the clientDataHash k_proxy sends with each request.
pub fn client_data_hash(challenge: &[u8]) -> [u8; 32] {
    Sha256::digest(challenge).into()
}

/// The kinds of credential public key we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256 (COSE -7).
    Es256,
    /// Ed25519 (COSE -8).
    EdDsa,
}

impl KeyKind {
    /// The name in the enrolment file (pam-u2f's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Es256 => "es256",
            KeyKind::EdDsa => "eddsa",
        }
    }

    /// Parses the enrolment file's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "es256" => Some(KeyKind::Es256),
            "eddsa" => Some(KeyKind::EdDsa),
            _ => None,
        }
    }
}

/// A credential public key, validated on construction (a point on the curve).
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256 point.
    Es256(p256::ecdsa::VerifyingKey),
    /// Ed25519 point.
    EdDsa(ed25519_dalek::VerifyingKey),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey::{:?}({} bytes)",
            self.kind(),
            self.to_raw().len()
        )
    }
}

impl PublicKey {
    /// Which algorithm.
    pub fn kind(&self) -> KeyKind {
        match self {
            PublicKey::Es256(_) => KeyKind::Es256,
            PublicKey::EdDsa(_) => KeyKind::EdDsa,
        }
    }

    /// The stored form: ES256 the 65-byte uncompressed SEC1 point, EdDSA the 32-byte key.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            PublicKey::Es256(k) => k.to_encoded_point(false).as_bytes().to_vec(),
            PublicKey::EdDsa(k) => k.as_bytes().to_vec(),
        }
    }

    /// Parses the stored form (see [`PublicKey::to_raw`]). ES256 also takes the bare
    /// 64-byte `x || y` that pamu2fcfg writes; nothing else (no compressed points).
    pub fn from_raw(kind: KeyKind, raw: &[u8]) -> Result<Self, Rejection> {
        match kind {
            KeyKind::Es256 => {
                let mut point = [0u8; 65];
                match raw.len() {
                    65 if raw[0] == 0x04 => point.copy_from_slice(raw),
                    64 => {
                        point[0] = 0x04;
                        point[1..].copy_from_slice(raw);
                    }
                    _ => return Err(Rejection::BadPublicKey),
                }
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map(PublicKey::Es256)
                    .map_err(|_| Rejection::BadPublicKey)
            }
            KeyKind::EdDsa => {
                let bytes: &[u8; 32] = raw.try_into().map_err(|_| Rejection::BadPublicKey)?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
                    .map_err(|_| Rejection::BadPublicKey)?;
                if !ed25519_key_is_sound(&key) {
                    return Err(Rejection::BadPublicKey);
                }
                Ok(PublicKey::EdDsa(key))
            }
        }
    }

    /// Parses one COSE_Key at the start of `bytes`; returns the key and how many
    /// bytes it took. Strict: exactly the labels an ES256 (kty 2, alg -7, crv 1,
    /// x, y) or EdDSA (kty 1, alg -8, crv 6, x) credential key has, each once,
    /// 32-byte coordinates, shortest encodings.
    pub fn from_cose_prefix(bytes: &[u8]) -> Result<(Self, usize), Rejection> {
        let bad = |_| Rejection::BadPublicKey;
        let mut r = Reader::new(bytes);
        let head = r.head().map_err(bad)?;
        if head.major != 5 || !(4..=5).contains(&head.arg) {
            return Err(Rejection::BadPublicKey);
        }
        let (mut kty, mut alg, mut crv) = (None, None, None);
        let (mut x, mut y): (Option<&[u8]>, Option<&[u8]>) = (None, None);
        for _ in 0..head.arg {
            let label = r.int().map_err(bad)?;
            let fresh = match label {
                LABEL_KTY => kty.replace(r.int().map_err(bad)?).is_none(),
                LABEL_ALG => alg.replace(r.int().map_err(bad)?).is_none(),
                LABEL_CRV => crv.replace(r.int().map_err(bad)?).is_none(),
                LABEL_X => x.replace(r.bytes().map_err(bad)?).is_none(),
                LABEL_Y => y.replace(r.bytes().map_err(bad)?).is_none(),
                _ => false,
            };
            if !fresh {
                // Unknown label or a label given twice.
                return Err(Rejection::BadPublicKey);
            }
        }
        let key = match (kty, alg, crv, x, y) {
            (Some(COSE_KTY_EC2), Some(COSE_ALG_ES256), Some(COSE_CRV_P256), Some(x), Some(y))
                if head.arg == 5 && x.len() == 32 && y.len() == 32 =>
            {
                let mut point = [0u8; 65];
                point[0] = 0x04;
                point[1..33].copy_from_slice(x);
                point[33..].copy_from_slice(y);
                PublicKey::from_raw(KeyKind::Es256, &point)?
            }
            (Some(COSE_KTY_OKP), Some(COSE_ALG_EDDSA), Some(COSE_CRV_ED25519), Some(x), None)
                if head.arg == 4 =>
            {
                PublicKey::from_raw(KeyKind::EdDsa, x)?
            }
            _ => return Err(Rejection::BadPublicKey),
        };
        Ok((key, r.position()))
    }

    /// Parses a COSE_Key that must fill `bytes` exactly.
    pub fn from_cose(bytes: &[u8]) -> Result<Self, Rejection> {
        let (key, used) = Self::from_cose_prefix(bytes)?;
        if used != bytes.len() {
            return Err(Rejection::BadPublicKey);
        }
        Ok(key)
    }

    /// The COSE_Key encoding (CTAP2 canonical: labels in the order 1, 3, -1, -2, -3).
    pub fn to_cose(&self) -> Vec<u8> {
        match self {
            PublicKey::Es256(k) => {
                let p = k.to_encoded_point(false);
                let raw = p.as_bytes();
                let mut out = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
                out.extend_from_slice(&raw[1..33]);
                out.extend_from_slice(&[0x22, 0x58, 0x20]);
                out.extend_from_slice(&raw[33..65]);
                out
            }
            PublicKey::EdDsa(k) => {
                let mut out = vec![0xa4, 0x01, 0x01, 0x03, 0x27, 0x20, 0x06, 0x21, 0x58, 0x20];
                out.extend_from_slice(k.as_bytes());
                out
            }
        }
    }

    /// Verifies `signature` over `message`. ES256: DER-encoded ECDSA signature
    /// (strict DER; high-S accepted, as WebAuthn does), SHA-256 of the message.
    /// EdDSA: 64-byte Ed25519 signature, strict verification (no small-order keys or
    /// R, canonical S); the key itself was checked when it was parsed.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Rejection> {
        match self {
            PublicKey::Es256(k) => {
                let sig = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| Rejection::BadSignature)?;
                k.verify(message, &sig).map_err(|_| Rejection::BadSignature)
            }
            PublicKey::EdDsa(k) => {
                let sig = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| Rejection::BadSignature)?;
                k.verify_strict(message, &sig)
                    .map_err(|_| Rejection::BadSignature)
            }
        }
    }
}

/// Whether an Ed25519 public key is one a real key pair can have: its encoding is
/// canonical (the point compresses back to the same 32 bytes: y below the field prime,
/// no sign bit on x = 0), it is not of small order (strict verification refuses every
/// signature for such a key, and a forger needs no private key for it), and it has no
/// small-order component (an honest key is a multiple of the base point, which lies in
/// the prime-order subgroup). A key that fails any of these is refused when it is
/// parsed (enrolment, the enrolment file), not only when a login would fail.
fn ed25519_key_is_sound(key: &ed25519_dalek::VerifyingKey) -> bool {
    let point = key.to_edwards();
    point.compress().as_bytes() == key.as_bytes() && !key.is_weak() && point.is_torsion_free()
}

/// Attested credential data (present in a makeCredential answer).
#[derive(Debug, Clone)]
pub struct AttestedCredential<'a> {
    /// The authenticator model's AAGUID.
    pub aaguid: [u8; 16],
    /// The new credential's id.
    pub credential_id: &'a [u8],
    /// The new credential's public key.
    pub public_key: PublicKey,
}

/// Parsed authenticator data.
#[derive(Debug, Clone)]
pub struct AuthData<'a> {
    /// SHA-256 of the relying-party id the key signed for.
    pub rp_id_hash: [u8; 32],
    /// Flag bits ([`FLAG_UP`], ...).
    pub flags: u8,
    /// The signature counter.
    pub sign_count: u32,
    /// Present when AT is set.
    pub attested: Option<AttestedCredential<'a>>,
    /// The extension map's bytes when ED is set.
    pub extensions: Option<&'a [u8]>,
}

/// Parses authenticator data (WebAuthn §6.1). Rejects truncation, trailing bytes,
/// a malformed credential or extension map.
pub fn parse_auth_data(bytes: &[u8]) -> Result<AuthData<'_>, Rejection> {
    if bytes.len() < FIXED_LEN {
        return Err(Rejection::MalformedAuthData);
    }
    let (fixed, mut rest) = bytes.split_at(FIXED_LEN);
    let mut rp_id_hash = [0u8; 32];
    rp_id_hash.copy_from_slice(&fixed[..32]);
    let flags = fixed[32];
    if flags & FLAG_BS != 0 && flags & FLAG_BE == 0 {
        // WebAuthn L3 §6.1: a credential that is not backup eligible cannot be backed
        // up; §7.1 step 16 / §7.2 step 18 refuse it.
        return Err(Rejection::MalformedAuthData);
    }
    let sign_count = u32::from_be_bytes([fixed[33], fixed[34], fixed[35], fixed[36]]);

    let attested = if flags & FLAG_AT != 0 {
        if rest.len() < 18 {
            return Err(Rejection::MalformedAuthData);
        }
        let mut aaguid = [0u8; 16];
        aaguid.copy_from_slice(&rest[..16]);
        let id_len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        if id_len == 0 || id_len > MAX_CREDENTIAL_ID_LEN {
            return Err(Rejection::MalformedAuthData);
        }
        let after_len = &rest[18..];
        let credential_id = after_len
            .get(..id_len)
            .ok_or(Rejection::MalformedAuthData)?;
        let key_bytes = &after_len[id_len..];
        let (public_key, used) = PublicKey::from_cose_prefix(key_bytes)?;
        rest = &key_bytes[used..];
        Some(AttestedCredential {
            aaguid,
            credential_id,
            public_key,
        })
    } else {
        None
    };

    let extensions = if flags & FLAG_ED != 0 {
        if !cbor::is_single_map(rest) {
            return Err(Rejection::MalformedAuthData);
        }
        let ext = rest;
        rest = &[];
        Some(ext)
    } else {
        None
    };
    if !rest.is_empty() {
        return Err(Rejection::MalformedAuthData);
    }
    Ok(AuthData {
        rp_id_hash,
        flags,
        sign_count,
        attested,
        extensions,
    })
}

/// What the gate expects of one assertion.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// SHA-256 of our relying-party id.
    pub rp_id_hash: &'a [u8; 32],
    /// SHA-256 of the challenge we sent.
    pub client_data_hash: &'a [u8; 32],
    /// Whether UV must be set.
    pub require_uv: bool,
}

/// What a verified assertion tells us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The flag bits.
    pub flags: u8,
    /// The signature counter, to be checked against the stored one.
    pub sign_count: u32,
}

/// Verifies one assertion from `key` (see the module documentation for the steps).
pub fn verify_assertion(
    key: &PublicKey,
    auth_data: &[u8],
    signature: &[u8],
    expected: &Expected<'_>,
) -> Result<Verified, Rejection> {
    let parsed = parse_auth_data(auth_data)?;
    if parsed.attested.is_some() {
        // WebAuthn §6.1: an assertion never carries attested credential data.
        return Err(Rejection::MalformedAuthData);
    }
    if parsed.rp_id_hash != *expected.rp_id_hash {
        return Err(Rejection::RpMismatch);
    }
    let mut message = Vec::with_capacity(auth_data.len() + 32);
    message.extend_from_slice(auth_data);
    message.extend_from_slice(expected.client_data_hash);
    key.verify(&message, signature)?;
    if parsed.flags & FLAG_UP == 0 {
        return Err(Rejection::UserNotPresent);
    }
    if expected.require_uv && parsed.flags & FLAG_UV == 0 {
        return Err(Rejection::UserNotVerified);
    }
    Ok(Verified {
        flags: parsed.flags,
        sign_count: parsed.sign_count,
    })
}

/// The signCount rule (WebAuthn §7.2 step 21, strict form): when either the
/// stored or the received count is non-zero, the received one must be greater;
/// both zero means the key keeps no counter and is accepted.
pub fn check_sign_count(stored: u32, received: u32) -> Result<(), Rejection> {
    if (stored != 0 || received != 0) && received <= stored {
        Err(Rejection::CounterNotIncreased { stored, received })
    } else {
        Ok(())
    }
}

/// A new credential from makeCredential, checked.
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// The credential id.
    pub credential_id: Vec<u8>,
    /// Its public key.
    pub public_key: PublicKey,
    /// The key's AAGUID (model identifier).
    pub aaguid: [u8; 16],
    /// signCount at creation.
    pub sign_count: u32,
    /// Flags at creation.
    pub flags: u8,
}

/// Checks makeCredential's authenticator data: well formed, our rpIdHash, UP set,
/// UV set if required, attested credential data present with a supported key.
/// The attestation statement is not verified: enrolment trusts the key that is
/// plugged in at enrolment time (as pam-u2f does by default).
pub fn verify_new_credential(
    auth_data: &[u8],
    rp_id_hash: &[u8; 32],
    require_uv: bool,
) -> Result<NewCredential, Rejection> {
    let parsed = parse_auth_data(auth_data)?;
    if parsed.rp_id_hash != *rp_id_hash {
        return Err(Rejection::RpMismatch);
    }
    if parsed.flags & FLAG_UP == 0 {
        return Err(Rejection::UserNotPresent);
    }
    if require_uv && parsed.flags & FLAG_UV == 0 {
        return Err(Rejection::UserNotVerified);
    }
    let att = parsed.attested.ok_or(Rejection::NoAttestedCredential)?;
    Ok(NewCredential {
        credential_id: att.credential_id.to_vec(),
        public_key: att.public_key,
        aaguid: att.aaguid,
        sign_count: parsed.sign_count,
        flags: parsed.flags,
    })
}

#[cfg(test)]
mod tests;
