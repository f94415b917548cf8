#![forbid(unsafe_code)]
//! The FIDO2 gate that k_proxy runs once per `POST /session/login`.
//!
//! The gate is a small trait of our own ([`Authenticator`]) so the real USB key
//! ([`Fido2Key`], through hidapi and our own CTAPHID layer) and a software stand-in
//! ([`SoftAuthenticator`], tests and development only) are interchangeable. The
//! trait is the device: it answers GetInfo, waits for a touch, and runs
//! makeCredential and getAssertion, returning the raw bytes. It checks nothing.
//!
//! Everything that decides whether a login passes lives on this side of the
//! trait, independent of the device:
//! * [`verify`]: authenticator data, rpIdHash, UP/UV flags, ES256 and EdDSA
//!   signatures over `authData || clientDataHash`, the signCount rule;
//! * [`credentials`]: the enrolment file (pam-u2f's line format) and the sign
//!   counts kept durably beside it;
//! * user verification with the key's PIN or built-in UV: [`pin_protocol`] (PIN/UV
//!   auth protocols 1 and 2, shared by both sides), the client's clientPIN
//!   (`pin_client`, run by the USB key and the software authenticator before a request
//!   that needs UV) and the authenticator's ([`pin_authenticator`], for the software and
//!   virtual keys);
//! * [`Gate`]: the level ([`GateLevel`]), one operation on the device at a time,
//!   a blocking thread, a deadline, cancellation when the deadline passes or the
//!   client goes away, a fresh random challenge per login, and the ceremony that
//!   ties these together.

mod allow_list;
pub mod attestation;
mod cancel;
mod cbor;
mod ceremony;
pub mod credentials;
pub mod ctap2;
mod fido2;
mod fsutil;
mod gate;
mod hid;
mod outcome;
mod pin;
pub mod pin_authenticator;
mod pin_client;
pub mod pin_protocol;
mod soft;
mod soft_attestation;
pub mod verify;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use cancel::CancelSignal;
pub use credentials::{Credential, CredentialStore, EnrolmentLock, Enrolments, StoreError};
pub use fido2::Fido2Key;
pub use gate::{Gate, GateSettings, LevelConfig};
pub use outcome::{EnrolOptions, Enrolled, Passed};
pub use pin::{Pin, PinError, MAX_PIN_BYTES, MIN_PIN_CODE_POINTS};
pub use soft::{
    SelfAttested, SoftAuthenticator, SoftBehavior, UnknownSoftBehavior, SOFT_MAX_MSG_SIZE,
};
pub use soft_attestation::{SoftAttestation, SoftAttestationFormat};
pub use verify::Rejection;

/// One blocking operation on an authenticator. Implementations run on a blocking
/// thread, return raw answers, and must return promptly
/// (`Err(GateError::Cancelled)`) once `cancel.is_cancelled()`.
///
/// Only [`Authenticator::check_presence`] is required; the others default to
/// "not supported" so a test double can implement just what it needs.
pub trait Authenticator: Send + Sync + 'static {
    /// One line for the start-up log, e.g. "USB FIDO2 key (hidapi, CTAPHID), any single device"
    /// or "SOFTWARE authenticator (tests only)".
    fn describe(&self) -> String;

    /// Presence: the key answers authenticatorGetInfo. No touch.
    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError>;

    /// Touch: waits until a person touches the key. Nothing signed comes back.
    fn wait_for_touch(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        let _ = cancel;
        Err(GateError::Unsupported {
            detail: format!("{} cannot wait for a touch", self.describe()),
        })
    }

    /// The touch a refused login waits for (a name nobody enrolled, no attested
    /// credential, no PIN where one is needed), so that the refusal comes no sooner
    /// than a login's answer would. It must blink a key wherever a login would: with
    /// several keys attached, where [`Authenticator::wait_for_touch`] refuses to guess,
    /// it picks one rather than answer `multiple_keys` at machine speed.
    fn wait_for_touch_before_refusal(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        self.wait_for_touch(cancel)
    }

    /// authenticatorMakeCredential (one touch): a new non-resident credential.
    fn make_credential(
        &self,
        request: &MakeCredentialRequest,
        cancel: &CancelSignal,
    ) -> Result<MadeCredential, GateError> {
        let _ = (request, cancel);
        Err(GateError::Unsupported {
            detail: format!("{} cannot make credentials", self.describe()),
        })
    }

    /// authenticatorGetAssertion (one touch) with an allow list.
    fn get_assertion(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<AssertionResponse, GateError> {
        let _ = (request, cancel);
        Err(GateError::Unsupported {
            detail: format!("{} cannot make assertions", self.describe()),
        })
    }
}

