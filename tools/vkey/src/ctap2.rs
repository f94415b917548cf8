//! The CTAP2 commands behind the transport: authenticatorGetInfo, makeCredential,
//! getAssertion, selection and clientPIN, with the touch a person would give. The
//! credentials, the signatures, the authenticator data and the PIN (clientPIN with PIN/UV
//! auth protocols 1 and 2, the retry counter, the pinUvAuthParam checks) are the software
//! authenticator's (`chromecard_gate::SoftAuthenticator`): one implementation for
//! `--gate soft` and for this key.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chromecard_ctaphid::keepalive;
use chromecard_gate::ctap2::status;
use chromecard_gate::pin_authenticator::permission;
use chromecard_gate::pin_protocol::PinProtocol;
use chromecard_gate::{CancelSignal, GateError, SoftAuthenticator};
use ciborium::Value;

const MAKE_CREDENTIAL: u8 = 0x01;
const GET_ASSERTION: u8 = 0x02;
const GET_INFO: u8 = 0x04;
const CLIENT_PIN: u8 = 0x06;
const SELECTION: u8 = 0x0b;
/// ES256, the one algorithm this key makes.
const ALG_ES256: i128 = -7;

/// When the simulated person touches the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// This long after the key starts waiting.
    After(Duration),
    /// Never: the request ends on CANCEL or at the key's own limit.
    Never,
}

/// How this key behaves beyond the transport.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    /// When the touch comes.
    pub touch: Touch,
    /// How long the key itself waits for a touch before CTAP2_ERR_USER_ACTION_TIMEOUT.
    pub touch_limit: Duration,
    /// The key refuses every request that needs a touch (CTAP2_ERR_OPERATION_DENIED).
    pub refuse: bool,
    /// CTAP 2.0 only: no FIDO_2_1 in getInfo, no authenticatorSelection.
    pub ctap20: bool,
    /// getInfo's alwaysUv (CTAP 2.1): every makeCredential and getAssertion needs a
    /// pinUvAuthParam (CTAP2_ERR_PUAT_REQUIRED without one). The PIN itself, and whether
    /// one is set, is the software authenticator's.
    pub always_uv: bool,
    /// Built-in user verification (a fingerprint reader, simulated by the touch): getInfo
    /// `uv: true`, getPinUvAuthTokenUsingUvWithPermissions, and the `uv` option.
    pub builtin_uv: bool,
    /// Behave as Qubes' CTAP proxy 2.0.7: CTAP2 commands 0x07-0x0D refused with
    /// CTAP1_ERR_INVALID_COMMAND.
    pub qubes_ctap_proxy: bool,
    /// Touch waits (counted from 1) that nobody touches, whatever `touch` says.
    pub untouched: Vec<u32>,
    /// getInfo's maxCredentialCountInList: a longer allow or exclude list is refused
    /// with CTAP2_ERR_LIMIT_EXCEEDED, as real keys refuse it (`None`: not said, no limit).
    pub max_creds_in_list: Option<usize>,
}

/// The authenticator: key material, configuration, and the keep-alive status
/// the transport reports while a request runs.
pub struct Key {
    soft: SoftAuthenticator,
    config: KeyConfig,
    /// PROCESSING or UP_NEEDED, read by the keep-alive ticker.
    pub status: Arc<AtomicU8>,
    /// Called when the key starts waiting for a touch (e.g. to pull the key out).
    on_touch_wait: Box<dyn Fn() + Send + Sync>,
    /// Touch waits so far.
    touch_waits: AtomicU32,
}

/// Why a request ended without an answer body.
type Status = u8;

fn get(map: &[(Value, Value)], key: i128) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Integer(i) if i128::from(*i) == key))
        .map(|(_, v)| v)
}

fn text_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| matches!(k, Value::Text(t) if t == key))
        .map(|(_, v)| v)
}

fn as_map(v: &Value) -> Result<&[(Value, Value)], Status> {
    match v {
        Value::Map(m) => Ok(m),
        _ => Err(status::CBOR_UNEXPECTED_TYPE),
    }
}

