//! authenticatorClientPIN as an authenticator answers it (CTAP 2.1 section 6.5), for
//! the software authenticator and the virtual USB key: one implementation, on top of
//! [`crate::pin_protocol`]. It keeps the PIN's hash and retry counter (which the owner
//! persists), the power-up state (the key agreement key, the pinUvAuthToken, and the
//! consecutive wrong PINs that block PIN checks until a power cycle), and checks the
//! pinUvAuthParam of makeCredential and getAssertion.
//!
//! Subcommands: getPINRetries, getKeyAgreement, setPIN, changePIN, getPinToken and
//! getPinUvAuthTokenUsingPinWithPermissions (permissions mc and ga, with an optional
//! rpId). A wrong PIN costs one retry; three in a row block further PIN checks
//! (CTAP2_ERR_PIN_AUTH_BLOCKED) until the key is powered again; at zero retries the PIN
//! is blocked for good (CTAP2_ERR_PIN_BLOCKED).

use ciborium::Value;
use zeroize::Zeroizing;

use crate::pin_protocol::{pin_hash, CoseKey, KeyAgreement, PinProtocol};

/// CTAP status codes (CTAP 2.1 section 8.2) the PIN commands answer with.
pub mod status {
    pub const INVALID_PARAMETER: u8 = 0x02;
    pub const CBOR_UNEXPECTED_TYPE: u8 = 0x11;
    pub const MISSING_PARAMETER: u8 = 0x14;
    pub const PIN_INVALID: u8 = 0x31;
    pub const PIN_BLOCKED: u8 = 0x32;
    pub const PIN_AUTH_INVALID: u8 = 0x33;
    pub const PIN_AUTH_BLOCKED: u8 = 0x34;
    pub const PIN_NOT_SET: u8 = 0x35;
    pub const PUAT_REQUIRED: u8 = 0x36;
    pub const PIN_POLICY_VIOLATION: u8 = 0x37;
    pub const INVALID_SUBCOMMAND: u8 = 0x3e;
    pub const UNAUTHORIZED_PERMISSION: u8 = 0x40;
    pub const OTHER: u8 = 0x7f;
}

/// clientPIN subcommands.
pub mod subcommand {
    pub const GET_PIN_RETRIES: u8 = 0x01;
    pub const GET_KEY_AGREEMENT: u8 = 0x02;
    pub const SET_PIN: u8 = 0x03;
    pub const CHANGE_PIN: u8 = 0x04;
    pub const GET_PIN_TOKEN: u8 = 0x05;
    pub const GET_TOKEN_USING_UV: u8 = 0x06;
    pub const GET_UV_RETRIES: u8 = 0x07;
    pub const GET_TOKEN_USING_PIN: u8 = 0x09;
}

/// pinUvAuthToken permissions.
pub mod permission {
    /// makeCredential.
    pub const MC: u8 = 0x01;
    /// getAssertion.
    pub const GA: u8 = 0x02;
}

/// A fresh key's retries, and where they start again after a right PIN.
pub const MAX_PIN_RETRIES: u8 = 8;
/// Wrong PINs in a row after which PIN checks stop until a power cycle.
pub const MAX_CONSECUTIVE_WRONG: u8 = 3;

type Status = u8;

/// What the owner keeps across power cycles: the PIN's hash and the retries left.
#[derive(Clone, PartialEq, Eq)]
pub struct PinRecord {
    /// `LEFT(SHA-256(pin), 16)`; `None`: no PIN is set.
    pub hash: Option<[u8; 16]>,
    /// Wrong PINs left before the PIN is blocked.
    pub retries: u8,
}

impl Default for PinRecord {
    fn default() -> Self {
        Self {
            hash: None,
            retries: MAX_PIN_RETRIES,
        }
    }
}

impl std::fmt::Debug for PinRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinRecord")
            .field("set", &self.hash.is_some())
            .field("retries", &self.retries)
            .finish()
    }
}