/// Proof that an authenticator answered; only for logs.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Which device answered (product name / path).
    pub device: String,
}

/// A makeCredential request. The authenticator signs over SHA-256(`challenge`)
/// as the clientDataHash.
#[derive(Debug, Clone)]
pub struct MakeCredentialRequest {
    /// The relying-party id the credential is scoped to.
    pub rp_id: String,
    /// Fresh random bytes.
    pub challenge: [u8; 32],
    /// The user handle (not secret; we use SHA-256 of the name, truncated).
    pub user_id: Vec<u8>,
    /// The user name.
    pub user_name: String,
    /// Ask the key for user verification too (by any means).
    pub require_uv: bool,
    /// Verify the user with the key's PIN (`+pin`).
    pub require_pin: bool,
    /// The key's PIN, when the person gave one (used for user verification).
    pub pin: Option<Pin>,
    /// Credential ids the key must not already hold (the user's existing ones).
    pub exclude: Vec<Vec<u8>>,
}

/// A makeCredential answer, unverified.
#[derive(Debug, Clone)]
pub struct MadeCredential {
    /// The authenticator data, with attested credential data.
    pub auth_data: Vec<u8>,
    /// The attestation format and statement, as the key sent them (verified only by
    /// attested enrolment: see [`attestation`]).
    pub attestation: attestation::Statement,
    /// Which device answered (for logs).
    pub device: String,
}

/// A getAssertion request. The authenticator signs `authData || SHA-256(challenge)`.
#[derive(Debug, Clone)]
pub struct GetAssertionRequest {
    /// The relying-party id.
    pub rp_id: String,
    /// Fresh random bytes, new for every login.
    pub challenge: [u8; 32],
    /// The user's enrolled credential ids.
    pub allow: Vec<Vec<u8>>,
    /// Ask the key for user verification too (by any means: `+verification`).
    pub require_uv: bool,
    /// Verify the user with the key's PIN (`+pin`).
    pub require_pin: bool,
    /// The PIN from the login, if any (used only when UV is asked for).
    pub pin: Option<Pin>,
}

/// A getAssertion answer, unverified.
#[derive(Debug, Clone)]
pub struct AssertionResponse {
    /// The credential the key used; `None` when the key left it out (CTAP allows
    /// that when the allow list has exactly one entry).
    pub credential_id: Option<Vec<u8>>,
    /// The authenticator data that was signed.
    pub auth_data: Vec<u8>,
    /// The signature over `auth_data || clientDataHash`.
    pub signature: Vec<u8>,
    /// Which device answered (for logs).
    pub device: String,
}

/// What a login must prove. See the README's "Gate levels: what each proves".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateLevel {
    /// A FIDO2 key answers authenticatorGetInfo (the prototype's check).
    Presence,
    /// A person touched the key; nothing signed proves it.
    Touch,
    /// The user's enrolled key signed a fresh challenge after a touch.
    Assertion,
}

impl GateLevel {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GateLevel::Presence => "presence",
            GateLevel::Touch => "touch",
            GateLevel::Assertion => "assertion",
        }
    }
}

impl fmt::Display for GateLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GateLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "presence" => Ok(GateLevel::Presence),
            "touch" => Ok(GateLevel::Touch),
            "assertion" => Ok(GateLevel::Assertion),
            other => Err(format!(
                "unknown gate level {other:?}; choose one of: presence, touch, assertion"
            )),
        }
    }
}

