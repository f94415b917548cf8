//! The real USB FIDO2 key, through ctap-hid-fido2 (hidapi, hidraw on Linux).
//!
//! This file only talks to the device and hands back raw bytes; it verifies
//! nothing (see [`crate::verify`] and [`crate::ceremony`]).
//!
//! **Blocking and cancellation.** ctap-hid-fido2 blocks in hidapi reads with no
//! timeout. [`crate::Gate`] runs every call on a blocking thread with a deadline.
//! While a call that waits for a touch runs (authenticatorSelection,
//! makeCredential, getAssertion), a watcher thread waits on the gate's
//! [`CancelSignal`]; when it fires (deadline, client disconnect, shutdown) the
//! watcher sends CTAPHID_CANCEL on the same channel through the library's public
//! `cancel_selection()` (which is a plain CTAPHID_CANCEL on the open handle's
//! CID, valid for any pending command). The key then answers the pending request
//! with CTAP2_ERR_KEEPALIVE_CANCEL and the blocked call returns.
//!
//! Why this is safe through hidapi: the library keeps the hidapi handle in a
//! `Mutex` and holds it only for one `read()` or `write()`. While a key waits for
//! a touch it sends CTAPHID_KEEPALIVE every ~100 ms (CTAP 2.1 §11.2.9.2.1); after
//! each one the library releases the lock and sleeps 100 ms, so the watcher's
//! write gets in between. A key that sends no keepalives keeps the lock inside
//! a blocking read: the watcher's write then waits until the key answers (it
//! cannot be interrupted without closing the file descriptor, which hidapi does
//! not let another thread do safely), the device stays locked by the gate until
//! the call really returns, and the watcher thread ends with it.
//!
//! **Output.** Keep-alive messages and debug logs are switched off in the
//! library's configuration. A few unconditional `println!`s remain in its response
//! parsers (an unknown response key or extension); k_proxy writes nothing else to
//! stdout, logs to stderr, and `qubes/` units may send stdout to the journal.
//!
//! **Hostile devices.** Library and hidapi panics (they index into device data) are
//! caught and become [`GateError::Device`].

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use ctap_hid_fido2::fidokey::{
    CredentialSupportedKeyType, GetAssertionArgsBuilder, MakeCredentialArgsBuilder,
};
use ctap_hid_fido2::public_key_credential_user_entity::PublicKeyCredentialUserEntity;
use ctap_hid_fido2::{Cfg, FidoKeyHid, FidoKeyHidFactory, HidInfo, HidParam};

use crate::verify::{parse_auth_data, FLAG_UP};
use crate::{
    AssertionResponse, Authenticator, CancelSignal, GateError, GetAssertionRequest, MadeCredential,
    MakeCredentialRequest, Presence,
};

/// How often the cancel watcher looks whether the operation has finished on its own.
const WATCH_PERIOD: Duration = Duration::from_millis(100);
/// The throw-away relying party of the touch check on keys without authenticatorSelection.
const TOUCH_RP: &str = "chromecard-touch.invalid";

/// A USB FIDO2 key.
pub struct Fido2Key {
    device_path: Option<String>,
}

impl Fido2Key {
    /// `device_path`: the hidraw path to use (k_proxy's `--device`); `None` means
    /// "the only FIDO2 device attached" (or, for getAssertion, the one that holds the
    /// user's credential) and refuses when that is ambiguous.
    pub fn new(device_path: Option<String>) -> Self {
        Self { device_path }
    }
}

/// One attached FIDO2 HID interface, reduced to what we use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    /// hidapi path (`/dev/hidrawN` on Linux); `None` if hidapi's path was not UTF-8.
    path: Option<String>,
    product: String,
}

impl Candidate {
    fn from_hid(info: HidInfo) -> Self {
        let path = match info.param {
            HidParam::Path(p) => Some(p),
            // ctap-hid-fido2 falls back to VID/PID when the path is not UTF-8.
            // Opening by VID/PID may pick another interface of the same device,
            // so such a candidate is refused when opened.
            HidParam::VidPid { .. } => None,
        };
        Self {
            path,
            product: info.product_string,
        }
    }