fn as_bytes(v: &Value) -> Result<&[u8], Status> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(status::CBOR_UNEXPECTED_TYPE),
    }
}

fn as_text(v: &Value) -> Result<&str, Status> {
    match v {
        Value::Text(t) => Ok(t),
        _ => Err(status::CBOR_UNEXPECTED_TYPE),
    }
}

fn client_data_hash(m: &[(Value, Value)], key: i128) -> Result<[u8; 32], Status> {
    let v = get(m, key).ok_or(status::MISSING_PARAMETER)?;
    as_bytes(v)?
        .try_into()
        .map_err(|_| status::INVALID_PARAMETER)
}

/// The option `name` from an options map (absent: `default`).
fn option(m: &[(Value, Value)], key: i128, name: &str, default: bool) -> Result<bool, Status> {
    let Some(opts) = get(m, key) else {
        return Ok(default);
    };
    match text_get(as_map(opts)?, name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(status::CBOR_UNEXPECTED_TYPE),
    }
}

/// Credential ids of a list of PublicKeyCredentialDescriptors.
fn descriptor_ids(v: Option<&Value>) -> Result<Vec<Vec<u8>>, Status> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = v else {
        return Err(status::CBOR_UNEXPECTED_TYPE);
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let d = as_map(item)?;
        let kind = as_text(text_get(d, "type").ok_or(status::MISSING_PARAMETER)?)?;
        let id = as_bytes(text_get(d, "id").ok_or(status::MISSING_PARAMETER)?)?;
        // Unknown types are skipped, as the specification says.
        if kind == "public-key" {
            ids.push(id.to_vec());
        }
    }
    Ok(ids)
}

fn int(n: i128) -> Value {
    // Every integer built here is small.
    Value::Integer(i64::try_from(n).unwrap_or_default().into())
}

fn text(s: &str) -> Value {
    Value::Text(s.to_string())
}

fn encode(status_byte: u8, body: Option<Value>) -> Vec<u8> {
    let mut out = vec![status_byte];
    if let Some(v) = body {
        if ciborium::ser::into_writer(&v, &mut out).is_err() {
            return vec![status::OTHER];
        }
    }
    out
}

fn gate_status(e: &GateError) -> Status {
    match e {
        GateError::NoCredential => status::NO_CREDENTIALS,
        GateError::AlreadyEnrolled => status::CREDENTIAL_EXCLUDED,
        GateError::Cancelled => status::KEEPALIVE_CANCEL,
        GateError::Refused { .. } => status::OPERATION_DENIED,
        _ => status::OTHER,
    }
}

impl Key {
    /// A key over `soft`'s credentials.
    pub fn new(
        soft: SoftAuthenticator,
        config: KeyConfig,
        on_touch_wait: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        // The PIN side as the key's CTAP version has it: CTAP 2.1 with PIN/UV auth
        // protocols 2 and 1 and permissions, or CTAP 2.0 with protocol 1 and getPinToken.
        let protocols = if config.ctap20 {
            vec![PinProtocol::One]
        } else {
            vec![PinProtocol::Two, PinProtocol::One]
        };
        if let Err(e) = soft.configure_pin(
            protocols,
            !config.ctap20,
            config.always_uv,
            config.builtin_uv,
        ) {
            tracing::error!(error = %e, "cannot power up the key's PIN side");
        }
        Self {
            soft,
            config,
            status: Arc::new(AtomicU8::new(keepalive::PROCESSING)),
            on_touch_wait,
            touch_waits: AtomicU32::new(0),
        }
    }

    /// Whether the key has a PIN set (for the start-up line).
    pub fn pin_is_set(&self) -> bool {
        self.soft.pin_is_set()
    }