struct Token {
    protocol: PinProtocol,
    bytes: Zeroizing<[u8; 32]>,
    /// `None`: a CTAP 2.0 pinToken, good for anything.
    permissions: Option<u8>,
    rp_id: Option<String>,
}

/// The PIN side of one authenticator, from power-up to power-down.
pub struct PinAuthenticator {
    record: PinRecord,
    /// The protocols offered, preferred first (getInfo's pinUvAuthProtocols).
    protocols: Vec<PinProtocol>,
    /// CTAP 2.1 (permissions and getPinUvAuthTokenUsingPinWithPermissions) or 2.0 only.
    ctap21: bool,
    /// getInfo's alwaysUv: every makeCredential and getAssertion needs user verification.
    always_uv: bool,
    /// Built-in user verification (a simulated fingerprint reader; getInfo `uv: true`).
    builtin_uv: bool,
    consecutive_wrong: u8,
    key_agreement: KeyAgreement,
    token: Option<Token>,
}

fn get(m: &[(Value, Value)], key: i128) -> Option<&Value> {
    m.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == key))
        .map(|(_, v)| v)
}

fn int_of(v: &Value) -> Result<i128, Status> {
    match v {
        Value::Integer(i) => Ok(i128::from(*i)),
        _ => Err(status::CBOR_UNEXPECTED_TYPE),
    }
}

fn bytes_of(v: &Value) -> Result<&[u8], Status> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(status::CBOR_UNEXPECTED_TYPE),
    }
}

fn int(n: i64) -> Value {
    Value::Integer(n.into())
}

impl PinAuthenticator {
    /// Power-up with `record` (as persisted), offering `protocols` (preferred first) as a
    /// CTAP 2.1 key (`ctap21`) or a CTAP 2.0 one.
    pub fn power_up(
        record: PinRecord,
        protocols: Vec<PinProtocol>,
        ctap21: bool,
    ) -> Result<Self, String> {
        Ok(Self {
            record,
            protocols,
            ctap21,
            always_uv: false,
            builtin_uv: false,
            consecutive_wrong: 0,
            key_agreement: KeyAgreement::generate().map_err(|e| e.to_string())?,
            token: None,
        })
    }

    /// What the owner persists.
    pub fn record(&self) -> &PinRecord {
        &self.record
    }

    /// A CTAP 2.1 key (permissions, getPinUvAuthTokenUsingPinWithPermissions).
    pub fn is_ctap21(&self) -> bool {
        self.ctap21
    }

    /// getInfo's alwaysUv (CTAP 2.1 keys only).
    pub fn always_uv(&self) -> bool {
        self.ctap21 && self.always_uv
    }

    /// Sets alwaysUv.
    pub fn set_always_uv(&mut self, always_uv: bool) {
        self.always_uv = always_uv;
    }

    /// Whether the key has built-in user verification (getInfo `uv: true`).
    pub fn has_builtin_uv(&self) -> bool {
        self.builtin_uv
    }

    /// Gives the key built-in user verification: getPinUvAuthTokenUsingUvWithPermissions
    /// (CTAP 2.1) and the `uv` option then verify the user without a PIN. The owner does
    /// the "fingerprint" (the virtual key waits for a touch) before it asks for either.
    pub fn set_builtin_uv(&mut self, builtin_uv: bool) {
        self.builtin_uv = builtin_uv;
    }

    /// Whether a PIN is set (getInfo's `clientPin`).
    pub fn is_set(&self) -> bool {
        self.record.hash.is_some()
    }

    /// getInfo's pinUvAuthProtocols.
    pub fn protocol_numbers(&self) -> Vec<u8> {
        self.protocols.iter().map(|p| p.number()).collect()
    }

    /// Sets the PIN directly (the owner's set-up, e.g. a test instrument's `--pin`).
    pub fn set_pin_directly(&mut self, pin: &[u8]) {
        self.record = PinRecord {
            hash: Some(*pin_hash(pin)),
            retries: MAX_PIN_RETRIES,
        };
    }

