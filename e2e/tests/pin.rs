//! Issue 19, the PIN/UV half, end to end with the software authenticator (`--gate soft`):
//! `+pin` and `+verification` enrolments, the PIN in the login body, k_proxy's clientPIN
//! (protocol 2, getPinUvAuthTokenUsingPinWithPermissions) against the software key's own
//! clientPIN, and every refusal with its code. The real k_proxy binary; the software key's
//! PIN is set in its key file as a person would set it with a FIDO2 tool
//! ([`set_key_file_pin`]). The same on the USB path: e2e/tests/usbkey.rs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use chromecard_e2e::*;

const PIN: &str = "4711-pin";
const WRONG: &str = "0000-bad";

/// A software key file (with a PIN) and an enrolment file in one private temp dir.
struct PinRing {
    dir: TempDir,
}

impl PinRing {
    /// A key file whose PIN is [`PIN`] with `retries` tries left.
    fn new(retries: u8) -> PinRing {
        let dir = tempfile::Builder::new()
            .prefix("chromecard-pin-")
            .tempdir()
            .expect("tempdir");
        let ring = PinRing { dir };
        // The software key makes its key file at first use; then its PIN is set.
        let made = ring.run(&["enroll", "--username", "nobody"]);
        assert!(made.status.is_some_and(|s| s.success()), "{made:?}");
        set_key_file_pin(&ring.key(), PIN, retries);
        ring
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("soft.key")
    }
    fn creds(&self) -> PathBuf {
        self.dir.path().join("credentials")
    }
    /// A 0600 file holding `pin` (what `--pin-file` reads).
    fn pin_file(&self, pin: &str) -> String {
        let p = self.dir.path().join(format!("pin-{}", pin.len()));
        fs::write(&p, format!("{pin}\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        s(p)
    }
    fn flags(&self) -> Vec<String> {
        [
            "--gate",
            "soft",
            "--soft-key-file",
            &s(self.key()),
            "--credentials-file",
            &s(self.creds()),
            "--touch-timeout",
            "5",
        ]
        .map(String::from)
        .to_vec()
    }
    fn run(&self, args: &[&str]) -> Exited {
        Spawn::k_proxy()
            .args(args)
            .args(self.flags())
            .run_to_exit(Duration::from_secs(15))
    }
    fn enroll_ok(&self, args: &[&str]) -> Exited {
        let e = self.run(args);
        assert!(e.status.is_some_and(|s| s.success()), "{e:?}");
        e
    }
    /// alice, `+pin`, enrolled with the right PIN from a file.
    fn enroll_alice_with_pin(&self) -> Exited {
        self.enroll_ok(&[
            "enroll",
            "--username",
            "alice",
            "--require-pin",
            "--pin-file",
            &self.pin_file(PIN),
        ])
    }
    /// k_proxy at assertion level on this key, logging at debug level, no throttle (the
    /// refusals here are the test, not the ban).
    fn proxy(&self) -> (Proc, Client) {
        let port = free_port();
        let dead = free_port();
        let p = Spawn::k_proxy()
            .env("RUST_LOG", "debug")
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--server-base-url",
                &format!("http://127.0.0.1:{dead}"),
                "--proxy-token",
                PROXY_TOKEN,
                "--login-max-failures",
                "0",
            ])
            .args(self.flags())
            .start(port);
        (p, Client::plain(port))
    }
}

fn login(c: &Client, user: &str, pin: Option<&str>) -> Resp {
    let body = match pin {
        Some(pin) => json!({ "username": user, "pin": pin }),
        None => json!({ "username": user }),
    };
    c.login_body(&body)
}

/// A refused login: status, code, the `retries` the body carries (if any), no token.
fn refused(r: &Resp, status: u16, code: &str, retries: Option<u64>) {
    r.expect_error(status, code);
    let v = r.json();
    assert!(!r.body.contains("session_token"), "{}", r.ctx());
    assert_eq!(
        v.get("retries").and_then(Value::as_u64),
        retries,
        "{}",
        r.ctx()
    );
}