    /// A CTAPHID_CBOR request: the command byte and its CBOR map. The answer is the
    /// status byte and, on success, the CBOR answer.
    pub fn handle_cbor(&self, request: &[u8], cancel: &CancelSignal) -> Vec<u8> {
        self.status.store(keepalive::PROCESSING, Ordering::SeqCst);
        let Some((&command, params)) = request.split_first() else {
            return vec![status::INVALID_COMMAND];
        };
        tracing::info!(command = command_name(command), "CTAP2 request");
        if self.config.qubes_ctap_proxy && (0x07..=0x0d).contains(&command) {
            return vec![status::INVALID_COMMAND];
        }
        let parsed = if params.is_empty() {
            Ok(Vec::new())
        } else {
            match ciborium::de::from_reader::<Value, _>(params) {
                Ok(Value::Map(m)) => Ok(m),
                Ok(_) => Err(status::CBOR_UNEXPECTED_TYPE),
                Err(_) => Err(status::INVALID_CBOR),
            }
        };
        let result = parsed.and_then(|m| match command {
            GET_INFO => Ok(self.get_info()),
            MAKE_CREDENTIAL => self.make_credential(&m, cancel),
            GET_ASSERTION => self.get_assertion(&m, cancel),
            SELECTION if !self.config.ctap20 => self.wait_for_touch(cancel).map(|()| None),
            CLIENT_PIN => self.client_pin(&m, cancel),
            _ => Err(status::INVALID_COMMAND),
        });
        let answer = match result {
            Ok(body) => encode(status::OK, body),
            Err(code) => vec![code],
        };
        tracing::info!(status = format_args!("{:#04x}", answer[0]), "CTAP2 answer");
        answer
    }

    /// A CTAPHID_MSG (CTAP1/U2F) request: this key speaks CTAP2 only, so every APDU
    /// gets SW_INS_NOT_SUPPORTED.
    pub fn handle_msg(&self, _apdu: &[u8]) -> Vec<u8> {
        vec![0x6d, 0x00]
    }

    fn wait_for_touch(&self, cancel: &CancelSignal) -> Result<(), Status> {
        if self.config.refuse {
            return Err(status::OPERATION_DENIED);
        }
        self.status.store(keepalive::UP_NEEDED, Ordering::SeqCst);
        let nth = self.touch_waits.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::info!(nth, "waiting for a touch");
        (self.on_touch_wait)();
        let touch = if self.config.untouched.contains(&nth) {
            Touch::Never
        } else {
            self.config.touch
        };
        let outcome = match touch {
            Touch::After(d) if d < self.config.touch_limit => {
                if cancel.wait_timeout(d) {
                    Err(status::KEEPALIVE_CANCEL)
                } else {
                    Ok(())
                }
            }
            _ => {
                if cancel.wait_timeout(self.config.touch_limit) {
                    Err(status::KEEPALIVE_CANCEL)
                } else {
                    Err(status::USER_ACTION_TIMEOUT)
                }
            }
        };
        self.status.store(keepalive::PROCESSING, Ordering::SeqCst);
        match outcome {
            Ok(()) => tracing::info!("touched"),
            Err(status::KEEPALIVE_CANCEL) => tracing::info!("touch wait cancelled"),
            Err(_) => tracing::info!("nobody touched the key"),
        }
        outcome
    }

    fn get_info(&self) -> Option<Value> {
        // The software authenticator's getInfo (versions, AAGUID, options with clientPin,
        // pinUvAuthToken, makeCredUvNotRqd and alwaysUv, maxMsgSize, pinUvAuthProtocols),
        // plus what a USB key adds: transports and algorithms.
        let Value::Map(mut info) = self.soft.get_info_value() else {
            return None;
        };
        if let Some(n) = self.config.max_creds_in_list {
            // Canonical order: after the software authenticator's keys (up to 6).
            info.push((int(7), int(i128::try_from(n).unwrap_or(i128::MAX))));
        }
        info.push((int(9), Value::Array(vec![text("usb")])));
        info.push((
            int(10),
            Value::Array(vec![Value::Map(vec![
                (text("alg"), int(ALG_ES256)),
                (text("type"), text("public-key")),
            ])]),
        ));
        Some(Value::Map(info))
    }

