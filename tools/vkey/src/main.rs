#![forbid(unsafe_code)]
//! `chromecard-vkey`: a virtual FIDO2 USB key.
//!
//! It creates a HID device through `/dev/uhid` with the FIDO report descriptor,
//! speaks CTAPHID ([`transport`]) and CTAP2 ([`ctap2`]) to whoever opens the
//! hidraw node (k_proxy through hidapi, libfido2, python-fido2), and signs with
//! the software authenticator's credentials, kept in `--key-file`. It is a test
//! instrument: its touches are simulated and its answers prove nothing about a
//! person.
//!
//! Once the device exists, the first line on stdout is its hidraw path. Every
//! CTAPHID command it receives is logged to stderr; key material never is.

mod ctap2;
mod transport;
mod uhid;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chromecard_ctaphid::{cmd, fragment};
use chromecard_gate::{SoftAuthenticator, SoftBehavior};
use clap::Parser;

use crate::ctap2::{Key, KeyConfig, Touch};
use crate::transport::{Action, Job, Transport, TransportMode};

/// A virtual FIDO2 USB key on /dev/uhid (tests only: its touches are simulated).
#[derive(Debug, Parser)]
#[command(name = "chromecard-vkey", version)]
struct Args {
    /// The key material (the software authenticator's key file, created 0600 if
    /// missing). Without it the key is random and lives as long as the process.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,

    /// The simulated person touches the key this many milliseconds after the key
    /// starts waiting for a touch.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    touch_after_ms: u64,

    /// Nobody ever touches the key: requests end on CTAPHID_CANCEL or at --touch-limit-ms.
    #[arg(long, conflicts_with = "touch_after_ms")]
    no_touch: bool,

    /// Touch waits (counted from 1, comma-separated) that nobody touches, e.g. `3` for a
    /// key that is touched for the first two requests and not the third.
    #[arg(long, value_name = "N,...", value_delimiter = ',')]
    untouched: Vec<u32>,

    /// How long the key itself waits for a touch before CTAP2_ERR_USER_ACTION_TIMEOUT.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    touch_limit_ms: u64,

    /// What the signing does: present (an honest key), refuse (CTAP2_ERR_OPERATION_DENIED),
    /// cloned-counter (signs without advancing its counter), foreign-key (signs with a key
    /// other than the credential's), up-clear (signs with the user-present flag clear),
    /// wrong-rp (signs for another relying party), replay (repeats its first assertion).
    #[arg(long, value_name = "BEHAVIOUR", default_value = "present")]
    behavior: SoftBehavior,

    /// A CTAP 2.0 key: getInfo lists FIDO_2_0 only and authenticatorSelection is refused.
    #[arg(long)]
    ctap20: bool,

    /// Set the key's PIN to this (kept, hashed, in --key-file, with its retries, as a
    /// person would set it with a FIDO2 tool). Tests only: this PIN is on the command
    /// line. A CTAP 2.0 key with a PIN then makes no credential without it.
    #[arg(long, value_name = "PIN")]
    pin: Option<String>,

    /// alwaysUv (CTAP 2.1): every makeCredential and getAssertion needs a pinUvAuthParam
    /// (CTAP2_ERR_PUAT_REQUIRED without one).
    #[arg(long, conflicts_with = "ctap20")]
    always_uv: bool,

    /// Built-in user verification, as a fingerprint key has: getInfo `uv: true`,
    /// getPinUvAuthTokenUsingUvWithPermissions (CTAP 2.1) and the `uv` option (CTAP 2.0)
    /// verify the user after a (simulated) touch.
    #[arg(long)]
    builtin_uv: bool,

    /// Pull the key out: destroy the device this many milliseconds after it starts
    /// waiting for a touch, then exit.
    #[arg(long, value_name = "MS")]
    vanish_after_ms: Option<u64>,

    /// Behave as Qubes' CTAP proxy 2.0.7 ("qctap-proxy"): CTAP2 commands 0x07-0x0D refused
    /// with CTAP1_ERR_INVALID_COMMAND, CTAPHID_CANCEL ignored, no CTAPHID_KEEPALIVE, and
    /// answers to CTAPHID_CBOR requests framed as CTAPHID_MSG.
    #[arg(long)]
    qubes_ctap_proxy: bool,