#[test]
fn a_pin_user_logs_in_with_the_right_pin_only_and_uv_is_verified() {
    let k = PinRing::new(8);
    // Enrolment on a key whose PIN is set, with the PIN from a file (never argv).
    let e = k.enroll_alice_with_pin();
    assert!(e.stdout.contains("+presence+pin"), "{e:?}");
    let line = fs::read_to_string(k.creds()).unwrap();
    assert!(
        line.lines()
            .any(|l| l.starts_with("alice:") && l.ends_with(",es256,+presence+pin")),
        "{line}"
    );
    let (mut p, c) = k.proxy();
    // No PIN in the body.
    let r = login(&c, "alice", None);
    refused(&r, 401, "pin_required", None);
    assert!(r.body.contains("\\\"pin\\\""), "{}", r.ctx());
    // The right PIN: a session, and the signed authenticator data had UV set.
    let tok = login(&c, "alice", Some(PIN)).expect(200);
    assert!(tok.get("session_token").is_some());
    let log = p.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("gate: passed") && l.contains("uv=true")),
        "{log}"
    );
    // A wrong PIN: the tries the key has left.
    refused(
        &login(&c, "alice", Some(WRONG)),
        401,
        "pin_invalid",
        Some(7),
    );
    assert_eq!(key_file_pin_retries(&k.key()), 7);
    // The right PIN again gives the tries back.
    login(&c, "alice", Some(PIN)).expect(200);
    assert_eq!(key_file_pin_retries(&k.key()), 8);
    p.assert_running();
}

#[test]
fn bad_pin_values_are_a_precise_400_the_pin_is_never_logged_and_k_proxy_keeps_serving() {
    let k = PinRing::new(8);
    k.enroll_alice_with_pin();
    let (mut p, c) = k.proxy();
    let long = "Z".repeat(64);
    for (pin, why) in [
        (json!("q7x"), "at least 4 characters"),
        (json!(long), "at most 63 bytes"),
        (json!(4711), "not a string"),
        (json!(null), "null"),
        (json!(["4711"]), "not a string"),
        (json!("12\u{0}34"), "NUL"),
    ] {
        let r = c.login_body(&json!({ "username": "alice", "pin": pin }));
        r.expect_error(400, "invalid_pin");
        let v = r.json();
        let message = v["message"].as_str().unwrap();
        assert!(
            message.contains(why) && message.ends_with('.'),
            "{}",
            r.ctx()
        );
        c.healthz().expect(200);
    }
    login(&c, "alice", Some(PIN)).expect(200);
    refused(
        &login(&c, "alice", Some(WRONG)),
        401,
        "pin_invalid",
        Some(7),
    );
    login(&c, "alice", Some(PIN)).expect(200);
    // At debug level, nothing k_proxy wrote holds a PIN, right or wrong or refused.
    let log = p.logs();
    assert!(log.contains("DEBUG"), "not at debug level: {log}");
    for secret in [PIN, WRONG, "q7x", "ZZZZZZZZ"] {
        assert!(
            !log.contains(secret),
            "{secret:?} in k_proxy's output:\n{log}"
        );
    }
    p.assert_running();
}

#[test]
fn with_three_tries_left_k_proxy_does_not_try_and_a_blocked_pin_is_pin_blocked() {
    let k = PinRing::new(8);
    k.enroll_alice_with_pin();
    set_key_file_pin(&k.key(), PIN, 4);
    {
        let (mut p, c) = k.proxy();
        // Four left: tried (and wrong), three left.
        refused(
            &login(&c, "alice", Some(WRONG)),
            401,
            "pin_invalid",
            Some(3),
        );
        // Three left: not tried, even with the right PIN; the key keeps its three.
        let r = login(&c, "alice", Some(PIN));
        refused(&r, 401, "pin_retries_low", Some(3));
        assert!(r.body.contains("3 PIN tries left"), "{}", r.ctx());
        assert_eq!(key_file_pin_retries(&k.key()), 3);
        p.assert_running();
    }
    set_key_file_pin(&k.key(), PIN, 0);
    let (mut p, c) = k.proxy();
    refused(&login(&c, "alice", Some(PIN)), 401, "pin_blocked", Some(0));
    p.assert_running();
}

