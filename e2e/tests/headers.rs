//! k_proxy strips the client's credentials, hop-by-hop headers and any forged
//! `X-Proxy-Token` / `X-Chromecard-*`, and sets its own.

use chromecard_e2e::*;

fn whoami_through(c: &Client, tok: &str) -> (String, Vec<String>, Resp) {
    let bearer = Client::bearer(tok);
    let r = c.req(
        "GET",
        "/resource/whoami",
        &[
            &bearer,
            "X-Chromecard-User: mallory",
            "X-Proxy-Token: forged",
            "X-Chromecard-Anything: x",
            "Cookie: a=b",
            "Connection: x-drop-me",
            "X-Drop-Me: 1",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
        ],
        &[],
    );
    let v = r.expect(200);
    let user = v
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("whoami lacks `user`{}", r.ctx()))
        .to_string();
    let names: Vec<String> = v
        .get("headers")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("whoami lacks `headers` array{}", r.ctx()))
        .iter()
        .map(|h| {
            h.as_str()
                .unwrap_or_else(|| panic!("header name not a string{}", r.ctx()))
                .to_ascii_lowercase()
        })
        .collect();
    (user, names, r)
}

fn check(user: &str, names: &[String], r: &Resp) {
    assert_eq!(
        user,
        "alice",
        "k_server must see the session's user, not the client's{}",
        r.ctx()
    );
    for banned in [
        "authorization",
        "cookie",
        "x-drop-me",
        "x-chromecard-anything",
        "proxy-authorization",
    ] {
        assert!(
            !names.iter().any(|n| n == banned),
            "k_server received `{banned}` from the client: {names:?}{}",
            r.ctx()
        );
    }
    for once in ["x-proxy-token", "x-chromecard-user"] {
        let n = names.iter().filter(|n| *n == once).count();
        assert_eq!(
            n,
            1,
            "k_server must receive exactly one `{once}`: {names:?}{}",
            r.ctx()
        );
    }
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("x-chromecard-") && n != "x-chromecard-user"),
        "no other x-chromecard-* header may reach k_server: {names:?}{}",
        r.ctx()
    );
}

#[test]
fn strips_client_headers_over_tls_chain() {
    let certs = Certs::generate();
    let (mut server, _sport, mut proxy, c) = start_tls_chain(&certs);
    let tok = c.login_ok("alice");
    let (user, names, r) = whoami_through(&c, &tok);
    check(&user, &names, &r);
    // The forged token did not replace k_proxy's: a counter call works.
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);
    server.assert_running();
    proxy.assert_running();
}

#[test]
fn strips_client_headers_plain_chain() {
    let (mut server, sport) = start_server_plain();
    let (mut proxy, _pport, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    let (user, names, r) = whoami_through(&c, &tok);
    check(&user, &names, &r);
    server.assert_running();
    proxy.assert_running();
}

#[test]
fn a_head_at_k_proxys_limit_is_not_refused_by_k_server() {
    let (_server, sport) = start_server_plain();
    let (_proxy, _pport, c) =
        start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &["--gate", "soft"]);
    let tok = c.login_ok("alice");
    let bearer = Client::bearer(&tok);
    // curl sends Host, User-Agent and Accept: with Authorization and 96 more, the client's
    // head has exactly the 100 fields k_proxy allows. k_proxy then adds its own headers;
    // k_server must take what k_proxy took.
    let pads: Vec<String> = (0..96).map(|i| format!("X-Pad-{i}: v")).collect();
    let mut headers: Vec<&str> = vec![&bearer];
    headers.extend(pads.iter().map(String::as_str));
    let r = c.req("GET", "/resource/whoami", &headers, &[]);
    let v = r.expect(200);
    assert_eq!(v["user"], json!("alice"), "{}", r.ctx());
    // One field more is k_proxy's own 431, not k_server's.
    headers.push("X-Pad-extra: v");
    let r = c.req("GET", "/resource/whoami", &headers, &[]);
    r.expect_json_error(431, &["headers_too_large"]);
}
