//! A key left in sys-usb behind Qubes' CTAP proxy: the virtual key in its
//! `--qubes-ctap-proxy` mode behaves as qubes-ctap 2.0.7 does (CTAP2 commands
//! 0x07-0x0D refused, CANCEL ignored, no KEEPALIVE, CBOR answers framed as
//! CTAPHID_MSG), and k_proxy must enrol, log in, time out and recover through it.
//! Needs /dev/uhid: scripts/test-usb.sh runs these in a VM, one at a time.

use std::time::Duration;

use chromecard_e2e::*;

const QUBES: &str = "--qubes-ctap-proxy";

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn enrolment_and_the_runbook_through_qubes_ctap_proxy() {
    let usb = UsbKeyring::new();
    let key = usb.vkey("key", &[QUBES]);
    usb.enroll_ok("alice");
    let certs = Certs::generate();
    let flags = usb.gate_flags("10");
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (_server, _sport, mut proxy, client) = start_tls_chain_with(&certs, &flags);
    assert_runbook_passes(client.port(), &certs.ca(), "alice", &|| {
        format!("{}\n{}", proxy.logs(), key.log())
    });
    // The answers came framed as CTAPHID_MSG, and k_proxy read them as CBOR.
    assert!(
        key.log().contains("authenticatorGetAssertion"),
        "{}",
        key.log()
    );
    assert!(
        proxy.stderr().contains("framed as CTAPHID_MSG"),
        "{}",
        proxy.stderr()
    );
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn a_login_nobody_touches_fails_closed_at_the_deadline_and_the_next_waits_for_the_pending_call() {
    let usb = UsbKeyring::new();
    // The key behind the proxy gives up on the second touch after 4 s; the proxy ignores CANCEL.
    let key = usb.vkey(
        "key",
        &[QUBES, "--untouched", "2", "--touch-limit-ms", "4000"],
    );
    usb.enroll_ok("alice");
    let (mut proxy, c) = usb.proxy("2", &["--device-wait", "10"]);
    let r = c.login("alice");
    r.expect_error(401, "touch_timeout");
    assert!(!r.body.contains("session_token"), "{}", r.ctx());
    let took = last_login_took(&proxy);
    assert!(
        took < Duration::from_secs(3),
        "--touch-timeout 2 refused after {took:?}: the deadline must hold without CANCEL"
    );
    // The next login waits for the device until the pending request ends (about 4 s after
    // it began), then passes.
    c.login_ok("alice");
    let next = last_login_took(&proxy);
    eprintln!("first login refused after {took:?}; the next passed after {next:?}");
    assert!(
        next > Duration::from_millis(500),
        "the next login did not wait for the pending call ({next:?})"
    );
    assert!(key.log().contains("CANCEL ignored"), "{}", key.log());
    assert!(
        key.log().contains("nobody touched the key"),
        "{}",
        key.log()
    );
    proxy.assert_running();
}

#[test]
#[ignore = "needs /dev/uhid: scripts/test.sh runs it in a VM"]
fn touch_level_falls_back_when_the_proxy_refuses_selection() {
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
    let key = VKey::start(&[QUBES]);
    c.login_ok("anyone");
    assert!(
        key.log().contains("authenticatorSelection"),
        "{}",
        key.log()
    );
    assert!(
        key.log().contains("authenticatorMakeCredential"),
        "{}",
        key.log()
    );
    assert!(
        proxy.stderr().contains("refuses authenticatorSelection"),
        "{}",
        proxy.stderr()
    );
    proxy.assert_running();
}
