//! CTAP2 as a client speaks it (CTAP 2.1 sections 6 and 8): the requests k_proxy
//! sends (getInfo, makeCredential, getAssertion, selection), encoded as CTAP2
//! canonical CBOR, and the answers read strictly. Answers come from a USB device,
//! which may be hostile: nothing here panics, and every field is checked for
//! type before use. No I/O: `fido2.rs` moves the bytes.

use ciborium::Value;

use crate::GateError;

/// CTAP2 command bytes.
pub mod command {
    /// authenticatorMakeCredential
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    /// authenticatorGetAssertion
    pub const GET_ASSERTION: u8 = 0x02;
    /// authenticatorGetInfo
    pub const GET_INFO: u8 = 0x04;
    /// authenticatorClientPIN
    pub const CLIENT_PIN: u8 = 0x06;
    /// authenticatorSelection (CTAP 2.1)
    pub const SELECTION: u8 = 0x0b;
}

/// COSE algorithm ids we ask for, in order of preference.
const ALG_ES256: i64 = -7;
const ALG_EDDSA: i64 = -8;

/// CTAP status codes (CTAP 2.1 section 8.2): the one table k_proxy's client and the
/// virtual key (`chromecard-vkey`) both use.
pub mod status {
    /// CTAP2_OK
    pub const OK: u8 = 0x00;
    /// CTAP1_ERR_INVALID_COMMAND
    pub const INVALID_COMMAND: u8 = 0x01;
    /// CTAP1_ERR_INVALID_PARAMETER
    pub const INVALID_PARAMETER: u8 = 0x02;
    /// CTAP1_ERR_INVALID_LENGTH
    pub const INVALID_LENGTH: u8 = 0x03;
    /// CTAP2_ERR_CBOR_UNEXPECTED_TYPE
    pub const CBOR_UNEXPECTED_TYPE: u8 = 0x11;
    /// CTAP2_ERR_INVALID_CBOR
    pub const INVALID_CBOR: u8 = 0x12;
    /// CTAP2_ERR_MISSING_PARAMETER
    pub const MISSING_PARAMETER: u8 = 0x14;
    /// CTAP2_ERR_LIMIT_EXCEEDED
    pub const LIMIT_EXCEEDED: u8 = 0x15;
    /// CTAP2_ERR_CREDENTIAL_EXCLUDED
    pub const CREDENTIAL_EXCLUDED: u8 = 0x19;
    /// CTAP2_ERR_INVALID_CREDENTIAL
    pub const INVALID_CREDENTIAL: u8 = 0x22;
    /// CTAP2_ERR_UNSUPPORTED_ALGORITHM
    pub const UNSUPPORTED_ALGORITHM: u8 = 0x26;
    /// CTAP2_ERR_OPERATION_DENIED
    pub const OPERATION_DENIED: u8 = 0x27;
    /// CTAP2_ERR_UNSUPPORTED_OPTION
    pub const UNSUPPORTED_OPTION: u8 = 0x2b;
    /// CTAP2_ERR_INVALID_OPTION
    pub const INVALID_OPTION: u8 = 0x2c;
    /// CTAP2_ERR_KEEPALIVE_CANCEL
    pub const KEEPALIVE_CANCEL: u8 = 0x2d;
    /// CTAP2_ERR_NO_CREDENTIALS
    pub const NO_CREDENTIALS: u8 = 0x2e;
    /// CTAP2_ERR_USER_ACTION_TIMEOUT
    pub const USER_ACTION_TIMEOUT: u8 = 0x2f;
    /// CTAP2_ERR_NOT_ALLOWED
    pub const NOT_ALLOWED: u8 = 0x30;
    /// CTAP2_ERR_PIN_INVALID
    pub const PIN_INVALID: u8 = 0x31;
    /// CTAP2_ERR_PIN_BLOCKED
    pub const PIN_BLOCKED: u8 = 0x32;
    /// CTAP2_ERR_PIN_AUTH_INVALID
    pub const PIN_AUTH_INVALID: u8 = 0x33;
    /// CTAP2_ERR_PIN_AUTH_BLOCKED
    pub const PIN_AUTH_BLOCKED: u8 = 0x34;
    /// CTAP2_ERR_PIN_NOT_SET
    pub const PIN_NOT_SET: u8 = 0x35;
    /// CTAP 2.0's CTAP2_ERR_PIN_REQUIRED, CTAP 2.1's CTAP2_ERR_PUAT_REQUIRED.
    pub const PIN_REQUIRED: u8 = 0x36;
    /// CTAP2_ERR_PIN_POLICY_VIOLATION
    pub const PIN_POLICY_VIOLATION: u8 = 0x37;
    /// CTAP 2.0's CTAP2_ERR_PIN_TOKEN_EXPIRED (reserved in 2.1).
    pub const PIN_TOKEN_EXPIRED: u8 = 0x38;
    /// CTAP2_ERR_REQUEST_TOO_LARGE
    pub const REQUEST_TOO_LARGE: u8 = 0x39;
    /// CTAP2_ERR_ACTION_TIMEOUT
    pub const ACTION_TIMEOUT: u8 = 0x3a;
    /// CTAP2_ERR_UP_REQUIRED
    pub const UP_REQUIRED: u8 = 0x3b;
    /// CTAP2_ERR_UV_BLOCKED
    pub const UV_BLOCKED: u8 = 0x3c;
    /// CTAP2_ERR_INTEGRITY_FAILURE
    pub const INTEGRITY_FAILURE: u8 = 0x3d;
    /// CTAP2_ERR_INVALID_SUBCOMMAND
    pub const INVALID_SUBCOMMAND: u8 = 0x3e;
    /// CTAP2_ERR_UV_INVALID
    pub const UV_INVALID: u8 = 0x3f;
    /// CTAP2_ERR_UNAUTHORIZED_PERMISSION
    pub const UNAUTHORIZED_PERMISSION: u8 = 0x40;
    /// CTAP1_ERR_OTHER
    pub const OTHER: u8 = 0x7f;