    /// getInfo's maxCredentialCountInList: allow and exclude lists longer than N are
    /// refused with CTAP2_ERR_LIMIT_EXCEEDED, as a real key with that limit refuses them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    max_creds_in_list: Option<u16>,

    /// The product name the device reports.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// The uhid control device.
    #[arg(long, value_name = "PATH", default_value = "/dev/uhid")]
    uhid: PathBuf,
}

/// How often keep-alives go out while a request runs (CTAP 2.1 section 11.2.9.2.1).
const KEEPALIVE_PERIOD: Duration = Duration::from_millis(100);

type SharedWriter = Arc<Mutex<uhid::Writer>>;

fn send_reports(writer: &SharedWriter, reports: &[[u8; 64]]) {
    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
    for r in reports {
        if let Err(e) = w.input(r) {
            tracing::warn!(error = %e, "cannot send a report to the host");
            return;
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if matches!(
        args.behavior,
        SoftBehavior::NoKey | SoftBehavior::NoTouch | SoftBehavior::Slow
    ) {
        bail!(
            "--behavior {} is a software-gate switch; for the virtual key use --no-touch, \
             --touch-after-ms MS, or do not start it",
            args.behavior
        );
    }
    let soft = match &args.key_file {
        Some(path) => SoftAuthenticator::with_key_file(args.behavior, path)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--key-file {}", path.display()))?,
        None => SoftAuthenticator::try_new(args.behavior).map_err(anyhow::Error::msg)?,
    };
    if let Some(pin) = &args.pin {
        let pin = chromecard_gate::Pin::new(pin.clone()).context("--pin")?;
        soft.set_pin(&pin).context("setting the key's PIN")?;
    }

    let mut tag = [0u8; 8];
    getrandom::getrandom(&mut tag).context("reading the OS random number generator")?;
    let uniq = format!(
        "chromecard-vkey-{}-{}",
        std::process::id(),
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let name = args.name.clone().unwrap_or_else(|| {
        if args.qubes_ctap_proxy {
            "Qubes OS CTAP proxy to sys-usb".to_string()
        } else {
            "chromecard virtual FIDO2 key".to_string()
        }
    });
    let identity = uhid::Identity {
        name,
        uniq: uniq.clone(),
        vendor: 0x1209,
        product: 0xcc01,
    };
    let (mut reader, writer) = uhid::create(&args.uhid, &identity, &uhid::FIDO_REPORT_DESCRIPTOR)
        .with_context(|| {
        format!(
            "creating a HID device through {} (needs the uhid module and write access; \
                 on a machine without it run the tests through scripts/vm-run.sh)",
            args.uhid.display()
        )
    })?;
    let writer: SharedWriter = Arc::new(Mutex::new(writer));

    let vanish = args.vanish_after_ms.map(Duration::from_millis);
    let on_touch_wait: Box<dyn Fn() + Send + Sync> = match vanish {
        None => Box::new(|| {}),
        Some(after) => {
            let writer = Arc::clone(&writer);
            Box::new(move || {
                let writer = Arc::clone(&writer);
                std::thread::spawn(move || {
                    std::thread::sleep(after);
                    tracing::info!("pulling the key out: destroying the device");
                    let _ = writer.lock().unwrap_or_else(|p| p.into_inner()).destroy();
                    std::process::exit(0);
                });
            })
        }
    };
    let key = Arc::new(Key::new(
        soft,
        KeyConfig {
            touch: if args.no_touch {
                Touch::Never
            } else {
                Touch::After(Duration::from_millis(args.touch_after_ms))
            },
            touch_limit: Duration::from_millis(args.touch_limit_ms),
            refuse: args.behavior == SoftBehavior::Refuse,
            ctap20: args.ctap20,
            always_uv: args.always_uv,
            builtin_uv: args.builtin_uv,
            qubes_ctap_proxy: args.qubes_ctap_proxy,
            untouched: args.untouched.clone(),
            max_creds_in_list: args.max_creds_in_list.map(usize::from),
        },
        on_touch_wait,
    ));
    let mode = if args.qubes_ctap_proxy {
        TransportMode {
            honour_cancel: false,
            cbor_answer_cmd: cmd::MSG,
            ..TransportMode::default()
        }
    } else {
        TransportMode::default()
    };
    let keepalives = !args.qubes_ctap_proxy;
    let transport = Arc::new(Mutex::new(Transport::new(mode)));
    let (jobs, job_rx) = mpsc::channel::<Job>();

    // The worker: one request at a time, as a key has one secure element.
    {
        let (key, transport, writer) = (
            Arc::clone(&key),
            Arc::clone(&transport),
            Arc::clone(&writer),
        );
        std::thread::Builder::new()
            .name("ctap2".into())
            .spawn(move || {
                for job in job_rx {
                    let answer = match job.message.cmd {
                        cmd::CBOR => key.handle_cbor(&job.message.payload, &job.cancel),
                        _ => key.handle_msg(&job.message.payload),
                    };
                    let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
                    let Some((cid, cbor_cmd)) = t.complete(job.id) else {
                        tracing::info!("answer dropped: the channel was resynchronised");
                        continue;
                    };
                    let answer_cmd = if job.message.cmd == cmd::CBOR {
                        cbor_cmd
                    } else {
                        cmd::MSG
                    };
                    match fragment(cid, answer_cmd, &answer) {
                        Ok(reports) => send_reports(&writer, &reports),
                        Err(e) => tracing::error!(error = %e, "answer too long"),
                    }
                }
            })
            .context("starting the CTAP2 worker")?;
    }

    // The ticker: keep-alives while a request runs, and the message timeout.
    {
        let (key, transport, writer) = (
            Arc::clone(&key),
            Arc::clone(&transport),
            Arc::clone(&writer),
        );
        std::thread::Builder::new()
            .name("ticker".into())
            .spawn(move || loop {
                std::thread::sleep(KEEPALIVE_PERIOD);
                let mut t = transport.lock().unwrap_or_else(|p| p.into_inner());
                for action in t.on_tick(Instant::now()) {
                    if let Action::Send(r) = action {
                        send_reports(&writer, &r);
                    }
                }
                if let (true, Some(cid)) = (keepalives, t.busy_channel()) {
                    let status = key.status.load(std::sync::atomic::Ordering::SeqCst);
                    if let Ok(r) = fragment(cid, cmd::KEEPALIVE, &[status]) {
                        send_reports(&writer, &r);
                    }
                }
            })
            .context("starting the keep-alive ticker")?;
    }

    // The reader: every event from the kernel, in order.
    let reader_thread = {
        let (transport, writer) = (Arc::clone(&transport), Arc::clone(&writer));
        std::thread::Builder::new()
            .name("uhid".into())
            .spawn(move || -> anyhow::Result<()> {
                loop {
                    let event = reader.next_event().context("reading /dev/uhid")?;
                    let report = match event {
                        Some(uhid::Event::Output(data)) => data,
                        Some(uhid::Event::SetReport { id, data }) => {
                            let _ = writer
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .ack_set_report(id);
                            data
                        }
                        Some(uhid::Event::GetReport { id }) => {
                            let _ = writer
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .refuse_get_report(id);
                            continue;
                        }
                        Some(uhid::Event::Lifecycle(what)) => {
                            tracing::debug!(what, "uhid");
                            continue;
                        }
                        Some(uhid::Event::Unknown(kind)) => {
                            tracing::debug!(kind, "unknown uhid event");
                            continue;
                        }
                        None => continue,
                    };
                    // hidraw passes the report number first (0: this descriptor has none).
                    let report = match report.len() {
                        65 if report[0] == 0 => &report[1..],
                        _ => &report[..],
                    };
                    let actions = transport
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .on_report(report, Instant::now());
                    for action in actions {
                        match action {
                            Action::Send(r) => send_reports(&writer, &r),
                            Action::Dispatch(job) => {
                                if jobs.send(job).is_err() {
                                    bail!("the CTAP2 worker stopped");
                                }
                            }
                        }
                    }
                }
            })
            .context("starting the uhid reader")?
    };

    let node = uhid::find_hidraw(&uniq, Duration::from_secs(10))?;
    println!("{}", node.display());
    tracing::info!(
        device = %node.display(),
        behaviour = %args.behavior,
        ctap20 = args.ctap20,
        pin_set = key.pin_is_set(),
        always_uv = args.always_uv,
        builtin_uv = args.builtin_uv,
        qubes_ctap_proxy = args.qubes_ctap_proxy,
        max_creds_in_list = ?args.max_creds_in_list,
        "virtual FIDO2 key ready (SIMULATED touches: tests only)"
    );
    match reader_thread.join() {
        Ok(result) => result,
        Err(_) => bail!("the uhid reader panicked"),
    }
}
