//! The software authenticator: development and tests only (`--gate soft`).
//!
//! It speaks the same makeCredential / getAssertion semantics as a USB key, with
//! real ES256 keys and real CTAP2 authenticator data, so every line of the gate's
//! verification runs against it in CI.
//!
//! Like a real key's non-resident credentials, its credentials are not stored:
//! the credential id is `nonce (16) || HMAC(master, "credential" || rpIdHash || nonce)[..16]`
//! and the private key is derived from `HMAC(master, "es256" || ctr || rpIdHash || nonce)`.
//! Only the 32-byte master secret and the global signature counter are kept, in
//! the key file (`--soft-key-file`, created 0600), so enrolling in one process and
//! logging in from another works. Without a key file the master is random and
//! lives only as long as the process.
//!
//! [`SoftBehavior`] switches simulate what a real key (or an attacker's device)
//! might do, to drive the negative tests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer as _;
use sha2::Sha256;

use ciborium::Value;

use crate::ctap2;
use crate::fsutil;
use crate::pin_authenticator::{permission, PinAuthenticator, PinRecord};
use crate::pin_client::{self, UvNeed};
use crate::pin_protocol::PinProtocol;
use crate::verify::{client_data_hash, rp_id_hash, PublicKey, FLAG_AT, FLAG_UP, FLAG_UV};
use crate::{
    AssertionResponse, Authenticator, CancelSignal, GateError, GetAssertionRequest, MadeCredential,
    MakeCredentialRequest, Presence,
};

type HmacSha256 = Hmac<Sha256>;

/// The AAGUID the software authenticator reports: "chromecard-soft!" (not a real model).
const SOFT_AAGUID: [u8; 16] = *b"chromecard-soft!";

/// The longest request message the software authenticator states it takes (getInfo's
/// maxMsgSize); the virtual key refuses longer ones, as real keys do.
pub const SOFT_MAX_MSG_SIZE: usize = 1200;
/// How long a `slow` touch takes.
const SLOW_TOUCH: Duration = Duration::from_millis(250);
/// The relying party a `wrong-rp` answer claims.
const WRONG_RP: &str = "evil.example";

/// What the software authenticator does when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftBehavior {
    /// Answers at once, like a key that is plugged in and touched.
    Present,
    /// Refuses with [`GateError::NoKey`], like a machine without a key.
    NoKey,
    /// Never answers until cancelled, like a key nobody touches.
    NoTouch,
    /// Like `present`, but each touch takes 250 ms (to see one-at-a-time device use).
    Slow,
    /// The key refuses (CTAP2_ERR_OPERATION_DENIED).
    Refuse,
    /// Signs without advancing its counter, like a clone of the key made at its last use.
    ClonedCounter,
    /// Signs with a key other than the credential's.
    ForeignKey,
    /// Signs authenticator data with the user-present flag clear.
    UpClear,
    /// Signs authenticator data for another relying party.
    WrongRp,
    /// Answers every getAssertion after the first with the first answer again.
    Replay,
}

impl SoftBehavior {
    const CHOICES: &'static str = "present, no-key, no-touch, slow, refuse, cloned-counter, \
         foreign-key, up-clear, wrong-rp, replay";

    const ALL: [SoftBehavior; 10] = [
        SoftBehavior::Present,
        SoftBehavior::NoKey,
        SoftBehavior::NoTouch,
        SoftBehavior::Slow,
        SoftBehavior::Refuse,
        SoftBehavior::ClonedCounter,
        SoftBehavior::ForeignKey,
        SoftBehavior::UpClear,
        SoftBehavior::WrongRp,
        SoftBehavior::Replay,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SoftBehavior::Present => "present",
            SoftBehavior::NoKey => "no-key",
            SoftBehavior::NoTouch => "no-touch",
            SoftBehavior::Slow => "slow",
            SoftBehavior::Refuse => "refuse",
            SoftBehavior::ClonedCounter => "cloned-counter",
            SoftBehavior::ForeignKey => "foreign-key",
            SoftBehavior::UpClear => "up-clear",
            SoftBehavior::WrongRp => "wrong-rp",
            SoftBehavior::Replay => "replay",
        }
    }
}

impl fmt::Display for SoftBehavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text given for [`SoftBehavior`] is none of the choices.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unknown software authenticator behaviour {given:?}; choose one of: {}",
    SoftBehavior::CHOICES
)]
pub struct UnknownSoftBehavior {
    /// What was given.
    pub given: String,
}

