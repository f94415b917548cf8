//! Session lifecycle through the real binaries: rotation, supersede, logout-all, listing,
//! scopes, cookies with their CSRF defence, idle expiry, and the audit log.
//! (Exact expiry boundaries are unit-tested with an injectable clock in crates/session.)

use std::thread;
use std::time::Duration;

use chromecard_e2e::*;

/// A plain-HTTP chain with extra k_proxy flags.
fn chain(extra: &[&str]) -> (Proc, Proc, Client) {
    let (server, sport) = start_server_plain();
    let mut args = vec!["--gate", "soft"];
    args.extend_from_slice(extra);
    let (proxy, _port, client) = start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &args);
    (server, proxy, client)
}

fn login_with(c: &Client, body: &str) -> Resp {
    c.req(
        "POST",
        "/session/login",
        &["Content-Type: application/json"],
        &["--data-binary", body],
    )
}

fn token_of(r: &Resp) -> String {
    r.expect(200)["session_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no session_token{}", r.ctx()))
        .to_owned()
}

/// The token a cookie login or refresh set: in the HttpOnly cookie only, never the body.
fn cookie_token_of(r: &Resp) -> String {
    let body = r.expect(200);
    assert!(
        body.get("session_token").is_none() && body["cookie"] == true,
        "with a cookie the token must travel in it alone{}",
        r.ctx()
    );
    r.header("set-cookie")
        .and_then(|line| line.strip_prefix("chromecard_session="))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie set{}", r.ctx()))
        .to_owned()
}

fn refresh(c: &Client, tok: &str) -> Resp {
    c.req("POST", "/session/refresh", &[&Client::bearer(tok)], &[])
}

#[test]
fn refresh_rotates_the_token_and_the_old_one_says_superseded() {
    let (_s, _p, c) = chain(&[]);
    let first = c.login_ok("alice");
    let r = refresh(&c, &first);
    let second = token_of(&r);
    assert_ne!(first, second);
    let expires = r.json()["expires_in"].as_u64().unwrap();
    assert!(
        expires <= 300,
        "refresh must not extend the lifetime{}",
        r.ctx()
    );
    c.status(&first).expect_error(401, "superseded");
    c.counter_post(&first).expect_error(401, "superseded");
    refresh(&c, &first).expect_error(401, "superseded");
    c.counter_post(&second).expect(200);
}

#[test]
fn supersede_policy_ends_the_users_older_sessions_only() {
    let (_s, _p, c) = chain(&["--on-new-login", "supersede"]);
    let old = c.login_ok("alice");
    let bob = c.login_ok("bob");
    let new = c.login_ok("alice");
    c.status(&old).expect_error(401, "superseded");
    c.status(&new).expect(200);
    c.status(&bob).expect(200);
}

#[test]
fn keep_policy_is_the_default() {
    let (_s, _p, c) = chain(&[]);
    let old = c.login_ok("alice");
    let _new = c.login_ok("alice");
    c.status(&old).expect(200);
}

