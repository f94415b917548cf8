//! User verification as a client asks a key for it (CTAP 2.1 section 6.5.5): what the
//! USB key ([`crate::Fido2Key`]) and the software authenticator both run before a
//! getAssertion or makeCredential that must carry UV.
//!
//! * With the PIN: getPINRetries first (no try at all when the key has
//!   [`LOW_RETRIES`] or fewer left, so that a remote client cannot lock the key), then
//!   getKeyAgreement and, on CTAP 2.1 keys that offer it,
//!   getPinUvAuthTokenUsingPinWithPermissions (the permission asked for, bound to the
//!   relying party), else getPinToken. Protocol 2 when the key offers it, else 1.
//! * With built-in UV (a fingerprint; getInfo `uv: true`) and no PIN needed:
//!   getPinUvAuthTokenUsingUvWithPermissions on CTAP 2.1 keys with `pinUvAuthToken`,
//!   else the `uv` option of the request itself.
//!
//! The PIN's hash travels encrypted; the token is kept only for the one request and
//! wiped afterwards.

use ciborium::Value;
use zeroize::Zeroizing;

use crate::ctap2::{self, Info};
use crate::pin_protocol::{pin_hash, CoseKey, KeyAgreement, PinProtocol};
use crate::{GateError, Pin};

/// At this many retries left or fewer, k_proxy does not try a PIN.
pub const LOW_RETRIES: u8 = 3;

/// One CTAP2 request to the key (command byte and CBOR), what it is (for logs), and
/// whether it waits for the person (built-in UV); its answer (status byte first).
pub(crate) type Transact<'a> = dyn FnMut(&[u8], &str, bool) -> Result<Vec<u8>, GateError> + 'a;

/// The one clientPIN request that waits for the person (a fingerprint).
const USING_UV: &str = "clientPIN getPinUvAuthTokenUsingUvWithPermissions";

/// What the enrolment asks of the key for this request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UvNeed {
    /// UV by any means (`+verification`).
    pub uv: bool,
    /// UV with the PIN (`+pin`).
    pub pin: bool,
}

impl UvNeed {
    /// What a makeCredential or getAssertion request asks for: `+verification`, `+pin`.
    pub fn asked_by(require_uv: bool, require_pin: bool) -> Self {
        Self {
            uv: require_uv,
            pin: require_pin,
        }
    }
}

/// How the request proves UV.
pub(crate) enum UvProof {
    /// It does not.
    None,
    /// A pinUvAuthToken: the request carries authenticate(token, clientDataHash).
    Token {
        protocol: PinProtocol,
        token: Zeroizing<Vec<u8>>,
    },
    /// The request's `uv` option (built-in UV of a CTAP 2.0 key).
    UvOption,
}

impl UvProof {
    /// pinUvAuthParam and pinUvAuthProtocol over `client_data_hash`, if a token.
    pub fn param(&self, client_data_hash: &[u8; 32]) -> Option<(Vec<u8>, u8)> {
        match self {
            UvProof::Token { protocol, token } => Some((
                protocol.authenticate(token, client_data_hash),
                protocol.number(),
            )),
            _ => None,
        }
    }

    /// Whether the `uv` option is to be set.
    pub fn uv_option(&self) -> bool {
        matches!(self, UvProof::UvOption)
    }
}

fn device(label: &str, what: &str, why: impl std::fmt::Display) -> GateError {
    GateError::Device {
        detail: format!("{label}: {what}: {why}"),
    }
}

/// Decides how to verify the user and gets the token. `permission`: the pinUvAuthToken
/// permission (makeCredential or getAssertion); `rp_id` is the one it is bound to.
pub(crate) fn prove_uv(
    info: &Info,
    need: UvNeed,
    pin: Option<&Pin>,
    permission: u8,
    rp_id: &str,
    label: &str,
    transact: &mut Transact<'_>,
) -> Result<UvProof, GateError> {
    if !need.uv && !need.pin && pin.is_none() {
        return Ok(UvProof::None);
    }
    let client_pin = info.option("clientPin");
    let built_in = info.option("uv") == Some(true);
    let use_pin = need.pin || !built_in || (pin.is_some() && client_pin == Some(true));
    if !use_pin {
        if info.is_ctap21() && info.option("pinUvAuthToken") == Some(true) {
            return token_using_uv(info, permission, rp_id, label, transact);
        }
        return Ok(UvProof::UvOption);
    }
    match client_pin {
        Some(true) => {}
        Some(false) => return Err(GateError::PinNotSet),
        None => {
            return Err(GateError::Unsupported {
                detail: format!(
                    "{label}: the key has neither a PIN nor built-in user verification"
                ),
            })
        }
    }
    let pin = pin.ok_or(GateError::PinRequired)?;
    token_using_pin(info, pin, permission, rp_id, label, transact)
}

/// Protocol 2 where the key offers it, else 1 (a key that lists neither: 1, CTAP 2.0's).
fn choose_protocol(info: &Info, label: &str) -> Result<PinProtocol, GateError> {
    if info.pin_protocols.contains(&2) {
        Ok(PinProtocol::Two)
    } else if info.pin_protocols.is_empty() || info.pin_protocols.contains(&1) {
        Ok(PinProtocol::One)
    } else {
        Err(GateError::Unsupported {
            detail: format!(
                "{label}: the key offers only PIN/UV auth protocols {:?}",
                info.pin_protocols
            ),
        })
    }
}