impl FromStr for SoftBehavior {
    type Err = UnknownSoftBehavior;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SoftBehavior::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| UnknownSoftBehavior {
                given: s.to_string(),
            })
    }
}

/// The key material: the master secret, the global signature counter, and the PIN.
struct KeyState {
    master: [u8; 32],
    counter: u32,
    /// Where it is kept; `None` for an in-memory key.
    file: Option<PathBuf>,
    /// The PIN side (its hash and retries are kept in the file; the rest is per power-up).
    pin: PinAuthenticator,
}

/// The PIN protocols and CTAP version a new software key offers: CTAP 2.1, protocols 2 and 1.
fn default_pin(record: PinRecord) -> Result<PinAuthenticator, String> {
    PinAuthenticator::power_up(record, vec![PinProtocol::Two, PinProtocol::One], true)
}

impl KeyState {
    fn render(&self) -> String {
        let mut out = format!(
            "# chromecard SOFTWARE authenticator key: tests and demos only, never a real credential.\n\
             version 1\nmaster {}\ncounter {}\n",
            STANDARD.encode(self.master),
            self.counter
        );
        let record = self.pin.record();
        if let Some(hash) = record.hash {
            // What a real key keeps of its PIN: LEFT(SHA-256(pin), 16), and the retries.
            out.push_str(&format!(
                "pin_hash {}\npin_retries {}\n",
                STANDARD.encode(hash),
                record.retries
            ));
        }
        out
    }

    fn parse(text: &str) -> Option<([u8; 32], u32, PinRecord)> {
        let mut version = None;
        let mut master = None;
        let mut counter = None;
        let mut pin = PinRecord::default();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once(' ')?;
            match k {
                "version" => version = Some(v),
                "master" => master = Some(STANDARD.decode(v).ok()?.try_into().ok()?),
                "counter" => counter = Some(v.parse().ok()?),
                "pin_hash" => pin.hash = Some(STANDARD.decode(v).ok()?.try_into().ok()?),
                "pin_retries" => pin.retries = v.parse().ok().filter(|r| *r <= 8)?,
                _ => return None,
            }
        }
        (version == Some("1")).then_some(())?;
        Some((master?, counter?, pin))
    }

    fn persist(&self) -> Result<(), GateError> {
        if let Some(file) = &self.file {
            fsutil::write_atomic(file, self.render().as_bytes()).map_err(|e| {
                GateError::Device {
                    detail: format!("software authenticator key file {}: {e}", file.display()),
                }
            })?;
        }
        Ok(())
    }
}

/// An [`Authenticator`] without hardware. Its answers prove nothing about a person:
/// never run it where a session must mean that a person is at the key.
pub struct SoftAuthenticator {
    behavior: SoftBehavior,
    key: Mutex<KeyState>,
    /// The first assertion made, for [`SoftBehavior::Replay`].
    first_assertion: Mutex<Option<AssertionResponse>>,
    /// Operations running right now: a real key cannot run two, and neither may we.
    in_flight: AtomicUsize,
    /// The attestation identity, if any (else packed self attestation).
    attestation: Option<crate::soft_attestation::SoftAttestation>,
    /// Counts returns from operations, so tests can see the blocking thread end.
    #[cfg(test)]
    exits: Option<Arc<AtomicUsize>>,
}

impl SoftAuthenticator {
    /// A software authenticator with a random in-memory key.
    ///
    /// # Panics
    /// When the OS CSPRNG cannot be read; [`SoftAuthenticator::try_new`] reports it.
    pub fn new(behavior: SoftBehavior) -> Self {
        Self::try_new(behavior).expect("the OS random number generator failed")
    }

    /// A software authenticator with a random in-memory key, or why the OS CSPRNG
    /// could not give one (never a fixed fallback key).
    pub fn try_new(behavior: SoftBehavior) -> Result<Self, String> {
        let mut master = [0u8; 32];
        getrandom::getrandom(&mut master)
            .map_err(|e| format!("cannot read the OS random number generator: {e}"))?;
        Ok(Self::from_state(
            behavior,
            KeyState {
                master,
                counter: 0,
                file: None,
                pin: default_pin(PinRecord::default())?,
            },
        ))
    }