#[test]
fn a_key_with_a_pin_enrols_with_it_for_verification_and_without_it_for_presence() {
    let k = PinRing::new(8);
    // A +presence credential needs no PIN on a CTAP 2.1 key (makeCredUvNotRqd).
    k.enroll_ok(&["enroll", "--username", "bob"]);
    // +verification on a key without built-in UV: the PIN verifies the user.
    let e = k.enroll_ok(&[
        "enroll",
        "--username",
        "carol",
        "--require-uv",
        "--pin-file",
        &k.pin_file(PIN),
    ]);
    assert!(e.stdout.contains("+presence+verification"), "{e:?}");
    // A wrong PIN at enrolment: refused, with the key's word, and nothing written.
    let e = k.run(&[
        "enroll",
        "--username",
        "dave",
        "--require-pin",
        "--pin-file",
        &k.pin_file(WRONG),
    ]);
    assert!(!e.status.is_some_and(|s| s.success()), "{e:?}");
    assert!(e.stderr.contains("pin_invalid"), "{e:?}");
    assert!(
        !e.stderr.contains(WRONG) && !e.stdout.contains(WRONG),
        "{e:?}"
    );
    assert!(!fs::read_to_string(k.creds()).unwrap().contains("dave:"));
    // A PIN that is needed and no way to read it (no terminal here, no --pin-file).
    let e = k.run(&["enroll", "--username", "erin", "--require-pin"]);
    assert!(!e.status.is_some_and(|s| s.success()), "{e:?}");
    assert!(e.stderr.contains("--pin-file"), "{e:?}");

    let (mut p, c) = k.proxy();
    // bob needs no PIN; one sent anyway is not used (the tries stay at 7, where dave's
    // wrong PIN left them).
    login(&c, "bob", Some(WRONG)).expect(200);
    assert_eq!(key_file_pin_retries(&k.key()), 7);
    refused(&login(&c, "carol", None), 401, "pin_required", None);
    login(&c, "carol", Some(PIN)).expect(200);
    assert_eq!(key_file_pin_retries(&k.key()), 8);
    p.assert_running();
}

#[test]
fn three_wrong_pins_in_a_row_block_pins_until_the_key_is_powered_again() {
    let k = PinRing::new(8);
    k.enroll_alice_with_pin();
    {
        let (mut p, c) = k.proxy();
        refused(
            &login(&c, "alice", Some(WRONG)),
            401,
            "pin_invalid",
            Some(7),
        );
        refused(
            &login(&c, "alice", Some(WRONG)),
            401,
            "pin_invalid",
            Some(6),
        );
        // The third in a row: the key takes no PIN until it is powered again...
        let r = login(&c, "alice", Some(WRONG));
        refused(&r, 401, "pin_auth_blocked", None);
        assert!(r.body.contains("unplug it"), "{}", r.ctx());
        // ... not even the right one, and that costs no try.
        refused(
            &login(&c, "alice", Some(PIN)),
            401,
            "pin_auth_blocked",
            None,
        );
        assert_eq!(key_file_pin_retries(&k.key()), 5);
        p.assert_running();
    }
    // The software key is "powered again" with its process: the right PIN works and
    // gives all the tries back.
    let (mut p, c) = k.proxy();
    login(&c, "alice", Some(PIN)).expect(200);
    assert_eq!(key_file_pin_retries(&k.key()), 8);
    p.assert_running();
}
