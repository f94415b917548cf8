//! CTAP 2.1's PIN/UV auth protocols 1 and 2 (section 6.5.6 and 6.5.7): the one
//! implementation of their crypto, used by both sides: the client (k_proxy asking a key
//! for a pinUvAuthToken, `pin_client`) and the authenticators (the software
//! authenticator and the virtual USB key, [`crate::pin_authenticator`]). Its known-answer
//! tests are independent of it (values computed with Python's `cryptography`; and
//! python-fido2's `ClientPin` talks to the virtual key in e2e/tests/vkey_interop.rs).
//!
//! * Key agreement: ECDH on P-256; each side's public key travels as a COSE_Key
//!   (`kty` EC2, `alg` -25 ECDH-ES+HKDF-256, `crv` P-256). Z is the shared point's x.
//! * Protocol 1: the shared secret is SHA-256(Z); encryption is AES-256-CBC with an
//!   all-zero IV and no padding; authenticate is HMAC-SHA-256 truncated to 16 bytes.
//! * Protocol 2: the shared secret is HKDF-SHA-256(salt = 32 zero bytes, Z) with info
//!   "CTAP2 HMAC key" (32 bytes) followed by info "CTAP2 AES key" (32 bytes); encryption
//!   is AES-256-CBC with a random IV sent before the ciphertext; authenticate is the full
//!   32-byte HMAC-SHA-256 (keyed with the HMAC half of the secret, or with a token).
//!
//! Secrets are wiped when dropped ([`zeroize`]).

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ciborium::Value;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

type HmacSha256 = Hmac<Sha256>;

/// COSE algorithm of a PIN/UV key agreement key: ECDH-ES+HKDF-256.
pub const COSE_ALG_ECDH_ES_HKDF_256: i64 = -25;

/// What a protocol operation refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinProtocolError {
    /// The peer's COSE key is not an EC2 P-256 key on the curve.
    #[error("the key agreement key is not a valid P-256 COSE key: {0}")]
    BadPeerKey(&'static str),
    /// A ciphertext (or plaintext to encrypt) is not a whole number of AES blocks.
    #[error("{0} bytes are not a whole number of 16-byte AES blocks")]
    BadLength(usize),
    /// The OS random number generator failed.
    #[error("no randomness: {0}")]
    NoRandomness(String),
}

/// PIN/UV auth protocol one or two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PinProtocol {
    /// pinUvAuthProtocol 1 (CTAP 2.0's).
    One,
    /// pinUvAuthProtocol 2 (CTAP 2.1).
    Two,
}

/// The shared secret of one key agreement: 32 bytes (protocol 1) or the HMAC key then
/// the AES key (protocol 2, 64 bytes). Wiped when dropped.
pub struct SharedSecret {
    protocol: PinProtocol,
    bytes: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSecret")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl SharedSecret {
    /// The key `authenticate` uses with this secret.
    pub fn hmac_key(&self) -> &[u8] {
        &self.bytes[..32]
    }

    fn aes_key(&self) -> &[u8] {
        match self.protocol {
            PinProtocol::One => &self.bytes[..32],
            PinProtocol::Two => &self.bytes[32..64],
        }
    }

    /// The protocol it was made for.
    pub fn protocol(&self) -> PinProtocol {
        self.protocol
    }
}

impl PinProtocol {
    /// Protocol `n` (1 or 2), if it is one we speak.
    pub fn from_number(n: i128) -> Option<Self> {
        match n {
            1 => Some(PinProtocol::One),
            2 => Some(PinProtocol::Two),
            _ => None,
        }
    }

    /// Its number on the wire.
    pub fn number(self) -> u8 {
        match self {
            PinProtocol::One => 1,
            PinProtocol::Two => 2,
        }
    }