/// Why the gate refused. Every variant is a refusal: no session is issued.
///
/// `Display` is for k_proxy's own log and may carry device details;
/// [`GateError::client_message`] is what the (untrusted) client sees.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No FIDO2 device is visible.
    #[error("no FIDO2 key is attached")]
    NoKey,
    /// More than one FIDO2 device and none was chosen.
    #[error("{count} FIDO2 keys are attached and no --device was given")]
    MultipleKeys { count: usize },
    /// The configured device path is not among the attached FIDO2 devices.
    #[error("the FIDO2 key {path:?} is not attached")]
    DeviceNotFound { path: String },
    /// The device could not be opened or gave a bad or no answer.
    #[error("FIDO2 device error: {detail}")]
    Device { detail: String },
    /// The operation did not finish within the operation timeout.
    #[error("the FIDO2 key did not answer within {}", fmt_duration(*after))]
    Timeout { after: Duration },
    /// Another operation held the device for longer than we were willing to wait.
    #[error("the FIDO2 key stayed busy for {}", fmt_duration(*waited))]
    Busy { waited: Duration },
    /// The operation was cancelled (deadline passed or the client went away).
    #[error("the FIDO2 operation was cancelled")]
    Cancelled,
    /// The user has no enrolled credential.
    #[error("no credential is enrolled for {username:?}")]
    NotEnrolled { username: String },
    /// The attached key(s) hold none of the user's credentials.
    #[error("the attached FIDO2 key holds none of the user's enrolled credentials")]
    NoCredential,
    /// The key refused the operation (CTAP2_ERR_OPERATION_DENIED and the like).
    #[error("the FIDO2 key refused the operation: {detail}")]
    Refused { detail: String },
    /// The key already holds one of the user's credentials (enrolment only).
    #[error("this key already holds a credential enrolled for the user")]
    AlreadyEnrolled,
    /// The authenticator cannot do what this level needs (e.g. a PIN is required).
    #[error("the authenticator cannot do this: {detail}")]
    Unsupported { detail: String },
    /// The answer did not verify.
    #[error("the assertion was rejected: {0}")]
    Rejected(Rejection),
    /// The enrolment file or the sign counts could not be read or written.
    #[error("credential store: {detail}")]
    Storage { detail: String },
    /// Attested enrolment refused the key's attestation (enrolment only).
    #[error("attestation refused: {0}")]
    Attestation(attestation::AttestationError),
    /// `--require-attested`: none of the user's credentials was attested at enrolment.
    #[error("none of the user's enrolled credentials was attested at enrolment")]
    NotAttested,
    /// The login needs the key's PIN and none was given.
    #[error("the key's PIN is needed and none was given")]
    PinRequired,
    /// The key says the PIN is wrong; `retries`: what it has left, when it said.
    #[error("the key refused the PIN (retries left: {retries:?})")]
    PinInvalid { retries: Option<u8> },
    /// k_proxy did not try the PIN: the key has too few retries left.
    #[error("the key has only {retries} PIN retries left; not trying a PIN remotely")]
    PinRetriesLow { retries: u8 },
    /// The key's PIN is blocked (no retries left); only a reset of the key helps.
    #[error("the key's PIN is blocked")]
    PinBlocked,
    /// Three wrong PINs in a row: the key takes no PIN until it is powered again.
    #[error("the key refuses PINs until it is unplugged and plugged in again")]
    PinAuthBlocked,
    /// The enrolment needs a PIN and the key has none set.
    #[error("the key has no PIN set")]
    PinNotSet,
    /// The key's built-in user verification (a fingerprint) is blocked after too many
    /// failed tries (CTAP2_ERR_UV_BLOCKED).
    #[error("the key's built-in user verification is blocked")]
    UvBlocked,
}

