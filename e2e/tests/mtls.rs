//! Mutual TLS between k_proxy and k_server, and the proxy token, on ephemeral ports.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use chromecard_e2e::*;

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: k_server\r\nConnection: close\r\n\r\n";

/// `openssl s_client -connect 127.0.0.1:port -servername k_server -CAfile ca -tls1_3`
/// (+ `extra`), sending one HTTP request and waiting for the server to close.
fn s_client(port: u16, ca: &std::path::Path, extra: &[String]) -> Ran {
    require_tool("openssl", "version");
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "k_server",
        "-verify_hostname",
        "k_server",
        "-verify_return_error",
        "-CAfile",
        &s(ca),
        "-tls1_3",
        "-ign_eof",
    ])
    .args(extra);
    run(&mut cmd, Some(REQUEST), Duration::from_secs(15))
}

#[test]
fn k_server_refuses_tls_client_without_certificate_openssl() {
    let certs = Certs::generate();
    let (mut server, sport) = start_server_tls(&certs);

    // Positive control: the same command with k_proxy's certificate gets an answer, so
    // the negative below is not vacuous.
    let ok = s_client(
        sport,
        &certs.ca(),
        &[
            "-cert".into(),
            s(certs.proxy_crt()),
            "-key".into(),
            s(certs.proxy_key()),
        ],
    );
    assert!(
        ok.stdout.contains("HTTP/1.1 200"),
        "with k_proxy's client certificate, s_client should get `HTTP/1.1 200` from /healthz: {}\nstdout:\n{}\nstderr:\n{}",
        ok.describe_status(),
        ok.stdout,
        ok.stderr
    );
    assert!(
        ok.stdout.contains("Verify return code: 0 (ok)"),
        "k_server's certificate must verify against ca.crt for name k_server\nstdout:\n{}",
        ok.stdout
    );

    // No client certificate: the handshake must be refused (TLS 1.3: an alert after
    // the client's Finished), and no HTTP answer may come back.
    let no = s_client(sport, &certs.ca(), &[]);
    assert!(
        !no.stdout.contains("HTTP/1."),
        "k_server answered HTTP to a client without a certificate: {}\nstdout:\n{}\nstderr:\n{}",
        no.describe_status(),
        no.stdout,
        no.stderr
    );
    let all = format!("{}{}", no.stdout, no.stderr).to_ascii_lowercase();
    assert!(
        !no.timed_out && (all.contains("alert") || !no.success()),
        "expected a TLS alert / failed handshake without a client certificate: {}\nstdout:\n{}\nstderr:\n{}",
        no.describe_status(),
        no.stdout,
        no.stderr
    );

    // The foreign CA's client certificate: refused too.
    let foreign = Certs::generate();
    let fo = s_client(
        sport,
        &certs.ca(),
        &[
            "-cert".into(),
            s(foreign.proxy_crt()),
            "-key".into(),
            s(foreign.proxy_key()),
        ],
    );
    assert!(
        !fo.stdout.contains("HTTP/1."),
        "k_server answered HTTP to a client certificate from a foreign CA\nstdout:\n{}\nstderr:\n{}",
        fo.stdout,
        fo.stderr
    );
    server.assert_running();
}