    fn label(&self) -> String {
        let product = if self.product.trim().is_empty() {
            "unnamed FIDO2 device"
        } else {
            self.product.trim()
        };
        format!("{product} ({})", self.path.as_deref().unwrap_or("no path"))
    }
}

/// Every attached FIDO2 device, one entry per path.
fn candidates(cancel: &CancelSignal) -> Result<Vec<Candidate>, GateError> {
    if cancel.is_cancelled() {
        return Err(GateError::Cancelled);
    }
    // Enumerate afresh every time: keys come and go (qvm-usb attach/detach).
    let found = guarded(
        "FIDO2 device enumeration",
        ctap_hid_fido2::get_fidokey_devices,
    )?;
    let mut found: Vec<Candidate> = found.into_iter().map(Candidate::from_hid).collect();
    // hidapi may list one interface more than once (one entry per usage); one path is one device.
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path.is_some() && a.path == b.path);
    Ok(found)
}

/// Pick the device to talk to: fails closed on none, on ambiguity, and on a
/// configured path that is not among the FIDO2 devices (so `--device` can
/// never point us at a non-FIDO hidraw node).
fn select(mut found: Vec<Candidate>, wanted: Option<&str>) -> Result<Candidate, GateError> {
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found.dedup_by(|a, b| a.path.is_some() && a.path == b.path);
    if found.is_empty() {
        return Err(GateError::NoKey);
    }
    match wanted {
        Some(path) => found
            .into_iter()
            .find(|c| c.path.as_deref() == Some(path))
            .ok_or_else(|| GateError::DeviceNotFound {
                path: path.to_string(),
            }),
        None if found.len() > 1 => Err(GateError::MultipleKeys { count: found.len() }),
        None => Ok(found.remove(0)),
    }
}

/// ctap-hid-fido2 settings with everything that prints turned off: by default
/// the library writes a "touch the sensor" line (and with logging, hex dumps)
/// to stdout, which is k_proxy's log.
fn quiet_cfg() -> Cfg {
    let mut cfg = Cfg::init();
    cfg.enable_log = false;
    cfg.enable_keep_alive_msg = false;
    cfg.keep_alive_msg = String::new();
    cfg.keep_alive_msg_to_stderr = true;
    cfg
}

/// Run a library call, turning a panic into a device error. ctap-hid-fido2 and
/// hidapi `expect()`/index on data from the device and the OS; a hostile or
/// broken device must not take k_proxy down. (Needs `panic = "unwind"`, the default.)
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, GateError> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        GateError::Device {
            detail: format!("{what} panicked: {msg}"),
        }
    })
}

/// Maps a library error (its text carries the CTAP status name) to a gate error.
fn ctap_error(label: &str, what: &str, e: &dyn std::fmt::Display) -> GateError {
    let text = format!("{e:#}");
    let has = |names: &[&str]| names.iter().any(|n| text.contains(n));
    let detail = format!("{label}: {what}: {text}");
    if has(&["CTAP2_ERR_KEEPALIVE_CANCEL"]) {
        GateError::Cancelled
    } else if has(&["CTAP2_ERR_NO_CREDENTIALS", "CTAP2_ERR_INVALID_CREDENTIAL"]) {
        GateError::NoCredential
    } else if has(&["CTAP2_ERR_CREDENTIAL_EXCLUDED"]) {
        GateError::AlreadyEnrolled
    } else if has(&[
        "CTAP2_ERR_OPERATION_DENIED",
        "CTAP2_ERR_USER_ACTION_TIMEOUT",
        "CTAP2_ERR_ACTION_TIMEOUT",
    ]) {
        GateError::Refused { detail }
    } else if has(&[
        "CTAP2_ERR_PIN_",
        "CTAP2_ERR_UV_",
        "CTAP2_ERR_UNSUPPORTED_OPTION",
        "CTAP2_ERR_INVALID_OPTION",
        "CTAP2_ERR_UNSUPPORTED_ALGORITHM",
        "CTAP1_ERR_INVALID_COMMAND",
    ]) {
        GateError::Unsupported { detail }
    } else {
        GateError::Device { detail }
    }
}

/// An open key and its label.
struct Opened {
    key: Arc<FidoKeyHid>,
    label: String,
}