impl GateError {
    /// Stable snake_case code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            GateError::NoKey => "no_key",
            GateError::MultipleKeys { .. } => "multiple_keys",
            GateError::DeviceNotFound { .. } => "device_not_found",
            GateError::Device { .. } => "device_error",
            GateError::Timeout { .. } => "touch_timeout",
            GateError::Busy { .. } => "device_busy",
            GateError::Cancelled => "cancelled",
            GateError::NotEnrolled { .. } => "not_enrolled",
            GateError::NoCredential => "credential_not_found",
            GateError::Refused { .. } => "key_refused",
            GateError::AlreadyEnrolled => "already_enrolled",
            GateError::Unsupported { .. } => "key_unsupported",
            GateError::Rejected(r) => r.code(),
            GateError::Storage { .. } => "credential_store_error",
            GateError::Attestation(e) => e.code(),
            GateError::NotAttested => "not_attested",
            GateError::PinRequired => "pin_required",
            GateError::PinInvalid { .. } => "pin_invalid",
            GateError::PinRetriesLow { .. } => "pin_retries_low",
            GateError::PinBlocked => "pin_blocked",
            GateError::PinAuthBlocked => "pin_auth_blocked",
            GateError::PinNotSet => "pin_not_set",
            GateError::UvBlocked => "uv_blocked",
        }
    }

    /// The PIN retries the key reported, for the JSON body (`"retries"`).
    pub fn pin_retries(&self) -> Option<u8> {
        match self {
            GateError::PinInvalid { retries } => *retries,
            GateError::PinRetriesLow { retries } => Some(*retries),
            GateError::PinBlocked => Some(0),
            _ => None,
        }
    }

    /// True when the fault is k_proxy's own (its enrolment or counter files), not the
    /// key's or the user's: k_proxy answers 503 rather than 401.
    pub fn is_server_fault(&self) -> bool {
        matches!(self, GateError::Storage { .. })
    }

    /// One human sentence for the client.
    ///
    /// Deliberately leaves out device paths and library error text (those go to
    /// k_proxy's log through `Display`): the client is untrusted.
    pub fn client_message(&self) -> String {
        match self {
            GateError::NoKey => "No FIDO2 key is attached to k_proxy; plug in the key \
                 (or attach it with qvm-usb) and try again."
                .to_string(),
            GateError::MultipleKeys { count } => format!(
                "{count} FIDO2 keys are attached to k_proxy; detach all but one, \
                 or start k_proxy with --device <path> to choose one."
            ),
            GateError::DeviceNotFound { .. } => "The FIDO2 key chosen with k_proxy's --device \
                 flag is not attached; attach it (or fix --device) and try again."
                .to_string(),
            GateError::Device { .. } => "The FIDO2 key attached to k_proxy did not answer \
                 correctly; re-plug the key and try again."
                .to_string(),
            GateError::Timeout { after } => format!(
                "The FIDO2 key did not answer within {}; touch the key if it blinks, \
                 or re-plug it, and try again.",
                fmt_duration(*after)
            ),
            GateError::Busy { .. } => {
                "The FIDO2 key is busy with another login; try again in a moment.".to_string()
            }
            GateError::Cancelled => "The FIDO2 key check was cancelled; try again.".to_string(),
            GateError::NotEnrolled { .. } => "No FIDO2 key is enrolled for this user on \
                 k_proxy; enrol one with `k_proxy enroll --username NAME`."
                .to_string(),
            GateError::NoCredential => "The attached FIDO2 key is not the one enrolled for \
                 this user; use the enrolled key."
                .to_string(),
            GateError::Refused { .. } => {
                "The FIDO2 key refused the login; try again and touch the key.".to_string()
            }
            GateError::AlreadyEnrolled => {
                "This FIDO2 key is already enrolled for this user.".to_string()
            }
            GateError::Unsupported { .. } => "The attached FIDO2 key cannot do what k_proxy's \
                 gate level needs; see k_proxy's log."
                .to_string(),
            GateError::Rejected(r) => match r {
                Rejection::UserNotPresent => {
                    "The FIDO2 key did not report a touch; touch the key and try again.".to_string()
                }
                Rejection::UserNotVerified => "The FIDO2 key did not verify the user \
                     (PIN or biometric), which this enrolment requires."
                    .to_string(),
                Rejection::CounterNotIncreased { .. } => "The FIDO2 key's signature counter \
                     went backwards: the key may have been cloned. The login is refused."
                    .to_string(),
                _ => "The FIDO2 key's signed answer did not verify against the enrolled key; \
                     the login is refused."
                    .to_string(),
            },
            GateError::Storage { .. } => "k_proxy cannot read or update its enrolment \
                 records; try again later (an operator must check k_proxy's log)."
                .to_string(),
            GateError::Attestation(_) => "The FIDO2 key's attestation was refused, so it \
                 cannot be enrolled; see the enrolment's message."
                .to_string(),
            GateError::NotAttested => "This user's enrolled key was not attested at \
                 enrolment, and k_proxy accepts only attested keys (--require-attested); \
                 re-enrol the key with `k_proxy enroll --attestation-roots`."
                .to_string(),
            GateError::PinRequired => "This login needs the key's PIN: send it as \"pin\" \
                 in the login body."
                .to_string(),
            GateError::PinInvalid { retries: Some(n) } => {
                format!("The PIN is wrong; the key allows {n} more tries before it blocks the PIN.")
            }
            GateError::PinInvalid { retries: None } => "The PIN is wrong.".to_string(),
            GateError::PinRetriesLow { retries } => format!(
                "The key has only {retries} PIN tries left, so k_proxy will not try a PIN \
                 remotely; enter the right PIN on the key's own machine (any FIDO2 tool) to \
                 restore its tries."
            ),
            GateError::PinBlocked => "The key's PIN is blocked after too many wrong PINs; \
                 only a reset of the key (which erases its credentials) unblocks it."
                .to_string(),
            GateError::PinAuthBlocked => "The key refuses PINs after three wrong ones in a \
                 row; unplug it, plug it in again and try again."
                .to_string(),
            GateError::PinNotSet => "This login needs the key's PIN, but the key has no PIN \
                 set; set one with a FIDO2 tool and enrol again."
                .to_string(),
            GateError::UvBlocked => "The key's built-in user verification (its fingerprint \
                 reader) is blocked after too many failed tries; unblock it by entering the \
                 key's PIN in a FIDO2 tool, then try again."
                .to_string(),
        }
    }
}

