//! The software authenticator: development and tests only (`--gate soft`).

use std::fmt;
use std::str::FromStr;
#[cfg(test)]
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(test)]
use std::sync::Arc;
use std::time::Duration;

use crate::{Authenticator, CancelSignal, GateError, Presence};

/// What the software authenticator does when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftBehavior {
    /// Answers at once, like a key that is plugged in.
    Present,
    /// Refuses with [`GateError::NoKey`], like a machine without a key.
    NoKey,
    /// Never answers until cancelled, like a key nobody touches.
    NoTouch,
}

impl SoftBehavior {
    const CHOICES: &'static str = "present, no-key, no-touch";

    fn as_str(self) -> &'static str {
        match self {
            SoftBehavior::Present => "present",
            SoftBehavior::NoKey => "no-key",
            SoftBehavior::NoTouch => "no-touch",
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

    /// "present" | "no-key" | "no-touch".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "present" => Ok(SoftBehavior::Present),
            "no-key" => Ok(SoftBehavior::NoKey),
            "no-touch" => Ok(SoftBehavior::NoTouch),
            other => Err(UnknownSoftBehavior {
                given: other.to_string(),
            }),
        }
    }
}

/// An [`Authenticator`] without hardware. Its presence proves nothing: never
/// run it where a session must mean that a person is at the key.
pub struct SoftAuthenticator {
    behavior: SoftBehavior,
    /// Counts returns from `check_presence`, so tests can see the blocking thread end.
    #[cfg(test)]
    exits: Option<Arc<AtomicUsize>>,
}

impl SoftAuthenticator {
    /// A software authenticator that always behaves as `behavior`.
    pub fn new(behavior: SoftBehavior) -> Self {
        Self {
            behavior,
            #[cfg(test)]
            exits: None,
        }
    }

    /// Test-only: `exits` is incremented each time `check_presence` returns.
    #[cfg(test)]
    pub(crate) fn with_exit_counter(behavior: SoftBehavior, exits: Arc<AtomicUsize>) -> Self {
        Self {
            behavior,
            exits: Some(exits),
        }
    }

    fn run(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        if cancel.is_cancelled() {
            return Err(GateError::Cancelled);
        }
        match self.behavior {
            SoftBehavior::Present => Ok(Presence {
                device: "software authenticator".to_string(),
            }),
            SoftBehavior::NoKey => Err(GateError::NoKey),
            SoftBehavior::NoTouch => {
                // Sleep on the signal; no busy loop. The long timeout only bounds each sleep.
                while !cancel.wait_timeout(Duration::from_secs(3600)) {}
                Err(GateError::Cancelled)
            }
        }
    }
}

impl Authenticator for SoftAuthenticator {
    fn describe(&self) -> String {
        format!(
            "SOFTWARE authenticator (tests only; no key is checked), behaviour {}",
            self.behavior
        )
    }

    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        let result = self.run(cancel);
        #[cfg(test)]
        if let Some(exits) = &self.exits {
            exits.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_behaviours_and_lists_choices_on_error() {
        for b in [
            SoftBehavior::Present,
            SoftBehavior::NoKey,
            SoftBehavior::NoTouch,
        ] {
            assert_eq!(b.to_string().parse::<SoftBehavior>().unwrap(), b);
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
        let r = SoftAuthenticator::new(SoftBehavior::NoTouch).check_presence(&c);
        assert!(matches!(r, Err(GateError::Cancelled)));
    }
}