    /// The pinUvAuthParam of a makeCredential (`param_key` 8) or getAssertion (6):
    /// whether the user is verified. A zero-length one asks for a touch only (CTAP 2.1
    /// section 6.1.2 step 1); none at all is refused where the key insists on UV.
    fn pin_uv(
        &self,
        m: &[(Value, Value)],
        param_key: i128,
        cdh: &[u8; 32],
        perm: u8,
        rp_id: &str,
        cancel: &CancelSignal,
    ) -> Result<bool, Status> {
        let pin_set = self.soft.pin_is_set();
        match get(m, param_key) {
            Some(Value::Bytes(b)) if b.is_empty() => {
                self.wait_for_touch(cancel)?;
                Err(if pin_set {
                    status::PIN_INVALID
                } else {
                    status::PIN_NOT_SET
                })
            }
            Some(Value::Bytes(b)) => {
                tracing::info!("checking the pinUvAuthParam");
                self.soft
                    .check_pin_uv_param(get(m, param_key + 1), b, cdh, perm, rp_id)?;
                Ok(true)
            }
            Some(_) => Err(status::CBOR_UNEXPECTED_TYPE),
            None if self.config.always_uv && !self.config.ctap20 => Err(status::PIN_REQUIRED),
            // CTAP 2.0: a key with a PIN set makes no credential without it.
            None if pin_set && self.config.ctap20 && perm == permission::MC => {
                Err(status::PIN_REQUIRED)
            }
            None => Ok(false),
        }
    }

    fn make_credential(
        &self,
        m: &[(Value, Value)],
        cancel: &CancelSignal,
    ) -> Result<Option<Value>, Status> {
        let cdh = client_data_hash(m, 1)?;
        let rp = as_map(get(m, 2).ok_or(status::MISSING_PARAMETER)?)?;
        let rp_id = as_text(text_get(rp, "id").ok_or(status::MISSING_PARAMETER)?)?;
        as_map(get(m, 3).ok_or(status::MISSING_PARAMETER)?)?;
        let Value::Array(params) = get(m, 4).ok_or(status::MISSING_PARAMETER)? else {
            return Err(status::CBOR_UNEXPECTED_TYPE);
        };
        let es256 = params.iter().any(|p| {
            as_map(p).is_ok_and(|p| {
                matches!(text_get(p, "alg"), Some(Value::Integer(a)) if i128::from(*a) == ALG_ES256)
                    && matches!(text_get(p, "type"), Some(Value::Text(t)) if t == "public-key")
            })
        });
        if !es256 {
            return Err(status::UNSUPPORTED_ALGORITHM);
        }
        let exclude = descriptor_ids(get(m, 5))?;
        self.within_list_limit(&exclude)?;
        if option(m, 7, "rk", false)? {
            return Err(status::UNSUPPORTED_OPTION);
        }
        let verified = self.pin_uv(m, 8, &cdh, permission::MC, rp_id, cancel)?
            || self.uv_option(m, 7, cancel)?;
        if exclude
            .iter()
            .any(|id| self.soft.holds_credential(rp_id, id))
        {
            // Touch first, so a website cannot learn silently which keys are enrolled.
            self.wait_for_touch(cancel)?;
            return Err(status::CREDENTIAL_EXCLUDED);
        }
        self.wait_for_touch(cancel)?;
        // CTAP 2.1: a token serves one touched operation.
        self.soft.user_presence_used();
        let made = self
            .soft
            .make_credential_for_hash(rp_id, &cdh, &exclude, true, verified)
            .map_err(|e| gate_status(&e))?;
        Ok(Some(Value::Map(vec![
            (int(1), text("packed")),
            (int(2), Value::Bytes(made.auth_data)),
            (
                int(3),
                Value::Map(vec![
                    (text("alg"), int(ALG_ES256)),
                    (text("sig"), Value::Bytes(made.signature)),
                ]),
            ),
        ])))
    }