/// "200 ms", "5 s", "1.5 s": short and readable in a sentence.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms % 1000 == 0 {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_errors() -> Vec<GateError> {
        vec![
            GateError::NoKey,
            GateError::MultipleKeys { count: 2 },
            GateError::DeviceNotFound {
                path: "/dev/hidraw7".into(),
            },
            GateError::Device {
                detail: "read err".into(),
            },
            GateError::Timeout {
                after: Duration::from_secs(30),
            },
            GateError::Busy {
                waited: Duration::from_millis(500),
            },
            GateError::Cancelled,
            GateError::NotEnrolled {
                username: "alice".into(),
            },
            GateError::NoCredential,
            GateError::Refused {
                detail: "read err".into(),
            },
            GateError::AlreadyEnrolled,
            GateError::Unsupported {
                detail: "read err".into(),
            },
            GateError::Rejected(Rejection::BadSignature),
            GateError::Rejected(Rejection::CounterNotIncreased {
                stored: 5,
                received: 5,
            }),
            GateError::Storage {
                detail: "/dev/hidraw7 read err".into(),
            },
            GateError::Attestation(attestation::AttestationError::NoneRefused),
            GateError::NotAttested,
            GateError::PinRequired,
            GateError::PinInvalid { retries: Some(5) },
            GateError::PinRetriesLow { retries: 3 },
            GateError::PinBlocked,
            GateError::PinAuthBlocked,
            GateError::PinNotSet,
            GateError::UvBlocked,
        ]
    }

    #[test]
    fn codes_are_stable_and_distinct() {
        let codes: Vec<_> = all_errors().iter().map(GateError::code).collect();
        assert_eq!(
            codes,
            [
                "no_key",
                "multiple_keys",
                "device_not_found",
                "device_error",
                "touch_timeout",
                "device_busy",
                "cancelled",
                "not_enrolled",
                "credential_not_found",
                "key_refused",
                "already_enrolled",
                "key_unsupported",
                "bad_signature",
                "counter_not_increased",
                "credential_store_error",
                "attestation_none",
                "not_attested",
                "pin_required",
                "pin_invalid",
                "pin_retries_low",
                "pin_blocked",
                "pin_auth_blocked",
                "pin_not_set",
                "uv_blocked",
            ]
        );
        let mut dedup = codes.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), codes.len());
    }

    #[test]
    fn client_messages_are_sentences_without_device_details() {
        for e in all_errors() {
            let m = e.client_message();
            assert!(m.ends_with('.'), "{m}");
            assert!(!m.contains("/dev/hidraw7"), "{m}");
            assert!(!m.contains("read err"), "{m}");
            assert!(!m.contains("alice"), "{m}");
            assert!(!e.to_string().is_empty());
        }
        assert!(GateError::NoKey.client_message().contains("qvm-usb"));
        assert!(GateError::MultipleKeys { count: 2 }
            .client_message()
            .contains("--device"));
        assert!(GateError::Timeout {
            after: Duration::from_secs(30)
        }
        .client_message()
        .contains("30 s"));
        assert!(GateError::Storage { detail: "x".into() }.is_server_fault());
        assert!(!GateError::NoKey.is_server_fault());
    }

    #[test]
    fn levels_parse_and_print() {
        for l in [GateLevel::Presence, GateLevel::Touch, GateLevel::Assertion] {
            assert_eq!(l.to_string().parse::<GateLevel>().unwrap(), l);
        }
        assert!("strong"
            .parse::<GateLevel>()
            .unwrap_err()
            .contains("presence, touch, assertion"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(200)), "200 ms");
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
    }
}
