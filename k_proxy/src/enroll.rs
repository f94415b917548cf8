//! `k_proxy enroll`: write a user's credential to the enrolment file (one touch),
//! and `k_proxy enroll list` / `k_proxy enroll remove` to manage it.
//!
//! The gate flags (`--gate`, `--soft-key-file`, `--device`, `--touch-timeout`,
//! `--credentials-file`, `--rp-id`) are the server's own and may be given before or
//! after `enroll`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use chromecard_gate::{CredentialStore, Gate, LevelConfig};

use crate::args::{Action, Args, Command, GateKind};
use crate::enroll_pin::{self, PinChoice};
use crate::gate_setup;

/// Runs a subcommand; prints results on stdout, errors on stderr.
pub fn run(args: &Args, command: Command) -> ExitCode {
    let Command::Enroll(cmd) = command;
    let result = match cmd.action {
        None => add(
            args,
            cmd.username.as_deref().unwrap_or_default(),
            cmd.require_uv,
            PinChoice::from_command(&cmd),
        ),
        Some(Action::List { username }) => list(args, username.as_deref()),
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

fn add(args: &Args, username: &str, require_uv: bool, pin: PinChoice) -> anyhow::Result<()> {
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
    let result = runtime.block_on(enroll_pin::enroll(&gate, username, require_uv, pin));
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
    Ok(())
}

fn list(args: &Args, only: Option<&str>) -> anyhow::Result<()> {
    let store = store(args)?;
    let enrolments = store.load().context("cannot read the enrolment file")?;
    let mut shown = 0;
    for (user, creds) in enrolments.iter() {
        if only.is_some_and(|u| u != user) {
            continue;
        }
        for c in creds {
            let count = store.stored_count(user, &c.id).unwrap_or(0);
            println!(
                "{user}\t{}\t{}\t{}\tsign count {count}",
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

fn remove(args: &Args, username: &str, prefix: Option<&str>) -> anyhow::Result<()> {
    let store = store(args)?;
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
    println!(
        "removed {removed} credential(s) of {username} from {}",
        store.path().display()
    );
    Ok(())
}