    /// The name of a status code, for logs.
    pub fn name(code: u8) -> &'static str {
        match code {
            OK => "CTAP2_OK",
            INVALID_COMMAND => "CTAP1_ERR_INVALID_COMMAND",
            INVALID_PARAMETER => "CTAP1_ERR_INVALID_PARAMETER",
            INVALID_LENGTH => "CTAP1_ERR_INVALID_LENGTH",
            CBOR_UNEXPECTED_TYPE => "CTAP2_ERR_CBOR_UNEXPECTED_TYPE",
            INVALID_CBOR => "CTAP2_ERR_INVALID_CBOR",
            MISSING_PARAMETER => "CTAP2_ERR_MISSING_PARAMETER",
            LIMIT_EXCEEDED => "CTAP2_ERR_LIMIT_EXCEEDED",
            CREDENTIAL_EXCLUDED => "CTAP2_ERR_CREDENTIAL_EXCLUDED",
            INVALID_CREDENTIAL => "CTAP2_ERR_INVALID_CREDENTIAL",
            UNSUPPORTED_ALGORITHM => "CTAP2_ERR_UNSUPPORTED_ALGORITHM",
            OPERATION_DENIED => "CTAP2_ERR_OPERATION_DENIED",
            UNSUPPORTED_OPTION => "CTAP2_ERR_UNSUPPORTED_OPTION",
            INVALID_OPTION => "CTAP2_ERR_INVALID_OPTION",
            KEEPALIVE_CANCEL => "CTAP2_ERR_KEEPALIVE_CANCEL",
            NO_CREDENTIALS => "CTAP2_ERR_NO_CREDENTIALS",
            USER_ACTION_TIMEOUT => "CTAP2_ERR_USER_ACTION_TIMEOUT",
            NOT_ALLOWED => "CTAP2_ERR_NOT_ALLOWED",
            PIN_INVALID => "CTAP2_ERR_PIN_INVALID",
            PIN_BLOCKED => "CTAP2_ERR_PIN_BLOCKED",
            PIN_AUTH_INVALID => "CTAP2_ERR_PIN_AUTH_INVALID",
            PIN_AUTH_BLOCKED => "CTAP2_ERR_PIN_AUTH_BLOCKED",
            PIN_NOT_SET => "CTAP2_ERR_PIN_NOT_SET",
            PIN_REQUIRED => "CTAP2_ERR_PUAT_REQUIRED",
            PIN_POLICY_VIOLATION => "CTAP2_ERR_PIN_POLICY_VIOLATION",
            PIN_TOKEN_EXPIRED => "CTAP2_ERR_PIN_TOKEN_EXPIRED",
            REQUEST_TOO_LARGE => "CTAP2_ERR_REQUEST_TOO_LARGE",
            ACTION_TIMEOUT => "CTAP2_ERR_ACTION_TIMEOUT",
            UP_REQUIRED => "CTAP2_ERR_UP_REQUIRED",
            UV_BLOCKED => "CTAP2_ERR_UV_BLOCKED",
            INTEGRITY_FAILURE => "CTAP2_ERR_INTEGRITY_FAILURE",
            INVALID_SUBCOMMAND => "CTAP2_ERR_INVALID_SUBCOMMAND",
            UV_INVALID => "CTAP2_ERR_UV_INVALID",
            UNAUTHORIZED_PERMISSION => "CTAP2_ERR_UNAUTHORIZED_PERMISSION",
            // CTAP1_ERR_OTHER among them.
            _ => "other CTAP error",
        }
    }
}