    fn get_assertion(
        &self,
        m: &[(Value, Value)],
        cancel: &CancelSignal,
    ) -> Result<Option<Value>, Status> {
        let rp_id = as_text(get(m, 1).ok_or(status::MISSING_PARAMETER)?)?;
        let cdh = client_data_hash(m, 2)?;
        let allow = descriptor_ids(get(m, 3))?;
        self.within_list_limit(&allow)?;
        let up = option(m, 5, "up", true)?;
        if option(m, 5, "rk", false)? {
            return Err(status::UNSUPPORTED_OPTION);
        }
        let verified = self.pin_uv(m, 6, &cdh, permission::GA, rp_id, cancel)?
            || self.uv_option(m, 5, cancel)?;
        // No resident credentials: an empty allow list finds nothing.
        if !allow.iter().any(|id| self.soft.holds_credential(rp_id, id)) {
            return Err(status::NO_CREDENTIALS);
        }
        if up {
            self.wait_for_touch(cancel)?;
            // CTAP 2.1: a token serves one touched operation.
            self.soft.user_presence_used();
        }
        let a = self
            .soft
            .get_assertion_for_hash(rp_id, &cdh, &allow, up, verified)
            .map_err(|e| gate_status(&e))?;
        let id = a.credential_id.unwrap_or_default();
        Ok(Some(Value::Map(vec![
            (
                int(1),
                Value::Map(vec![
                    (text("id"), Value::Bytes(id)),
                    (text("type"), text("public-key")),
                ]),
            ),
            (int(2), Value::Bytes(a.auth_data)),
            (int(3), Value::Bytes(a.signature)),
        ])))
    }

    /// A list no longer than getInfo's maxCredentialCountInList says, or LIMIT_EXCEEDED.
    fn within_list_limit(&self, ids: &[Vec<u8>]) -> Result<(), Status> {
        match self.config.max_creds_in_list {
            Some(n) if ids.len() > n => {
                tracing::info!(
                    credentials = ids.len(),
                    max = n,
                    "list longer than maxCredentialCountInList"
                );
                Err(status::LIMIT_EXCEEDED)
            }
            _ => Ok(()),
        }
    }

    /// The `uv` option (key `options_key` of the request): only a key with built-in UV
    /// takes it, and verifies the user with its "fingerprint" (the touch).
    fn uv_option(
        &self,
        m: &[(Value, Value)],
        options_key: i128,
        cancel: &CancelSignal,
    ) -> Result<bool, Status> {
        if !option(m, options_key, "uv", false)? {
            return Ok(false);
        }
        if !self.config.builtin_uv {
            return Err(status::UNSUPPORTED_OPTION);
        }
        tracing::info!("built-in user verification (simulated by the touch)");
        self.wait_for_touch(cancel)?;
        Ok(true)
    }

    fn client_pin(
        &self,
        m: &[(Value, Value)],
        cancel: &CancelSignal,
    ) -> Result<Option<Value>, Status> {
        if let Some(Value::Integer(sub)) = get(m, 2) {
            tracing::info!(subcommand = i128::from(*sub), "clientPIN");
            // getPinUvAuthTokenUsingUvWithPermissions: the fingerprint first.
            if i128::from(*sub) == 6 && self.config.builtin_uv && !self.config.ctap20 {
                tracing::info!("built-in user verification (simulated by the touch)");
                self.wait_for_touch(cancel)?;
            }
        }
        let answer = self.soft.client_pin(m);
        if let Err(code) = answer {
            tracing::info!(status = format_args!("{code:#04x}"), "clientPIN refused");
        }
        answer
    }
}

