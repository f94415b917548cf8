//! The login gate: fails closed (no key, no touch, busy device).

use std::thread;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

/// Asserts a refused login: exact status, one of `codes`, and no session token.
fn assert_refused(r: &Resp, status: u16, codes: &[&str]) {
    r.expect_error_in(status, codes);
    assert!(
        !r.body.contains("session_token"),
        "a refused login must not carry a session_token{}",
        r.ctx()
    );
}

/// A k_proxy with no reachable upstream needed (login only).
fn proxy(extra: &[&str]) -> (Proc, Client) {
    let dead = free_port();
    let (p, _port, c) = start_proxy_plain(&format!("http://127.0.0.1:{dead}"), extra);
    (p, c)
}

#[test]
fn soft_gate_no_key_refuses_login() {
    let (mut p, c) = proxy(&["--gate", "soft", "--soft-behavior", "no-key"]);
    assert_refused(&c.login("alice"), 401, &["no_key"]);
    // Still refusing on a second try, and still serving.
    assert_refused(&c.login("alice"), 401, &["no_key"]);
    c.healthz().expect(200);
    p.assert_running();
}

#[test]
fn soft_gate_present_grants_login() {
    // Positive control for the gate tests.
    let (mut p, c) = proxy(&["--gate", "soft", "--soft-behavior", "present"]);
    let tok = c.login_ok("alice");
    c.status(&tok).expect(200);
    p.assert_running();
}

#[test]
fn fido2_gate_without_a_key_refuses_login() {
    // This machine has no FIDO2 key attached. Explicit --gate fido2 ...
    let (mut p, c) = proxy(&[
        "--gate",
        "fido2",
        "--touch-timeout",
        "2",
        "--device-wait",
        "1",
    ]);
    // no_key, whose message says to plug the key in: not a generic device error.
    assert_refused(&c.login("alice"), 401, &["no_key"]);
    p.assert_running();
    // ... and the default gate (no --gate flag) must be the real key, not soft.
    let (mut p, c) = proxy(&["--touch-timeout", "2", "--device-wait", "1"]);
    assert_refused(&c.login("alice"), 401, &["no_key"]);
    p.assert_running();
}

#[test]
fn soft_gate_no_touch_times_out() {
    let (mut p, c) = proxy(&[
        "--gate",
        "soft",
        "--soft-behavior",
        "no-touch",
        "--touch-timeout",
        "2",
        "--device-wait",
        "1",
    ]);
    let t = Instant::now();
    let r = c.login("alice");
    let took = t.elapsed();
    assert_refused(&r, 401, &["touch_timeout"]);
    assert!(
        took < Duration::from_millis(3500),
        "touch_timeout with --touch-timeout 2 took {took:?} (limit 3.5 s){}",
        r.ctx()
    );
    assert!(
        took >= Duration::from_millis(1500),
        "touch_timeout came after only {took:?}: the gate did not wait for a touch{}",
        r.ctx()
    );
    p.assert_running();
}

#[test]
fn soft_gate_concurrent_logins_one_device_busy() {
    let (mut p, c) = proxy(&[
        "--gate",
        "soft",
        "--soft-behavior",
        "no-touch",
        "--touch-timeout",
        "2",
        "--device-wait",
        "1",
    ]);
    let c1 = c.clone();
    let first = thread::spawn(move || c1.login("alice"));
    wait_for_key_operation(&p, 1);
    let c2 = c.clone();
    let second = thread::spawn(move || c2.login("bob"));
    let mut rs = [
        first.join().expect("thread"),
        second.join().expect("thread"),
    ];
    rs.sort_by_key(|r| r.status);
    let summary = format!("{}\n---{}", rs[0].ctx(), rs[1].ctx());
    assert_eq!(
        (rs[0].status, rs[1].status),
        (401, 503),
        "two concurrent logins on one device: expected one 401 touch_timeout and one 503 device_busy\n{summary}"
    );
    assert_refused(&rs[0], 401, &["touch_timeout"]);
    assert_refused(&rs[1], 503, &["device_busy"]);
    // The busy answer came after the device wait, not after the whole touch timeout.
    assert!(
        rs[1].elapsed < Duration::from_millis(2500),
        "device_busy should come after ~--device-wait 1 s, took {:?}",
        rs[1].elapsed
    );
    p.assert_running();
}
