//! Builds the gate from the flags: the authenticator (`--gate`), the level
//! (`--gate-level`, default from `--credentials-file`), and the enrolment file.
//! Every refusal names the flag and the fix. The level is logged loudly at start-up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chromecard_gate::attestation::AttestationRecords;
use chromecard_gate::{
    Authenticator, CredentialStore, Fido2Key, Gate, GateLevel, GateSettings, LevelConfig,
    SoftAttestation, SoftAttestationFormat, SoftAuthenticator, SoftBehavior,
};

use crate::args::{Args, GateKind};

/// The authenticator the flags name. `purpose` is for the soft gate's warning.
pub fn make_authenticator(args: &Args) -> anyhow::Result<Arc<dyn Authenticator>> {
    match args.gate {
        GateKind::Fido2 => {
            if args.soft_key_file.is_some() {
                tracing::warn!("--soft-key-file is ignored: --gate fido2 uses the real USB key");
            }
            if args.soft_attestation_key.is_some() {
                bail!(
                    "--soft-attestation-key is for the software authenticator only: add \
                     --gate soft, or drop --soft-attestation-key/--soft-attestation-certs (a \
                     real key attests with its own certificate)"
                );
            }
            Ok(Arc::new(Fido2Key::new(args.device.clone())))
        }
        GateKind::Soft => {
            tracing::warn!("================================================================");
            tracing::warn!("--gate soft: SOFTWARE AUTHENTICATOR. No USB key, no person: it");
            tracing::warn!("answers and signs every request. For development and tests only;");
            tracing::warn!("never deploy this.");
            tracing::warn!("================================================================");
            let auth = match &args.soft_key_file {
                Some(path) => SoftAuthenticator::with_key_file(args.soft_behavior, path)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("--soft-key-file {}", path.display()))?,
                None => SoftAuthenticator::try_new(args.soft_behavior)
                    .map_err(anyhow::Error::msg)
                    .context("--gate soft")?,
            };
            let auth = match (&args.soft_attestation_key, &args.soft_attestation_certs) {
                (Some(key), Some(certs)) => auth.with_attestation(soft_attestation(
                    key,
                    certs,
                    args.soft_attestation_format,
                )?),
                _ => auth,
            };
            if args.soft_behavior != SoftBehavior::Present {
                tracing::warn!(behavior = %args.soft_behavior, "the software authenticator simulates a misbehaving key");
            }
            Ok(Arc::new(auth))
        }
    }
}

/// The software authenticator's attestation identity from `--soft-attestation-key`,
/// `--soft-attestation-certs` and `--soft-attestation-format`.
fn soft_attestation(
    key: &std::path::Path,
    certs: &std::path::Path,
    format: SoftAttestationFormat,
) -> anyhow::Result<SoftAttestation> {
    let key_pem = std::fs::read_to_string(key)
        .with_context(|| format!("--soft-attestation-key {}", key.display()))?;
    let certs_pem = std::fs::read(certs)
        .with_context(|| format!("--soft-attestation-certs {}", certs.display()))?;
    SoftAttestation::from_pem(&key_pem, &certs_pem, format)
        .map_err(anyhow::Error::msg)
        .with_context(|| {
            format!(
                "--soft-attestation-key {} / --soft-attestation-certs {}: give a PKCS#8 PEM \
                 P-256 key and its PEM certificate chain, leaf first",
                key.display(),
                certs.display()
            )
        })
}

/// The time limits from the flags.
pub fn settings(args: &Args) -> GateSettings {
    GateSettings {
        op_timeout: Duration::from_secs(args.touch_timeout),
        device_wait: Duration::from_secs(args.device_wait),
    }
}

/// The level the flags ask for: `--gate-level`, else assertion when an enrolment file
/// is given, else presence (the prototype's check, so the runbook keeps working).
pub fn level(args: &Args) -> GateLevel {
    args.gate_level
        .unwrap_or(if args.credentials_file.is_some() {
            GateLevel::Assertion
        } else {
            GateLevel::Presence
        })
}

