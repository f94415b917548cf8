//! Session lifetime: expiry and logout, plus k_server durability.

use std::thread;
use std::time::Duration;

use chromecard_e2e::*;

#[test]
fn session_expires_after_ttl() {
    let (_server, sport) = start_server_plain();
    let (mut p, _port, c) = start_proxy_plain(
        &format!("http://127.0.0.1:{sport}"),
        &["--gate", "soft", "--session-ttl", "1"],
    );
    let r = c.login("alice");
    let v = r.expect(200);
    assert!(
        v.get("expires_in")
            .and_then(Value::as_u64)
            .is_some_and(|e| e <= 1),
        "expires_in must be <= --session-ttl 1{}",
        r.ctx()
    );
    let tok = v["session_token"].as_str().expect("token").to_string();
    let st = c.status(&tok);
    assert_eq!(
        st.expect(200).get("active"),
        Some(&json!(true)),
        "{}",
        st.ctx()
    );
    thread::sleep(Duration::from_millis(2200));
    c.status(&tok).expect_error(401, "expired");
    c.counter_post(&tok).expect_error(401, "expired");
    p.assert_running();
}

#[test]
fn default_ttl_is_300() {
    let dead = free_port();
    let (_p, _port, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{dead}"), &["--gate", "soft"]);
    let r = c.login("alice");
    let e = r.expect(200).get("expires_in").and_then(Value::as_u64);
    assert!(
        e.is_some_and(|e| (295..=300).contains(&e)),
        "default --session-ttl is 300: expires_in {e:?}{}",
        r.ctx()
    );
}

#[test]
fn logout_kills_token_at_once() {
    let (_server, sport) = start_server_plain();
    let (mut p, _port, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let first = c.login_ok("alice");
    // The newest session is used below (a design may let a new login supersede the old).
    let tok = c.login_ok("alice");
    assert_ne!(first, tok, "two logins must give two different tokens");
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);
    c.logout(&tok).expect(200);
    c.status(&tok).expect_error(401, "logged_out");
    c.counter_post(&tok).expect_error(401, "logged_out");
    c.counter_get(&tok).expect_error(401, "logged_out");
    c.logout(&tok).expect_error(401, "logged_out");
    // The rejected calls did not count.
    let n = counter_of(&c.counter_get(&c.login_ok("alice")));
    assert_eq!(n, 1, "requests with a dead token must not reach k_server");
    p.assert_running();
}

#[test]
fn k_server_counter_survives_sigkill() {
    let port = free_port();
    let state = tempfile::tempdir().expect("tempdir");
    let start = || {
        Spawn::k_server()
            .args(["--port", &port.to_string()])
            .env("CHROMECARD_PROXY_TOKEN", "env-token")
            .state_home(state.path())
            .start(port)
    };
    let k = Client::plain(port);
    let h = ["X-Proxy-Token: env-token", "X-Chromecard-User: alice"];

    let mut srv = start();
    // The token from the environment is the one in force.
    k.req(
        "POST",
        "/resource/counter",
        &["X-Proxy-Token: dev-proxy-token", h[1]],
        &[],
    )
    .expect_json_error(401, &["invalid_proxy_token"]);
    for i in 1..=5u64 {
        let r = k.req("POST", "/resource/counter", &h, &[]);
        assert_eq!(counter_of(&r), i, "increment {i}{}", r.ctx());
    }
    srv.kill(); // SIGKILL: no graceful shutdown, no flush on exit.
    assert!(
        state.path().join("chromecard").join("k_server").is_dir(),
        "k_server's default data dir must be $XDG_STATE_HOME/chromecard/k_server"
    );

    let _srv = start();
    let r = k.req("GET", "/resource/counter", &h, &[]);
    assert_eq!(
        counter_of(&r),
        5,
        "counter after SIGKILL + restart{}",
        r.ctx()
    );
    let r = k.req("POST", "/resource/counter", &h, &[]);
    assert_eq!(counter_of(&r), 6, "{}", r.ctx());
}