#[test]
fn k_server_mtls_and_proxy_token_with_curl() {
    let certs = Certs::generate();
    let foreign = Certs::generate();
    let (mut server, sport) = start_server_tls(&certs);
    let [tok_h, user_h] = proxy_headers("alice");

    // No client certificate: TLS refused, no HTTP status at all.
    let anon = Client::tls(sport, &certs.ca());
    for path in ["/resource/counter", "/healthz"] {
        let r = anon.req("POST", path, &[&tok_h, &user_h], &[]);
        assert!(
            r.exit_code != 0 && r.status == 0,
            "k_server must refuse a TLS client without a certificate ({path}){}",
            r.ctx()
        );
    }

    // Client certificate from a foreign CA: refused.
    let stranger = Client::tls(sport, &certs.ca())
        .with_client_cert(&foreign.proxy_crt(), &foreign.proxy_key());
    let r = stranger.req("POST", "/resource/counter", &[&tok_h, &user_h], &[]);
    assert!(
        r.exit_code != 0 && r.status == 0,
        "k_server must refuse a client certificate from a foreign CA{}",
        r.ctx()
    );

    // k_proxy's certificate, but the proxy token is missing / wrong.
    let k = server_client_as_proxy(sport, &certs);
    k.healthz().expect(200);
    k.req("POST", "/resource/counter", &[&user_h], &[])
        .expect_json_error(401, &["missing_proxy_token"]);
    k.req(
        "POST",
        "/resource/counter",
        &["X-Proxy-Token: wrong-token", &user_h],
        &[],
    )
    .expect_json_error(401, &["invalid_proxy_token"]);
    // A prefix of the right token is wrong too.
    k.req(
        "POST",
        "/resource/counter",
        &["X-Proxy-Token: dev-proxy-toke", &user_h],
        &[],
    )
    .expect_json_error(401, &["invalid_proxy_token"]);
    // Right token, no user.
    k.req("POST", "/resource/counter", &[&tok_h], &[])
        .expect_json_error(400, &["missing_user"]);

    // Nothing above may have counted: the first real increment gives 1.
    let r = k.req("POST", "/resource/counter", &[&tok_h, &user_h], &[]);
    assert_eq!(
        counter_of(&r),
        1,
        "first accepted increment must give 1{}",
        r.ctx()
    );
    assert_eq!(r.json().get("user"), Some(&json!("alice")), "{}", r.ctx());
    let r = k.req("GET", "/resource/counter", &[&tok_h, &user_h], &[]);
    assert_eq!(
        counter_of(&r),
        1,
        "GET reads without incrementing{}",
        r.ctx()
    );
    k.req("GET", "/nope", &[&tok_h, &user_h], &[])
        .expect_json_error(404, &["not_found"]);
    server.assert_running();
}

/// Reads k_server's counter for alice directly; `None` if it does not exist yet.
fn direct_counter(sport: u16, certs: &Certs) -> Option<u64> {
    let k = server_client_as_proxy(sport, certs);
    let [tok_h, user_h] = proxy_headers("alice");
    let r = k.req("GET", "/resource/counter", &[&tok_h, &user_h], &[]);
    match r.status {
        404 => None,
        200 => {
            let v = r.json();
            match v.get("counter") {
                None | Some(Value::Null) => None,
                Some(n) => Some(
                    n.as_u64()
                        .unwrap_or_else(|| panic!("counter is not an integer{}", r.ctx())),
                ),
            }
        }
        _ => panic!("unexpected answer reading the counter directly{}", r.ctx()),
    }
}

#[test]
fn k_proxy_refuses_k_server_not_signed_by_server_ca_file() {
    let certs = Certs::generate();
    let foreign = Certs::generate();
    let (mut server, sport) = start_server_tls(&certs);
    let pport = free_port();
    let mut proxy = k_proxy_tls_trusting(&certs, &foreign.ca(), pport, sport)
        .args(["--gate", "soft"])
        .start(pport);
    let c = Client::tls(pport, &certs.ca());
    let tok = c.login_ok("alice");
    c.counter_post(&tok)
        .expect_error(502, "upstream_unavailable");
    c.counter_get(&tok)
        .expect_error(502, "upstream_unavailable");
    let n = direct_counter(sport, &certs);
    assert!(
        n.unwrap_or(0) == 0,
        "k_server counted ({n:?}) although k_proxy must not trust its certificate"
    );
    proxy.assert_running();
    server.assert_running();
}

#[test]
fn k_proxy_verifies_server_name() {
    let certs = Certs::generate();
    let (mut server, sport) = start_server_tls(&certs);
    let start = |name: &str| {
        let pport = free_port();
        let p = k_proxy_tls(&certs, pport, sport)
            .args(["--server-name", name, "--gate", "soft"])
            .start(pport);
        (p, Client::tls(pport, &certs.ca()))
    };
    // k_server's certificate names k_server: accepted.
    let (_good, c) = start("k_server");
    let tok = c.login_ok("alice");
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);
    // It does not name k_proxy: refused.
    let (_bad, c) = start("k_proxy");
    let tok = c.login_ok("alice");
    c.counter_post(&tok)
        .expect_error(502, "upstream_unavailable");
    assert_eq!(
        direct_counter(sport, &certs),
        Some(1),
        "refused request must not count"
    );
    server.assert_running();
}