/// Maps a CTAP status other than OK to the gate's refusal.
pub fn status_error(code: u8, label: &str, what: &str) -> GateError {
    use status::*;
    let detail = format!("{label}: {what}: {code:#04x} {}", name(code));
    match code {
        KEEPALIVE_CANCEL => GateError::Cancelled,
        NO_CREDENTIALS | INVALID_CREDENTIAL => GateError::NoCredential,
        CREDENTIAL_EXCLUDED => GateError::AlreadyEnrolled,
        OPERATION_DENIED | USER_ACTION_TIMEOUT | ACTION_TIMEOUT => GateError::Refused { detail },
        UV_BLOCKED => GateError::UvBlocked,
        PIN_INVALID => GateError::PinInvalid { retries: None },
        PIN_BLOCKED => GateError::PinBlocked,
        PIN_AUTH_BLOCKED => GateError::PinAuthBlocked,
        PIN_NOT_SET => GateError::PinNotSet,
        // CTAP 2.0's PIN_REQUIRED, CTAP 2.1's PUAT_REQUIRED: the key wants a PIN for this.
        PIN_REQUIRED => GateError::PinRequired,
        // The PIN token this side sent did not verify, or the key failed a check of its
        // own: faults in the exchange, not features the key lacks.
        PIN_AUTH_INVALID | PIN_TOKEN_EXPIRED | INTEGRITY_FAILURE => GateError::Device { detail },
        INVALID_COMMAND
        | UNSUPPORTED_ALGORITHM
        | UNSUPPORTED_OPTION
        | INVALID_OPTION
        | 0x31..=0x3f => GateError::Unsupported { detail },
        _ => GateError::Device { detail },
    }
}

