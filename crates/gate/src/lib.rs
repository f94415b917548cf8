#![forbid(unsafe_code)]
//! The FIDO2 gate that k_proxy runs once per `POST /session/login`.
//!
//! The gate is a small trait of our own ([`Authenticator`]) so the real USB key
//! ([`Fido2Key`], through ctap-hid-fido2) and a software stand-in
//! ([`SoftAuthenticator`], tests and development only) are interchangeable.
//! [`Gate`] wraps an authenticator with the rules every implementation needs:
//! one operation on the device at a time, a blocking thread, a deadline, and
//! cancellation when the deadline passes or the client goes away.
//!
//! Today's level is "presence": a FIDO2 key answers authenticatorGetInfo.
//! Touch and signed assertions come later as further trait methods.

mod cancel;
mod fido2;
mod gate;
mod soft;

use std::time::Duration;

pub use cancel::CancelSignal;
pub use fido2::Fido2Key;
pub use gate::{Gate, GateSettings};
pub use soft::{SoftAuthenticator, SoftBehavior, UnknownSoftBehavior};

/// One blocking operation on an authenticator. Implementations run on a blocking thread.
pub trait Authenticator: Send + Sync + 'static {
    /// One line for the start-up log, e.g. "USB FIDO2 key (ctap-hid-fido2), any single device"
    /// or "SOFTWARE authenticator (tests only)".
    fn describe(&self) -> String;

    /// Blocking. Must return promptly (`Err(GateError::Cancelled)`) once `cancel.is_cancelled()`.
    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError>;
}

/// Proof that an authenticator answered; only for logs.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Which device answered (product name / path).
    pub device: String,
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
        }
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
                "cancelled"
            ]
        );
    }

    #[test]
    fn client_messages_are_sentences_without_device_details() {
        for e in all_errors() {
            let m = e.client_message();
            assert!(m.ends_with('.'), "{m}");
            assert!(!m.contains("/dev/hidraw7"), "{m}");
            assert!(!m.contains("read err"), "{m}");
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
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(200)), "200 ms");
        assert_eq!(fmt_duration(Duration::from_secs(5)), "5 s");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5 s");
    }
}