    fn protocol(&self, m: &[(Value, Value)]) -> Result<PinProtocol, Status> {
        let n = int_of(get(m, 1).ok_or(status::MISSING_PARAMETER)?)?;
        PinProtocol::from_number(n)
            .filter(|p| self.protocols.contains(p))
            .ok_or(status::INVALID_PARAMETER)
    }

    /// One authenticatorClientPIN request (its CBOR map); the answer map, or a status.
    pub fn client_pin(&mut self, m: &[(Value, Value)]) -> Result<Option<Value>, Status> {
        let sub = int_of(get(m, 2).ok_or(status::MISSING_PARAMETER)?)?;
        let sub = u8::try_from(sub).map_err(|_| status::INVALID_SUBCOMMAND)?;
        match sub {
            subcommand::GET_PIN_RETRIES => {
                let mut answer = vec![(int(3), int(i64::from(self.record.retries)))];
                if self.ctap21 {
                    answer.push((
                        int(4),
                        Value::Bool(self.consecutive_wrong >= MAX_CONSECUTIVE_WRONG),
                    ));
                }
                Ok(Some(Value::Map(answer)))
            }
            subcommand::GET_KEY_AGREEMENT => {
                self.protocol(m)?;
                Ok(Some(Value::Map(vec![(
                    int(1),
                    self.key_agreement.public().to_value(),
                )])))
            }
            subcommand::SET_PIN => self.set_pin(m).map(|()| None),
            subcommand::CHANGE_PIN => self.change_pin(m).map(|()| None),
            subcommand::GET_PIN_TOKEN => self.get_token(m, None),
            subcommand::GET_TOKEN_USING_PIN if self.ctap21 => {
                let (perms, rp_id) = Self::permissions(m)?;
                self.get_token(m, Some((perms, rp_id)))
            }
            subcommand::GET_TOKEN_USING_UV if self.ctap21 && self.builtin_uv => {
                let (perms, rp_id) = Self::permissions(m)?;
                self.token_using_uv(m, perms, rp_id)
            }
            subcommand::GET_UV_RETRIES if self.ctap21 && self.builtin_uv => Ok(Some(Value::Map(
                vec![(int(5), int(i64::from(MAX_PIN_RETRIES)))],
            ))),
            _ => Err(status::INVALID_SUBCOMMAND),
        }
    }

    /// The permissions (mc and ga only) and the optional rpId of a token request.
    fn permissions(m: &[(Value, Value)]) -> Result<(u8, Option<String>), Status> {
        let perms = int_of(get(m, 9).ok_or(status::MISSING_PARAMETER)?)?;
        let perms = u8::try_from(perms).map_err(|_| status::UNAUTHORIZED_PERMISSION)?;
        if perms == 0 {
            return Err(status::INVALID_PARAMETER);
        }
        if perms & !(permission::MC | permission::GA) != 0 {
            return Err(status::UNAUTHORIZED_PERMISSION);
        }
        let rp_id = match get(m, 0x0a) {
            None => None,
            Some(Value::Text(t)) => Some(t.clone()),
            Some(_) => return Err(status::CBOR_UNEXPECTED_TYPE),
        };
        Ok((perms, rp_id))
    }

    /// getPinUvAuthTokenUsingUvWithPermissions: the user was verified by the built-in
    /// method (the owner's simulated fingerprint), so no PIN is checked.
    fn token_using_uv(
        &mut self,
        m: &[(Value, Value)],
        permissions: u8,
        rp_id: Option<String>,
    ) -> Result<Option<Value>, Status> {
        let protocol = self.protocol(m)?;
        let secret = self.shared(protocol, m)?;
        self.issue_token(protocol, &secret, Some(permissions), rp_id)
    }

