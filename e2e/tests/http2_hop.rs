//! HTTP/2 on the hop to k_server: k_server offers it only behind mutual TLS, k_proxy's
//! `--upstream-http2` decides which requests use it, and a k_server without it (or one
//! that restarts) is still served.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use chromecard_e2e::*;

/// curl's arguments to reach k_server as k_proxy does: the chain CA, k_proxy's client
/// certificate, the proxy token and a user.
fn as_k_proxy<'c>(cmd: &'c mut Command, certs: &Certs) -> &'c mut Command {
    cmd.args(["--cacert", &s(certs.ca())])
        .args(["--cert", &s(certs.proxy_crt())])
        .args(["--key", &s(certs.proxy_key())])
        .args(["-H", &format!("X-Proxy-Token: {PROXY_TOKEN}")])
        .args(["-H", "X-Chromecard-User: alice"])
}

/// `openssl s_client` to k_server at `sport` with k_proxy's client certificate, offering
/// `alpn`.
fn s_client_as_k_proxy(sport: u16, certs: &Certs, alpn: &str) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-alpn", alpn])
        .args(["-connect", &format!("127.0.0.1:{sport}")])
        .args(["-CAfile", &s(certs.ca())])
        .args(["-cert", &s(certs.proxy_crt())])
        .args(["-key", &s(certs.proxy_key())]);
    cmd
}

/// curl straight to k_server (as k_proxy, or with only the CA when `anonymous`), asking
/// for HTTP/2 by ALPN; returns (status, HTTP version) as curl reports them.
fn direct_with_http2(sport: u16, certs: &Certs, anonymous: bool) -> (String, Ran) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "10", "-o", "/dev/null"])
        .args(["-w", "%{http_code} %{http_version}"]);
    if anonymous {
        cmd.args(["--cacert", &s(certs.ca())]);
    } else {
        as_k_proxy(&mut cmd, certs);
    }
    cmd.arg(format!("https://127.0.0.1:{sport}/resource/counter"));
    let ran = run(&mut cmd, None, Duration::from_secs(20));
    (ran.stdout.trim().to_owned(), ran)
}

#[test]
fn k_server_offers_http2_only_to_a_client_with_a_certificate() {
    let certs = Certs::generate();
    let (_server, sport) = start_server_tls(&certs);
    let (answer, ran) = direct_with_http2(sport, &certs, false);
    assert_eq!(
        answer, "200 2",
        "k_proxy's certificate, h2 offered: {ran:?}"
    );

    // Without a certificate the handshake fails before any protocol is spoken.
    let (answer, ran) = direct_with_http2(sport, &certs, true);
    assert!(
        !ran.success() && answer.starts_with("000"),
        "no client certificate must mean no HTTP at all: {ran:?}"
    );

    // openssl names what was agreed.
    let ran = run(
        &mut s_client_as_k_proxy(sport, &certs, "h2,http/1.1"),
        Some(b""),
        Duration::from_secs(20),
    );
    assert!(
        ran.stdout.contains("ALPN protocol: h2"),
        "openssl s_client -alpn h2,http/1.1: {ran:?}"
    );
}

#[test]
fn k_server_with_no_http2_answers_http1_to_a_client_asking_for_h2() {
    let certs = Certs::generate();
    let sport = free_port();
    let _server = k_server_tls(&certs, sport).arg("--no-http2").start(sport);
    let (answer, ran) = direct_with_http2(sport, &certs, false);
    assert_eq!(answer, "200 1.1", "{ran:?}");
}

/// k_proxy (plain towards the test, mutual TLS to k_server at `sport`) with the metrics
/// listener, plus `extra`. Returns the process, a client and the admin port.
fn proxy_with_metrics(certs: &Certs, sport: u16, extra: &[&str]) -> (Proc, Client, u16) {
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut args = vec!["--admin-listen", admin_addr.as_str()];
    args.extend_from_slice(extra);
    let (p, _port, c) = start_proxy_plain_to_tls(certs, sport, &args);
    (p, c, admin)
}

/// (requests over HTTP/2, requests over HTTP/1.1) that k_server answered, per k_proxy.
fn by_protocol(admin: u16) -> (f64, f64) {
    let text = scrape_metrics(admin);
    let count = |protocol: &str| {
        metric_value(
            &text,
            &format!("chromecard_upstream_requests_total{{protocol=\"{protocol}\"}}"),
        )
        .unwrap_or(0.0)
    };
    (count("h2"), count("http/1.1"))
}

