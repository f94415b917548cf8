//! The browser page (issue 17) without a browser: every page asset carries the strict
//! Content-Security-Policy and the other security headers and is never cached; the Host
//! allow-list applies to the page as to the API; the page's own endpoints (config, ending
//! one session) behave; nothing with session data may be stored by a cache.

use chromecard_e2e::*;

const ASSETS: [(&str, &str); 5] = [
    ("/", "text/html"),
    ("/ui/", "text/html"),
    ("/ui/app.js", "text/javascript"),
    ("/ui/style.css", "text/css"),
    ("/ui/config.json", "application/json"),
];

fn plain_chain(extra: &[&str]) -> (Proc, Proc, Client) {
    let (server, sport) = start_server_plain();
    let mut args = vec!["--gate", "soft"];
    args.extend_from_slice(extra);
    let (proxy, _pport, client) = start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &args);
    (server, proxy, client)
}

fn assert_secure_headers(r: &Resp, content_type: &str) {
    assert_eq!(r.status, 200, "{}", r.ctx());
    let csp = r.header("content-security-policy").unwrap_or("");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "base-uri 'none'",
    ] {
        assert!(
            csp.contains(directive),
            "CSP lacks {directive:?}{}",
            r.ctx()
        );
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval") && !csp.contains('*'),
        "{}",
        r.ctx()
    );
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{}",
        r.ctx()
    );
    assert_eq!(
        r.header("referrer-policy"),
        Some("no-referrer"),
        "{}",
        r.ctx()
    );
    assert_eq!(r.header("x-frame-options"), Some("DENY"), "{}", r.ctx());
    assert_eq!(r.header("cache-control"), Some("no-store"), "{}", r.ctx());
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with(content_type),
        "content type {ct:?}{}",
        r.ctx()
    );
    assert!(r.header("set-cookie").is_none(), "{}", r.ctx());
}

