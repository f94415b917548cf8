//! The key's PIN at enrolment: from `--pin-file`, or asked on the terminal without echo
//! (with `--pin`, or when the key insists on it: CTAP2_ERR_PIN_REQUIRED, `alwaysUv`, or a
//! UV enrolment on a key without built-in UV). Never from argv. The PIN is wiped from
//! memory when the enrolment is over.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chromecard_gate::attestation::Policy;
use chromecard_gate::{EnrolOptions, Enrolled, Gate, GateError, Pin};
use zeroize::Zeroizing;

use crate::args::EnrollCommand;

/// Where the PIN comes from, and whether the credential asks for it at every login.
pub struct PinChoice {
    /// `--require-pin`: the new credential is `+pin`.
    pub require_pin: bool,
    /// `--pin`: ask before enrolling, even if the key does not insist.
    ask_first: bool,
    /// `--pin-file FILE`.
    file: Option<PathBuf>,
}

impl PinChoice {
    pub fn from_command(cmd: &EnrollCommand) -> Self {
        Self {
            require_pin: cmd.require_pin,
            ask_first: cmd.pin,
            file: cmd.pin_file.clone(),
        }
    }
}

/// `+presence`, `+presence+verification`, `+presence+pin`, ...: as the file writes it.
pub fn options_label(require_uv: bool, require_pin: bool) -> String {
    let mut s = String::from("+presence");
    if require_uv {
        s.push_str("+verification");
    }
    if require_pin {
        s.push_str("+pin");
    }
    s
}

/// The PIN from the file, or from the terminal.
fn read_pin(choice: &PinChoice) -> anyhow::Result<Pin> {
    let text = match &choice.file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the PIN file {}", path.display()))?,
            );
            Zeroizing::new(text.lines().next().unwrap_or_default().to_string())
        }
        // Without a terminal (a script, a service) nobody could type it: say so at once.
        None if !std::io::stdin().is_terminal() => anyhow::bail!(
            "the key's PIN is needed and there is no terminal to ask on; give --pin-file FILE"
        ),
        None => Zeroizing::new(
            rpassword::prompt_password("The key's PIN (not shown): ")
                .context("cannot read the PIN from the terminal; give --pin-file FILE")?,
        ),
    };
    Pin::new(text.to_string()).map_err(|e| anyhow::anyhow!("that PIN cannot be a key's PIN: {e}"))
}

/// Enrols, with the PIN when there is one to give or the key wants one.
pub async fn enroll(
    gate: &Gate,
    username: &str,
    require_uv: bool,
    choice: PinChoice,
    policy: Option<Arc<Policy>>,
) -> anyhow::Result<Enrolled> {
    let options = |pin: Option<Pin>| EnrolOptions {
        require_uv,
        require_pin: choice.require_pin,
        pin,
    };
    let first = if choice.ask_first || choice.file.is_some() || choice.require_pin {
        Some(read_pin(&choice)?)
    } else {
        None
    };
    let asked = first.is_some();
    let result = match gate
        .enroll_attested(username, options(first), policy.clone())
        .await
    {
        Err(GateError::PinRequired) if !asked => {
            eprintln!("The key wants its PIN for this enrolment.");
            gate.enroll_attested(username, options(Some(read_pin(&choice)?)), policy)
                .await
        }
        other => other,
    };
    result.map_err(|e| anyhow::anyhow!("{e} ({})", e.code()))
}
