//! Bearer tokens: 32 random bytes, base64url without padding (43 characters). The process
//! keeps only their SHA-256 hash, so a memory dump of the store yields no usable token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of an encoded token: 32 bytes in unpadded base64url.
pub const TOKEN_LEN: usize = 43;

/// A freshly issued token. Not `Display`, and its `Debug` is redacted: it must not reach a log.
pub struct SessionToken(String);

impl SessionToken {
    /// 256 bits from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|_| TokenError::NoRandomness)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The text handed to the client, once, in the login answer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// SHA-256 of the token text: the key under which a session is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Checks that `presented` is well-formed before hashing it, so that garbage is told
    /// apart from an unknown token.
    pub fn parse_presented(presented: &str) -> Result<Self, TokenError> {
        if presented.len() != TOKEN_LEN
            || !presented
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TokenError::Malformed);
        }
        Ok(Self::of(presented))
    }

    /// Constant-time equality, for the rare places that compare hashes directly.
    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A short non-secret id derived from the hash, for logs and session listings.
    /// (Eight bytes of a SHA-256 of a 256-bit secret reveal nothing usable about it.)
    pub fn public_id(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.public_id())
    }
}

/// The hasher of the store's maps keyed by [`TokenHash`]: the key is already the output
/// of SHA-256 over a token the server generated (256 random bits), so its first eight
/// bytes are as good a hash as any, and a keyed SipHash over all 32 (std's default, twice
/// per lookup with the shard choice) added work and no protection. A client cannot choose
/// the keys that are stored: it can only look up.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenHashState;

impl std::hash::BuildHasher for TokenHashState {
    type Hasher = TokenHasher;

    fn build_hasher(&self) -> TokenHasher {
        TokenHasher(0)
    }
}

/// See [`TokenHashState`].
#[derive(Debug)]
pub struct TokenHasher(u64);

impl std::hash::Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        match bytes.first_chunk::<8>() {
            Some(first) => self.0 ^= u64::from_le_bytes(*first),
            None => {
                for &byte in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(byte);
                }
            }
        }
    }

    /// The length prefix of the hashed array (always 32): it carries nothing.
    fn write_usize(&mut self, _: usize) {}

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the operating system's random number generator is unavailable")]
    NoRandomness,
    #[error("the token is not 43 characters of base64url")]
    Malformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_chars_of_base64url_and_distinct() {
        let a = SessionToken::generate().unwrap();
        let b = SessionToken::generate().unwrap();
        assert_eq!(a.expose().len(), TOKEN_LEN);
        assert_ne!(a.expose(), b.expose());
        assert_eq!(URL_SAFE_NO_PAD.decode(a.expose()).unwrap().len(), 32);
        assert!(TokenHash::parse_presented(a.expose())
            .unwrap()
            .ct_eq(&a.hash()));
    }

    #[test]
    fn malformed_tokens_are_told_apart() {
        for bad in [
            "",
            "short",
            &"a".repeat(44),
            &format!("{}=", "a".repeat(42)),
            &"é".repeat(21),
        ] {
            assert_eq!(
                TokenHash::parse_presented(bad),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
        assert!(TokenHash::parse_presented(&"A".repeat(43)).is_ok());
    }

    #[test]
    fn the_map_hash_of_a_token_hash_is_its_first_eight_bytes() {
        use std::hash::BuildHasher;
        let hash = SessionToken::generate().unwrap().hash();
        let expected = u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap());
        assert_eq!(TokenHashState.hash_one(hash), expected);
        assert_ne!(
            TokenHashState.hash_one(SessionToken::generate().unwrap().hash()),
            expected
        );
    }

    #[test]
    fn public_id_is_short_and_not_the_token() {
        let token = SessionToken::generate().unwrap();
        let id = token.hash().public_id();
        assert_eq!(id.len(), 16);
        assert!(!token.expose().contains(&id));
    }
}