fn int(n: i64) -> Value {
    Value::Integer(n.into())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn encode(command: u8, params: Option<Value>) -> Vec<u8> {
    let mut out = vec![command];
    if let Some(p) = params {
        // Writing into a Vec cannot fail for values built here.
        let _ = ciborium::ser::into_writer(&p, &mut out);
    }
    out
}

/// The options map, keys in canonical order ("rk" < "up" < "uv": same length, bytewise).
fn options(up: Option<bool>, uv: bool) -> Option<Value> {
    let mut m = Vec::new();
    if let Some(up) = up {
        m.push((text("up"), Value::Bool(up)));
    }
    if uv {
        m.push((text("uv"), Value::Bool(true)));
    }
    (!m.is_empty()).then_some(Value::Map(m))
}

/// An allowList or excludeList: one public-key credential descriptor per id.
pub fn descriptors(ids: &[Vec<u8>]) -> Value {
    Value::Array(
        ids.iter()
            .map(|id| {
                Value::Map(vec![
                    (text("id"), Value::Bytes(id.clone())),
                    (text("type"), text("public-key")),
                ])
            })
            .collect(),
    )
}

/// authenticatorGetInfo.
pub fn get_info() -> Vec<u8> {
    encode(command::GET_INFO, None)
}

/// authenticatorSelection.
pub fn selection() -> Vec<u8> {
    encode(command::SELECTION, None)
}

/// What a makeCredential asks for.
pub struct MakeCredential<'a> {
    /// SHA-256 of the client data (here: of the challenge).
    pub client_data_hash: &'a [u8; 32],
    /// The relying party.
    pub rp_id: &'a str,
    /// The user handle.
    pub user_id: &'a [u8],
    /// The user's name.
    pub user_name: &'a str,
    /// Credentials the key must not already hold.
    pub exclude: &'a [Vec<u8>],
    /// Ask for user verification with the `uv` option (built-in UV on CTAP 2.0 keys).
    pub uv: bool,
    /// pinUvAuthParam and pinUvAuthProtocol, from a pinUvAuthToken.
    pub pin_uv: Option<(&'a [u8], u8)>,
}

/// authenticatorMakeCredential: ES256 or EdDSA, non-resident.
pub fn make_credential(r: &MakeCredential<'_>) -> Vec<u8> {
    let alg = |a| {
        Value::Map(vec![
            (text("alg"), int(a)),
            (text("type"), text("public-key")),
        ])
    };
    let mut m = vec![
        (int(1), Value::Bytes(r.client_data_hash.to_vec())),
        (int(2), Value::Map(vec![(text("id"), text(r.rp_id))])),
        (
            int(3),
            Value::Map(vec![
                (text("id"), Value::Bytes(r.user_id.to_vec())),
                (text("name"), text(r.user_name)),
                (text("displayName"), text(r.user_name)),
            ]),
        ),
        (int(4), Value::Array(vec![alg(ALG_ES256), alg(ALG_EDDSA)])),
    ];
    if !r.exclude.is_empty() {
        m.push((int(5), descriptors(r.exclude)));
    }
    if let Some(o) = options(None, r.uv) {
        m.push((int(7), o));
    }
    if let Some((param, protocol)) = r.pin_uv {
        m.push((int(8), Value::Bytes(param.to_vec())));
        m.push((int(9), int(protocol.into())));
    }
    encode(command::MAKE_CREDENTIAL, Some(Value::Map(m)))
}

/// authenticatorGetAssertion with an allow list; `up: false` asks without a touch
/// (to find which key holds a credential); `uv` sets the `uv` option (built-in UV on
/// CTAP 2.0 keys); `pin_uv` is the pinUvAuthParam and its protocol.
pub fn get_assertion(
    rp_id: &str,
    client_data_hash: &[u8; 32],
    allow: &[Vec<u8>],
    up: bool,
    uv: bool,
    pin_uv: Option<(&[u8], u8)>,
) -> Vec<u8> {
    let mut m = vec![
        (int(1), text(rp_id)),
        (int(2), Value::Bytes(client_data_hash.to_vec())),
        (int(3), descriptors(allow)),
    ];
    if let Some(o) = options((!up).then_some(false), uv) {
        m.push((int(5), o));
    }
    if let Some((param, protocol)) = pin_uv {
        m.push((int(6), Value::Bytes(param.to_vec())));
        m.push((int(7), int(protocol.into())));
    }
    encode(command::GET_ASSERTION, Some(Value::Map(m)))
}

/// authenticatorClientPIN with `params` (integer keys, given in ascending order).
pub fn client_pin(params: Vec<(i64, Value)>) -> Vec<u8> {
    let m = params.into_iter().map(|(k, v)| (int(k), v)).collect();
    encode(command::CLIENT_PIN, Some(Value::Map(m)))
}

/// An authenticatorClientPIN answer's map (empty when the answer has no body).
pub fn parse_client_pin(answer: &[u8], label: &str) -> Result<Vec<(Value, Value)>, GateError> {
    Ok(answer_map(answer, label, "authenticatorClientPIN")?.unwrap_or_default())
}

/// The field `key` of an answer map.
pub fn answer_field(m: &[(Value, Value)], key: i64) -> Option<&Value> {
    field(m, key)
}

/// What a getInfo answer says that k_proxy uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// `FIDO_2_0`, `FIDO_2_1`, ... (never empty).
    pub versions: Vec<String>,
    /// The options map's boolean entries (`clientPin`, `uv`, `pinUvAuthToken`, `alwaysUv`, ...).
    pub options: Vec<(String, bool)>,
    /// pinUvAuthProtocols, in the key's order of preference (empty when absent).
    pub pin_protocols: Vec<u8>,
    /// maxCredentialCountInList: the most credentials one allow list may hold (`None`:
    /// not said, or not a positive number).
    pub max_creds_in_list: Option<usize>,
    /// maxCredentialIdLength: the longest credential id the key takes (`None` as above).
    pub max_cred_id_len: Option<usize>,
    /// maxMsgSize: the longest request message the key takes (`None` as above; CTAP's
    /// default is 1024 bytes).
    pub max_msg_size: Option<usize>,
}