/// The assertion-level configuration: the enrolment file (`must_exist` for serving).
pub fn assertion_config(args: &Args, must_exist: bool) -> anyhow::Result<LevelConfig> {
    let Some(path) = &args.credentials_file else {
        bail!(
            "--gate-level assertion needs --credentials-file PATH (the enrolment file; \
             create it with `k_proxy enroll --username NAME --credentials-file PATH`)"
        );
    };
    if args.rp_id.is_empty() || args.rp_id.len() > 253 {
        bail!("--rp-id must be 1 to 253 characters");
    }
    let store = CredentialStore::new(path);
    if must_exist {
        let enrolments = store
            .load_existing()
            .with_context(|| format!("--credentials-file {}", path.display()))?;
        let users = enrolments.iter().count();
        let credentials: usize = enrolments.iter().map(|(_, c)| c.len()).sum();
        let unused_lines = enrolments.refused().len();
        tracing::info!(file = %path.display(), users, credentials, unused_lines, "enrolment file loaded (re-read at every login)");
        if unused_lines > 0 {
            tracing::warn!(file = %path.display(), unused_lines, "some enrolment lines are not used (each is logged above with its line number and why); the other lines work");
        }
        if credentials == 0 {
            tracing::warn!(file = %path.display(), "nobody is enrolled yet: every login is refused (not_enrolled) until a key is enrolled with `k_proxy enroll`");
        }
    } else {
        store
            .load()
            .with_context(|| format!("--credentials-file {}", path.display()))?;
    }
    Ok(LevelConfig::Assertion {
        rp_id: args.rp_id.clone(),
        store: Arc::new(store),
    })
}

/// The gate k_proxy serves with. Refuses configurations that could not log anyone in
/// (assertion level without an enrolment file; a software key that dies with the process).
pub fn make_gate(args: &Args) -> anyhow::Result<Gate> {
    let level = level(args);
    if args.require_attested && level != GateLevel::Assertion {
        bail!(
            "--require-attested needs the assertion level: give --credentials-file PATH (and no \
             --gate-level {level}); at {level} level no enrolled credential is used"
        );
    }
    let config = match level {
        GateLevel::Presence | GateLevel::Touch => {
            if let Some(path) = &args.credentials_file {
                tracing::warn!(file = %path.display(), %level, "--credentials-file is IGNORED at this gate level: no assertion is checked");
            }
            if level == GateLevel::Presence {
                LevelConfig::Presence
            } else {
                LevelConfig::Touch
            }
        }
        GateLevel::Assertion => {
            let config = assertion_config(args, true)?;
            if args.gate == GateKind::Soft && args.soft_key_file.is_none() {
                bail!(
                    "--gate soft at assertion level needs --soft-key-file PATH: the key that was \
                     enrolled with `k_proxy enroll --gate soft --soft-key-file PATH` (an in-memory \
                     software key holds no enrolled credential)"
                );
            }
            config
        }
    };
    if args.require_attested {
        if let LevelConfig::Assertion { store, .. } = &config {
            let records = AttestationRecords::beside(store.path());
            let attested = records.load().with_context(|| {
                format!(
                    "--require-attested: the attestation records {} (written by `k_proxy enroll \
                     --attestation-roots`) cannot be read",
                    records.path().display()
                )
            })?;
            tracing::info!(file = %records.path().display(), attested = attested.len(), "--require-attested: logins only with credentials attested at enrolment (re-read at every login)");
        }
    }
    let authenticator = make_authenticator(args)?;
    let gate = Gate::with_level(authenticator, settings(args), config)
        .require_attested(args.require_attested);
    announce(&gate, args);
    Ok(gate)
}

/// Says at start-up, loudly, what a login proves at this level.
fn announce(gate: &Gate, args: &Args) {
    let level = gate.level();
    match level {
        GateLevel::Presence => {
            tracing::warn!("GATE LEVEL: PRESENCE. A login proves only that some FIDO2 key answered authenticatorGetInfo:");
            tracing::warn!("  not that a person touched it, not which key it is, not which user. Any username passes.");
            tracing::warn!(
                "  For real logins enrol keys and start with --credentials-file (assertion level)."
            );
        }
        GateLevel::Touch => {
            tracing::warn!("GATE LEVEL: TOUCH. A login needs a touch on the key, but nothing signed proves it,");
            tracing::warn!(
                "  any key (or any USB device that claims to be one) passes, for any username."
            );
            tracing::warn!(
                "  For real logins enrol keys and start with --credentials-file (assertion level)."
            );
        }
        GateLevel::Assertion => {
            tracing::info!(rp_id = %args.rp_id, "GATE LEVEL: ASSERTION. Each login needs the user's enrolled key to sign a fresh");
            tracing::info!("  32-byte challenge after a touch; k_proxy verifies rpIdHash, UP (and UV where enrolled), the");
            tracing::info!("  ES256/EdDSA signature with the enrolled public key, and a strictly increasing signCount.");
        }
    }
    tracing::info!(gate = %gate.describe(), level = %level, "gate ready");
}
