//! A key's PIN as k_proxy holds it for one login or enrolment: checked against CTAP's
//! bounds, never printed (its `Debug` says only that it is redacted), and wiped from
//! memory when dropped.

use zeroize::Zeroizing;

/// CTAP's shortest PIN, in Unicode code points (CTAP 2.1 section 6.5.1).
pub const MIN_PIN_CODE_POINTS: usize = 4;
/// CTAP's longest PIN, in UTF-8 bytes (64 bytes with the terminating zero).
pub const MAX_PIN_BYTES: usize = 63;

/// Why a PIN is not one a key could hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Fewer than [`MIN_PIN_CODE_POINTS`] characters.
    #[error("a PIN has at least {MIN_PIN_CODE_POINTS} characters")]
    TooShort,
    /// More than [`MAX_PIN_BYTES`] bytes of UTF-8.
    #[error("a PIN has at most {MAX_PIN_BYTES} bytes of UTF-8")]
    TooLong,
    /// A NUL character (the key would cut the PIN there).
    #[error("a PIN cannot contain the NUL character")]
    Nul,
}

/// A PIN within CTAP's bounds. Cloning copies the secret (each copy is wiped on drop).
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Checks `pin` and takes it (it is wiped when the [`Pin`] is dropped, or now when refused).
    pub fn new(pin: String) -> Result<Pin, PinError> {
        let pin = Zeroizing::new(pin);
        if pin.contains('\0') {
            return Err(PinError::Nul);
        }
        if pin.len() > MAX_PIN_BYTES {
            return Err(PinError::TooLong);
        }
        if pin.chars().count() < MIN_PIN_CODE_POINTS {
            return Err(PinError::TooShort);
        }
        Ok(Pin(pin))
    }

    /// The PIN's UTF-8 bytes, for the PIN protocol only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_ctaps() {
        assert_eq!(Pin::new("123".into()).unwrap_err(), PinError::TooShort);
        assert!(Pin::new("1234".into()).is_ok());
        // Four code points of two bytes each: long enough although only 4 characters.
        assert!(Pin::new("ääää".into()).is_ok());
        assert_eq!(Pin::new("äää".into()).unwrap_err(), PinError::TooShort);
        assert!(Pin::new("x".repeat(63)).is_ok());
        assert_eq!(Pin::new("x".repeat(64)).unwrap_err(), PinError::TooLong);
        assert_eq!(Pin::new("12\u{0}34".into()).unwrap_err(), PinError::Nul);
    }

    #[test]
    fn debug_never_shows_it() {
        let p = Pin::new("secret-pin-4711".into()).unwrap();
        let d = format!("{p:?} {:?}", Some(p.clone()));
        assert!(!d.contains("4711"), "{d}");
        assert_eq!(p.expose(), b"secret-pin-4711");
    }
}