fn open(chosen: Candidate, cancel: &CancelSignal) -> Result<Opened, GateError> {
    let label = chosen.label();
    let Some(path) = chosen.path else {
        return Err(GateError::Device {
            detail: format!("{label}: hidapi path is not UTF-8; cannot open it by path"),
        });
    };
    if cancel.is_cancelled() {
        return Err(GateError::Cancelled);
    }
    let cfg = quiet_cfg();
    let key = guarded("opening the FIDO2 device", || {
        FidoKeyHidFactory::create_by_params(&[HidParam::Path(path)], &cfg)
    })?
    .map_err(|e| GateError::Device {
        detail: format!("{label}: {e:#}"),
    })?;
    Ok(Opened {
        key: Arc::new(key),
        label,
    })
}

/// Runs `f` on `key`; meanwhile a watcher thread sends CTAPHID_CANCEL if `cancel`
/// fires before `f` returns (see the module documentation).
///
/// A key ignores a CTAPHID_CANCEL that arrives before the request it should cancel, so
/// the watcher repeats it every [`WATCH_PERIOD`] until `f` returns; and `f` is not
/// started at all when `cancel` has already fired (a deadline or a disconnect during
/// `open` or GetInfo), or the key would wait for a touch with nobody left to stop it.
fn with_cancel<T>(
    opened: &Opened,
    cancel: &CancelSignal,
    f: impl FnOnce(&FidoKeyHid) -> T,
) -> Result<T, GateError> {
    let done = CancelSignal::new();
    let watcher = {
        let key = Arc::clone(&opened.key);
        let label = opened.label.clone();
        let (cancel, done) = (cancel.clone(), done.clone());
        std::thread::Builder::new()
            .name("ctaphid-cancel".to_string())
            .spawn(move || {
                loop {
                    if done.is_cancelled() {
                        return;
                    }
                    if cancel.wait_timeout(WATCH_PERIOD) {
                        break;
                    }
                }
                let mut sent = 0u32;
                while !done.is_cancelled() {
                    let outcome = guarded("CTAPHID_CANCEL", || key.cancel_selection());
                    sent += 1;
                    match outcome {
                        Ok(Ok(())) if sent == 1 => {
                            tracing::info!(device = %label, "sent CTAPHID_CANCEL to the key")
                        }
                        Ok(Ok(())) => tracing::debug!(device = %label, sent, "repeated CTAPHID_CANCEL"),
                        Ok(Err(e)) => tracing::warn!(device = %label, error = %format!("{e:#}"), "CTAPHID_CANCEL failed"),
                        Err(e) => tracing::warn!(device = %label, error = %e, "CTAPHID_CANCEL failed"),
                    }
                    done.wait_timeout(WATCH_PERIOD);
                }
            })
    };
    if let Err(e) = watcher {
        tracing::warn!(error = %e, "cannot start the CTAPHID_CANCEL watcher: a cancelled key operation ends only when the key answers");
    }
    // Tell the watcher the call is over on every way out, a panic included.
    struct Done(CancelSignal);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.cancel();
        }
    }
    let _done = Done(done);
    if cancel.is_cancelled() {
        return Err(GateError::Cancelled);
    }
    Ok(f(&opened.key))
}

fn get_info_versions(opened: &Opened) -> Result<Vec<String>, GateError> {
    let info = guarded("authenticatorGetInfo", || opened.key.get_info())?
        .map_err(|e| ctap_error(&opened.label, "authenticatorGetInfo", &e))?;
    // versions is mandatory in a GetInfo answer; an empty list is not a FIDO2 key talking.
    if info.versions.is_empty() {
        return Err(GateError::Device {
            detail: format!(
                "{}: authenticatorGetInfo answer lists no versions",
                opened.label
            ),
        });
    }
    Ok(info.versions)
}

fn random32() -> Result<[u8; 32], GateError> {
    let mut c = [0u8; 32];
    getrandom::getrandom(&mut c).map_err(|e| GateError::Device {
        detail: format!("no randomness: {e}"),
    })?;
    Ok(c)
}

impl Fido2Key {
    /// The single device (or the `--device` one).
    fn single(&self, cancel: &CancelSignal) -> Result<Opened, GateError> {
        let chosen = select(candidates(cancel)?, self.device_path.as_deref())?;
        open(chosen, cancel)
    }