/// `n` increments at once (curl --parallel, one connection each); every answer must be
/// 200 and carry a distinct counter.
fn increments_at_once(c: &Client, tok: &str, n: usize) -> Vec<u64> {
    let url = c.url("/resource/counter");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
    ])
    .arg(n.to_string())
    .args(["--max-time", "20", "-X", "POST"])
    .args(["-H", &Client::bearer(tok)])
    .args(["-w", "|%{http_code}|"]);
    for _ in 0..n {
        cmd.arg(&url);
    }
    let ran = run(&mut cmd, None, Duration::from_secs(60));
    assert!(ran.success(), "{ran:?}");
    // Answers and statuses may interleave in parallel output: count each on its own.
    assert_eq!(ran.stdout.matches("|200|").count(), n, "{ran:?}");
    let mut counters: Vec<u64> = ran
        .stdout
        .split("\"counter\":")
        .skip(1)
        .map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a counter in each answer")
        })
        .collect();
    counters.sort_unstable();
    counters.dedup();
    assert_eq!(counters.len(), n, "{n} distinct counters expected: {ran:?}");
    counters
}

#[test]
fn always_sends_every_forwarded_request_over_http2() {
    let certs = Certs::generate();
    let (_server, sport) = start_server_tls(&certs);
    let (mut p, c, admin) = proxy_with_metrics(&certs, sport, &["--upstream-http2", "always"]);
    let tok = c.login_ok("alice");
    for expected in 1..=3 {
        assert_eq!(counter_of(&c.counter_post(&tok)), expected);
    }
    assert_eq!(counter_of(&c.counter_get(&tok)), 3);
    // The header rewrite holds on HTTP/2 too: k_server sees the session's user, not ours.
    let r = c.req(
        "GET",
        "/resource/counter",
        &[&Client::bearer(&tok), "X-Chromecard-User: mallory"],
        &[],
    );
    assert_eq!(r.expect(200)["user"], "alice", "{}", r.ctx());
    increments_at_once(&c, &tok, 16);
    assert_eq!(by_protocol(admin), (21.0, 0.0));
    p.assert_running();
}

/// An answer to HEAD carries no body on HTTP/2 either: k_server used to send its JSON
/// refusal as DATA, which curl calls a PROTOCOL_ERROR and which made a client's HEAD
/// through k_proxy a 502 (k_server's fault, logged as such) instead of the 405.
#[test]
fn head_over_http2_is_answered_without_a_body() {
    let certs = Certs::generate();
    let (_server, sport) = start_server_tls(&certs);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "-I", "--max-time", "10"])
        .args(["-w", "|%{http_code} %{http_version}|"]);
    as_k_proxy(&mut cmd, &certs).arg(format!("https://127.0.0.1:{sport}/resource/counter"));
    let ran = run(&mut cmd, None, Duration::from_secs(20));
    assert!(
        ran.success(),
        "curl --http2 -I straight to k_server: {ran:?}"
    );
    assert!(ran.stdout.contains("|405 2|"), "{ran:?}");

    let (mut p, c, admin) = proxy_with_metrics(&certs, sport, &["--upstream-http2", "always"]);
    let tok = c.login_ok("alice");
    let ran = run(
        Command::new("curl")
            .args(["-sS", "-I", "--max-time", "10", "-o", "/dev/null"])
            .args(["-w", "%{http_code}"])
            .args(["-H", &Client::bearer(&tok)])
            .arg(c.url("/resource/counter")),
        None,
        Duration::from_secs(20),
    );
    assert_eq!(ran.stdout.trim(), "405", "HEAD through k_proxy: {ran:?}");
    assert_eq!(by_protocol(admin), (1.0, 0.0), "it went over HTTP/2");
    p.assert_running();
}