#[test]
fn list_shows_sessions_by_public_id_and_logout_all_ends_them() {
    let (_s, _p, c) = chain(&[]);
    let a1 = c.login_ok("alice");
    let a2 = c.login_ok("alice");
    let bob = c.login_ok("bob");

    let r = c.req("GET", "/session/list", &[&Client::bearer(&a2)], &[]);
    let v = r.expect(200);
    assert_eq!(v["username"], "alice");
    let sessions = v["sessions"].as_array().expect("sessions array");
    assert_eq!(sessions.len(), 2, "{}", r.ctx());
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    for s in sessions {
        for field in [
            "session_id",
            "created",
            "last_seen",
            "expires",
            "client_address",
        ] {
            assert!(s.get(field).is_some(), "missing {field}{}", r.ctx());
        }
        assert_eq!(s["client_address"], "127.0.0.1");
    }
    for tok in [&a1, &a2, &bob] {
        assert!(
            !r.body.contains(tok.as_str()),
            "the listing leaked a token{}",
            r.ctx()
        );
    }

    let r = c.req(
        "POST",
        "/session/logout",
        &[&Client::bearer(&a1), "Content-Type: application/json"],
        &["--data-binary", r#"{"all":true}"#],
    );
    assert_eq!(r.expect(200)["sessions_ended"], 2, "{}", r.ctx());
    c.status(&a1).expect_error(401, "logged_out");
    c.status(&a2).expect_error(401, "logged_out");
    c.status(&bob).expect(200);
}

#[test]
fn scope_limits_which_resources_a_session_reaches() {
    let (_s, _p, c) = chain(&[]);
    let tok = token_of(&login_with(
        &c,
        r#"{"username":"alice","scope":["counter"]}"#,
    ));
    c.counter_post(&tok).expect(200);
    let r = c.req("GET", "/resource/whoami", &[&Client::bearer(&tok)], &[]);
    r.expect_json_error(403, &["insufficient_scope"]);
    let v = c.status(&tok).expect(200);
    assert_eq!(v["scope"], json!(["counter"]));
    login_with(&c, r#"{"username":"alice","scope":["Counter!"]}"#)
        .expect_error(400, "invalid_scope");
}

#[test]
fn a_scoped_session_manages_only_itself() {
    let (_s, _p, c) = chain(&[]);
    let full = c.login_ok("alice");
    let scoped = token_of(&login_with(
        &c,
        r#"{"username":"alice","scope":["counter"]}"#,
    ));
    let json_post = |tok: &str, path: &str, body: &str| {
        c.req(
            "POST",
            path,
            &[&Client::bearer(tok), "Content-Type: application/json"],
            &["--data-binary", body],
        )
    };
    let listing = c
        .req("GET", "/session/list", &[&Client::bearer(&full)], &[])
        .expect(200);
    let id_of = |current: bool| {
        listing["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["current"] == json!(current))
            .unwrap()["session_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (full_id, scoped_id) = (id_of(true), id_of(false));

    // The user's other sessions are out of its reach...
    c.req("GET", "/session/list", &[&Client::bearer(&scoped)], &[])
        .expect_json_error(403, &["insufficient_scope"]);
    json_post(&scoped, "/session/logout", r#"{"all":true}"#)
        .expect_json_error(403, &["insufficient_scope"]);
    json_post(
        &scoped,
        "/session/end",
        &format!(r#"{{"session_id":"{full_id}"}}"#),
    )
    .expect_json_error(403, &["insufficient_scope"]);
    c.status(&full).expect(200);
    // ...while it still sees and ends itself, and a session without a scope ends others.
    c.status(&scoped).expect(200);
    let r = json_post(
        &scoped,
        "/session/end",
        &format!(r#"{{"session_id":"{scoped_id}"}}"#),
    );
    assert_eq!(r.expect(200)["current"], true, "{}", r.ctx());
    c.status(&scoped).expect_error(401, "logged_out");
    let scoped = token_of(&login_with(
        &c,
        r#"{"username":"alice","scope":["counter"]}"#,
    ));
    let r = json_post(&full, "/session/logout", r#"{"all":true}"#);
    assert_eq!(r.expect(200)["sessions_ended"], 2, "{}", r.ctx());
    c.status(&scoped).expect_error(401, "logged_out");
}

/// `POST path` with `token`, naming `id` as the session it expects, as the page does.
fn naming_session(c: &Client, path: &str, token: &str, id: &str) -> Resp {
    c.req(
        "POST",
        path,
        &[
            &Client::bearer(token),
            &format!("X-Chromecard-Session: {id}"),
        ],
        &[],
    )
}

/// A request that names the session it expects (as the page does) is refused when its
/// credential names another: a cookie replaced under an open page must not carry the
/// page's requests into that session.
#[test]
fn a_request_expecting_another_session_is_refused() {
    let (_s, _p, c) = chain(&[]);
    let alice = token_of(&login_with(&c, r#"{"username":"alice"}"#));
    let bob = login_with(&c, r#"{"username":"bob"}"#);
    let bob_id = bob.expect(200)["session_id"].as_str().unwrap().to_owned();
    let alice_id = c.status(&alice).expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let with = |id: &str| naming_session(&c, "/resource/counter", &alice, id);
    let before = counter_of(&c.counter_get(&alice));
    with(&alice_id).expect(200);
    with(&bob_id).expect_error(401, "session_mismatch");
    with("not-an-id").expect_error(401, "session_mismatch");
    // Refused before it reached k_server: only the first increment counted.
    assert_eq!(counter_of(&c.counter_get(&alice)), before + 1);
    // The header is optional, and the session is not ended by a mismatch.
    c.status(&alice).expect(200);
}

/// A request refused for naming another session is no use of the session its credential
/// names: a page clicking under a planted cookie does not keep that session alive.
#[test]
fn a_mismatched_request_does_not_restart_the_idle_clock() {
    let (_s, _p, c) = chain(&["--idle-timeout", "3"]);
    let login_at = std::time::Instant::now();
    let alice = token_of(&login_with(&c, r#"{"username":"alice"}"#));
    let bob = login_with(&c, r#"{"username":"bob"}"#);
    let bob_id = bob.expect(200)["session_id"].as_str().unwrap().to_owned();
    thread::sleep(Duration::from_millis(1500));
    naming_session(&c, "/session/status", &alice, &bob_id).expect_error(401, "session_mismatch");
    // 3 s after alice's login (were the refused request a use: 1.5 s short of her limit).
    thread::sleep(
        Duration::from_secs(3).saturating_sub(login_at.elapsed()) + Duration::from_millis(300),
    );
    c.status(&alice).expect_error(401, "idle_timeout");
}

#[test]
fn idle_sessions_end_with_idle_timeout() {
    // 2 s idle limit, a use every 500 ms: 1.5 s of margin for a slow curl on a loaded
    // machine. Six uses take over 3 s, past bob's limit.
    let (_s, _p, c) = chain(&["--idle-timeout", "2"]);
    let busy = c.login_ok("alice");
    let idle = c.login_ok("bob");
    for _ in 0..6 {
        thread::sleep(Duration::from_millis(500));
        c.status(&busy).expect(200);
    }
    c.status(&idle).expect_error(401, "idle_timeout");
}

#[test]
fn cookie_login_over_tls_sets_an_exact_session_cookie_with_csrf_defence() {
    let certs = Certs::generate();
    let (_server, _sport, _proxy, c) = start_tls_chain(&certs);
    let r = login_with(&c, r#"{"username":"alice","cookie":true}"#);
    let tok = cookie_token_of(&r);
    let set_cookie = r.header("set-cookie").unwrap_or_default().to_owned();
    assert_eq!(
        set_cookie,
        format!("chromecard_session={tok}; Path=/; HttpOnly; SameSite=Strict; Secure"),
        "{}",
        r.ctx()
    );
    let cookie = format!("Cookie: chromecard_session={tok}");
    let origin = c.base.clone();
    let host = origin.trim_start_matches("https://").to_owned();

    // Reads need no CSRF header.
    c.req("GET", "/resource/counter", &[&cookie], &[])
        .expect(200);
    // State-changing requests do, and must not come from another site.
    c.req("POST", "/resource/counter", &[&cookie], &[])
        .expect_json_error(403, &["csrf_check_failed"]);
    c.req(
        "POST",
        "/resource/counter",
        &[
            &cookie,
            "X-Chromecard-CSRF: 1",
            "Origin: https://evil.example",
        ],
        &[],
    )
    .expect_json_error(403, &["csrf_check_failed"]);
    c.req(
        "POST",
        "/resource/counter",
        &[
            &cookie,
            "X-Chromecard-CSRF: 1",
            "Sec-Fetch-Site: cross-site",
        ],
        &[],
    )
    .expect_json_error(403, &["csrf_check_failed"]);
    let same_origin = format!("Origin: https://{host}");
    c.req(
        "POST",
        "/resource/counter",
        &[&cookie, "X-Chromecard-CSRF: 1", &same_origin],
        &[],
    )
    .expect(200);

    // A refresh by cookie sets the new token as the cookie, again not in the body, and
    // the old cookie is dead.
    let r = c.req(
        "POST",
        "/session/refresh",
        &[&cookie, "X-Chromecard-CSRF: 1", &same_origin],
        &[],
    );
    let renewed = cookie_token_of(&r);
    assert_ne!(renewed, tok);
    c.req("GET", "/resource/counter", &[&cookie], &[])
        .expect_error(401, "superseded");
    let cookie = format!("Cookie: chromecard_session={renewed}");

    // Logout by cookie clears it, and the token is dead.
    let r = c.req(
        "POST",
        "/session/logout",
        &[&cookie, "X-Chromecard-CSRF: 1"],
        &[],
    );
    r.expect(200);
    let cleared = r.header("set-cookie").unwrap_or_default();
    assert!(
        cleared.starts_with("chromecard_session=;") && cleared.contains("Max-Age=0"),
        "{}",
        r.ctx()
    );
    c.req("GET", "/resource/counter", &[&cookie], &[])
        .expect_error(401, "logged_out");
}

#[test]
fn plain_http_cookie_has_no_secure_attribute() {
    let (_s, _p, c) = chain(&[]);
    let r = login_with(&c, r#"{"username":"alice","cookie":true}"#);
    let tok = cookie_token_of(&r);
    assert_eq!(
        r.header("set-cookie").unwrap_or_default(),
        format!("chromecard_session={tok}; Path=/; HttpOnly; SameSite=Strict")
    );
    let plain = c.login("bob");
    assert!(
        plain.header("set-cookie").is_none(),
        "no cookie unless asked{}",
        plain.ctx()
    );
}

#[test]
fn audit_lines_for_every_event_and_no_token_in_any_log_line() {
    let (_server, proxy, c) = chain(&["--on-new-login", "supersede", "--session-ttl", "2"]);
    let mut tokens = Vec::new();
    let first = c.login_ok("alice");
    let second = c.login_ok("alice"); // supersedes `first`
    let r = refresh(&c, &second);
    let third = token_of(&r);
    c.counter_post(&third).expect(200);
    let fourth = c.login_ok("bob");
    c.logout(&fourth).expect(200);
    let expiring = c.login_ok("carol");
    tokens.extend([first, second, third, fourth, expiring.clone()]);
    // The sweeper (period 1 s at --session-ttl 2) reports carol's expiry.
    assert!(
        wait_until(Duration::from_secs(20), || proxy.stderr().lines().any(
            |l| l.contains("event=\"expired\"") && l.contains("user=carol")
        )),
        "the sweeper did not report carol's expiry within 20 s\n{}",
        proxy.logs()
    );
    c.status(&expiring).expect_error(401, "expired");

    // A refused login needs a gate that refuses: a second k_proxy with no key.
    let (refusing_proxy, _port, refusing) = start_proxy_plain(
        "http://127.0.0.1:9",
        &["--gate", "soft", "--soft-behavior", "no-key"],
    );
    refusing.login("mallory").expect_error(401, "no_key");

    let logs = proxy.logs();
    for event in ["login", "superseded", "refresh", "logout", "expired"] {
        assert!(
            logs.contains(&format!("event=\"{event}\"")),
            "no audit line for {event}:\n{logs}"
        );
    }
    let refused_logs = refusing_proxy.logs();
    assert!(
        refused_logs.contains("event=\"login_refused\""),
        "no audit line for a refused login:\n{refused_logs}"
    );
    for line in logs.lines().filter(|l| l.contains("audit")) {
        assert!(line.contains("user="), "audit line without user: {line}");
        assert!(
            line.contains("session="),
            "audit line without session id: {line}"
        );
    }
    for tok in &tokens {
        assert!(
            !logs.contains(tok.as_str()),
            "a token reached the log:\n{logs}"
        );
    }
}

#[test]
fn session_store_keeps_sessions_across_a_k_proxy_restart() {
    let (_server, sport) = start_server_plain();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessions.redb");
    let upstream = format!("http://127.0.0.1:{sport}");
    let flags = ["--gate", "soft", "--session-store", file.to_str().unwrap()];

    let (mut proxy, _port, c) = start_proxy_plain(&upstream, &flags);
    let kept = c.login_ok("alice");
    let ended = c.login_ok("bob");
    c.logout(&ended).expect(200);
    let first = counter_of(&c.counter_post(&kept));
    proxy.kill(); // SIGKILL: nothing is flushed at exit, so what survives was on disk

    let (_proxy, _port, c) = start_proxy_plain(&upstream, &flags);
    let second = counter_of(&c.counter_post(&kept));
    assert_eq!(second, first + 1, "the session survived the restart");
    // A logged-out session stays dead (it is simply unknown after the restart).
    c.status(&ended).expect_error(401, "invalid_token");
    let file_bytes = std::fs::read(&file).unwrap();
    assert!(
        !String::from_utf8_lossy(&file_bytes).contains(&kept),
        "the session store must hold hashes, never tokens"
    );
}