fn command_name(c: u8) -> &'static str {
    match c {
        MAKE_CREDENTIAL => "authenticatorMakeCredential",
        GET_ASSERTION => "authenticatorGetAssertion",
        GET_INFO => "authenticatorGetInfo",
        CLIENT_PIN => "authenticatorClientPIN",
        0x07 => "authenticatorReset",
        0x08 => "authenticatorGetNextAssertion",
        SELECTION => "authenticatorSelection",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chromecard_gate::ctap2::descriptors;
    use chromecard_gate::verify::{parse_auth_data, rp_id_hash, verify_new_credential, PublicKey};
    use chromecard_gate::SoftBehavior;

    fn key(config: KeyConfig) -> Key {
        Key::new(
            SoftAuthenticator::new(SoftBehavior::Present),
            config,
            Box::new(|| {}),
        )
    }

    fn config() -> KeyConfig {
        KeyConfig {
            touch: Touch::After(Duration::from_millis(1)),
            touch_limit: Duration::from_secs(5),
            refuse: false,
            ctap20: false,
            always_uv: false,
            builtin_uv: false,
            qubes_ctap_proxy: false,
            untouched: Vec::new(),
            max_creds_in_list: None,
        }
    }

    fn req(command: u8, body: Value) -> Vec<u8> {
        let mut out = vec![command];
        ciborium::ser::into_writer(&body, &mut out).unwrap();
        out
    }

    fn decode(answer: &[u8]) -> (u8, Option<Vec<(Value, Value)>>) {
        let body =
            (answer.len() > 1).then(|| match ciborium::de::from_reader(&answer[1..]).unwrap() {
                Value::Map(m) => m,
                other => panic!("{other:?}"),
            });
        (answer[0], body)
    }

    fn make(rp: &str) -> Value {
        Value::Map(vec![
            (int(1), Value::Bytes(vec![3; 32])),
            (int(2), Value::Map(vec![(text("id"), text(rp))])),
            (
                int(3),
                Value::Map(vec![(text("id"), Value::Bytes(vec![1]))]),
            ),
            (
                int(4),
                Value::Array(vec![Value::Map(vec![
                    (text("alg"), int(-7)),
                    (text("type"), text("public-key")),
                ])]),
            ),
        ])
    }

    #[test]
    fn make_credential_then_get_assertion_verify_with_the_gate() {
        let k = key(config());
        let (st, body) = decode(&k.handle_cbor(
            &req(MAKE_CREDENTIAL, make("rp.example")),
            &CancelSignal::new(),
        ));
        assert_eq!(st, status::OK);
        let body = body.unwrap();
        assert_eq!(get(&body, 1), Some(&text("packed")));
        let ad = as_bytes(get(&body, 2).unwrap()).unwrap().to_vec();
        let new = verify_new_credential(&ad, &rp_id_hash("rp.example"), false).unwrap();
        // getInfo names the model the credential was made by (python-fido2 and libfido2
        // showed "chromecard-vkey!" in getInfo and "chromecard-soft!" in the credential).
        let (_, info) = decode(&k.handle_cbor(&[GET_INFO], &CancelSignal::new()));
        assert_eq!(
            get(&info.unwrap(), 3),
            Some(&Value::Bytes(new.aaguid.to_vec()))
        );
        // The self-attestation verifies with the new credential's key.
        let att = as_map(get(&body, 3).unwrap()).unwrap();
        let sig = as_bytes(text_get(att, "sig").unwrap()).unwrap();
        let mut signed = ad.clone();
        signed.extend_from_slice(&[3; 32]);
        new.public_key.verify(&signed, sig).unwrap();

        let ga = Value::Map(vec![
            (int(1), text("rp.example")),
            (int(2), Value::Bytes(vec![9; 32])),
            (
                int(3),
                Value::Array(vec![Value::Map(vec![
                    (text("id"), Value::Bytes(new.credential_id.clone())),
                    (text("type"), text("public-key")),
                ])]),
            ),
        ]);
        let (st, body) =
            decode(&k.handle_cbor(&req(GET_ASSERTION, ga.clone()), &CancelSignal::new()));
        assert_eq!(st, status::OK);
        let body = body.unwrap();
        let ad = as_bytes(get(&body, 2).unwrap()).unwrap().to_vec();
        assert_eq!(parse_auth_data(&ad).unwrap().sign_count, 1);
        let mut signed = ad.clone();
        signed.extend_from_slice(&[9; 32]);
        let pk: &PublicKey = &new.public_key;
        pk.verify(&signed, as_bytes(get(&body, 3).unwrap()).unwrap())
            .unwrap();
        // Another relying party: no credentials, no touch needed.
        let mut other = ga;
        if let Value::Map(m) = &mut other {
            m[0].1 = text("other.example");
        }
        assert_eq!(
            k.handle_cbor(&req(GET_ASSERTION, other), &CancelSignal::new()),
            vec![status::NO_CREDENTIALS]
        );
    }

    #[test]
    fn get_info_is_canonical_and_reports_the_pin_as_real_keys_do() {
        let (_, info) = decode(&key(config()).handle_cbor(&[GET_INFO], &CancelSignal::new()));
        let info = info.unwrap();
        let Some(Value::Map(options)) = get(&info, 4) else {
            panic!("{info:?}")
        };
        let names: Vec<&str> = options
            .iter()
            .map(|(k, _)| match k {
                Value::Text(t) => t.as_str(),
                _ => panic!("{k:?}"),
            })
            .collect();
        let mut canonical = names.clone();
        canonical.sort_by(|a, b| (a.len(), *a).cmp(&(b.len(), *b)));
        assert_eq!(names, canonical);
        assert_eq!(text_get(options, "clientPin"), Some(&Value::Bool(false)));
        assert_eq!(
            text_get(options, "pinUvAuthToken"),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            text_get(options, "makeCredUvNotRqd"),
            Some(&Value::Bool(true))
        );
        assert_eq!(text_get(options, "alwaysUv"), Some(&Value::Bool(false)));
        assert_eq!(get(&info, 6), Some(&Value::Array(vec![int(2), int(1)])));
        assert_keys_ascending(&info);
        // A CTAP 2.0 key: protocol 1 only, no 2.1 options.
        let k = key(KeyConfig {
            ctap20: true,
            ..config()
        });
        let (_, info) = decode(&k.handle_cbor(&[GET_INFO], &CancelSignal::new()));
        let info = info.unwrap();
        assert_eq!(get(&info, 6), Some(&Value::Array(vec![int(1)])));
        let Some(Value::Map(options)) = get(&info, 4) else {
            panic!()
        };
        assert!(text_get(options, "pinUvAuthToken").is_none());
    }

    #[test]
    fn refusals_and_modes() {
        let cancel = CancelSignal::new();
        // CTAP 2.0: no selection, and getInfo says so.
        let k = key(KeyConfig {
            ctap20: true,
            ..config()
        });
        assert_eq!(
            k.handle_cbor(&[SELECTION], &cancel),
            vec![status::INVALID_COMMAND]
        );
        let (_, info) = decode(&k.handle_cbor(&[GET_INFO], &cancel));
        assert_eq!(
            get(&info.unwrap(), 1),
            Some(&Value::Array(vec![text("FIDO_2_0")]))
        );
        // alwaysUv: makeCredential without pinUvAuthParam is refused.
        let k = key(KeyConfig {
            always_uv: true,
            ..config()
        });
        assert_eq!(
            k.handle_cbor(&req(MAKE_CREDENTIAL, make("rp")), &cancel),
            vec![status::PIN_REQUIRED]
        );
        // A CTAP 2.0 key with a PIN set: the same.
        let soft = SoftAuthenticator::new(SoftBehavior::Present);
        soft.set_pin(&chromecard_gate::Pin::new("1234".into()).unwrap())
            .unwrap();
        let k = Key::new(
            soft,
            KeyConfig {
                ctap20: true,
                ..config()
            },
            Box::new(|| {}),
        );
        assert_eq!(
            k.handle_cbor(&req(MAKE_CREDENTIAL, make("rp")), &cancel),
            vec![status::PIN_REQUIRED]
        );
        // Refuse.
        let k = key(KeyConfig {
            refuse: true,
            ..config()
        });
        assert_eq!(
            k.handle_cbor(&[SELECTION], &cancel),
            vec![status::OPERATION_DENIED]
        );
        // Qubes' proxy refuses 0x07-0x0D.
        let k = key(KeyConfig {
            qubes_ctap_proxy: true,
            ..config()
        });
        assert_eq!(
            k.handle_cbor(&[SELECTION], &cancel),
            vec![status::INVALID_COMMAND]
        );
        // Garbage CBOR.
        assert_eq!(
            k.handle_cbor(&[MAKE_CREDENTIAL, 0xff], &cancel),
            vec![status::INVALID_CBOR]
        );
        assert_eq!(k.handle_cbor(&[], &cancel), vec![status::INVALID_COMMAND]);
    }

    /// CTAP2's canonical CBOR: a map's integer keys in ascending order.
    fn assert_keys_ascending(info: &[(Value, Value)]) {
        let keys: Vec<i128> = info
            .iter()
            .map(|(k, _)| match k {
                Value::Integer(i) => i128::from(*i),
                _ => panic!("a key that is no integer: {k:?}"),
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }

    fn get_assertion_of(ids: &[Vec<u8>]) -> Vec<u8> {
        req(
            GET_ASSERTION,
            Value::Map(vec![
                (int(1), text("rp")),
                (int(2), Value::Bytes(vec![9; 32])),
                (int(3), descriptors(ids)),
            ]),
        )
    }

    #[test]
    fn a_list_longer_than_max_creds_in_list_is_refused_with_limit_exceeded() {
        let cancel = CancelSignal::new();
        let k = key(KeyConfig {
            max_creds_in_list: Some(1),
            ..config()
        });
        let (_, info) = decode(&k.handle_cbor(&[GET_INFO], &cancel));
        let info = info.unwrap();
        assert_eq!(get(&info, 7), Some(&int(1)));
        assert_keys_ascending(&info);
        let (st, body) = decode(&k.handle_cbor(&req(MAKE_CREDENTIAL, make("rp")), &cancel));
        assert_eq!(st, status::OK);
        let ad = as_bytes(get(&body.unwrap(), 2).unwrap()).unwrap().to_vec();
        let mine = verify_new_credential(&ad, &rp_id_hash("rp"), false)
            .unwrap()
            .credential_id;
        let two = [vec![7; 32], mine.clone()];
        assert_eq!(
            k.handle_cbor(&get_assertion_of(&two), &cancel),
            vec![status::LIMIT_EXCEEDED]
        );
        assert_eq!(
            decode(&k.handle_cbor(&get_assertion_of(std::slice::from_ref(&mine)), &cancel)).0,
            status::OK
        );
        // An exclude list too.
        let Value::Map(mut mc) = make("rp") else {
            unreachable!()
        };
        mc.push((int(5), descriptors(&two)));
        assert_eq!(
            k.handle_cbor(&req(MAKE_CREDENTIAL, Value::Map(mc)), &cancel),
            vec![status::LIMIT_EXCEEDED]
        );
        // Without the limit, getInfo says none and the list is taken.
        let k = key(config());
        let (_, info) = decode(&k.handle_cbor(&[GET_INFO], &cancel));
        assert_eq!(get(&info.unwrap(), 7), None);
        assert_eq!(
            k.handle_cbor(&get_assertion_of(&two), &cancel),
            vec![status::NO_CREDENTIALS]
        );
    }

    #[test]
    fn a_touch_nobody_gives_ends_on_cancel_or_at_the_limit() {
        let k = key(KeyConfig {
            touch: Touch::Never,
            touch_limit: Duration::from_millis(50),
            ..config()
        });
        assert_eq!(
            k.handle_cbor(&[SELECTION], &CancelSignal::new()),
            vec![status::USER_ACTION_TIMEOUT]
        );
        let k = key(KeyConfig {
            touch: Touch::Never,
            ..config()
        });
        let c = CancelSignal::new();
        c.cancel();
        assert_eq!(
            k.handle_cbor(&[SELECTION], &c),
            vec![status::KEEPALIVE_CANCEL]
        );
    }
}
