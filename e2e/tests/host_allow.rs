//! The Host allow-list (issue 14, DNS rebinding): a request addressed to a host k_proxy
//! does not serve gets 421 `host_not_allowed` before routing, on every route but the
//! health probes, in the plain-HTTP and the TLS shape. The loopback names pass with any
//! port (qvm-connect-tcp forwards another port), and so do `--allowed-host` names; the
//! certificate's names pass with k_proxy's own port.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chromecard_e2e::*;

const LIMIT: Duration = Duration::from_secs(5);

/// A plain-HTTP chain (k_server plain, k_proxy `--gate soft`) with extra k_proxy flags.
fn plain_chain(extra: &[&str]) -> (Proc, Proc, u16, Client) {
    let (server, sport) = start_server_plain();
    let mut args = vec!["--gate", "soft"];
    args.extend_from_slice(extra);
    let (proxy, pport, client) = start_proxy_plain(&format!("http://127.0.0.1:{sport}"), &args);
    (server, proxy, pport, client)
}

/// The login request with extra headers and body.
fn login_as(c: &Client, headers: &[&str], body: &str) -> Resp {
    let mut all = vec!["Content-Type: application/json"];
    all.extend_from_slice(headers);
    c.req("POST", "/session/login", &all, &["--data-binary", body])
}

/// Every non-health route, each with a live token where it takes one, addressed to
/// `host`: all 421 `host_not_allowed`. The health probes still answer. The token is
/// unharmed (the refused logout did not run).
fn refused_everywhere(c: &Client, host: &str) {
    let tok = c.login_ok("alice");
    let before = counter_of(&c.counter_get(&tok));
    let host_h = format!("Host: {host}");
    let bearer = Client::bearer(&tok);
    let json = "Content-Type: application/json";
    let alice = r#"{"username":"alice"}"#;
    let cases: [(&str, &str, Vec<&str>, Vec<&str>); 9] = [
        (
            "POST",
            "/session/login",
            vec![&host_h, json],
            vec!["--data-binary", alice],
        ),
        ("POST", "/session/status", vec![&host_h, &bearer], vec![]),
        ("POST", "/session/refresh", vec![&host_h, &bearer], vec![]),
        ("GET", "/session/list", vec![&host_h, &bearer], vec![]),
        ("POST", "/session/logout", vec![&host_h, &bearer], vec![]),
        ("GET", "/resource/counter", vec![&host_h, &bearer], vec![]),
        ("POST", "/resource/counter", vec![&host_h, &bearer], vec![]),
        ("GET", "/resource/whoami", vec![&host_h, &bearer], vec![]),
        ("GET", "/no/such/path", vec![&host_h], vec![]),
    ];
    for (method, path, headers, more) in &cases {
        let r = c.req(method, path, headers, more);
        r.expect_json_error(421, &["host_not_allowed"]);
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|m| m.contains("--allowed-host")),
            "the 421 names the way to allow a host{}",
            r.ctx()
        );
        assert!(
            !r.body.contains(host.split(':').next().unwrap_or(host)),
            "the refusal does not echo the client's host{}",
            r.ctx()
        );
        assert!(r.header("set-cookie").is_none(), "{}", r.ctx());
    }
    // Health probes answer any name; they reveal nothing.
    c.req("GET", "/healthz", &[&host_h], &[]).expect(200);
    // Nothing above ran: the token still works, and the counter was never incremented.
    c.status(&tok).expect(200);
    assert_eq!(counter_of(&c.counter_post(&tok)), before + 1);
}

#[test]
fn a_foreign_host_is_refused_on_every_route_plain() {
    let (_s, mut proxy, pport, c) = plain_chain(&[]);
    refused_everywhere(&c, &format!("attacker.example:{pport}"));
    refused_everywhere(&c, "attacker.example");
    proxy.assert_running();
    assert!(
        proxy.logs().contains("host_not_allowed"),
        "the refusal is logged:\n{}",
        proxy.logs()
    );
}

#[test]
fn a_foreign_host_is_refused_on_every_route_tls() {
    let certs = Certs::generate();
    let (_server, _sport, mut proxy, c) = start_tls_chain(&certs);
    let pport = c.base.rsplit(':').next().unwrap_or_default().to_owned();
    refused_everywhere(&c, &format!("attacker.example:{pport}"));
    proxy.assert_running();
}

/// The review's attack: a rebinding page's login, with Host and Origin agreeing on the
/// attacker's name, asks for a cookie. It gets 421, no cookie, no session; the refusal is
/// counted on the admin listener.
#[test]
fn the_rebinding_login_gets_421_and_no_cookie() {
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let (_s, _p, pport, c) = plain_chain(&["--admin-listen", &admin_addr]);
    let host = format!("Host: attacker.example:{pport}");
    let origin = format!("Origin: http://attacker.example:{pport}");
    let r = login_as(
        &c,
        &[&host, &origin],
        r#"{"username":"alice","cookie":true}"#,
    );
    r.expect_json_error(421, &["host_not_allowed"]);
    assert!(r.header("set-cookie").is_none(), "{}", r.ctx());
    assert!(!r.body.contains("session_token"), "{}", r.ctx());

    let metrics = curl([format!("http://{admin_addr}/metrics")]);
    assert_eq!(metrics.status, 200, "{}", metrics.ctx());
    assert!(
        metrics
            .body
            .contains("chromecard_host_refused_total{code=\"host_not_allowed\"} 1"),
        "the refusal is counted{}",
        metrics.ctx()
    );
    assert!(
        !metrics.body.contains("outcome=\"ok\"} 1"),
        "no login ran{}",
        metrics.ctx()
    );
}