    /// The device for a getAssertion: the `--device` one, the only one, or the one
    /// that holds one of `allow` (asked without a touch, `up: false`).
    fn holding(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<Opened, GateError> {
        let found = candidates(cancel)?;
        if self.device_path.is_some() || found.len() <= 1 {
            return open(select(found, self.device_path.as_deref())?, cancel);
        }
        let count = found.len();
        for cand in found {
            let label = cand.label();
            let opened = match open(cand, cancel) {
                Ok(o) => o,
                Err(GateError::Cancelled) => return Err(GateError::Cancelled),
                Err(e) => {
                    tracing::info!(device = %label, error = %e, "skipping a FIDO2 device");
                    continue;
                }
            };
            let challenge = random32()?;
            let mut builder = GetAssertionArgsBuilder::new(&request.rp_id, &challenge)
                .without_pin_and_uv()
                .without_up();
            for id in &request.allow {
                builder = builder.add_credential_id(id);
            }
            let args = builder.build();
            let probe = guarded("getAssertion probe", || {
                opened.key.get_assertion_with_args(&args)
            })?;
            match probe {
                Ok(_) => {
                    tracing::info!(device = %opened.label, "this key holds the user's credential");
                    return Ok(opened);
                }
                Err(e) => {
                    tracing::info!(device = %opened.label, error = %format!("{e:#}"), "this key does not hold the user's credential")
                }
            }
        }
        tracing::warn!(
            count,
            "none of the attached FIDO2 keys holds the user's credential"
        );
        Err(GateError::NoCredential)
    }
}

impl Authenticator for Fido2Key {
    fn describe(&self) -> String {
        match &self.device_path {
            Some(p) => format!("USB FIDO2 key (ctap-hid-fido2), device {p}"),
            None => "USB FIDO2 key (ctap-hid-fido2), any single device".to_string(),
        }
    }

    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        let opened = self.single(cancel)?;
        let versions = get_info_versions(&opened)?;
        Ok(Presence {
            device: format!("{}, {}", opened.label, versions.join("/")),
        })
    }

    /// CTAP 2.1 keys: authenticatorSelection, which returns nothing signed. CTAP 2.0
    /// keys (no selection command): a makeCredential for a throw-away relying party
    /// whose UP flag is read but whose attestation is not verified. Either way the
    /// answer is the key's word, not a signature from an enrolled credential.
    fn wait_for_touch(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        let opened = self.single(cancel)?;
        let versions = get_info_versions(&opened)?;
        let has_selection = versions
            .iter()
            .any(|v| v == "FIDO_2_1" || v == "FIDO_2_1_PRE");
        if has_selection {
            guarded("authenticatorSelection", || {
                with_cancel(&opened, cancel, |k| k.selection())
            })??
            .map_err(|e| ctap_error(&opened.label, "authenticatorSelection", &e))?;
            return Ok(Presence {
                device: format!(
                    "{} (touched: authenticatorSelection, nothing signed)",
                    opened.label
                ),
            });
        }
        let challenge = random32()?;
        let args = MakeCredentialArgsBuilder::new(TOUCH_RP, &challenge)
            .without_pin_and_uv()
            .build();
        let att = guarded("makeCredential (touch check)", || {
            with_cancel(&opened, cancel, |k| k.make_credential_with_args(&args))
        })??
        .map_err(|e| ctap_error(&opened.label, "makeCredential (touch check)", &e))?;
        let parsed = parse_auth_data(&att.auth_data).map_err(|r| GateError::Device {
            detail: format!("{}: touch check: {r}", opened.label),
        })?;
        if parsed.flags & FLAG_UP == 0 {
            return Err(GateError::Rejected(crate::Rejection::UserNotPresent));
        }
        Ok(Presence {
            device: format!(
                "{} (touched: UP flag of an unverified makeCredential)",
                opened.label
            ),
        })
    }