    /// A software authenticator whose key lives in `path`: loaded if the file exists
    /// (it must not be accessible to group or others), else created with mode 0600.
    pub fn with_key_file(behavior: SoftBehavior, path: &Path) -> Result<Self, String> {
        let state = if path.exists() {
            fsutil::check_private(path).map_err(|e| e.to_string())?;
            let text = fsutil::read_checked(path, 4096)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .ok_or_else(|| format!("{}: vanished while being read", path.display()))?;
            let (master, counter, pin) = KeyState::parse(&text).ok_or_else(|| {
                format!(
                    "{} is not a chromecard software authenticator key file",
                    path.display()
                )
            })?;
            KeyState {
                master,
                counter,
                file: Some(path.to_path_buf()),
                pin: default_pin(pin)?,
            }
        } else {
            let mut master = [0u8; 32];
            getrandom::getrandom(&mut master).map_err(|e| format!("no randomness: {e}"))?;
            let state = KeyState {
                master,
                counter: 0,
                file: Some(path.to_path_buf()),
                pin: default_pin(PinRecord::default())?,
            };
            state.persist().map_err(|e| e.to_string())?;
            state
        };
        Ok(Self::from_state(behavior, state))
    }

    fn from_state(behavior: SoftBehavior, state: KeyState) -> Self {
        Self {
            behavior,
            key: Mutex::new(state),
            first_assertion: Mutex::new(None),
            in_flight: AtomicUsize::new(0),
            attestation: None,
            #[cfg(test)]
            exits: None,
        }
    }

    /// Attests new credentials with `identity` (packed with x5c, or fido-u2f) instead of
    /// packed self attestation.
    pub fn with_attestation(mut self, identity: crate::soft_attestation::SoftAttestation) -> Self {
        self.attestation = Some(identity);
        self
    }

    /// Test-only: `exits` is incremented each time an operation returns.
    #[cfg(test)]
    pub(crate) fn with_exit_counter(behavior: SoftBehavior, exits: Arc<AtomicUsize>) -> Self {
        let mut s = Self::new(behavior);
        s.exits = Some(exits);
        s
    }

