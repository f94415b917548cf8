//! Malformed requests against k_proxy, table-driven: each case names the exact status
//! and JSON error code. After every case k_proxy must still serve (healthz 200, a full
//! login + counter increment works, and the counter moved by exactly one: no rejected
//! request reached k_server's counter).

use std::fs;

use chromecard_e2e::*;

const JSON_CT: &str = "Content-Type: application/json";

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    /// `{TOK}` is replaced by a valid session token.
    headers: Vec<String>,
    body: Option<String>,
    extra: Vec<&'static str>,
    status: u16,
    /// Acceptable error codes; empty for a success case.
    codes: &'static [&'static str],
    /// For 405: a method that the `Allow` header must list.
    allow: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    headers: &[&str],
    body: Option<&str>,
    status: u16,
    codes: &'static [&'static str],
) -> Case {
    Case {
        name,
        method,
        path,
        headers: headers.iter().map(|h| h.to_string()).collect(),
        body: body.map(str::to_string),
        extra: Vec::new(),
        status,
        codes,
        allow: None,
    }
}

fn login(name: &'static str, body: &str, status: u16, codes: &'static [&'static str]) -> Case {
    case(
        name,
        "POST",
        "/session/login",
        &[JSON_CT],
        Some(body),
        status,
        codes,
    )
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // --- login body ---
        login("bad json", r#"{"username":"#, 400, &["invalid_json"]),
        login("empty body", "", 400, &["invalid_json"]),
        login("json array", r#"["alice"]"#, 400, &["invalid_body"]),
        login("json string", r#""alice""#, 400, &["invalid_body"]),
        login("missing username", "{}", 400, &["missing_username"]),
        // The contract does not say whether null is "missing" or "wrong type".
        login(
            "username null",
            r#"{"username":null}"#,
            400,
            &["missing_username", "invalid_body"],
        ),
        login(
            "username number",
            r#"{"username":42}"#,
            400,
            &["invalid_body"],
        ),
        login(
            "username object",
            r#"{"username":{"a":1}}"#,
            400,
            &["invalid_body"],
        ),
        login(
            "empty username",
            r#"{"username":""}"#,
            400,
            &["invalid_username"],
        ),
        login(
            "username 65 chars",
            &format!(r#"{{"username":"{}"}}"#, "a".repeat(65)),
            400,
            &["invalid_username"],
        ),
        login(
            "username with space",
            r#"{"username":"ali ce"}"#,
            400,
            &["invalid_username"],
        ),
        login(
            "username with slash",
            r#"{"username":"al/ice"}"#,
            400,
            &["invalid_username"],
        ),
        login(
            "username unicode",
            r#"{"username":"alïce"}"#,
            400,
            &["invalid_username"],
        ),
        login(
            "username leading dot",
            r#"{"username":".alice"}"#,
            400,
            &["invalid_username"],
        ),
        login(
            "username with newline escape",
            r#"{"username":"alice\nX-Chromecard-User: root"}"#,
            400,
            &["invalid_username"],
        ),
        login(
            "unknown field",
            r#"{"username":"alice","admin":true}"#,
            400,
            &["invalid_body"],
        ),
        case(
            "text/plain content type",
            "POST",
            "/session/login",
            &["Content-Type: text/plain"],
            Some(r#"{"username":"alice"}"#),
            415,
            &["unsupported_media_type"],
        ),
        case(
            "no content type",
            "POST",
            "/session/login",
            &["Content-Type:"],
            Some(r#"{"username":"alice"}"#),
            415,
            &["unsupported_media_type"],
        ),
        login(
            "login body 5 KiB",
            &format!(r#"{{"username":"alice","pad":"{}"}}"#, "x".repeat(5 * 1024)),
            413,
            &["body_too_large"],
        ),
        // --- positive boundaries (must NOT be rejected) ---
        login(
            "username 64 chars ok",
            &format!(r#"{{"username":"{}"}}"#, "b".repeat(64)),
            200,
            &[],
        ),
        login("username a.b_c-9 ok", r#"{"username":"a.b_c-9"}"#, 200, &[]),
        case(
            "json content type with charset ok",
            "POST",
            "/session/login",
            &["Content-Type: application/json; charset=utf-8"],
            Some(r#"{"username":"alice"}"#),
            200,
            &[],
        ),
        // --- credentials ---
        case(
            "status without Authorization",
            "POST",
            "/session/status",
            &[],
            None,
            401,
            &["missing_token"],
        ),
        case(
            "logout without Authorization",
            "POST",
            "/session/logout",
            &[],
            None,
            401,
            &["missing_token"],
        ),
        case(
            "resource without Authorization",
            "POST",
            "/resource/counter",
            &[],
            None,
            401,
            &["missing_token"],
        ),
        case(
            "Basic authorization",
            "POST",
            "/session/status",
            &["Authorization: Basic YWxpY2U6c2VjcmV0"],
            None,
            401,
            &["malformed_authorization"],
        ),
        case(
            "Bearer with empty token",
            "POST",
            "/session/status",
            &["Authorization: Bearer "],
            None,
            401,
            &["malformed_authorization"],
        ),
        case(
            "Bearer token with bad characters",
            "POST",
            "/session/status",
            &["Authorization: Bearer abc$def%ghi;x"],
            None,
            401,
            &["malformed_authorization"],
        ),
        case(
            "two Authorization headers (both valid)",
            "POST",
            "/session/status",
            &["Authorization: Bearer {TOK}", "Authorization: Bearer {TOK}"],
            None,
            401,
            &["malformed_authorization"],
        ),
        case(
            "unknown well-formed token (status)",
            "POST",
            "/session/status",
            &["Authorization: Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
            None,
            401,
            &["invalid_token"],
        ),
        case(
            "unknown well-formed token (resource)",
            "POST",
            "/resource/counter",
            &["Authorization: Bearer Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"],
            None,
            401,
            &["invalid_token"],
        ),
        // --- routing ---
        case(
            "unknown path",
            "GET",
            "/nope",
            &[],
            None,
            404,
            &["not_found"],
        ),
        case(
            "POST unknown path",
            "POST",
            "/session/nope",
            &["Authorization: Bearer {TOK}"],
            None,
            404,
            &["not_found"],
        ),
        // --- limits ---
        case(
            "resource body 70 KiB",
            "POST",
            "/resource/counter",
            &[
                "Authorization: Bearer {TOK}",
                "Content-Type: application/octet-stream",
            ],
            Some(&"z".repeat(70 * 1024)),
            413,
            &["body_too_large"],
        ),
        case(
            "one 20 KiB header",
            "POST",
            "/session/status",
            &[
                "Authorization: Bearer {TOK}",
                &format!("X-Big: {}", "a".repeat(20 * 1024)),
            ],
            None,
            431,
            &["headers_too_large"],
        ),
    ];

    let mut c = case(
        "GET /session/login",
        "GET",
        "/session/login",
        &[],
        None,
        405,
        &["method_not_allowed"],
    );
    c.allow = Some("POST");
    v.push(c);
    let mut c = case(
        "DELETE /session/status",
        "DELETE",
        "/session/status",
        &["Authorization: Bearer {TOK}"],
        None,
        405,
        &["method_not_allowed"],
    );
    c.allow = Some("POST");
    v.push(c);
    let mut c = case(
        "POST /healthz",
        "POST",
        "/healthz",
        &[],
        None,
        405,
        &["method_not_allowed"],
    );
    c.allow = Some("GET");
    v.push(c);

    let mut c = case(
        "dot-dot path /resource/../session/login",
        "POST",
        "/resource/../session/login",
        &[JSON_CT, "Authorization: Bearer {TOK}"],
        Some(r#"{"username":"alice"}"#),
        400,
        &["invalid_path"],
    );
    c.extra = vec!["--path-as-is"];
    v.push(c);
    let mut c = case(
        "dot-dot path /resource/counter/../../healthz",
        "GET",
        "/resource/counter/../../healthz",
        &["Authorization: Bearer {TOK}"],
        None,
        400,
        &["invalid_path"],
    );
    c.extra = vec!["--path-as-is"];
    v.push(c);

    let mut c = case(
        "encoded dot-dot path /resource/%2e%2e/session/login",
        "POST",
        "/resource/%2e%2e/session/login",
        &[JSON_CT, "Authorization: Bearer {TOK}"],
        Some(r#"{"username":"alice"}"#),
        400,
        &["invalid_path"],
    );
    c.extra = vec!["--path-as-is"];
    v.push(c);

    // Boundaries that must still be served: 94 header fields in all (curl adds Host,
    // User-Agent, Accept), and one 15 KiB header (under 16 KiB in total).
    let mut some: Vec<String> = vec!["Authorization: Bearer {TOK}".into()];
    some.extend((0..90).map(|i| format!("X-Pad-{i}: v")));
    v.push(Case {
        name: "94 header fields ok",
        method: "POST",
        path: "/session/status",
        headers: some,
        body: None,
        extra: Vec::new(),
        status: 200,
        codes: &[],
        allow: None,
    });
    v.push(case(
        "one 15 KiB header ok",
        "POST",
        "/session/status",
        &[
            "Authorization: Bearer {TOK}",
            &format!("X-Big: {}", "a".repeat(15 * 1024)),
        ],
        None,
        200,
        &[],
    ));

    let mut many: Vec<String> = vec!["Authorization: Bearer {TOK}".into()];
    many.extend((0..200).map(|i| format!("X-Pad-{i}: v")));
    v.push(Case {
        name: "200 header fields",
        method: "POST",
        path: "/session/status",
        headers: many,
        body: None,
        extra: Vec::new(),
        status: 431,
        codes: &["headers_too_large"],
        allow: None,
    });
    v
}

#[test]
fn malformed_requests_table() {
    let (mut server, sport) = start_server_plain();
    let (mut proxy, _pport, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let bodies = tempfile::tempdir().expect("tempdir");

    let table = cases();
    assert!(table.len() >= 25, "at least 25 cases");
    let mut last = login_and_count(&c);
    let mut failures: Vec<String> = Vec::new();

    for (i, k) in table.iter().enumerate() {
        let tok = c.login_ok("alice");
        let headers: Vec<String> = k.headers.iter().map(|h| h.replace("{TOK}", &tok)).collect();
        let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let mut more: Vec<String> = k.extra.iter().map(|e| e.to_string()).collect();
        if let Some(body) = &k.body {
            let p = bodies.path().join(format!("body-{i}"));
            fs::write(&p, body).expect("write body");
            more.push("--data-binary".into());
            more.push(format!("@{}", p.display()));
        }
        let more_refs: Vec<&str> = more.iter().map(String::as_str).collect();
        let r = c.req(k.method, k.path, &header_refs, &more_refs);

        // Check this case, collecting failures so that one run reports all of them.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if k.codes.is_empty() {
                let v = r.expect(k.status);
                assert!(
                    v.get("error").is_none(),
                    "expected success, got an error{}",
                    r.ctx()
                );
                if k.path == "/session/login" {
                    assert!(
                        v.get("session_token").is_some(),
                        "expected a session{}",
                        r.ctx()
                    );
                }
            } else {
                r.expect_error_in(k.status, k.codes);
            }
            if let Some(m) = k.allow {
                let allow = r.header("allow").unwrap_or("");
                assert!(
                    allow.split(',').any(|a| a.trim().eq_ignore_ascii_case(m)),
                    "405 must carry an Allow header listing {m}, got {allow:?}{}",
                    r.ctx()
                );
            }
        }));
        if let Err(e) = outcome {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("case {i} `{}`: {msg}", k.name));
        }

        // The process keeps serving, and nothing rejected reached the counter.
        proxy.assert_running();
        c.healthz().expect(200);
        let n = login_and_count(&c);
        assert_eq!(
            n,
            last + 1,
            "after case `{}` the counter moved by {} instead of 1: a rejected request reached k_server",
            k.name,
            n as i64 - last as i64
        );
        last = n;
    }

    c.healthz().expect(200);
    assert_eq!(login_and_count(&c), last + 1);
    server.assert_running();
    proxy.assert_running();
    assert!(
        failures.is_empty(),
        "{} of {} malformed-request cases failed:\n\n{}",
        failures.len(),
        table.len(),
        failures.join("\n\n")
    );
}

#[test]
fn a_long_request_target_is_414_json_and_never_forwarded() {
    let (_server, sport) = start_server_plain();
    let (_proxy, _pport, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    let before = counter_of(&c.counter_get(&tok));
    // 60 KB: within hyper's read buffer, so k_proxy's own JSON answer.
    let long = format!("/resource/counter?{}", "a".repeat(60_000));
    c.req("POST", &long, &[&Client::bearer(&tok)], &[])
        .expect_json_error(414, &["uri_too_long"]);
    // Just over the 8 KiB bound, and without a session: refused before anything else.
    let over = format!("/resource/counter?{}", "a".repeat(8 * 1024));
    c.req("POST", &over, &[], &[])
        .expect_json_error(414, &["uri_too_long"]);
    // At the bound it is forwarded as before.
    let at = format!(
        "/resource/counter?{}",
        "a".repeat(8 * 1024 - "/resource/counter?".len())
    );
    c.req("GET", &at, &[&Client::bearer(&tok)], &[]).expect(200);
    assert_eq!(
        counter_of(&c.counter_get(&tok)),
        before,
        "nothing was counted"
    );
}