    fn make_credential(
        &self,
        request: &MakeCredentialRequest,
        cancel: &CancelSignal,
    ) -> Result<MadeCredential, GateError> {
        let opened = self.single(cancel)?;
        let user = PublicKeyCredentialUserEntity::new(
            Some(&request.user_id),
            Some(&request.user_name),
            Some(&request.user_name),
        );
        let mut builder = MakeCredentialArgsBuilder::new(&request.rp_id, &request.challenge)
            .without_pin_and_uv()
            .key_type(CredentialSupportedKeyType::Ecdsa256)
            .key_type(CredentialSupportedKeyType::Ed25519)
            .user_entity(&user);
        for id in &request.exclude {
            builder = builder.exclude_authenticator(id);
        }
        let mut args = builder.build();
        if request.require_uv {
            args.uv = Some(true);
        }
        let att = guarded("authenticatorMakeCredential", || {
            with_cancel(&opened, cancel, |k| k.make_credential_with_args(&args))
        })??
        .map_err(|e| ctap_error(&opened.label, "authenticatorMakeCredential", &e))?;
        Ok(MadeCredential {
            auth_data: att.auth_data,
            device: opened.label,
        })
    }

    fn get_assertion(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<AssertionResponse, GateError> {
        let opened = self.holding(request, cancel)?;
        let mut builder =
            GetAssertionArgsBuilder::new(&request.rp_id, &request.challenge).without_pin_and_uv();
        for id in &request.allow {
            builder = builder.add_credential_id(id);
        }
        let mut args = builder.build();
        if request.require_uv {
            args.uv = Some(true);
        }
        let mut answers = guarded("authenticatorGetAssertion", || {
            with_cancel(&opened, cancel, |k| k.get_assertion_with_args(&args))
        })??
        .map_err(|e| ctap_error(&opened.label, "authenticatorGetAssertion", &e))?;
        if answers.is_empty() {
            return Err(GateError::Device {
                detail: format!("{}: getAssertion returned no assertion", opened.label),
            });
        }
        let first = answers.swap_remove(0);
        Ok(AssertionResponse {
            credential_id: (!first.credential_id.is_empty()).then_some(first.credential_id),
            auth_data: first.auth_data,
            signature: first.signature,
            device: opened.label,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(path: &str, product: &str) -> Candidate {
        Candidate {
            path: Some(path.to_string()),
            product: product.to_string(),
        }
    }

    #[test]
    fn select_none_is_no_key() {
        assert!(matches!(select(vec![], None), Err(GateError::NoKey)));
        assert!(matches!(
            select(vec![], Some("/dev/hidraw0")),
            Err(GateError::NoKey)
        ));
    }

    #[test]
    fn select_one_without_path_takes_it() {
        let c = select(vec![cand("/dev/hidraw3", "YubiKey")], None).unwrap();
        assert_eq!(c.label(), "YubiKey (/dev/hidraw3)");
    }

    #[test]
    fn select_several_without_path_refuses() {
        let r = select(
            vec![cand("/dev/hidraw3", "A"), cand("/dev/hidraw4", "B")],
            None,
        );
        assert!(matches!(r, Err(GateError::MultipleKeys { count: 2 })));
    }

    #[test]
    fn select_duplicate_entries_of_one_path_count_once() {
        let r = select(
            vec![cand("/dev/hidraw3", "A"), cand("/dev/hidraw3", "A")],
            None,
        );
        assert_eq!(r.unwrap().path.as_deref(), Some("/dev/hidraw3"));
    }

    #[test]
    fn select_by_path() {
        let both = vec![cand("/dev/hidraw3", "A"), cand("/dev/hidraw4", "B")];
        let c = select(both.clone(), Some("/dev/hidraw4")).unwrap();
        assert_eq!(c.product, "B");
        match select(both, Some("/dev/hidraw9")) {
            Err(GateError::DeviceNotFound { path }) => assert_eq!(path, "/dev/hidraw9"),
            other => panic!("expected DeviceNotFound, got {other:?}"),
        }
    }

    #[test]
    fn cfg_is_quiet() {
        let cfg = quiet_cfg();
        assert!(!cfg.enable_log);
        assert!(!cfg.enable_keep_alive_msg);
        assert!(cfg.keep_alive_msg.is_empty());
    }

    #[test]
    fn guarded_turns_a_panic_into_a_device_error() {
        let r: Result<(), _> = guarded("test call", || panic!("hostile device"));
        match r {
            Err(GateError::Device { detail }) => {
                assert!(detail.contains("hostile device"), "{detail}")
            }
            other => panic!("expected Device, got {other:?}"),
        }
    }

    /// A real run of the enumeration path on whatever this machine has. CI has
    /// no key (often no hidraw at all): must refuse, never panic.
    #[test]
    fn no_key_here_is_refused_not_a_panic() {
        let key = Fido2Key::new(None);
        match key.check_presence(&CancelSignal::new()) {
            Err(GateError::NoKey) | Err(GateError::Device { .. }) => {}
            // A developer machine with a key attached: also fine, just not what CI sees.
            Ok(p) => eprintln!("a FIDO2 key is attached: {}", p.device),
            Err(e @ GateError::MultipleKeys { .. }) => eprintln!("several keys: {e}"),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cancelled_before_start_touches_nothing() {
        let c = CancelSignal::new();
        c.cancel();
        assert!(matches!(
            Fido2Key::new(None).check_presence(&c),
            Err(GateError::Cancelled)
        ));
    }

    #[test]
    fn ctap_status_names_map_to_gate_errors() {
        let map = |m: &str| ctap_error("key", "op", &format!("response_status err = {m}")).code();
        assert_eq!(
            map("0x2D CTAP2_ERR_KEEPALIVE_CANCEL  Pending keep alive was cancelled."),
            "cancelled"
        );
        assert_eq!(
            map("0x2E CTAP2_ERR_NO_CREDENTIALS    No valid credentials provided."),
            "credential_not_found"
        );
        assert_eq!(
            map("0x19 CTAP2_ERR_CREDENTIAL_EXCLUDED"),
            "already_enrolled"
        );
        assert_eq!(map("0x27 CTAP2_ERR_OPERATION_DENIED"), "key_refused");
        assert_eq!(map("0x2F CTAP2_ERR_USER_ACTION_TIMEOUT"), "key_refused");
        assert_eq!(map("0x36 CTAP2_ERR_PIN_REQUIRED"), "key_unsupported");
        assert_eq!(map("0x01 CTAP1_ERR_INVALID_COMMAND"), "key_unsupported");
        assert_eq!(map("read err = 0xFE"), "device_error");
    }

    /// Enrol and log in through the gate with a real key: two touches.
    #[tokio::test]
    #[ignore = "needs a real FIDO2 key and two touches (set CHROMECARD_FIDO2_DEVICE to choose one)"]
    async fn hardware_key_enrols_and_signs_an_assertion_that_verifies() {
        use crate::{CredentialStore, EnrolOptions, Gate, GateSettings, LevelConfig};
        let dir = tempfile::tempdir().unwrap();
        let gate = Gate::with_level(
            std::sync::Arc::new(Fido2Key::new(std::env::var("CHROMECARD_FIDO2_DEVICE").ok())),
            GateSettings {
                op_timeout: Duration::from_secs(20),
                device_wait: Duration::from_secs(1),
            },
            LevelConfig::Assertion {
                rp_id: "chromecard-test".into(),
                store: std::sync::Arc::new(CredentialStore::new(dir.path().join("creds"))),
            },
        );
        eprintln!(">>> touch the key to enrol");
        let e = gate
            .enroll("hwuser", EnrolOptions::default())
            .await
            .unwrap();
        eprintln!("enrolled {e:?}");
        eprintln!(">>> touch the key to log in");
        let p = gate.check("hwuser").await.unwrap();
        eprintln!("passed {p:?}");
        assert_eq!(
            gate.check("nobody").await.unwrap_err().code(),
            "not_enrolled"
        );
    }

    #[test]
    #[ignore = "needs exactly one real FIDO2 key attached (set CHROMECARD_FIDO2_DEVICE to choose one)"]
    fn hardware_key_answers_get_info() {
        let key = Fido2Key::new(std::env::var("CHROMECARD_FIDO2_DEVICE").ok());
        let p = key
            .check_presence(&CancelSignal::new())
            .expect("a real key should answer authenticatorGetInfo");
        eprintln!("answered: {}", p.device);
        assert!(!p.device.is_empty());
    }
}