/// How long after connecting the server closed `stream` (reading until end of stream or
/// reset), or None if it was still open after `give_up`.
fn closed_after(mut stream: TcpStream, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut buf = [0u8; 512];
    while start.elapsed() < give_up {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

#[test]
fn a_tls_handshake_is_bounded_in_time_refused_on_garbage_and_does_not_hold_the_drain() {
    let certs = Certs::generate();
    let sport = free_port();
    let mut server = k_server_tls(&certs, sport)
        .args(["--tls-handshake-timeout", "2"])
        .start(sport);

    // Plain HTTP on the TLS port: a plain 400 that says to use https://, at once.
    let mut plain = TcpStream::connect(("127.0.0.1", sport)).expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: k_server\r\n\r\n")
        .expect("write");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 400 ") && answer.contains(r#""error":"tls_required""#),
        "plain HTTP on the TLS port should get a 400 tls_required, got {answer:?}"
    );
    wait_for_log(&server, "plain HTTP on the TLS port", 1);

    // Bytes that are neither TLS nor HTTP: the handshake refuses them at once.
    let mut garbage = TcpStream::connect(("127.0.0.1", sport)).expect("connect");
    garbage.write_all(b"\x00\x01garbage\r\n").expect("write");
    let refused = closed_after(garbage, Duration::from_secs(5));
    assert!(
        refused.is_some_and(|after| after < Duration::from_secs(2)),
        "garbage on the TLS port should be closed at once, was {refused:?}"
    );
    wait_for_log(&server, "TLS handshake refused", 1);

    // A client that connects and never says hello: closed at the handshake bound
    // (--tls-handshake-timeout 2), and not before.
    let silent = TcpStream::connect(("127.0.0.1", sport)).expect("connect");
    let timed_out = closed_after(silent, Duration::from_secs(20));
    assert!(
        timed_out.is_some_and(
            |after| after >= Duration::from_millis(1900) && after < Duration::from_secs(6)
        ),
        "a silent client should be closed at the 2 s handshake bound, was {timed_out:?}"
    );
    wait_for_log(&server, "TLS handshake timed out", 1);
    server.assert_running();

    // A handshake still waiting when k_server is told to stop does not hold its drain.
    let _pending = TcpStream::connect(("127.0.0.1", sport)).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(8));
    assert!(
        status.is_some_and(|status| status.success()),
        "k_server should exit 0 soon after SIGTERM with a handshake pending, got {status:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the pending handshake held k_server's exit for {:?}",
        asked.elapsed()
    );
}

/// The runbook's plain `http://` lines against a k_proxy that serves TLS (the split-VM
/// chain) get a JSON 400 that says to use https://, not an empty reply; runbook.sh says
/// which flag to add; and k_proxy goes on serving TLS.
#[test]
fn plain_http_to_a_tls_k_proxy_gets_a_400_that_names_https() {
    let certs = Certs::generate();
    let (_server, _sport, mut proxy, c) = start_tls_chain(&certs);
    let port = c.port();
    let r = curl([
        "-X",
        "POST",
        &format!("http://127.0.0.1:{port}/session/login"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"username":"alice"}"#,
    ]);
    r.expect_json_error(400, &["tls_required"]);
    assert!(r.body.contains("https://"), "{}", r.ctx());
    let ran = run(
        Command::new(workspace_file("scripts/runbook.sh")).args(["--port", &port.to_string()]),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !ran.success() && ran.stderr.contains("pass --cacert"),
        "runbook.sh without --cacert against TLS should fail naming --cacert:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    c.login_ok("alice");
    proxy.assert_running();
}

#[test]
fn k_proxy_closes_a_client_that_never_finishes_the_tls_handshake_at_its_flag() {
    let certs = Certs::generate();
    let dead = free_port();
    let pport = free_port();
    let mut proxy = k_proxy_tls(&certs, pport, dead)
        .args(["--tls-handshake-timeout", "1", "--gate", "soft"])
        .start(pport);
    let silent = TcpStream::connect(("127.0.0.1", pport)).expect("connect");
    // k_proxy's clock starts at its accept, after this: counted from here, the close
    // cannot come early however long the request below takes.
    let connected = Instant::now();
    // Meanwhile a client that does say hello is served.
    let c = Client::tls(pport, &certs.ca());
    c.healthz().expect(200);
    let timed_out = closed_after(silent, Duration::from_secs(10)).map(|_| connected.elapsed());
    assert!(
        timed_out.is_some_and(|after| after >= Duration::from_millis(900)
            && after < Duration::from_secs(4)),
        "k_proxy should close a silent client at its 1 s --tls-handshake-timeout, was {timed_out:?}"
    );
    wait_for_log(&proxy, "TLS handshake timed out", 1);
    proxy.assert_running();
}