#[test]
fn loopback_names_forwarded_ports_and_allowed_names_are_accepted() {
    let (_s, _p, pport, c) = plain_chain(&[
        "--allowed-host",
        "Proxy.Example",
        "--allowed-host",
        "pinned.example:8443",
    ]);
    for host in [
        format!("localhost:{pport}"),
        format!("127.0.0.1:{pport}"),
        // qvm-connect-tcp 9771:k_proxy:8771: the client names the forwarded port.
        "127.0.0.1:9771".to_owned(),
        "localhost.:9771".to_owned(),
        format!("[::1]:{pport}"),
        "127.0.0.1".to_owned(),
        // --allowed-host without a port: any port, any case.
        format!("proxy.example:{pport}"),
        "PROXY.EXAMPLE:1234".to_owned(),
        // --allowed-host with a port: that port.
        "pinned.example:8443".to_owned(),
    ] {
        let r = login_as(&c, &[&format!("Host: {host}")], r#"{"username":"alice"}"#);
        assert_eq!(r.status, 200, "Host: {host} must be accepted{}", r.ctx());
    }
    for host in ["pinned.example:9999", "proxy.example.attacker.example"] {
        login_as(&c, &[&format!("Host: {host}")], r#"{"username":"alice"}"#)
            .expect_json_error(421, &["host_not_allowed"]);
    }
}

/// With TLS, the certificate's names are allowed at k_proxy's own port (make-certs.sh puts
/// the CN `k_proxy` and localhost in it); through another port such a name is refused
/// unless `--allowed-host` names it.
#[test]
fn certificate_names_are_accepted_in_the_tls_shape() {
    let certs = Certs::generate();
    let (_server, _sport, _proxy, c) = start_tls_chain(&certs);
    let pport = c.base.rsplit(':').next().unwrap_or_default().to_owned();
    let by_name = Client {
        base: format!("https://k_proxy:{pport}"),
        extra: vec![
            "--cacert".into(),
            s(certs.ca()),
            "--resolve".into(),
            format!("k_proxy:{pport}:127.0.0.1"),
        ],
    };
    let tok = by_name.login_ok("alice");
    assert_eq!(counter_of(&by_name.counter_post(&tok)), 1);
    let forwarded = by_name.req(
        "POST",
        "/session/status",
        &["Host: k_proxy:9771", &Client::bearer(&tok)],
        &[],
    );
    forwarded.expect_json_error(421, &["host_not_allowed"]);
    // A cookie login by the certificate's name, and its CSRF check: the Origin must be
    // https://k_proxy:PORT, the host the request was addressed to.
    let r = login_as(&by_name, &[], r#"{"username":"alice","cookie":true}"#);
    r.expect(200);
    let set_cookie = r.header("set-cookie").unwrap_or_default();
    let cookie = format!(
        "Cookie: {}",
        set_cookie.split(';').next().unwrap_or_default()
    );
    let csrf = "X-Chromecard-CSRF: 1";
    let post = |origin: &str| {
        by_name.req(
            "POST",
            "/resource/counter",
            &[&cookie, csrf, &format!("Origin: {origin}")],
            &[],
        )
    };
    post(&format!("https://k_proxy:{pport}")).expect(200);
    for foreign in [
        format!("http://k_proxy:{pport}"),
        format!("https://localhost:{pport}"),
        format!("https://attacker.example:{pport}"),
        "null".to_owned(),
    ] {
        post(&foreign).expect_json_error(403, &["csrf_check_failed"]);
    }
}

/// Sends `request` on a fresh connection; returns the status and the body.
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to k_proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn code_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("not a JSON error: {body:?}"))
}

#[test]
fn missing_host_and_absolute_form_targets() {
    let (_s, _p, pport, _c) = plain_chain(&[]);
    // HTTP/1.1 without Host: 400.
    let (status, body) = raw(
        pport,
        "POST /session/status HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!((status, code_of(&body).as_str()), (400, "missing_host"));
    // Two Host headers: 400.
    let (status, body) = raw(
        pport,
        "POST /session/status HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!((status, code_of(&body).as_str()), (400, "invalid_host"));
    // HTTP/1.0 without Host names no host to rebind: routed (here, 401 without a token).
    let (status, body) = raw(pport, "POST /session/status HTTP/1.0\r\n\r\n");
    assert_eq!((status, code_of(&body).as_str()), (401, "missing_token"));
    // Absolute form: the target's authority is checked, and wins over Host (RFC 9112).
    let (status, body) = raw(
        pport,
        &format!("POST http://attacker.example:{pport}/session/status HTTP/1.1\r\nHost: 127.0.0.1:{pport}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!((status, code_of(&body).as_str()), (421, "host_not_allowed"));
    let (status, body) = raw(
        pport,
        &format!("POST http://attacker.example:{pport}/session/status HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!((status, code_of(&body).as_str()), (421, "host_not_allowed"));
    let (status, body) = raw(
        pport,
        &format!("POST http://127.0.0.1:{pport}/session/status HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    );
    assert_eq!((status, code_of(&body).as_str()), (401, "missing_token"));
    // Health probes answer any host.
    let (status, _) = raw(
        pport,
        "GET /healthz HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
}

#[test]
fn a_bad_allowed_host_is_refused_at_start_naming_the_flag() {
    for bad in [
        "http://proxy.example",
        "proxy.example/path",
        "proxy.example:0",
        "a b",
        "*.example",
    ] {
        Spawn::k_proxy()
            .args([
                "--port",
                &free_port().to_string(),
                "--proxy-token",
                PROXY_TOKEN,
                "--gate",
                "soft",
                "--allowed-host",
                bad,
            ])
            .run_to_exit(LIMIT)
            .assert_refused(&["--allowed-host", "bare host name"]);
    }
}