#[test]
fn every_page_asset_carries_the_security_headers_and_is_never_cached() {
    let (_server, _proxy, c) = plain_chain(&["--touch-timeout", "12", "--idle-timeout", "90"]);
    for (path, content_type) in ASSETS {
        let r = c.req("GET", path, &[], &[]);
        assert_secure_headers(&r, content_type);
    }
    // The page references only its own assets, and no inline script or style.
    let page = c.req("GET", "/", &[], &[]).body;
    assert!(
        page.contains(r#"<script src="/ui/app.js" defer></script>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"<link rel="stylesheet" href="/ui/style.css">"#),
        "{page}"
    );
    assert!(!page.contains("<script>") && !page.contains("<style") && !page.contains("style=\""));
    // What the page counts down from.
    let config = c.req("GET", "/ui/config.json", &[], &[]).expect(200);
    assert_eq!(config["touch_timeout"], json!(12));
    assert_eq!(config["session_ttl"], json!(300));
    assert_eq!(config["idle_timeout"], json!(90));
    assert_eq!(config["ws_ticket_ttl"], json!(30));
    // Only GET; unknown assets are 404 JSON.
    let r = c.req("POST", "/", &[], &[]);
    r.expect_json_error(405, &["method_not_allowed"]);
    assert_eq!(r.header("allow"), Some("GET"));
    c.req("GET", "/ui/nothing.js", &[], &[])
        .expect_json_error(404, &["not_found"]);
    c.req("GET", "/ui/../ui/app.js", &[], &["--path-as-is"])
        .expect_json_error(404, &["not_found"]);
}

#[test]
fn the_page_is_refused_for_a_host_k_proxy_does_not_serve() {
    let (_server, _proxy, c) = plain_chain(&[]);
    for (path, _) in ASSETS {
        c.req("GET", path, &["Host: attacker.example:8770"], &[])
            .expect_json_error(421, &["host_not_allowed"]);
        // The loopback names pass with any port (qvm-connect-tcp forwards another port).
        assert_eq!(
            c.req("GET", path, &["Host: localhost:9771"], &[]).status,
            200
        );
    }
    let tok = c.login_ok("alice");
    c.req(
        "POST",
        "/session/end",
        &[
            "Host: attacker.example",
            &Client::bearer(&tok),
            "Content-Type: application/json",
        ],
        &["--data-binary", r#"{"session_id":"0123456789abcdef"}"#],
    )
    .expect_json_error(421, &["host_not_allowed"]);
}

/// The cookie flow the page uses: every answer carrying session data says no-store, and a
/// session of the user can be ended by its id (another user's cannot).
#[test]
fn session_answers_are_not_cached_and_one_session_can_be_ended_by_id() {
    let (_server, _proxy, c) = plain_chain(&[]);
    let login = c.req(
        "POST",
        "/session/login",
        &["Content-Type: application/json"],
        &["--data-binary", r#"{"username":"alice","cookie":true}"#],
    );
    let v = login.expect(200);
    assert_eq!(
        login.header("cache-control"),
        Some("no-store"),
        "{}",
        login.ctx()
    );
    let cookie_line = login.header("set-cookie").expect("cookie").to_string();
    let cookie = format!("Cookie: {}", cookie_line.split(';').next().unwrap());
    let csrf = "X-Chromecard-CSRF: 1";
    let origin = format!("Origin: {}", c.base);
    let mine = v["session_id"].as_str().unwrap().to_string();
    for (method, path) in [
        ("POST", "/session/status"),
        ("GET", "/session/list"),
        ("GET", "/resource/counter"),
        ("GET", "/resource/secrets"),
    ] {
        let r = c.req(method, path, &[&cookie, csrf, &origin], &[]);
        assert_eq!(r.status, 200, "{}", r.ctx());
        // k_proxy's own answers and k_server's forwarded ones alike.
        for (name, value) in [
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("cross-origin-resource-policy", "same-origin"),
        ] {
            assert_eq!(r.header(name), Some(value), "{method} {path}{}", r.ctx());
        }
    }
    // A second session of alice and one of bob.
    let other = c.login_ok("alice");
    let bob = c.login_ok("bob");
    let other_id = c.status(&other).expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob_id = c.status(&bob).expect(200)["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let end = |id: &str, extra: &[&str]| {
        let body = json!({ "session_id": id }).to_string();
        let mut headers = vec![cookie.as_str(), "Content-Type: application/json"];
        headers.extend_from_slice(extra);
        c.req("POST", "/session/end", &headers, &["--data-binary", &body])
    };
    // Cookie without the CSRF header: refused.
    end(&other_id, &[]).expect_json_error(403, &["csrf_check_failed"]);
    // Another user's session is not found, and stays live.
    end(&bob_id, &[csrf, &origin]).expect_json_error(404, &["session_not_found"]);
    c.status(&bob).expect(200);
    let r = end(&other_id, &[csrf, &origin]);
    let v = r.expect(200);
    assert_eq!(v["current"], json!(false));
    c.status(&other).expect_error(401, "logged_out");
    // Ending one's own session.
    let v = end(&mine, &[csrf, &origin]).expect(200);
    assert_eq!(v["current"], json!(true));
    c.req("POST", "/session/status", &[&cookie, csrf], &[])
        .expect_error(401, "logged_out");
    end(&mine, &[csrf]).expect_error(401, "logged_out");
}

/// A browser sends every cookie of the host in one header, whatever port set it: another
/// application's cookie with UTF-8 in its value (as browsers send it, raw) must not hide
/// the session cookie (it did: the page fell back to its login with `missing_token`).
#[test]
fn a_neighbour_cookie_with_utf8_leaves_the_session_cookie_usable() {
    let (_server, mut proxy, c) = plain_chain(&[]);
    let login = c.req(
        "POST",
        "/session/login",
        &["Content-Type: application/json"],
        &["--data-binary", r#"{"username":"alice","cookie":true}"#],
    );
    login.expect(200);
    let cookie_line = login.header("set-cookie").expect("cookie").to_string();
    let ours = cookie_line.split(';').next().unwrap();
    let header = format!("Cookie: y=\u{e9}t\u{e9}; {ours}; z=\u{2603}");
    let v = c.req("GET", "/session/list", &[&header], &[]).expect(200);
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(1), "{v}");
    proxy.assert_running();
}
