//! `k_proxy enroll`: write a user's credential to the enrolment file (one touch),
//! `k_proxy enroll list` / `k_proxy enroll remove` to manage it, and `k_proxy enroll
//! qubes-policy` for the dom0 lines that let a key in sys-usb sign with those credentials.
//!
//! The gate flags (`--gate`, `--soft-key-file`, `--device`, `--touch-timeout`,
//! `--credentials-file`, `--rp-id`) are the server's own and may be given before or
//! after `enroll`.

use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{bail, Context};
use chromecard_gate::attestation::{AttestationRecords, Metadata, Policy};
use chromecard_gate::{CredentialStore, Gate, LevelConfig};

use crate::args::{Action, Args, Command, EnrollCommand, GateKind};
use crate::enroll_pin::{self, PinChoice};
use crate::gate_setup;

/// Runs a subcommand; prints results on stdout, errors on stderr.
pub fn run(args: &Args, command: Command) -> ExitCode {
    let Command::Enroll(cmd) = command;
    let result = match cmd.action {
        None => attestation_policy(&cmd).and_then(|policy| {
            add(
                args,
                cmd.username.as_deref().unwrap_or_default(),
                cmd.require_uv,
                PinChoice::from_command(&cmd),
                policy,
            )
        }),
        Some(Action::List { username }) => list(args, username.as_deref()),
        Some(Action::QubesPolicy { source, target }) => qubes_policy(args, &source, &target),
        Some(Action::Remove {
            username,
            credential,
        }) => remove(args, &username, credential.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("k_proxy enroll: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn store(args: &Args) -> anyhow::Result<CredentialStore> {
    let Some(path) = &args.credentials_file else {
        bail!("--credentials-file PATH is required: the enrolment file to write (k_proxy serves with the same flag)");
    };
    Ok(CredentialStore::new(path))
}

/// The attestation policy `--attestation-roots` and `--mds-blob`/`--mds-root` ask for;
/// `None` when neither is given (the key's attestation is then not checked).
fn attestation_policy(cmd: &EnrollCommand) -> anyhow::Result<Option<Arc<Policy>>> {
    if cmd.attestation_roots.is_empty() && cmd.mds_blob.is_none() {
        return Ok(None);
    }
    let mut roots = Vec::new();
    for path in &cmd.attestation_roots {
        roots.extend(Policy::roots_from_path(path).with_context(|| {
            format!(
                "--attestation-roots {}: give a PEM file of root certificates, or a directory of \
                 *.pem/*.crt/*.cer files",
                path.display()
            )
        })?);
    }
    let mut policy = Policy::new(roots);
    if let (Some(blob), Some(root)) = (&cmd.mds_blob, &cmd.mds_root) {
        let md = Metadata::load(blob, root, std::time::SystemTime::now()).with_context(|| {
            format!(
                "--mds-blob {} (verified against --mds-root {})",
                blob.display(),
                root.display()
            )
        })?;
        eprintln!(
            "metadata blob no. {} ({} models, next update {}) verified",
            md.no,
            md.len(),
            md.next_update
        );
        policy = policy.with_metadata(md);
    }
    Ok(Some(Arc::new(policy)))
}

fn add(
    args: &Args,
    username: &str,
    require_uv: bool,
    pin: PinChoice,
    policy: Option<Arc<Policy>>,
) -> anyhow::Result<()> {
    chromecard_hop::validate_username(username)
        .map_err(|e| anyhow::anyhow!("--username {username:?}: {e}"))?;
    if args.gate == GateKind::Soft && args.soft_key_file.is_none() {
        bail!(
            "--gate soft needs --soft-key-file PATH to enrol: an in-memory software key \
             would be gone when this command ends"
        );
    }
    let config = gate_setup::assertion_config(args, false)?;
    let LevelConfig::Assertion { store, .. } = &config else {
        unreachable!("assertion_config returns the assertion level");
    };
    let path = store.path().to_path_buf();
    let authenticator = gate_setup::make_authenticator(args)?;
    let gate = Gate::with_level(authenticator, gate_setup::settings(args), config);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    eprintln!(
        "Enrolling a key for {username:?} (relying party {:?}): touch the key when it blinks (within {} s)...",
        args.rp_id, args.touch_timeout
    );
    let require_pin = pin.require_pin;
    let result = runtime.block_on(enroll_pin::enroll(&gate, username, require_uv, pin, policy));
    // A key operation stuck in a blocking read must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let enrolled = result?;
    println!(
        "enrolled {username}: credential {}... ({}, {}), key {} (AAGUID {}), in {}",
        enrolled.credential,
        enrolled.kind,
        enroll_pin::options_label(require_uv, require_pin),
        enrolled.device,
        enrolled.aaguid,
        path.display()
    );
    if let Some(a) = &enrolled.attested {
        println!(
            "attested: {} statement chains to {:?}; recorded in {}",
            a.fmt,
            a.root_subject,
            AttestationRecords::beside(&path).path().display()
        );
    }
    Ok(())
}

fn list(args: &Args, only: Option<&str>) -> anyhow::Result<()> {
    let store = store(args)?;
    let enrolments = store.load().context("cannot read the enrolment file")?;
    let attested = AttestationRecords::beside(store.path())
        .load()
        .context("cannot read the attestation records")?;
    let mut shown = 0;
    for (user, creds) in enrolments.iter() {
        if only.is_some_and(|u| u != user) {
            continue;
        }
        for c in creds {
            let count = store.stored_count(user, &c.id).unwrap_or(0);
            let attestation = match attested.get(&(user.to_string(), c.id.clone())) {
                Some(r) if r.covers(&c.public_key) => {
                    format!("attested {} ({})", r.fmt, r.root_subject)
                }
                Some(_) => {
                    "not attested (its record names another key, or none: enrol again)".to_string()
                }
                None => "not attested".to_string(),
            };
            println!(
                "{user}\t{}\t{}\t{}\tsign count {count}\t{attestation}",
                c.label(),
                c.public_key.kind().as_str(),
                enroll_pin::options_label(c.require_uv, c.require_pin),
            );
            shown += 1;
        }
    }
    if shown == 0 {
        eprintln!(
            "no enrolled credentials{} in {}",
            only.map(|u| format!(" for {u:?}")).unwrap_or_default(),
            store.path().display()
        );
    }
    Ok(())
}

/// The argument Qubes' CTAP proxy gives `u2f.Authenticate` for a credential: the first
/// 128 bits of SHA-256 over its id, in hex (QubesOS/qubes-app-u2f's qrexec transport).
fn qrexec_key_id(credential_id: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(credential_id)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn qubes_policy(args: &Args, source: &str, target: &str) -> anyhow::Result<()> {
    let store = store(args)?;
    let enrolments = store.load().context("cannot read the enrolment file")?;
    let mut lines = 0;
    for (user, creds) in enrolments.iter() {
        for c in creds {
            // A policy line takes no comment after it: the credential goes above.
            println!("# {user}, credential {}", c.label());
            println!(
                "u2f.Authenticate  +{}  {source}  {target}  allow",
                qrexec_key_id(&c.id)
            );
            lines += 1;
        }
    }
    if lines == 0 {
        bail!(
            "no enrolled credentials in {}: enrol first",
            store.path().display()
        );
    }
    Ok(())
}

fn remove(args: &Args, username: &str, prefix: Option<&str>) -> anyhow::Result<()> {
    let store = store(args)?;
    // Held to the end: an enrolment finishing meanwhile must not put the credential back.
    let _changing = store
        .lock_for_change()
        .context("cannot lock the enrolment file")?;
    let mut enrolments = store.load().context("cannot read the enrolment file")?;
    let removed = enrolments.remove(username, prefix);
    if removed == 0 {
        bail!(
            "no credential of {username:?}{} in {}",
            prefix
                .map(|p| format!(" starting with {p:?}"))
                .unwrap_or_default(),
            store.path().display()
        );
    }
    store
        .save(&enrolments)
        .context("cannot write the enrolment file")?;
    // The removed credentials' attestation records go too (a stale one vouches only for
    // the key it names, but the file should say what is enrolled).
    let records = AttestationRecords::beside(store.path());
    records
        .retain(|user, id| enrolments.credentials_of(user).iter().any(|c| c.id == id))
        .with_context(|| format!("cannot update {}", records.path().display()))?;
    println!(
        "removed {removed} credential(s) of {username} from {}",
        store.path().display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qrexec_key_id_is_qubes_first_128_bits_of_sha256_in_hex() {
        // hashlib.sha256(bytes([1, 2, 3])).hexdigest()[:32], as qubes-app-u2f computes it.
        assert_eq!(
            qrexec_key_id(&[1, 2, 3]),
            "039058c6f2c0cb492c533b0a4d14ef77"
        );
    }
}