#[test]
fn concurrent_keeps_a_lone_request_on_http1_and_multiplexes_a_burst() {
    let certs = Certs::generate();
    let (_server, sport) = start_server_tls(&certs);
    // One worker: every request of the burst is in flight from the same thread.
    let (mut p, c, admin) = proxy_with_metrics(&certs, sport, &["--connection-threads", "1"]);
    let tok = c.login_ok("alice");
    for _ in 0..3 {
        c.counter_post(&tok).expect(200);
    }
    assert_eq!(by_protocol(admin), (0.0, 3.0), "one at a time: HTTP/1.1");
    let counters = increments_at_once(&c, &tok, 32);
    assert_eq!(counters, (4..=35).collect::<Vec<_>>());
    let (h2, h1) = by_protocol(admin);
    assert_eq!(h2 + h1, 35.0);
    assert!(
        h2 > 0.0,
        "32 increments at once: some must have found others in flight (h2 {h2}, http/1.1 {h1})"
    );
    // One at a time again: the next 8 still on HTTP/2 (bridging a busy worker's quiet
    // moments), then HTTP/1.1 from the 9th on.
    for n in 1..=12 {
        c.counter_post(&tok).expect(200);
        let expected = if n <= 8 {
            (h2 + f64::from(n), h1)
        } else {
            (h2 + 8.0, h1 + f64::from(n - 8))
        };
        assert_eq!(
            by_protocol(admin),
            expected,
            "lone request {n} after the burst: (h2, http/1.1)"
        );
    }
    p.assert_running();
}

#[test]
fn never_keeps_to_http1() {
    let certs = Certs::generate();
    let (_server, sport) = start_server_tls(&certs);
    let (_p, c, admin) = proxy_with_metrics(
        &certs,
        sport,
        &["--upstream-http2", "never", "--connection-threads", "1"],
    );
    let tok = c.login_ok("alice");
    increments_at_once(&c, &tok, 16);
    assert_eq!(by_protocol(admin), (0.0, 16.0));
}

#[test]
fn a_k_server_without_http2_is_served_over_http1() {
    let certs = Certs::generate();
    let sport = free_port();
    let _server = k_server_tls(&certs, sport).arg("--no-http2").start(sport);
    let (mut p, c, admin) = proxy_with_metrics(&certs, sport, &["--upstream-http2", "always"]);
    let tok = c.login_ok("alice");
    for expected in 1..=3 {
        assert_eq!(counter_of(&c.counter_post(&tok)), expected);
    }
    increments_at_once(&c, &tok, 8);
    assert_eq!(by_protocol(admin), (0.0, 11.0));
    wait_for_log(&p, "k_server declined HTTP/2", 1);
    p.assert_running();
}

#[test]
fn a_restarted_k_server_gets_a_new_http2_connection() {
    let certs = Certs::generate();
    let (mut server, sport) = start_server_tls(&certs);
    let (mut p, c, admin) = proxy_with_metrics(&certs, sport, &["--upstream-http2", "always"]);
    let tok = c.login_ok("alice");
    assert_eq!(counter_of(&c.counter_post(&tok)), 1);

    // SIGTERM: k_server drains (GOAWAY on the HTTP/2 connection) and stops.
    let state = server.state_home().to_path_buf();
    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(15)).is_some(),
        "k_server did not stop on SIGTERM"
    );
    c.counter_post(&tok)
        .expect_error(502, "upstream_unavailable");

    let _server2 = k_server_tls(&certs, sport).state_home(&state).start(sport);
    // The old connection is gone; the next request opens a new one and is answered.
    let after = c.counter_post(&tok);
    assert_eq!(counter_of(&after), 2, "{}", after.ctx());
    thread::sleep(Duration::from_millis(50));
    let (h2, h1) = by_protocol(admin);
    assert_eq!((h2, h1), (2.0, 0.0));
    p.assert_running();
}

#[test]
fn always_refuses_a_plain_http_k_server_url() {
    Spawn::k_proxy()
        .args([
            "--port",
            &free_port().to_string(),
            "--server-base-url",
            "http://127.0.0.1:9",
            "--proxy-token",
            PROXY_TOKEN,
            "--gate",
            "soft",
            "--upstream-http2",
            "always",
        ])
        .run_to_exit(Duration::from_secs(20))
        .assert_refused(&["--upstream-http2", "https://", "never"]);
}

