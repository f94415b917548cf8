//! The real USB FIDO2 key: hidapi for the device ([`crate::hid`]), our own CTAPHID
//! transaction loop (`chromecard_ctaphid::host`) and CTAP2 messages ([`crate::ctap2`]).
//!
//! This file only talks to the device and hands back raw bytes; it verifies
//! nothing (see [`crate::verify`] and [`crate::ceremony`]).
//!
//! **Why our own CTAPHID layer** rather than a CTAP library: every read has a
//! timeout (hidapi's `read_timeout`), so the thread that waits for a touch looks at
//! the gate's [`CancelSignal`] every [`POLL`] and sends CTAPHID_CANCEL itself on the
//! same channel, with no second thread contending for the device; nothing is
//! printed to stdout; answers from the device are parsed without panicking; and
//! answers that Qubes' CTAP proxy 2.0.7 frames as CTAPHID_MSG are read as the CBOR
//! answers they are (as Chromium does), so a key left in sys-usb works.
//!
//! **Cancellation.** When the signal fires (deadline, client disconnect, shutdown)
//! CTAPHID_CANCEL is sent and repeated every [`POLL`] (a key ignores a CANCEL that
//! overtakes its request) and the key's answer (CTAP2_ERR_KEEPALIVE_CANCEL) is
//! awaited. A device that ignores CANCEL (Qubes' CTAP proxy) answers when its own
//! request ends; until then, at most [`CANCEL_GRACE`], this call does not return and
//! the gate keeps the device locked: a proxy cannot cancel a pending request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chromecard_ctaphid::host::{Answer, Channel, HostError, Limits};
use chromecard_ctaphid::{cmd, keepalive};

use crate::allow_list::{self, assertion_len, Ids, ListLimits};
use crate::ctap2;
use crate::hid::{self, HidPort};
use crate::pin_authenticator::permission;
use crate::pin_client::{self, UvNeed, UvProof};
use crate::verify::{client_data_hash, parse_auth_data, FLAG_UP};
use crate::{
    AssertionResponse, Authenticator, CancelSignal, GateError, GetAssertionRequest, MadeCredential,
    MakeCredentialRequest, Presence,
};

/// How often the transaction loop looks at the clock and the cancel signal.
const POLL: Duration = Duration::from_millis(100);
/// How long a cancelled request may still take to end. Keys end at once; a device that
/// ignores CANCEL ends when the key behind it gives up on the touch (about 30 s).
const CANCEL_GRACE: Duration = Duration::from_secs(35);
/// The same for a request that needs no touch (getInfo, the probe, clientPIN): even
/// behind Qubes' proxy it answers in well under a second, and the channel is dropped
/// after a failed request, so a late answer cannot be mistaken for the next one's.
const QUICK_GRACE: Duration = Duration::from_secs(2);
/// The bound on one request even if nobody cancels it (the gate cancels far sooner).
const REQUEST_BOUND: Duration = Duration::from_secs(120);
/// The bound on CTAPHID_INIT and on requests that need no touch.
const QUICK_BOUND: Duration = Duration::from_secs(5);
/// The throw-away relying party of the touch check on keys without authenticatorSelection.
const TOUCH_RP: &str = "chromecard-touch.invalid";

/// A USB FIDO2 key.
pub struct Fido2Key {
    device_path: Option<String>,
    /// A wrong PIN went to a key since the last right one. A key checks a PIN without a
    /// touch, so without this a client could spend the key's PIN tries at will (three
    /// wrong in a row block PINs until the key is re-plugged); with it, every PIN after
    /// a wrong one waits for a touch first, and only a right PIN lifts that.
    wrong_pin_since_right: AtomicBool,
}

impl Fido2Key {
    /// `device_path`: the hidraw path to use (k_proxy's `--device`); `None` means
    /// "the only FIDO2 device attached" (or, for getAssertion, the one that holds the
    /// user's credential) and refuses when that is ambiguous.
    pub fn new(device_path: Option<String>) -> Self {
        Self {
            device_path,
            wrong_pin_since_right: AtomicBool::new(false),
        }
    }