impl Info {
    /// The option `name`, if the key reports it.
    pub fn option(&self, name: &str) -> Option<bool> {
        self.options
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// A CTAP 2.1 key (permissions, authenticatorSelection).
    pub fn is_ctap21(&self) -> bool {
        self.versions
            .iter()
            .any(|v| v == "FIDO_2_1" || v == "FIDO_2_1_PRE")
    }
}

/// A getInfo answer: versions (mandatory, non-empty), options, pinUvAuthProtocols.
pub fn parse_info(answer: &[u8], label: &str) -> Result<Info, GateError> {
    let what = "authenticatorGetInfo";
    let m = answer_map(answer, label, what)?.ok_or_else(|| malformed(label, what, "no body"))?;
    let Some(Value::Array(vs)) = field(&m, 1) else {
        return Err(malformed(label, what, "no versions"));
    };
    let versions: Vec<String> = vs
        .iter()
        .filter_map(|v| match v {
            Value::Text(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    if versions.is_empty() {
        return Err(malformed(label, what, "an empty versions list"));
    }
    let options = match field(&m, 4) {
        None => Vec::new(),
        Some(Value::Map(o)) => o
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::Text(k), Value::Bool(b)) => Some((k.clone(), *b)),
                _ => None,
            })
            .collect(),
        Some(_) => return Err(malformed(label, what, "options is not a map")),
    };
    let pin_protocols = match field(&m, 6) {
        None => Vec::new(),
        Some(Value::Array(ps)) => ps
            .iter()
            .filter_map(|p| match p {
                Value::Integer(i) => u8::try_from(i128::from(*i)).ok(),
                _ => None,
            })
            .collect(),
        Some(_) => return Err(malformed(label, what, "pinUvAuthProtocols is not an array")),
    };
    // A limit of zero or less limits nothing a list could obey: read as no limit.
    let limit = |key: i64, name: &str| match field(&m, key) {
        None => Ok(None),
        Some(Value::Integer(i)) => Ok(usize::try_from(i128::from(*i)).ok().filter(|n| *n > 0)),
        Some(_) => Err(malformed(label, what, &format!("{name} is not an integer"))),
    };
    let max_creds_in_list = limit(7, "maxCredentialCountInList")?;
    let max_cred_id_len = limit(8, "maxCredentialIdLength")?;
    let max_msg_size = limit(5, "maxMsgSize")?;
    Ok(Info {
        versions,
        options,
        pin_protocols,
        max_creds_in_list,
        max_cred_id_len,
        max_msg_size,
    })
}

/// An answer that is not the CBOR a CTAP2 answer must be.
fn malformed(label: &str, what: &str, why: &str) -> GateError {
    GateError::Device {
        detail: format!("{label}: {what}: malformed answer: {why}"),
    }
}

/// Splits an answer into its status and map; a status other than OK is an error.
fn answer_map(
    answer: &[u8],
    label: &str,
    what: &str,
) -> Result<Option<Vec<(Value, Value)>>, GateError> {
    let Some((&status, body)) = answer.split_first() else {
        return Err(malformed(label, what, "empty"));
    };
    if status != 0 {
        return Err(status_error(status, label, what));
    }
    if body.is_empty() {
        return Ok(None);
    }
    let mut reader = body;
    match ciborium::de::from_reader::<Value, _>(&mut reader) {
        Ok(Value::Map(m)) if reader.is_empty() => Ok(Some(m)),
        Ok(Value::Map(_)) => Err(malformed(label, what, "bytes after the CBOR map")),
        Ok(_) => Err(malformed(label, what, "not a CBOR map")),
        Err(e) => Err(malformed(label, what, &e.to_string())),
    }
}

fn field(m: &[(Value, Value)], key: i64) -> Option<&Value> {
    m.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == i128::from(key)))
        .map(|(_, v)| v)
}

