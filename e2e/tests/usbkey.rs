//! The real key path: `--gate fido2` through our CTAPHID layer, hidapi and the kernel's
//! hidraw, against the virtual USB key (`chromecard-vkey` on /dev/uhid).
//!
//! Every test here needs /dev/uhid, which CI machines lack: scripts/test.sh runs this
//! binary inside a small VM (scripts/vm-run.sh) with `--ignored --test-threads=1`, or
//! directly where /dev/uhid is writable. One at a time: k_proxy without `--device`
//! sees every key attached, so two tests' keys must not meet.

use std::process::Command;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

/// A keyring with alice enrolled on the key named "key", which is detached again (so a
/// test attaches the keys it wants, in the order it wants).
fn alice_enrolled_on_a_detached_key() -> UsbKeyring {
    let usb = UsbKeyring::new();
    {
        let _k = usb.vkey("key", &[]);
        usb.enroll_ok("alice");
    }
    usb
}

/// A refused login: exact status and code, no session token.
fn assert_refused(r: &Resp, status: u16, code: &str) {
    r.expect_error(status, code);
    assert!(!r.body.contains("session_token"), "{}", r.ctx());
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn enrol_over_usb_then_the_runbook_through_the_whole_chain() {
    let usb = UsbKeyring::new();
    let key = usb.vkey("key", &[]);
    usb.enroll_ok("alice");
    assert!(
        key.log().contains("authenticatorMakeCredential"),
        "{}",
        key.log()
    );

    // The split-VM shape: k_server with mutual TLS, k_proxy serving TLS on the USB key.
    let certs = Certs::generate();
    let flags = usb.gate_flags("10");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_server, _sport, mut proxy, client) = start_tls_chain_with(&certs, &flags);
    assert_runbook_passes(client.port(), &certs.ca(), "alice", &|| {
        format!("{}\n{}", proxy.logs(), key.log())
    });
    let log = proxy.stderr();
    assert!(log.contains("GATE LEVEL: ASSERTION"), "{log}");
    assert!(log.contains("USB FIDO2 key"), "{log}");
    assert_eq!(
        key.count("CTAP2 request command=\"authenticatorGetAssertion\""),
        1,
        "{}",
        key.log()
    );
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn every_refusal_on_the_usb_path_carries_its_code() {
    let usb = UsbKeyring::new();
    let (mut proxy, c) = {
        let _enrolling = usb.vkey("key", &[]);
        usb.enroll_ok("alice");
        // Seven refusals in a row for one user: the throttle is not what this test is about.
        usb.proxy("2", &["--login-max-failures", "0"])
    };
    // The keys below come and go while one k_proxy runs: it looks for them at every login.
    {
        let _key = usb.vkey("key", &[]);
        assert_refused(&c.login("bob"), 401, "not_enrolled");
        c.login_ok("alice");
    }
    {
        let _other = usb.vkey("other-key", &[]);
        assert_refused(&c.login("alice"), 401, "credential_not_found");
    }
    {
        // A clone of the key made after its last use signs that count again.
        let _clone = usb.vkey("key", &["--behavior", "cloned-counter"]);
        assert_refused(&c.login("alice"), 401, "counter_not_increased");
    }
    {
        let _up_clear = usb.vkey("key", &["--behavior", "up-clear"]);
        assert_refused(&c.login("alice"), 401, "user_not_present");
    }
    {
        let _foreign = usb.vkey("key", &["--behavior", "foreign-key"]);
        assert_refused(&c.login("alice"), 401, "bad_signature");
    }
    {
        let _refusing = usb.vkey("key", &["--behavior", "refuse"]);
        assert_refused(&c.login("alice"), 401, "key_refused");
    }
    assert_refused(&c.login("alice"), 401, "no_key");
    {
        let _key = usb.vkey("key", &[]);
        c.login_ok("alice");
    }
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_login_nobody_touches_is_cancelled_at_the_deadline_and_the_next_one_passes_at_once() {
    let usb = UsbKeyring::new();
    let key = usb.vkey("key", &["--untouched", "2"]);
    usb.enroll_ok("alice");
    let (mut proxy, c) = usb.proxy("3", &[]);
    let t = Instant::now();
    let r = c.login("alice");
    let seen = t.elapsed();
    assert_refused(&r, 401, "touch_timeout");
    let took = last_login_took(&proxy);
    eprintln!("no touch: k_proxy answered 401 after {took:?} (the client saw {seen:?})");
    assert!(
        took < Duration::from_secs(4) && took >= Duration::from_millis(2900),
        "--touch-timeout 3 refused after {took:?}, not within the timeout plus one second{}",
        r.ctx()
    );
    // The key saw the CANCEL and stopped waiting.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !key.log().contains("touch wait cancelled") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(key.log().contains("<- CTAPHID_CANCEL"), "{}", key.log());
    assert!(key.log().contains("touch wait cancelled"), "{}", key.log());
    // The device is free again at once: the next login is not held up by the cancelled
    // one (it would wait for the device, or time out, if the key were still busy).
    c.login_ok("alice");
    let next = last_login_took(&proxy);
    eprintln!("the next login passed after {next:?}");
    assert!(
        next < Duration::from_secs(3),
        "the next login took {next:?}, as long as a touch timeout"
    );
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn with_two_keys_attached_the_one_holding_the_credential_is_used_without_touching_the_other() {
    let usb = alice_enrolled_on_a_detached_key();
    // A second key nobody will touch, attached first so that k_proxy meets it first
    // (hidraw order): any touch asked of it would end the login at the deadline.
    let other = usb.vkey("other-key", &["--no-touch"]);
    let enrolled = usb.vkey("key", &[]);
    assert!(
        other.hidraw < enrolled.hidraw,
        "{} {}",
        other.hidraw,
        enrolled.hidraw
    );
    let (mut proxy, c) = usb.proxy("5", &[]);
    c.login_ok("alice");
    let took = last_login_took(&proxy);
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // The other key was asked without a touch (up: false) and answered "no credentials".
    assert!(
        other.log().contains("authenticatorGetAssertion"),
        "{}",
        other.log()
    );
    assert!(other.log().contains("status=0x2e"), "{}", other.log());
    assert!(
        !other.log().contains("waiting for a touch"),
        "{}",
        other.log()
    );
    assert!(enrolled.log().contains("touched"), "{}", enrolled.log());
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn with_two_keys_attached_a_name_nobody_enrolled_is_refused_only_after_a_touch() {
    let usb = alice_enrolled_on_a_detached_key();
    // Nobody touches either key: an enrolled name ends at the touch deadline, and so must
    // a name nobody enrolled, not answer multiple_keys at once (that would tell which
    // names are enrolled at machine speed).
    let other = usb.vkey("other-key", &["--no-touch"]);
    let enrolled = usb.vkey("key", &["--no-touch"]);
    let (mut proxy, c) = usb.proxy("2", &["--login-max-failures", "0"]);
    for user in ["alice", "mallory"] {
        let started = Instant::now();
        let r = c.login(user);
        assert_refused(&r, 401, "touch_timeout");
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{user}: answered after {:?}",
            started.elapsed()
        );
    }
    // Each refusal blinked a key: alice's the one holding her credential, mallory's the
    // first by path.
    let blinks = other.count("waiting for a touch") + enrolled.count("waiting for a touch");
    assert_eq!(blinks, 2, "{}\n{}", other.log(), enrolled.log());
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_key_that_takes_one_credential_per_list_enrols_and_logs_in_a_user_with_three() {
    let usb = UsbKeyring::new();
    for name in ["first", "second"] {
        let _k = usb.vkey(name, &[]);
        usb.enroll_ok("alice");
    }
    // Keys whose getInfo says maxCredentialCountInList 1 and that refuse longer lists
    // with CTAP2_ERR_LIMIT_EXCEEDED, as real keys do.
    let limited = ["--max-creds-in-list", "1"];
    {
        // Her third: the two credentials to exclude are asked for one at a time.
        let key = usb.vkey("third", &limited);
        usb.enroll_ok("alice");
        assert!(!key.log().contains("status=0x15"), "{}", key.log());
    }
    {
        // The second key again: it holds one of them and refuses after a touch.
        let key = usb.vkey("second", &limited);
        let e = usb.enroll("alice", &[]);
        assert!(
            e.status.is_some_and(|st| !st.success()) && e.stderr.contains("already holds"),
            "{e:?}"
        );
        let log = key.log();
        assert!(!log.contains("status=0x15"), "{log}");
        assert!(log.contains("status=0x19"), "{log}");
    }
    let (mut proxy, c) = usb.proxy("5", &["--login-max-failures", "0"]);
    {
        // Her second key logs her in.
        let key = usb.vkey("second", &limited);
        c.login_ok("alice");
        let log = key.log();
        // One credential at a time without a touch (the first: no; the second: yes),
        // then the touch for that one alone.
        assert!(!log.contains("status=0x15"), "{log}");
        assert_eq!(
            key.count("CTAP2 request command=\"authenticatorGetAssertion\""),
            3,
            "{log}"
        );
        assert_eq!(key.count("status=0x2e"), 1, "{log}");
        assert_eq!(key.count("waiting for a touch"), 1, "{log}");
    }
    {
        // A key with the same limit holding none of them: not found, not a device error.
        let _other = usb.vkey("other", &limited);
        assert_refused(&c.login("alice"), 401, "credential_not_found");
    }
    proxy.assert_running();
}

/// A key that states no count limit but a maxMsgSize (the virtual key: 1200 bytes, and
/// it refuses longer messages with ERR_INVALID_LEN, as real keys do): a user whose allow
/// list is longer than that is asked in requests within it, and logs in.
#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_long_allow_list_goes_to_the_key_in_requests_within_its_max_msg_size() {
    use base64::Engine as _;
    let usb = UsbKeyring::new();
    let key = usb.vkey("key", &[]);
    usb.enroll_ok("alice");
    // Five more credentials of alice's, with 250-byte ids of no key attached here, ahead
    // of hers: about 1.6 KB of allow list.
    let text = std::fs::read_to_string(usb.creds()).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("alice:"))
        .expect("alice's line");
    let hers = &line["alice:".len()..];
    let (_, key_and_options) = hers.split_once(',').unwrap();
    let fakes: Vec<String> = (0..5u8)
        .map(|n| {
            let id = base64::engine::general_purpose::STANDARD.encode(vec![n; 250]);
            format!("{id},{key_and_options}")
        })
        .collect();
    let longer = format!("alice:{}:{hers}", fakes.join(":"));
    std::fs::write(usb.creds(), text.replace(line, &longer)).unwrap();

    let (mut proxy, c) = usb.proxy("10", &[]);
    let touches_before = key.count("waiting for a touch");
    c.login_ok("alice");
    let log = key.log();
    assert!(
        !log.contains("message longer than maxMsgSize"),
        "every request within 1200 bytes: {log}"
    );
    // Probes without a touch until the one holding hers, then the touch for it alone.
    assert!(
        key.count("CTAP2 request command=\"authenticatorGetAssertion\"") >= 3,
        "{log}"
    );
    assert_eq!(
        key.count("waiting for a touch"),
        touches_before + 1,
        "{log}"
    );
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn two_devices_claiming_one_credential_are_neither_asked_for_a_touch() {
    let usb = alice_enrolled_on_a_detached_key();
    // Only one key can hold a credential id (it wraps that key's own secret): a second
    // device answering the probe for it is an impostor, here a clone of the key file.
    let a = usb.vkey("key", &[]);
    let b = usb.vkey("key", &[]);
    let (mut proxy, c) = usb.proxy("5", &["--login-max-failures", "0"]);
    let r = c.login("alice");
    assert_refused(&r, 401, "device_error");
    let log = proxy.stderr();
    assert!(log.contains("claim the same credential"), "{log}");
    for key in [&a, &b] {
        assert!(!key.log().contains("waiting for a touch"), "{}", key.log());
    }
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_key_pulled_out_mid_login_is_a_clear_401_and_k_proxy_keeps_serving() {
    let usb = alice_enrolled_on_a_detached_key();
    let (mut proxy, c) = usb.proxy("5", &[]);
    let mut pulled = usb.vkey("key", &["--no-touch", "--vanish-after-ms", "300"]);
    let t = Instant::now();
    let r = c.login("alice");
    // The removal itself is the answer (no_key when the key was gone before k_proxy
    // looked), well before the 5 s touch timeout: waiting that out and answering
    // touch_timeout would tell the user to touch a key that is no longer there.
    r.expect_json_error(401, &["device_error", "no_key"]);
    assert!(!r.body.contains("session_token"), "{}", r.ctx());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "the removal was noticed only after {:?} (touch timeout 5 s)",
        t.elapsed()
    );
    assert!(pulled.proc.try_exited().is_some(), "the key should be gone");
    eprintln!("key pulled out: {} after {:?}", r.body, t.elapsed());
    c.healthz().expect(200);
    let _back = usb.vkey("key", &[]);
    c.login_ok("alice");
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn touch_level_uses_selection_on_ctap_2_1_and_a_throwaway_credential_on_ctap_2_0() {
    let dead = free_port();
    let flags = [
        "--gate",
        "fido2",
        "--gate-level",
        "touch",
        "--touch-timeout",
        "5",
    ];
    let (mut proxy, _port, c) = start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &flags);
    {
        let key = VKey::start(&[]);
        c.login_ok("anyone");
        assert!(
            key.log().contains("authenticatorSelection"),
            "{}",
            key.log()
        );
        assert!(key.log().contains("touched"), "{}", key.log());
    }
    {
        let key = VKey::start(&["--ctap20"]);
        c.login_ok("anyone");
        assert!(
            !key.log().contains("authenticatorSelection"),
            "{}",
            key.log()
        );
        assert!(
            key.log().contains("authenticatorMakeCredential"),
            "{}",
            key.log()
        );
    }
    {
        // A CTAP 2.0 key with a PIN makes no credential without it: a makeCredential with
        // an empty pinAuth, which the key answers (PIN_INVALID) after a touch.
        let key = VKey::start(&["--ctap20", "--pin", "4711"]);
        c.login_ok("anyone");
        assert!(key.log().contains("touched"), "{}", key.log());
        assert!(key.log().contains("status=0x31"), "{}", key.log());
    }
    {
        let _key = VKey::start(&["--no-touch"]);
        assert_refused(&c.login("anyone"), 401, "touch_timeout");
    }
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn presence_level_asks_getinfo_only() {
    let dead = free_port();
    let (mut proxy, _port, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &["--gate", "fido2"]);
    assert_refused(&c.login("anyone"), 401, "no_key");
    let key = VKey::start(&["--no-touch"]);
    c.login_ok("anyone");
    assert!(key.log().contains("authenticatorGetInfo"), "{}", key.log());
    assert!(!key.log().contains("waiting for a touch"), "{}", key.log());
    assert!(proxy.stderr().contains("GATE LEVEL: PRESENCE"));
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn the_hardware_check_script_runs_unattended_against_the_virtual_key() {
    // Touches 1 (enrol), 2 (login) and 3 (the unenrolled name, answered only after a
    // touch) happen; 4 is the login nobody touches; 5 passes.
    let key = VKey::start(&["--untouched", "4"]);
    let port = free_port().to_string();
    let ran = run(
        Command::new(workspace_file("scripts/hw-check.sh")).args([
            "--bin",
            &s(bin_path("k_proxy")),
            "--timeout",
            "3",
            "--port",
            &port,
        ]),
        None,
        Duration::from_secs(120),
    );
    assert!(
        ran.success(),
        "hw-check.sh: {}\n{}\n{}\n{}",
        ran.describe_status(),
        ran.stdout,
        ran.stderr,
        key.log()
    );
    assert!(key.log().contains("<- CTAPHID_CANCEL"), "{}", key.log());
}

// ---------------------------------------------------------------------------
// The PIN (issue 19) on the USB path: k_proxy's clientPIN through CTAPHID and hidraw
// against the virtual key's clientPIN (PIN/UV auth protocols 2 and 1).
// ---------------------------------------------------------------------------

const PIN: &str = "usb-pin-4711";
const WRONG: &str = "wrong-pin-9";

/// `k_proxy enroll` over USB with `extra` flags (e.g. `--require-pin --pin-file F`).
/// An enrolment that must pass; the key's log says why when it does not.
fn enrolled(usb: &UsbKeyring, user: &str, extra: &[&str], key: &VKey) -> Exited {
    let e = usb.enroll(user, extra);
    assert!(
        e.status.is_some_and(|s| s.success()),
        "{e:?}\n{}",
        key.log()
    );
    e
}

fn pin_file(usb: &UsbKeyring, pin: &str) -> String {
    let path = usb.key_file(&format!("pin-{pin}"));
    std::fs::write(&path, format!("{pin}\n")).unwrap();
    path
}

fn pin_login(c: &Client, user: &str, pin: Option<&str>) -> Resp {
    c.login_body(&match pin {
        Some(pin) => json!({ "username": user, "pin": pin }),
        None => json!({ "username": user }),
    })
}

/// A refused login with its code and the `retries` the key reported (if any).
fn refused_with(r: &Resp, code: &str, retries: Option<u64>) {
    assert_refused(r, 401, code);
    assert_eq!(
        r.json().get("retries").and_then(Value::as_u64),
        retries,
        "{}",
        r.ctx()
    );
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_pin_user_on_the_usb_key_logs_in_with_the_right_pin_and_every_pin_refusal_has_its_code() {
    let usb = UsbKeyring::new();
    let key_file = std::path::PathBuf::from(usb.key_file("key"));
    let pin = pin_file(&usb, PIN);
    {
        // A CTAP 2.1 key whose PIN is set: enrolled with the PIN (protocol 2, a token with
        // the mc permission for the relying party).
        let key = usb.vkey("key", &["--pin", PIN]);
        let e = enrolled(&usb, "alice", &["--require-pin", "--pin-file", &pin], &key);
        assert!(e.stdout.contains("+presence+pin"), "{e:?}");
        assert!(
            key.log().contains("clientPIN subcommand=9"),
            "{}",
            key.log()
        );
    }
    let (mut proxy, c) = usb.proxy("5", &["--login-max-failures", "0"]);
    {
        let key = usb.vkey("key", &[]);
        refused_with(&pin_login(&c, "alice", None), "pin_required", None);
        pin_login(&c, "alice", Some(PIN)).expect(200);
        // getPINRetries, getKeyAgreement, the token with permissions, then getAssertion
        // with its pinUvAuthParam; the signed authenticator data had UV set.
        let log = key.log();
        for step in [
            "clientPIN subcommand=1",
            "clientPIN subcommand=2",
            "clientPIN subcommand=9",
            "checking the pinUvAuthParam",
        ] {
            assert!(log.contains(step), "{step}: {log}");
        }
        let plog = proxy.stderr();
        assert!(
            plog.lines()
                .any(|l| l.contains("gate: passed") && l.contains("uv=true")),
            "{plog}"
        );
        refused_with(&pin_login(&c, "alice", Some(WRONG)), "pin_invalid", Some(7));
        pin_login(&c, "alice", Some(PIN)).expect(200);
    }
    // Four tries left (set on the key as a FIDO2 tool would leave them): one is tried.
    set_key_file_pin(&key_file, PIN, 4);
    {
        let key = usb.vkey("key", &[]);
        refused_with(&pin_login(&c, "alice", Some(WRONG)), "pin_invalid", Some(3));
        let tokens = key.count("clientPIN subcommand=9");
        // Three left: k_proxy asks getPINRetries and tries nothing, even the right PIN.
        refused_with(
            &pin_login(&c, "alice", Some(PIN)),
            "pin_retries_low",
            Some(3),
        );
        assert_eq!(key.count("clientPIN subcommand=9"), tokens, "{}", key.log());
    }
    assert_eq!(key_file_pin_retries(&key_file), 3);
    set_key_file_pin(&key_file, PIN, 0);
    {
        let _key = usb.vkey("key", &[]);
        refused_with(&pin_login(&c, "alice", Some(PIN)), "pin_blocked", Some(0));
    }
    // Bad PIN values never reach the key: a 400, and k_proxy serves on.
    let r = c.login_body(&json!({ "username": "alice", "pin": "12" }));
    r.expect_error(400, "invalid_pin");
    c.healthz().expect(200);
    let plog = proxy.logs();
    assert!(!plog.contains(WRONG) && !plog.contains(PIN), "{plog}");
    proxy.assert_running();
}

/// A key checks a PIN without a touch: a client that could send PINs at will could spend
/// the key's tries (three wrong in a row block PINs until it is re-plugged) with nobody
/// near it. After one wrong PIN, the next PIN goes to the key only after a touch.
#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn after_a_wrong_pin_no_pin_reaches_the_key_until_someone_touches_it() {
    let usb = UsbKeyring::new();
    let key_file = std::path::PathBuf::from(usb.key_file("key"));
    let pin = pin_file(&usb, PIN);
    {
        let key = usb.vkey("key", &["--pin", PIN]);
        enrolled(&usb, "alice", &["--require-pin", "--pin-file", &pin], &key);
    }
    let (mut proxy, c) = usb.proxy("2", &["--login-max-failures", "0"]);
    {
        // Nobody near the key: the first wrong PIN is the key's to refuse (a try is
        // spent), but the answer waits for a touch, as a name nobody enrolled does: no
        // quick `pin_invalid` tells that alice has a PIN.
        let key = usb.vkey("key", &["--no-touch"]);
        assert_refused(&pin_login(&c, "alice", Some(WRONG)), 401, "touch_timeout");
        assert!(
            last_login_took(&proxy) >= Duration::from_millis(1900),
            "the wrong PIN was answered before the touch timeout"
        );
        assert_eq!(key_file_pin_retries(&key_file), 7);
        let tokens = key.count("clientPIN subcommand=9");
        // The next ones, right or wrong, wait for a touch that never comes.
        for guess in [WRONG, WRONG, WRONG, PIN] {
            assert_refused(&pin_login(&c, "alice", Some(guess)), 401, "touch_timeout");
        }
        assert_eq!(
            key.count("clientPIN subcommand=9"),
            tokens,
            "a PIN reached the key without a touch: {}",
            key.log()
        );
    }
    assert_eq!(key_file_pin_retries(&key_file), 7, "PIN tries were spent");
    assert!(
        proxy
            .stderr()
            .contains("the key must be touched before another PIN goes to it"),
        "{}",
        proxy.logs()
    );
    {
        // The owner touches (once before the PIN, once for the assertion): the right PIN
        // passes and lifts the extra touch for the next login.
        let key = usb.vkey("key", &[]);
        pin_login(&c, "alice", Some(PIN)).expect(200);
        assert_eq!(key.count("authenticatorSelection"), 1, "{}", key.log());
        pin_login(&c, "alice", Some(PIN)).expect(200);
        assert_eq!(key.count("authenticatorSelection"), 1, "{}", key.log());
    }
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_ctap_2_0_key_that_insists_on_its_pin_is_enrolled_with_it_and_verifies_with_protocol_1() {
    let usb = UsbKeyring::new();
    let pin = pin_file(&usb, PIN);
    let key = usb.vkey("key", &["--ctap20", "--pin", PIN]);
    // Without the PIN the key refuses to make a credential (CTAP2_ERR_PIN_REQUIRED), and
    // with no terminal to ask on, enroll says how to give it.
    let e = usb.enroll("bob", &[]);
    assert!(!e.status.is_some_and(|s| s.success()), "{e:?}");
    assert!(e.stderr.contains("--pin-file"), "{e:?}");
    assert!(key.log().contains("status=0x36"), "{}", key.log());
    // With it: a +presence credential, and a +verification one.
    enrolled(&usb, "bob", &["--pin-file", &pin], &key);
    let e = enrolled(&usb, "dave", &["--require-uv", "--pin-file", &pin], &key);
    assert!(e.stdout.contains("+presence+verification"), "{e:?}");
    // CTAP 2.0: getPinToken (subcommand 5) with protocol 1; never the 2.1 command.
    assert!(
        key.log().contains("clientPIN subcommand=5"),
        "{}",
        key.log()
    );
    assert!(
        !key.log().contains("clientPIN subcommand=9"),
        "{}",
        key.log()
    );
    let (mut proxy, c) = usb.proxy("5", &[]);
    c.login_ok("bob");
    // dave needs UV, the key has no built-in UV, the body no PIN: pin_required, answered
    // only after a touch (as for a name nobody enrolled).
    let touches = key.count("waiting for a touch");
    refused_with(&pin_login(&c, "dave", None), "pin_required", None);
    assert_eq!(
        key.count("waiting for a touch"),
        touches + 1,
        "{}",
        key.log()
    );
    pin_login(&c, "dave", Some(PIN)).expect(200);
    assert!(
        proxy
            .stderr()
            .lines()
            .any(|l| l.contains("gate: passed") && l.contains("uv=true")),
        "{}",
        proxy.stderr()
    );
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_key_with_built_in_uv_verifies_a_verification_user_without_a_pin() {
    // CTAP 2.1: getPinUvAuthTokenUsingUvWithPermissions (clientPIN subcommand 6), then the
    // token's pinUvAuthParam; CTAP 2.0: the `uv` option of the request itself.
    for (extra, sign) in [
        (&["--builtin-uv"][..], "clientPIN subcommand=6"),
        (
            &["--ctap20", "--builtin-uv"][..],
            "built-in user verification",
        ),
    ] {
        let usb = UsbKeyring::new();
        let key = usb.vkey("key", extra);
        let e = enrolled(&usb, "carol", &["--require-uv"], &key);
        assert!(e.stdout.contains("+presence+verification"), "{e:?}");
        let (mut proxy, c) = usb.proxy("5", &[]);
        c.login_ok("carol");
        let log = key.log();
        assert!(log.contains(sign), "{extra:?}: {log}");
        assert!(
            !log.contains("clientPIN subcommand=1"),
            "no PIN asked: {log}"
        );
        assert!(
            proxy
                .stderr()
                .lines()
                .any(|l| l.contains("gate: passed") && l.contains("uv=true")),
            "{}",
            proxy.stderr()
        );
        proxy.assert_running();
    }
}