    /// Proves user verification for a getAssertion, asking for a touch first when a
    /// PIN is to go to the key after a wrong one (see [`Self::wrong_pin_since_right`]),
    /// and keeping that state up to date with the key's answer.
    fn prove_uv_for_assertion(
        &self,
        opened: &mut Opened,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<UvProof, GateError> {
        let pin = request.pin.as_ref();
        if pin.is_some() && self.wrong_pin_since_right.load(Ordering::SeqCst) {
            tracing::warn!(device = %opened.label, "a wrong PIN was sent since the last right one: the key must be touched before another PIN goes to it");
            touch_on(opened, cancel)?;
        }
        let need = UvNeed::asked_by(request.require_uv, request.require_pin);
        let proof = opened.prove_uv(need, pin, permission::GA, &request.rp_id, cancel);
        match (&proof, pin) {
            (Ok(UvProof::Token { .. }), Some(_)) => {
                self.wrong_pin_since_right.store(false, Ordering::SeqCst)
            }
            (Err(GateError::PinInvalid { .. } | GateError::PinAuthBlocked), _) => {
                self.wrong_pin_since_right.store(true, Ordering::SeqCst)
            }
            _ => {}
        }
        proof
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
    let found = hid::enumerate().map_err(|detail| GateError::Device { detail })?;
    let mut found: Vec<Candidate> = found
        .into_iter()
        .map(|f| Candidate {
            path: f.path,
            product: f.product,
        })
        .collect();
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

fn random<const N: usize>() -> Result<[u8; N], GateError> {
    let mut c = [0u8; N];
    getrandom::getrandom(&mut c).map_err(|e| GateError::Device {
        detail: format!("no randomness: {e}"),
    })?;
    Ok(c)
}

/// An open key: one CTAPHID channel on it.
struct Opened {
    channel: Channel<HidPort>,
    label: String,
}

fn transport_error(label: &str, what: &str, e: HostError) -> GateError {
    match e {
        HostError::Cancelled => GateError::Cancelled,
        // Ours, not the key's: an allow or exclude list too long for one message.
        too_long @ HostError::RequestTooLong(_) => GateError::Unsupported {
            detail: format!("{label}: {what}: {too_long}"),
        },
        other => GateError::Device {
            detail: format!("{label}: {what}: {other}"),
        },
    }
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
    let port = HidPort::open(&path).map_err(|detail| GateError::Device { detail })?;
    let channel = Channel::open(port, random()?, Instant::now() + QUICK_BOUND)
        .map_err(|e| transport_error(&label, "CTAPHID_INIT", e))?;
    Ok(Opened { channel, label })
}

impl Opened {
    /// One CTAP2 request; its answer (status byte first). `touch`: the request may
    /// wait for a person, so it is bounded by the gate's cancel signal, not [`QUICK_BOUND`].
    fn cbor(
        &mut self,
        request: &[u8],
        what: &str,
        touch: bool,
        cancel: &CancelSignal,
    ) -> Result<Vec<u8>, GateError> {
        if cancel.is_cancelled() {
            // Never start a request that waits for a touch with nobody left to stop it.
            return Err(GateError::Cancelled);
        }
        let limits = Limits {
            deadline: Instant::now() + if touch { REQUEST_BOUND } else { QUICK_BOUND },
            cancel_grace: if touch { CANCEL_GRACE } else { QUICK_GRACE },
            poll: POLL,
        };
        let mut announced = false;
        let label = self.label.clone();
        let answer: Answer = self
            .channel
            .transact(
                cmd::CBOR,
                request,
                &limits,
                &|| cancel.is_cancelled(),
                &mut |status| {
                    if status == keepalive::UP_NEEDED && !announced {
                        announced = true;
                        tracing::info!(device = %label, "the key waits for a touch");
                    }
                },
            )
            .map_err(|e| transport_error(&self.label, what, e))?;
        if answer.cancels_sent > 0 {
            tracing::info!(device = %self.label, cancels = answer.cancels_sent, "sent CTAPHID_CANCEL to the key");
        }
        if answer.framed_as_msg {
            tracing::info!(device = %self.label, what, "the answer came framed as CTAPHID_MSG, as Qubes' CTAP proxy before 2.0.8 sends it; read as the CBOR answer it is");
        }
        if answer.cancels_sent > 0 && cancel.is_cancelled() {
            // Whatever the key said after the cancel, the caller has gone.
            return Err(GateError::Cancelled);
        }
        Ok(answer.payload)
    }

    fn versions(&mut self, cancel: &CancelSignal) -> Result<Vec<String>, GateError> {
        self.info(cancel).map(|i| i.versions)
    }

    fn info(&mut self, cancel: &CancelSignal) -> Result<ctap2::Info, GateError> {
        let answer = self.cbor(&ctap2::get_info(), "authenticatorGetInfo", false, cancel)?;
        ctap2::parse_info(&answer, &self.label)
    }

    /// Which of `allow` this key holds, asked without a touch in chunks it takes
    /// ([`crate::allow_list`]): the list to ask the touch with, or `None`.
    fn find_held(
        &mut self,
        rp_id: &str,
        chunks: &[Ids],
        cancel: &CancelSignal,
    ) -> Result<Option<Ids>, GateError> {
        let label = self.label.clone();
        allow_list::find_held(rp_id, &random()?, chunks, &label, &mut |r, what, touch| {
            self.cbor(r, what, touch, cancel)
        })
    }

    /// User verification for one request, when it needs it (see [`crate::pin_client`]).
    fn prove_uv(
        &mut self,
        need: UvNeed,
        pin: Option<&crate::Pin>,
        permission: u8,
        rp_id: &str,
        cancel: &CancelSignal,
    ) -> Result<UvProof, GateError> {
        if !need.uv && !need.pin && pin.is_none() {
            return Ok(UvProof::None);
        }
        let info = self.info(cancel)?;
        let label = self.label.clone();
        pin_client::prove_uv(
            &info,
            need,
            pin,
            permission,
            rp_id,
            &label,
            &mut |request, what, touch| self.cbor(request, what, touch, cancel),
        )
    }
}

impl Fido2Key {
    /// The single device (or the `--device` one).
    fn single(&self, cancel: &CancelSignal) -> Result<Opened, GateError> {
        let chosen = select(candidates(cancel)?, self.device_path.as_deref())?;
        open(chosen, cancel)
    }

    /// The device for a getAssertion: the `--device` one, the only one, or the one
    /// that holds one of `allow` (every device asked without a touch, `up: false`;
    /// refused when more than one claims it). With the device, the allow list to ask
    /// its touch with when the probe found it already.
    fn holding(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<(Opened, Option<Ids>), GateError> {
        let found = candidates(cancel)?;
        if self.device_path.is_some() || found.len() <= 1 {
            let opened = open(select(found, self.device_path.as_deref())?, cancel)?;
            return Ok((opened, None));
        }
        let count = found.len();
        let mut claimants: Vec<(Opened, Ids)> = Vec::new();
        for cand in found {
            let label = cand.label();
            let mut opened = match open(cand, cancel) {
                Ok(o) => o,
                Err(GateError::Cancelled) => return Err(GateError::Cancelled),
                Err(e) => {
                    tracing::info!(device = %label, error = %e, "skipping a FIDO2 device");
                    continue;
                }
            };
            // In the chunks this key takes (one, unless the user has more credentials
            // than it takes in a list).
            let outcome = opened.info(cancel).and_then(|info| {
                let chunks =
                    ListLimits::of(&info).chunks(&request.allow, assertion_len(&request.rp_id));
                opened.find_held(&request.rp_id, &chunks, cancel)
            });
            match outcome {
                Ok(Some(list)) => {
                    tracing::info!(device = %opened.label, "this key holds the user's credential");
                    claimants.push((opened, list));
                }
                Ok(None) => {
                    tracing::info!(device = %opened.label, "this key does not hold the user's credential")
                }
                Err(GateError::Cancelled) => return Err(GateError::Cancelled),
                Err(e) => {
                    tracing::info!(device = %opened.label, error = %e, "this key does not hold the user's credential")
                }
            }
        }
        // A credential id is a key's own wrapped secret: two devices claiming one means
        // one of them answers probes it cannot sign for. Asking either for a touch would
        // let the impostor choose, so neither is asked.
        match claimants.len() {
            0 => {
                tracing::warn!(
                    count,
                    "none of the attached FIDO2 keys holds the user's credential"
                );
                Err(GateError::NoCredential)
            }
            1 => {
                let (opened, list) = claimants.remove(0);
                Ok((opened, Some(list)))
            }
            n => {
                let labels: Vec<&str> = claimants.iter().map(|(o, _)| o.label.as_str()).collect();
                tracing::warn!(devices = ?labels, "several FIDO2 devices claim the same credential; one is not what it says");
                Err(GateError::Device {
                    detail: format!(
                        "{n} attached devices claim to hold the user's credential, which only \
                         one key can: detach the device you do not know ({}), or name the \
                         key with --device",
                        labels.join(", ")
                    ),
                })
            }
        }
    }
}

/// A makeCredential for a throw-away relying party whose UP flag is read but
/// whose attestation is not verified: the touch check of keys without
/// authenticatorSelection.
fn touch_by_throwaway_credential(
    opened: &mut Opened,
    cancel: &CancelSignal,
) -> Result<(), GateError> {
    let cdh = client_data_hash(&random::<32>()?);
    let request = ctap2::make_credential(&ctap2::MakeCredential {
        client_data_hash: &cdh,
        rp_id: TOUCH_RP,
        user_id: &[0],
        user_name: "touch",
        exclude: &[],
        uv: false,
        pin_uv: None,
    });
    let answer = opened.cbor(&request, "makeCredential (touch check)", true, cancel)?;
    let auth_data = ctap2::parse_make_credential(&answer, &opened.label)?;
    let parsed = parse_auth_data(&auth_data).map_err(|r| GateError::Device {
        detail: format!("{}: touch check: {r}", opened.label),
    })?;
    if parsed.flags & FLAG_UP == 0 {
        return Err(GateError::Rejected(crate::Rejection::UserNotPresent));
    }
    Ok(())
}

/// The touch check of a CTAP 2.0 key with a PIN (CTAP 2.0 section 5.1, step 1): a
/// makeCredential with a zero-length pinAuth makes the key wait for a touch and then
/// answer CTAP2_ERR_PIN_INVALID (a PIN is set) or CTAP2_ERR_PIN_NOT_SET. Nothing is
/// signed: the touch is the key's word, as with authenticatorSelection.
fn touch_by_empty_pin_auth(opened: &mut Opened, cancel: &CancelSignal) -> Result<(), GateError> {
    let cdh = client_data_hash(&random::<32>()?);
    let request = ctap2::make_credential(&ctap2::MakeCredential {
        client_data_hash: &cdh,
        rp_id: TOUCH_RP,
        user_id: &[0],
        user_name: "touch",
        exclude: &[],
        uv: false,
        pin_uv: Some((&[], 1)),
    });
    let answer = opened.cbor(
        &request,
        "makeCredential, empty pinAuth (touch check)",
        true,
        cancel,
    )?;
    match answer.first() {
        Some(0x31) | Some(0x35) => Ok(()),
        _ => {
            // Whatever else it said (a cancel, a refusal, a credential): not a touch.
            ctap2::parse_make_credential(&answer, &opened.label)?;
            Err(GateError::Device {
                detail: format!(
                    "{}: touch check: the key made a credential for an empty pinAuth",
                    opened.label
                ),
            })
        }
    }
}

/// The exclude list of a makeCredential as the key takes it: the user's credentials as
/// they are when they fit (getInfo's limits, as for allow lists). When they do not, the key
/// is asked without a touch, chunk by chunk, which it holds: that one alone is sent (the
/// key refuses with CTAP2_ERR_CREDENTIAL_EXCLUDED after a touch), or none when it holds
/// none of them (the ceremony still refuses a credential id the user already has).
fn exclude_list(
    opened: &mut Opened,
    request: &MakeCredentialRequest,
    cancel: &CancelSignal,
) -> Result<Ids, GateError> {
    if request.exclude.is_empty() {
        return Ok(Vec::new());
    }
    let limits = ListLimits::of(&opened.info(cancel)?);
    let with_exclude = |ids: &[Vec<u8>]| {
        ctap2::make_credential(&ctap2::MakeCredential {
            client_data_hash: &[0; 32],
            rp_id: &request.rp_id,
            user_id: &request.user_id,
            user_name: &request.user_name,
            exclude: ids,
            uv: true,
            pin_uv: Some((&[0; 32], 2)),
        })
        .len()
    };
    if limits.fits(&request.exclude, with_exclude) {
        return Ok(request.exclude.clone());
    }
    tracing::info!(device = %opened.label, credentials = request.exclude.len(), max_in_list = ?limits.count, max_id_len = ?limits.id_len, "the exclude list is longer than the key takes: asking it chunk by chunk without a touch");
    // What the probes find goes out as the makeCredential's exclude list (the id the key
    // named, or the whole chunk): each chunk must fit that request too, which is the
    // longer of the two. An id too long for it cannot be excluded on this key; it is
    // left out, as an id longer than the key takes is (at worst the key is enrolled twice
    // for the user: the README's known limits).
    let probe_len = assertion_len(&request.rp_id);
    let chunks = limits.chunks(&request.exclude, |ids| {
        probe_len(ids).max(with_exclude(ids))
    });
    Ok(opened
        .find_held(&request.rp_id, &chunks, cancel)?
        .unwrap_or_default())
}

/// CTAP 2.1 keys: authenticatorSelection, which returns nothing signed. CTAP 2.0
/// keys, and devices that refuse the command (Qubes' CTAP proxy refuses 0x07-0x0D):
/// a makeCredential for a throw-away relying party. Either way the answer is the
/// key's word, not a signature from an enrolled credential.
fn touch(mut opened: Opened, cancel: &CancelSignal) -> Result<Presence, GateError> {
    let how = touch_on(&mut opened, cancel)?;
    Ok(Presence {
        device: format!("{} (touched: {how})", opened.label),
    })
}

/// [`touch`] on a device still in use; how the touch was asked for.
fn touch_on(opened: &mut Opened, cancel: &CancelSignal) -> Result<&'static str, GateError> {
    let info = opened.info(cancel)?;
    if info.is_ctap21() {
        let answer = opened.cbor(&ctap2::selection(), "authenticatorSelection", true, cancel)?;
        match ctap2::parse_empty(&answer, &opened.label, "authenticatorSelection") {
            Ok(()) => return Ok("authenticatorSelection, nothing signed"),
            Err(GateError::Unsupported { detail }) if answer.first() == Some(&0x01) => {
                tracing::info!(device = %opened.label, %detail, "the device refuses authenticatorSelection (as Qubes' CTAP proxy does); checking the touch with a throw-away credential");
            }
            Err(e) => return Err(e),
        }
    }
    if info.option("clientPin") == Some(true) {
        // A CTAP 2.0 key with a PIN makes no credential without it; its own way to
        // be chosen by a touch is a makeCredential with a zero-length pinAuth.
        touch_by_empty_pin_auth(opened, cancel)?;
        return Ok("makeCredential with an empty pinAuth, nothing signed");
    }
    touch_by_throwaway_credential(opened, cancel)?;
    Ok("UP flag of an unverified makeCredential")
}

impl Authenticator for Fido2Key {
    fn describe(&self) -> String {
        match &self.device_path {
            Some(p) => format!("USB FIDO2 key (hidapi, CTAPHID), device {p}"),
            None => "USB FIDO2 key (hidapi, CTAPHID), any single device".to_string(),
        }
    }

    fn check_presence(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        let mut opened = self.single(cancel)?;
        let versions = opened.versions(cancel)?;
        Ok(Presence {
            device: format!("{}, {}", opened.label, versions.join("/")),
        })
    }

    /// The single device's touch (selection, or a throw-away credential on CTAP 2.0).
    fn wait_for_touch(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        touch(self.single(cancel)?, cancel)
    }

    /// With several keys and no `--device`, the first by path blinks: a login for an
    /// enrolled name would blink the key holding its credential, so a refusal must
    /// blink one too rather than answer `multiple_keys` at once.
    fn wait_for_touch_before_refusal(&self, cancel: &CancelSignal) -> Result<Presence, GateError> {
        let found = candidates(cancel)?;
        let chosen = match (&self.device_path, found.len()) {
            (None, 2..) => found.into_iter().next().ok_or(GateError::NoKey)?,
            _ => select(found, self.device_path.as_deref())?,
        };
        touch(open(chosen, cancel)?, cancel)
    }

    fn make_credential(
        &self,
        request: &MakeCredentialRequest,
        cancel: &CancelSignal,
    ) -> Result<MadeCredential, GateError> {
        let mut opened = self.single(cancel)?;
        let exclude = exclude_list(&mut opened, request, cancel)?;
        let cdh = client_data_hash(&request.challenge);
        let need = UvNeed::asked_by(request.require_uv, request.require_pin);
        let proof = opened.prove_uv(
            need,
            request.pin.as_ref(),
            permission::MC,
            &request.rp_id,
            cancel,
        )?;
        let param = proof.param(&cdh);
        let message = ctap2::make_credential(&ctap2::MakeCredential {
            client_data_hash: &cdh,
            rp_id: &request.rp_id,
            user_id: &request.user_id,
            user_name: &request.user_name,
            exclude: &exclude,
            uv: proof.uv_option(),
            pin_uv: param.as_ref().map(|(p, n)| (p.as_slice(), *n)),
        });
        let answer = opened.cbor(&message, "authenticatorMakeCredential", true, cancel)?;
        let (auth_data, attestation) = ctap2::parse_make_credential_full(&answer, &opened.label)?;
        Ok(MadeCredential {
            auth_data,
            attestation,
            device: opened.label,
        })
    }

    fn get_assertion(
        &self,
        request: &GetAssertionRequest,
        cancel: &CancelSignal,
    ) -> Result<AssertionResponse, GateError> {
        let (mut opened, held) = self.holding(request, cancel)?;
        let allow = match held {
            Some(list) => list,
            None => {
                // A key takes only so many credentials in one list (getInfo); a user may
                // have more. Asked without a touch chunk by chunk, then touched for the one.
                let limits = ListLimits::of(&opened.info(cancel)?);
                if limits.fits(&request.allow, assertion_len(&request.rp_id)) {
                    request.allow.clone()
                } else {
                    let chunks = limits.chunks(&request.allow, assertion_len(&request.rp_id));
                    let Some(first) = chunks.first().cloned() else {
                        // No id this key could take: none is its. Refused after a touch, as
                        // a key refuses a credential it does not hold.
                        touch(opened, cancel)?;
                        return Err(GateError::NoCredential);
                    };
                    tracing::info!(device = %opened.label, credentials = request.allow.len(), max_in_list = ?limits.count, max_id_len = ?limits.id_len, "the allow list is longer than the key takes: asking it chunk by chunk without a touch");
                    // None held: the first chunk, whose refusal comes as the key gives it.
                    opened
                        .find_held(&request.rp_id, &chunks, cancel)?
                        .unwrap_or(first)
                }
            }
        };
        let cdh = client_data_hash(&request.challenge);
        let proof = self.prove_uv_for_assertion(&mut opened, request, cancel)?;
        let param = proof.param(&cdh);
        let message = ctap2::get_assertion(
            &request.rp_id,
            &cdh,
            &allow,
            true,
            proof.uv_option(),
            param.as_ref().map(|(p, n)| (p.as_slice(), *n)),
        );
        let answer = opened.cbor(&message, "authenticatorGetAssertion", true, cancel)?;
        let a = ctap2::parse_get_assertion(&answer, &opened.label)?;
        // A key may leave out the credential of a one-entry list (CTAP 2.1 section 6.2.2):
        // when the list sent was narrowed to one, the ceremony's list is longer, so say
        // which it was (the signature still has to verify with that credential's key).
        let named = a.credential_id.filter(|id| !id.is_empty());
        let credential_id = match (named, allow.as_slice()) {
            (None, [only]) => Some(only.clone()),
            (named, _) => named,
        };
        Ok(AssertionResponse {
            credential_id,
            auth_data: a.auth_data,
            signature: a.signature,
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
