//! The real USB FIDO2 key, through ctap-hid-fido2 (hidapi, hidraw on Linux).

use std::panic::{self, AssertUnwindSafe};

use ctap_hid_fido2::{Cfg, FidoKeyHidFactory, HidInfo, HidParam};

use crate::{Authenticator, CancelSignal, GateError, Presence};

/// A USB FIDO2 key. Presence level: the key answers authenticatorGetInfo.
///
/// ctap-hid-fido2 blocks on HID reads with no timeout; [`crate::Gate`] runs this
/// on a blocking thread with a deadline. The cancel signal is only checked
/// between steps: GetInfo answers at once and needs no user presence, so there
/// is no long wait to interrupt and no CTAPHID_CANCEL to send (that becomes
/// necessary with GetAssertion, which waits for a touch).
pub struct Fido2Key {
    device_path: Option<String>,
}

impl Fido2Key {
    /// `device_path`: the hidraw path to use (k_proxy's `--device`); `None` means
    /// "the only FIDO2 device attached" and refuses when there are several.
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

/// Pick the device to talk to: fails closed on none, on ambiguity, and on a
/// configured path that is not among the FIDO2 devices (so `--device` can
/// never point us at a non-FIDO hidraw node).
fn select(mut found: Vec<Candidate>, wanted: Option<&str>) -> Result<Candidate, GateError> {
    // hidapi may list one interface more than once (one entry per usage); one path is one device.
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

impl Authenticator for Fido2Key {
    fn describe(&self) -> String {
        match &self.device_path {
            Some(p) => format!("USB FIDO2 key (ctap-hid-fido2), device {p}"),
            None => "USB FIDO2 key (ctap-hid-fido2), any single device".to_string(),
        }
    }

    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        if cancel.is_cancelled() {
            return Err(GateError::Cancelled);
        }
        // Enumerate afresh every time: keys come and go (qvm-usb attach/detach).
        let found = guarded(
            "FIDO2 device enumeration",
            ctap_hid_fido2::get_fidokey_devices,
        )?;
        let chosen = select(
            found.into_iter().map(Candidate::from_hid).collect(),
            self.device_path.as_deref(),
        )?;
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
        let info = guarded("authenticatorGetInfo", || {
            let key = FidoKeyHidFactory::create_by_params(&[HidParam::Path(path)], &cfg)?;
            key.get_info()
        })?
        .map_err(|e| GateError::Device {
            detail: format!("{label}: {e:#}"),
        })?;

        // versions is mandatory in a GetInfo answer; an empty list is not a FIDO2 key talking.
        if info.versions.is_empty() {
            return Err(GateError::Device {
                detail: format!("{label}: authenticatorGetInfo answer lists no versions"),
            });
        }
        Ok(Presence {
            device: format!("{label}, {}", info.versions.join("/")),
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