fn bytes_field(
    m: &[(Value, Value)],
    key: i64,
    label: &str,
    what: &str,
) -> Result<Vec<u8>, GateError> {
    match field(m, key) {
        Some(Value::Bytes(b)) => Ok(b.clone()),
        Some(_) => Err(malformed(
            label,
            what,
            &format!("field {key} is not a byte string"),
        )),
        None => Err(malformed(label, what, &format!("field {key} is missing"))),
    }
}

/// An answer with no body (selection).
pub fn parse_empty(answer: &[u8], label: &str, what: &str) -> Result<(), GateError> {
    answer_map(answer, label, what).map(|_| ())
}

/// The versions of a getInfo answer (mandatory, non-empty).
pub fn parse_get_info(answer: &[u8], label: &str) -> Result<Vec<String>, GateError> {
    parse_info(answer, label).map(|i| i.versions)
}

/// The authenticator data of a makeCredential answer (the attestation statement is
/// not verified: see the README's gate levels).
pub fn parse_make_credential(answer: &[u8], label: &str) -> Result<Vec<u8>, GateError> {
    let what = "authenticatorMakeCredential";
    let m = answer_map(answer, label, what)?.ok_or_else(|| malformed(label, what, "no body"))?;
    if !matches!(field(&m, 1), Some(Value::Text(_))) {
        return Err(malformed(label, what, "no attestation format"));
    }
    bytes_field(&m, 2, label, what)
}

/// A makeCredential answer: the format, the authenticator data and the attestation
/// statement (unverified; attested enrolment checks it, see [`crate::attestation`]).
pub fn parse_make_credential_full(
    answer: &[u8],
    label: &str,
) -> Result<(Vec<u8>, crate::attestation::Statement), GateError> {
    let what = "authenticatorMakeCredential";
    let m = answer_map(answer, label, what)?.ok_or_else(|| malformed(label, what, "no body"))?;
    let Some(Value::Text(fmt)) = field(&m, 1) else {
        return Err(malformed(label, what, "no attestation format"));
    };
    let auth_data = bytes_field(&m, 2, label, what)?;
    let att_stmt = match field(&m, 3) {
        Some(v @ Value::Map(_)) => v.clone(),
        Some(_) => return Err(malformed(label, what, "field 3 is not a map")),
        None => Value::Map(Vec::new()),
    };
    Ok((
        auth_data,
        crate::attestation::Statement {
            fmt: fmt.clone(),
            att_stmt,
        },
    ))
}

/// A getAssertion answer: the credential id (absent when the key left it out),
/// the authenticator data and the signature.
#[derive(Debug)]
pub struct Assertion {
    /// The credential used.
    pub credential_id: Option<Vec<u8>>,
    /// The signed authenticator data.
    pub auth_data: Vec<u8>,
    /// The signature over `auth_data || clientDataHash`.
    pub signature: Vec<u8>,
}