/// The SETTINGS frame k_server sends first on an `h2` connection, read with openssl
/// s_client (the client preface and an empty SETTINGS frame in, raw frames out); returns
/// its (identifier, value) pairs.
fn server_settings(sport: u16, certs: &Certs) -> Vec<(u16, u32)> {
    let mut client = s_client_as_k_proxy(sport, certs, "h2")
        .arg("-quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    client
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(&hello)
        .expect("preface");
    // The first frame, read on a thread so that a silent server fails the test in time.
    let mut out = client.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut head = [0u8; 9];
        let frame = out.read_exact(&mut head).and_then(|()| {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            out.read_exact(&mut payload).map(|()| (head, payload))
        });
        let _ = tx.send(frame);
    });
    let frame = rx.recv_timeout(Duration::from_secs(20));
    let _ = client.kill();
    let _ = client.wait();
    let (head, payload) = frame
        .expect("k_server sent no frame within 20 s")
        .expect("a whole frame");
    // A frame head: 24-bit length, type (4 = SETTINGS), flags, stream (0).
    assert_eq!(head[3], 4, "the first frame is not SETTINGS: {head:?}");
    payload
        .chunks_exact(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

#[test]
fn k_server_over_http2_states_its_limits_and_refuses_an_oversized_head() {
    let certs = Certs::generate();
    let (_server, sport) = start_server_tls(&certs);

    // RFC 9113 §6.5.2: 0x3 SETTINGS_MAX_CONCURRENT_STREAMS, 0x6 SETTINGS_MAX_HEADER_LIST_SIZE.
    let settings = server_settings(sport, &certs);
    let setting = |id: u16| settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
    assert_eq!(setting(0x3), Some(256), "{settings:?}");
    assert_eq!(setting(0x6), Some(64 * 1024), "{settings:?}");

    // A head over k_server's own bound (32 KiB) but under the HTTP/2 list size gets the
    // JSON 431; the connection stays open and the next request on it is answered.
    let url = format!("https://127.0.0.1:{sport}/resource/counter");
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let mut cmd = Command::new("curl");
    for (i, extra) in [Some(big.as_str()), None].into_iter().enumerate() {
        if i > 0 {
            cmd.arg("--next");
        }
        cmd.args(["-sS", "--http2", "--max-time", "10"])
            .args(["-w", "|%{http_code} %{http_version} %{num_connects}|"]);
        as_k_proxy(&mut cmd, &certs);
        if let Some(header) = extra {
            cmd.args(["-H", header]);
        }
        cmd.arg(&url);
    }
    let ran = run(&mut cmd, None, Duration::from_secs(30));
    assert!(ran.success(), "{ran:?}");
    assert!(
        ran.stdout.contains("\"error\":\"headers_too_large\"") && ran.stdout.contains("|431 2 1|"),
        "the oversized head: {ran:?}"
    );
    assert!(
        ran.stdout.contains("|200 2 0|"),
        "the next request, same connection: {ran:?}"
    );
}

#[test]
fn k_server_sigterm_lets_an_http2_stream_in_flight_finish() {
    let certs = Certs::generate();
    let (mut server, sport) = start_server_tls(&certs);
    // curl streams its stdin as the body (-T -): half now, the rest after SIGTERM.
    let traces = tempfile::tempdir().expect("tempdir");
    let trace = traces.path().join("curl.trace");
    let mut curl = Command::new("curl");
    let mut upload = as_k_proxy(&mut curl, &certs)
        .args(["-sS", "--http2", "--max-time", "20", "-T", "-"])
        .args(["-w", "|%{http_code} %{http_version}|"])
        .args(["-H", "Content-Type: application/json"])
        .arg("--trace-ascii")
        .arg(&trace)
        .arg(format!("https://127.0.0.1:{sport}/resource/secrets/drain"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl");
    let body = br#"{"value":"drained over h2"}"#;
    let mut stdin = upload.stdin.take().expect("stdin");
    stdin.write_all(&body[..5]).unwrap();
    stdin.flush().unwrap();
    // The head and half the body sent (curl's trace says so): the stream is in k_server's
    // hands, waiting for the rest.
    assert!(
        wait_until(Duration::from_secs(15), || std::fs::read_to_string(&trace)
            .is_ok_and(|t| t.contains("=> Send data, 5 bytes"))),
        "curl did not send the first 5 bytes: {:?}\n{}",
        std::fs::read_to_string(&trace),
        server.logs()
    );
    server.terminate_and_await_drain();
    // An error here (curl gone) shows below, with curl's own message.
    let _ = stdin.write_all(&body[5..]);
    drop(stdin);
    let out = upload.wait_with_output().expect("curl ran");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("|200 2|") || answer.contains("|201 2|"),
        "the stream in flight must be answered over HTTP/2: {answer:?} {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
    let exit = server
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("k_server did not exit after SIGTERM\n{}", server.logs()));
    assert_eq!(exit.code(), Some(0), "{}", server.logs());
}