fn client_pin(
    transact: &mut Transact<'_>,
    label: &str,
    what: &str,
    params: Vec<(i64, Value)>,
) -> Result<Vec<(Value, Value)>, GateError> {
    let answer = transact(&ctap2::client_pin(params), what, what == USING_UV)?;
    ctap2::parse_client_pin(&answer, label)
}

/// getPINRetries.
fn retries(transact: &mut Transact<'_>, label: &str) -> Result<u8, GateError> {
    let what = "clientPIN getPINRetries";
    let m = client_pin(transact, label, what, vec![(2, Value::Integer(1.into()))])?;
    match ctap2::answer_field(&m, 3) {
        Some(Value::Integer(i)) => {
            u8::try_from(i128::from(*i)).map_err(|_| device(label, what, "retries out of range"))
        }
        _ => Err(device(label, what, "no pinRetries")),
    }
}

/// getKeyAgreement, and our half: (our public key, the shared secret).
fn agree(
    protocol: PinProtocol,
    transact: &mut Transact<'_>,
    label: &str,
) -> Result<(CoseKey, crate::pin_protocol::SharedSecret), GateError> {
    let what = "clientPIN getKeyAgreement";
    let m = client_pin(
        transact,
        label,
        what,
        vec![
            (1, Value::Integer(protocol.number().into())),
            (2, Value::Integer(2.into())),
        ],
    )?;
    let theirs = ctap2::answer_field(&m, 1)
        .ok_or_else(|| device(label, what, "no keyAgreement"))
        .and_then(|v| CoseKey::from_value(v).map_err(|e| device(label, what, e)))?;
    let ours = KeyAgreement::generate().map_err(|e| device(label, what, e))?;
    let secret = ours
        .shared_secret(protocol, &theirs)
        .map_err(|e| device(label, what, e))?;
    Ok((ours.public(), secret))
}

/// The token in a getPinToken-style answer, decrypted.
fn read_token(
    m: &[(Value, Value)],
    protocol: PinProtocol,
    secret: &crate::pin_protocol::SharedSecret,
    label: &str,
    what: &str,
) -> Result<UvProof, GateError> {
    let Some(Value::Bytes(enc)) = ctap2::answer_field(m, 2) else {
        return Err(device(label, what, "no pinUvAuthToken"));
    };
    let token = protocol
        .decrypt(secret, enc)
        .map_err(|e| device(label, what, e))?;
    if token.is_empty() || (protocol == PinProtocol::Two && token.len() != 32) {
        return Err(device(label, what, "a pinUvAuthToken of a wrong length"));
    }
    Ok(UvProof::Token { protocol, token })
}

fn token_using_pin(
    info: &Info,
    pin: &Pin,
    permission: u8,
    rp_id: &str,
    label: &str,
    transact: &mut Transact<'_>,
) -> Result<UvProof, GateError> {
    let protocol = choose_protocol(info, label)?;
    let left = retries(transact, label)?;
    tracing::debug!(
        device = %label,
        protocol = protocol.number(),
        retries = left,
        "clientPIN: the key's PIN retries"
    );
    if left == 0 {
        return Err(GateError::PinBlocked);
    }
    if left <= LOW_RETRIES {
        return Err(GateError::PinRetriesLow { retries: left });
    }
    let (ours, secret) = agree(protocol, transact, label)?;
    let hash_enc = protocol
        .encrypt(&secret, &pin_hash(pin.expose())[..])
        .map_err(|e| device(label, "clientPIN", e))?;
    let with_permissions = info.is_ctap21() && info.option("pinUvAuthToken") == Some(true);
    let mut params = vec![
        (1, Value::Integer(protocol.number().into())),
        (
            2,
            Value::Integer(if with_permissions { 9 } else { 5 }.into()),
        ),
        (3, ours.to_value()),
        (6, Value::Bytes(hash_enc)),
    ];
    let what = if with_permissions {
        params.push((9, Value::Integer(permission.into())));
        params.push((10, Value::Text(rp_id.to_string())));
        "clientPIN getPinUvAuthTokenUsingPinWithPermissions"
    } else {
        "clientPIN getPinToken"
    };
    tracing::debug!(device = %label, what, "clientPIN: asking for a pinUvAuthToken with the PIN");
    match client_pin(transact, label, what, params) {
        Ok(m) => read_token(&m, protocol, &secret, label, what),
        Err(GateError::PinInvalid { .. }) => {
            // What the key has left now, for the client's answer.
            let retries = retries(transact, label).ok();
            Err(GateError::PinInvalid { retries })
        }
        Err(e) => Err(e),
    }
}

fn token_using_uv(
    info: &Info,
    permission: u8,
    rp_id: &str,
    label: &str,
    transact: &mut Transact<'_>,
) -> Result<UvProof, GateError> {
    let protocol = choose_protocol(info, label)?;
    let (ours, secret) = agree(protocol, transact, label)?;
    let what = USING_UV;
    let m = client_pin(
        transact,
        label,
        what,
        vec![
            (1, Value::Integer(protocol.number().into())),
            (2, Value::Integer(6.into())),
            (3, ours.to_value()),
            (9, Value::Integer(permission.into())),
            (10, Value::Text(rp_id.to_string())),
        ],
    )?;
    read_token(&m, protocol, &secret, label, what)
}