/// Reads a getAssertion answer.
pub fn parse_get_assertion(answer: &[u8], label: &str) -> Result<Assertion, GateError> {
    let what = "authenticatorGetAssertion";
    let m = answer_map(answer, label, what)?.ok_or_else(|| malformed(label, what, "no body"))?;
    let credential_id = match field(&m, 1) {
        None => None,
        Some(Value::Map(d)) => match d
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == "id"))
        {
            Some((_, Value::Bytes(id))) => Some(id.clone()),
            _ => return Err(malformed(label, what, "credential without an id")),
        },
        Some(_) => return Err(malformed(label, what, "credential is not a map")),
    };
    Ok(Assertion {
        credential_id,
        auth_data: bytes_field(&m, 2, label, what)?,
        signature: bytes_field(&m, 3, label, what)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Vec<u8> {
        let mut out = vec![0];
        ciborium::ser::into_writer(&v, &mut out).unwrap();
        out
    }

    /// The codes as CTAP 2.1 §8.2 (and libfido2's err.h) number them, and what each
    /// means at the gate.
    #[test]
    fn statuses_are_named_and_mapped_as_ctap_numbers_them() {
        use status::*;
        for (code, want) in [
            (0x3a, "CTAP2_ERR_ACTION_TIMEOUT"),
            (0x3b, "CTAP2_ERR_UP_REQUIRED"),
            (0x3c, "CTAP2_ERR_UV_BLOCKED"),
            (0x3d, "CTAP2_ERR_INTEGRITY_FAILURE"),
            (0x3f, "CTAP2_ERR_UV_INVALID"),
        ] {
            assert_eq!(name(code), want, "{code:#04x}");
        }
        let code = |c: u8| status_error(c, "key", "getAssertion").code();
        assert_eq!(code(ACTION_TIMEOUT), "key_refused");
        assert_eq!(code(USER_ACTION_TIMEOUT), "key_refused");
        assert_eq!(code(UV_BLOCKED), "uv_blocked");
        assert_eq!(code(PIN_AUTH_INVALID), "device_error");
        assert_eq!(code(INTEGRITY_FAILURE), "device_error");
        assert_eq!(code(UNSUPPORTED_OPTION), "key_unsupported");
        assert_eq!(code(UP_REQUIRED), "key_unsupported");
    }

    #[test]
    fn requests_are_canonical_cbor_maps() {
        let r = get_assertion("rp", &[7; 32], &[vec![1, 2]], false, false, None);
        assert_eq!(r[0], command::GET_ASSERTION);
        let v: Value = ciborium::de::from_reader(&r[1..]).unwrap();
        let Value::Map(m) = v else { panic!() };
        let keys: Vec<_> = m.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(keys, vec![int(1), int(2), int(3), int(5)]);
        assert_eq!(
            field(&m, 5),
            Some(&Value::Map(vec![(text("up"), Value::Bool(false))]))
        );
        // With a touch, no options at all (up defaults to true).
        let r = get_assertion("rp", &[7; 32], &[vec![1, 2]], true, false, None);
        let Value::Map(m) = ciborium::de::from_reader(&r[1..]).unwrap() else {
            panic!()
        };
        assert!(field(&m, 5).is_none());
        let mc = make_credential(&MakeCredential {
            client_data_hash: &[1; 32],
            rp_id: "rp",
            user_id: &[9],
            user_name: "alice",
            exclude: &[],
            uv: false,
            pin_uv: None,
        });
        let Value::Map(m) = ciborium::de::from_reader(&mc[1..]).unwrap() else {
            panic!()
        };
        assert!(field(&m, 5).is_none() && field(&m, 7).is_none());
        assert_eq!(get_info(), vec![command::GET_INFO]);
    }

    #[test]
    fn statuses_map_to_refusals() {
        assert!(matches!(
            status_error(0x2d, "k", "op"),
            GateError::Cancelled
        ));
        assert!(matches!(
            status_error(0x2e, "k", "op"),
            GateError::NoCredential
        ));
        assert!(matches!(
            status_error(0x19, "k", "op"),
            GateError::AlreadyEnrolled
        ));
        assert_eq!(status_error(0x27, "k", "op").code(), "key_refused");
        assert_eq!(status_error(0x2f, "k", "op").code(), "key_refused");
        assert_eq!(status_error(0x36, "k", "op").code(), "pin_required");
        assert_eq!(status_error(0x31, "k", "op").code(), "pin_invalid");
        assert_eq!(status_error(0x32, "k", "op").code(), "pin_blocked");
        assert_eq!(status_error(0x34, "k", "op").code(), "pin_auth_blocked");
        assert_eq!(status_error(0x35, "k", "op").code(), "pin_not_set");
        assert_eq!(status_error(0x33, "k", "op").code(), "device_error");
        assert_eq!(status_error(0x01, "k", "op").code(), "key_unsupported");
        assert_eq!(status_error(0x7f, "k", "op").code(), "device_error");
        let d = status_error(0x33, "key", "makeCredential").to_string();
        assert!(d.contains("CTAP2_ERR_PIN_AUTH_INVALID"), "{d}");
    }

    #[test]
    fn answers_are_read_strictly() {
        let ok = body(Value::Map(vec![
            (
                int(1),
                Value::Map(vec![
                    (text("id"), Value::Bytes(vec![5])),
                    (text("type"), text("public-key")),
                ]),
            ),
            (int(2), Value::Bytes(vec![1; 37])),
            (int(3), Value::Bytes(vec![2; 70])),
        ]));
        let a = parse_get_assertion(&ok, "k").unwrap();
        assert_eq!(a.credential_id, Some(vec![5]));
        assert_eq!(a.auth_data.len(), 37);
        // A trailing byte, a non-map, a wrong type, a missing field, an empty answer.
        let mut trailing = ok.clone();
        trailing.push(0);
        for bad in [
            trailing,
            body(Value::Array(vec![])),
            body(Value::Map(vec![
                (int(2), text("x")),
                (int(3), Value::Bytes(vec![])),
            ])),
            body(Value::Map(vec![(int(2), Value::Bytes(vec![]))])),
            vec![],
            vec![0, 0xff],
        ] {
            assert_eq!(
                parse_get_assertion(&bad, "k").unwrap_err().code(),
                "device_error",
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_get_assertion(&[0x2e], "k").unwrap_err().code(),
            "credential_not_found"
        );
        let info = body(Value::Map(vec![(
            int(1),
            Value::Array(vec![text("FIDO_2_0")]),
        )]));
        assert_eq!(parse_get_info(&info, "k").unwrap(), vec!["FIDO_2_0"]);
        let empty = body(Value::Map(vec![(int(1), Value::Array(vec![]))]));
        assert!(parse_get_info(&empty, "k").is_err());
        let versions = (int(1), Value::Array(vec![text("FIDO_2_1")]));
        let limited = body(Value::Map(vec![
            versions.clone(),
            (int(5), int(1200)),
            (int(7), int(8)),
            (int(8), int(128)),
        ]));
        let i = parse_info(&limited, "k").unwrap();
        assert_eq!(
            (i.max_creds_in_list, i.max_cred_id_len, i.max_msg_size),
            (Some(8), Some(128), Some(1200))
        );
        let unlimited = body(Value::Map(vec![
            versions.clone(),
            (int(7), int(0)),
            (int(8), int(-1)),
        ]));
        let i = parse_info(&unlimited, "k").unwrap();
        assert_eq!((i.max_creds_in_list, i.max_cred_id_len), (None, None));
        assert_eq!(i.max_msg_size, None);
        let wrong = body(Value::Map(vec![versions, (int(7), text("8"))]));
        assert!(parse_info(&wrong, "k").is_err());
        assert!(parse_empty(&[0], "k", "selection").is_ok());
    }

    proptest::proptest! {
        #[test]
        fn any_answer_is_read_or_refused_without_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_get_assertion(&raw, "k");
            let _ = parse_make_credential(&raw, "k");
            let _ = parse_get_info(&raw, "k");
            let _ = parse_info(&raw, "k");
            let _ = parse_client_pin(&raw, "k");
        }
    }
}