    /// The shared secret from Z, the x-coordinate of the ECDH point.
    pub fn kdf(self, z: &[u8; 32]) -> SharedSecret {
        let bytes = match self {
            PinProtocol::One => Zeroizing::new(Sha256::digest(z).to_vec()),
            PinProtocol::Two => {
                let hk = hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), z);
                let mut out = Zeroizing::new(vec![0u8; 64]);
                // 32 bytes of HKDF-SHA-256 output never exceed its limit (255 * 32).
                let (hmac_key, aes_key) = out.split_at_mut(32);
                hk.expand(b"CTAP2 HMAC key", hmac_key)
                    .unwrap_or_else(|_| unreachable!());
                hk.expand(b"CTAP2 AES key", aes_key)
                    .unwrap_or_else(|_| unreachable!());
                out
            }
        };
        SharedSecret {
            protocol: self,
            bytes,
        }
    }

    /// Encrypts `plaintext` (a whole number of blocks); protocol 2 with a fresh random IV.
    pub fn encrypt(
        self,
        secret: &SharedSecret,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PinProtocolError> {
        let iv = match self {
            PinProtocol::One => [0u8; 16],
            PinProtocol::Two => {
                let mut iv = [0u8; 16];
                getrandom::getrandom(&mut iv)
                    .map_err(|e| PinProtocolError::NoRandomness(e.to_string()))?;
                iv
            }
        };
        self.encrypt_with_iv(secret, &iv, plaintext)
    }

    /// [`PinProtocol::encrypt`] with a given IV (protocol 2; protocol 1's IV is all zeros
    /// and `iv` is ignored). For known-answer tests.
    pub fn encrypt_with_iv(
        self,
        secret: &SharedSecret,
        iv: &[u8; 16],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PinProtocolError> {
        if plaintext.len() % 16 != 0 {
            return Err(PinProtocolError::BadLength(plaintext.len()));
        }
        let iv = match self {
            PinProtocol::One => [0u8; 16],
            PinProtocol::Two => *iv,
        };
        let cipher =
            aes::Aes256::new_from_slice(secret.aes_key()).unwrap_or_else(|_| unreachable!());
        let mut out = Vec::with_capacity(plaintext.len() + 16);
        if self == PinProtocol::Two {
            out.extend_from_slice(&iv);
        }
        let mut chain = iv;
        for block in plaintext.chunks_exact(16) {
            let mut b = aes::Block::default();
            for (o, (p, c)) in b.iter_mut().zip(block.iter().zip(chain.iter())) {
                *o = p ^ c;
            }
            cipher.encrypt_block(&mut b);
            chain.copy_from_slice(&b);
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// Decrypts what [`PinProtocol::encrypt`] made. The plaintext is wiped when dropped.
    pub fn decrypt(
        self,
        secret: &SharedSecret,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PinProtocolError> {
        let (iv, body) = match self {
            PinProtocol::One => ([0u8; 16], ciphertext),
            PinProtocol::Two => {
                if ciphertext.len() < 16 {
                    return Err(PinProtocolError::BadLength(ciphertext.len()));
                }
                let (iv, body) = ciphertext.split_at(16);
                let mut v = [0u8; 16];
                v.copy_from_slice(iv);
                (v, body)
            }
        };
        if body.len() % 16 != 0 {
            return Err(PinProtocolError::BadLength(body.len()));
        }
        let cipher =
            aes::Aes256::new_from_slice(secret.aes_key()).unwrap_or_else(|_| unreachable!());
        let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
        let mut chain = iv;
        for block in body.chunks_exact(16) {
            let mut b = aes::Block::clone_from_slice(block);
            cipher.decrypt_block(&mut b);
            for (p, c) in b.iter().zip(chain.iter()) {
                out.push(p ^ c);
            }
            chain.copy_from_slice(block);
            b.zeroize();
        }
        Ok(out)
    }

    /// HMAC-SHA-256 of `message` under `key`: the first 16 bytes (protocol 1) or all 32
    /// (protocol 2). `key` is a shared secret's [`SharedSecret::hmac_key`] or a token.
    pub fn authenticate(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(message);
        let tag = mac.finalize().into_bytes();
        match self {
            PinProtocol::One => tag[..16].to_vec(),
            PinProtocol::Two => tag.to_vec(),
        }
    }

    /// Whether `signature` is [`PinProtocol::authenticate`] of `message` under `key`,
    /// compared in constant time. A signature of another length is refused.
    pub fn verify(self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let want = match self {
            PinProtocol::One => 16,
            PinProtocol::Two => 32,
        };
        if signature.len() != want {
            return false;
        }
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(message);
        mac.verify_truncated_left(signature).is_ok()
    }
}

/// A P-256 public key as a PIN/UV key agreement COSE_Key carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoseKey {
    /// The x-coordinate, big-endian.
    pub x: [u8; 32],
    /// The y-coordinate, big-endian.
    pub y: [u8; 32],
}

fn int(n: i64) -> Value {
    Value::Integer(n.into())
}

impl CoseKey {
    /// `{1: 2, 3: -25, -1: 1, -2: x, -3: y}`, keys in CTAP2 canonical order.
    pub fn to_value(&self) -> Value {
        Value::Map(vec![
            (int(1), int(2)),
            (int(3), int(COSE_ALG_ECDH_ES_HKDF_256)),
            (int(-1), int(1)),
            (int(-2), Value::Bytes(self.x.to_vec())),
            (int(-3), Value::Bytes(self.y.to_vec())),
        ])
    }

    /// Reads a key agreement COSE_Key; refuses other key types, curves, and points that
    /// are not on P-256. (`alg` is not checked: python-fido2 and some keys send -25,
    /// CTAP 2.1 lets the platform's be anything.)
    pub fn from_value(v: &Value) -> Result<Self, PinProtocolError> {
        let Value::Map(m) = v else {
            return Err(PinProtocolError::BadPeerKey("not a map"));
        };
        let get = |k: i64| {
            m.iter()
                .find(
                    |(key, _)| matches!(key, Value::Integer(i) if i128::from(*i) == i128::from(k)),
                )
                .map(|(_, v)| v)
        };
        let is = |k: i64, want: i64| matches!(get(k), Some(Value::Integer(i)) if i128::from(*i) == i128::from(want));
        if !is(1, 2) {
            return Err(PinProtocolError::BadPeerKey("kty is not EC2"));
        }
        if !is(-1, 1) {
            return Err(PinProtocolError::BadPeerKey("crv is not P-256"));
        }
        let coord = |k: i64| -> Result<[u8; 32], PinProtocolError> {
            match get(k) {
                Some(Value::Bytes(b)) => b
                    .as_slice()
                    .try_into()
                    .map_err(|_| PinProtocolError::BadPeerKey("a coordinate is not 32 bytes")),
                _ => Err(PinProtocolError::BadPeerKey("a coordinate is missing")),
            }
        };
        let key = CoseKey {
            x: coord(-2)?,
            y: coord(-3)?,
        };
        key.public_key()?;
        Ok(key)
    }

    fn public_key(&self) -> Result<p256::PublicKey, PinProtocolError> {
        let point =
            p256::EncodedPoint::from_affine_coordinates((&self.x).into(), (&self.y).into(), false);
        use p256::elliptic_curve::sec1::FromEncodedPoint as _;
        Option::from(p256::PublicKey::from_encoded_point(&point))
            .ok_or(PinProtocolError::BadPeerKey("the point is not on P-256"))
    }
}

/// One side's key agreement key pair (the authenticator's, kept until it is
/// regenerated, or the platform's, one per request). The secret is wiped when dropped.
pub struct KeyAgreement {
    secret: p256::SecretKey,
}

impl KeyAgreement {
    /// A new random key pair.
    pub fn generate() -> Result<Self, PinProtocolError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        loop {
            getrandom::getrandom(bytes.as_mut())
                .map_err(|e| PinProtocolError::NoRandomness(e.to_string()))?;
            if let Ok(k) = Self::from_scalar(&bytes) {
                return Ok(k);
            }
        }
    }

    /// The key pair with private scalar `d` (known-answer tests).
    pub fn from_scalar(d: &[u8; 32]) -> Result<Self, PinProtocolError> {
        let secret = p256::SecretKey::from_slice(d)
            .map_err(|_| PinProtocolError::BadPeerKey("the scalar is out of range"))?;
        Ok(Self { secret })
    }

    /// The public half as a COSE_Key.
    pub fn public(&self) -> CoseKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let point = self.secret.public_key().to_encoded_point(false);
        let mut key = CoseKey {
            x: [0; 32],
            y: [0; 32],
        };
        // An uncompressed point of a valid key always has both coordinates.
        if let (Some(x), Some(y)) = (point.x(), point.y()) {
            key.x.copy_from_slice(x);
            key.y.copy_from_slice(y);
        }
        key
    }

    /// The shared secret with `peer` under `protocol` (ECDH, then the protocol's KDF).
    pub fn shared_secret(
        &self,
        protocol: PinProtocol,
        peer: &CoseKey,
    ) -> Result<SharedSecret, PinProtocolError> {
        let peer = peer.public_key()?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        let mut z = Zeroizing::new([0u8; 32]);
        z.copy_from_slice(shared.raw_secret_bytes());
        Ok(protocol.kdf(&z))
    }
}

/// `LEFT(SHA-256(pin), 16)`: what a key stores of its PIN and what pinHashEnc carries.
pub fn pin_hash(pin: &[u8]) -> Zeroizing<[u8; 16]> {
    let mut digest = Sha256::digest(pin);
    let mut out = Zeroizing::new([0u8; 16]);
    out.copy_from_slice(&digest[..16]);
    digest.as_mut_slice().zeroize();
    out
}

/// The PIN padded with zero bytes to 64 bytes, as setPIN and changePIN send it
/// (`newPinEnc`); the PIN is at most 63 bytes, so one zero byte always follows it.
pub fn padded_pin(pin: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; 64]);
    let n = pin.len().min(63);
    out[..n].copy_from_slice(&pin[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        hex(s).try_into().unwrap()
    }

    // Known answers computed independently with Python's `cryptography` (ECDH, HKDF,
    // AES-CBC, HMAC): the script is in the test below's comment.
    //
    //   from cryptography.hazmat.primitives.asymmetric import ec
    //   from cryptography.hazmat.primitives import hashes, hmac, ciphers
    //   from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    //   a = ec.derive_private_key(int('11'*32,16), ec.SECP256R1())
    //   b = ec.derive_private_key(int('22'*32,16), ec.SECP256R1())
    //   z = a.exchange(ec.ECDH(), b.public_key())
    //   ... (see KAT constants)
    const D_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const D_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    include!("pin_protocol_kat.rs");

    #[test]
    fn ecdh_and_both_kdfs_match_the_known_answers() {
        let a = KeyAgreement::from_scalar(&arr(D_A)).unwrap();
        let b = KeyAgreement::from_scalar(&arr(D_B)).unwrap();
        assert_eq!(a.public().x, arr::<32>(KAT_A_X));
        assert_eq!(a.public().y, arr::<32>(KAT_A_Y));
        let s1 = a.shared_secret(PinProtocol::One, &b.public()).unwrap();
        assert_eq!(&s1.bytes[..], &hex(KAT_V1_SECRET)[..]);
        let s2 = a.shared_secret(PinProtocol::Two, &b.public()).unwrap();
        assert_eq!(&s2.bytes[..], &hex(KAT_V2_SECRET)[..]);
        // Both sides agree.
        let s2b = b.shared_secret(PinProtocol::Two, &a.public()).unwrap();
        assert_eq!(&s2.bytes[..], &s2b.bytes[..]);
    }

    #[test]
    fn encryption_and_authentication_match_the_known_answers() {
        let a = KeyAgreement::from_scalar(&arr(D_A)).unwrap();
        let b = KeyAgreement::from_scalar(&arr(D_B)).unwrap();
        let pin_h = pin_hash(b"1234");
        assert_eq!(&pin_h[..], &hex(KAT_PIN_HASH)[..]);
        let s1 = a.shared_secret(PinProtocol::One, &b.public()).unwrap();
        let c1 = PinProtocol::One.encrypt(&s1, &pin_h[..]).unwrap();
        assert_eq!(c1, hex(KAT_V1_PIN_HASH_ENC));
        assert_eq!(&PinProtocol::One.decrypt(&s1, &c1).unwrap()[..], &pin_h[..]);
        assert_eq!(
            PinProtocol::One.authenticate(s1.hmac_key(), b"message"),
            hex(KAT_V1_AUTH)
        );
        let s2 = a.shared_secret(PinProtocol::Two, &b.public()).unwrap();
        let iv = arr::<16>("000102030405060708090a0b0c0d0e0f");
        let c2 = PinProtocol::Two
            .encrypt_with_iv(&s2, &iv, &pin_h[..])
            .unwrap();
        assert_eq!(c2, hex(KAT_V2_PIN_HASH_ENC));
        assert_eq!(&PinProtocol::Two.decrypt(&s2, &c2).unwrap()[..], &pin_h[..]);
        assert_eq!(
            PinProtocol::Two.authenticate(s2.hmac_key(), b"message"),
            hex(KAT_V2_AUTH)
        );
        // A padded PIN of four blocks, protocol 2 with a random IV round-trips.
        let padded = padded_pin(b"1234");
        let c = PinProtocol::Two.encrypt(&s2, &padded).unwrap();
        assert_eq!(c.len(), 80);
        assert_eq!(&PinProtocol::Two.decrypt(&s2, &c).unwrap()[..], &padded[..]);
    }

    #[test]
    fn verify_is_exact() {
        let key = [7u8; 32];
        for p in [PinProtocol::One, PinProtocol::Two] {
            let tag = p.authenticate(&key, b"cdh");
            assert!(p.verify(&key, b"cdh", &tag));
            assert!(!p.verify(&key, b"cdH", &tag));
            let mut bad = tag.clone();
            bad[0] ^= 1;
            assert!(!p.verify(&key, b"cdh", &bad));
            assert!(!p.verify(&key, b"cdh", &tag[..tag.len() - 1]));
        }
        // Protocol 1's 16 bytes are not accepted as protocol 2's.
        let short = PinProtocol::One.authenticate(&key, b"cdh");
        assert!(!PinProtocol::Two.verify(&key, b"cdh", &short));
    }

    #[test]
    fn cose_keys_round_trip_and_bad_ones_are_refused() {
        let a = KeyAgreement::generate().unwrap();
        let v = a.public().to_value();
        assert_eq!(CoseKey::from_value(&v).unwrap(), a.public());
        let mut off_curve = a.public();
        off_curve.y[31] ^= 1;
        assert!(CoseKey::from_value(&off_curve.to_value()).is_err());
        assert!(CoseKey::from_value(&Value::Map(vec![])).is_err());
        assert!(CoseKey::from_value(&Value::Bool(true)).is_err());
        assert!(PinProtocol::One
            .decrypt(&PinProtocol::One.kdf(&[0; 32]), &[0; 15])
            .is_err());
        assert!(PinProtocol::Two
            .decrypt(&PinProtocol::Two.kdf(&[0; 32]), &[0; 8])
            .is_err());
        assert_eq!(padded_pin(b"1234").len(), 64);
        assert_eq!(PinProtocol::from_number(2), Some(PinProtocol::Two));
        assert_eq!(PinProtocol::from_number(3), None);
    }
}