    fn issue_token(
        &mut self,
        protocol: PinProtocol,
        secret: &crate::pin_protocol::SharedSecret,
        permissions: Option<u8>,
        rp_id: Option<String>,
    ) -> Result<Option<Value>, Status> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(bytes.as_mut()).map_err(|_| status::OTHER)?;
        let enc = protocol
            .encrypt(secret, &bytes[..])
            .map_err(|_| status::OTHER)?;
        self.token = Some(Token {
            protocol,
            bytes,
            permissions,
            rp_id,
        });
        Ok(Some(Value::Map(vec![(int(2), Value::Bytes(enc))])))
    }

    /// The shared secret with the platform key agreement key in `m`.
    fn shared(
        &self,
        protocol: PinProtocol,
        m: &[(Value, Value)],
    ) -> Result<crate::pin_protocol::SharedSecret, Status> {
        let peer = CoseKey::from_value(get(m, 3).ok_or(status::MISSING_PARAMETER)?)
            .map_err(|_| status::INVALID_PARAMETER)?;
        self.key_agreement
            .shared_secret(protocol, &peer)
            .map_err(|_| status::INVALID_PARAMETER)
    }

    /// Decrypts and checks a new PIN (64 bytes or more, zero padded, 4 code points to 63 bytes).
    fn new_pin(
        protocol: PinProtocol,
        secret: &crate::pin_protocol::SharedSecret,
        enc: &[u8],
    ) -> Result<[u8; 16], Status> {
        let padded = protocol
            .decrypt(secret, enc)
            .map_err(|_| status::INVALID_PARAMETER)?;
        if padded.len() < 64 {
            return Err(status::PIN_POLICY_VIOLATION);
        }
        let len = padded.iter().position(|&b| b == 0).unwrap_or(padded.len());
        let pin = &padded[..len];
        let points = std::str::from_utf8(pin)
            .map(|s| s.chars().count())
            .unwrap_or(0);
        if len > crate::MAX_PIN_BYTES || points < crate::MIN_PIN_CODE_POINTS {
            return Err(status::PIN_POLICY_VIOLATION);
        }
        Ok(*pin_hash(pin))
    }

    fn set_pin(&mut self, m: &[(Value, Value)]) -> Result<(), Status> {
        let protocol = self.protocol(m)?;
        let param = bytes_of(get(m, 4).ok_or(status::MISSING_PARAMETER)?)?;
        let new_enc = bytes_of(get(m, 5).ok_or(status::MISSING_PARAMETER)?)?;
        if self.is_set() {
            return Err(status::PIN_AUTH_INVALID);
        }
        let secret = self.shared(protocol, m)?;
        if !protocol.verify(secret.hmac_key(), new_enc, param) {
            return Err(status::PIN_AUTH_INVALID);
        }
        let hash = Self::new_pin(protocol, &secret, new_enc)?;
        self.record = PinRecord {
            hash: Some(hash),
            retries: MAX_PIN_RETRIES,
        };
        Ok(())
    }

    fn change_pin(&mut self, m: &[(Value, Value)]) -> Result<(), Status> {
        let protocol = self.protocol(m)?;
        let param = bytes_of(get(m, 4).ok_or(status::MISSING_PARAMETER)?)?;
        let new_enc = bytes_of(get(m, 5).ok_or(status::MISSING_PARAMETER)?)?.to_vec();
        let hash_enc = bytes_of(get(m, 6).ok_or(status::MISSING_PARAMETER)?)?.to_vec();
        if !self.is_set() {
            return Err(status::PIN_NOT_SET);
        }
        self.check_not_blocked()?;
        let secret = self.shared(protocol, m)?;
        let mut signed = new_enc.clone();
        signed.extend_from_slice(&hash_enc);
        if !protocol.verify(secret.hmac_key(), &signed, param) {
            return Err(status::PIN_AUTH_INVALID);
        }
        self.check_pin_hash(protocol, &secret, &hash_enc)?;
        let hash = Self::new_pin(protocol, &secret, &new_enc)?;
        self.record.hash = Some(hash);
        self.token = None;
        Ok(())
    }

    fn check_not_blocked(&self) -> Result<(), Status> {
        if self.record.retries == 0 {
            return Err(status::PIN_BLOCKED);
        }
        if self.consecutive_wrong >= MAX_CONSECUTIVE_WRONG {
            return Err(status::PIN_AUTH_BLOCKED);
        }
        Ok(())
    }

    /// One PIN try: costs a retry, which a right PIN gives back (all of them).
    fn check_pin_hash(
        &mut self,
        protocol: PinProtocol,
        secret: &crate::pin_protocol::SharedSecret,
        hash_enc: &[u8],
    ) -> Result<(), Status> {
        self.record.retries = self.record.retries.saturating_sub(1);
        let given = protocol
            .decrypt(secret, hash_enc)
            .map_err(|_| status::INVALID_PARAMETER)?;
        let stored = self.record.hash.ok_or(status::PIN_NOT_SET)?;
        let same = given.len() == 16
            && given
                .iter()
                .zip(stored.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            // A new key agreement key, so a platform cannot go on with the old secret.
            if let Ok(k) = KeyAgreement::generate() {
                self.key_agreement = k;
            }
            self.consecutive_wrong = self.consecutive_wrong.saturating_add(1);
            return Err(if self.record.retries == 0 {
                status::PIN_BLOCKED
            } else if self.consecutive_wrong >= MAX_CONSECUTIVE_WRONG {
                status::PIN_AUTH_BLOCKED
            } else {
                status::PIN_INVALID
            });
        }
        self.record.retries = MAX_PIN_RETRIES;
        self.consecutive_wrong = 0;
        Ok(())
    }

    /// getPinToken (`with: None`) or getPinUvAuthTokenUsingPinWithPermissions.
    fn get_token(
        &mut self,
        m: &[(Value, Value)],
        with: Option<(u8, Option<String>)>,
    ) -> Result<Option<Value>, Status> {
        let protocol = self.protocol(m)?;
        let hash_enc = bytes_of(get(m, 6).ok_or(status::MISSING_PARAMETER)?)?.to_vec();
        if !self.is_set() {
            return Err(status::PIN_NOT_SET);
        }
        self.check_not_blocked()?;
        let secret = self.shared(protocol, m)?;
        self.check_pin_hash(protocol, &secret, &hash_enc)?;
        let (permissions, rp_id) = match with {
            Some((p, rp)) => (Some(p), rp),
            // CTAP 2.1 gives a getPinToken token the mc and ga permissions.
            None if self.ctap21 => (Some(permission::MC | permission::GA), None),
            None => (None, None),
        };
        self.issue_token(protocol, &secret, permissions, rp_id)
    }

    /// Checks a makeCredential's or getAssertion's pinUvAuthParam (`param`, with the
    /// request's pinUvAuthProtocol `protocol`) over `client_data_hash`, for `permission`
    /// and `rp_id`. `Ok` means the user is verified (the UV flag is set).
    pub fn verify_param(
        &mut self,
        protocol: Option<&Value>,
        param: &[u8],
        client_data_hash: &[u8; 32],
        permission: u8,
        rp_id: &str,
    ) -> Result<(), Status> {
        let n = int_of(protocol.ok_or(status::MISSING_PARAMETER)?)?;
        let protocol = PinProtocol::from_number(n)
            .filter(|p| self.protocols.contains(p))
            .ok_or(status::INVALID_PARAMETER)?;
        let Some(token) = &mut self.token else {
            return Err(status::PIN_AUTH_INVALID);
        };
        if token.protocol != protocol || !protocol.verify(&token.bytes[..], client_data_hash, param)
        {
            return Err(status::PIN_AUTH_INVALID);
        }
        if let Some(perms) = token.permissions {
            if perms & permission == 0 {
                return Err(status::PIN_AUTH_INVALID);
            }
            match &token.rp_id {
                Some(bound) if bound != rp_id => return Err(status::PIN_AUTH_INVALID),
                Some(_) => {}
                None => token.rp_id = Some(rp_id.to_string()),
            }
        }
        Ok(())
    }

    /// After a makeCredential or getAssertion whose user presence test passed: a CTAP 2.1
    /// key clears the token's permissions (all but lbw, which this key does not grant;
    /// CTAP 2.1 sections 6.1.2 and 6.2.2, clearPinUvAuthTokenPermissionsExceptLbw), so a
    /// token serves one touched operation. A CTAP 2.0 pinToken stays good until power-down.
    pub fn clear_token_permissions(&mut self) {
        if let Some(token) = &mut self.token {
            if token.permissions.is_some() {
                token.permissions = Some(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pin_protocol::padded_pin;

    fn map(entries: Vec<(i64, Value)>) -> Vec<(Value, Value)> {
        entries.into_iter().map(|(k, v)| (int(k), v)).collect()
    }

    /// A platform talking to `a` with `protocol`: (platform key, shared secret).
    fn agree(
        a: &mut PinAuthenticator,
        protocol: PinProtocol,
    ) -> (KeyAgreement, crate::pin_protocol::SharedSecret) {
        let answer = a
            .client_pin(&map(vec![(1, int(protocol.number().into())), (2, int(2))]))
            .unwrap()
            .unwrap();
        let Value::Map(m) = answer else { panic!() };
        let theirs = CoseKey::from_value(get(&m, 1).unwrap()).unwrap();
        let ours = KeyAgreement::generate().unwrap();
        let s = ours.shared_secret(protocol, &theirs).unwrap();
        (ours, s)
    }

    fn token(
        a: &mut PinAuthenticator,
        protocol: PinProtocol,
        pin: &[u8],
    ) -> Result<Vec<u8>, Status> {
        let (ours, s) = agree(a, protocol);
        let enc = protocol.encrypt(&s, &pin_hash(pin)[..]).unwrap();
        let answer = a.client_pin(&map(vec![
            (1, int(protocol.number().into())),
            (2, int(9)),
            (3, ours.public().to_value()),
            (6, Value::Bytes(enc)),
            (9, int(2)),
            (10, Value::Text("rp".into())),
        ]))?;
        let Some(Value::Map(m)) = answer else {
            panic!()
        };
        let Some(Value::Bytes(t)) = get(&m, 2) else {
            panic!()
        };
        Ok(protocol.decrypt(&s, t).unwrap().to_vec())
    }

    fn set_pin(a: &mut PinAuthenticator, protocol: PinProtocol, pin: &[u8]) -> Result<(), Status> {
        let (ours, s) = agree(a, protocol);
        let enc = protocol.encrypt(&s, &padded_pin(pin)).unwrap();
        let param = protocol.authenticate(s.hmac_key(), &enc);
        a.client_pin(&map(vec![
            (1, int(protocol.number().into())),
            (2, int(3)),
            (3, ours.public().to_value()),
            (4, Value::Bytes(param)),
            (5, Value::Bytes(enc)),
        ]))
        .map(|_| ())
    }

    fn retries(a: &mut PinAuthenticator) -> i128 {
        let Some(Value::Map(m)) = a.client_pin(&map(vec![(2, int(1))])).unwrap() else {
            panic!()
        };
        int_of(get(&m, 3).unwrap()).unwrap()
    }

    fn key() -> PinAuthenticator {
        PinAuthenticator::power_up(
            PinRecord::default(),
            vec![PinProtocol::Two, PinProtocol::One],
            true,
        )
        .unwrap()
    }

    #[test]
    fn set_pin_then_tokens_under_both_protocols_verify_getassertion() {
        let mut a = key();
        assert_eq!(
            token(&mut a, PinProtocol::Two, b"1234"),
            Err(status::PIN_NOT_SET)
        );
        assert_eq!(
            set_pin(&mut a, PinProtocol::Two, b"12"),
            Err(status::PIN_POLICY_VIOLATION)
        );
        set_pin(&mut a, PinProtocol::Two, b"1234").unwrap();
        assert_eq!(
            set_pin(&mut a, PinProtocol::One, b"5678"),
            Err(status::PIN_AUTH_INVALID)
        );
        for p in [PinProtocol::One, PinProtocol::Two] {
            let t = token(&mut a, p, b"1234").unwrap();
            let cdh = [5u8; 32];
            let param = p.authenticate(&t, &cdh);
            let pv = int(p.number().into());
            a.verify_param(Some(&pv), &param, &cdh, permission::GA, "rp")
                .unwrap();
            // Bound to "rp", and to ga only.
            assert_eq!(
                a.verify_param(Some(&pv), &param, &cdh, permission::GA, "other"),
                Err(status::PIN_AUTH_INVALID)
            );
            assert_eq!(
                a.verify_param(Some(&pv), &param, &cdh, permission::MC, "rp"),
                Err(status::PIN_AUTH_INVALID)
            );
            assert_eq!(
                a.verify_param(Some(&pv), &param, &[6; 32], permission::GA, "rp"),
                Err(status::PIN_AUTH_INVALID)
            );
            // Once a touched operation used it, the token is good for nothing more.
            a.clear_token_permissions();
            assert_eq!(
                a.verify_param(Some(&pv), &param, &cdh, permission::GA, "rp"),
                Err(status::PIN_AUTH_INVALID)
            );
        }
    }

    /// A CTAP 2.0 pinToken has no permissions to clear: it serves until power-down.
    #[test]
    fn a_ctap_2_0_pin_token_serves_more_than_one_operation() {
        let mut a = PinAuthenticator::power_up(PinRecord::default(), vec![PinProtocol::One], false)
            .unwrap();
        set_pin(&mut a, PinProtocol::One, b"1234").unwrap();
        // getPinToken (CTAP 2.0 has no permissions to ask for).
        let (ours, secret) = agree(&mut a, PinProtocol::One);
        let enc = PinProtocol::One
            .encrypt(&secret, &pin_hash(b"1234")[..])
            .unwrap();
        let answer = a
            .client_pin(&map(vec![
                (1, int(1)),
                (2, int(5)),
                (3, ours.public().to_value()),
                (6, Value::Bytes(enc)),
            ]))
            .unwrap();
        let Some(Value::Map(m)) = answer else {
            panic!("a getPinToken answer")
        };
        let Some(Value::Bytes(encrypted)) = get(&m, 2) else {
            panic!("a token")
        };
        let t = PinProtocol::One.decrypt(&secret, encrypted).unwrap();
        let cdh = [5u8; 32];
        let param = PinProtocol::One.authenticate(&t, &cdh);
        let pv = int(1);
        for _ in 0..2 {
            a.verify_param(Some(&pv), &param, &cdh, permission::GA, "rp")
                .unwrap();
            a.clear_token_permissions();
        }
    }

    #[test]
    fn wrong_pins_cost_retries_block_after_three_until_power_up_and_for_good_at_zero() {
        let mut a = key();
        set_pin(&mut a, PinProtocol::One, b"1234").unwrap();
        assert_eq!(retries(&mut a), 8);
        assert_eq!(
            token(&mut a, PinProtocol::Two, b"0000"),
            Err(status::PIN_INVALID)
        );
        assert_eq!(retries(&mut a), 7);
        // A right PIN gives the retries back.
        token(&mut a, PinProtocol::Two, b"1234").unwrap();
        assert_eq!(retries(&mut a), 8);
        assert_eq!(
            token(&mut a, PinProtocol::Two, b"0000"),
            Err(status::PIN_INVALID)
        );
        assert_eq!(
            token(&mut a, PinProtocol::Two, b"0000"),
            Err(status::PIN_INVALID)
        );
        assert_eq!(
            token(&mut a, PinProtocol::Two, b"0000"),
            Err(status::PIN_AUTH_BLOCKED)
        );
        // Blocked until a power cycle, even for the right PIN, and no retry is spent.
        assert_eq!(
            token(&mut a, PinProtocol::Two, b"1234"),
            Err(status::PIN_AUTH_BLOCKED)
        );
        assert_eq!(retries(&mut a), 5);
        let mut a =
            PinAuthenticator::power_up(a.record().clone(), vec![PinProtocol::One], false).unwrap();
        let power_up = |a: &PinAuthenticator| {
            PinAuthenticator::power_up(a.record().clone(), vec![PinProtocol::One], false).unwrap()
        };
        assert_eq!(
            token_v1_getpintoken(&mut a, b"0000"),
            Err(status::PIN_INVALID)
        );
        assert_eq!(
            token_v1_getpintoken(&mut a, b"0000"),
            Err(status::PIN_INVALID)
        );
        assert_eq!(
            token_v1_getpintoken(&mut a, b"0000"),
            Err(status::PIN_AUTH_BLOCKED)
        );
        a = power_up(&a);
        assert_eq!(
            token_v1_getpintoken(&mut a, b"0000"),
            Err(status::PIN_INVALID)
        );
        assert_eq!(a.record().retries, 1);
        assert_eq!(
            token_v1_getpintoken(&mut a, b"0000"),
            Err(status::PIN_BLOCKED)
        );
        let mut a = power_up(&a);
        assert_eq!(
            token_v1_getpintoken(&mut a, b"1234"),
            Err(status::PIN_BLOCKED)
        );
        assert_eq!(a.record().retries, 0);
    }

    /// CTAP 2.0's getPinToken, protocol 1.
    fn token_v1_getpintoken(a: &mut PinAuthenticator, pin: &[u8]) -> Result<Vec<u8>, Status> {
        let p = PinProtocol::One;
        let (ours, s) = agree(a, p);
        let enc = p.encrypt(&s, &pin_hash(pin)[..]).unwrap();
        let answer = a.client_pin(&map(vec![
            (1, int(1)),
            (2, int(5)),
            (3, ours.public().to_value()),
            (6, Value::Bytes(enc)),
        ]))?;
        let Some(Value::Map(m)) = answer else {
            panic!()
        };
        let Some(Value::Bytes(t)) = get(&m, 2) else {
            panic!()
        };
        Ok(p.decrypt(&s, t).unwrap().to_vec())
    }

    #[test]
    fn change_pin_and_unknown_subcommands() {
        let mut a = key();
        set_pin(&mut a, PinProtocol::Two, b"1234").unwrap();
        let p = PinProtocol::Two;
        let (ours, s) = agree(&mut a, p);
        let new_enc = p.encrypt(&s, &padded_pin(b"98765")).unwrap();
        let hash_enc = p.encrypt(&s, &pin_hash(b"1234")[..]).unwrap();
        let mut signed = new_enc.clone();
        signed.extend_from_slice(&hash_enc);
        a.client_pin(&map(vec![
            (1, int(2)),
            (2, int(4)),
            (3, ours.public().to_value()),
            (4, Value::Bytes(p.authenticate(s.hmac_key(), &signed))),
            (5, Value::Bytes(new_enc)),
            (6, Value::Bytes(hash_enc)),
        ]))
        .unwrap();
        assert_eq!(token(&mut a, p, b"1234"), Err(status::PIN_INVALID));
        token(&mut a, p, b"98765").unwrap();
        assert_eq!(
            a.client_pin(&map(vec![(2, int(0x20))])),
            Err(status::INVALID_SUBCOMMAND)
        );
        assert_eq!(a.client_pin(&map(vec![])), Err(status::MISSING_PARAMETER));
        // Protocol 3 does not exist.
        assert_eq!(
            a.client_pin(&map(vec![(1, int(3)), (2, int(2))])),
            Err(status::INVALID_PARAMETER)
        );
    }
}