    fn key(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.key.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one operation: refuses overlap (as a real key would garble two), counts exits.
    fn op<T>(&self, f: impl FnOnce() -> Result<T, GateError>) -> Result<T, GateError> {
        let result = if self.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
            tracing::error!("software authenticator: two operations at once on one key");
            Err(GateError::Device {
                detail: "software authenticator: two operations at once".to_string(),
            })
        } else {
            f()
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        #[cfg(test)]
        if let Some(exits) = &self.exits {
            exits.fetch_add(1, Ordering::SeqCst);
        }
        result
    }

    /// The "touch": what each behaviour does before anything is signed.
    fn touch(&self, cancel: &CancelSignal) -> Result<(), GateError> {
        if cancel.is_cancelled() {
            return Err(GateError::Cancelled);
        }
        match self.behavior {
            SoftBehavior::NoKey => Err(GateError::NoKey),
            SoftBehavior::NoTouch => {
                // Sleep on the signal; no busy loop. The long timeout only bounds each sleep.
                while !cancel.wait_timeout(Duration::from_secs(3600)) {}
                Err(GateError::Cancelled)
            }
            SoftBehavior::Refuse => Err(GateError::Refused {
                detail: "software authenticator: CTAP2_ERR_OPERATION_DENIED".to_string(),
            }),
            SoftBehavior::Slow => {
                if cancel.wait_timeout(SLOW_TOUCH) {
                    Err(GateError::Cancelled)
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn mac(master: &[u8; 32], parts: &[&[u8]]) -> HmacSha256 {
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut m = <HmacSha256 as Mac>::new_from_slice(master).unwrap_or_else(|_| unreachable!());
        for p in parts {
            m.update(p);
        }
        m
    }

    /// The credential id for `nonce` under `rp_hash`.
    fn credential_id(master: &[u8; 32], rp_hash: &[u8; 32], nonce: &[u8; 16]) -> Vec<u8> {
        let tag = Self::mac(master, &[b"credential", rp_hash, nonce])
            .finalize()
            .into_bytes();
        let mut id = nonce.to_vec();
        id.extend_from_slice(&tag[..16]);
        id
    }

    /// The nonce of `id` if it is one of ours for `rp_hash` (constant-time tag check).
    fn own_nonce(master: &[u8; 32], rp_hash: &[u8; 32], id: &[u8]) -> Option<[u8; 16]> {
        if id.len() != 32 {
            return None;
        }
        let nonce: [u8; 16] = id[..16].try_into().ok()?;
        Self::mac(master, &[b"credential", rp_hash, &nonce])
            .verify_truncated_left(&id[16..])
            .ok()?;
        Some(nonce)
    }

    /// The signing key of a credential (`label` separates the real key from a foreign one).
    fn signing_key(
        master: &[u8; 32],
        label: &[u8],
        rp_hash: &[u8; 32],
        nonce: &[u8; 16],
    ) -> p256::ecdsa::SigningKey {
        for ctr in 0u8..=255 {
            let bytes = Self::mac(master, &[label, &[ctr], rp_hash, nonce])
                .finalize()
                .into_bytes();
            // Fails only for 0 or >= n (probability ~2^-32 per try).
            if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&bytes) {
                return k;
            }
        }
        unreachable!("256 HMAC outputs in a row outside the P-256 scalar range")
    }

    fn auth_data(rp_hash: &[u8; 32], flags: u8, counter: u32) -> Vec<u8> {
        let mut ad = Vec::with_capacity(200);
        ad.extend_from_slice(rp_hash);
        ad.push(flags);
        ad.extend_from_slice(&counter.to_be_bytes());
        ad
    }

    fn device(&self) -> String {
        format!("software authenticator ({})", self.behavior)
    }

    fn make_credential_inner(
        &self,
        request: &MakeCredentialRequest,
        cancel: &CancelSignal,
    ) -> Result<MadeCredential, GateError> {
        self.touch(cancel)?;
        let cdh = client_data_hash(&request.challenge);
        let need = UvNeed::asked_by(request.require_uv, request.require_pin);
        let verified = self.prove_and_check_uv(
            need,
            request.pin.as_ref(),
            permission::MC,
            &request.rp_id,
            &cdh,
        )?;
        let made =
            self.make_credential_for_hash(&request.rp_id, &cdh, &request.exclude, true, verified)?;
        let attestation =
            crate::soft_attestation::statement(self.attestation.as_ref(), &made, &cdh);
        Ok(MadeCredential {
            auth_data: made.auth_data,
            attestation,
            device: self.device(),
        })
    }

    /// makeCredential as an authenticator sees it on the wire: the client sends the
    /// clientDataHash, and the "touch" has already happened (or not: `user_present`).
    /// Returns the authenticator data and a packed self-attestation signature (the
    /// new credential's key over `authData || clientDataHash`).
    ///
    /// This is the one implementation of the software key's credentials: the
    /// [`Authenticator`] methods and the virtual USB key (`chromecard-vkey`) both use it.
    pub fn make_credential_for_hash(
        &self,
        rp_id: &str,
        client_data_hash: &[u8; 32],
        exclude: &[Vec<u8>],
        user_present: bool,
        user_verified: bool,
    ) -> Result<SelfAttested, GateError> {
        let key = self.key();
        let rp_hash = rp_id_hash(rp_id);
        if exclude
            .iter()
            .any(|id| Self::own_nonce(&key.master, &rp_hash, id).is_some())
        {
            return Err(GateError::AlreadyEnrolled);
        }
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|e| GateError::Device {
            detail: format!("no randomness: {e}"),
        })?;
        let id = Self::credential_id(&key.master, &rp_hash, &nonce);
        let sk = Self::signing_key(&key.master, b"es256", &rp_hash, &nonce);
        let public = PublicKey::Es256(*sk.verifying_key());
        let mut flags = FLAG_AT;
        if user_present {
            flags |= FLAG_UP;
        }
        if user_verified {
            flags |= FLAG_UV;
        }
        let mut ad = Self::auth_data(&rp_hash, flags, key.counter);
        ad.extend_from_slice(&SOFT_AAGUID);
        ad.extend_from_slice(&(id.len() as u16).to_be_bytes());
        ad.extend_from_slice(&id);
        ad.extend_from_slice(&public.to_cose());
        let mut msg = ad.clone();
        msg.extend_from_slice(client_data_hash);
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        Ok(SelfAttested {
            auth_data: ad,
            signature: sig.to_der().as_bytes().to_vec(),
        })
    }

    /// Whether `id` is one of this key's credentials for `rp_id` (no touch, nothing
    /// signed): what a key checks before it asks for a touch.
    pub fn holds_credential(&self, rp_id: &str, id: &[u8]) -> bool {
        Self::own_nonce(&self.key().master, &rp_id_hash(rp_id), id).is_some()
    }

    fn get_assertion_inner(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<AssertionResponse, GateError> {
        self.touch(cancel)?;
        let cdh = client_data_hash(&request.challenge);
        let need = UvNeed::asked_by(request.require_uv, request.require_pin);
        let verified = self.prove_and_check_uv(
            need,
            request.pin.as_ref(),
            permission::GA,
            &request.rp_id,
            &cdh,
        )?;
        let mut response =
            self.get_assertion_for_hash(&request.rp_id, &cdh, &request.allow, true, verified)?;
        response.device = self.device();
        Ok(response)
    }

    /// getAssertion as an authenticator sees it on the wire: the client sends the
    /// clientDataHash, and the "touch" has already happened (or not: `user_present`,
    /// CTAP's `up: false`). The behaviour switches (cloned counter, foreign key, UP
    /// clear, wrong relying party, replay) apply here, whoever asks.
    pub fn get_assertion_for_hash(
        &self,
        rp_id: &str,
        client_data_hash: &[u8; 32],
        allow: &[Vec<u8>],
        user_present: bool,
        user_verified: bool,
    ) -> Result<AssertionResponse, GateError> {
        if self.behavior == SoftBehavior::Replay {
            if let Some(first) = self
                .first_assertion
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Ok(first);
            }
        }
        let mut key = self.key();
        let rp_hash = rp_id_hash(rp_id);
        let Some((id, nonce)) = allow
            .iter()
            .find_map(|id| Self::own_nonce(&key.master, &rp_hash, id).map(|n| (id.clone(), n)))
        else {
            return Err(GateError::NoCredential);
        };
        // A real key advances its counter before it signs; a clone made at the last
        // use signs that same count again.
        if self.behavior != SoftBehavior::ClonedCounter {
            key.counter = key
                .counter
                .checked_add(1)
                .ok_or_else(|| GateError::Device {
                    detail: "software authenticator counter exhausted".to_string(),
                })?;
            key.persist()?;
        }
        let mut flags = 0;
        if user_present {
            flags |= FLAG_UP;
        }
        if user_verified {
            flags |= FLAG_UV;
        }
        let mut signed_rp = rp_hash;
        let mut label: &[u8] = b"es256";
        match self.behavior {
            SoftBehavior::UpClear => flags &= !FLAG_UP,
            SoftBehavior::WrongRp => signed_rp = rp_id_hash(WRONG_RP),
            SoftBehavior::ForeignKey => label = b"foreign",
            _ => {}
        }
        let ad = Self::auth_data(&signed_rp, flags, key.counter);
        let sk = Self::signing_key(&key.master, label, &rp_hash, &nonce);
        let mut msg = ad.clone();
        msg.extend_from_slice(client_data_hash);
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        let response = AssertionResponse {
            credential_id: Some(id),
            auth_data: ad,
            signature: sig.to_der().as_bytes().to_vec(),
            device: "software authenticator".to_string(),
        };
        // Only touched assertions are worth replaying; a probe (`up: false`) is not.
        if user_present {
            let mut first = self
                .first_assertion
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if first.is_none() {
                *first = Some(response.clone());
            }
        }
        Ok(response)
    }

    /// The behaviour this key was made with.
    pub fn behavior(&self) -> SoftBehavior {
        self.behavior
    }

    /// The client's side of user verification (the same code k_proxy runs against a USB
    /// key, [`crate::pin_client`]) against this key's own clientPIN, then the key's check
    /// of the pinUvAuthParam over `cdh`: whether the UV flag is to be set.
    fn prove_and_check_uv(
        &self,
        need: UvNeed,
        pin: Option<&crate::Pin>,
        permission: u8,
        rp_id: &str,
        cdh: &[u8; 32],
    ) -> Result<bool, GateError> {
        if !need.uv && !need.pin && pin.is_none() {
            return Ok(false);
        }
        let label = "software authenticator";
        let info = ctap2::parse_info(&self.wire(&ctap2::get_info()), label)?;
        let proof = pin_client::prove_uv(
            &info,
            need,
            pin,
            permission,
            rp_id,
            label,
            &mut |request, _, _| Ok(self.wire(request)),
        )?;
        match proof.param(cdh) {
            Some((param, protocol)) => {
                let protocol = Value::Integer(protocol.into());
                self.check_pin_uv_param(Some(&protocol), &param, cdh, permission, rp_id)
                    .map_err(|status| ctap2::status_error(status, label, "pinUvAuthParam"))?;
                Ok(true)
            }
            // The `uv` option: built-in UV (on a CTAP 2.0 key), if the key has it.
            None => Ok(proof.uv_option() && self.key().pin.has_builtin_uv()),
        }
    }

    /// The key's CTAP2 answers to authenticatorGetInfo and authenticatorClientPIN (command
    /// byte and CBOR in, status byte and CBOR out): what [`crate::pin_client`] talks to.
    fn wire(&self, request: &[u8]) -> Vec<u8> {
        let result = match request.split_first() {
            Some((&ctap2::command::GET_INFO, _)) => Ok(Some(self.get_info_value())),
            Some((&ctap2::command::CLIENT_PIN, params)) => {
                match ciborium::de::from_reader::<Value, _>(params) {
                    Ok(Value::Map(m)) => self.client_pin(&m),
                    _ => Err(0x12),
                }
            }
            _ => Err(0x01),
        };
        match result {
            Ok(body) => {
                let mut out = vec![0];
                if let Some(v) = body {
                    if ciborium::ser::into_writer(&v, &mut out).is_err() {
                        return vec![0x7f];
                    }
                }
                out
            }
            Err(status) => vec![status],
        }
    }

    /// getInfo as this key reports it (the virtual USB key adds its own fields to it).
    pub fn get_info_value(&self) -> Value {
        let key = self.key();
        let ctap21 = key.pin.is_ctap21();
        let text = |s: &str| Value::Text(s.to_string());
        let mut versions = vec![text("FIDO_2_0")];
        if ctap21 {
            versions.push(text("FIDO_2_1"));
        }
        // CTAP2 canonical order: shorter keys first, then bytewise.
        let mut options = vec![
            (text("rk"), Value::Bool(false)),
            (text("up"), Value::Bool(true)),
        ];
        if key.pin.has_builtin_uv() {
            options.push((text("uv"), Value::Bool(true)));
        }
        options.push((text("plat"), Value::Bool(false)));
        if ctap21 {
            options.push((text("alwaysUv"), Value::Bool(key.pin.always_uv())));
        }
        options.push((text("clientPin"), Value::Bool(key.pin.is_set())));
        if ctap21 {
            options.push((text("pinUvAuthToken"), Value::Bool(true)));
            options.push((text("makeCredUvNotRqd"), Value::Bool(!key.pin.always_uv())));
        }
        let protocols = key
            .pin
            .protocol_numbers()
            .into_iter()
            .map(|n| Value::Integer(n.into()))
            .collect();
        Value::Map(vec![
            (Value::Integer(1.into()), Value::Array(versions)),
            (Value::Integer(3.into()), Value::Bytes(SOFT_AAGUID.to_vec())),
            (Value::Integer(4.into()), Value::Map(options)),
            (
                Value::Integer(5.into()),
                Value::Integer(SOFT_MAX_MSG_SIZE.into()),
            ),
            (Value::Integer(6.into()), Value::Array(protocols)),
        ])
    }

    /// One authenticatorClientPIN request (its CBOR map): the answer or a CTAP status.
    /// The PIN's hash and retries are written to the key file when they change.
    pub fn client_pin(&self, params: &[(Value, Value)]) -> Result<Option<Value>, u8> {
        let mut key = self.key();
        let before = key.pin.record().clone();
        let answer = key.pin.client_pin(params);
        if *key.pin.record() != before && key.persist().is_err() {
            tracing::error!("software authenticator: cannot write the PIN state to its key file");
            return Err(0x7f);
        }
        answer
    }

    /// Checks a makeCredential's or getAssertion's pinUvAuthParam (see
    /// [`PinAuthenticator::verify_param`]): `Ok` means the UV flag is to be set.
    pub fn check_pin_uv_param(
        &self,
        protocol: Option<&Value>,
        param: &[u8],
        client_data_hash: &[u8; 32],
        permission: u8,
        rp_id: &str,
    ) -> Result<(), u8> {
        self.key()
            .pin
            .verify_param(protocol, param, client_data_hash, permission, rp_id)
    }

    /// A makeCredential or getAssertion passed its user presence test: the PIN/UV token
    /// loses its permissions (see [`PinAuthenticator::clear_token_permissions`]).
    pub fn user_presence_used(&self) {
        self.key().pin.clear_token_permissions();
    }

    /// Whether a PIN is set.
    pub fn pin_is_set(&self) -> bool {
        self.key().pin.is_set()
    }

    /// Powers the PIN side up again as a CTAP 2.1 key (`ctap21`) or a 2.0 one, offering
    /// `protocols` (preferred first), with `always_uv` (every makeCredential and
    /// getAssertion needs a pinUvAuthParam) and `builtin_uv` (a simulated fingerprint
    /// reader). The PIN and its retries are kept.
    pub fn configure_pin(
        &self,
        protocols: Vec<PinProtocol>,
        ctap21: bool,
        always_uv: bool,
        builtin_uv: bool,
    ) -> Result<(), String> {
        let mut key = self.key();
        let record = key.pin.record().clone();
        key.pin = PinAuthenticator::power_up(record, protocols, ctap21)?;
        key.pin.set_always_uv(always_uv);
        key.pin.set_builtin_uv(builtin_uv);
        Ok(())
    }

    /// Whether the key has built-in user verification.
    pub fn has_builtin_uv(&self) -> bool {
        self.key().pin.has_builtin_uv()
    }

    /// Sets the PIN (all retries back), as a person would with a FIDO2 tool; written to
    /// the key file. For test set-ups (the virtual key's `--pin`).
    pub fn set_pin(&self, pin: &crate::Pin) -> Result<(), GateError> {
        let mut key = self.key();
        key.pin.set_pin_directly(pin.expose());
        key.persist()
    }
}

/// A new credential with its packed self-attestation (CTAP2 `fmt: "packed"`, no x5c).
#[derive(Debug, Clone)]
pub struct SelfAttested {
    /// The authenticator data, with attested credential data.
    pub auth_data: Vec<u8>,
    /// ES256 (DER) by the new credential's own key over `auth_data || clientDataHash`.
    pub signature: Vec<u8>,
}

impl Authenticator for SoftAuthenticator {
    fn describe(&self) -> String {
        let key = match &self.key().file {
            Some(f) => format!("key file {}", f.display()),
            None => "in-memory key".to_string(),
        };
        format!(
            "SOFTWARE authenticator (tests only; no key is checked), behaviour {}, {key}",
            self.behavior
        )
    }

    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        self.op(|| {
            if cancel.is_cancelled() {
                return Err(GateError::Cancelled);
            }
            match self.behavior {
                SoftBehavior::NoKey => Err(GateError::NoKey),
                // Presence needs no touch, but a key nobody answers for never answers.
                SoftBehavior::NoTouch => self.touch(cancel).and(Err(GateError::Cancelled)),
                _ => Ok(Presence {
                    device: "software authenticator".to_string(),
                }),
            }
        })
    }

    fn wait_for_touch(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        self.op(|| {
            // The touch level cannot see a signature problem (nothing is signed), so
            // only the touch behaviours matter here.
            self.touch(cancel)?;
            Ok(Presence {
                device: self.device(),
            })
        })
    }

    fn make_credential(
        &self,
        request: &MakeCredentialRequest,
        cancel: &CancelSignal,
    ) -> Result<MadeCredential, GateError> {
        self.op(|| self.make_credential_inner(request, cancel))
    }

    fn get_assertion(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<AssertionResponse, GateError> {
        self.op(|| self.get_assertion_inner(request, cancel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{parse_auth_data, verify_new_credential};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_every_behaviour_and_lists_choices_on_error() {
        for b in SoftBehavior::ALL {
            assert_eq!(b.to_string().parse::<SoftBehavior>().unwrap(), b);
            assert!(SoftBehavior::CHOICES.contains(b.as_str()));
        }
        let err = "yes".parse::<SoftBehavior>().unwrap_err().to_string();
        assert!(err.contains("present, no-key, no-touch"), "{err}");
        assert!(err.contains("\"yes\""), "{err}");
    }

    #[test]
    fn describe_says_software_loudly() {
        let d = SoftAuthenticator::new(SoftBehavior::Present).describe();
        assert!(d.starts_with("SOFTWARE authenticator"), "{d}");
    }

    #[test]
    fn no_touch_returns_cancelled_when_already_cancelled() {
        let c = CancelSignal::new();
        c.cancel();
        let a = SoftAuthenticator::new(SoftBehavior::NoTouch);
        assert!(matches!(a.check_presence(&c), Err(GateError::Cancelled)));
        assert!(matches!(a.wait_for_touch(&c), Err(GateError::Cancelled)));
    }

    fn mc(rp: &str) -> MakeCredentialRequest {
        MakeCredentialRequest {
            rp_id: rp.into(),
            challenge: [1; 32],
            user_id: vec![1],
            user_name: "alice".into(),
            require_uv: false,
            require_pin: false,
            pin: None,
            exclude: vec![],
        }
    }

    #[test]
    fn make_credential_gives_real_authenticator_data() {
        let a = SoftAuthenticator::new(SoftBehavior::Present);
        let made = a
            .make_credential(&mc("chromecard"), &CancelSignal::new())
            .unwrap();
        let new = verify_new_credential(&made.auth_data, &rp_id_hash("chromecard"), false).unwrap();
        assert_eq!(new.credential_id.len(), 32);
        assert_eq!(new.aaguid, SOFT_AAGUID);
        // The same id is recognised for this rp only.
        let key = a.key();
        assert!(SoftAuthenticator::own_nonce(
            &key.master,
            &rp_id_hash("chromecard"),
            &new.credential_id
        )
        .is_some());
        assert!(SoftAuthenticator::own_nonce(
            &key.master,
            &rp_id_hash("other"),
            &new.credential_id
        )
        .is_none());
        let mut tampered = new.credential_id.clone();
        tampered[31] ^= 1;
        assert!(
            SoftAuthenticator::own_nonce(&key.master, &rp_id_hash("chromecard"), &tampered)
                .is_none()
        );
    }

    #[test]
    fn the_key_file_is_0600_and_reloads_with_its_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("soft.key");
        let a = SoftAuthenticator::with_key_file(SoftBehavior::Present, &path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let made = a.make_credential(&mc("rp"), &CancelSignal::new()).unwrap();
        let id = verify_new_credential(&made.auth_data, &rp_id_hash("rp"), false)
            .unwrap()
            .credential_id;
        let req = GetAssertionRequest {
            rp_id: "rp".into(),
            challenge: [2; 32],
            allow: vec![id.clone()],
            require_uv: false,
            require_pin: false,
            pin: None,
        };
        let r1 = a.get_assertion(&req, &CancelSignal::new()).unwrap();
        assert_eq!(parse_auth_data(&r1.auth_data).unwrap().sign_count, 1);
        drop(a);
        // Another process: same master, counter carried on.
        let b = SoftAuthenticator::with_key_file(SoftBehavior::Present, &path).unwrap();
        let r2 = b.get_assertion(&req, &CancelSignal::new()).unwrap();
        assert_eq!(parse_auth_data(&r2.auth_data).unwrap().sign_count, 2);
        // A cloned-counter key signs the last count again.
        let c = SoftAuthenticator::with_key_file(SoftBehavior::ClonedCounter, &path).unwrap();
        let r3 = c.get_assertion(&req, &CancelSignal::new()).unwrap();
        assert_eq!(parse_auth_data(&r3.auth_data).unwrap().sign_count, 2);
        // A different key does not hold the credential.
        let other = SoftAuthenticator::new(SoftBehavior::Present);
        assert!(matches!(
            other.get_assertion(&req, &CancelSignal::new()),
            Err(GateError::NoCredential)
        ));
        // Readable by others: refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = SoftAuthenticator::with_key_file(SoftBehavior::Present, &path)
            .err()
            .unwrap();
        assert!(e.contains("chmod 600"), "{e}");
        // Garbage: refused.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "master xyz\n").unwrap();
        assert!(SoftAuthenticator::with_key_file(SoftBehavior::Present, &path).is_err());
    }

    #[test]
    fn overlapping_operations_are_refused() {
        let a = Arc::new(SoftAuthenticator::new(SoftBehavior::NoTouch));
        let c = CancelSignal::new();
        let t = {
            let (a, c) = (a.clone(), c.clone());
            std::thread::spawn(move || a.wait_for_touch(&c))
        };
        while a.in_flight.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let second = a.wait_for_touch(&CancelSignal::new());
        assert!(
            matches!(second, Err(GateError::Device { .. })),
            "{second:?}"
        );
        c.cancel();
        assert!(matches!(t.join().unwrap(), Err(GateError::Cancelled)));
        assert_eq!(a.in_flight.load(Ordering::SeqCst), 0);
    }
}
